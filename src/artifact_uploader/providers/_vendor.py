"""The one module that reads other libraries' internals.

Every private attribute of botocore, aiobotocore, azure-core and gcloud-aio the providers need
is read here and nowhere else, each behind a small function with a test in
``tests/providers/test_vendor.py``. When a library release changes one of these shapes, the
function raises :class:`LibraryChanged` naming the library, its version and what moved, and the
test fails; nothing here quietly falls back to a default. Callers that can do without the
internal (the S3 direct path is an optimisation) catch :class:`LibraryChanged`, log it and take
the public path.

The third-party packages are imported inside the functions: each provider's SDK is an optional
extra, and importing this module must not need any of them.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import inspect
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp

# What an internal's absence or new shape raises when it is read.
_SHAPE_ERRORS = (AttributeError, TypeError, KeyError, ValueError)


class LibraryChanged(RuntimeError):
    """A library no longer has the internal shape this module reads.

    Attributes:
        library: The distribution name (``botocore``, ``azure-core``...).
        version: Its installed version.
        what: The internal that was read.
    """

    def __init__(self, library: str, what: str) -> None:
        try:
            version = importlib.metadata.version(library)
        except importlib.metadata.PackageNotFoundError:
            version = "(not installed)"
        self.library = library
        self.version = version
        self.what = what
        super().__init__(
            f"{library} {version} changed: {what} is not as artifact_uploader expects "
            "(providers/_vendor.py reads it; see tests/providers/test_vendor.py)"
        )


@contextmanager
def _reading(
    library: str, what: str, *, passing: tuple[type[BaseException], ...] = ()
) -> Iterator[None]:
    """Turn a failed read of ``what`` into :class:`LibraryChanged` (the cause is kept).

    Exceptions of the ``passing`` types are the library's own answers, raised unchanged.
    """
    try:
        yield
    except passing:
        raise
    except _SHAPE_ERRORS as exc:
        raise LibraryChanged(library, what) from exc


# -- botocore / aiobotocore ------------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class CredentialValues:
    """The key, secret and session token a botocore credentials object holds right now."""

    access_key: str | None
    secret_key: str | None
    token: str | None

    def __repr__(self) -> str:
        return "CredentialValues(<redacted>)"


@dataclass(frozen=True)
class ResolvedEndpoint:
    """What botocore's endpoint ruleset resolves for one operation.

    Attributes:
        url: The request URL's origin and path prefix (path-style: includes the bucket).
        headers: Headers the ruleset asks every request to carry.
        auth_type: The operation's resolved auth type (``v4``, ``s3v4``, ``v4a``, ``none``...).
        signing: The signing context (``region``, ``signing_name``...), as botocore fills it.
    """

    url: str
    headers: Mapping[str, str]
    auth_type: str | None
    signing: Mapping[str, Any]


@dataclass(frozen=True)
class HttpSettings:
    """The transport settings botocore resolved for a client.

    Attributes:
        proxy: The proxy URL botocore would use for the endpoint (its config, else
            ``HTTP(S)_PROXY`` / ``NO_PROXY``), or None.
        verify: The TLS trust: False, True (the default bundle) or a CA bundle path, as resolved
            from the given value, ``AWS_CA_BUNDLE``, the profile's ``ca_bundle``...
        client_cert: The client certificate file, or None.
    """

    proxy: str | None
    verify: object
    client_cert: object


def client_credentials(client: Any) -> Any | None:
    """The credentials object a botocore client signs with (None: an anonymous client).

    The same object the client found in its provider chain (environment, profile, instance role,
    STS...), so refreshable credentials are seen as they refresh.

    Raises:
        LibraryChanged: botocore's client no longer keeps them where this reads them.
    """
    with _reading("botocore", "BaseClient._request_signer._credentials"):
        credentials = client._request_signer._credentials
        if credentials is not None and not callable(credentials.get_frozen_credentials):
            raise TypeError("get_frozen_credentials is not callable")
    return credentials


def credential_values(credentials: Any) -> CredentialValues:
    """What ``credentials`` hold now, without refreshing them.

    The public properties of refreshable credentials refresh (or warn) when they are near
    expiry; from inside a log filter that must not happen, so their private fields are read.

    Raises:
        LibraryChanged: The credentials classes changed shape.
    """
    from botocore.credentials import Credentials, RefreshableCredentials

    if isinstance(credentials, RefreshableCredentials):
        with _reading("botocore", "RefreshableCredentials._access_key/_secret_key/_token"):
            fields = vars(credentials)
            return CredentialValues(fields["_access_key"], fields["_secret_key"], fields["_token"])
    if isinstance(credentials, Credentials):
        return CredentialValues(credentials.access_key, credentials.secret_key, credentials.token)
    raise LibraryChanged("botocore", f"credentials of type {type(credentials).__name__}")


async def resolve_endpoint(
    client: Any, operation: str, params: Mapping[str, Any]
) -> ResolvedEndpoint:
    """Evaluate the client's endpoint ruleset for ``operation`` with ``params``.

    Exactly what the client would do before sending the call (with its region, config and the
    operation's auth settings), without sending it.

    Raises:
        LibraryChanged: aiobotocore's ruleset hook changed shape.
        botocore.exceptions.BotoCoreError: The ruleset refused the parameters or configuration
            (as the call itself would).
    """
    from botocore.exceptions import BotoCoreError

    model = client.meta.service_model.operation_model(operation)
    context: dict[str, Any] = {
        "client_region": client.meta.region_name,
        "client_config": client.meta.config,
        "has_streaming_input": model.has_streaming_input,
        "auth_type": model.resolved_auth_type,
        "unsigned_payload": model.unsigned_payload,
        "auth_options": client.meta.service_model.metadata.get("auth"),
    }
    # Some botocore errors are ValueErrors too (InvalidRegionError): they are answers, not shapes.
    with _reading(
        "aiobotocore", "AioBaseClient._resolve_endpoint_ruleset", passing=(BotoCoreError,)
    ):
        url, headers, _ = await client._resolve_endpoint_ruleset(model, dict(params), context)
        if not isinstance(url, str) or not isinstance(headers, Mapping):
            raise TypeError(f"resolved to {type(url).__name__}, {type(headers).__name__}")
    return ResolvedEndpoint(
        url=url,
        headers=dict(headers),
        auth_type=context.get("auth_type"),
        signing=dict(context.get("signing") or {}),
    )


def http_settings(client: Any, url: str) -> HttpSettings:
    """The proxy, TLS trust and client certificate the client's HTTP session uses for ``url``.

    Raises:
        LibraryChanged: aiobotocore's HTTP session changed shape.
    """
    with _reading(
        "aiobotocore", "client._endpoint.http_session (_proxy_config, _verify, _cert_file)"
    ):
        session = client._endpoint.http_session
        fields = vars(session)
        proxy = fields["_proxy_config"].proxy_url_for(url)
        return HttpSettings(proxy=proxy, verify=fields["_verify"], client_cert=fields["_cert_file"])


def session_class(wrap: Callable[[aiohttp.ClientSession], Any]) -> type[Any]:
    """aiobotocore's HTTP session class whose aiohttp sessions go through ``wrap`` when made.

    Give the result as ``AioConfig(http_session_cls=...)``; ``wrap`` gets each
    ``aiohttp.ClientSession`` aiobotocore creates and returns what aiobotocore then uses (for
    example a wrapper whose ``request`` never follows redirects).

    Raises:
        LibraryChanged: aiobotocore's session no longer creates its aiohttp sessions in
            ``AIOHTTPSession._get_session``.
    """
    from aiobotocore.httpsession import AIOHTTPSession

    with _reading("aiobotocore", "AIOHTTPSession._get_session"):
        base_get = AIOHTTPSession._get_session
        if not inspect.iscoroutinefunction(base_get):
            raise TypeError("_get_session is not a coroutine function")

    class WrappedSession(AIOHTTPSession):  # type: ignore[misc]
        async def _get_session(self, proxy_url: Any) -> Any:
            return wrap(await super()._get_session(proxy_url))

    return WrappedSession


# -- azure-core ------------------------------------------------------------------------------


def azure_transport(
    session: aiohttp.ClientSession, wrap_data: Callable[[Any], Any], **timeouts: Any
) -> Any:
    """azure-core's ``AioHttpTransport`` on ``session`` whose request bodies pass ``wrap_data``.

    ``wrap_data`` gets what the transport would hand aiohttp as the request data (bytes, a
    stream, a form...) and returns what aiohttp sends instead. ``timeouts`` are the transport's
    keyword arguments (``connection_timeout``, ``read_timeout``).

    Raises:
        LibraryChanged: The transport no longer prepares request data in ``_get_request_data``.
    """
    from azure.core.pipeline.transport import AioHttpTransport

    with _reading("azure-core", "AioHttpTransport._get_request_data"):
        if not callable(AioHttpTransport._get_request_data):
            raise TypeError("_get_request_data is not callable")

    class Transport(AioHttpTransport):  # type: ignore[misc]
        def _get_request_data(self, request: Any) -> Any:
            return wrap_data(super()._get_request_data(request))

    return Transport(session=session, **timeouts)


# -- gcloud-aio ------------------------------------------------------------------------------


def _gcloud_token_class() -> type[Any]:
    from gcloud.aio.auth.token import BaseToken

    return BaseToken


def gcloud_access_token(token: object) -> str | None:
    """The access token a gcloud-aio token holds now (None: none yet, or not a gcloud token).

    Raises:
        LibraryChanged: gcloud-aio's token no longer keeps it in ``access_token``.
    """
    if not isinstance(token, _gcloud_token_class()):
        return None
    with _reading("gcloud-aio-auth", "BaseToken.access_token"):
        value = vars(token)["access_token"]
        if value is not None and not isinstance(value, str):
            raise TypeError(f"access_token is a {type(value).__name__}")
    return value


def cancel_token_refresh(token: object) -> None:
    """Cancel a background refresh a gcloud-aio token started, so it does not outlive its session.

    Anything that is not a gcloud-aio token is left alone.

    Raises:
        LibraryChanged: gcloud-aio's token no longer keeps the refresh task in ``acquiring``.
    """
    if not isinstance(token, _gcloud_token_class()):
        return
    with _reading("gcloud-aio-auth", "BaseToken.acquiring"):
        task = vars(token)["acquiring"]
        if task is not None and not isinstance(task, asyncio.Future):
            raise TypeError(f"acquiring is a {type(task).__name__}")
    if task is not None and not task.done():
        task.cancel()
