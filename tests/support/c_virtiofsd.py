"""Run QEMU 7.2's C virtiofsd as a reference backend for the test frontend.

We create and bind the listening socket ourselves and hand it over with `--fd`, so the
frontend can connect the moment the process exists: the connection waits in the listen
backlog, and no test has to poll for the socket file to appear.
"""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path
from typing import Final

VIRTIOFSD: Final = "/usr/lib/qemu/virtiofsd"


class CVirtiofsd:
    """One C virtiofsd process serving `source` on the unix socket `sock_path`.

    Resource handling: owns the process and the listening socket; `close()` kills the
    process (if still running) and waits for it with a deadline.
    """

    def __init__(
        self, source: Path, sock_path: Path, *options: str, binary: str = VIRTIOFSD
    ) -> None:
        if not os.access(binary, os.X_OK):
            raise FileNotFoundError(
                f"{binary} is missing: run hack/setup (it installs qemu-system-x86 7.2)"
            )
        self.sock_path = str(sock_path)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(self.sock_path)
        self.listener.listen(1)
        fd = self.listener.fileno()
        argv = [binary, f"--fd={fd}", "-o", f"source={source}", "-o", "cache=none", *options]
        self.process = subprocess.Popen(
            argv,
            pass_fds=[fd],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def __enter__(self) -> CVirtiofsd:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self, timeout: float = 10.0) -> str:
        """Stop the daemon; returns its stderr (its log)."""
        self.listener.close()
        if self.process.poll() is None:
            self.process.kill()
        _, err = self.process.communicate(timeout=timeout)
        return err.decode(errors="replace")
