"""How the S3 provider reaches the store: region, TLS trust, payload signing, log scrubbing.

Against real servers: moto (which hosts buckets in several regions and reports a bucket's
region on HeadBucket) and the scripted fault server (to see which path sent a request).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from artifact_uploader._types import FileSlice
from artifact_uploader.providers.s3 import S3Provider
from tests.servers.moto import MotoServer, read_s3_object
from tests.servers.s3_faults import FaultServer, s3_error

# botocore stamps every request it sends with this header; the direct path does not.
BOTOCORE_MARK = "amz-sdk-invocation-id"


def sent_by_botocore(request: dict[str, Any]) -> bool:
    return BOTOCORE_MARK in {k.lower() for k in request["headers"]}


@pytest.fixture
def eu_bucket(moto_server: MotoServer, moto_s3: Any) -> Iterator[str]:
    name = f"eu-{uuid.uuid4().hex[:16]}"
    moto_s3.create_bucket(
        Bucket=name, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"}
    )
    try:
        yield name
    finally:
        moto_server.reset()


# -- region --------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_bucket_in_another_region_leaves_the_direct_path_off(
    moto_server: MotoServer, moto_s3: Any, eu_bucket: str, tmp_path: Path
) -> None:
    src = tmp_path / "f.bin"
    src.write_bytes(b"elsewhere")
    # Opened for us-east-1 (the moto options' region); HeadBucket says eu-west-1.
    provider = S3Provider.from_uri(f"s3://{eu_bucket}/p", moto_server.options())
    await provider.open()
    try:
        assert provider._direct is None
        await provider.put("f.bin", FileSlice(src, 0, 9), overwrite=True)
    finally:
        await provider.aclose()
    assert read_s3_object(moto_s3, eu_bucket, "p/f.bin") == b"elsewhere"


@pytest.mark.asyncio
async def test_bucket_in_the_signing_region_keeps_the_direct_path(
    moto_server: MotoServer, eu_bucket: str
) -> None:
    provider = S3Provider.from_uri(f"s3://{eu_bucket}/p", moto_server.options(region="eu-west-1"))
    await provider.open()
    try:
        assert provider._direct is not None and provider._direct.region == "eu-west-1"
    finally:
        await provider.aclose()


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("status", "code"), [(400, "AuthorizationHeaderMalformed"), (301, "PermanentRedirect")]
)
async def test_wrong_region_answer_without_the_header_hands_over_to_botocore(
    s3_faults: FaultServer, tmp_path: Path, status: int, code: str
) -> None:
    src = tmp_path / "f.bin"
    src.write_bytes(b"payload")
    provider = S3Provider.from_uri(
        "s3://bkt/pre",
        {
            "key": "AKIAEXAMPLEKEY",
            "secret": "transport-secret-0123456789",
            "endpoint_url": s3_faults.endpoint_url,
            "region": "us-east-1",
        },
    )
    await provider.open(verify=False)
    try:
        assert provider._direct is not None
        s3_faults.script(s3_error(status, code))
        await provider.put("a.bin", FileSlice(src, 0, 7), overwrite=True)
    finally:
        await provider.aclose()
    direct, again = s3_faults.requests()
    assert not sent_by_botocore(direct)
    assert sent_by_botocore(again) and again["path"] == "/bkt/pre/a.bin"
