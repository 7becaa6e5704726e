"""A RAFS image read through RafsFilesystem from moto's standalone S3 server (signed SigV4
range GETs into the blob cache).

moto (`moto[server]`, a dev dependency) is the most faithful S3 that installs here: it checks
SigV4 signatures and serves ranges like S3; MinIO and the real S3 are not reachable offline.
"""

from __future__ import annotations

import json
from pathlib import Path

import trio

from tests.integration.backends.test_s3_moto import moto_endpoint
from tests.integration.test_rafs_prefetch import read_path
from tests.support.lazyimage import chunk_map_bits, make_image
from vhostfs.fs.factory import open_rafs

__all__ = ["moto_endpoint"]  # the fixture, imported for this module's tests


async def test_image_from_moto_s3(moto_endpoint: str, tmp_path: Path) -> None:
    import boto3

    endpoint, key_id, secret = moto_endpoint.split()
    image = make_image(tmp_path / "img", {"/a/one": 300_000, "/a/two": 200_000, "/b": 5_000})
    s3 = boto3.client("s3", endpoint_url=f"http://{endpoint}", region_name="us-east-1",
                      aws_access_key_id=key_id, aws_secret_access_key=secret)
    s3.put_object(Bucket="blobs", Key=f"nydus/{image.blob_id}",
                  Body=image.blob_path.read_bytes())
    work = tmp_path / "cache"
    config = {"version": 2, "backend": {"type": "s3", "s3": {
        "scheme": "http", "endpoint": endpoint, "region": "us-east-1", "bucket_name": "blobs",
        "object_prefix": "nydus/", "access_key_id": key_id, "access_key_secret": secret}},
        "cache": {"type": "blobcache", "filecache": {"work_dir": str(work)}},
        "rafs": {"mode": "direct", "batch_size": 0}}
    fs = open_rafs(str(image.bootstrap), config=json.dumps(config),
                   limiter=trio.CapacityLimiter(2))
    assert await read_path(fs, "/a/two") == image.files["/a/two"]
    assert await read_path(fs, "/b") == image.files["/b"]
    metrics = fs.metrics()
    assert metrics["backend"]["backend_type"] == "s3"
    # only the two files' chunks came over the wire
    assert metrics["backend"]["read_amount_total"] == sum(
        e - s for s, e in image.ranges("/a/two", "/b"))
    assert chunk_map_bits(work, image.blob_id) == len(image.chunks("/a/two")) + 1
    await fs.chunks.aclose()
