"""Answers lost after the store carried a request out: the retry must not report a stored
upload failed. S3 (moto), GCS (fake-gcs-server) and Azure (Azurite), each behind the fault
proxy.

The fault proxy forwards the request to moto (which stores the object or completes the upload)
and then resets the connection instead of passing the answer on. The engine's retry of a
conditional PutObject then meets 412 and the retry of CompleteMultipartUpload meets 412 or
NoSuchUpload; the provider checks the stored object against what it sent and reports success
only when it matches.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from artifact_uploader import (
    AsyncUploader,
    EventKind,
    ObjectExistsError,
    ProviderError,
    UploadEvent,
)
from artifact_uploader._types import FileSlice, PartResult
from artifact_uploader.providers.azure import AzureProvider
from artifact_uploader.providers.gcs import GCSProvider
from artifact_uploader.providers.s3 import S3Provider
from tests.conftest import FAST_RETRY
from tests.servers.azurite import AzureContainer, AzuriteServer
from tests.servers.fake_gcs import FakeGCSServer
from tests.servers.fault_proxy import SMALL_PARTS, Fault, FaultProxy, proxied_s3_uploader
from tests.servers.moto import MotoServer, list_multipart_uploads, read_s3_object

MiB = 1024 * 1024


@pytest.mark.asyncio
@pytest.mark.parametrize("checksum", ["crc32c", None])
async def test_conditional_put_whose_answer_was_lost_succeeds(
    moto_server: MotoServer,
    moto_s3: Any,
    s3_bucket: str,
    fault_proxy: FaultProxy,
    tmp_path: Path,
    checksum: str | None,
) -> None:
    data = os.urandom(300 * 1024)
    path = tmp_path / "lost.bin"
    path.write_bytes(data)
    events: list[UploadEvent] = []
    async with proxied_s3_uploader(
        moto_server,
        fault_proxy,
        s3_bucket,
        FAST_RETRY,
        events,
        {"checksum": checksum},
        parts=SMALL_PARTS,
    ) as up:
        # Twice: aiohttp resends a PUT once by itself when its connection drops.
        fault_proxy.script(Fault("lost"), Fault("lost"), match="lost.bin", method="PUT")
        result = await (await up.submit(path, "lost.bin", overwrite=False))
    assert fault_proxy.counts["lost"] == 2
    assert read_s3_object(moto_s3, s3_bucket, "run/lost.bin") == data
    assert any(e.kind is EventKind.RETRY for e in events)
    assert result.size == len(data)
    assert result.etag is not None
    if checksum:
        assert result.checksum_algorithm == "crc32c" and result.checksum


@pytest.mark.asyncio
async def test_put_whose_one_answer_was_lost_and_resent_by_the_transport_succeeds(
    moto_server: MotoServer,
    moto_s3: Any,
    s3_bucket: str,
    fault_proxy: FaultProxy,
    tmp_path: Path,
) -> None:
    # One loss only: the resend inside the same attempt (aiohttp's) meets the 412.
    data = os.urandom(64 * 1024)
    path = tmp_path / "once.bin"
    path.write_bytes(data)
    events: list[UploadEvent] = []
    async with proxied_s3_uploader(
        moto_server, fault_proxy, s3_bucket, FAST_RETRY, events, parts=SMALL_PARTS
    ) as up:
        fault_proxy.script(Fault("lost"), match="once.bin", method="PUT")
        await (await up.submit(path, "once.bin", overwrite=False))
    assert fault_proxy.counts["lost"] == 1
    assert read_s3_object(moto_s3, s3_bucket, "run/once.bin") == data


@pytest.mark.asyncio
@pytest.mark.parametrize("overwrite", [False, True])
async def test_complete_whose_answer_was_lost_succeeds(
    moto_server: MotoServer,
    moto_s3: Any,
    s3_bucket: str,
    fault_proxy: FaultProxy,
    tmp_path: Path,
    overwrite: bool,
) -> None:
    data = os.urandom(5 * MiB + 4096)
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    events: list[UploadEvent] = []
    async with proxied_s3_uploader(
        moto_server, fault_proxy, s3_bucket, FAST_RETRY, events, parts=SMALL_PARTS
    ) as up:
        # "uploadId=" in a POST is CompleteMultipartUpload (Create is "?uploads").
        fault_proxy.script(Fault("lost"), match="uploadId=", method="POST")
        result = await (await up.submit(path, "big.bin", overwrite=overwrite))
    assert fault_proxy.counts["lost"] == 1
    assert len(fault_proxy.seen("uploadId=")) >= 3  # two parts, two Completes
    assert read_s3_object(moto_s3, s3_bucket, "run/big.bin") == data
    assert list_multipart_uploads(moto_s3, s3_bucket) == []
    assert result.etag is not None and result.etag.endswith("-2")
    assert not [e for e in events if e.kind is EventKind.FAILED]


@pytest.mark.asyncio
async def test_complete_retried_after_the_upload_is_gone_checks_the_object(
    moto_server: MotoServer, moto_s3: Any, s3_bucket: str, fault_proxy: FaultProxy, tmp_path: Path
) -> None:
    # S3 answers a retried Complete of a completed upload with NoSuchUpload (moto would complete
    # it again, so the proxy gives S3's answer), driven at the provider.
    data = os.urandom(5 * MiB + 10)
    path = tmp_path / "gone.bin"
    path.write_bytes(data)
    provider = S3Provider.from_uri(
        f"s3://{s3_bucket}/run", moto_server.options(endpoint_url=fault_proxy.endpoint_url)
    )
    await provider.open()
    try:

        async def two_parts(name: str) -> tuple[str, list[PartResult]]:
            upload_id = await provider.create_multipart(name, overwrite=True)
            return upload_id, [
                await provider.put_part(name, upload_id, 1, FileSlice(path, 0, 5 * MiB)),
                await provider.put_part(name, upload_id, 2, FileSlice(path, 5 * MiB, 10)),
            ]

        upload_id, parts = await two_parts("gone.bin")
        fault_proxy.script(Fault("lost"), Fault("404-upload"), match="uploadId=", method="POST")
        with pytest.raises(ProviderError) as info:
            await provider.complete_multipart("gone.bin", upload_id, parts, overwrite=True)
        assert info.value.transient
        assert read_s3_object(moto_s3, s3_bucket, "run/gone.bin") == data
        result = await provider.complete_multipart("gone.bin", upload_id, parts, overwrite=True)
        assert fault_proxy.counts["404-upload"] == 1
        assert result.etag is not None and result.etag.endswith("-2")

        # A Complete never sent before gets the plain error: the check is only for resends.
        other, other_parts = await two_parts("other.bin")
        fault_proxy.script(Fault("404-upload"), match="uploadId=", method="POST")
        with pytest.raises(ProviderError, match="NoSuchUpload") as info:
            await provider.complete_multipart("other.bin", other, other_parts, overwrite=True)
        assert not info.value.transient
        # A resent Complete whose upload is gone without an object is still a failure.
        await provider.abort_multipart("other.bin", other)
        third, third_parts = await two_parts("third.bin")
        await provider.abort_multipart("third.bin", third)
        fault_proxy.script(Fault("reset"), Fault("404-upload"), match="uploadId=", method="POST")
        with pytest.raises(ProviderError) as info:
            await provider.complete_multipart("third.bin", third, third_parts, overwrite=True)
        assert info.value.transient
        with pytest.raises(ProviderError, match="NoSuchUpload"):
            await provider.complete_multipart("third.bin", third, third_parts, overwrite=True)
    finally:
        await provider.aclose()


@pytest.mark.asyncio
async def test_a_lost_answer_does_not_hide_someone_elses_object(
    moto_server: MotoServer, moto_s3: Any, s3_bucket: str, fault_proxy: FaultProxy, tmp_path: Path
) -> None:
    path = tmp_path / "mine.bin"
    path.write_bytes(b"mine" * 1000)
    provider = S3Provider.from_uri(
        f"s3://{s3_bucket}/run", moto_server.options(endpoint_url=fault_proxy.endpoint_url)
    )
    await provider.open()
    try:
        data = FileSlice(path, 0, 4000)
        fault_proxy.script(Fault("lost"), Fault("lost"), match="mine.bin", method="PUT")
        with pytest.raises(ProviderError) as info:
            await provider.put("mine.bin", data, overwrite=False)
        assert info.value.transient
        # Someone else replaces the object before our retry: the retry's 412 is a conflict.
        moto_s3.put_object(Bucket=s3_bucket, Key="run/mine.bin", Body=b"theirs" * 666)
        with pytest.raises(ObjectExistsError):
            await provider.put("mine.bin", data, overwrite=False)
        # And a first attempt meeting identical bytes is still "exists" (not a resend).
        other = tmp_path / "same.bin"
        other.write_bytes(b"theirs" * 666)
        with pytest.raises(ObjectExistsError):
            await provider.put("mine.bin", FileSlice(other, 0, 3996), overwrite=False)
    finally:
        await provider.aclose()


# -- GCS -----------------------------------------------------------------------------------


@pytest.fixture
def gcs_proxy(fake_gcs_server: FakeGCSServer) -> Iterator[FaultProxy]:
    """A fault proxy in front of fake-gcs-server (which keeps the proxy's host in the
    resumable session URLs it hands out, so those requests pass the proxy too)."""
    proxy = FaultProxy(fake_gcs_server.api_root)
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.reset()
        proxy.stop()


@pytest.mark.asyncio
@pytest.mark.parametrize(("size", "method"), [(200 * 1024, "POST"), (3 * MiB, "PUT")])
async def test_gcs_conditional_upload_whose_answer_was_lost_succeeds(
    fake_gcs_server: FakeGCSServer,
    gcs_bucket: str,
    gcs_proxy: FaultProxy,
    tmp_path: Path,
    size: int,
    method: str,
) -> None:
    # POST: one multipart upload (412 on the retry); PUT: the body of a resumable session
    # (the retry's existence check finds the object).
    data = os.urandom(size)
    path = tmp_path / "lost.bin"
    path.write_bytes(data)
    events: list[UploadEvent] = []
    async with AsyncUploader(
        f"gs://{gcs_bucket}/run",
        provider_kwargs={"api_root": gcs_proxy.endpoint_url, "resumable_threshold": MiB},
        retry=FAST_RETRY,
        on_event=events.append,
    ) as up:
        # The multipart upload names the object in its body, not its URL.
        match = "uploadType=multipart" if method == "POST" else "upload_id="
        gcs_proxy.script(Fault("lost"), match=match, method=method)
        result = await (await up.submit(path, "lost.bin", overwrite=False))
    assert gcs_proxy.counts["lost"] == 1
    assert fake_gcs_server.read_object(gcs_bucket, "run/lost.bin") == data
    assert any(e.kind is EventKind.RETRY for e in events)
    assert result.checksum_algorithm == "crc32c" and result.version


@pytest.mark.asyncio
async def test_gcs_lost_answer_does_not_hide_someone_elses_object(
    fake_gcs_server: FakeGCSServer, gcs_bucket: str, gcs_proxy: FaultProxy, tmp_path: Path
) -> None:
    path = tmp_path / "mine.bin"
    path.write_bytes(b"mine" * 1000)
    provider = GCSProvider(gcs_bucket, "run", api_root=gcs_proxy.endpoint_url)
    await provider.open()
    try:
        data = FileSlice(path, 0, 4000)
        gcs_proxy.script(Fault("lost"), match="uploadType=multipart", method="POST")
        with pytest.raises(ProviderError) as info:
            await provider.put("mine.bin", data, overwrite=False)
        assert info.value.transient
        # Someone else replaces the object before our retry: the retry's 412 is a conflict.
        other = tmp_path / "theirs.bin"
        other.write_bytes(b"theirs" * 666)
        direct = GCSProvider(gcs_bucket, "run", api_root=fake_gcs_server.api_root)
        await direct.open()
        try:
            await direct.put("mine.bin", FileSlice(other, 0, 3996), overwrite=True)
        finally:
            await direct.aclose()
        with pytest.raises(ObjectExistsError):
            await provider.put("mine.bin", data, overwrite=False)
    finally:
        await provider.aclose()


# -- Azure ---------------------------------------------------------------------------------


@pytest.fixture
def azure_proxy(azurite_server: AzuriteServer) -> Iterator[FaultProxy]:
    """A fault proxy in front of Azurite."""
    proxy = FaultProxy(f"http://{azurite_server.host}:{azurite_server.port}")
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.reset()
        proxy.stop()


def _azure(server: AzuriteServer, proxy: FaultProxy, container: str) -> AzureProvider:
    return AzureProvider(
        container,
        "run",
        account_name=server.account_name,
        account_key=server.account_key,
        account_url=f"{proxy.endpoint_url}/{server.account_name}",
    )


@pytest.mark.asyncio
@pytest.mark.parametrize("losses", [1, 2])
async def test_azure_conditional_put_whose_answer_was_lost_succeeds(
    azurite_server: AzuriteServer,
    azure_container: AzureContainer,
    azure_proxy: FaultProxy,
    tmp_path: Path,
    losses: int,
) -> None:
    data = os.urandom(300 * 1024)
    path = tmp_path / "lost.bin"
    path.write_bytes(data)
    provider = _azure(azurite_server, azure_proxy, azure_container.name)
    events: list[UploadEvent] = []
    async with AsyncUploader(provider, retry=FAST_RETRY, on_event=events.append) as up:
        # One loss: aiohttp's own resend (inside the SDK call) meets 409. Two: that resend is
        # lost too, and the engine's retry meets it.
        azure_proxy.script(*[Fault("lost")] * losses, match="lost.bin", method="PUT")
        result = await (await up.submit(path, "lost.bin", overwrite=False))
    assert azure_proxy.counts["lost"] == losses
    assert await azure_container.read("run/lost.bin") == data
    assert any(e.kind is EventKind.RETRY for e in events) is (losses == 2)
    assert result.checksum_algorithm == "md5" and result.etag


@pytest.mark.asyncio
async def test_azure_conditional_commit_whose_answer_was_lost_succeeds(
    azurite_server: AzuriteServer,
    azure_container: AzureContainer,
    azure_proxy: FaultProxy,
    tmp_path: Path,
) -> None:
    # Parts of 1 MiB at most: aiohttp warns about larger raw-bytes bodies.
    data = os.urandom(1 * MiB + 10)
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    provider = _azure(azurite_server, azure_proxy, azure_container.name)
    await provider.open()
    try:
        upload_id = await provider.create_multipart("big.bin", overwrite=False)
        parts = [
            await provider.put_part("big.bin", upload_id, 1, FileSlice(path, 0, MiB)),
            await provider.put_part("big.bin", upload_id, 2, FileSlice(path, MiB, 10)),
        ]
        azure_proxy.script(Fault("lost"), Fault("lost"), match="comp=blocklist", method="PUT")
        with pytest.raises(ProviderError) as info:
            await provider.complete_multipart("big.bin", upload_id, parts, overwrite=False)
        assert info.value.transient
        result = await provider.complete_multipart("big.bin", upload_id, parts, overwrite=False)
        assert result.etag
        # One loss: aiohttp's resend inside the same call meets the condition.
        again = await provider.create_multipart("again.bin", overwrite=False)
        again_parts = [await provider.put_part("again.bin", again, 1, FileSlice(path, 0, 10))]
        azure_proxy.script(Fault("lost"), match="comp=blocklist", method="PUT")
        assert (
            await provider.complete_multipart("again.bin", again, again_parts, overwrite=False)
        ).etag
        assert azure_proxy.counts["lost"] == 3
        # Another upload's commit of the same name is still a conflict.
        other = await provider.create_multipart("other.bin", overwrite=False)
        other_parts = [await provider.put_part("big.bin", other, 1, FileSlice(path, 0, 10))]
        with pytest.raises(ObjectExistsError):
            await provider.complete_multipart("big.bin", other, other_parts, overwrite=False)
    finally:
        await provider.aclose()
    assert await azure_container.read("run/big.bin") == data
