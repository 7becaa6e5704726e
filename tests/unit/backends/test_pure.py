"""Pure pieces of backends: chunk map codec, run merging, challenge parser, retry policy,
signers (published vectors), Content-Range, public surface."""

from __future__ import annotations

import base64
import random
from datetime import UTC, datetime

import pytest

import backends
from backends import rangemap
from backends.errors import AuthError, BackendTimeout, BlobNotFound, CorruptData, ServerError
from backends.http import RetryPolicy, parse_content_range, range_header
from backends.registry_auth import decode_auth, parse_challenges, parse_token_response
from backends.signing import EMPTY_SHA256, Credentials, oss_signature, sigv4_headers

# --- chunk map (nydusd-interface §5) ---------------------------------------------------


def test_chunk_map_header_layout() -> None:
    header = rangemap.encode_header(all_ready=False)
    assert len(header) == 4096
    assert header[:16] == bytes.fromhex("50414d42" "01000000" "50414d43" "00000000")
    assert rangemap.decode_header(header) is False
    ready = rangemap.encode_header(all_ready=True)
    assert ready[12:16] == bytes.fromhex("50414d4d")
    assert rangemap.decode_header(ready) is True


@pytest.mark.parametrize("damage", [0, 4, 8, 12, 100, 4095])
def test_chunk_map_header_rejects_damage(damage: int) -> None:
    header = bytearray(rangemap.encode_header(all_ready=False))
    header[damage] ^= 0x5A
    assert rangemap.decode_header(bytes(header)) is None
    assert rangemap.decode_header(bytes(100)) is None


def test_bitmap_is_msb_first() -> None:
    bits = bytearray(rangemap.bitmap_size(10))
    assert len(bits) == 2 and rangemap.file_size(10) == 4098
    rangemap.set_bits(bits, [0, 9])
    assert bits == bytearray([0x80, 0x40])
    assert rangemap.is_set(bits, 0) and rangemap.is_set(bits, 9)
    assert not rangemap.is_set(bits, 1)
    assert not rangemap.all_set(bits, 10)
    rangemap.set_bits(bits, range(10))
    assert bits == bytearray([0xFF, 0xC0]) and rangemap.all_set(bits, 10)
    assert rangemap.count_set(bits, 10) == 10
    rangemap.clear_bits(bits, [3])
    assert bits[0] == 0xEF and not rangemap.all_set(bits, 10)


def test_merge_runs_respects_gap_and_size() -> None:
    starts, ends = [0, 10, 20, 100, 105], [10, 20, 30, 105, 300]
    items = list(range(5))
    assert rangemap.merge_runs(items, starts, ends, max_gap=0, max_size=1000) == [
        [0, 1, 2], [3, 4]]
    assert rangemap.merge_runs(items, starts, ends, max_gap=70, max_size=1000) == [items]
    assert rangemap.merge_runs(items, starts, ends, max_gap=0, max_size=20) == [
        [0, 1], [2], [3], [4]]


# --- WWW-Authenticate and tokens ------------------------------------------------------------


def test_parse_docker_hub_challenge() -> None:
    header = ('Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
              'scope="repository:library/alpine:pull"')
    [challenge] = parse_challenges(header)
    assert challenge.scheme == "bearer"
    assert challenge.params == {"realm": "https://auth.docker.io/token",
                                "service": "registry.docker.io",
                                "scope": "repository:library/alpine:pull"}


def test_parse_several_challenges_and_escapes() -> None:
    header = 'Basic realm="a \\"quoted\\" realm", Bearer realm=https://t/x , error=invalid_token'
    basic, bearer = parse_challenges(header)
    assert basic.scheme == "basic" and basic.params == {"realm": 'a "quoted" realm'}
    assert bearer.params == {"realm": "https://t/x", "error": "invalid_token"}


@pytest.mark.parametrize("garbage", ["", ",,,", "=", '"x"', "Bearer realm=\"unterminated"])
def test_parse_challenge_garbage_never_raises(garbage: str) -> None:
    for challenge in parse_challenges(garbage):
        assert "realm" not in challenge.params or challenge.params["realm"]


def test_token_response_and_auth_key() -> None:
    assert parse_token_response(b'{"token": "t", "expires_in": 30}', 100.0) == ("t", 130.0)
    assert parse_token_response(b'{"access_token": "a"}', 0.0) == ("a", 600.0)
    with pytest.raises(AuthError):
        parse_token_response(b'{"nothing": 1}', 0.0)
    with pytest.raises(AuthError):
        parse_token_response(b"not json", 0.0)
    assert decode_auth(base64.b64encode(b"user:pa:ss").decode()) == ("user", "pa:ss")
    with pytest.raises(AuthError):
        decode_auth("!!!")


# --- retry policy and HTTP ranges -----------------------------------------------------------


def test_retry_policy_delays_and_decisions() -> None:
    policy = RetryPolicy(retries=3, base_delay=0.1, factor=2, max_delay=0.3, jitter=0.0)
    assert [policy.delay(n) for n in range(4)] == pytest.approx([0.1, 0.2, 0.3, 0.3])
    assert policy.should_retry(ServerError("x"), 0)
    assert policy.should_retry(BackendTimeout("x"), 2)
    assert not policy.should_retry(BackendTimeout("x"), 3)
    assert not policy.should_retry(BlobNotFound("x"), 0)
    assert not policy.should_retry(CorruptData("x"), 0)
    jittery = RetryPolicy(jitter=0.5, rng=random.Random(7))
    assert all(0.05 <= jittery.delay(0) <= 0.1 for _ in range(50))


def test_range_headers() -> None:
    assert range_header(10, 5) == "bytes=10-14"
    assert parse_content_range("bytes 10-14/100") == (10, 14, 100)
    assert parse_content_range("bytes 0-0/*") == (0, 0, None)
    with pytest.raises(CorruptData):
        parse_content_range("bytes=10-14")


# --- signers: published vectors -------------------------------------------------------------

AWS_SUITE = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")


def test_sigv4_suite_get_vanilla() -> None:
    """AWS SigV4 test suite, `get-vanilla`."""
    headers = sigv4_headers(method="GET", path="/", query=[],
                            headers={"Host": "example.amazonaws.com"},
                            payload_sha256=EMPTY_SHA256, credentials=AWS_SUITE,
                            region="us-east-1", service="service",
                            now=datetime(2015, 8, 30, 12, 36, tzinfo=UTC),
                            content_sha256_header=False)
    assert headers["x-amz-date"] == "20150830T123600Z"
    assert headers["Authorization"] == (
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, "
        "SignedHeaders=host;x-amz-date, "
        "Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31")


def test_sigv4_suite_get_vanilla_query_order() -> None:
    """AWS SigV4 test suite, `get-vanilla-query-order-key-case`."""
    headers = sigv4_headers(method="GET", path="/",
                            query=[("Param2", "value2"), ("Param1", "value1")],
                            headers={"Host": "example.amazonaws.com"},
                            payload_sha256=EMPTY_SHA256, credentials=AWS_SUITE,
                            region="us-east-1", service="service",
                            now=datetime(2015, 8, 30, 12, 36, tzinfo=UTC),
                            content_sha256_header=False)
    assert headers["Authorization"].endswith(
        "Signature=b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500")


def test_sigv4_s3_get_object_with_range() -> None:
    """The S3 developer guide's "GET Object" SigV4 example (examplebucket, Range 0-9)."""
    creds = Credentials("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
    headers = sigv4_headers(method="GET", path="/test.txt", query=[],
                            headers={"Host": "examplebucket.s3.amazonaws.com",
                                     "Range": "bytes=0-9"},
                            payload_sha256=EMPTY_SHA256, credentials=creds,
                            region="us-east-1", service="s3",
                            now=datetime(2013, 5, 24, tzinfo=UTC))
    assert headers["x-amz-content-sha256"] == EMPTY_SHA256
    assert headers["Authorization"] == (
        "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, "
        "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, "
        "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41")


def test_oss_signature_documented_example() -> None:
    """Alibaba OSS "PUT /nelson" header-signature example."""
    signature = oss_signature(
        method="PUT", content_md5="ODBGOERFMDMzQTczRUY3NUE3NzA5QzdFNUYzMDQxNEM=",
        content_type="text/html", date="Thu, 17 Nov 2005 18:49:58 GMT",
        headers={"X-OSS-Meta-Author": "foo@bar.com", "X-OSS-Magic": "abracadabra",
                 "Host": "oss-example.oss-cn-hangzhou.aliyuncs.com"},
        resource="/oss-example/nelson", secret="OtxrzxIsfpFjA7SwPzILwy8Bw21TLhquhboDYROV")
    assert signature == "26NBxoKdsyly4EDv6inkoDft/yA="


# --- public surface ---------------------------------------------------------------------


def test_public_surface() -> None:
    assert sorted(backends.__all__) == backends.__all__
    for name in backends.__all__:
        assert getattr(backends, name) is not None
    assert backends.blob_id("sha256:" + "ab" * 32) == "ab" * 32
    with pytest.raises(backends.BackendError):
        backends.blob_id("../etc/passwd")
