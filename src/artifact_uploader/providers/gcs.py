"""Google Cloud Storage (``gs://bucket/prefix``) through gcloud-aio-storage.

One ``put`` is one logical upload:

- up to ``resumable_threshold`` bytes (8 MiB by default): one *multipart* (metadata + media)
  request through :meth:`gcloud.aio.storage.Storage.upload`. Metadata is always sent, for two
  reasons: it carries our CRC32C and MD5 so GCS verifies the body before it commits the object,
  and ``ifGenerationMatch=0`` is enforced by fake-gcs-server only on multipart uploads (a plain
  ``uploadType=media`` upload ignores it there), so ``overwrite=False`` is atomic on the emulator
  as well as on GCS.
- above it: a *resumable* upload session: one POST that opens the session (with the metadata,
  checksums and precondition) and one PUT that streams the staged file from disk in 1 MiB chunks.
  Memory stays bounded whatever the file size. With ``overwrite=False`` the session is opened
  with ``ifGenerationMatch=0``, which makes the write atomic on GCS; a metadata GET first refuses
  an existing object before gigabytes are streamed only to be rejected, and is what stops the
  overwrite on fake-gcs-server, which ignores the precondition on resumable uploads (racy there:
  two writers that both pass the check both succeed).

Why the resumable path does not go through ``Storage.upload``: the library's resumable code
(``_do_upload``) catches *every* HTTP error of the final PUT, including 4xx such as 412 and 403,
sleeps 1, 2, 4 and 8 s and resends the whole body with ``Content-Range: bytes */*`` (a status
query that must have no body); when GCS answers such a query with ``308 Resume Incomplete`` the
library returns ``None`` instead of raising. The engine already retries transient errors with
its own policy, so the provider speaks the two-request protocol itself, on the aiohttp session
and token the library uses, and keeps one request = one attempt. The file is read twice (hashed
first, so the checksums can travel with the session's metadata, then streamed).

``Storage.upload`` defaults to a 30 s total timeout, which fails any large checkpoint on a normal
link. Every request here gets ``timeout + size / min_throughput`` seconds (60 s + 1 s per MiB by
default): see :meth:`GCSProvider.request_timeout`.

Integrity: CRC32C (google-crc32c, native) and MD5 are computed locally (in a worker thread for
anything but tiny bodies), sent in the object metadata (GCS rejects a body that does not match
them), and checked against what the server reports back: on a mismatch the generation just
written is deleted (that generation only) and the :class:`IntegrityError` is transient, so the
engine writes the object again; a result claims only a checksum the server reported.
fake-gcs-server does not verify the values it is sent but does report the CRC32C and MD5 of
what it stored, so the check after the fact still catches corruption there.

Reading back (:class:`~artifact_uploader.providers._protocol.ReadableProvider`): ``head`` is the
object resource (size, etag, generation, ``crc32c``, ``md5Hash`` -- absent for composed
objects); ``get_range`` is one ranged media GET, pinned to one generation with
``ifGenerationMatch`` and checked against the answer's ``x-goog-generation``; ``list`` pages
through the listing; ``delete`` ignores a missing object.

Where things are: settings and options in :mod:`._gcs_config`, the open session in
:mod:`._gcs_client`, the error table in :mod:`._gcs_errors`, the upload paths in
:mod:`._gcs_upload`, the read side in :mod:`._gcs_read`; what every provider shares in
:mod:`._kit`.

Security: no redirect is followed (library requests are stopped by an aiohttp trace hook before
any follow-up is sent, our own requests use ``allow_redirects=False``); a resumable session URL
must be on the API's own origin; plain HTTP to a host other than this machine needs
``allow_http=True``; every error and its cause chain pass through the one redaction path
(:mod:`~artifact_uploader.providers._redact`), which knows the current access token.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from .._errors import ConfigError, ObjectExistsError, ProviderError
from .._types import FileSlice, PutResult
from ._gcs_client import GCSClient, open_client, token_values
from ._gcs_config import (
    DEFAULT_MIN_THROUGHPUT,
    DEFAULT_RESUMABLE_THRESHOLD,
    DEFAULT_TIMEOUT,
    GCSPaths,
    TokenSource,
    check_api_root,
    check_bucket,
    check_sizes,
    check_token,
    credential_source,
    from_uri_arguments,
)
from ._gcs_errors import ErrorMap
from ._gcs_read import GCSReader, check_range, delete
from ._gcs_upload import (
    checked_result,
    exists,
    hash_file,
    landed,
    read_and_hash,
    upload_resumable,
    upload_small,
)
from ._kit import InDoubt
from ._protocol import ObjectInfo
from ._redact import Redactor, install_log_filter

__all__ = ["GCSProvider", "TokenSource"]


class GCSProvider:
    """Writes objects to a Google Cloud Storage bucket (or fake-gcs-server) with gcloud-aio-storage.

    Credentials, in order: ``token``, then ``service_file``, then Google's default chain
    (``GOOGLE_APPLICATION_CREDENTIALS``, the gcloud SDK config, the GCE metadata server). Against
    an emulator (``api_root`` or ``STORAGE_EMULATOR_HOST``) with no explicit credential, requests
    are sent without authentication, as the emulators expect.

    Args:
        bucket: Bucket name.
        prefix: Prefix every object name is placed under ("" for the bucket root).
        service_file: Path of a service-account (or authorized-user) JSON key file.
        token: An access token: a gcloud-aio-auth ``Token`` (or anything with ``async get()``),
            or a raw OAuth2 access token string (it is not refreshed).
        api_root: Base URL of the JSON API, e.g. ``http://127.0.0.1:4443`` for an emulator.
            Default: ``STORAGE_EMULATOR_HOST`` if set when the provider opens, else
            ``https://storage.googleapis.com``.
        resumable_threshold: Bodies larger than this many bytes use a resumable upload streamed
            from disk; smaller ones a single multipart request held in memory. Default 8 MiB.
        timeout: Base per-request timeout in seconds. Default 60.
        min_throughput: Slowest upload rate, in bytes per second, tolerated before a request
            times out: each request gets ``timeout + size / min_throughput`` seconds. Default
            1 MiB/s (a 1 GiB checkpoint gets 60 + 1024 s).
        allow_http: Allow a plain ``http://`` endpoint (``api_root`` or
            ``STORAGE_EMULATOR_HOST``) on a host other than this machine. Default False:
            tokens and data would cross the network unencrypted. Loopback needs no flag.

    Redirects are never followed: a 3xx answer is a permanent :class:`ProviderError` naming
    where it pointed, and nothing (body, token) is sent there.
    """

    scheme = "gs"

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        service_file: str | os.PathLike[str] | None = None,
        token: TokenSource | str | None = None,
        api_root: str | None = None,
        resumable_threshold: int = DEFAULT_RESUMABLE_THRESHOLD,
        timeout: float = DEFAULT_TIMEOUT,
        min_throughput: float = DEFAULT_MIN_THROUGHPUT,
        allow_http: bool = False,
    ) -> None:
        self.bucket = check_bucket(bucket)
        self.prefix = prefix.strip("/")
        if service_file is not None and token is not None:
            raise ConfigError("GCS options 'service_file' and 'token' are mutually exclusive")
        self.service_file = None if service_file is None else os.fspath(service_file)
        if self.service_file is not None and not os.path.isfile(self.service_file):
            raise ConfigError(f"GCS service_file {self.service_file!r} is not a file")
        self._token = check_token(token)
        self.api_root = check_api_root(api_root, allow_http)
        self.allow_http = allow_http
        self.resumable_threshold, self.timeout, self.min_throughput = check_sizes(
            resumable_threshold, timeout, min_throughput
        )
        self._paths = GCSPaths(self.bucket, self.prefix)
        self._client: GCSClient | None = None
        # Uploads sent whose outcome is unknown (no answer, or a transient error): if the
        # engine's retry of one meets "already exists", the first send may have landed.
        self._in_doubt = InDoubt()
        self._reader = GCSReader()
        # Every message and exception chain this provider raises goes through it: the access
        # token (static or refreshed) and anything shaped like a bearer token.
        self._redactor = Redactor(sources=(self._token_values,))
        self._errors = ErrorMap(
            self._paths, self._redactor, credential_source(self._token, self.service_file)
        )
        self._log_filter: Callable[[], None] | None = None

    def _token_values(self) -> list[object]:
        """The access tokens held now (read at every scrub: refreshed tokens change)."""
        return token_values(self._token, self._client)

    def __repr__(self) -> str:
        # Bucket, prefix and endpoint only: never the token or key file contents.
        return (
            f"GCSProvider(bucket={self.bucket!r}, prefix={self.prefix!r}, "
            f"api_root={self.api_root!r})"
        )

    @classmethod
    def from_uri(cls, uri: str, options: Mapping[str, object] | None = None) -> GCSProvider:
        """Build from ``gs://bucket[/prefix]`` and options.

        Options: ``service_file``, ``token``, ``api_root`` (alias ``endpoint_url``),
        ``resumable_threshold``, ``timeout``, ``min_throughput`` (see the class), and the seed's
        libcloud-style keys:

        - ``host`` / ``port`` / ``secure``: make ``api_root`` (``secure`` defaults to True).
        - ``key``: the path of a service-account JSON file. libcloud's pair ``key=<client
          email>``, ``secret=<path of the JSON key file>`` is accepted too. HMAC keys and raw
          secrets are refused: the JSON API authenticates with OAuth2 tokens.
        - ``region``, ``api_version``: accepted and ignored (a bucket's location is fixed at
          creation; the JSON API has one version, v1).

        Raises:
            ConfigError: A malformed URI, an unknown option or a bad option value.
        """
        bucket, prefix, kwargs = from_uri_arguments(uri, options)
        return cls(bucket, prefix, **kwargs)

    # -- protocol ---------------------------------------------------------------------------

    def uri(self, name: str) -> str:
        """``gs://bucket/prefix/name``."""
        return self._paths.uri(name)

    def check_name(self, name: str) -> None:
        """Raise :class:`InvalidObjectNameError` for a name GCS refuses.

        GCS rules on the full object name (prefix included): at most 1024 bytes of UTF-8, no
        carriage return or line feed, not ``.`` or ``..``, not under
        ``.well-known/acme-challenge/``.
        """
        self._paths.check_name(name)

    def request_timeout(self, size: int) -> float:
        """Seconds allowed for a request sending ``size`` bytes.

        ``timeout + size / min_throughput``: 60 s + 1 s per MiB with the defaults.
        """
        return self.timeout + max(0, size) / self.min_throughput

    async def open(self, *, verify: bool = True) -> None:
        """Create the HTTP session and client on the running loop; check the bucket if ``verify``.

        Raises:
            StoreNotFoundError: The bucket does not exist.
            PermissionDeniedError: The credentials were refused.
            ProviderError: The server could not be reached (transient).
        """
        if self._client is not None:
            return
        self._client = client = await open_client(
            errors=self._errors,
            token=self._token,
            service_file=self.service_file,
            api_root=self.api_root,
            allow_http=self.allow_http,
            timeout=self.timeout,
            min_throughput=self.min_throughput,
        )
        # DEBUG logs of the libraries underneath (gcloud-aio-*, aiohttp) are scrubbed too.
        self._log_filter = install_log_filter(self._redactor, ("gcloud", "aiohttp"))
        if not verify:
            return
        try:
            await client.auth_headers()
            await client.storage.get_bucket_metadata(
                self.bucket,
                timeout=self.timeout,  # type: ignore[arg-type]  # passed on to aiohttp as is
            )
        except BaseException as exc:
            await self.aclose()
            if isinstance(exc, Exception):
                raise self._errors.map(exc, None, bucket_op=True) from exc
            raise

    async def aclose(self) -> None:
        """Close the session. Idempotent."""
        client, self._client = self._client, None
        log_filter, self._log_filter = self._log_filter, None
        if log_filter is not None:
            log_filter()
        self._in_doubt.clear()
        if client is not None:
            await client.close()

    async def put(self, name: str, data: FileSlice, *, overwrite: bool) -> PutResult:
        """Upload ``data`` as object ``name`` (multipart or resumable by size).

        Raises:
            ObjectExistsError: ``overwrite`` is False and the object exists.
            IntegrityError: The server's CRC32C, MD5 or size differ from the local ones.
            PermissionDeniedError: The credentials were refused.
            StoreNotFoundError: The bucket does not exist.
            ProviderError: Any other failure, ``transient`` when a retry may help.
        """
        client = self._require_open(name)
        key = self._paths.key(name)
        # Our earlier send of this very upload may have been stored with its answer lost:
        # then the object is ours (same size, CRC32C and MD5), not a conflict.
        return await self._in_doubt.run(
            (key, str(data.path), data.offset, data.length),
            lambda: self._put_once(client, name, key, data, overwrite=overwrite),
            lambda: landed(client, key, data),
            what=self.uri(name),
        )

    async def _put_once(
        self, client: GCSClient, name: str, key: str, data: FileSlice, *, overwrite: bool
    ) -> PutResult:
        try:
            # Fetch (and cache) the token first, so a credential failure maps to
            # PermissionDeniedError here rather than surfacing from inside the library.
            await client.auth_headers()
            if data.length > self.resumable_threshold:
                if not overwrite and await exists(client, key):
                    raise ObjectExistsError(f"object {self.uri(name)!r} already exists")
                crc, md5 = await hash_file(data)
                resp = await self._upload_resumable(key, data, crc, md5, overwrite=overwrite)
            else:
                body, crc, md5 = await read_and_hash(data)
                resp = await self._upload_small(key, body, crc, md5, overwrite=overwrite)
        except ProviderError as exc:
            exc.name, exc.uri = name, self.uri(name)
            raise
        except Exception as exc:
            raise self._errors.map(exc, name, overwrite=overwrite) from exc
        return await checked_result(client, name, data, resp, crc, md5)

    # -- the two upload paths (seams a test subclass may wrap) -------------------------------

    async def _upload_small(
        self, key: str, body: bytes, crc: str, md5: str, *, overwrite: bool
    ) -> dict[str, Any] | None:
        """One multipart upload through the library. Returns the object resource it parsed."""
        client = self._require_open(None)
        return await upload_small(client, key, body, crc, md5, overwrite=overwrite)

    async def _upload_resumable(
        self, key: str, data: FileSlice, crc: str, md5: str, *, overwrite: bool
    ) -> dict[str, Any] | None:
        """Open a resumable session, then stream the whole slice in one PUT."""
        client = self._require_open(None)
        return await upload_resumable(client, key, data, crc, md5, overwrite=overwrite)

    # -- the read side -----------------------------------------------------------------------

    def _require_open(self, name: str | None) -> GCSClient:
        if self._client is None:
            raise ProviderError(
                "GCS provider used before open() or after aclose()",
                name=name,
                uri=None if name is None else self.uri(name),
            )
        return self._client

    async def head(self, name: str) -> ObjectInfo:
        """What GCS records about ``name``: size, etag, generation, ``crc32c`` and ``md5Hash``
        (composed objects have no MD5).

        Raises:
            ObjectNotFoundError: No such object.
        """
        return await self._reader.head(self._require_open(name), name)

    async def get_range(
        self, name: str, offset: int, length: int, *, etag: str | None = None
    ) -> bytes:
        """Bytes ``offset .. offset + length - 1`` of ``name``, in one ranged GET.

        With ``etag``, the read is of the generation that etag belongs to
        (``ifGenerationMatch``, and the answer's ``x-goog-generation`` is checked too, since
        emulators ignore the parameter): a changed object raises a non-transient
        :class:`ProviderError` with status 412.

        Raises:
            ObjectNotFoundError: No such object.
            ProviderError: Fewer bytes than asked (transient), a changed object (412), or any
                other failure.
        """
        check_range(offset, length)
        client = self._require_open(name)
        return await self._reader.get_range(client, name, offset, length, etag)

    async def list(self, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        """Every object whose name (relative to the store's prefix) starts with ``prefix``,
        in name order."""
        client = self._require_open(None)
        async for info in self._reader.list(client, prefix):
            yield info

    async def delete(self, name: str) -> None:
        """Delete ``name``; a missing object is not an error."""
        await delete(self._require_open(name), name)
