"""providers/_vendor.py: each read of another library's internals, against the real library.

A library release that moves one of these internals makes the function raise LibraryChanged
(naming the library and its version), and the test here fails with that message. Real objects
throughout: aiobotocore clients (against moto where a request is sent), botocore and aiobotocore
refreshable credentials, azure-core's transport and gcloud-aio's token against loopback servers.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiobotocore.session
import aiohttp
import pytest
from aiobotocore.config import AioConfig
from aiobotocore.credentials import AioRefreshableCredentials
from aiohttp import web
from botocore.credentials import RefreshableCredentials
from botocore.exceptions import BotoCoreError

from artifact_uploader.providers._vendor import (
    CredentialValues,
    HttpSettings,
    LibraryChanged,
    azure_transport,
    cancel_token_refresh,
    client_credentials,
    credential_values,
    gcloud_access_token,
    http_settings,
    resolve_endpoint,
    session_class,
)
from tests.servers.moto import MotoServer

MiB = 1024 * 1024
_PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")


@asynccontextmanager
async def _s3_client(**kwargs: Any) -> AsyncIterator[Any]:
    options: dict[str, Any] = {
        "region_name": "us-east-1",
        "aws_access_key_id": "AKIAVENDORTEST",
        "aws_secret_access_key": "vendor-secret-0123",
    }
    options.update(kwargs)
    session = aiobotocore.session.AioSession()
    async with session.create_client("s3", **options) as client:
        yield client


@asynccontextmanager
async def _loopback(
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> AsyncIterator[str]:
    app = web.Application(client_max_size=16 * MiB)
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def _no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in _PROXY_VARS:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


# -- botocore / aiobotocore ------------------------------------------------------------------


@pytest.mark.asyncio
async def test_client_credentials_are_the_ones_the_client_signs_with() -> None:
    async with _s3_client(endpoint_url="http://127.0.0.1:9", aws_session_token="tok") as client:
        credentials = client_credentials(client)
        assert credentials is not None
        assert credential_values(credentials) == CredentialValues(
            "AKIAVENDORTEST", "vendor-secret-0123", "tok"
        )
        frozen = await credentials.get_frozen_credentials()
        assert frozen.secret_key == "vendor-secret-0123"


def test_a_foreign_object_is_reported_as_a_library_change() -> None:
    # The loud failure every test here relies on: library, version and the internal read.
    with pytest.raises(LibraryChanged, match=r"^botocore \d+\.\d+\.\d+ changed: BaseClient\.") as e:
        client_credentials(object())
    assert e.value.library == "botocore" and isinstance(e.value.__cause__, AttributeError)
    with pytest.raises(LibraryChanged, match=r"credentials of type object"):
        credential_values(object())


def _refreshable(kind: type[Any], calls: list[str], expired: bool) -> Any:
    expiry = datetime.now(UTC) + (timedelta(minutes=-5) if expired else timedelta(hours=1))

    def metadata() -> dict[str, str]:
        calls.append("refresh")
        return {
            "access_key": "AKIANEW",
            "secret_key": "new-secret",
            "token": "new-token",
            "expiry_time": (datetime.now(UTC) + timedelta(hours=1)).isoformat(),
        }

    async def ametadata() -> dict[str, str]:
        return metadata()

    return kind.create_from_metadata(
        {
            "access_key": "AKIAOLD",
            "secret_key": "old-secret",
            "token": "old-token",
            "expiry_time": expiry.isoformat(),
        },
        refresh_using=ametadata if kind is AioRefreshableCredentials else metadata,
        method="test",
    )


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", [RefreshableCredentials, AioRefreshableCredentials])
async def test_credential_values_of_refreshable_credentials_do_not_refresh(kind: type[Any]) -> None:
    calls: list[str] = []
    creds = _refreshable(kind, calls, expired=True)
    # Expired: the public properties would refresh right here; the read must not.
    assert credential_values(creds) == CredentialValues("AKIAOLD", "old-secret", "old-token")
    assert calls == []
    frozen = creds.get_frozen_credentials()
    if kind is AioRefreshableCredentials:
        frozen = await frozen
    assert calls == ["refresh"] and frozen.secret_key == "new-secret"
    # The live fields, not a copy taken earlier.
    assert credential_values(creds) == CredentialValues("AKIANEW", "new-secret", "new-token")
    assert "secret" not in repr(credential_values(creds))


@pytest.mark.asyncio
async def test_resolve_endpoint_on_aws_is_virtual_hosted_for_the_region() -> None:
    async with _s3_client(region_name="eu-west-2") as client:
        resolved = await resolve_endpoint(client, "PutObject", {"Bucket": "bkt", "Key": "k"})
    assert resolved.url == "https://bkt.s3.eu-west-2.amazonaws.com"
    assert resolved.auth_type in ("v4", "s3v4")
    assert resolved.signing.get("region") == "eu-west-2"
    assert resolved.signing.get("signing_name", "s3") == "s3"
    assert dict(resolved.headers) == {}


@pytest.mark.asyncio
async def test_resolve_endpoint_on_a_custom_endpoint_is_path_style() -> None:
    config = AioConfig(s3={"addressing_style": "path"})
    async with _s3_client(endpoint_url="http://127.0.0.1:9", config=config) as client:
        resolved = await resolve_endpoint(client, "PutObject", {"Bucket": "bkt", "Key": "k"})
    assert resolved.url == "http://127.0.0.1:9/bkt"
    assert resolved.signing.get("region") == "us-east-1"


@pytest.mark.asyncio
async def test_resolve_endpoint_passes_botocores_own_refusals_on() -> None:
    # A configuration the ruleset rejects is botocore's answer, not a change of shape.
    config = AioConfig(s3={"use_accelerate_endpoint": True})
    async with _s3_client(endpoint_url="http://127.0.0.1:9", config=config) as client:
        with pytest.raises(BotoCoreError, match="S3 Accelerate") as e:
            await resolve_endpoint(client, "PutObject", {"Bucket": "bkt", "Key": "k"})
    assert not isinstance(e.value, LibraryChanged)


@pytest.mark.asyncio
async def test_http_settings_are_what_the_client_was_given(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _no_proxy_env(monkeypatch)
    ca, cert = str(tmp_path / "ca.pem"), str(tmp_path / "cert.pem")
    config = AioConfig(proxies={"https": "http://127.0.0.1:3128"}, client_cert=cert)
    async with _s3_client(config=config, verify=ca) as client:
        settings = http_settings(client, "https://bkt.s3.us-east-1.amazonaws.com/")
    assert settings == HttpSettings(proxy="http://127.0.0.1:3128", verify=ca, client_cert=cert)
    # Nothing else configured: no CA bundle from the environment or a config file either.
    for name in ("AWS_CA_BUNDLE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    async with _s3_client() as client:
        plain = http_settings(client, "https://bkt.s3.us-east-1.amazonaws.com/")
    assert plain == HttpSettings(proxy=None, verify=True, client_cert=None)


@pytest.mark.asyncio
async def test_http_settings_see_the_environments_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    _no_proxy_env(monkeypatch)
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:3129")
    async with _s3_client() as client:
        settings = http_settings(client, "https://bkt.s3.us-east-1.amazonaws.com/")
    assert settings.proxy == "http://127.0.0.1:3129"


@pytest.mark.asyncio
async def test_session_class_wraps_the_sessions_requests_go_through(
    moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    _no_proxy_env(monkeypatch)
    seen: list[str] = []

    class Counting:
        def __init__(self, session: aiohttp.ClientSession) -> None:
            self.session = session

        def request(self, method: str, url: Any, **kwargs: Any) -> Any:
            seen.append(method)
            return self.session.request(method, url, **kwargs)

        def __getattr__(self, name: str) -> Any:
            return getattr(self.session, name)

    def wrap(session: aiohttp.ClientSession) -> Counting:
        assert isinstance(session, aiohttp.ClientSession)
        return Counting(session)

    config = AioConfig(http_session_cls=session_class(wrap))
    async with _s3_client(endpoint_url=moto_server.endpoint_url, config=config) as client:
        await client.list_buckets()
    assert seen == ["GET"]


# -- azure-core ------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_azure_transport_passes_request_data_through_the_hook() -> None:
    from azure.core.rest import HttpRequest

    received: list[int] = []

    async def handler(request: web.Request) -> web.Response:
        received.append(len(await request.read()))
        return web.Response(status=201)

    wrapped: list[int] = []

    def wrap_data(data: Any) -> Any:
        if isinstance(data, bytes):
            wrapped.append(len(data))
            # What aiohttp sends instead: raw bytes this large would make it warn (an error here).
            return io.BytesIO(data)
        return data

    body = b"\x01" * (2 * MiB)
    async with _loopback(handler) as url, aiohttp.ClientSession() as session:
        transport = azure_transport(session, wrap_data, connection_timeout=10, read_timeout=10)
        response = await transport.send(HttpRequest("PUT", f"{url}/c/b", content=body))
        assert response.status_code == 201
    assert wrapped == [2 * MiB] and received == [2 * MiB]


# -- gcloud-aio ------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_gcloud_token_value_and_refresh_cancel(tmp_path: Path) -> None:
    from gcloud.aio.auth import Token

    asked = asyncio.Event()
    release = asyncio.Event()
    answers = iter(["tok-1", "tok-2"])

    async def handler(request: web.Request) -> web.Response:
        form = await request.post()
        assert form["grant_type"] == "refresh_token"
        token = next(answers)
        if token == "tok-2":
            asked.set()
            await release.wait()  # held until the test lets go (or the client goes away)
        return web.json_response({"access_token": token, "expires_in": 3600})

    async with _loopback(handler) as url, aiohttp.ClientSession() as session:
        user = tmp_path / "user.json"
        user.write_text(
            json.dumps(
                {
                    "type": "authorized_user",
                    "client_id": "cid",
                    "client_secret": "csecret",
                    "refresh_token": "rt",
                    "token_uri": f"{url}/token",
                }
            )
        )
        token = Token(service_file=str(user), session=session)
        assert gcloud_access_token(token) is None
        assert await token.get() == "tok-1"
        assert gcloud_access_token(token) == "tok-1"

        second = Token(service_file=str(user), session=session)
        waiter = asyncio.create_task(second.get())
        await asyncio.wait_for(asked.wait(), timeout=30)
        cancel_token_refresh(second)
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(waiter, timeout=30)
        assert gcloud_access_token(second) is None
        release.set()


def test_gcloud_helpers_leave_other_tokens_alone() -> None:
    class Static:
        async def get(self) -> str:
            return "s"

    assert gcloud_access_token(Static()) is None
    cancel_token_refresh(Static())  # no error, nothing to cancel


def test_library_changed_names_an_uninstalled_library() -> None:
    exc = LibraryChanged("no-such-dist-xyz", "Thing._field")
    assert re.match(r"no-such-dist-xyz \(not installed\) changed: Thing\._field", str(exc))
