"""Amazon S3 and S3-compatible stores (``s3://bucket/prefix``) through aiobotocore.

One method call is one S3 request: ``put`` is a PutObject, the multipart methods are
CreateMultipartUpload / UploadPart / CompleteMultipartUpload / AbortMultipartUpload. The engine
retries, so the client is built with a single attempt and without parameter validation.

Integrity: with ``checksum="crc32c"`` (the default) the provider computes CRC32C itself (awscrt,
native code) and sends it as the ``x-amz-checksum-crc32c`` header, so the server verifies the body
and botocore neither hashes the body again nor switches to aws-chunked trailer encoding. Because a
checksum protects the body, SigV4 payload hashing (SHA-256 over the whole body) is switched off
over TLS and to loopback hosts; with ``checksum=None``, or over plain HTTP to any other host (where
a man in the middle could rewrite body and checksum together), the default payload signing stays
on and the direct request path (``_s3_direct``) is not used.

Stall watchdog: the direct path reports progress after every slice (1 MiB at most) the socket
takes, so a slow body that keeps moving is never cut off. botocore's path (used behind proxies,
with SigV4a, without our checksum or over plain HTTP to a remote host) reports it only once the
body is read, so there a body that takes longer than ``RetryPolicy.stall_timeout`` to send is
aborted and retried: keep ``stall_timeout`` above part size / slowest expected upload rate.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import logging
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from typing import Any, Final
from urllib.parse import urlsplit

import aiobotocore
import aiobotocore.session
import aiohttp
import botocore
import botocore.exceptions
import botocore.httpchecksum
from aiobotocore.config import AioConfig

from .._errors import (
    ConfigError,
    IntegrityError,
    InvalidObjectNameError,
    MissingDependencyError,
    ObjectExistsError,
    PermissionDeniedError,
    ProviderError,
    StoreNotFoundError,
)
from .._retry import note_progress, self_timed
from .._types import FileSlice, PartResult, PutResult
from ._protocol import (
    MiB,
    PartLimits,
    check_common_name,
    join_key,
    parse_retry_after,
    split_store_uri,
)
from ._redact import Redactor, install_log_filter
from ._s3_direct import DirectS3, read_body

log = logging.getLogger("artifact_uploader")

_S3_LIMITS: Final = PartLimits(
    min_part_size=5 * MiB, max_part_size=5 * 1024 * MiB, max_parts=10_000
)
_MAX_KEY_BYTES: Final = 1024
_MAX_PUT_BYTES: Final = 5 * 1024 * MiB

_THROTTLE_CODES: Final = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestThrottledException",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "ProvisionedThroughputExceededException",
        "BandwidthLimitExceeded",
        "RequestTimeout",
        "RequestTimeoutException",
        "ServiceUnavailable",
        "InternalError",
        "PriorRequestNotComplete",
        # A concurrent conditional write on the same key: S3 asks the caller to retry.
        "ConditionalRequestConflict",
        "OperationAborted",
    }
)
_DENIED_CODES: Final = frozenset(
    {
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "InvalidToken",
        "ExpiredToken",
        "TokenRefreshRequired",
        "AllAccessDisabled",
        "AccountProblem",
        "InvalidClientTokenId",
        "UnrecognizedClientException",
    }
)
# The store received a body that does not match the checksum we sent: corrupted in transit, so a
# new attempt (which re-reads the staged file) may succeed.
_DIGEST_CODES: Final = frozenset({"BadDigest", "InvalidDigest", "XAmzContentSHA256Mismatch"})

# Connection-level failures that a new attempt may get past.
_TRANSIENT_EXCEPTIONS: Final = (
    botocore.exceptions.ReadTimeoutError,
    botocore.exceptions.ConnectTimeoutError,
    botocore.exceptions.EndpointConnectionError,
    botocore.exceptions.ConnectionClosedError,
    botocore.exceptions.HTTPClientError,
    aiohttp.ClientConnectionError,
    aiohttp.ClientPayloadError,
    ConnectionError,
    TimeoutError,
)

_USER_AGENT: Final = (
    f"artifact-uploader aiobotocore/{aiobotocore.__version__} botocore/{botocore.__version__}"
)

_OPTION_ALIASES: Final = {
    "aws_access_key_id": "key",
    "aws_secret_access_key": "secret",
    "aws_session_token": "token",
    "session_token": "token",
    "region_name": "region",
}
_CHECKSUM_MODES: Final = ("when_supported", "when_required")


class _Credentials:
    """Explicit credentials, kept out of every repr and message."""

    __slots__ = ("key", "secret", "token")

    def __init__(self, key: str, secret: str, token: str | None) -> None:
        self.key = key
        self.secret = secret
        self.token = token

    def __repr__(self) -> str:
        return "_Credentials(<redacted>)"


# The SDK stack under this provider, whose loggers get the redacting filter while it is open.
_SDK_LOGGERS: Final = ("botocore", "aiobotocore", "aiohttp", "urllib3")


def _chain_secrets(client: Any) -> Callable[[], list[object]] | None:
    """A source of the credentials botocore found in its default chain (environment, profile,
    instance role, STS...), read at every scrub so refreshed values are covered too."""
    found = getattr(getattr(client, "_request_signer", None), "_credentials", None)
    if found is None:
        return None
    # Refreshable credentials keep their current values in private fields; the public
    # properties would trigger a refresh (or a warning) from inside a log filter.
    attrs = (
        ("_access_key", "_secret_key", "_token")
        if "Refresh" in type(found).__name__
        else ("access_key", "secret_key", "token")
    )

    def current() -> list[object]:
        return [getattr(found, a, None) for a in attrs]

    return current


def _crc32c_b64(data: bytes | memoryview) -> str:
    # botocore's wrapper over awscrt's native CRC32C (the botocore[crt] extra).
    crc = botocore.httpchecksum.CrtCrc32cChecksum()
    crc.update(data)
    return base64.b64encode(crc.digest()).decode("ascii")


def _composite_crc32c(part_checksums: Sequence[str]) -> str:
    """S3's COMPOSITE checksum of a multipart upload: CRC32C of the parts' raw CRC32Cs, ``-N``."""
    raw = b"".join(base64.b64decode(c) for c in part_checksums)
    return f"{_crc32c_b64(raw)}-{len(part_checksums)}"


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _strip_etag(etag: object) -> str | None:
    return etag.strip('"') if isinstance(etag, str) else None


class S3Provider:
    """Writes objects to an S3 bucket (AWS or any S3-compatible server) with aiobotocore.

    Args:
        bucket: Bucket name.
        prefix: Key prefix every object name is placed under ("" for the bucket root).
        region: AWS region; default from botocore's configuration chain.
        endpoint_url: Custom endpoint (``http(s)://host:port``) for S3-compatible servers.
        key: Access key id. With ``secret`` (and optionally ``token``) it replaces botocore's
            default credential chain (environment, profile, instance metadata...).
        secret: Secret access key.
        token: Session token for temporary credentials.
        checksum: ``"crc32c"`` (default): compute CRC32C per request, have the store verify it and
            check the value it reports. ``None``: no checksum of our own.
        checksum_mode: ``"when_supported"`` (default) lets botocore add its default checksum
            where an operation supports one; ``"when_required"`` only where the operation
            requires it, for S3-compatible servers that reject the SDK's default checksum headers.
        verify: TLS certificate verification: None (default) verifies with the CA bundle
            botocore's configuration names (``AWS_CA_BUNDLE``, the profile's ``ca_bundle``),
            else its default bundle; True the same; a CA bundle path; or False, which is only
            accepted for loopback endpoints.
        max_pool_connections: Connection pool size. Large by default so that the engine's
            concurrency limit, not the pool, bounds the requests in flight.
        connect_timeout: Seconds to wait for a connection.
        read_timeout: Seconds to wait for data on an open connection.
        use_ssl: Use HTTPS when no ``endpoint_url`` is given (the seed's ``secure``).
    """

    scheme = "s3"

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        region: str | None = None,
        endpoint_url: str | None = None,
        key: str | None = None,
        secret: str | None = None,
        token: str | None = None,
        checksum: str | None = "crc32c",
        checksum_mode: str = "when_supported",
        verify: bool | str | None = None,
        max_pool_connections: int = 64,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
        use_ssl: bool = True,
    ) -> None:
        _check_bucket(bucket)
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.region = region
        self.endpoint_url = endpoint_url.rstrip("/") if endpoint_url else None
        if self.endpoint_url is not None:
            parts = urlsplit(self.endpoint_url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ConfigError(
                    f"endpoint_url must look like http(s)://host[:port], got {self.endpoint_url!r}"
                )
        if (key is None) != (secret is None):
            raise ConfigError("S3 credentials need both 'key' and 'secret' (or neither)")
        if token is not None and key is None:
            raise ConfigError("S3 option 'token' needs 'key' and 'secret' as well")
        self._credentials = (
            None if key is None or secret is None else _Credentials(key, secret, token)
        )
        # Explicit, environment and (added at open) the default chain's live credentials.
        self._redactor = Redactor((key, secret, token))
        if checksum is not None:
            checksum = checksum.lower()
            if checksum != "crc32c":
                raise ConfigError(f"S3 option checksum must be 'crc32c' or None, got {checksum!r}")
            if not botocore.httpchecksum.HAS_CRT:
                raise MissingDependencyError("s3", "s3", "CRC32C checksums need botocore[crt]")
        self.checksum = checksum
        if checksum_mode not in _CHECKSUM_MODES:
            raise ConfigError(
                f"S3 option checksum_mode must be one of {_CHECKSUM_MODES}, got {checksum_mode!r}"
            )
        self.checksum_mode = checksum_mode
        if verify is False:
            host = urlsplit(self.endpoint_url).hostname if self.endpoint_url else None
            if not _is_loopback(host):
                raise ConfigError(
                    "S3 option verify=False (no TLS certificate check) is only allowed for "
                    f"loopback endpoints, not {self.endpoint_url or 'AWS'!r}"
                )
        self.verify = verify
        if max_pool_connections < 1:
            raise ConfigError(f"max_pool_connections must be >= 1, got {max_pool_connections}")
        self.max_pool_connections = max_pool_connections
        if connect_timeout <= 0 or read_timeout <= 0:
            raise ConfigError("S3 connect_timeout and read_timeout must be positive")
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.use_ssl = use_ssl
        self._client: Any = None
        self._stack: AsyncExitStack | None = None
        # PutObject / UploadPart without botocore's per-request machinery, when equivalent.
        self._direct: DirectS3 | None = None
        # Requests whose outcome is unknown: sent, then no answer (reset, timeout, stall
        # cancel) or a transient error. If the engine's retry of one meets "already exists"
        # (or, for Complete, "no such upload"), the first send may have landed: see _landed.
        self._in_doubt: set[tuple[object, ...]] = set()

    def __repr__(self) -> str:
        # Bucket, prefix and endpoint only: never credentials.
        return (
            f"S3Provider(bucket={self.bucket!r}, prefix={self.prefix!r}, "
            f"endpoint_url={self.endpoint_url!r})"
        )

    # -- construction from URIs and the seed's provider_kwargs -----------------------------

    @classmethod
    def from_uri(cls, uri: str, options: dict[str, object] | None = None) -> S3Provider:
        """Build from ``s3://bucket[/prefix]`` and options.

        Options: ``region``, ``endpoint_url``, ``key`` / ``secret`` / ``token``, ``checksum``,
        ``checksum_mode``, ``verify``, ``max_pool_connections``, ``connect_timeout``,
        ``read_timeout``; botocore's names ``aws_access_key_id``, ``aws_secret_access_key``,
        ``aws_session_token``, ``region_name``; and the seed's ``host``, ``port``, ``secure``
        (which make ``endpoint_url``) and ``api_version`` (ignored: S3 has one API version).

        Raises:
            ConfigError: A malformed URI, an unknown option or a bad option value.
        """
        parts = split_store_uri(uri, "s3", "S3")
        bucket = parts.netloc
        opts: dict[str, object] = {}
        for name, value in (options or {}).items():
            canonical = _OPTION_ALIASES.get(name, name)
            if canonical in opts:
                raise ConfigError(f"S3 option {canonical!r} given twice (as {name!r})")
            opts[canonical] = value

        kwargs: dict[str, Any] = {}
        for name in ("key", "secret", "token", "region"):
            value = opts.pop(name, None)
            if value is not None:
                # The value itself is never echoed: it may be a secret.
                if not isinstance(value, str) or not value:
                    raise ConfigError(f"S3 option {name!r} must be a non-empty str")
                kwargs[name] = value

        # The seed's host / port / secure describe the endpoint piecewise.
        # api_version selects a libcloud driver's API version; S3 has a single one (2006-03-01),
        # so it is accepted for compatibility and ignored.
        opts.pop("api_version", None)
        endpoint = opts.pop("endpoint_url", None)
        host = opts.pop("host", None)
        port = opts.pop("port", None)
        secure = opts.pop("secure", None)
        if secure is not None and not isinstance(secure, bool):
            raise ConfigError(f"S3 option 'secure' must be a bool, got {secure!r}")
        if endpoint is not None:
            if host is not None or port is not None:
                raise ConfigError("give either S3 option 'endpoint_url' or 'host'/'port', not both")
            if not isinstance(endpoint, str):
                raise ConfigError(f"S3 option 'endpoint_url' must be a str, got {endpoint!r}")
            kwargs["endpoint_url"] = endpoint
        elif host is not None:
            if not isinstance(host, str) or not host:
                raise ConfigError(f"S3 option 'host' must be a non-empty str, got {host!r}")
            if port is not None and (
                isinstance(port, bool) or not isinstance(port, int | str) or not str(port).isdigit()
            ):
                raise ConfigError(f"S3 option 'port' must be an int, got {port!r}")
            if "://" in host:
                base = host.rstrip("/")
            else:
                scheme = "https" if secure is None or secure else "http"
                bracketed = f"[{host}]" if ":" in host and not host.startswith("[") else host
                base = f"{scheme}://{bracketed}"
            kwargs["endpoint_url"] = base if port is None else f"{base}:{int(port)}"
        elif port is not None:
            raise ConfigError("S3 option 'port' needs 'host' as well")
        elif secure is not None:
            kwargs["use_ssl"] = secure

        if "checksum" in opts:
            value = opts.pop("checksum")
            if value is not None and not isinstance(value, str):
                raise ConfigError(f"S3 option 'checksum' must be 'crc32c' or None, got {value!r}")
            kwargs["checksum"] = value
        if "checksum_mode" in opts:
            value = opts.pop("checksum_mode")
            if not isinstance(value, str):
                raise ConfigError(f"S3 option 'checksum_mode' must be a str, got {value!r}")
            kwargs["checksum_mode"] = value
        if "verify" in opts:
            value = opts.pop("verify")
            if not isinstance(value, bool | str):
                raise ConfigError(
                    f"S3 option 'verify' must be a bool or a CA bundle path, got {value!r}"
                )
            kwargs["verify"] = value
        if "max_pool_connections" in opts:
            value = opts.pop("max_pool_connections")
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"S3 option 'max_pool_connections' must be an int, got {value!r}")
            kwargs["max_pool_connections"] = value
        for name in ("connect_timeout", "read_timeout"):
            if name in opts:
                value = opts.pop(name)
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise ConfigError(f"S3 option {name!r} must be a number, got {value!r}")
                kwargs[name] = float(value)
        if opts:
            raise ConfigError(
                f"unknown option(s) for the S3 store: {', '.join(sorted(opts))}; known: "
                "key, secret, token, region, endpoint_url, host, port, secure, api_version, "
                "checksum, checksum_mode, verify, max_pool_connections, connect_timeout, "
                "read_timeout"
            )
        return cls(bucket, parts.path, **kwargs)

    # -- names ------------------------------------------------------------------------------

    def key(self, name: str) -> str:
        """The S3 key of object ``name`` (the prefix joined with the name)."""
        return join_key(self.prefix, name)

    def uri(self, name: str) -> str:
        return f"s3://{self.bucket}/{self.key(name)}"

    def check_name(self, name: str) -> None:
        check_common_name(name)
        size = len(self.key(name).encode("utf-8"))
        if size > _MAX_KEY_BYTES:
            raise InvalidObjectNameError(
                name[:64] + "...",
                f"the S3 key (with prefix) is {size} bytes long, the limit is {_MAX_KEY_BYTES}",
            )

    @property
    def part_limits(self) -> PartLimits:
        return _S3_LIMITS

    # -- lifecycle --------------------------------------------------------------------------

    async def open(self, *, verify: bool = True) -> None:
        """Create the client on the running loop; with ``verify``, HeadBucket the bucket.

        Raises:
            StoreNotFoundError: The bucket does not exist.
            PermissionDeniedError: The credentials were refused.
            ProviderError: The endpoint could not be reached (transient).
        """
        if self._client is not None:
            return
        session = aiobotocore.session.AioSession()
        config = AioConfig(
            region_name=self.region,
            max_pool_connections=self.max_pool_connections,
            connect_timeout=self.connect_timeout,
            read_timeout=self.read_timeout,
            # The engine retries transient errors itself: one attempt per call. (botocore's
            # "max_attempts" counts retries only, so 1 would still mean two attempts.)
            retries={"total_max_attempts": 1, "mode": "standard"},
            # Parameters come from this module, not from users; validating them costs CPU per call.
            parameter_validation=False,
            tcp_keepalive=True,
            # A fixed User-Agent: botocore otherwise rebuilds its feature-tagged one on every
            # request, which costs about a fifth of the client CPU of a small PutObject.
            user_agent=_USER_AGENT,
            request_checksum_calculation=self.checksum_mode,
            response_checksum_validation=self.checksum_mode,
            s3={
                # Custom endpoints (MinIO, moto, Ceph...) rarely have wildcard DNS for buckets.
                "addressing_style": "path" if self.endpoint_url else "auto",
                # Our CRC32C header already protects the body against corruption: skip the
                # SHA-256 of every payload. Not against tampering, though: without TLS (to a
                # non-loopback host) or without our checksum, leave botocore's default, which
                # signs payloads over plain HTTP.
                **({"payload_signing_enabled": False} if self._unsigned_payload_ok() else {}),
            },
        )
        creds = self._credentials
        stack = AsyncExitStack()
        try:
            client = await stack.enter_async_context(
                session.create_client(
                    "s3",
                    region_name=self.region,
                    endpoint_url=self.endpoint_url,
                    use_ssl=self.use_ssl,
                    verify=self.verify,
                    aws_access_key_id=creds.key if creds else None,
                    aws_secret_access_key=creds.secret if creds else None,
                    aws_session_token=creds.token if creds else None,
                    config=config,
                )
            )
        except botocore.exceptions.BotoCoreError as exc:
            await stack.aclose()
            self._redactor.scrub_exception(exc)
            raise ProviderError(
                self._scrub(f"cannot create the S3 client for bucket {self.bucket!r}: {exc}")
            ) from exc
        if creds is None:
            source = _chain_secrets(client)
            if source is not None:
                self._redactor.add_source(source)
        stack.callback(install_log_filter(self._redactor, _SDK_LOGGERS))
        if self._unsigned_payload_ok():
            # Only with our own CRC32C, over TLS or loopback: the fast path sends
            # UNSIGNED-PAYLOAD like botocore does here, and leaves payload signing to botocore.
            try:
                direct = await DirectS3.create(
                    client,
                    self.bucket,
                    verify=self.verify,
                    connect_timeout=self.connect_timeout,
                    read_timeout=self.read_timeout,
                    max_pool_connections=self.max_pool_connections,
                    user_agent=_USER_AGENT,
                )
            except BaseException:
                await stack.aclose()
                raise
            if direct is not None:
                stack.push_async_callback(direct.aclose)
                self._direct = direct
        self._client = client
        self._stack = stack
        if not verify:
            return
        try:
            head = await client.head_bucket(Bucket=self.bucket)
        except BaseException as exc:
            # A provider that failed to open holds no client (the engine may never aclose it).
            await self.aclose()
            if isinstance(exc, Exception):
                raise self._map(exc, "HeadBucket", None) from exc
            raise
        headers = (head.get("ResponseMetadata") or {}).get("HTTPHeaders") or {}
        region = headers.get("x-amz-bucket-region")
        if self._direct is not None and region and region != self._direct.region:
            # The fast path signs for the region resolved at open; botocore follows the
            # bucket's real region (and remembers it), so every request goes to botocore.
            log.info(
                "S3 bucket %r is in region %r, not %r: not using the direct request path",
                self.bucket,
                region,
                self._direct.region,
            )
            self._direct = None

    async def aclose(self) -> None:
        stack, self._stack, self._client = self._stack, None, None
        self._direct = None
        self._in_doubt.clear()
        if stack is not None:
            await stack.aclose()

    def _unsigned_payload_ok(self) -> bool:
        """Whether bodies may go out with UNSIGNED-PAYLOAD: with our CRC32C, and over TLS or to a
        loopback host (on plain HTTP anyone on the path could rewrite body and CRC together)."""
        if not self.checksum:
            return False
        if self.endpoint_url is None:
            return self.use_ssl
        parts = urlsplit(self.endpoint_url)
        return parts.scheme == "https" or _is_loopback(parts.hostname)

    def _live_client(self) -> Any:
        if self._client is None:
            raise ProviderError(f"{self!r} is not open (call open() first, or it was closed)")
        return self._client

    # -- writes -----------------------------------------------------------------------------

    async def put(self, name: str, data: FileSlice, *, overwrite: bool) -> PutResult:
        """One PutObject; conditional on absence (``If-None-Match: *``) when not ``overwrite``.

        Raises:
            ObjectExistsError: ``overwrite`` is False and the object exists.
            IntegrityError: The store reports a different CRC32C than ours.
            ProviderError: Any other failure, ``transient`` set when a retry may help.
        """
        client = self._live_client()
        key = self.key(name)
        if data.length > _MAX_PUT_BYTES:
            raise ProviderError(
                f"{data.length} bytes is over S3's single PutObject limit of 5 GiB for "
                f"{self.uri(name)!r}; use multipart",
                name=name,
                uri=self.uri(name),
            )
        body = await (read_body(data) if self._direct is not None else data.read())
        note_progress()
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": key, "Body": body}
        ours = self._add_checksum(params, body)
        if not overwrite:
            params["IfNoneMatch"] = "*"
        token = ("put", key, str(data.path), data.offset, data.length)
        resent = token in self._in_doubt
        self._in_doubt.add(token)
        try:
            resp = await (self._direct or client).put_object(**params)
        except Exception as exc:
            error = self._map(exc, "PutObject", name, conditional=not overwrite)
            if (resent or _resent_by_transport(exc)) and isinstance(error, ObjectExistsError):
                # Our earlier send of this very request may have been stored with its answer
                # lost: then the object is ours, not a conflict.
                landed = await self._landed(
                    name, size=data.length, checksum=ours, etag=_md5_hex(body)
                )
                if landed is not None:
                    self._in_doubt.discard(token)
                    return landed
            if not error.transient:
                self._in_doubt.discard(token)
            raise error from exc
        self._in_doubt.discard(token)
        return PutResult(
            etag=_strip_etag(resp.get("ETag")),
            version=resp.get("VersionId"),
            **self._checked(name, "PutObject", ours, resp.get("ChecksumCRC32C")),
        )

    async def create_multipart(self, name: str, *, overwrite: bool) -> str:
        """CreateMultipartUpload (with CRC32C as the checksum algorithm when enabled).

        ``overwrite`` is honoured at :meth:`complete_multipart`, where S3 checks the condition.
        """
        client = self._live_client()
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": self.key(name)}
        if self.checksum:
            params["ChecksumAlgorithm"] = "CRC32C"
        try:
            resp = await client.create_multipart_upload(**params)
        except Exception as exc:
            raise self._map(exc, "CreateMultipartUpload", name) from exc
        upload_id = resp.get("UploadId")
        if not isinstance(upload_id, str) or not upload_id:
            raise ProviderError(
                f"S3 CreateMultipartUpload for {self.uri(name)!r} returned no UploadId",
                name=name,
                uri=self.uri(name),
                transient=True,
            )
        return upload_id

    async def put_part(
        self, name: str, upload_id: str, part_number: int, data: FileSlice
    ) -> PartResult:
        """One UploadPart; returns the part's ETag and (when enabled) the CRC32C S3 verified."""
        client = self._live_client()
        body = await (read_body(data) if self._direct is not None else data.read())
        note_progress()
        params: dict[str, Any] = {
            "Bucket": self.bucket,
            "Key": self.key(name),
            "UploadId": upload_id,
            "PartNumber": part_number,
            "Body": body,
        }
        ours = self._add_checksum(params, body)
        try:
            resp = await (self._direct or client).upload_part(**params)
        except Exception as exc:
            raise self._map(exc, f"UploadPart {part_number}", name) from exc
        etag = resp.get("ETag")
        if not isinstance(etag, str) or not etag:
            raise ProviderError(
                f"S3 UploadPart {part_number} of {self.uri(name)!r} returned no ETag",
                name=name,
                uri=self.uri(name),
                transient=True,
            )
        checked = self._checked(name, f"UploadPart {part_number}", ours, resp.get("ChecksumCRC32C"))
        # Complete needs every part's checksum once the upload declared CRC32C: fall back to ours
        # when the server does not echo it.
        return PartResult(part_number, etag, checked["checksum"] or ours)

    async def complete_multipart(
        self, name: str, upload_id: str, parts: Sequence[PartResult], *, overwrite: bool
    ) -> PutResult:
        """CompleteMultipartUpload, conditional on absence (If-None-Match) unless ``overwrite``.

        Raises:
            ObjectExistsError: ``overwrite`` is False and the object exists.
            IntegrityError: The store's composite CRC32C differs from the one of our parts.
        """
        client = self._live_client()
        ordered = sorted(parts, key=lambda p: p.part_number)
        listed: list[dict[str, Any]] = []
        for p in ordered:
            entry: dict[str, Any] = {"PartNumber": p.part_number, "ETag": p.etag}
            if self.checksum and p.checksum:
                entry["ChecksumCRC32C"] = p.checksum
            listed.append(entry)
        params: dict[str, Any] = {
            "Bucket": self.bucket,
            "Key": self.key(name),
            "UploadId": upload_id,
            "MultipartUpload": {"Parts": listed},
        }
        if not overwrite:
            params["IfNoneMatch"] = "*"
        ours = None
        if self.checksum and ordered and all(p.checksum for p in ordered):
            ours = _composite_crc32c([p.checksum for p in ordered if p.checksum])
        token = ("complete", upload_id)
        resent = token in self._in_doubt
        self._in_doubt.add(token)
        try:
            # aiohttp's read timeout (restarted by every byte) guards this small request, and S3
            # may trickle whitespace for minutes while it assembles a large upload.
            with self_timed():
                resp = await client.complete_multipart_upload(**params)
        except Exception as exc:
            error = self._map(exc, "CompleteMultipartUpload", name, conditional=not overwrite)
            gone = (
                isinstance(exc, botocore.exceptions.ClientError)
                and _error_code(exc) == "NoSuchUpload"
            )
            if resent and (gone or isinstance(error, ObjectExistsError)):
                # An earlier Complete of this upload may have succeeded with its answer lost:
                # the upload is then gone (or the object "exists") because it is the object.
                landed = await self._landed(
                    name, size=None, checksum=ours, etag=_multipart_etag(ordered)
                )
                if landed is not None:
                    self._in_doubt.discard(token)
                    return landed
            if not error.transient:
                self._in_doubt.discard(token)
            raise error from exc
        self._in_doubt.discard(token)
        theirs = resp.get("ChecksumCRC32C")
        if ours is not None and isinstance(theirs, str) and not theirs.endswith(f"-{len(ordered)}"):
            # A FULL_OBJECT checksum (no "-N"): not comparable with the composite of the parts,
            # whose checksums S3 already verified one by one.
            ours = None
        return PutResult(
            etag=_strip_etag(resp.get("ETag")),
            version=resp.get("VersionId"),
            **self._checked(name, "CompleteMultipartUpload", ours, theirs),
        )

    async def abort_multipart(self, name: str, upload_id: str) -> None:
        """AbortMultipartUpload; an upload that is already gone is not an error."""
        client = self._live_client()
        try:
            await client.abort_multipart_upload(
                Bucket=self.bucket, Key=self.key(name), UploadId=upload_id
            )
        except botocore.exceptions.ClientError as exc:
            if _error_code(exc) in ("NoSuchUpload", "404"):
                return
            raise self._map(exc, "AbortMultipartUpload", name) from exc
        except Exception as exc:
            raise self._map(exc, "AbortMultipartUpload", name) from exc

    # -- helpers ----------------------------------------------------------------------------

    async def _landed(
        self, name: str, *, size: int | None, checksum: str | None, etag: str | None
    ) -> PutResult | None:
        """The result of an earlier send whose answer was lost, if the stored object is it.

        HeadObject, then: the size (when known) must match, and our CRC32C (full-object, or the
        composite ``-N`` of a multipart upload) where the store reports one, else the MD5 ETag
        (of the body, or recomputed from the part ETags). None on any mismatch or doubt: the
        caller then reports the original error.
        """
        client = self._live_client()
        try:
            head = await client.head_object(
                Bucket=self.bucket, Key=self.key(name), ChecksumMode="ENABLED"
            )
        except Exception as exc:
            log.debug("could not check whether %r landed: %s", name, type(exc).__name__)
            return None
        if size is not None and head.get("ContentLength") != size:
            return None
        theirs = head.get("ChecksumCRC32C")
        stored_etag = _strip_etag(head.get("ETag"))
        verified = checksum is not None and theirs == checksum
        # Without a comparable checksum (checksum=None, or a full-object CRC32C for a multipart
        # upload) the ETag decides: the MD5 (of the parts' MD5s) unless SSE-KMS changed it.
        if not verified and (etag is None or stored_etag != etag):
            return None
        log.info("%s: an earlier attempt had stored it (its answer was lost)", self.uri(name))
        return PutResult(
            etag=stored_etag,
            version=head.get("VersionId"),
            checksum_algorithm="crc32c" if verified else None,
            checksum=checksum if verified else None,
        )

    def _checked(
        self, name: str, op: str, ours: str | None, theirs: object
    ) -> dict[str, str | None]:
        """The checksum fields of a result, after comparing the store's value with ours.

        Only a value the store returned is reported: a server that ignores the header (some
        S3-compatible ones, or checksum=None) has verified nothing.
        """
        if not self.checksum or not isinstance(theirs, str) or not theirs:
            return {"checksum_algorithm": None, "checksum": None}
        if ours is not None and theirs != ours:
            raise IntegrityError(
                f"S3 {op} of {self.uri(name)!r}: the store reports CRC32C {theirs}, we sent {ours}",
                name=name,
                uri=self.uri(name),
                transient=True,
            )
        return {"checksum_algorithm": "crc32c", "checksum": theirs}

    def _add_checksum(self, params: dict[str, Any], body: bytes | memoryview) -> str | None:
        """Put our CRC32C of ``body`` in the request (as a header botocore will not recompute)."""
        if not self.checksum:
            return None
        ours = _crc32c_b64(body)
        params["ChecksumCRC32C"] = ours
        if self.checksum_mode == "when_supported":
            # x-amz-sdk-checksum-algorithm: S3 ignores it next to an explicit value, but some
            # S3-compatible servers (moto) only record and echo the checksum when it is present.
            params["ChecksumAlgorithm"] = "CRC32C"
        return ours

    def _scrub(self, text: str) -> str:
        return self._redactor.scrub(text)

    def _map(
        self, exc: BaseException, op: str, name: str | None, *, conditional: bool = False
    ) -> ProviderError:
        """Turn an SDK / transport exception into the library's error tree.

        ``exc`` and its whole ``__cause__`` / ``__context__`` chain are scrubbed of secrets in
        place first: the caller raises the result ``from exc``.
        """
        self._redactor.scrub_exception(exc)
        if isinstance(exc, ProviderError):
            return exc
        uri = self.uri(name) if name is not None else f"s3://{self.bucket}"
        where = f"{uri!r}" if name is not None else f"bucket {self.bucket!r}"
        kw: dict[str, Any] = {"name": name, "uri": uri}
        if isinstance(exc, botocore.exceptions.ClientError):
            code = _error_code(exc)
            meta = exc.response.get("ResponseMetadata") or {}
            status = meta.get("HTTPStatusCode")
            status = status if isinstance(status, int) else None
            headers = meta.get("HTTPHeaders") or {}
            message = (exc.response.get("Error") or {}).get("Message") or ""
            detail = f"{code} (HTTP {status})" + (f": {message}" if message else "")
            text = self._scrub(f"S3 {op} of {where} failed: {detail}")
            kw["status"] = status
            if status == 412 or code == "PreconditionFailed":
                if conditional:
                    return ObjectExistsError(
                        self._scrub(f"object {uri!r} already exists (S3 {op}: {code})"), **kw
                    )
                return ProviderError(text, **kw)
            if code in _DENIED_CODES or status == 403:
                return PermissionDeniedError(text, **kw)
            if code == "NoSuchBucket" or (name is None and status == 404):
                return StoreNotFoundError(
                    self._scrub(
                        f"S3 bucket {self.bucket!r} does not exist ({op} of {where}: {code})"
                    ),
                    **kw,
                )
            if code in _DIGEST_CODES:
                return IntegrityError(text, transient=True, **kw)
            if code in _THROTTLE_CODES or status == 429 or (status is not None and status >= 500):
                return ProviderError(
                    text, transient=True, retry_after=parse_retry_after(headers), **kw
                )
            # KeyTooLongError, InvalidArgument, InvalidRequest, NoSuchUpload, InvalidPart,
            # EntityTooSmall/Large, 301 (wrong region)...: retrying the same request cannot help.
            if status == 301:
                region = headers.get("x-amz-bucket-region")
                if region:
                    text += f" (the bucket is in region {region!r})"
            return ProviderError(text, **kw)
        if isinstance(
            exc,
            botocore.exceptions.NoCredentialsError | botocore.exceptions.PartialCredentialsError,
        ):
            return PermissionDeniedError(
                f"S3 {op} of {where}: no usable AWS credentials ({type(exc).__name__}); pass "
                "key/secret or configure the default chain (env, profile, instance role)",
                **kw,
            )
        if isinstance(exc, _TRANSIENT_EXCEPTIONS):
            return ProviderError(
                self._scrub(f"S3 {op} of {where} failed: {type(exc).__name__}: {exc}"),
                transient=True,
                **kw,
            )
        if isinstance(exc, OSError):
            # Reading the staged file failed (or a socket error aiohttp did not wrap).
            return ProviderError(
                self._scrub(f"S3 {op} of {where} failed: {type(exc).__name__}: {exc}"), **kw
            )
        return ProviderError(
            self._scrub(f"S3 {op} of {where} failed: {type(exc).__name__}: {exc}"), **kw
        )


def _md5_hex(body: bytes | memoryview) -> str:
    return hashlib.md5(body, usedforsecurity=False).hexdigest()


def _multipart_etag(parts: Sequence[PartResult]) -> str | None:
    """S3's ETag of a completed multipart upload: MD5 of the parts' binary MD5s, ``-N``
    (None when a part's ETag is not an MD5, as with SSE-KMS)."""
    try:
        raw = b"".join(bytes.fromhex(_strip_etag(p.etag) or "") for p in parts)
    except ValueError:
        return None
    if not parts or len(raw) != 16 * len(parts):
        return None
    return f"{hashlib.md5(raw, usedforsecurity=False).hexdigest()}-{len(parts)}"


def _resent_by_transport(exc: BaseException) -> bool:
    """Whether the answer in ``exc`` is to a second send of the request within one call (the
    fast path reports aiohttp's own resend of a PUT whose connection dropped as botocore's
    ``RetryAttempts``; botocore's own retries are off)."""
    if not isinstance(exc, botocore.exceptions.ClientError):
        return False
    attempts = (exc.response.get("ResponseMetadata") or {}).get("RetryAttempts")
    return isinstance(attempts, int) and attempts > 0


def _error_code(exc: botocore.exceptions.ClientError) -> str:
    code = (exc.response.get("Error") or {}).get("Code")
    return str(code) if code else "Unknown"


def _check_bucket(bucket: object) -> None:
    if not isinstance(bucket, str) or not bucket:
        raise ConfigError(f"S3 bucket name must be a non-empty str, got {bucket!r}")
    # Legacy buckets may hold capitals and underscores, so only reject what can never be a bucket.
    if not 3 <= len(bucket) <= 255 or not all(c.isalnum() or c in ".-_" for c in bucket):
        raise ConfigError(
            f"invalid S3 bucket name {bucket!r}: 3-255 letters, digits, '.', '-' or '_'"
        )
    if not bucket.isascii():
        raise ConfigError(f"invalid S3 bucket name {bucket!r}: must be ASCII")
