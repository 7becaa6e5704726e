"""Process set-up pieces of the CLI: RLIMIT_NOFILE rule, prefetch lists, error unwrapping."""

from __future__ import annotations

from pathlib import Path

import pytest

from vhostfs.cli import StartupError, read_prefetch_list, rlimit_target, startup_error


@pytest.mark.parametrize(("wanted", "soft", "file_max", "target"), [
    (1_000_000, 1024, 9_223_372_036_854_775_807, 1_000_000),  # capped at 1 000 000
    (1_000_000, 1024, 100_000, 100_000 - 16384),  # file-max leaves 16384 for others
    (4096, 1024, 100_000, 4096),  # what was asked, when it fits
    (2_000_000, 1_500_000, 100_000, 1_500_000),  # never below the current soft limit
])
def test_rlimit_rule(wanted: int, soft: int, file_max: int, target: int) -> None:
    assert rlimit_target(wanted, soft, file_max) == target


def test_rlimit_refuses_a_tiny_file_max() -> None:
    with pytest.raises(StartupError, match="file-max"):
        rlimit_target(1_000_000, 1024, 32767)


def test_prefetch_list(tmp_path: Path) -> None:
    good = tmp_path / "list"
    good.write_text("/usr/bin/env\n\n  /etc/hosts  \n")
    assert read_prefetch_list(str(good)) == ["/usr/bin/env", "/etc/hosts"]
    bad = tmp_path / "bad"
    bad.write_text("/ok\nrelative/path\n")
    with pytest.raises(StartupError, match="invalid prefetch file list"):
        read_prefetch_list(str(bad))


def test_startup_errors_are_unwrapped_from_groups() -> None:
    cause = FileNotFoundError(2, "No such file or directory", "/x")
    assert startup_error(ExceptionGroup("nursery", [ExceptionGroup("inner", [cause])])) is cause
    assert startup_error(cause) is cause
    assert startup_error(ExceptionGroup("mixed", [cause, KeyError("bug")])) is None
    assert startup_error(RuntimeError("bug")) is None
