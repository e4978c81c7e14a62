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

Security (each promise has a test in tests/providers/s3/test_security_s3.py):

- No redirect is followed, on either path (aiohttp's following is off for botocore's session and
  the direct one): a 3xx with a ``Location`` is a permanent error naming where it pointed, and
  nothing (no body, no token) goes there.
- Payload signing and the direct path are decided on the endpoint the client resolved (argument,
  ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``, config file), and plain HTTP to a host that is
  not loopback is refused unless ``allow_http=True``.
- Answers are checked: the ETag of a PutObject / UploadPart / Complete against the MD5 of what was
  sent (``check_etag``; not where SSE-KMS / SSE-C make the ETag something else) and any echoed
  CRC32C against ours. A mismatch is a transient :class:`IntegrityError` (the damaged object is
  removed); a result only claims a checksum the store reported.
- Secrets (explicit, environment and refreshed credentials) are scrubbed from messages, logs and
  every exception in the chain by the shared :mod:`._redact` path.
- An upload orphaned by a lost CreateMultipartUpload answer is aborted when the retry succeeds.

Stall watchdog: the direct path reports progress after every slice (1 MiB at most) the socket
takes, so a slow body that keeps moving is never cut off. botocore's path (used behind proxies,
with SigV4a, without our checksum or over plain HTTP to a remote host) reports it only once the
body is read, so there a body that takes longer than ``RetryPolicy.stall_timeout`` to send is
aborted and retried: keep ``stall_timeout`` above part size / slowest expected upload rate.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack
from typing import Final

from .._errors import InvalidObjectNameError
from .._types import FileSlice, PartResult, PutResult
from ._kit import MiB, check_common_name, check_plain_http, split_store_uri
from ._protocol import ObjectInfo, PartLimits
from ._redact import Redactor
from ._s3_client import Credentials, connect, is_aws_endpoint
from ._s3_config import check_bucket, check_options, options_from_seed
from ._s3_read import S3Reader
from ._s3_target import S3Target
from ._s3_uploads import S3Uploads
from ._s3_write import S3Writer

log = logging.getLogger("artifact_uploader")

_S3_LIMITS: Final = PartLimits(
    min_part_size=5 * MiB, max_part_size=5 * 1024 * MiB, max_parts=10_000
)
_MAX_KEY_BYTES: Final = 1024


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
        allow_http: Allow plain HTTP to a host that is not loopback (obstore's name for it).
            Off by default: credentials, signatures and bodies would cross the network in the
            clear. Checked against the endpoint however it was configured (this argument,
            ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``, the config file). Loopback hosts
            (``127.0.0.1``, ``::1``, ``localhost``) never need it.
        check_etag: Compare the ETag of an answer with the MD5 of what was sent (skipped
            where SSE-KMS or SSE-C make the ETag something else), so a body changed on the way
            is caught even by a store that verifies no checksum. None (default): single-part
            PutObject answers only (objects below ``PartPolicy.threshold``), on every endpoint
            but AWS's own, which verifies our CRC32C itself; multipart bodies are not hashed,
            since the MD5 would double the client CPU of a large upload (downloads verify them).
            True: every PutObject and UploadPart answer, on any endpoint. False: none.
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
        allow_http: bool = False,
        check_etag: bool | None = None,
    ) -> None:
        check_bucket(bucket)
        endpoint_url = endpoint_url.rstrip("/") if endpoint_url else None
        checksum = checksum.lower() if checksum is not None else None
        check_options(
            endpoint_url=endpoint_url,
            key=key,
            secret=secret,
            token=token,
            checksum=checksum,
            checksum_mode=checksum_mode,
            verify=verify,
            max_pool_connections=max_pool_connections,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            allow_http=allow_http,
            check_etag=check_etag,
        )
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.region = region
        self.endpoint_url = endpoint_url
        self.checksum = checksum
        self.checksum_mode = checksum_mode
        self.verify = verify
        self.max_pool_connections = max_pool_connections
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.use_ssl = use_ssl
        self.allow_http = allow_http
        self.check_etag = check_etag
        self._credentials = (
            None if key is None or secret is None else Credentials(key, secret, token)
        )
        # Explicit, environment and (added at open) the default chain's live credentials.
        self._redactor = Redactor((key, secret, token))
        # Known now when the endpoint is explicit (so a bad one fails here, at the call that
        # gave it); else at open, once botocore has resolved it.
        if self.endpoint_url is not None or not use_ssl:
            endpoint = self.endpoint_url or "http://s3.amazonaws.com"
            check_plain_http(endpoint, label="S3", allow_http=allow_http)
        self._stack: AsyncExitStack | None = None
        self._target = S3Target(self.bucket, self.prefix, self._redactor, label=repr(self))
        self._writer = S3Writer(
            self._target,
            checksum=bool(checksum),
            mode=checksum_mode,
            check_part_etags=check_etag is True,
        )
        self._uploads = S3Uploads(self._target, checksum=bool(checksum))
        self._reader = S3Reader(self._target)

    def __repr__(self) -> str:
        # Bucket, prefix and endpoint only: never credentials.
        return (
            f"S3Provider(bucket={self.bucket!r}, prefix={self.prefix!r}, "
            f"endpoint_url={self.endpoint_url!r})"
        )

    @classmethod
    def from_uri(cls, uri: str, options: dict[str, object] | None = None) -> S3Provider:
        """Build from ``s3://bucket[/prefix]`` and options.

        Options: ``region``, ``endpoint_url``, ``key`` / ``secret`` / ``token``, ``checksum``,
        ``checksum_mode``, ``verify``, ``max_pool_connections``, ``connect_timeout``,
        ``read_timeout``, ``allow_http``, ``check_etag``; botocore's names
        ``aws_access_key_id``, ``aws_secret_access_key``, ``aws_session_token``, ``region_name``;
        and the seed's ``host``, ``port``, ``secure`` (which make ``endpoint_url``) and
        ``api_version`` (ignored: S3 has one API version).

        Raises:
            ConfigError: A malformed URI, an unknown option or a bad option value.
        """
        parts = split_store_uri(uri, "s3", "S3")
        return cls(parts.netloc, parts.path, **options_from_seed(options))

    # -- names ------------------------------------------------------------------------------

    def key(self, name: str) -> str:
        """The S3 key of object ``name`` (the prefix joined with the name)."""
        return self._target.key(name)

    def uri(self, name: str) -> str:
        return self._target.uri(name)

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
        if self._target.client is not None:
            return
        conn = await connect(self, self._credentials, self._redactor)
        # AWS verifies the CRC32C we send; other stores may store whatever arrives.
        self._writer.check_etag = (
            self.check_etag
            if self.check_etag is not None
            else not (self.checksum and is_aws_endpoint(conn.endpoint))
        )
        self._target.client, self._target.direct = conn.client, conn.direct
        self._stack = conn.stack
        if verify:
            try:
                await self._reader.head_bucket()
            except BaseException:
                # A provider that failed to open holds no client (the engine may never aclose
                # it).
                await self.aclose()
                raise

    async def aclose(self) -> None:
        stack, self._stack = self._stack, None
        self._target.client = self._target.direct = None
        self._writer.clear()
        self._uploads.clear()
        if stack is not None:
            await stack.aclose()

    @property
    def direct_region(self) -> str | None:
        """The region the direct request path signs PutObject / UploadPart for while the
        provider is open; None when botocore sends every request (see the module docstring)."""
        direct = self._target.direct
        return direct.region if direct is not None else None

    # -- writes -----------------------------------------------------------------------------

    async def put(self, name: str, data: FileSlice, *, overwrite: bool) -> PutResult:
        """One PutObject; conditional on absence (``If-None-Match: *``) when not ``overwrite``.

        Raises:
            ObjectExistsError: ``overwrite`` is False and the object exists.
            IntegrityError: The store reports a different CRC32C than ours.
            ProviderError: Any other failure, ``transient`` set when a retry may help.
        """
        return await self._writer.put(name, data, overwrite=overwrite)

    async def create_multipart(self, name: str, *, overwrite: bool) -> str:
        """CreateMultipartUpload (with CRC32C as the checksum algorithm when enabled).

        ``overwrite`` is honoured at :meth:`complete_multipart`, where S3 checks the condition.
        A Create whose answer is lost is remembered for :meth:`lost_creates`.
        """
        return await self._uploads.create(name)

    def has_lost_creates(self, name: str) -> bool:
        """Whether a CreateMultipartUpload of ``name`` went unanswered since the last look."""
        return self._uploads.in_doubt(name)

    async def lost_creates(self, name: str, upload_id: str) -> list[str]:
        """Uploads of ``name`` that lost Creates started; see :meth:`S3Uploads.lost`."""
        return await self._uploads.lost(name, upload_id)

    async def list_multipart_uploads(self, name: str) -> list[str]:
        """Ids of the unfinished multipart uploads of exactly ``name`` (ListMultipartUploads
        with the key as prefix, paginated, uploads of longer keys left out).

        Raises:
            ProviderError: The listing failed (``transient`` as for any request).
        """
        return await self._uploads.ids(name)

    async def put_part(
        self, name: str, upload_id: str, part_number: int, data: FileSlice
    ) -> PartResult:
        """One UploadPart; returns the part's ETag and (when enabled) the CRC32C S3 verified."""
        return await self._writer.put_part(name, upload_id, part_number, data)

    async def complete_multipart(
        self, name: str, upload_id: str, parts: Sequence[PartResult], *, overwrite: bool
    ) -> PutResult:
        """CompleteMultipartUpload, conditional on absence (If-None-Match) unless ``overwrite``.

        Raises:
            ObjectExistsError: ``overwrite`` is False and the object exists.
            IntegrityError: The store's composite CRC32C differs from the one of our parts.
        """
        return await self._writer.complete(name, upload_id, parts, overwrite=overwrite)

    async def abort_multipart(self, name: str, upload_id: str) -> None:
        """AbortMultipartUpload; an upload that is already gone is not an error."""
        await self._uploads.abort(name, upload_id)

    # -- reads ------------------------------------------------------------------------------

    async def head(self, name: str) -> ObjectInfo:
        """HeadObject (with ``ChecksumMode=ENABLED``): size, ETag, version, checksums.

        Checksums reported, each only where S3 recorded it: the object's CRC32C (whole-object,
        or COMPOSITE over the parts of a multipart upload, with ``part_size`` / ``parts`` from a
        second HEAD of part 1), and the MD5 in a plain ETag (or the MD5-of-MD5s of a multipart
        ETag) unless SSE-KMS or SSE-C made the ETag something else.

        Raises:
            ObjectNotFoundError: No such object.
        """
        return await self._reader.head(name)

    async def get_range(
        self, name: str, offset: int, length: int, *, etag: str | None = None
    ) -> bytes:
        """One ranged GetObject, conditional on ``etag`` (``If-Match``) when given.

        The body is read into one buffer of ``length`` bytes, returned without a copy.

        Raises:
            ObjectNotFoundError: No such object.
            ProviderError: 412 when the object changed (not transient); fewer bytes than asked
                (transient); more than asked (the server ignored the range; not transient).
        """
        return await self._reader.get_range(name, offset, length, etag=etag)

    def list(self, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        """ListObjectsV2, page by page: every object under the store's prefix whose name starts
        with ``prefix``, names relative to the store's prefix, in S3's (UTF-8 binary) order."""
        return self._reader.list(prefix)

    async def delete(self, name: str) -> None:
        """DeleteObject; a missing object is not an error."""
        await self._reader.delete(name)
