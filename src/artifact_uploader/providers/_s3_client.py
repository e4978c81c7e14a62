"""The aiobotocore client under the S3 provider: how it is built and what it is told.

One attempt per call (the engine retries), no parameter validation, a fixed User-Agent, no
redirect ever followed, and payload signing switched off only where our CRC32C protects the body
(see the provider's module docstring).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import Any, Final, NamedTuple, Protocol
from urllib.parse import urlsplit

import aiobotocore
import aiobotocore.session
import aiohttp
import botocore
import botocore.exceptions
from aiobotocore.config import AioConfig

from .._errors import ConfigError, ProviderError
from ._kit import check_plain_http, is_loopback_host
from ._redact import Redactor, install_log_filter
from ._s3_direct import DirectS3
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
    checksum: str | None
    allow_http: bool
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


class Connection(NamedTuple):
    """An open client (see :func:`connect`).

    Attributes:
        stack: Closing it closes the client, the direct path and the log filter.
        client: The aiobotocore S3 client.
        direct: The direct PutObject / UploadPart path, where it is equivalent (else None).
        endpoint: The endpoint the client resolved (argument, environment or config file).
    """

    stack: AsyncExitStack
    client: Any
    direct: DirectS3 | None
    endpoint: str


def unsigned_payload_ok(checksum: str | None, endpoint: str) -> bool:
    """Whether bodies to ``endpoint`` may go out with UNSIGNED-PAYLOAD: with our CRC32C, and
    over TLS or to a loopback host (on plain HTTP anyone on the path could rewrite body and CRC
    together). Decided on the endpoint the client resolved, however it was configured."""
    if not checksum:
        return False
    parts = urlsplit(endpoint)
    return parts.scheme == "https" or is_loopback_host(parts.hostname)


async def connect(
    options: ClientOptions, credentials: Credentials | None, redactor: Redactor
) -> Connection:
    """Create the client (and the direct path where it is equivalent) on the running loop.

    The default chain's credentials join ``redactor``'s secrets and the SDK loggers get its
    filter while the connection is open.

    Raises:
        ConfigError: The resolved endpoint is plain HTTP to a remote host without
            ``allow_http``.
        ProviderError: botocore could not create the client.
        LibraryChanged: botocore no longer keeps the chain's credentials where they are read.
    """
    session = aiobotocore.session.AioSession()
    # First guess from the arguments; botocore may resolve another endpoint (from
    # AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL or the config file): then the client is made
    # again with the signing and addressing that endpoint needs.
    guess = options.endpoint_url or ("https" if options.use_ssl else "http") + "://s3.amazonaws.com"
    custom = options.endpoint_url is not None
    unsigned = unsigned_payload_ok(options.checksum, guess)
    stack, client = await create_client(
        session, options, credentials, redactor, unsigned=unsigned, path_style=custom
    )
    resolved = str(getattr(client.meta, "endpoint_url", None) or guess)
    try:
        check_plain_http(resolved, label="S3", allow_http=options.allow_http)
    except ConfigError:
        await stack.aclose()
        raise
    if unsigned_payload_ok(options.checksum, resolved) != unsigned or (
        not custom and not is_aws_endpoint(resolved)
    ):
        await stack.aclose()
        stack, client = await create_client(
            session,
            options,
            credentials,
            redactor,
            unsigned=unsigned_payload_ok(options.checksum, resolved),
            path_style=custom or not is_aws_endpoint(resolved),
        )
    direct: DirectS3 | None = None
    try:
        if credentials is None:
            source = chain_secrets(client)
            if source is not None:
                redactor.add_source(source)
        stack.callback(install_log_filter(redactor, SDK_LOGGERS))
        if unsigned_payload_ok(options.checksum, resolved):
            # Only with our own CRC32C, over TLS or loopback: the fast path sends
            # UNSIGNED-PAYLOAD like botocore does here, and leaves payload signing to botocore.
            direct = await DirectS3.create(
                client,
                options.bucket,
                verify=options.verify,
                connect_timeout=options.connect_timeout,
                read_timeout=options.read_timeout,
                max_pool_connections=options.max_pool_connections,
                user_agent=USER_AGENT,
            )
    except BaseException:
        await stack.aclose()
        raise
    if direct is not None:
        stack.push_async_callback(direct.aclose)
        if not unsigned_payload_ok(options.checksum, direct.endpoint):
            direct = None
    return Connection(stack, client, direct, resolved)
