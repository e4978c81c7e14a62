"""The S3 provider's direct PutObject / UploadPart path (providers/_s3_direct.py).

Against real servers: moto with request authentication on (it verifies our SigV4 signatures),
and the scripted fault server (to see which path sent a request and to answer with a region
redirect).
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiobotocore.session
import pytest
import pytest_asyncio
from aiobotocore.config import AioConfig

from artifact_uploader._types import FileSlice
from artifact_uploader.providers._body import read_body
from artifact_uploader.providers._s3_direct import DirectS3
from artifact_uploader.providers.s3 import S3Provider
from tests.servers.moto import MotoServer, read_s3_object
from tests.servers.s3_faults import FaultServer, s3_error

MiB = 1024 * 1024
# botocore stamps every request it sends with this header; the direct path does not.
BOTOCORE_MARK = "amz-sdk-invocation-id"


def _sent_by_botocore(request: dict[str, object]) -> bool:
    headers = request["headers"]
    assert isinstance(headers, dict)
    return BOTOCORE_MARK in {k.lower() for k in headers}


@pytest_asyncio.fixture
async def faulty(s3_faults: FaultServer) -> AsyncIterator[S3Provider]:
    p = S3Provider.from_uri(
        "s3://bkt/pre",
        {
            "key": "AKIAEXAMPLEKEY",
            "secret": "fast-path-secret-0123456789",
            "endpoint_url": s3_faults.endpoint_url,
            "region": "us-east-1",
        },
    )
    await p.open(verify=False)
    try:
        yield p
    finally:
        await p.aclose()


@pytest.mark.asyncio
async def test_puts_take_the_direct_path(
    faulty: S3Provider, s3_faults: FaultServer, tmp_path: Path
) -> None:
    assert faulty.direct_region == "us-east-1"
    src = tmp_path / "f.bin"
    src.write_bytes(b"payload")
    s3_faults.script()
    await faulty.put("a.bin", FileSlice.whole(src), overwrite=True)
    await faulty.put_part("b.bin", "upload-1", 2, FileSlice.whole(src))
    put, part = s3_faults.requests()
    assert not _sent_by_botocore(put) and not _sent_by_botocore(part)
    assert part["path"] == "/bkt/pre/b.bin?partNumber=2&uploadId=upload-1"


@pytest.mark.asyncio
async def test_region_redirect_hands_over_to_botocore(
    faulty: S3Provider, s3_faults: FaultServer, tmp_path: Path
) -> None:
    # The bucket is elsewhere: botocore knows how to follow that, so from now on it sends.
    src = tmp_path / "f.bin"
    src.write_bytes(b"payload")
    s3_faults.script(s3_error(301, "PermanentRedirect", **{"x-amz-bucket-region": "eu-west-1"}))
    await faulty.put("a.bin", FileSlice.whole(src), overwrite=True)
    await faulty.put("c.bin", FileSlice.whole(src), overwrite=True)
    direct, again, later = s3_faults.requests()
    assert not _sent_by_botocore(direct)
    assert _sent_by_botocore(again) and again["path"] == "/bkt/pre/a.bin"
    assert _sent_by_botocore(later)


@pytest.mark.asyncio
async def test_unknown_parameter_goes_to_botocore(s3_faults: FaultServer) -> None:
    # The direct path on a client of its own, made as the provider makes one for a loopback
    # endpoint (path-style, unsigned payloads).
    session = aiobotocore.session.AioSession()
    config = AioConfig(s3={"addressing_style": "path", "payload_signing_enabled": False})
    async with session.create_client(
        "s3",
        region_name="us-east-1",
        endpoint_url=s3_faults.endpoint_url,
        aws_access_key_id="AKIAEXAMPLEKEY",
        aws_secret_access_key="fast-path-secret-0123456789",
        config=config,
    ) as client:
        direct = await DirectS3.create(
            client,
            "bkt",
            verify=None,
            connect_timeout=10.0,
            read_timeout=60.0,
            max_pool_connections=4,
            user_agent="artifact-uploader-test",
        )
        assert direct is not None
        try:
            s3_faults.script()
            await direct.put_object(Bucket="bkt", Key="pre/x", Body=b"x", ContentType="text/plain")
        finally:
            await direct.aclose()
    (req,) = s3_faults.requests()
    assert _sent_by_botocore(req)
    assert {k.lower(): v for k, v in req["headers"].items()}["content-type"] == "text/plain"


@pytest.mark.asyncio
async def test_signatures_verified_by_moto_for_awkward_keys(
    moto_server: MotoServer, moto_s3: Any, s3_bucket: str, tmp_path: Path
) -> None:
    bucket = s3_bucket
    iam = moto_server.client("iam")
    user = f"writer-{uuid.uuid4().hex[:8]}"
    iam.create_user(UserName=user)
    iam.put_user_policy(
        UserName=user,
        PolicyName="all",
        PolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
            }
        ),
    )
    key = iam.create_access_key(UserName=user)["AccessKey"]
    data = os.urandom(3 * MiB)  # above the mapped-read threshold for the part
    src = tmp_path / "f.bin"
    src.write_bytes(data)
    names = ["a b/ü+=&?#%.txt", "x//y", "./z", "q~!*'()[]@$,;:"]
    moto_server.set_auth(True)
    try:
        p = S3Provider.from_uri(
            f"s3://{bucket}/pre fix",
            moto_server.options(key=key["AccessKeyId"], secret=key["SecretAccessKey"]),
        )
        await p.open()
        try:
            assert p.direct_region is not None
            for name in names:
                await p.put(name, FileSlice(src, 0, 1000), overwrite=True)
            upload_id = await p.create_multipart("mp ü+", overwrite=True)
            part = await p.put_part("mp ü+", upload_id, 1, FileSlice.whole(src))
            await p.complete_multipart("mp ü+", upload_id, [part], overwrite=True)
        finally:
            await p.aclose()
    finally:
        moto_server.set_auth(False)
    for name in names:
        assert read_s3_object(moto_s3, bucket, f"pre fix/{name}") == data[:1000]
    assert read_s3_object(moto_s3, bucket, "pre fix/mp ü+") == data


@pytest.mark.asyncio
async def test_read_body_large_ranges_into_a_view(tmp_path: Path) -> None:
    data = os.urandom(2 * MiB + 5)
    src = tmp_path / "f.bin"
    src.write_bytes(data)
    small = await read_body(FileSlice(src, 7, 1000))
    assert isinstance(small, bytes) and small == data[7:1007]
    big = await read_body(FileSlice(src, 3, 2 * MiB))
    assert isinstance(big, memoryview) and big.tobytes() == data[3 : 3 + 2 * MiB]
    with pytest.raises(OSError, match="expected"):
        await read_body(FileSlice(src, MiB, 2 * MiB))
