"""The API's HTTP codec: limits, bodies, targets, keep-alive and garbage in."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vhostfs.api.http import (
    CLOSED,
    MAX_BODY,
    MAX_LINE,
    NEED_DATA,
    HttpConnection,
    ProtocolError,
    Request,
    Response,
    error_response,
    parse_target,
)


def one(raw: bytes) -> Request:
    conn = HttpConnection()
    conn.receive_data(raw)
    request = conn.next_request()
    assert isinstance(request, Request)
    return request


def refused(raw: bytes) -> str:
    conn = HttpConnection()
    conn.receive_data(raw)
    with pytest.raises(ProtocolError) as info:
        conn.next_request()
    return info.value.reason


def test_origin_and_absolute_targets() -> None:
    assert one(b"GET /api/v1/daemon HTTP/1.1\r\n\r\n") == Request("GET", "/api/v1/daemon")
    absolute = one(b"GET http://localhost/api/v1/daemon?id=x HTTP/1.0\r\n\r\n")
    assert (absolute.path, absolute.query) == ("/api/v1/daemon", {"id": "x"})


@pytest.mark.parametrize("target", [
    "/api/v1/mount?mountpoint=/rafs/abc/lowerdir",
    "/api/v1/mount?mountpoint=%2Frafs%2Fabc%2Flowerdir",
    "/api/v1/mount?mountpoint=%2frafs%2fabc%2flowerdir&mountpoint=/other",
])
def test_query_is_percent_decoded_first_wins(target: str) -> None:
    assert parse_target(target) == ("/api/v1/mount", {"mountpoint": "/rafs/abc/lowerdir"})


def test_plus_is_a_space_and_blank_values_kept() -> None:
    assert parse_target("/x?a=b+c&d=") == ("/x", {"a": "b c", "d": ""})


def test_body_and_zero_length() -> None:
    raw = b'PUT /a HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}'
    assert one(raw).body == b"{}"
    assert one(b"PUT /a HTTP/1.1\r\nContent-Length: 0\r\n\r\n").body is None


def test_body_limit() -> None:
    body = b"x" * MAX_BODY
    assert one(b"PUT /a HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % MAX_BODY + body).body == body
    assert refused(b"PUT /a HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % (MAX_BODY + 1)) == (
        "Payload too large")
    chunk = b"%x\r\n" % (MAX_BODY + 1) + b"y" * (MAX_BODY + 1) + b"\r\n0\r\n\r\n"
    assert refused(b"PUT /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk) == (
        "Payload too large")


def test_get_with_a_body_is_refused() -> None:
    assert "body" in refused(b"GET /a HTTP/1.1\r\nContent-Length: 1\r\n\r\nx")


def test_line_limits() -> None:
    fits = b"GET /" + b"a" * (MAX_LINE - len(b"GET / HTTP/1.1\r\n")) + b" HTTP/1.1\r\n\r\n"
    assert one(fits).method == "GET"
    too_long = b"GET /" + b"a" * (MAX_LINE - len(b"GET / HTTP/1.1\r\n") + 1) + b" HTTP/1.1\r\n"
    assert refused(too_long) == "Request line too long"  # refused before the head ends
    header = b"X: " + b"v" * (MAX_LINE - 4) + b"\r\n"
    assert refused(b"GET / HTTP/1.1\r\n" + header + b"\r\n") == "Header line too long"


def test_host_is_optional() -> None:
    assert one(b"GET /x HTTP/1.1\r\n\r\n").path == "/x"
    assert one(b"GET /x HTTP/1.1\r\nHost: a\r\nAccept: */*\r\n\r\n").path == "/x"
    assert one(b"GET /x HTTP/1.1\r\nAccept: */*\r\n\r\n").path == "/x"


def test_keep_alive_and_pipelining() -> None:
    conn = HttpConnection()
    conn.receive_data(b"GET /a HTTP/1.1\r\n\r\nPUT /b HTTP/1.1\r\nContent-Length: 1\r\n\r\nx")
    first = conn.next_request()
    assert isinstance(first, Request) and first.path == "/a"
    reply = conn.send(Response.json(200, {"ok": True}))
    assert reply.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Server: Nydus API\r\n" in reply and b"Content-Type: application/json\r\n" in reply
    assert reply.endswith(b'\r\n\r\n{"ok": true}')
    second = conn.next_request()
    assert isinstance(second, Request) and (second.path, second.body) == ("/b", b"x")
    no_content = conn.send(Response(204))
    assert no_content.startswith(b"HTTP/1.1 204 No Content\r\n")
    assert b"Content-Type: application/json" in no_content
    assert b"Content-Length" not in no_content
    assert conn.keep_alive
    assert conn.next_request() is NEED_DATA
    conn.receive_data(b"")
    assert conn.next_request() is CLOSED


def test_http10_closes() -> None:
    conn = HttpConnection()
    conn.receive_data(b"GET /a HTTP/1.0\r\n\r\n")
    assert isinstance(conn.next_request(), Request)
    assert b"Connection: close" in conn.send(Response(204))
    assert not conn.keep_alive


def test_expect_100_continue() -> None:
    conn = HttpConnection()
    conn.receive_data(b"PUT /a HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n")
    assert conn.next_request() is NEED_DATA
    assert conn.data_to_send().startswith(b"HTTP/1.1 100")
    conn.receive_data(b"{}")
    request = conn.next_request()
    assert isinstance(request, Request) and request.body == b"{}"


def test_byte_by_byte() -> None:
    raw = b"PUT /api/v1/mount?mountpoint=%2Fx HTTP/1.1\r\nContent-Length: 3\r\n\r\n{ }"
    conn = HttpConnection()
    for i in range(len(raw)):
        assert conn.next_request() is NEED_DATA
        conn.receive_data(raw[i : i + 1])
    request = conn.next_request()
    assert isinstance(request, Request)
    assert (request.query, request.body) == ({"mountpoint": "/x"}, b"{ }")


def test_truncated_request_at_eof() -> None:
    conn = HttpConnection()
    conn.receive_data(b"PUT /a HTTP/1.1\r\nContent-Length: 5\r\n\r\nab")
    conn.receive_data(b"")
    with pytest.raises(ProtocolError):
        conn.next_request()


def test_malformed_request_reply() -> None:
    conn = HttpConnection()
    conn.receive_data(b"NONSENSE\r\n\r\n")
    with pytest.raises(ProtocolError) as info:
        conn.next_request()
    reply = conn.send(error_response(info.value.reason))
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 Bad Request")
    assert b"Connection: close" in head
    message = json.loads(body)["error"]
    assert message.endswith("\nAll previous unanswered requests will be dropped.")
    assert not conn.keep_alive


def drain(conn: HttpConnection) -> None:
    """Pull requests until input runs out; answer each; garbage must raise ProtocolError."""
    for _ in range(100):
        event = conn.next_request()
        if event is NEED_DATA or event is CLOSED:
            return
        conn.send(Response(204))
        if not conn.keep_alive:
            return


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.booleans())
def test_garbage_in_parses_or_raises_protocol_error(data: bytes, bytewise: bool) -> None:
    conn = HttpConnection()
    chunks = [data[i : i + 1] for i in range(len(data))] if bytewise else [data]
    reason = outcome(conn, [*chunks, b""])
    if reason is not None:
        assert reason
        assert conn.send(error_response(reason)).startswith(b"HTTP/1.1 400")


def outcome(conn: HttpConnection, chunks: list[bytes]) -> str | None:
    """None if every chunk was consumed; the ProtocolError's reason otherwise."""
    try:
        for chunk in chunks:
            conn.receive_data(chunk)
            drain(conn)
    except ProtocolError as exc:
        return exc.reason
    return None


PREFIXES = [b"GET / HTTP/1.1\r\n", b"PUT /a?b=%ZZ HTTP/1.1\r\nContent-Length: 3\r\n",
            b"POST http://x/y HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"]


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(PREFIXES), st.binary(max_size=200))
def test_plausible_heads_with_garbage(prefix: bytes, tail: bytes) -> None:
    conn = HttpConnection()
    reason = outcome(conn, [prefix + tail, b""])
    assert reason is None or reason
