"""The aiobotocore client under the S3 provider: how it is built and what it is told.

One attempt per call (the engine retries), no parameter validation, a fixed User-Agent, no
redirect ever followed, and payload signing switched off only where our CRC32C protects the body
(see the provider's module docstring).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import Any, Final, Protocol
from urllib.parse import urlsplit

import aiobotocore
import aiohttp
import botocore
import botocore.exceptions
from aiobotocore.config import AioConfig

from .._errors import ProviderError
from ._redact import Redactor
from ._vendor import client_credentials, credential_values, session_class

USER_AGENT: Final = (
    f"artifact-uploader aiobotocore/{aiobotocore.__version__} botocore/{botocore.__version__}"
)
# The SDK stack under this provider, whose loggers get the redacting filter while it is open.
SDK_LOGGERS: Final = ("botocore", "aiobotocore", "aiohttp", "urllib3")


class Credentials:
    """Explicit credentials, kept out of every repr and message."""

    __slots__ = ("key", "secret", "token")

    def __init__(self, key: str, secret: str, token: str | None) -> None:
        self.key = key
        self.secret = secret
        self.token = token

    def __repr__(self) -> str:
        return "_Credentials(<redacted>)"


class ClientOptions(Protocol):
    """The provider settings a client is built from (the provider's public attributes)."""

    bucket: str
    region: str | None
    endpoint_url: str | None
    use_ssl: bool
    verify: bool | str | None
    max_pool_connections: int
    connect_timeout: float
    read_timeout: float
    checksum_mode: str


def chain_secrets(client: Any) -> Callable[[], list[object]] | None:
    """A source of the credentials botocore found in its default chain (environment, profile,
    instance role, STS...), read at every scrub so refreshed values are covered too.

    Raises:
        LibraryChanged: botocore no longer keeps them where :mod:`._vendor` reads them (checked
            here, at open, rather than inside a log filter).
    """
    found = client_credentials(client)
    if found is None:
        return None
    credential_values(found)

    def current() -> list[object]:
        # Without refreshing: the public properties of refreshable credentials would refresh
        # (or warn) from inside a log filter.
        values = credential_values(found)
        return [values.access_key, values.secret_key, values.token]

    return current


class _NoRedirects:
    """An aiohttp ClientSession whose requests never follow redirects: a 3xx answer reaches
    botocore (and the provider) as the error it is."""

    __slots__ = ("_session",)

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self._session = session

    def request(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["allow_redirects"] = False
        return self._session.request(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)


def is_aws_endpoint(endpoint: str) -> bool:
    """Whether ``endpoint`` is Amazon S3 itself (which verifies the checksums we send)."""
    host = (urlsplit(endpoint).hostname or "").lower()
    return urlsplit(endpoint).scheme == "https" and (
        host.endswith((".amazonaws.com", ".amazonaws.com.cn"))
    )


async def create_client(
    session: Any,
    options: ClientOptions,
    credentials: Credentials | None,
    redactor: Redactor,
    *,
    unsigned: bool,
    path_style: bool,
) -> tuple[AsyncExitStack, Any]:
    """An S3 client from ``session``, entered on a new exit stack (closing it closes the client).

    Args:
        session: The aiobotocore session.
        options: The provider's settings.
        credentials: Explicit credentials, or None for botocore's default chain.
        redactor: Scrubs a failure's message and chain.
        unsigned: Send bodies with UNSIGNED-PAYLOAD (our CRC32C protects them).
        path_style: Address buckets in the path (custom endpoints), not the host name.

    Raises:
        ProviderError: botocore could not create the client (configuration, region...).
    """
    config = AioConfig(
        region_name=options.region,
        max_pool_connections=options.max_pool_connections,
        connect_timeout=options.connect_timeout,
        read_timeout=options.read_timeout,
        # The engine retries transient errors itself: one attempt per call. (botocore's
        # "max_attempts" counts retries only, so 1 would still mean two attempts.)
        retries={"total_max_attempts": 1, "mode": "standard"},
        # Parameters come from this package, not from users; validating them costs CPU per call.
        parameter_validation=False,
        tcp_keepalive=True,
        # A fixed User-Agent: botocore otherwise rebuilds its feature-tagged one on every
        # request, which costs about a fifth of the client CPU of a small PutObject.
        user_agent=USER_AGENT,
        request_checksum_calculation=options.checksum_mode,
        response_checksum_validation=options.checksum_mode,
        # aiohttp follows redirects by default; no redirect is ever followed (a body and a
        # session token would go wherever the Location points).
        http_session_cls=session_class(_NoRedirects),
        s3={
            # Custom endpoints (MinIO, moto, Ceph...) rarely have wildcard DNS for buckets.
            "addressing_style": "path" if path_style else "auto",
            # Our CRC32C header already protects the body against corruption: skip the
            # SHA-256 of every payload. Not against tampering, though: without TLS (to a
            # non-loopback host) or without our checksum, leave botocore's default, which
            # signs payloads over plain HTTP.
            **({"payload_signing_enabled": False} if unsigned else {}),
        },
    )
    creds = credentials
    stack = AsyncExitStack()
    try:
        client = await stack.enter_async_context(
            session.create_client(
                "s3",
                region_name=options.region,
                endpoint_url=options.endpoint_url,
                use_ssl=options.use_ssl,
                verify=options.verify,
                aws_access_key_id=creds.key if creds else None,
                aws_secret_access_key=creds.secret if creds else None,
                aws_session_token=creds.token if creds else None,
                config=config,
            )
        )
    except botocore.exceptions.BotoCoreError as exc:
        await stack.aclose()
        redactor.scrub_exception(exc)
        raise ProviderError(
            redactor.scrub(f"cannot create the S3 client for bucket {options.bucket!r}: {exc}")
        ) from exc
    return stack, client
