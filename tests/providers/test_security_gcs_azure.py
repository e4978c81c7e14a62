"""Security promises of the GCS and Azure providers (issue 11; issue 14's credential messages).

Real servers throughout: fake-gcs-server and Azurite, behind the fault proxy (redirecting,
corrupting, echoing request headers) with a :class:`Sink` posing as another host, and the
scripted loopback GCS server of ``test_provider_gcs`` for answers fake-gcs-server never gives.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import os
import traceback
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web

from artifact_uploader import AsyncUploader, RetryPolicy
from artifact_uploader._errors import (
    ConfigError,
    IntegrityError,
    PermissionDeniedError,
    ProviderError,
)
from artifact_uploader._types import FileSlice
from artifact_uploader.providers.azure import AzureProvider
from artifact_uploader.providers.gcs import GCSProvider
from tests.providers.gcs import test_provider_gcs
from tests.providers.gcs.test_provider_gcs import Reply, Script, _google_error, _object
from tests.servers.azurite import AzureContainer, AzuriteServer
from tests.servers.fake_gcs import FakeGCSServer
from tests.servers.fault_proxy import Fault, FaultProxy, Sink

# The scripted loopback GCS server of test_provider_gcs, registered here as the fixture "script".
script = test_provider_gcs.script

GCS_TOKEN = "ya29.SECRETgcsbearer" + "T" * 40
WRONG_AZURE_KEY = base64.b64encode(
    b"not the account key, 64 bytes long...................."
).decode()
RETRY = RetryPolicy(attempts=3, base_delay=0.0, max_delay=0.0)
MiB = 1024 * 1024


def render(exc: BaseException) -> str:
    """str, repr and args of every exception in the chain, and the formatted traceback."""
    parts = ["".join(traceback.format_exception(exc))]
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        parts += [str(e), repr(e), repr(e.args), repr(getattr(e, "response", None))]
        stack += [e.__cause__, e.__context__]
    return "\n".join(parts)


def _file(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / f"src-{uuid.uuid4().hex[:8]}.bin"
    path.write_bytes(data)
    return path


def _crc32c(data: bytes) -> str:
    import google_crc32c

    return base64.b64encode(google_crc32c.Checksum(data).digest()).decode()  # type: ignore[no-untyped-call]


@pytest.fixture
def gcs_proxy(fake_gcs_server: FakeGCSServer) -> Iterator[FaultProxy]:
    """A fault proxy of this test's own in front of fake-gcs-server."""
    proxy = FaultProxy(fake_gcs_server.api_root)
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()


@pytest.fixture
def azure_proxy(azurite_server: AzuriteServer) -> Iterator[FaultProxy]:
    """A fault proxy of this test's own in front of Azurite."""
    proxy = FaultProxy(f"http://{azurite_server.host}:{azurite_server.port}")
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()


def _sas(server: AzuriteServer, container: str) -> str:
    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    return generate_container_sas(
        server.account_name,
        container,
        account_key=server.account_key,
        permission=ContainerSasPermissions(read=True, write=True, create=True, delete=True),
        expiry=datetime.now(UTC) + timedelta(hours=1),
    )


def _sig(sas: str) -> str:
    """The signature (the secret part) of a SAS token, as it travels (URL-encoded)."""
    return next(p for p in sas.split("&") if p.startswith("sig=")).removeprefix("sig=")


# -- finding 3: no redirect is followed --------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("size", "status"),
    [(100, 301), (100, 302), (100, 307), (100, 308), (4096, 307), (4096, 308)],
    ids=["simple-301", "simple-302", "simple-307", "simple-308", "resumable-307", "resumable-308"],
)
async def test_gcs_upload_redirect_is_a_permanent_error_and_nothing_reaches_the_other_host(
    fake_gcs_server: FakeGCSServer,
    gcs_bucket: str,
    gcs_proxy: FaultProxy,
    sink: Sink,
    tmp_path: Path,
    size: int,
    status: int,
) -> None:
    p = GCSProvider(
        gcs_bucket, api_root=gcs_proxy.endpoint_url, token=GCS_TOKEN, resumable_threshold=1024
    )
    await p.open(verify=False)
    gcs_proxy.script(Fault("redirect", status=status, location=sink.url), method="POST")
    try:
        with pytest.raises(ProviderError) as info:
            await p.put("r.bin", FileSlice.whole(_file(tmp_path, b"r" * size)), overwrite=True)
    finally:
        await p.aclose()
    err = info.value
    assert gcs_proxy.counts["redirect"] == 1
    assert sink.received == []  # neither the body nor the token went to the other host
    assert not err.transient and err.status == status
    assert sink.url in str(err) and "redirect" in str(err)
    assert GCS_TOKEN not in render(err)
    assert not fake_gcs_server.object_exists(gcs_bucket, "r.bin")


@pytest.mark.asyncio
async def test_gcs_resumable_session_url_on_another_host_is_refused(
    script: Script, sink: Sink, tmp_path: Path
) -> None:
    # The session URL gets the whole body and the token: a URL on another host is refused.
    script.on("POST", Reply(200, b"", {"Location": f"{sink.url}/upload?upload_id=x"}))
    p = GCSProvider("bkt", api_root=script.root, token=GCS_TOKEN, resumable_threshold=10)
    await p.open(verify=False)
    try:
        with pytest.raises(ProviderError) as info:
            await p.put("s.bin", FileSlice.whole(_file(tmp_path, b"s" * 100)), overwrite=True)
        # A redirect answered to the streaming PUT itself is refused too.
        location = "{root}/upload/storage/v1/b/bkt/o?uploadType=resumable&upload_id=u1"
        script.on("POST", Reply(200, b"", {"Location": location}))
        script.on("PUT", Reply(307, b"", {"Location": f"{sink.url}/elsewhere"}))
        with pytest.raises(ProviderError) as put_info:
            await p.put("s.bin", FileSlice.whole(_file(tmp_path, b"s" * 100)), overwrite=True)
    finally:
        await p.aclose()
    assert sink.received == []
    assert not info.value.transient and "another host" in str(info.value)
    assert put_info.value.status == 307 and f"{sink.url}/elsewhere" in str(put_info.value)
    assert not put_info.value.transient


@pytest.mark.asyncio
async def test_gcs_read_redirect_is_refused(
    fake_gcs_server: FakeGCSServer,
    gcs_bucket: str,
    gcs_proxy: FaultProxy,
    sink: Sink,
    tmp_path: Path,
) -> None:
    p = GCSProvider(gcs_bucket, api_root=gcs_proxy.endpoint_url, token=GCS_TOKEN)
    await p.open(verify=False)
    try:
        await p.put("obj", FileSlice.whole(_file(tmp_path, b"0123456789")), overwrite=True)
        gcs_proxy.script(Fault("redirect", status=302, location=sink.url), method="GET")
        with pytest.raises(ProviderError) as head_info:
            await p.head("obj")
        gcs_proxy.script(Fault("redirect", status=307, location=sink.url), method="GET")
        with pytest.raises(ProviderError) as get_info:
            await p.get_range("obj", 0, 4)
        assert await p.get_range("obj", 2, 3) == b"234"  # the proxy forwards again
    finally:
        await p.aclose()
    assert sink.received == []
    assert (head_info.value.status, get_info.value.status) == (302, 307)
    assert not head_info.value.transient and not get_info.value.transient


@pytest.mark.asyncio
@pytest.mark.parametrize("status", [301, 307, 308])
async def test_azure_redirect_is_a_permanent_error_and_nothing_reaches_the_other_host(
    azurite_server: AzuriteServer,
    azure_container: AzureContainer,
    azure_proxy: FaultProxy,
    sink: Sink,
    tmp_path: Path,
    status: int,
) -> None:
    sas = _sas(azurite_server, azure_container.name)
    p = AzureProvider(
        azure_container.name,
        account_url=f"{azure_proxy.endpoint_url}/{azurite_server.account_name}",
        sas_token=sas,
    )
    await p.open(verify=False)
    try:
        azure_proxy.script(Fault("redirect", status=status, location=sink.url), method="PUT")
        with pytest.raises(ProviderError) as put_info:
            await p.put("r.bin", FileSlice.whole(_file(tmp_path, b"r" * 100)), overwrite=True)
        assert sink.received == []  # the upload was not re-sent there
        await p.put("r.bin", FileSlice.whole(_file(tmp_path, b"r" * 100)), overwrite=True)
        azure_proxy.script(Fault("redirect", status=302, location=sink.url), method="GET")
        with pytest.raises(ProviderError) as get_info:
            await p.get_range("r.bin", 0, 10)
    finally:
        await p.aclose()
    assert sink.received == []  # no body, no SAS signature sent to the other host
    for info, code in ((put_info, status), (get_info, 302)):
        err = info.value
        assert err.status == code and not err.transient
        assert sink.url in str(err) and "redirect" in str(err)
        assert _sig(sas) not in render(err)


# -- finding 5: integrity is checked on the answer --------------------------------------------


@pytest.mark.asyncio
async def test_gcs_body_corrupted_in_transit_is_retried_then_stored_intact(
    fake_gcs_server: FakeGCSServer, gcs_bucket: str, gcs_proxy: FaultProxy, tmp_path: Path
) -> None:
    # fake-gcs-server stores what arrives; the CRC32C it reports back tells us it is not ours.
    data = os.urandom(50_000)
    gcs_proxy.script(Fault("corrupt-request"), method="POST")
    async with AsyncUploader(
        f"gs://{gcs_bucket}/run",
        provider_kwargs={"api_root": gcs_proxy.endpoint_url},
        retry=RETRY,
    ) as up:
        result = await up.upload(_file(tmp_path, data), "ckpt.pt", overwrite=False)
    assert gcs_proxy.counts["corrupt-request"] == 1
    assert fake_gcs_server.read_object(gcs_bucket, "run/ckpt.pt") == data
    assert result.checksum == _crc32c(data)


@pytest.mark.asyncio
async def test_gcs_body_always_corrupted_fails_with_integrity_error_and_leaves_nothing(
    fake_gcs_server: FakeGCSServer, gcs_bucket: str, gcs_proxy: FaultProxy, tmp_path: Path
) -> None:
    gcs_proxy.script(*[Fault("corrupt-request")] * RETRY.attempts, method="POST")
    up = AsyncUploader(
        f"gs://{gcs_bucket}/run", provider_kwargs={"api_root": gcs_proxy.endpoint_url}, retry=RETRY
    )
    await up.__aenter__()
    try:
        with pytest.raises(IntegrityError) as info:
            await up.upload(_file(tmp_path, os.urandom(10_000)), "bad.pt", overwrite=True)
        up._take_failures()
    finally:
        await up.__aexit__(None, None, None)
    assert gcs_proxy.counts["corrupt-request"] == RETRY.attempts
    assert info.value.attempts == RETRY.attempts
    # Every unverified generation was deleted: nothing corrupt is left under the name.
    assert not fake_gcs_server.object_exists(gcs_bucket, "run/bad.pt")


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("reported", "expected"),
    [((), None), (("md5Hash",), "md5"), (("crc32c", "md5Hash"), "crc32c")],
    ids=["none", "md5-only", "both"],
)
async def test_gcs_result_claims_only_a_checksum_the_server_reported(
    script: Script, tmp_path: Path, reported: tuple[str, ...], expected: str | None
) -> None:
    data = b"a checkpoint"
    resource = {
        k: v
        for k, v in _object("c.bin", data).items()
        if k not in ("crc32c", "md5Hash") or k in reported
    }
    script.on("POST", Reply(200, resource))
    p = GCSProvider("bkt", api_root=script.root)
    await p.open(verify=False)
    try:
        result = await p.put("c.bin", FileSlice.whole(_file(tmp_path, data)), overwrite=True)
    finally:
        await p.aclose()
    assert result.checksum_algorithm == expected
    md5 = base64.b64encode(hashlib.md5(data).digest()).decode()
    assert result.checksum == {None: None, "md5": md5, "crc32c": _crc32c(data)}[expected]


# -- finding 6: secrets never in errors, when a server echoes request headers ----------------


@pytest.mark.asyncio
@pytest.mark.parametrize("size", [100, 4096], ids=["simple", "resumable"])
async def test_gcs_token_never_in_errors_when_the_server_echoes_headers(
    gcs_bucket: str, gcs_proxy: FaultProxy, tmp_path: Path, size: int
) -> None:
    p = GCSProvider(
        gcs_bucket, api_root=gcs_proxy.endpoint_url, token=GCS_TOKEN, resumable_threshold=1024
    )
    await p.open(verify=False)
    gcs_proxy.script(Fault("echo"), method="POST")
    try:
        with pytest.raises(PermissionDeniedError) as info:
            await p.put("e.bin", FileSlice.whole(_file(tmp_path, b"e" * size)), overwrite=True)
        assert GCS_TOKEN not in render(info.value)
        gcs_proxy.script(Fault("echo"), method="GET")
        with pytest.raises(PermissionDeniedError) as read_info:
            await p.head("e.bin")
    finally:
        await p.aclose()
    assert gcs_proxy.counts["echo"] == 2
    for err in (info.value, read_info.value):
        text = render(err)
        assert "authorization" in text.lower()  # the server did quote the header back
        assert GCS_TOKEN not in text


@pytest.mark.asyncio
async def test_azure_sas_and_key_never_in_errors_when_the_server_echoes_headers(
    azurite_server: AzuriteServer,
    azure_container: AzureContainer,
    azure_proxy: FaultProxy,
    tmp_path: Path,
) -> None:
    sas = _sas(azurite_server, azure_container.name)
    account_url = f"{azure_proxy.endpoint_url}/{azurite_server.account_name}"
    providers = [
        AzureProvider(azure_container.name, account_url=account_url, sas_token=sas),
        AzureProvider(
            azure_container.name,
            account_name=azurite_server.account_name,
            account_key=azurite_server.account_key,
            account_url=account_url,
        ),
    ]
    failures: list[BaseException] = []
    for p in providers:
        await p.open(verify=False)
        try:
            azure_proxy.script(Fault("echo"), method="PUT")
            with pytest.raises(PermissionDeniedError) as info:
                await p.put("e.bin", FileSlice.whole(_file(tmp_path, b"e" * 10)), overwrite=True)
            failures.append(info.value)
            assert _sig(sas) not in render(info.value)
            assert azurite_server.account_key not in render(info.value)
            azure_proxy.script(Fault("echo"), method="GET")
            with pytest.raises(PermissionDeniedError) as read_info:
                await p.get_range("e.bin", 0, 1)
            failures.append(read_info.value)
        finally:
            await p.aclose()
    assert azure_proxy.counts["echo"] == 4
    for err in failures:
        text = render(err)
        assert _sig(sas) not in text
        assert azurite_server.account_key not in text


@pytest_asyncio.fixture
async def url_echo() -> AsyncIterator[str]:
    """A loopback server whose every answer is an error page quoting the request line (URL with
    its query) and the Authorization header, as some proxies' error pages do. Yields its root
    URL; the status comes from the first path segment after the account ("/<acct>/<status>/")
    or is 403."""

    async def handle(request: web.Request) -> web.Response:
        await request.read()
        segments = request.path.strip("/").split("/")
        status = int(segments[1]) if len(segments) > 1 and segments[1].isdigit() else 403
        page = (
            f"<html>cannot {request.method} {request.url} "
            f"(Authorization: {request.headers.get('Authorization')})</html>"
        )
        return web.Response(status=status, text=page, content_type="text/html")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    sockets = site._server.sockets if site._server else []  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{sockets[0].getsockname()[1]}"
    finally:
        await runner.cleanup()


SAS_SIG = "SECRETsasSignature" + "S" * 30


@pytest.mark.asyncio
@pytest.mark.parametrize("status", [403, 404, 502])
async def test_azure_sas_never_in_errors_when_a_server_quotes_the_url(
    url_echo: str, tmp_path: Path, status: int
) -> None:
    # azure-core appends the response body to str(HttpResponseError) each time it is printed.
    sas = f"sv=2021-08-06&sp=rw&sig={SAS_SIG}"
    p = AzureProvider(f"c{status}", account_url=f"{url_echo}/devstoreaccount1", sas_token=sas)
    await p.open(verify=False)
    try:
        with pytest.raises(ProviderError) as put_info:
            await p.put("e.bin", FileSlice.whole(_file(tmp_path, b"e")), overwrite=True)
        assert SAS_SIG not in render(put_info.value)
        with pytest.raises(ProviderError) as get_info:
            await p.get_range("e.bin", 0, 1)
    finally:
        await p.aclose()
    for err in (put_info.value, get_info.value):
        text = render(err)
        assert "cannot" in text  # the server's page is still shown, scrubbed
        assert SAS_SIG not in text


@pytest.mark.asyncio
async def test_gcs_token_never_in_errors_when_a_server_quotes_the_request(
    url_echo: str, tmp_path: Path
) -> None:
    p = GCSProvider("bkt", api_root=url_echo, token=GCS_TOKEN, resumable_threshold=10)
    await p.open(verify=False)
    failures: list[BaseException] = []
    try:
        for size in (5, 50):  # simple, resumable
            with pytest.raises(ProviderError) as info:
                await p.put("e.bin", FileSlice.whole(_file(tmp_path, b"e" * size)), overwrite=True)
            failures.append(info.value)
            assert GCS_TOKEN not in render(info.value)
        with pytest.raises(ProviderError) as read_info:
            await p.get_range("e.bin", 0, 1)
        failures.append(read_info.value)
    finally:
        await p.aclose()
    for err in failures:
        text = render(err)
        assert "Authorization" in text and GCS_TOKEN not in text


# -- finding 8: plain HTTP off loopback needs allow_http=True -----------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {"api_root": "http://storage.example.com", "token": GCS_TOKEN},
        {"api_root": "http://10.1.2.3:4443"},
        {"host": "gcs.internal", "port": 4443, "secure": False, "token": GCS_TOKEN},
    ],
    ids=["token", "emulator-on-lan", "seed-host"],
)
def test_gcs_plain_http_to_another_host_needs_allow_http(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigError) as info:
        GCSProvider.from_uri("gs://bkt", options)
    assert "allow_http=True" in str(info.value) and "plain HTTP" in str(info.value)
    assert GCS_TOKEN not in str(info.value)
    allowed = GCSProvider.from_uri("gs://bkt", {**options, "allow_http": True})
    assert allowed.allow_http is True


@pytest.mark.asyncio
async def test_gcs_storage_emulator_host_off_loopback_needs_allow_http(
    monkeypatch: pytest.MonkeyPatch, fake_gcs_server: FakeGCSServer, gcs_bucket: str
) -> None:
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "gcs-emulator.internal:4443")
    p = GCSProvider("bkt", token=GCS_TOKEN)
    with pytest.raises(ConfigError) as info:
        await p.open(verify=False)
    await p.aclose()
    assert "STORAGE_EMULATOR_HOST" in str(info.value) and "allow_http" in str(info.value)
    # Loopback stays easy: no flag for an emulator on this machine.
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", fake_gcs_server.api_root.removeprefix("http://"))
    q = GCSProvider(gcs_bucket, token=GCS_TOKEN)
    await q.open()
    await q.aclose()


ACCOUNT_KEY = base64.b64encode(b"k" * 64).decode()


@pytest.mark.parametrize(
    "kwargs",
    [
        {
            "account_url": "http://acct.example.com",
            "account_name": "acct",
            "account_key": ACCOUNT_KEY,
        },
        {"account_url": "http://192.168.1.9:10000/devstoreaccount1", "sas_token": "sv=1&sig=abc"},
        {
            "connection_string": (
                f"DefaultEndpointsProtocol=http;AccountName=acct;AccountKey={ACCOUNT_KEY};"
                "EndpointSuffix=core.windows.net"
            )
        },
        {
            "connection_string": (
                f"AccountName=acct;AccountKey={ACCOUNT_KEY};BlobEndpoint=http://azurite.lan:10000/acct"
            )
        },
    ],
    ids=["key", "sas", "conn-protocol", "conn-endpoint"],
)
def test_azure_plain_http_to_another_host_needs_allow_http(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError) as info:
        AzureProvider("box", **kwargs)
    assert "allow_http=True" in str(info.value) and "plain HTTP" in str(info.value)
    assert ACCOUNT_KEY not in str(info.value) and "sig=abc" not in str(info.value)
    assert AzureProvider("box", allow_http=True, **kwargs).allow_http is True


@pytest.mark.asyncio
async def test_azure_loopback_http_needs_no_flag(
    azurite_server: AzuriteServer, azure_container: AzureContainer, tmp_path: Path
) -> None:
    for p in (
        AzureProvider(azure_container.name, connection_string=azurite_server.connection_string),
        AzureProvider.from_uri(f"az://{azure_container.name}", azurite_server.seed_kwargs()),
        AzureProvider(azure_container.name, connection_string="UseDevelopmentStorage=true"),
    ):
        assert p.allow_http is False
    p = AzureProvider(azure_container.name, connection_string=azurite_server.connection_string)
    await p.open()
    try:
        await p.put("ok.txt", FileSlice.whole(_file(tmp_path, b"ok")), overwrite=True)
    finally:
        await p.aclose()
    assert await azure_container.read("ok.txt") == b"ok"


# -- issue 14: a wrong credential says so, and what to check ------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("status", [401, 403])
async def test_gcs_refused_credentials_say_so_and_what_to_check(
    script: Script, tmp_path: Path, status: int
) -> None:
    script.on("GET", Reply(status, _google_error(status, "Invalid Credentials")))
    script.on("POST", Reply(status, _google_error(status, "Invalid Credentials")))
    p = GCSProvider("bkt", api_root=script.root, token=GCS_TOKEN)
    with pytest.raises(PermissionDeniedError) as open_info:
        await p.open()
    await p.open(verify=False)
    try:
        with pytest.raises(PermissionDeniedError) as put_info:
            await p.put("x", FileSlice.whole(_file(tmp_path, b"x")), overwrite=True)
    finally:
        await p.aclose()
    for err in (open_info.value, put_info.value):
        message = str(err)
        assert "credentials" in message and "'token'" in message
        assert "Invalid Credentials" in message  # what the server said, too
        assert GCS_TOKEN not in message and err.status == status


@pytest.mark.asyncio
async def test_azure_refused_credentials_say_so_and_what_to_check(
    azurite_server: AzuriteServer, azure_container: AzureContainer, tmp_path: Path
) -> None:
    p = AzureProvider(
        azure_container.name,
        account_name=azurite_server.account_name,
        account_key=WRONG_AZURE_KEY,
        account_url=azurite_server.account_url,
    )
    with pytest.raises(PermissionDeniedError) as open_info:
        await p.open()
    await p.open(verify=False)
    try:
        with pytest.raises(PermissionDeniedError) as put_info:
            await p.put("x", FileSlice.whole(_file(tmp_path, b"x")), overwrite=True)
    finally:
        await p.aclose()
    for err in (open_info.value, put_info.value):
        message = str(err)
        assert "credentials were refused" in message
        assert f"check the account key for account {azurite_server.account_name!r}" in message
        assert WRONG_AZURE_KEY not in render(err) and err.status == 403


@pytest.mark.asyncio
async def test_engine_reports_refused_credentials_for_gcs(script: Script, tmp_path: Path) -> None:
    """Through the engine: the failure the user sees names the credentials."""
    script.on("POST", Reply(403, _google_error(403, "caller does not have storage.objects.create")))
    async with AsyncUploader(
        "gs://bkt", provider_kwargs={"api_root": script.root, "token": GCS_TOKEN}, verify=False
    ) as up:
        with pytest.raises(PermissionDeniedError) as info:
            await up.upload(_file(tmp_path, b"x"), "x")
        up._take_failures()
    assert "credentials" in str(info.value) and "storage.objects.create" in str(info.value)


@pytest.mark.asyncio
async def test_debug_logs_carry_no_secrets(
    azurite_server: AzuriteServer,
    azure_container: AzureContainer,
    url_echo: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    sas = _sas(azurite_server, azure_container.name)
    az = AzureProvider(azure_container.name, account_url=azurite_server.account_url, sas_token=sas)
    gcs = GCSProvider("bkt", api_root=url_echo, token=GCS_TOKEN)
    for p in (az, gcs):
        await p.open(verify=False)
        try:
            with contextlib.suppress(ProviderError):
                await p.put("l.bin", FileSlice.whole(_file(tmp_path, b"l")), overwrite=True)
            with contextlib.suppress(ProviderError):
                await p.get_range("missing.bin", 0, 1)
        finally:
            await p.aclose()
    assert caplog.records  # the SDKs did log at DEBUG
    assert _sig(sas) not in caplog.text and GCS_TOKEN not in caplog.text
