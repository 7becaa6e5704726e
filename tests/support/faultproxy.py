"""A loopback HTTP reverse proxy that breaks registry responses on purpose.

The daemon is configured with the proxy's address as its registry `host`; the proxy forwards
every request (headers included, so auth still works) to the real registry and, for blob
GETs, can

* answer the first `fail_first` of them with `fail_status` (a transient registry outage),
* flip one byte in the body of every response whose range covers `corrupt_at` (a blob byte
  offset): wrong bytes delivered with a 206 and the right length, as a broken cache or
  middlebox would.

Every blob GET is recorded as (status sent, Range header, body length) for assertions.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

_RANGE = re.compile(r"bytes=(\d+)-(\d+)")
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}


@dataclass
class Faults:
    fail_first: int = 0  # blob GETs answered with fail_status before forwarding resumes
    fail_status: int = 500
    corrupt_at: int | None = None  # blob byte offset whose byte is flipped in every response
    blob_gets: list[tuple[int, str, int]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def corrupted_responses(self) -> int:
        with self.lock:
            return sum(1 for status, rng, _ in self.blob_gets
                       if status == 206 and self._covers(rng))

    def _covers(self, rng: str) -> bool:
        m = _RANGE.fullmatch(rng)
        return bool(m and self.corrupt_at is not None
                    and int(m.group(1)) <= self.corrupt_at <= int(m.group(2)))


@contextmanager
def fault_proxy(upstream: str, faults: Faults) -> Iterator[str]:
    """Serve on 127.0.0.1:<port> until the block ends; yields "127.0.0.1:<port>"."""
    client = httpx.Client(base_url=f"http://{upstream}", timeout=30, follow_redirects=False)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _forward(self, method: str) -> None:
            is_blob = "/blobs/sha256:" in self.path and method == "GET"
            rng = self.headers.get("Range", "")
            if is_blob:
                with faults.lock:
                    failing = faults.fail_first > 0
                    if failing:
                        faults.fail_first -= 1
                        faults.blob_gets.append((faults.fail_status, rng, 0))
                if failing:
                    self._reply(faults.fail_status, [], b"injected failure\n")
                    return
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
            upstream_reply = client.request(method, self.path, headers=headers)
            body = upstream_reply.content
            m = _RANGE.fullmatch(rng)
            if is_blob and m and faults._covers(rng) and upstream_reply.status_code == 206:
                assert faults.corrupt_at is not None
                pos = faults.corrupt_at - int(m.group(1))
                body = body[:pos] + bytes([body[pos] ^ 0xFF]) + body[pos + 1:]
            if is_blob:
                with faults.lock:
                    faults.blob_gets.append((upstream_reply.status_code, rng, len(body)))
            headers_out = [(k, v) for k, v in upstream_reply.headers.items()
                           if k.lower() not in _HOP_BY_HOP]
            self._reply(upstream_reply.status_code, headers_out,
                        b"" if method == "HEAD" else body, len(body))

        def _reply(self, status: int, headers: list[tuple[str, str]], body: bytes,
                   length: int | None = None) -> None:
            self.send_response(status)
            for k, v in headers:
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body) if length is None else length))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            self._forward("GET")

        def do_HEAD(self) -> None:
            self._forward("HEAD")

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        client.close()
