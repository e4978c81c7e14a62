"""AzureProvider against a real Azurite blob service."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import re
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import pytest_asyncio

from artifact_uploader import AsyncUploader, PartPolicy, RetryPolicy, Uploader
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
from artifact_uploader.providers import _azure_blocks
from artifact_uploader.providers._kit import MiB
from artifact_uploader.providers._protocol import MultipartProvider
from artifact_uploader.providers.azure import AzureProvider
from artifact_uploader.testing import MultipartConformance, ReadConformance, ReadObject
from tests.servers.azurite import AzureContainer, AzuriteServer
from tests.servers.fault_proxy import Fault, FaultProxy

WRONG_KEY = base64.b64encode(b"not-the-key" * 6).decode()


def _write(tmp_path: Path, data: bytes, name: str = "src.bin") -> FileSlice:
    path = tmp_path / name
    path.write_bytes(data)
    return FileSlice.whole(path)


def _md5_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


def _key_provider(
    server: AzuriteServer, container: str, prefix: str = "", **kw: object
) -> AzureProvider:
    return AzureProvider(
        container,
        prefix,
        account_name=server.account_name,
        account_key=server.account_key,
        account_url=server.account_url,
        **kw,  # type: ignore[arg-type]
    )


@pytest_asyncio.fixture
async def provider(
    azurite_server: AzuriteServer, azure_container: AzureContainer
) -> AsyncIterator[AzureProvider]:
    p = _key_provider(azurite_server, azure_container.name, prefix="runs/r1")
    await p.open()
    try:
        yield p
    finally:
        await p.aclose()


# -- construction and naming --------------------------------------------------------------------


def test_is_a_multipart_provider(azurite_server: AzuriteServer) -> None:
    p = _key_provider(azurite_server, "box")
    assert isinstance(p, MultipartProvider)
    assert p.scheme == "az"
    assert p.part_limits.max_parts == 50_000
    assert p.part_limits.min_part_size <= 8 * MiB <= p.part_limits.max_part_size


def test_from_uri_parses_container_and_prefix() -> None:
    p = AzureProvider.from_uri(
        "az://box/ckpt/run-1/", {"account_name": "acct", "account_key": "c2VjcmV0"}
    )
    assert p.container == "box"
    assert p.prefix == "ckpt/run-1"
    assert p.account_url == "https://acct.blob.core.windows.net"
    assert p.uri("ep1/model.pt") == "az://box/ckpt/run-1/ep1/model.pt"
    bare = AzureProvider.from_uri("az://box", {"account_name": "acct", "account_key": "c2VjcmV0"})
    assert bare.uri("a.txt") == "az://box/a.txt"


def test_seed_host_port_secure_make_account_url() -> None:
    local = AzureProvider.from_uri(
        "az://box",
        {"key": "dev", "secret": "c2VjcmV0", "host": "127.0.0.1", "port": 10000, "secure": False},
    )
    assert local.account_url == "http://127.0.0.1:10000/dev"
    cloud = AzureProvider.from_uri(
        "az://box",
        {"key": "acct", "secret": "c2VjcmV0", "host": "blob.core.chinacloudapi.cn", "region": "x"},
    )
    assert cloud.account_url == "https://acct.blob.core.chinacloudapi.cn"


@pytest.mark.parametrize(
    ("uri", "options", "needle"),
    [
        ("az://box", {"account_name": "a", "account_key": "k", "bogus": 1, "zed": 2}, "bogus"),
        ("az://Bad_Container", {"account_name": "a", "account_key": "k"}, "Bad_Container"),
        ("az://box", {"account_name": "a", "account_key": "k", "sas_token": "s"}, "one way"),
        ("az://box", {"key": "a", "account_name": "b", "account_key": "k"}, "disagree"),
        ("az://box", {"account_name": "a", "account_key": "k", "secure": "no"}, "secure"),
        ("s3://box", {"account_name": "a", "account_key": "k"}, "not an Azure URI"),
    ],
)
def test_bad_options_are_config_errors(uri: str, options: dict[str, object], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        AzureProvider.from_uri(uri, options)


def test_no_credentials_without_azure_identity_is_a_clear_config_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("AZURE_STORAGE_CONNECTION_STRING", raising=False)
    # azure-identity is in the azure extra; a user may still install azure-storage-blob alone:
    # make it missing (a None entry in sys.modules makes the import fail).
    monkeypatch.setitem(sys.modules, "azure.identity", None)
    with pytest.raises(ConfigError, match="azure-identity"):
        AzureProvider.from_uri("az://box", {"account_name": "acct"})


@pytest.mark.asyncio
async def test_no_key_uses_the_default_azure_credential(monkeypatch: pytest.MonkeyPatch) -> None:
    # With neither key, SAS nor connection string, the provider signs with azure-identity's
    # DefaultAzureCredential (managed identity, workload identity, az login...), which it owns
    # and closes.
    from azure.identity.aio import DefaultAzureCredential

    monkeypatch.delenv("AZURE_STORAGE_CONNECTION_STRING", raising=False)
    p = AzureProvider.from_uri("az://box", {"account_name": "acct"})
    credential = p._clients.make_credential()
    assert isinstance(credential, DefaultAzureCredential)
    await p.aclose()
    assert p._clients.owned_credential is None


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("", "empty"),
        ("a\x00b", "NUL"),
        ("x" * 1025, "1024"),
        ("/".join(["s"] * 255), "254"),
        ("dir/", "end"),
        ("file.", "end"),
        ("a/../b", "'..'"),
    ],
)
def test_check_name_refuses(azurite_server: AzuriteServer, name: str, reason: str) -> None:
    p = _key_provider(azurite_server, "box")
    with pytest.raises(InvalidObjectNameError, match=reason):
        p.check_name(name)


def test_check_name_counts_the_prefix_and_characters(azurite_server: AzuriteServer) -> None:
    p = _key_provider(azurite_server, "box", prefix="p" * 20)
    with pytest.raises(InvalidObjectNameError):
        p.check_name("n" * 1010)
    # 600 characters of 3-byte UTF-8 are 1800 bytes but within Azure's 1024-character limit.
    _key_provider(azurite_server, "box").check_name("é" * 300 + "中" * 300)
    p.check_name("ep1/rank0/model.pt")


def test_repr_hides_secrets(azurite_server: AzuriteServer) -> None:
    for p in (
        _key_provider(azurite_server, "box", prefix="pre"),
        AzureProvider("box", connection_string=azurite_server.connection_string),
        AzureProvider(
            "box", account_url=azurite_server.account_url, sas_token="sv=1&sig=SECRETSIG"
        ),
    ):
        text = repr(p)
        assert "devstoreaccount1" in text and "box" in text
        assert azurite_server.account_key not in text
        assert "SECRETSIG" not in text and "AccountKey" not in text
    assert "pre" in repr(_key_provider(azurite_server, "box", prefix="pre"))


# -- against Azurite ----------------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("size", [0, 1, 300_000])
async def test_put_round_trip(
    provider: AzureProvider, azure_container: AzureContainer, tmp_path: Path, size: int
) -> None:
    data = os.urandom(size)
    result = await provider.put("ep1/model.bin", _write(tmp_path, data), overwrite=True)
    assert await azure_container.read("runs/r1/ep1/model.bin") == data
    assert result.checksum_algorithm == "md5"
    assert result.checksum == _md5_b64(data)
    assert result.etag
    props = await azure_container.properties("runs/r1/ep1/model.bin")
    assert props.size == size
    assert base64.b64encode(bytes(props.content_settings.content_md5)).decode() == _md5_b64(data)


@pytest.mark.asyncio
async def test_put_a_slice_and_overwrite(
    provider: AzureProvider, azure_container: AzureContainer, tmp_path: Path
) -> None:
    src = _write(tmp_path, b"0123456789")
    await provider.put("x", FileSlice(src.path, 3, 4), overwrite=True)
    assert await azure_container.read("runs/r1/x") == b"3456"
    await provider.put("x", src, overwrite=True)
    assert await azure_container.read("runs/r1/x") == b"0123456789"


@pytest.mark.asyncio
async def test_multipart_assembles_identical_bytes(
    provider: AzureProvider, azure_container: AzureContainer, tmp_path: Path
) -> None:
    part = 1 * MiB
    data = os.urandom(3 * part + 12345)
    src = _write(tmp_path, data)
    upload_id = await provider.create_multipart("big/ckpt.pt", overwrite=True)
    slices = [
        FileSlice(src.path, off, min(part, len(data) - off)) for off in range(0, len(data), part)
    ]
    # Upload out of order and concurrently, as the engine may.
    results = await asyncio.gather(
        *(
            provider.put_part("big/ckpt.pt", upload_id, i + 1, s)
            for i, s in reversed(list(enumerate(slices)))
        )
    )
    assert [r.part_number for r in results] == [4, 3, 2, 1]
    assert results[-1].checksum == _md5_b64(data[:part])
    assert not await azure_container.exists("runs/r1/big/ckpt.pt")  # nothing visible yet
    done = await provider.complete_multipart("big/ckpt.pt", upload_id, results, overwrite=True)
    assert done.etag
    assert await azure_container.read("runs/r1/big/ckpt.pt") == data
    assert await azure_container.uncommitted_blocks("runs/r1/big/ckpt.pt") == 0


@pytest.mark.asyncio
async def test_complete_refuses_parts_of_another_upload(
    provider: AzureProvider, tmp_path: Path
) -> None:
    src = _write(tmp_path, b"abc")
    first = await provider.create_multipart("m", overwrite=True)
    second = await provider.create_multipart("m", overwrite=True)
    assert first != second
    part = await provider.put_part("m", first, 1, src)
    with pytest.raises(ProviderError, match="does not belong"):
        await provider.complete_multipart("m", second, [part], overwrite=True)
    with pytest.raises(ProviderError, match="twice"):
        await provider.complete_multipart("m", first, [part, part], overwrite=True)
    with pytest.raises(ProviderError, match="upload id"):
        await provider.put_part("m", "../etc", 1, src)


@pytest.mark.asyncio
async def test_committing_a_block_never_staged_fails_permanently(
    provider: AzureProvider,
) -> None:
    upload_id = await provider.create_multipart("m", overwrite=True)
    ghost = PartResult(1, f"{upload_id}-00001")
    with pytest.raises(ProviderError) as info:
        await provider.complete_multipart("m", upload_id, [ghost], overwrite=True)
    assert info.value.status == 400
    assert not info.value.transient
    assert "runs/r1/m" in str(info.value)


@pytest.mark.asyncio
async def test_abort_is_harmless_and_idempotent(
    provider: AzureProvider, azure_container: AzureContainer, tmp_path: Path
) -> None:
    upload_id = await provider.create_multipart("gone", overwrite=True)
    await provider.put_part("gone", upload_id, 1, _write(tmp_path, b"zz"))
    await provider.abort_multipart("gone", upload_id)
    await provider.abort_multipart("gone", upload_id)
    await provider.abort_multipart("never", "0123456789abcdef")
    assert not await azure_container.exists("runs/r1/gone")


@pytest.mark.asyncio
async def test_overwrite_false_put(
    provider: AzureProvider, azure_container: AzureContainer, tmp_path: Path
) -> None:
    await provider.put("once", _write(tmp_path, b"first", "a"), overwrite=False)
    with pytest.raises(ObjectExistsError) as info:
        await provider.put("once", _write(tmp_path, b"second", "b"), overwrite=False)
    assert info.value.name == "once"
    assert info.value.uri == f"az://{azure_container.name}/runs/r1/once"
    assert not info.value.transient
    assert await azure_container.read("runs/r1/once") == b"first"


@pytest.mark.asyncio
async def test_overwrite_false_is_atomic_under_a_race(
    provider: AzureProvider, azure_container: AzureContainer, tmp_path: Path
) -> None:
    payloads = [f"writer-{i}".encode() for i in range(8)]
    slices = [_write(tmp_path, p, f"w{i}") for i, p in enumerate(payloads)]
    outcomes = await asyncio.gather(
        *(provider.put("race", s, overwrite=False) for s in slices), return_exceptions=True
    )
    winners = [i for i, o in enumerate(outcomes) if not isinstance(o, BaseException)]
    assert len(winners) == 1
    assert all(isinstance(o, ObjectExistsError) for o in outcomes if o is not outcomes[winners[0]])
    assert await azure_container.read("runs/r1/race") == payloads[winners[0]]


@pytest.mark.asyncio
async def test_overwrite_false_multipart(
    provider: AzureProvider, azure_container: AzureContainer, tmp_path: Path
) -> None:
    src = _write(tmp_path, b"part-one")
    # Absent at create, present at commit: the commit's If-None-Match catches it.
    upload_id = await provider.create_multipart("mp", overwrite=False)
    part = await provider.put_part("mp", upload_id, 1, src)
    await provider.put("mp", _write(tmp_path, b"sneaked in", "other"), overwrite=True)
    with pytest.raises(ObjectExistsError):
        await provider.complete_multipart("mp", upload_id, [part], overwrite=False)
    assert await azure_container.read("runs/r1/mp") == b"sneaked in"
    # Present at create: refused before any block is sent.
    with pytest.raises(ObjectExistsError):
        await provider.create_multipart("mp", overwrite=False)


@pytest.mark.asyncio
async def test_large_put_streams_blocks(
    azurite_server: AzuriteServer,
    azure_container: AzureContainer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Shrink the single-request limit so a small file takes the streaming path.
    monkeypatch.setattr(_azure_blocks, "SINGLE_PUT_MAX", 256 * 1024)
    monkeypatch.setattr(_azure_blocks, "PUT_BLOCK_SIZE", 100 * 1024)
    data = os.urandom(1 * MiB + 7)
    async with _opened(_key_provider(azurite_server, azure_container.name)) as p:
        result = await p.put("streamed", _write(tmp_path, data), overwrite=False)
        # Azurite's Put Block echoes no MD5: the service never confirmed one, so the result
        # claims none (the blob's Content-MD5 is still recorded, below, for downloads).
        assert result.checksum is None and result.checksum_algorithm is None
        assert await azure_container.read("streamed") == data
        with pytest.raises(ObjectExistsError):
            await p.put("streamed", _write(tmp_path, data), overwrite=False)
    props = await azure_container.properties("streamed")
    assert base64.b64encode(bytes(props.content_settings.content_md5)).decode() == _md5_b64(data)


@pytest.mark.asyncio
async def test_missing_container_is_store_not_found(azurite_server: AzuriteServer) -> None:
    missing = f"missing-{uuid.uuid4().hex[:12]}"
    p = _key_provider(azurite_server, missing)
    with pytest.raises(StoreNotFoundError, match=missing) as info:
        await p.open()
    assert info.value.status == 404
    await p.aclose()  # idempotent after a failed open


@pytest.mark.asyncio
async def test_missing_container_found_on_put_without_verify(
    azurite_server: AzuriteServer, tmp_path: Path
) -> None:
    missing = f"missing-{uuid.uuid4().hex[:12]}"
    async with _opened(_key_provider(azurite_server, missing), verify=False) as p:
        with pytest.raises(StoreNotFoundError, match=missing):
            await p.put("a", _write(tmp_path, b"a"), overwrite=True)
        # The existence check of a conditional multipart upload is a HEAD (no error body).
        with pytest.raises(StoreNotFoundError, match=missing):
            await p.create_multipart("a", overwrite=False)


@pytest.mark.asyncio
async def test_wrong_key_is_permission_denied_without_leaking_it(
    azurite_server: AzuriteServer, azure_container: AzureContainer, tmp_path: Path
) -> None:
    p = AzureProvider(
        azure_container.name,
        account_name=azurite_server.account_name,
        account_key=WRONG_KEY,
        account_url=azurite_server.account_url,
    )
    with pytest.raises(PermissionDeniedError) as info:
        await p.open()
    assert info.value.status == 403
    assert azure_container.name in str(info.value)
    assert WRONG_KEY not in str(info.value) and WRONG_KEY not in repr(info.value)
    async with _opened(p, verify=False):
        with pytest.raises(PermissionDeniedError) as put_info:
            await p.put("a", _write(tmp_path, b"a"), overwrite=True)
    assert "a" == put_info.value.name
    assert WRONG_KEY not in str(put_info.value)


@pytest.mark.asyncio
async def test_unreachable_endpoint_is_transient(tmp_path: Path, refused_port: int) -> None:
    port = refused_port  # bound for the whole test, never listening: connections are refused
    p = AzureProvider(
        "box",
        account_name="devstoreaccount1",
        account_key=WRONG_KEY,
        account_url=f"http://127.0.0.1:{port}/devstoreaccount1",
        connection_timeout=5,
    )
    with pytest.raises(ProviderError) as info:
        await p.open()
    assert info.value.transient
    assert WRONG_KEY not in str(info.value)


@pytest.mark.asyncio
async def test_connection_string_and_sas_token(
    azurite_server: AzuriteServer, azure_container: AzureContainer, tmp_path: Path
) -> None:
    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    async with _opened(
        AzureProvider(azure_container.name, connection_string=azurite_server.connection_string)
    ) as p:
        await p.put("via-conn", _write(tmp_path, b"cs"), overwrite=True)
    sas = generate_container_sas(
        azurite_server.account_name,
        azure_container.name,
        account_key=azurite_server.account_key,
        permission=ContainerSasPermissions(read=True, write=True, create=True),
        expiry=datetime.now(UTC) + timedelta(hours=1),
    )
    p = AzureProvider(azure_container.name, account_url=azurite_server.account_url, sas_token=sas)
    assert sas not in repr(p)
    async with _opened(p, verify=False):
        await p.put("via-sas", _write(tmp_path, b"sas"), overwrite=True)
    assert await azure_container.read("via-conn") == b"cs"
    assert await azure_container.read("via-sas") == b"sas"


@pytest.mark.asyncio
async def test_connection_string_errors_do_not_leak_it(azurite_server: AzuriteServer) -> None:
    missing = f"missing-{uuid.uuid4().hex[:12]}"
    p = AzureProvider(missing, connection_string=azurite_server.connection_string)
    with pytest.raises(StoreNotFoundError) as info:
        await p.open()
    assert azurite_server.account_key not in str(info.value)
    assert "AccountKey" not in str(info.value)


@pytest.mark.asyncio
async def test_seed_name_reaches_azure(
    azurite_server: AzuriteServer, azure_container: AzureContainer, tmp_path: Path
) -> None:
    p = provider_from_seed("azure_blobs", azure_container.name, azurite_server.seed_kwargs())
    assert isinstance(p, AzureProvider)
    assert p.account_url == azurite_server.account_url
    assert azurite_server.account_key not in repr(p)
    async with _opened(p):
        await p.put("seeded.txt", _write(tmp_path, b"from the seed"), overwrite=True)
    assert await azure_container.read("seeded.txt") == b"from the seed"
    via_uri = make_provider(f"az://{azure_container.name}/pre", azurite_server.seed_kwargs())
    assert isinstance(via_uri, AzureProvider) and via_uri.prefix == "pre"


@pytest.mark.asyncio
async def test_use_before_open_is_a_provider_error(tmp_path: Path) -> None:
    p = AzureProvider("box", account_name="acct", account_key=WRONG_KEY)
    with pytest.raises(ProviderError, match="not open"):
        await p.put("a", _write(tmp_path, b"a"), overwrite=True)


class _opened:
    """``async with`` an opened provider, closed on exit."""

    def __init__(self, provider: AzureProvider, *, verify: bool = True) -> None:
        self.provider = provider
        self.verify = verify

    async def __aenter__(self) -> AzureProvider:
        await self.provider.open(verify=self.verify)
        return self.provider

    async def __aexit__(self, *exc: object) -> None:
        await self.provider.aclose()


# -- the conformance suite and the engine -------------------------------------------------------


class TestAzureConformance(MultipartConformance):
    # Azure's smallest sensible block is 1 MiB, so a 2.5 MiB file makes three parts.
    multipart_size = 5 * MiB // 2
    part_size = 1 * MiB

    @pytest_asyncio.fixture
    async def provider(
        self, azurite_server: AzuriteServer, azure_container: AzureContainer
    ) -> AsyncIterator[AzureProvider]:
        p = _key_provider(azurite_server, azure_container.name, prefix=f"c-{uuid.uuid4().hex[:8]}")
        await p.open()
        try:
            yield p
        finally:
            await p.aclose()

    @pytest.fixture
    def read_object(self, provider: AzureProvider, azure_container: AzureContainer) -> ReadObject:
        async def read(name: str) -> bytes:
            return await azure_container.read(f"{provider.prefix}/{name}")

        return read

    @pytest.fixture
    def missing_store(self, azurite_server: AzuriteServer) -> AzureProvider:
        return _key_provider(azurite_server, f"missing-{uuid.uuid4().hex[:12]}")


def _provider_on(
    server: AzuriteServer, container: str, prefix: str, account_url: str | None = None
) -> AzureProvider:
    return AzureProvider(
        container,
        prefix,
        account_name=server.account_name,
        account_key=server.account_key,
        account_url=account_url or server.account_url,
    )


class TestAzureReadConformance(ReadConformance):
    @pytest_asyncio.fixture
    async def provider(
        self, azurite_server: AzuriteServer, azure_container: AzureContainer
    ) -> AsyncIterator[AzureProvider]:
        p = _provider_on(azurite_server, azure_container.name, f"t-{uuid.uuid4().hex[:8]}")
        await p.open()
        yield p
        await p.aclose()

    @pytest_asyncio.fixture
    async def corrupting_provider(
        self, provider: AzureProvider, azurite_server: AzuriteServer
    ) -> AsyncIterator[AzureProvider]:
        """The same blobs, read through the fault proxy flipping a byte of every GET answer
        (properties come from HEAD requests, which pass untouched)."""
        proxy = FaultProxy(f"http://{azurite_server.host}:{azurite_server.port}")
        proxy.start()
        proxy.script(*[Fault("corrupt-response")] * 50, method="GET")
        p = _provider_on(
            azurite_server,
            provider.container,
            provider.prefix,
            account_url=f"{proxy.endpoint_url}/{azurite_server.account_name}",
        )
        await p.open()
        try:
            yield p
        finally:
            await p.aclose()
            assert proxy.counts["corrupt-response"] >= 1
            proxy.stop()


@pytest.mark.asyncio
async def test_engine_uploads_small_and_multipart(
    azurite_server: AzuriteServer, azure_container: AzureContainer, tmp_path: Path
) -> None:
    small = os.urandom(1000)
    big = os.urandom(3 * MiB + 17)
    async with AsyncUploader(
        f"az://{azure_container.name}/run-7",
        provider_kwargs=azurite_server.seed_kwargs(),
        parts=PartPolicy(threshold=2 * MiB, part_size=1 * MiB),
        max_concurrency=3,
    ) as up:
        small_handle = await up.submit(_write(tmp_path, small, "s").path, "logs/metrics.json")
        big_result = await up.upload(_write(tmp_path, big, "b").path, "ckpt/ep1.pt")
        small_result = await small_handle
        await up.flush()
    assert small_result.uri == f"az://{azure_container.name}/run-7/logs/metrics.json"
    assert small_result.checksum_algorithm == "md5"
    assert small_result.checksum == _md5_b64(small)
    assert big_result.size == len(big)
    assert await azure_container.read("run-7/logs/metrics.json") == small
    assert await azure_container.read("run-7/ckpt/ep1.pt") == big
    assert await azure_container.uncommitted_blocks("run-7/ckpt/ep1.pt") == 0


@pytest.mark.asyncio
async def test_engine_overwrite_false_keeps_the_first(
    azurite_server: AzuriteServer, azure_container: AzureContainer, tmp_path: Path
) -> None:
    async with AsyncUploader(
        f"az://{azure_container.name}",
        provider_kwargs={"connection_string": azurite_server.connection_string},
    ) as up:
        await up.upload(_write(tmp_path, b"first", "a").path, "once.txt", overwrite=False)
        handle = await up.submit(_write(tmp_path, b"second", "b").path, "once.txt", overwrite=False)
        with pytest.raises(ObjectExistsError):
            await handle
        assert [f.name for f in up.failures()] == ["once.txt"]
        with pytest.raises(UploadFailedError) as info:
            await up.flush()
    assert azurite_server.account_key not in str(info.value)
    assert await azure_container.read("once.txt") == b"first"


@pytest.mark.asyncio
async def test_engine_retries_transient_azure_errors(tmp_path: Path, refused_port: int) -> None:
    port = refused_port  # bound for the whole test, never listening: connections are refused
    up = AsyncUploader(
        "az://box",
        provider_kwargs={
            "key": "devstoreaccount1",
            "secret": WRONG_KEY,
            "host": "127.0.0.1",
            "port": port,
            "secure": False,
        },
        retry=RetryPolicy(attempts=3, base_delay=0.0, max_delay=0.0),
        verify=False,
    )
    async with up:
        handle = await up.submit(_write(tmp_path, b"x").path, "x.txt")
        with pytest.raises(ProviderError) as info:
            await handle
        up._take_failures()
    assert info.value.transient
    assert info.value.attempts == 3
    assert WRONG_KEY not in str(info.value)


@pytest.mark.asyncio
async def test_engine_open_fails_on_missing_container(azurite_server: AzuriteServer) -> None:
    missing = f"missing-{uuid.uuid4().hex[:12]}"
    up = AsyncUploader(f"az://{missing}", provider_kwargs=azurite_server.seed_kwargs())
    with pytest.raises(StoreNotFoundError, match=missing):
        await up.open()


# -- integrity: a proxy that tampers with the bytes on the wire -----------------------------------


class _TamperProxy:
    """A loopback TCP proxy to Azurite that rewrites bytes in each direction.

    ``upstream_edit`` / ``downstream_edit`` get every chunk read from the client / the server and
    return what to forward. Small requests and responses arrive in one chunk on loopback, which
    is all these tests rely on.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.upstream_edit = lambda b: b
        self.downstream_edit = lambda b: b
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, edit: object) -> None:
            try:
                while chunk := await src.read(65536):
                    dst.write(edit(chunk))  # type: ignore[operator]
                    await dst.drain()
            except ConnectionError:
                pass
            finally:
                dst.close()

        await asyncio.gather(
            pump(reader, up_writer, lambda b: self.upstream_edit(b)),
            pump(up_reader, writer, lambda b: self.downstream_edit(b)),
        )


@pytest_asyncio.fixture
async def tamper(
    azurite_server: AzuriteServer, azure_container: AzureContainer
) -> AsyncIterator[tuple[_TamperProxy, AzureProvider]]:
    proxy = _TamperProxy(azurite_server.port)
    await proxy.start()
    p = AzureProvider(
        azure_container.name,
        account_name=azurite_server.account_name,
        account_key=azurite_server.account_key,
        account_url=f"http://127.0.0.1:{proxy.port}/{azurite_server.account_name}",
    )
    await p.open()
    try:
        yield proxy, p
    finally:
        await p.aclose()
        await proxy.close()


@pytest.mark.asyncio
async def test_body_corrupted_on_the_wire_is_a_transient_integrity_error(
    tamper: tuple[_TamperProxy, AzureProvider], azure_container: AzureContainer, tmp_path: Path
) -> None:
    proxy, p = tamper
    proxy.upstream_edit = lambda b: b.replace(b"PAYLOAD-1", b"PAYLOAD-X")
    src = _write(tmp_path, b"PAYLOAD-1 of a checkpoint")
    with pytest.raises(IntegrityError) as info:
        await p.put("bent.bin", src, overwrite=True)
    assert info.value.transient and info.value.status == 400
    assert not await azure_container.exists("bent.bin")
    upload_id = await p.create_multipart("bent-mp.bin", overwrite=True)
    with pytest.raises(IntegrityError):
        await p.put_part("bent-mp.bin", upload_id, 1, src)
    # The wire heals: the retry the engine would make goes through.
    proxy.upstream_edit = lambda b: b
    await p.put("bent.bin", src, overwrite=True)
    assert await azure_container.read("bent.bin") == b"PAYLOAD-1 of a checkpoint"


@pytest.mark.asyncio
async def test_service_reporting_another_md5_is_an_integrity_error(
    tamper: tuple[_TamperProxy, AzureProvider], azure_container: AzureContainer, tmp_path: Path
) -> None:
    proxy, p = tamper
    bogus = base64.b64encode(b"\x00" * 16)
    proxy.downstream_edit = lambda b: re.sub(
        rb"(?i)(content-md5: )[A-Za-z0-9+/=]{24}", rb"\g<1>" + bogus, b
    )
    with pytest.raises(IntegrityError) as info:
        await p.put("reported.bin", _write(tmp_path, b"some bytes"), overwrite=True)
    # Transient: the blob the service reported other bytes for was deleted (it still had the
    # ETag just written), so the engine's retry writes it again.
    assert info.value.transient
    assert bogus.decode() in str(info.value)
    assert "reported.bin" in str(info.value)
    assert not await azure_container.exists("reported.bin")


@pytest.mark.asyncio
async def test_connection_string_from_the_environment(
    azurite_server: AzuriteServer,
    azure_container: AzureContainer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite_server.connection_string)
    p = AzureProvider.from_uri(f"az://{azure_container.name}/env", {})
    assert azurite_server.account_key not in repr(p)
    async with _opened(p):
        await p.put("e.txt", _write(tmp_path, b"env"), overwrite=True)
    assert await azure_container.read("env/e.txt") == b"env"


@pytest.mark.asyncio
async def test_unknown_api_version_is_a_config_error(azurite_server: AzuriteServer) -> None:
    p = _key_provider(azurite_server, "box", api_version="1999-01-01")
    with pytest.raises(ConfigError, match="1999-01-01"):
        await p.open()
    await p.aclose()


@pytest.mark.asyncio
async def test_seed_api_version_is_spoken(
    azurite_server: AzuriteServer, azure_container: AzureContainer, tmp_path: Path
) -> None:
    kwargs = {**azurite_server.seed_kwargs(), "api_version": "2021-08-06", "region": "westeurope"}
    p = provider_from_seed("azure", azure_container.name, kwargs)
    assert isinstance(p, AzureProvider) and p.api_version == "2021-08-06"
    async with _opened(p):
        await p.put("v.txt", _write(tmp_path, b"old dialect"), overwrite=False)
    assert await azure_container.read("v.txt") == b"old dialect"


@pytest.mark.asyncio
async def test_default_part_sizes_send_without_warnings(
    azurite_server: AzuriteServer, azure_container: AzureContainer, tmp_path: Path
) -> None:
    # The defaults (16 MiB threshold, 8 MiB blocks) and a single put above aiohttp's 1 MiB
    # raw-bytes limit: the bodies must go out without aiohttp's "large body" ResourceWarning,
    # which the test configuration turns into an error.
    single = os.urandom(3 * MiB + 1)
    big = os.urandom(17 * MiB + 5)
    async with AsyncUploader(
        f"az://{azure_container.name}/defaults",
        provider_kwargs=azurite_server.seed_kwargs(),
        max_concurrency=2,
    ) as up:
        await up.upload(_write(tmp_path, single, "one").path, "single.bin")
        await up.upload(_write(tmp_path, big, "big").path, "big.bin")
    assert await azure_container.read("defaults/single.bin") == single
    assert await azure_container.read("defaults/big.bin") == big


# -- the read side -------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_head_reports_the_content_md5_of_a_put(
    provider: AzureProvider, azure_container: AzureContainer, tmp_path: Path
) -> None:
    data = os.urandom(70_000)
    result = await provider.put("h.bin", _write(tmp_path, data), overwrite=True)
    info = await provider.head("h.bin")
    props = await azure_container.properties("runs/r1/h.bin")
    assert (info.name, info.size, info.etag) == ("h.bin", len(data), props.etag)
    assert result.etag == props.etag
    assert info.last_modified is not None
    assert [(c.algorithm, c.value, c.part_size) for c in info.checksums] == [
        ("md5", _md5_b64(data), None)
    ]


@pytest.mark.asyncio
async def test_head_of_a_multipart_upload_reports_its_composite_md5(
    provider: AzureProvider, tmp_path: Path
) -> None:
    part = 1 * MiB
    data = os.urandom(2 * part + 999)
    src = _write(tmp_path, data)
    upload_id = await provider.create_multipart("mp.bin", overwrite=True)
    parts = [
        await provider.put_part("mp.bin", upload_id, i + 1, FileSlice(src.path, off, n))
        for i, (off, n) in enumerate([(0, part), (part, part), (2 * part, 999)])
    ]
    await provider.complete_multipart("mp.bin", upload_id, parts, overwrite=True)
    info = await provider.head("mp.bin")
    digests = b"".join(hashlib.md5(data[o : o + part]).digest() for o in range(0, len(data), part))
    expected = base64.b64encode(hashlib.md5(digests).digest()).decode() + "-3"
    assert [(c.algorithm, c.value, c.part_size, c.parts) for c in info.checksums] == [
        ("md5", expected, part, 3)
    ]
    # The same recorded value comes back in a listing.
    listed = [i async for i in provider.list("mp")]
    assert listed[0].checksums == info.checksums


@pytest.mark.asyncio
async def test_a_composite_md5_inconsistent_with_the_size_is_ignored(
    provider: AzureProvider, azure_container: AzureContainer, tmp_path: Path
) -> None:
    await provider.put("odd.bin", _write(tmp_path, b"12345"), overwrite=True)
    blob = azure_container._client.get_blob_client("runs/r1/odd.bin")
    # No Content-MD5, and metadata claiming 3 parts of 1 MiB for a 5-byte blob.
    from azure.storage.blob import ContentSettings

    await blob.set_http_headers(ContentSettings())
    await blob.set_blob_metadata({_azure_blocks.COMPOSITE_MD5_KEY: f"{'A' * 22}==:1048576:3"})
    info = await provider.head("odd.bin")
    assert info.checksums == ()


@pytest.mark.asyncio
async def test_get_range_reads_bytes_conditionally(provider: AzureProvider, tmp_path: Path) -> None:
    data = os.urandom(200_000)
    await provider.put("r.bin", _write(tmp_path, data), overwrite=True)
    info = await provider.head("r.bin")
    assert await provider.get_range("r.bin", 0, len(data)) == data
    assert await provider.get_range("r.bin", 777, 100, etag=info.etag) == data[777:877]
    await provider.put("r.bin", _write(tmp_path, os.urandom(200_000), "b.bin"), overwrite=True)
    with pytest.raises(ProviderError) as changed:
        await provider.get_range("r.bin", 0, 10, etag=info.etag)
    assert changed.value.status == 412 and not changed.value.transient
    # Past the end: fewer bytes than asked (or a refused range) is never returned as data.
    with pytest.raises(ProviderError):
        await provider.get_range("r.bin", len(data) - 5, 10)
    with pytest.raises(ConfigError):
        await provider.get_range("r.bin", 0, 0)


@pytest.mark.asyncio
async def test_missing_blob_is_object_not_found(provider: AzureProvider) -> None:
    with pytest.raises(ObjectNotFoundError) as head_info:
        await provider.head("missing")
    with pytest.raises(ObjectNotFoundError) as get_info:
        await provider.get_range("missing", 0, 1)
    for err in (head_info.value, get_info.value):
        assert isinstance(err, FileNotFoundError) and "missing" in str(err)


@pytest.mark.asyncio
async def test_list_is_sorted_and_relative_to_the_prefix(
    provider: AzureProvider,
    azurite_server: AzuriteServer,
    azure_container: AzureContainer,
    tmp_path: Path,
) -> None:
    names = ["b/2.pt", "a.txt", "b/1.pt", "b/10.pt", "ü.bin"]
    for i, name in enumerate(names):
        await provider.put(name, _write(tmp_path, name.encode(), f"f{i}"), overwrite=True)
    sibling = _key_provider(azurite_server, azure_container.name, prefix="runs/r10")
    async with _opened(sibling):
        await sibling.put("a.txt", _write(tmp_path, b"other", "o"), overwrite=True)
    listed = [i async for i in provider.list()]
    assert [i.name for i in listed] == sorted(names)
    assert all(i.checksums[0].algorithm == "md5" and i.etag for i in listed)
    assert [i.name async for i in provider.list("b/1")] == ["b/1.pt", "b/10.pt"]
    assert [i.name async for i in provider.list("nothing")] == []


@pytest.mark.asyncio
async def test_delete_is_idempotent(
    provider: AzureProvider, azure_container: AzureContainer, tmp_path: Path
) -> None:
    await provider.put("d.bin", _write(tmp_path, b"d"), overwrite=True)
    await provider.delete("d.bin")
    assert not await azure_container.exists("runs/r1/d.bin")
    await provider.delete("d.bin")
    with pytest.raises(ObjectNotFoundError):
        await provider.head("d.bin")


@pytest.mark.asyncio
async def test_result_claims_no_md5_the_service_did_not_echo(
    tamper: tuple[_TamperProxy, AzureProvider], tmp_path: Path
) -> None:
    proxy, p = tamper
    # The answer to Put Blob loses its Content-MD5 header: nothing was confirmed.
    proxy.downstream_edit = lambda b: re.sub(rb"(?i)content-md5: [A-Za-z0-9+/=]{24}\r\n", b"", b)
    result = await p.put("quiet.bin", _write(tmp_path, b"some bytes"), overwrite=True)
    assert result.checksum is None and result.checksum_algorithm is None
    proxy.downstream_edit = lambda b: b
    result = await p.put("quiet.bin", _write(tmp_path, b"some bytes"), overwrite=True)
    assert (result.checksum_algorithm, result.checksum) == ("md5", _md5_b64(b"some bytes"))


@pytest.mark.parametrize("use_procs", [False, True], ids=["thread", "process"])
def test_sync_uploader_reads_back_from_azure(
    azurite_server: AzuriteServer, azure_container: AzureContainer, tmp_path: Path, use_procs: bool
) -> None:
    data = os.urandom(3 * MiB + 1)
    src = _write(tmp_path, data, "src.bin")
    link = _write(tmp_path, b"ckpt/ep1.pt", "link")
    parts = PartPolicy(threshold=MiB, part_size=MiB)
    with Uploader(
        f"az://{azure_container.name}/exp",
        provider_kwargs={"connection_string": azurite_server.connection_string},
        parts=parts,
        use_procs=use_procs,
    ) as up:
        up.upload(src.path, "ckpt/ep1.pt")  # multipart: 4 blocks, composite MD5
        up.upload(link.path, "latest.pt.symlink")
        (tmp_path / "out").mkdir()
        result = up.download("latest.pt", tmp_path / "out" / "ep1.pt")
        info = up.head("ckpt/ep1.pt")
        assert [i.name for i in up.list()] == ["ckpt/ep1.pt", "latest.pt.symlink"]
    assert info.checksums[0].parts == 4
    assert result.name == "ckpt/ep1.pt" and result.checksum_algorithm == "md5"
    assert (tmp_path / "out" / "ep1.pt").read_bytes() == data


@pytest.mark.asyncio
async def test_engine_retries_a_reported_md5_mismatch_then_fails_leaving_nothing(
    tamper: tuple[_TamperProxy, AzureProvider], azure_container: AzureContainer, tmp_path: Path
) -> None:
    proxy, p = tamper
    bogus = base64.b64encode(b"\x01" * 16)
    proxy.downstream_edit = lambda b: re.sub(
        rb"(?i)(content-md5: )[A-Za-z0-9+/=]{24}", rb"\g<1>" + bogus, b
    )
    retry = RetryPolicy(attempts=3, base_delay=0.0, max_delay=0.0)
    async with AsyncUploader(p, retry=retry) as up:
        with pytest.raises(IntegrityError) as info:
            await up.upload(_write(tmp_path, b"checkpoint bytes").path, "m.bin", overwrite=False)
        up._take_failures()
    assert info.value.attempts == 3
    assert not await azure_container.exists("m.bin")  # each unconfirmed write was removed
