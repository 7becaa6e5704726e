"""daemon.listen_unix: the vhost-user socket file appears only once it accepts connections.

A starter without an API socket (virtiofsd-style) waits for the file and connects at once;
a socket bound in place but not yet listening would refuse it (seen as a flaky
ConnectionRefusedError in tests/integration/test_cli_process.py with a short socket name).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from vhostfs import daemon


async def test_a_short_name_still_appears_by_rename_once_listening(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "v.sock"  # shorter than the temporary name
    renamed: list[tuple[str, str]] = []
    real = os.rename

    def rename(src: str, dst: str) -> None:
        assert not path.exists()  # nothing at the final name before this moment
        renamed.append((src, dst))
        real(src, dst)

    monkeypatch.setattr(daemon.os, "rename", rename)
    listener = await daemon.listen_unix(str(path))
    try:
        assert [dst for _, dst in renamed] == [str(path)]
        assert os.path.basename(renamed[0][0]).startswith(".vhostfs-")
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(str(path))  # listening: no refusal
        assert os.listdir(tmp_path) == ["v.sock"]
    finally:
        listener.close()


async def test_a_directory_too_deep_for_the_temporary_name_binds_in_place(
    tmp_path: Path,
) -> None:
    deep = tmp_path / ("d" * (100 - len(str(tmp_path))))
    deep.mkdir()
    path = deep / "s"
    assert len(str(path)) <= 107 < len(str(deep / f".vhostfs-{os.getpid()}.sock"))
    listener = await daemon.listen_unix(str(path))
    try:
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(str(path))
    finally:
        listener.close()
