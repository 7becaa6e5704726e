"""Real servers for backend integration tests: CNCF distribution (Debian `docker-registry`)
with no auth, htpasswd or token auth (with a small JWT token server), and moto's S3 server.

Each server is a subprocess on a loopback port; readiness is awaited by reading its log
for the "listening" line (bounded), never by sleeping.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO
from urllib.parse import parse_qs, urlparse

import httpx
import pytest

START_TIMEOUT = 30.0  # seconds for a server to report it is listening


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LogTail:
    """Collects a subprocess's output lines in a thread; `wait_for` blocks on a condition."""

    stream: IO[str]
    lines: list[str] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)

    def start(self) -> None:
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.stream:
            with self.cond:
                self.lines.append(line)
                self.cond.notify_all()

    def wait_for(self, pattern: str, timeout: float = START_TIMEOUT) -> None:
        regex = re.compile(pattern)
        with self.cond:
            ok = self.cond.wait_for(lambda: any(regex.search(x) for x in self.lines), timeout)
        assert ok, f"server never logged {pattern!r}:\n{''.join(self.lines[-20:])}"

    def matching(self, pattern: str) -> list[str]:
        with self.cond:
            return [x for x in self.lines if re.search(pattern, x)]

    def matching_at_least(self, pattern: str, count: int,
                          timeout: float = START_TIMEOUT) -> list[str]:  # fmt: skip
        """The matching lines once there are `count` of them: a server logs a request after
        answering it, so the client can be ahead of the log."""
        regex = re.compile(pattern)
        with self.cond:
            self.cond.wait_for(lambda: sum(bool(regex.search(x)) for x in self.lines) >= count,
                               timeout)  # fmt: skip
            return [x for x in self.lines if regex.search(x)]


@contextmanager
def running(argv: list[str], ready: str, env: dict[str, str] | None = None) -> Iterator[LogTail]:
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **(env or {})})
    assert proc.stdout is not None
    tail = LogTail(proc.stdout)
    tail.start()
    try:
        tail.wait_for(ready)
        yield tail
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


# --- token server --------------------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenIssuer:
    """Issues ES256 JWTs the registry's `auth.token` accepts (x5c header, self-signed cert)."""

    def __init__(self, workdir: Path, user: str, password: str) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        self.user, self.password = user, password
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test token issuer")])
        now = datetime.now(UTC)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                .public_key(self.key.public_key()).serial_number(1)
                .not_valid_before(now - timedelta(hours=1))
                .not_valid_after(now + timedelta(days=1))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .sign(self.key, hashes.SHA256()))
        self.cert_der = cert.public_bytes(serialization.Encoding.DER)
        self.bundle = workdir / "token.pem"
        self.bundle.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        self.issued = 0
        self.requests: list[dict[str, list[str]]] = []

    def token(self, scope: str, service: str) -> str:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

        kind, name, actions = scope.split(":")
        header = {"typ": "JWT", "alg": "ES256",
                  "x5c": [base64.b64encode(self.cert_der).decode()]}
        now = int(time.time())
        claims = {"iss": "test-issuer", "sub": self.user, "aud": service, "exp": now + 300,
                  "nbf": now - 10, "iat": now, "jti": str(self.issued),
                  "access": [{"type": kind, "name": name, "actions": actions.split(",")}]}
        signing_input = (_b64url(json.dumps(header).encode()) + "."
                         + _b64url(json.dumps(claims).encode()))
        der = self.key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        self.issued += 1
        return signing_input + "." + _b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big"))

    @contextmanager
    def serve(self) -> Iterator[str]:
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                query = parse_qs(urlparse(self.path).query)
                issuer.requests.append(query)
                expected = "Basic " + base64.b64encode(
                    f"{issuer.user}:{issuer.password}".encode()).decode()
                if self.headers.get("Authorization") != expected:
                    self.send_response(401)
                    self.end_headers()
                    return
                body = json.dumps({"token": issuer.token(query["scope"][0],
                                                         query["service"][0]),
                                   "expires_in": 300}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}/token"
        finally:
            server.shutdown()
            server.server_close()


# --- registry ------------------------------------------------------------------------------


@dataclass
class Registry:
    host: str  # "127.0.0.1:port"
    log: LogTail
    push_headers: dict[str, str]
    storage: Path | None = None  # the filesystem driver's root directory

    def store(self, repo: str, blob_id: str, data: bytes) -> None:
        """Place `data` in the registry's storage as blob `sha256:<blob_id>` of `repo`.

        For RAFS blobs with a chunk-digest array, whose id leaves that array out of the
        hash (rafs-format §5.7): an upload under that digest would be refused, but the
        registry serves what its storage holds, as it would from a mirror or snapshotter
        that stores blobs by their RAFS id.
        """
        assert self.storage is not None
        root = self.storage / "docker" / "registry" / "v2"
        data_dir = root / "blobs" / "sha256" / blob_id[:2] / blob_id
        data_dir.mkdir(parents=True, exist_ok=True)
        (data_dir / "data").write_bytes(data)
        link = root / "repositories" / repo / "_layers" / "sha256" / blob_id / "link"
        link.parent.mkdir(parents=True, exist_ok=True)
        link.write_text(f"sha256:{blob_id}")

    def push(self, repo: str, data: bytes) -> str:
        """Monolithic upload: POST an upload session, then PUT the bytes with ?digest=."""
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        with httpx.Client(base_url=f"http://{self.host}", headers=self.push_headers,
                          timeout=10) as client:
            started = client.post(f"/v2/{repo}/blobs/uploads/")
            assert started.status_code == 202, started.text
            # keep the upload's own query (_state=...) and add the digest to it
            location = httpx.URL(started.headers["location"]).copy_merge_params(
                {"digest": digest})
            done = client.put(location, content=data,
                              headers={"Content-Type": "application/octet-stream"})
            assert done.status_code == 201, done.text
        return digest.removeprefix("sha256:")

    def blob_gets(self, blob: str, at_least: int = 0) -> list[str]:
        """The access-log lines of GETs of `blob`, after waiting for `at_least` of them."""
        return self.log.matching_at_least(rf'"GET /v2/[^ ]*/blobs/sha256:{blob} ', at_least)


def registry_binary() -> str:
    path = shutil.which("docker-registry") or shutil.which("registry")
    if path is None:
        pytest.fail("docker-registry is not installed: run hack/setup "
                    "(apt-get install docker-registry apache2-utils)")
    return path


@contextmanager
def registry(tmp: Path, auth: str = "", token_realm: str = "",
             bundle: Path | None = None) -> Iterator[Registry]:
    port = free_port()
    config = [
        "version: 0.1",
        "log:",
        "  level: info",
        "  accesslog:",
        "    disabled: false",
        "storage:",
        "  filesystem:",
        f"    rootdirectory: {tmp / 'storage'}",
        "http:",
        f"  addr: 127.0.0.1:{port}",
    ]
    push_headers: dict[str, str] = {}
    if auth == "htpasswd":
        subprocess.run(["htpasswd", "-Bbc", str(tmp / "htpasswd"), "alice", "s3cret"],
                       check=True, capture_output=True)
        config += ["auth:", "  htpasswd:", "    realm: test", f"    path: {tmp / 'htpasswd'}"]
        push_headers["Authorization"] = "Basic " + base64.b64encode(b"alice:s3cret").decode()
    elif auth == "token":
        assert bundle is not None
        config += ["auth:", "  token:", f"    realm: {token_realm}", "    service: test-registry",
                   "    issuer: test-issuer", f"    rootcertbundle: {bundle}"]
    (tmp / "config.yml").write_text("\n".join(config) + "\n")
    with running([registry_binary(), "serve", str(tmp / "config.yml")], "listening on") as log:
        yield Registry(f"127.0.0.1:{port}", log, push_headers, tmp / "storage")
