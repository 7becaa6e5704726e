"""vhost-user framing: whole and byte-by-byte feeding, garbage in raises only protocol errors."""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vhostfs.errors import RejectedRequest, VhostUserProtocolError
from vhostfs.vhost_user.codec import NEED_DATA, Decoder, Message, check_shape, encode_reply
from vhostfs.vhost_user.messages import (
    U64,
    FrontendReq,
    Header,
    HeaderFlags,
    MemRegion,
    MemTableHeader,
    SingleMemRegion,
    VringAddr,
    VringState,
    decode_mem_table,
)


def frame(request: int, payload: bytes = b"", flags: int = 1) -> bytes:
    return Header(request, flags, len(payload)).pack() + payload


def test_record_sizes_match_the_spec() -> None:
    assert Header.SIZE == 12
    assert VringState.SIZE == 8
    assert VringAddr.SIZE == 40
    assert MemRegion.SIZE == 32
    assert MemTableHeader.SIZE == 8
    assert SingleMemRegion.SIZE == 40


def test_whole_and_byte_by_byte_feeding_agree() -> None:
    stream = frame(FrontendReq.GET_FEATURES) + frame(FrontendReq.SET_FEATURES, U64(7).pack(), 9)
    whole = Decoder()
    whole.feed(stream, [])
    first, second = whole.next_message(), whole.next_message()
    assert whole.next_message() is NEED_DATA
    assert isinstance(first, Message) and first.request == FrontendReq.GET_FEATURES
    assert isinstance(second, Message) and second.payload == U64(7).pack()
    assert second.need_reply
    trickle = Decoder()
    got = []
    for byte in stream:
        trickle.feed(bytes([byte]), [])
        message = trickle.next_message()
        if message is not NEED_DATA:
            got.append(message)
    assert got == [first, second]


def test_fds_belong_to_the_message_being_assembled() -> None:
    r, w = os.pipe()
    decoder = Decoder()
    decoder.feed(frame(FrontendReq.SET_VRING_KICK, U64(1).pack())[:12], [r])
    assert decoder.next_message() is NEED_DATA
    decoder.feed(U64(1).pack(), [])
    message = decoder.next_message()
    assert isinstance(message, Message) and message.fds == [r]
    message.close_fds()
    os.close(w)
    with pytest.raises(OSError):
        os.fstat(r)


def test_oversized_payload_is_a_framing_error() -> None:
    decoder = Decoder()
    decoder.feed(Header(FrontendReq.SET_MEM_TABLE, 1, 1 << 20).pack(), [])
    with pytest.raises(VhostUserProtocolError, match="payload"):
        decoder.next_message()


def test_wrong_version_is_a_framing_error() -> None:
    decoder = Decoder()
    decoder.feed(frame(FrontendReq.GET_FEATURES, flags=2), [])
    with pytest.raises(VhostUserProtocolError, match="version"):
        decoder.next_message()


def test_shape_checks_payload_size_and_fd_count() -> None:
    with pytest.raises(RejectedRequest, match="payload"):
        check_shape(Message(FrontendReq.SET_FEATURES, 1, b"\0" * 4))
    with pytest.raises(RejectedRequest, match="fds"):
        check_shape(Message(FrontendReq.ADD_MEM_REG, 1, b"\0" * 40, []))
    check_shape(Message(FrontendReq.SET_VRING_CALL, 1, U64(0x100).pack(), []))


def test_reply_sets_reply_flag_and_echoes_the_request() -> None:
    reply = encode_reply(FrontendReq.GET_FEATURES, U64(5).pack())
    header = Header.unpack_from(reply)
    assert header.request == FrontendReq.GET_FEATURES
    assert header.flags == 1 | HeaderFlags.REPLY
    assert header.size == 8


def test_mem_table_count_must_match_the_payload() -> None:
    region = MemRegion(0, 4096, 0x7000_0000, 0).pack()
    assert decode_mem_table(MemTableHeader(1).pack() + region) == [MemRegion.unpack(region)]
    with pytest.raises(VhostUserProtocolError):
        decode_mem_table(MemTableHeader(2).pack() + region)
    with pytest.raises(VhostUserProtocolError):
        decode_mem_table(MemTableHeader(0).pack())
    with pytest.raises(VhostUserProtocolError):
        decode_mem_table(MemTableHeader(1).pack() + MemRegion(0, 0, 0, 0).pack())


@given(st.binary(max_size=200))
def test_garbage_parses_or_raises_protocol_error(data: bytes) -> None:
    decoder = Decoder()
    decoder.feed(data, [])
    try:
        for _ in range(len(data) + 1):
            message = decoder.next_message()
            if message is NEED_DATA:
                break
            try:
                check_shape(message)
            except RejectedRequest:
                pass
    except VhostUserProtocolError:
        pass
