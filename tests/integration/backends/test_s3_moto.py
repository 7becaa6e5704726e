"""The S3 backend against moto's standalone server on loopback.

moto (`pip install moto[server]`) is the most faithful S3 that installs here without a
container runtime: it checks SigV4 signatures on every request when credentials are set,
honours Range GETs and HEAD. Objects are uploaded with boto3 (moto's dependency), read
through our backend.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

import pytest

from backends import AuthError, BlobNotFound, s3_backend
from backends.base import BlobId
from backends.config import ObjectStoreConfig
from tests.integration.backends.servers import free_port, running

DATA = os.urandom(1 << 20)
BLOB = BlobId("ab" * 32)
POLICY = ('{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", '
          '"Resource": "*"}]}')


@pytest.fixture
def moto_endpoint() -> Iterator[str]:
    port = free_port()
    moto = os.path.join(os.path.dirname(sys.executable), "moto_server")
    with running([moto, "-H", "127.0.0.1", "-p", str(port)], r"Running on",
                 env={"INITIAL_NO_AUTH_ACTION_COUNT": "3"}):
        endpoint = f"127.0.0.1:{port}"
        import boto3

        # The first three calls run unauthenticated: create a user with a key and a policy;
        # from then on moto verifies every signature against that key.
        anon = {"endpoint_url": f"http://{endpoint}", "region_name": "us-east-1",
                "aws_access_key_id": "x", "aws_secret_access_key": "x"}
        iam = boto3.client("iam", **anon)
        iam.create_user(UserName="nydus")
        key = iam.create_access_key(UserName="nydus")["AccessKey"]
        iam.put_user_policy(UserName="nydus", PolicyName="s3", PolicyDocument=POLICY)
        s3 = boto3.client("s3", endpoint_url=f"http://{endpoint}", region_name="us-east-1",
                          aws_access_key_id=key["AccessKeyId"],
                          aws_secret_access_key=key["SecretAccessKey"])
        s3.create_bucket(Bucket="blobs")
        s3.put_object(Bucket="blobs", Key=f"nydus/{BLOB}", Body=DATA)
        yield f"{endpoint} {key['AccessKeyId']} {key['SecretAccessKey']}"


def store(endpoint_and_key: str, wrong_secret: bool = False) -> ObjectStoreConfig:
    endpoint, key_id, secret = endpoint_and_key.split()
    return ObjectStoreConfig(kind="s3", bucket_name="blobs", endpoint=endpoint, scheme="http",
                             region="us-east-1", object_prefix="nydus/", access_key_id=key_id,
                             access_key_secret="wrong" if wrong_secret else secret)


async def test_signed_range_reads(moto_endpoint: str) -> None:
    backend = s3_backend(store(moto_endpoint))
    assert await backend.blob_size(BLOB) == len(DATA)
    for offset, size in [(0, 10), (4095, 4097), (len(DATA) - 3, 3)]:
        assert await backend.read_range(BLOB, offset, size) == DATA[offset:offset + size]
    assert backend.metrics.read_amount_total == 10 + 4097 + 3
    with pytest.raises(BlobNotFound):
        await backend.read_range(BlobId("cd" * 32), 0, 1)
    await backend.aclose()


async def test_bad_signature_refused(moto_endpoint: str) -> None:
    backend = s3_backend(store(moto_endpoint, wrong_secret=True))
    with pytest.raises(AuthError):
        await backend.read_range(BLOB, 0, 10)
    await backend.aclose()
