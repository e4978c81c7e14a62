"""The S3 provider against a real moto server (and a scripted fault server for error mapping)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import google_crc32c
import pytest
import pytest_asyncio

from artifact_uploader import AsyncUploader, RetryPolicy
from artifact_uploader._errors import (
    ConfigError,
    IntegrityError,
    InvalidObjectNameError,
    ObjectExistsError,
    ObjectNotFoundError,
    PermissionDeniedError,
    ProviderError,
    StoreNotFoundError,
    UploadFailedError,
)
from artifact_uploader._registry import make_provider, provider_from_seed
from artifact_uploader._types import FileSlice, PartResult
from artifact_uploader.providers._protocol import Checksum, MultipartListing, MultipartProvider
from artifact_uploader.providers.s3 import S3Provider
from artifact_uploader.testing import MultipartConformance, ReadConformance
from tests.servers.fault_proxy import Fault, FaultProxy
from tests.servers.moto import MotoServer, list_multipart_uploads, list_s3_keys, read_s3_object
from tests.servers.s3_faults import FaultServer, s3_error

MiB = 1024 * 1024
FAST_RETRY = RetryPolicy(attempts=3, base_delay=0.0, max_delay=0.0)
SECRET = "wJalrXUtnFEMI-very-secret-value-0123456789"
TOKEN = "FwoGZXIvYXdzEBY-session-token-abcdefghijkl"


def crc32c_b64(data: bytes) -> str:
    """CRC32C as S3 reports it, computed independently of the provider (google-crc32c)."""
    return base64.b64encode(google_crc32c.value(data).to_bytes(4, "big")).decode()


def write(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / f"f-{uuid.uuid4().hex[:8]}.bin"
    path.write_bytes(data)
    return path


@pytest.fixture(scope="module")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    """40 MiB of random bytes: five 8 MiB parts."""
    data = os.urandom(40 * MiB)
    path = tmp_path_factory.mktemp("big") / "big.bin"
    path.write_bytes(data)
    return path, data


@pytest_asyncio.fixture
async def s3(moto_server: MotoServer, s3_bucket: str) -> AsyncIterator[S3Provider]:
    """An opened provider on a fresh bucket, under a prefix."""
    p = S3Provider.from_uri(f"s3://{s3_bucket}/pre/fix", moto_server.options())
    await p.open()
    try:
        yield p
    finally:
        await p.aclose()


# -- round trips ---------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_put_small_round_trip(
    s3: S3Provider, moto_s3: Any, s3_bucket: str, tmp_path: Path
) -> None:
    data = os.urandom(100_000)
    result = await s3.put("a/b.bin", FileSlice.whole(write(tmp_path, data)), overwrite=True)
    assert read_s3_object(moto_s3, s3_bucket, "pre/fix/a/b.bin") == data
    assert result.etag == hashlib.md5(data).hexdigest()
    assert result.checksum_algorithm == "crc32c"
    assert result.checksum == crc32c_b64(data)
    assert s3.uri("a/b.bin") == f"s3://{s3_bucket}/pre/fix/a/b.bin"


@pytest.mark.asyncio
async def test_put_empty_round_trip(
    s3: S3Provider, moto_s3: Any, s3_bucket: str, tmp_path: Path
) -> None:
    result = await s3.put("empty", FileSlice.whole(write(tmp_path, b"")), overwrite=False)
    assert read_s3_object(moto_s3, s3_bucket, "pre/fix/empty") == b""
    assert result.etag == hashlib.md5(b"").hexdigest()
    assert result.checksum == crc32c_b64(b"")


@pytest.mark.asyncio
async def test_put_slice_of_a_file(
    s3: S3Provider, moto_s3: Any, s3_bucket: str, tmp_path: Path
) -> None:
    data = os.urandom(1000)
    await s3.put("slice", FileSlice(write(tmp_path, data), 100, 300), overwrite=True)
    assert read_s3_object(moto_s3, s3_bucket, "pre/fix/slice") == data[100:400]


@pytest.mark.asyncio
async def test_checksum_none_sends_no_checksum(
    moto_server: MotoServer, s3_bucket: str, moto_s3: Any, tmp_path: Path
) -> None:
    p = S3Provider.from_uri(
        f"s3://{s3_bucket}", moto_server.options(checksum=None, checksum_mode="when_required")
    )
    await p.open()
    try:
        result = await p.put("x", FileSlice.whole(write(tmp_path, b"abc")), overwrite=True)
    finally:
        await p.aclose()
    assert result.checksum is None and result.checksum_algorithm is None
    assert read_s3_object(moto_s3, s3_bucket, "x") == b"abc"
    head = moto_s3.head_object(Bucket=s3_bucket, Key="x", ChecksumMode="ENABLED")
    assert "ChecksumCRC32C" not in head


# -- conditional writes --------------------------------------------------------------------


@pytest.mark.asyncio
async def test_overwrite_false_conditional(
    s3: S3Provider, moto_s3: Any, s3_bucket: str, tmp_path: Path
) -> None:
    await s3.put("c.txt", FileSlice.whole(write(tmp_path, b"one")), overwrite=False)
    with pytest.raises(ObjectExistsError) as info:
        await s3.put("c.txt", FileSlice.whole(write(tmp_path, b"two")), overwrite=False)
    err = info.value
    assert err.status == 412 and not err.transient
    assert f"s3://{s3_bucket}/pre/fix/c.txt" in str(err)
    assert err.uri == s3.uri("c.txt")
    assert read_s3_object(moto_s3, s3_bucket, "pre/fix/c.txt") == b"one"
    # overwrite=True still replaces it.
    await s3.put("c.txt", FileSlice.whole(write(tmp_path, b"three")), overwrite=True)
    assert read_s3_object(moto_s3, s3_bucket, "pre/fix/c.txt") == b"three"


# -- multipart -----------------------------------------------------------------------------


async def _upload_parts(
    s3: S3Provider, name: str, upload_id: str, path: Path, size: int, part: int
) -> list[PartResult]:
    slices = [FileSlice(path, off, min(part, size - off)) for off in range(0, size, part)]
    return list(
        await asyncio.gather(
            *(s3.put_part(name, upload_id, i + 1, sl) for i, sl in enumerate(slices))
        )
    )


@pytest.mark.asyncio
async def test_multipart_40mib(
    s3: S3Provider, moto_s3: Any, s3_bucket: str, big_file: tuple[Path, bytes]
) -> None:
    path, data = big_file
    assert isinstance(s3, MultipartProvider)
    assert s3.part_limits.min_part_size == 5 * MiB and s3.part_limits.max_parts == 10_000
    upload_id = await s3.create_multipart("big.bin", overwrite=False)
    parts = await _upload_parts(s3, "big.bin", upload_id, path, len(data), 8 * MiB)
    assert [p.part_number for p in parts] == [1, 2, 3, 4, 5]
    for p in parts:
        assert p.checksum == crc32c_b64(data[(p.part_number - 1) * 8 * MiB :][: 8 * MiB])
    # Completion does not depend on the order the parts are listed in.
    result = await s3.complete_multipart("big.bin", upload_id, parts[::-1], overwrite=False)
    assert result.etag is not None and result.etag.endswith("-5")
    assert read_s3_object(moto_s3, s3_bucket, "pre/fix/big.bin") == data
    assert list_multipart_uploads(moto_s3, s3_bucket) == []
    # The upload was declared CRC32C (moto computes its own composite value, but without the
    # optional `crc32c` package it silently uses CRC32, so the value itself is not compared).
    head = moto_s3.head_object(Bucket=s3_bucket, Key="pre/fix/big.bin", ChecksumMode="ENABLED")
    assert "ChecksumCRC32C" in head


@pytest.mark.asyncio
async def test_multipart_complete_refuses_existing(
    s3: S3Provider, moto_s3: Any, s3_bucket: str, tmp_path: Path
) -> None:
    await s3.put("m.bin", FileSlice.whole(write(tmp_path, b"keep")), overwrite=True)
    data = os.urandom(6 * MiB)
    path = write(tmp_path, data)
    upload_id = await s3.create_multipart("m.bin", overwrite=False)
    parts = await _upload_parts(s3, "m.bin", upload_id, path, len(data), 5 * MiB)
    with pytest.raises(ObjectExistsError) as info:
        await s3.complete_multipart("m.bin", upload_id, parts, overwrite=False)
    assert "m.bin" in str(info.value)
    await s3.abort_multipart("m.bin", upload_id)
    assert read_s3_object(moto_s3, s3_bucket, "pre/fix/m.bin") == b"keep"
    assert list_multipart_uploads(moto_s3, s3_bucket) == []


@pytest.mark.asyncio
async def test_list_multipart_uploads_names_exactly_the_key(
    s3: S3Provider, moto_s3: Any, s3_bucket: str
) -> None:
    assert isinstance(s3, MultipartListing)
    mine = {await s3.create_multipart("lm.bin", overwrite=True) for _ in range(2)}
    # A longer key with the same prefix and another store's key: never listed.
    longer = await s3.create_multipart("lm.bin.more", overwrite=True)
    moto_s3.create_multipart_upload(Bucket=s3_bucket, Key="lm.bin")
    try:
        assert set(await s3.list_multipart_uploads("lm.bin")) == mine
        assert await s3.list_multipart_uploads("nothing.bin") == []
    finally:
        for uid in mine:
            await s3.abort_multipart("lm.bin", uid)
        await s3.abort_multipart("lm.bin.more", longer)
        for upload in list_multipart_uploads(moto_s3, s3_bucket):
            moto_s3.abort_multipart_upload(
                Bucket=s3_bucket, Key=upload["Key"], UploadId=upload["UploadId"]
            )
    assert await s3.list_multipart_uploads("lm.bin") == []


@pytest.mark.asyncio
async def test_multipart_abort_leaves_no_upload(
    s3: S3Provider, moto_s3: Any, s3_bucket: str, tmp_path: Path
) -> None:
    path = write(tmp_path, os.urandom(5 * MiB))
    upload_id = await s3.create_multipart("gone.bin", overwrite=True)
    await s3.put_part("gone.bin", upload_id, 1, FileSlice.whole(path))
    assert [u["UploadId"] for u in list_multipart_uploads(moto_s3, s3_bucket)] == [upload_id]
    await s3.abort_multipart("gone.bin", upload_id)
    assert list_multipart_uploads(moto_s3, s3_bucket) == []
    # Aborting again (or an id that never existed) is not an error.
    await s3.abort_multipart("gone.bin", upload_id)
    await s3.abort_multipart("gone.bin", "no-such-upload-id")
    assert list_s3_keys(moto_s3, s3_bucket) == []


# -- open, missing bucket, credentials -----------------------------------------------------


@pytest.mark.asyncio
async def test_missing_bucket_at_open(moto_server: MotoServer) -> None:
    p = S3Provider.from_uri("s3://no-such-bucket-here/x", moto_server.options())
    with pytest.raises(StoreNotFoundError) as info:
        await p.open()
    assert "no-such-bucket-here" in str(info.value)
    assert not info.value.transient
    # A failed open leaves no client behind; aclose stays harmless.
    with pytest.raises(ProviderError, match="not open"):
        await p.delete("x")
    await p.aclose()


@pytest.mark.asyncio
async def test_missing_bucket_without_verify_fails_at_put(
    moto_server: MotoServer, tmp_path: Path
) -> None:
    p = S3Provider.from_uri("s3://no-such-bucket-here", moto_server.options())
    await p.open(verify=False)
    try:
        with pytest.raises(StoreNotFoundError) as info:
            await p.put("o", FileSlice.whole(write(tmp_path, b"x")), overwrite=True)
    finally:
        await p.aclose()
    assert "no-such-bucket-here" in str(info.value)
    assert "s3://no-such-bucket-here/o" in str(info.value)


@pytest.mark.asyncio
async def test_unopened_provider_refuses(tmp_path: Path) -> None:
    p = S3Provider("bkt")
    with pytest.raises(ProviderError, match="not open"):
        await p.put("o", FileSlice.whole(write(tmp_path, b"x")), overwrite=True)


@pytest.mark.asyncio
async def test_iam_user_without_policy_is_denied(
    moto_server: MotoServer, s3_bucket: str, moto_iam_credentials: dict[str, str], tmp_path: Path
) -> None:
    creds = moto_iam_credentials
    p = S3Provider.from_uri(f"s3://{s3_bucket}/p", moto_server.options(**creds))
    with pytest.raises(PermissionDeniedError) as info:
        await p.open()
    assert s3_bucket in str(info.value) and info.value.status == 403
    assert creds["secret"] not in str(info.value) and creds["secret"] not in repr(p)
    # The same refusal on a write names the object.
    await p.open(verify=False)
    try:
        with pytest.raises(PermissionDeniedError) as put_info:
            await p.put("obj.txt", FileSlice.whole(write(tmp_path, b"x")), overwrite=True)
    finally:
        await p.aclose()
    assert f"s3://{s3_bucket}/p/obj.txt" in str(put_info.value)
    assert "AccessDenied" in str(put_info.value)
    assert creds["secret"] not in str(put_info.value)


@pytest.mark.asyncio
async def test_unknown_key_and_wrong_secret_are_denied(
    moto_server: MotoServer, s3_bucket: str, moto_iam_credentials: dict[str, str], tmp_path: Path
) -> None:
    wrong_secret = {"key": moto_iam_credentials["key"], "secret": SECRET}
    unknown_key = {"key": "AKIAUNKNOWNKEY000000", "secret": SECRET}
    for creds, code in (
        (wrong_secret, "SignatureDoesNotMatch"),
        (unknown_key, "InvalidAccessKeyId"),
    ):
        p = S3Provider.from_uri(f"s3://{s3_bucket}", moto_server.options(**creds))
        with pytest.raises(PermissionDeniedError):
            await p.open()
        await p.open(verify=False)
        try:
            with pytest.raises(PermissionDeniedError) as info:
                await p.put("o", FileSlice.whole(write(tmp_path, b"x")), overwrite=True)
        finally:
            await p.aclose()
        assert code in str(info.value)
        assert SECRET not in str(info.value)


def test_secrets_absent_from_repr_and_errors(s3_bucket: str) -> None:
    opts: dict[str, object] = {"key": "AKIAEXAMPLEKEY", "secret": SECRET, "token": TOKEN}
    p = S3Provider.from_uri(f"s3://{s3_bucket}/pfx", {**opts, "endpoint_url": "http://127.0.0.1:1"})
    text = repr(p)
    assert SECRET not in text and TOKEN not in text and "AKIAEXAMPLEKEY" not in text
    assert s3_bucket in text and "pfx" in text and "127.0.0.1:1" in text
    for bad in ({**opts, "nope": 1}, {"key": "k"}, {"secret": SECRET}, {**opts, "verify": False}):
        with pytest.raises(ConfigError) as info:
            S3Provider.from_uri(f"s3://{s3_bucket}", bad)
        assert SECRET not in str(info.value) and TOKEN not in str(info.value)
    with pytest.raises(ConfigError) as uinfo:
        S3Provider.from_uri(f"s3://AKIA:{SECRET}@{s3_bucket}", {})
    assert SECRET not in str(uinfo.value)


@pytest.mark.asyncio
async def test_secret_scrubbed_from_transport_errors(tmp_path: Path, refused_port: int) -> None:
    # The port stays bound but never listens: a connection error, transient, naming bucket/key.
    p = S3Provider.from_uri(
        "s3://bkt/pre",
        {
            "key": "AKIAEXAMPLEKEY",
            "secret": SECRET,
            "endpoint_url": f"http://127.0.0.1:{refused_port}",
        },
    )
    await p.open(verify=False)
    try:
        with pytest.raises(ProviderError) as info:
            await p.put("obj", FileSlice.whole(write(tmp_path, b"x")), overwrite=True)
    finally:
        await p.aclose()
    assert info.value.transient
    assert "s3://bkt/pre/obj" in str(info.value)
    assert SECRET not in str(info.value)
    with pytest.raises(ProviderError) as open_info:
        await p.open()
    assert open_info.value.transient and "bkt" in str(open_info.value)
    # The failed open holds no client.
    with pytest.raises(ProviderError, match="not open"):
        await p.delete("obj")


# -- options -------------------------------------------------------------------------------


def test_from_uri_parses_bucket_and_prefix() -> None:
    p = S3Provider.from_uri("s3://bucket-1/a/b/", {})
    assert (p.bucket, p.prefix) == ("bucket-1", "a/b")
    assert p.uri("c.txt") == "s3://bucket-1/a/b/c.txt"
    root = S3Provider.from_uri("s3://bucket-1", {})
    assert root.uri("c.txt") == "s3://bucket-1/c.txt"
    for bad in ("s3://", "gs://b/x", "s3://b/x?versionId=1", "s3://b a/x"):
        with pytest.raises(ConfigError):
            S3Provider.from_uri(bad, {})


def test_seed_provider_kwargs_map_onto_options() -> None:
    seed = {
        "key": "k",
        "secret": "s",
        "host": "127.0.0.1",
        "port": 9000,
        "secure": False,
        "region": "eu-west-1",
        "api_version": "2006-03-01",
    }
    p = provider_from_seed("s3", "bkt", seed)
    assert isinstance(p, S3Provider)
    assert p.endpoint_url == "http://127.0.0.1:9000"
    assert p.region == "eu-west-1"
    secure = S3Provider.from_uri("s3://bkt", {"host": "minio.example", "port": "9443"})
    assert secure.endpoint_url == "https://minio.example:9443"
    assert (
        S3Provider.from_uri("s3://bkt", {"host": "h.example"}).endpoint_url == "https://h.example"
    )
    aliases = S3Provider.from_uri(
        "s3://bkt",
        {
            "aws_access_key_id": "k",
            "aws_secret_access_key": "s",
            "aws_session_token": "t",
            "region_name": "us-west-2",
            "endpoint_url": "http://localhost:9000/",
        },
    )
    assert aliases.region == "us-west-2" and aliases.endpoint_url == "http://localhost:9000"
    with pytest.raises(ConfigError, match="colour"):
        make_provider("s3://bkt", {"colour": "blue"})
    with pytest.raises(ConfigError, match="region"):
        S3Provider.from_uri("s3://bkt", {"region": "a", "region_name": "b"})
    with pytest.raises(ConfigError):
        S3Provider.from_uri("s3://bkt", {"host": "h", "endpoint_url": "http://h:1"})
    with pytest.raises(ConfigError):
        S3Provider.from_uri("s3://bkt", {"port": 9000})


@pytest.mark.asyncio
async def test_seed_kwargs_reach_moto(
    moto_server: MotoServer, s3_bucket: str, moto_s3: Any, tmp_path: Path
) -> None:
    port = int(moto_server.endpoint_url.rsplit(":", 1)[1])
    seed = {"key": "testing", "secret": "testing", "host": "127.0.0.1", "port": port}
    p = provider_from_seed("s3", s3_bucket, {**seed, "secure": False, "region": "us-east-1"})
    assert isinstance(p, S3Provider)
    await p.open()
    try:
        await p.put("seed.txt", FileSlice.whole(write(tmp_path, b"seed")), overwrite=True)
    finally:
        await p.aclose()
    assert read_s3_object(moto_s3, s3_bucket, "seed.txt") == b"seed"


def test_option_values_are_checked() -> None:
    plain = S3Provider.from_uri("s3://bkt/a/b/", {"endpoint_url": "http://127.0.0.1:9/"})
    assert (plain.bucket, plain.prefix, plain.endpoint_url) == ("bkt", "a/b", "http://127.0.0.1:9")
    tls = S3Provider.from_uri("s3://bkt", {"endpoint_url": "https://localhost:9", "verify": False})
    assert (tls.bucket, tls.prefix, tls.endpoint_url) == ("bkt", "", "https://localhost:9")
    with pytest.raises(ConfigError, match="loopback"):
        S3Provider.from_uri("s3://bkt", {"endpoint_url": "https://s3.example.com", "verify": False})
    with pytest.raises(ConfigError, match="loopback"):
        S3Provider.from_uri("s3://bkt", {"verify": False})
    with pytest.raises(ConfigError, match="checksum"):
        S3Provider.from_uri("s3://bkt", {"checksum": "md5"})
    with pytest.raises(ConfigError, match="checksum_mode"):
        S3Provider.from_uri("s3://bkt", {"checksum_mode": "always"})
    with pytest.raises(ConfigError, match="max_pool_connections"):
        S3Provider.from_uri("s3://bkt", {"max_pool_connections": 0})
    with pytest.raises(ConfigError, match="endpoint_url"):
        S3Provider.from_uri("s3://bkt", {"endpoint_url": "127.0.0.1:9000"})
    assert S3Provider.from_uri("s3://bkt", {}).max_pool_connections == 64


def test_check_name_limits_key_with_prefix() -> None:
    p = S3Provider.from_uri("s3://bkt/" + "p" * 24, {})
    p.check_name("n" * 999)  # 24 + "/" + 999 = 1024 bytes: the limit
    with pytest.raises(InvalidObjectNameError, match="1025 bytes"):
        p.check_name("n" * 1000)
    with pytest.raises(InvalidObjectNameError, match="1025 bytes"):
        p.check_name("é" * 500)  # 1000 bytes of UTF-8
    with pytest.raises(InvalidObjectNameError):
        p.check_name("a\x00b")
    with pytest.raises(InvalidObjectNameError):
        p.check_name("")


# -- error mapping against a scripted server -----------------------------------------------


@pytest_asyncio.fixture
async def faulty(s3_faults: FaultServer) -> AsyncIterator[S3Provider]:
    p = S3Provider.from_uri(
        "s3://bkt/pre",
        {"key": "AKIAEXAMPLEKEY", "secret": SECRET, "endpoint_url": s3_faults.endpoint_url},
    )
    await p.open(verify=False)
    try:
        yield p
    finally:
        await p.aclose()


@pytest.mark.parametrize(
    ("response", "kind", "transient", "retry_after"),
    [
        (s3_error(503, "SlowDown", **{"Retry-After": "7"}), ProviderError, True, 7.0),
        (s3_error(500, "InternalError"), ProviderError, True, None),
        (s3_error(502, "BadGateway"), ProviderError, True, None),
        (s3_error(429, "TooManyRequests"), ProviderError, True, None),
        (s3_error(400, "RequestTimeout"), ProviderError, True, None),
        (s3_error(409, "ConditionalRequestConflict"), ProviderError, True, None),
        (s3_error(403, "AccessDenied"), PermissionDeniedError, False, None),
        (s3_error(403, "InvalidAccessKeyId"), PermissionDeniedError, False, None),
        (s3_error(404, "NoSuchBucket"), StoreNotFoundError, False, None),
        (s3_error(400, "KeyTooLongError"), ProviderError, False, None),
        (s3_error(400, "InvalidArgument"), ProviderError, False, None),
        (s3_error(400, "BadDigest"), IntegrityError, True, None),
        (s3_error(412, "PreconditionFailed"), ObjectExistsError, False, None),
    ],
    ids=lambda v: v["body"].split("<Code>")[1].split("<")[0] if isinstance(v, dict) else None,
)
@pytest.mark.asyncio
async def test_error_mapping(
    faulty: S3Provider,
    s3_faults: FaultServer,
    tmp_path: Path,
    response: dict[str, Any],
    kind: type[ProviderError],
    transient: bool,
    retry_after: float | None,
) -> None:
    s3_faults.script(response)
    with pytest.raises(ProviderError) as info:
        await faulty.put("obj.bin", FileSlice.whole(write(tmp_path, b"x")), overwrite=False)
    err = info.value
    assert type(err) is kind
    assert err.transient is transient
    assert err.retry_after == retry_after
    assert err.status == response["status"]
    assert "bkt" in str(err) and "pre/obj.bin" in str(err)
    assert SECRET not in str(err)
    assert isinstance(err.__cause__, Exception)


@pytest.mark.asyncio
async def test_get_range_refuses_a_body_longer_or_shorter_than_the_range(
    faulty: S3Provider, s3_faults: FaultServer
) -> None:
    # A server that ignores the range and sends the whole object: refused, not retried.
    s3_faults.script({"status": 200, "headers": {"Content-Type": "text/plain"}, "body": "y" * 50})
    with pytest.raises(ProviderError, match="more than the range") as info:
        await faulty.get_range("r.bin", 0, 10)
    assert not info.value.transient and "s3://bkt/pre/r.bin" in str(info.value)
    # A body that ends early: transient (another attempt may read it whole).
    s3_faults.script({"status": 206, "headers": {"Content-Type": "text/plain"}, "body": "y" * 4})
    with pytest.raises(ProviderError, match="got 4 of 10 bytes") as info:
        await faulty.get_range("r.bin", 0, 10)
    assert info.value.transient
    # Exactly the range: returned whole, as bytes.
    s3_faults.script(
        {"status": 206, "headers": {"Content-Type": "text/plain"}, "body": "0123456789"}
    )
    got = await faulty.get_range("r.bin", 0, 10)
    assert got == b"0123456789" and type(got) is bytes


@pytest.mark.asyncio
async def test_wire_format_of_put(
    faulty: S3Provider, s3_faults: FaultServer, tmp_path: Path
) -> None:
    s3_faults.script()
    data = os.urandom(70_000)
    await faulty.put("w.bin", FileSlice.whole(write(tmp_path, data)), overwrite=False)
    (req,) = s3_faults.requests()
    headers = {k.lower(): v for k, v in req["headers"].items()}
    assert req["method"] == "PUT" and req["path"] == "/bkt/pre/w.bin"
    assert headers["if-none-match"] == "*"
    assert headers["x-amz-checksum-crc32c"] == crc32c_b64(data)
    # A plain body with a length: no aws-chunked encoding, no trailer, no SHA-256 of the body.
    assert headers["content-length"] == str(len(data))
    assert "aws-chunked" not in headers.get("content-encoding", "")
    assert "x-amz-trailer" not in headers
    assert headers["x-amz-content-sha256"] == "UNSIGNED-PAYLOAD"
    assert "AKIAEXAMPLEKEY" in headers["authorization"]  # signed with the explicit key


@pytest.mark.asyncio
async def test_multipart_requests_and_missing_upload(
    faulty: S3Provider, s3_faults: FaultServer, tmp_path: Path
) -> None:
    # Real S3 answers 404 NoSuchUpload for an unknown upload id (moto answers 500, a KeyError).
    s3_faults.script(s3_error(404, "NoSuchUpload"), s3_error(404, "NoSuchUpload"))
    data = b"part-data"
    with pytest.raises(ProviderError) as info:
        await faulty.put_part("x.bin", "bogus", 3, FileSlice.whole(write(tmp_path, data)))
    assert type(info.value) is ProviderError and not info.value.transient
    assert "NoSuchUpload" in str(info.value) and "s3://bkt/pre/x.bin" in str(info.value)
    await faulty.abort_multipart("x.bin", "bogus")  # already gone: not an error
    put, abort = s3_faults.requests()
    assert (
        put["method"] == "PUT" and "partNumber=3" in put["path"] and "uploadId=bogus" in put["path"]
    )
    assert {k.lower(): v for k, v in put["headers"].items()}["x-amz-checksum-crc32c"] == crc32c_b64(
        data
    )
    assert abort["method"] == "DELETE" and "uploadId=bogus" in abort["path"]


@pytest.mark.asyncio
async def test_checksum_mismatch_reported_by_store(
    faulty: S3Provider, s3_faults: FaultServer, tmp_path: Path
) -> None:
    s3_faults.script(
        {"status": 200, "headers": {"ETag": '"e"', "x-amz-checksum-crc32c": "AAAAAA=="}}
    )
    with pytest.raises(IntegrityError) as info:
        await faulty.put("obj", FileSlice.whole(write(tmp_path, b"payload")), overwrite=True)
    assert "AAAAAA==" in str(info.value) and crc32c_b64(b"payload") in str(info.value)
    assert info.value.transient


@pytest.mark.asyncio
async def test_composite_checksum_checked_at_complete(
    faulty: S3Provider, s3_faults: FaultServer
) -> None:
    parts = [PartResult(1, '"a"', crc32c_b64(b"one")), PartResult(2, '"b"', crc32c_b64(b"two"))]
    good = crc32c_b64(
        base64.b64decode(parts[0].checksum or "") + base64.b64decode(parts[1].checksum or "")
    )
    body = (
        "<CompleteMultipartUploadResult><Bucket>bkt</Bucket><Key>pre/m</Key>"
        '<ETag>"x-2"</ETag><ChecksumCRC32C>{}</ChecksumCRC32C></CompleteMultipartUploadResult>'
    )
    s3_faults.script({"status": 200, "body": body.format(f"{good}-2")})
    result = await faulty.complete_multipart("m", "uid", parts, overwrite=True)
    assert (result.etag, result.checksum) == ("x-2", f"{good}-2")
    s3_faults.script({"status": 200, "body": body.format("AAAAAA==-2")})
    with pytest.raises(IntegrityError):
        await faulty.complete_multipart("m", "uid", parts, overwrite=True)
    sent = s3_faults.requests()[0]
    assert sent["method"] == "POST" and "uploadId=uid" in sent["path"]


@pytest.mark.asyncio
async def test_open_maps_head_bucket_status(s3_faults: FaultServer) -> None:
    p = S3Provider.from_uri(
        "s3://bkt", {"key": "k", "secret": SECRET, "endpoint_url": s3_faults.endpoint_url}
    )
    for status, kind in ((404, StoreNotFoundError), (403, PermissionDeniedError)):
        s3_faults.script({"status": status})
        with pytest.raises(kind) as info:
            await p.open()
        assert "bkt" in str(info.value)
    s3_faults.script({"status": 503, "headers": {"Retry-After": "2"}})
    with pytest.raises(ProviderError) as t_info:
        await p.open()
    assert t_info.value.transient and t_info.value.retry_after == 2.0
    await p.aclose()


# -- conformance suite ---------------------------------------------------------------------


class TestS3Conformance(MultipartConformance):
    @pytest_asyncio.fixture
    async def provider(self, moto_server: MotoServer, s3_bucket: str) -> AsyncIterator[S3Provider]:
        p = S3Provider.from_uri(f"s3://{s3_bucket}/t-{uuid.uuid4().hex[:8]}", moto_server.options())
        await p.open()
        try:
            yield p
        finally:
            await p.aclose()

    @pytest.fixture
    def read_object(self, provider: S3Provider, moto_s3: Any) -> Callable[[str], Awaitable[bytes]]:
        async def read(name: str) -> bytes:
            return read_s3_object(moto_s3, provider.bucket, provider.key(name))

        return read

    @pytest.fixture
    def missing_store(self, moto_server: MotoServer) -> Iterator[S3Provider]:
        yield S3Provider.from_uri(f"s3://missing-{uuid.uuid4().hex[:12]}", moto_server.options())


class TestS3ReadConformance(ReadConformance):
    @pytest_asyncio.fixture
    async def provider(self, moto_server: MotoServer, s3_bucket: str) -> AsyncIterator[S3Provider]:
        p = S3Provider.from_uri(f"s3://{s3_bucket}/t-{uuid.uuid4().hex[:8]}", moto_server.options())
        await p.open()
        yield p
        await p.aclose()

    @pytest_asyncio.fixture
    async def corrupting_provider(
        self, provider: S3Provider, moto_server: MotoServer
    ) -> AsyncIterator[S3Provider]:
        """The same objects, read through the fault proxy flipping a byte of every GET answer
        (HEAD answers pass untouched)."""
        proxy = FaultProxy(moto_server.endpoint_url)
        proxy.start()
        proxy.script(*[Fault("corrupt-response")] * 50, method="GET")
        p = S3Provider.from_uri(
            f"s3://{provider.bucket}/{provider.prefix}",
            moto_server.options(endpoint_url=proxy.endpoint_url),
        )
        await p.open()
        try:
            yield p
        finally:
            await p.aclose()
            assert proxy.counts["corrupt-response"] >= 1
            proxy.stop()


# -- the read side -------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_head_single_part_reports_crc32c_md5_and_no_null_version(
    s3: S3Provider, tmp_path: Path
) -> None:
    data = os.urandom(5000)
    put = await s3.put("h.bin", FileSlice.whole(write(tmp_path, data)), overwrite=True)
    assert put.version is None  # unversioned bucket: S3 says "null"
    info = await s3.head("h.bin")
    assert info.name == "h.bin" and info.size == 5000
    assert info.etag == f'"{hashlib.md5(data).hexdigest()}"'
    assert info.version is None
    assert info.last_modified is not None
    md5 = base64.b64encode(hashlib.md5(data).digest()).decode()
    assert set(info.checksums) == {Checksum("crc32c", crc32c_b64(data)), Checksum("md5", md5)}


@pytest.mark.asyncio
async def test_head_multipart_reports_composite_checksums_with_part_size(
    s3: S3Provider, tmp_path: Path
) -> None:
    part = 5 * MiB
    data = os.urandom(2 * part + 123)
    path = write(tmp_path, data)
    upload_id = await s3.create_multipart("mp.bin", overwrite=True)
    parts = [
        await s3.put_part("mp.bin", upload_id, n, FileSlice(path, (n - 1) * part, size))
        for n, size in ((1, part), (2, part), (3, 123))
    ]
    result = await s3.complete_multipart("mp.bin", upload_id, parts, overwrite=True)
    chunks = [data[:part], data[part : 2 * part], data[2 * part :]]
    raw_crcs = b"".join(base64.b64decode(crc32c_b64(c)) for c in chunks)
    composite = crc32c_b64(raw_crcs)
    raw_md5s = b"".join(hashlib.md5(c).digest() for c in chunks)
    composite_md5 = base64.b64encode(hashlib.md5(raw_md5s).digest()).decode()
    # Issue 14: a multipart result carries the checksum S3 confirmed, and no "null" version.
    assert result.version is None
    assert result.checksum_algorithm == "crc32c"
    assert result.checksum is not None and result.checksum.split("-")[0] == composite
    info = await s3.head("mp.bin")
    assert info.size == len(data) and info.version is None
    assert set(info.checksums) == {
        Checksum("crc32c", composite, part_size=part, parts=3),
        Checksum("md5", composite_md5, part_size=part, parts=3),
    }


@pytest.mark.asyncio
async def test_get_range_conditional_short_and_missing(s3: S3Provider, tmp_path: Path) -> None:
    data = os.urandom(1000)
    await s3.put("r.bin", FileSlice.whole(write(tmp_path, data)), overwrite=True)
    info = await s3.head("r.bin")
    assert await s3.get_range("r.bin", 10, 90, etag=info.etag) == data[10:100]
    assert await s3.get_range("r.bin", 999, 1) == data[999:]
    # Past the end: S3 sends what there is; fewer bytes than asked is worth another try.
    with pytest.raises(ProviderError) as short:
        await s3.get_range("r.bin", 900, 200)
    assert short.value.transient
    # The object changed since head: 412, not transient.
    await s3.put("r.bin", FileSlice.whole(write(tmp_path, b"other")), overwrite=True)
    with pytest.raises(ProviderError) as changed:
        await s3.get_range("r.bin", 0, 5, etag=info.etag)
    assert changed.value.status == 412 and not changed.value.transient
    with pytest.raises(ObjectNotFoundError):
        await s3.get_range("nope.bin", 0, 5)
    with pytest.raises(ObjectNotFoundError):
        await s3.head("nope.bin")


@pytest.mark.asyncio
async def test_list_pages_relative_names_and_delete(
    moto_server: MotoServer, s3_bucket: str, moto_s3: Any, tmp_path: Path
) -> None:
    # A sibling prefix that shares the store prefix's first letters must not be listed.
    moto_s3.put_object(Bucket=s3_bucket, Key="pre/fixture/other.bin", Body=b"x")
    p = S3Provider.from_uri(f"s3://{s3_bucket}/pre/fix", moto_server.options())
    await p.open()
    try:
        src = write(tmp_path, b"abc")
        names = [f"d/{i:04d}.bin" for i in range(1005)] + ["e.bin"]
        for name in names:
            moto_s3.put_object(Bucket=s3_bucket, Key=p.key(name), Body=b"abc")
        await p.put("d/x.bin", FileSlice.whole(src), overwrite=True)
        listed = [info async for info in p.list()]  # more than one page of 1000
        assert [i.name for i in listed] == sorted([*names, "d/x.bin"])
        assert all(i.size == 3 and i.etag for i in listed)
        assert [i.name async for i in p.list("e")] == ["e.bin"]
        await p.delete("e.bin")
        await p.delete("e.bin")  # already gone: not an error
        assert [i.name async for i in p.list("e")] == []
        assert list_s3_keys(moto_s3, s3_bucket, "pre/fixture/") == ["pre/fixture/other.bin"]
    finally:
        await p.aclose()


# -- end to end through the engine ---------------------------------------------------------


@pytest.mark.asyncio
async def test_engine_uploads_40mib_as_multipart(
    moto_server: MotoServer, s3_bucket: str, moto_s3: Any, big_file: tuple[Path, bytes]
) -> None:
    path, data = big_file
    async with AsyncUploader(
        f"s3://{s3_bucket}/ckpt", provider_kwargs=moto_server.options(), max_concurrency=4
    ) as up:
        result = await up.upload(path, "ep1/model.pt")
    assert result.uri == f"s3://{s3_bucket}/ckpt/ep1/model.pt"
    assert result.size == len(data)
    assert result.etag is not None
    count = int(result.etag.rsplit("-", 1)[1])
    assert count >= 3
    assert read_s3_object(moto_s3, s3_bucket, "ckpt/ep1/model.pt") == data
    assert list_multipart_uploads(moto_s3, s3_bucket) == []


class _FailingPart(S3Provider):
    """Part 2 fails for good: either refused outright, or sent to an upload id S3 never made."""

    mode = "raise"

    async def put_part(
        self, name: str, upload_id: str, part_number: int, data: FileSlice
    ) -> PartResult:
        if part_number == 2:
            if self.mode == "raise":
                raise ProviderError("injected permanent failure of part 2", name=name)
            upload_id = "not-an-upload-id"
        return await super().put_part(name, upload_id, part_number, data)


@pytest.mark.parametrize("mode", ["raise", "wrong_upload_id"])
@pytest.mark.asyncio
async def test_engine_part_failure_aborts_upload(
    moto_server: MotoServer,
    s3_bucket: str,
    moto_s3: Any,
    big_file: tuple[Path, bytes],
    mode: str,
) -> None:
    path, _ = big_file
    provider = _FailingPart.from_uri(f"s3://{s3_bucket}/ckpt", moto_server.options())
    assert isinstance(provider, _FailingPart)
    provider.mode = mode
    up = AsyncUploader(provider, max_concurrency=4, retry=FAST_RETRY)
    await up.open()
    try:
        handle = await up.submit(path, "doomed.pt")
        with pytest.raises(ProviderError) as info:
            await handle
    except BaseException:
        await provider.aclose()
        raise
    if mode == "raise":
        assert str(info.value) == "injected permanent failure of part 2"
    else:
        # Real S3: 404 NoSuchUpload (permanent). moto: 500 (transient), retried until given up.
        assert "UploadPart 2" in str(info.value)
    with pytest.raises(UploadFailedError) as closed:
        await up.aclose()
    assert [f.name for f in closed.value.failures] == ["doomed.pt"]
    assert list_multipart_uploads(moto_s3, s3_bucket) == []
    assert list_s3_keys(moto_s3, s3_bucket) == []
