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

Security: no redirect is followed (library requests are stopped by an aiohttp trace hook before
any follow-up is sent, our own requests use ``allow_redirects=False``); a resumable session URL
must be on the API's own origin; plain HTTP to a host other than this machine needs
``allow_http=True``; every error and its cause chain pass through the one redaction path
(:mod:`~artifact_uploader.providers._redact`), which knows the current access token.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import logging
import math
import mimetypes
import os
import re
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import datetime
from typing import Any, BinaryIO, Final, Protocol, cast
from urllib.parse import quote, urlsplit

import aiohttp
import anyio.to_thread
import google_crc32c as _google_crc32c
from gcloud.aio.storage import Storage
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from .._errors import (
    ConfigError,
    IntegrityError,
    InvalidObjectNameError,
    ObjectExistsError,
    ObjectNotFoundError,
    PermissionDeniedError,
    ProviderError,
    StoreNotFoundError,
)
from .._retry import note_progress
from .._types import FileSlice, PutResult
from ._protocol import (
    MAX_NAME_BYTES,
    Checksum,
    MiB,
    ObjectInfo,
    check_common_name,
    check_plain_http,
    join_key,
    parse_retry_after,
    split_store_uri,
)
from ._redact import Redactor, install_log_filter

log = logging.getLogger("artifact_uploader")

_DEFAULT_API_ROOT: Final = "https://storage.googleapis.com"
_DEFAULT_RESUMABLE_THRESHOLD: Final = 8 * MiB
_DEFAULT_TIMEOUT: Final = 60.0
_DEFAULT_MIN_THROUGHPUT: Final = float(MiB)
_CHUNK: Final = MiB
# Below this, hashing on the event loop costs less than the hop to a worker thread.
_INLINE_HASH_LIMIT: Final = 256 * 1024
# google-crc32c ships no type information.
google_crc32c: Any = _google_crc32c
_ACME_PREFIX: Final = ".well-known/acme-challenge/"
# Bucket names: 3-63 characters (up to 222 with dots), lowercase letters, digits, '-', '_', '.'.
_BUCKET_RE: Final = re.compile(r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$")
_KNOWN_OPTIONS: Final = frozenset(
    {
        "service_file",
        "token",
        "api_root",
        "endpoint_url",
        "resumable_threshold",
        "timeout",
        "min_throughput",
        "key",
        "secret",
        "secure",
        "host",
        "port",
        "region",
        "api_version",
        "allow_http",
    }
)
# Listing pages and cached etag -> generation pairs: bounds on what an answer can make us hold.
_LIST_PAGE: Final = 1000
_MAX_PAGES: Final = 1_000_000
_GENERATION_CACHE: Final = 4096
_REDIRECTS: Final = frozenset({301, 302, 303, 307, 308})
# Connection-level failures that a new attempt may get past.
_TRANSIENT_EXCEPTIONS: Final = (
    aiohttp.ClientConnectionError,
    aiohttp.ClientPayloadError,
    ConnectionError,
    TimeoutError,
)


class TokenSource(Protocol):
    """What the provider needs from a credential: gcloud-aio-auth's ``Token`` satisfies it."""

    async def get(self) -> str | None:
        """Return a current OAuth2 access token."""
        ...


class _StaticToken:
    """A raw access token string, held out of every repr."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def __repr__(self) -> str:
        return "_StaticToken(<redacted>)"

    async def get(self) -> str | None:
        return self._value

    async def close(self) -> None:
        return None


class _RedirectRefused(Exception):
    """A server answered a redirect; raised from aiohttp's redirect hook so it is never followed."""

    def __init__(self, status: int, location: str) -> None:
        super().__init__(f"redirect {status} to {location!r}")
        self.status = status
        self.location = location


async def _refuse_redirect(session: Any, context: Any, params: Any) -> None:
    # aiohttp calls this before it follows a redirect; raising here stops it from sending the
    # request (body and Authorization header included) to the new location.
    response = params.response
    location = str(response.headers.get("Location", ""))
    response.close()
    raise _RedirectRefused(response.status, location)


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
        resumable_threshold: int = _DEFAULT_RESUMABLE_THRESHOLD,
        timeout: float = _DEFAULT_TIMEOUT,
        min_throughput: float = _DEFAULT_MIN_THROUGHPUT,
        allow_http: bool = False,
    ) -> None:
        if not isinstance(bucket, str) or not _BUCKET_RE.match(bucket) or ".." in bucket:
            raise ConfigError(
                f"invalid GCS bucket name {bucket!r}: 3-222 characters of lowercase letters, "
                "digits, '-', '_' and '.', starting and ending with a letter or digit"
            )
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        if service_file is not None and token is not None:
            raise ConfigError("GCS options 'service_file' and 'token' are mutually exclusive")
        self.service_file = None if service_file is None else os.fspath(service_file)
        if self.service_file is not None and not os.path.isfile(self.service_file):
            raise ConfigError(f"GCS service_file {self.service_file!r} is not a file")
        if isinstance(token, str):
            if not token:
                raise ConfigError("GCS option 'token' must not be empty")
            self._token: TokenSource | None = _StaticToken(token)
        else:
            if token is not None and not callable(getattr(token, "get", None)):
                raise ConfigError(
                    "GCS option 'token' must be a str or a gcloud-aio-auth Token "
                    f"(something with an async get()), not {type(token).__name__}"
                )
            self._token = token
        if api_root is not None:
            api_root = api_root.rstrip("/")
            parts = urlsplit(api_root)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ConfigError(
                    f"GCS api_root must look like http(s)://host[:port], got {api_root!r}"
                )
        if not isinstance(allow_http, bool):
            raise ConfigError(f"GCS option 'allow_http' must be a bool, got {allow_http!r}")
        self.allow_http = allow_http
        if api_root is not None:
            check_plain_http(api_root, label="GCS", allow_http=allow_http, what="api_root")
        self.api_root = api_root
        if isinstance(resumable_threshold, bool) or not isinstance(resumable_threshold, int):
            raise ConfigError(f"resumable_threshold must be an int, got {resumable_threshold!r}")
        if resumable_threshold < 0:
            raise ConfigError(f"resumable_threshold must be >= 0, got {resumable_threshold}")
        self.resumable_threshold = resumable_threshold
        for label, value in (("timeout", timeout), ("min_throughput", min_throughput)):
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or value <= 0
            ):
                raise ConfigError(f"GCS option {label!r} must be a positive number, got {value!r}")
        self.timeout = float(timeout)
        self.min_throughput = float(min_throughput)
        self._session: aiohttp.ClientSession | None = None
        self._storage: Storage | None = None
        # Uploads sent whose outcome is unknown (no answer, or a transient error): if the
        # engine's retry of one meets "already exists", the first send may have landed.
        self._in_doubt: set[tuple[object, ...]] = set()
        self._root = ""
        self._anonymous = False
        # etag -> generation of objects seen by head / list: a ranged read conditional on an
        # etag is sent as ifGenerationMatch (the JSON API's media download has no If-Match).
        self._generations: dict[str, str] = {}
        # Every message and exception chain this provider raises goes through it: the access
        # token (static or refreshed) and anything shaped like a bearer token.
        self._redactor = Redactor(sources=(self._token_values,))
        self._log_filter: Callable[[], None] | None = None

    def _token_values(self) -> list[object]:
        """The access tokens held now (read at every scrub: refreshed tokens change)."""
        sources: list[object] = [self._token]
        if self._storage is not None:
            sources.append(self._storage.token)
        values: list[object] = []
        for source in sources:
            for attr in ("_value", "access_token"):
                values.append(getattr(source, attr, None))
        return values

    def __repr__(self) -> str:
        # Bucket, prefix and endpoint only: never the token or key file contents.
        return (
            f"GCSProvider(bucket={self.bucket!r}, prefix={self.prefix!r}, "
            f"api_root={self.api_root!r})"
        )

    # -- construction from URIs and the seed's provider_kwargs -----------------------------

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
        parts = split_store_uri(uri, "gs", "GCS")
        bucket = parts.netloc
        opts = dict(options or {})
        unknown = sorted(set(opts) - _KNOWN_OPTIONS)
        if unknown:
            raise ConfigError(
                f"unknown option(s) for the GCS store: {unknown}; known: {sorted(_KNOWN_OPTIONS)}"
            )
        # A bucket's location is fixed when it is created and the JSON API has a single version
        # (v1): the seed's region / api_version have nothing to select here.
        opts.pop("region", None)
        opts.pop("api_version", None)

        kwargs: dict[str, Any] = {}
        for name in ("resumable_threshold", "timeout", "min_throughput", "allow_http"):
            if opts.get(name) is not None:
                kwargs[name] = opts.pop(name)
        token = opts.pop("token", None)
        if token is not None:
            kwargs["token"] = token
        service_file = _service_file_option(opts)
        if service_file is not None:
            kwargs["service_file"] = service_file
        api_root = _api_root_option(opts)
        if api_root is not None:
            kwargs["api_root"] = api_root
        return cls(bucket, parts.path, **kwargs)

    # -- protocol ---------------------------------------------------------------------------

    def uri(self, name: str) -> str:
        return f"gs://{self.bucket}/{join_key(self.prefix, name)}"

    def check_name(self, name: str) -> None:
        """Raise :class:`InvalidObjectNameError` for a name GCS refuses.

        GCS rules on the full object name (prefix included): at most 1024 bytes of UTF-8, no
        carriage return or line feed, not ``.`` or ``..``, not under
        ``.well-known/acme-challenge/``.
        """
        budget = MAX_NAME_BYTES - (len(self.prefix.encode()) + 1 if self.prefix else 0)
        check_common_name(name, max_bytes=budget)
        if "\r" in name or "\n" in name:
            raise InvalidObjectNameError(name, "GCS object names cannot contain CR or LF")
        key = join_key(self.prefix, name)
        if key in (".", ".."):
            raise InvalidObjectNameError(name, "GCS object names cannot be '.' or '..'")
        if key.startswith(_ACME_PREFIX):
            raise InvalidObjectNameError(
                name, f"GCS object names cannot start with {_ACME_PREFIX!r}"
            )

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
        if self._storage is not None:
            return
        env_root = os.environ.get("STORAGE_EMULATOR_HOST")
        if self.api_root is not None:
            root, emulator = self.api_root, True
        elif env_root:
            root = env_root if env_root.startswith("http") else f"http://{env_root}"
            root, emulator = root.rstrip("/"), True
        else:
            root, emulator = _DEFAULT_API_ROOT, False
        check_plain_http(
            root,
            label="GCS",
            allow_http=self.allow_http,
            what="api_root" if self.api_root is not None else "STORAGE_EMULATOR_HOST",
        )
        # An emulator takes unauthenticated requests; with explicit credentials we send them
        # anyway (a private endpoint may want them).
        self._anonymous = emulator and self._token is None and self.service_file is None
        self._root = root
        if self.service_file is not None:
            await anyio.to_thread.run_sync(_check_service_file, self.service_file)
        # Our own session: the engine's concurrency limit, not a small pool, bounds what is in
        # flight, and every request passes its own size-scaled timeout.
        # Requests made inside gcloud-aio-storage follow redirects (aiohttp's default): the
        # trace refuses every one before it is followed.
        trace = aiohttp.TraceConfig()
        trace.on_request_redirect.append(_refuse_redirect)
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.timeout),
            trace_configs=[trace],
        )
        make_storage = functools.partial(
            Storage,
            service_file=self.service_file,
            # Duck-typed: the library only calls the token's get().
            token=cast(Any, self._token),
            # The library's annotation names requests' Session (its sync twin shares the code).
            session=cast(Any, session),
            api_root=root,
            api_is_dev=self._anonymous,
        )
        try:
            # Storage() builds its Token, which reads key files and the gcloud SDK config: keep
            # that file I/O off the loop (nothing in it is bound to the loop).
            self._storage = await anyio.to_thread.run_sync(make_storage)
        except Exception as exc:
            await session.close()
            self._redactor.scrub_exception(exc)
            # The library's message may quote the key file; name the file only.
            raise ConfigError(
                f"cannot load GCS credentials from {self.service_file!r}: {type(exc).__name__}"
            ) from exc
        self._session = session
        # DEBUG logs of the libraries underneath (gcloud-aio-*, aiohttp) are scrubbed too.
        self._log_filter = install_log_filter(self._redactor, ("gcloud", "aiohttp"))
        if not verify:
            return
        try:
            await self._auth_headers()
            await self._storage.get_bucket_metadata(
                self.bucket,
                timeout=self.timeout,  # type: ignore[arg-type]  # passed on to aiohttp as is
            )
        except BaseException as exc:
            await self.aclose()
            if isinstance(exc, Exception):
                raise self._map(exc, None, bucket_op=True) from exc
            raise

    async def aclose(self) -> None:
        storage, session = self._storage, self._session
        self._storage = self._session = None
        log_filter, self._log_filter = self._log_filter, None
        if log_filter is not None:
            log_filter()
        self._in_doubt.clear()
        if storage is not None:
            # A background token refresh the library may have started would outlive the session.
            acquiring = getattr(storage.token, "acquiring", None)
            if acquiring is not None and not acquiring.done():
                acquiring.cancel()
        if session is not None:
            await session.close()

    async def put(self, name: str, data: FileSlice, *, overwrite: bool) -> PutResult:
        """Upload ``data`` as object ``name`` (multipart or resumable by size).

        Raises:
            ObjectExistsError: ``overwrite`` is False and the object exists.
            IntegrityError: The server's CRC32C, MD5 or size differ from the local ones.
            PermissionDeniedError: The credentials were refused.
            StoreNotFoundError: The bucket does not exist.
            ProviderError: Any other failure, ``transient`` when a retry may help.
        """
        storage = self._storage
        if storage is None:
            raise ProviderError(
                "GCS provider used before open() or after aclose()", name=name, uri=self.uri(name)
            )
        key = join_key(self.prefix, name)
        token = (key, str(data.path), data.offset, data.length)
        resent = token in self._in_doubt
        self._in_doubt.add(token)
        try:
            result = await self._put_once(name, key, data, overwrite=overwrite)
        except ProviderError as exc:
            if resent and isinstance(exc, ObjectExistsError):
                # Our earlier send of this very upload may have been stored with its answer
                # lost: then the object is ours, not a conflict.
                landed = await self._landed(name, key, data)
                if landed is not None:
                    self._in_doubt.discard(token)
                    return landed
            if not exc.transient:
                self._in_doubt.discard(token)
            raise
        self._in_doubt.discard(token)
        return result

    async def _put_once(
        self, name: str, key: str, data: FileSlice, *, overwrite: bool
    ) -> PutResult:
        try:
            # Fetch (and cache) the token first, so a credential failure maps to
            # PermissionDeniedError here rather than surfacing from inside the library.
            await self._auth_headers()
            if data.length > self.resumable_threshold:
                if not overwrite and await self._exists(key):
                    raise ObjectExistsError(f"object {self.uri(name)!r} already exists")
                crc, md5 = await anyio.to_thread.run_sync(_hash_slice, data)
                resp = await self._upload_resumable(key, data, crc, md5, overwrite=overwrite)
            else:
                if data.length > _INLINE_HASH_LIMIT:
                    body, crc, md5 = await anyio.to_thread.run_sync(_read_and_hash, data)
                else:
                    body, crc, md5 = _read_and_hash(data)
                resp = await self._upload_small(key, body, crc, md5, overwrite=overwrite)
        except ProviderError as exc:
            exc.name, exc.uri = name, self.uri(name)
            raise
        except Exception as exc:
            raise self._map(exc, name, overwrite=overwrite) from exc
        return await self._result(name, data, resp, crc, md5)

    async def _landed(self, name: str, key: str, data: FileSlice) -> PutResult | None:
        """The result of an earlier send whose answer was lost, if the stored object is it:
        same size, CRC32C and MD5 as ``data``. None on any mismatch or doubt."""
        assert self._storage is not None
        try:
            meta = await self._storage.download_metadata(
                self.bucket,
                key,
                timeout=self.timeout,  # type: ignore[arg-type]  # passed on to aiohttp as is
            )
            crc, md5 = await anyio.to_thread.run_sync(_hash_slice, data)
        except Exception as exc:
            log.debug("could not check whether %r landed: %s", name, type(exc).__name__)
            return None
        if (str(meta.get("size")), meta.get("crc32c"), meta.get("md5Hash")) != (
            str(data.length),
            crc,
            md5,
        ):
            return None
        log.info("%s: an earlier attempt had stored it (its answer was lost)", self.uri(name))
        generation, etag = meta.get("generation"), meta.get("etag")
        return PutResult(
            etag=etag if isinstance(etag, str) else None,
            version=None if generation is None else str(generation),
            checksum_algorithm="crc32c",
            checksum=crc,
        )

    # -- the read side -----------------------------------------------------------------------

    def _object_url(self, key: str, *, media: bool = False) -> str:
        path = f"/b/{quote(self.bucket, safe='')}/o/{quote(key, safe='')}"
        return f"{self._root}/{'download/' if media else ''}storage/v1{path}"

    def _require_open(self, name: str | None) -> aiohttp.ClientSession:
        if self._session is None or self._storage is None:
            raise ProviderError(
                "GCS provider used before open() or after aclose()",
                name=name,
                uri=None if name is None else self.uri(name),
            )
        return self._session

    async def _get_json(
        self, url: str, params: Mapping[str, str], name: str | None
    ) -> dict[str, Any]:
        """GET a JSON resource (redirects refused, errors mapped for a read)."""
        session = self._require_open(name)
        try:
            headers = await self._auth_headers()
            async with session.get(
                url,
                params=params,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                allow_redirects=False,
            ) as resp:
                _refuse_redirect_answer(resp)
                await _raise_for_status(resp)
                text = await resp.text()
            parsed = json.loads(text)
        except ProviderError:
            raise
        except Exception as exc:
            raise self._map(exc, name, reading=True) from exc
        if not isinstance(parsed, dict):
            raise ProviderError(
                f"GCS answered something other than a JSON object for "
                f"{self.uri(name) if name else self.bucket!r}",
                name=name,
                transient=True,
            )
        return parsed

    def _object_info(self, item: Mapping[str, Any], name: str) -> ObjectInfo:
        """An object resource from the server (untrusted) as an :class:`ObjectInfo`."""
        uri = self.uri(name)
        size = item.get("size")
        if not isinstance(size, str | int) or isinstance(size, bool) or not str(size).isdigit():
            raise ProviderError(
                f"GCS answered an object resource for {uri!r} without a valid size: "
                f"{str(size)[:40]!r}",
                name=name,
                uri=uri,
            )
        checksums: list[Checksum] = []
        for field, algorithm, length in (("crc32c", "crc32c", 4), ("md5Hash", "md5", 16)):
            value = item.get(field)
            if value is None:
                # Composed objects have a CRC32C but no MD5.
                continue
            if not isinstance(value, str) or _b64_length(value) != length:
                raise ProviderError(
                    f"GCS answered a malformed {field} for {uri!r}: {str(value)[:40]!r}",
                    name=name,
                    uri=uri,
                )
            checksums.append(Checksum(algorithm, value))  # type: ignore[arg-type]
        etag = item.get("etag")
        generation = item.get("generation")
        generation = str(generation) if isinstance(generation, str | int) else None
        if isinstance(etag, str) and generation is not None and generation.isdigit():
            if len(self._generations) >= _GENERATION_CACHE:
                self._generations.pop(next(iter(self._generations)))
            self._generations[etag] = generation
        return ObjectInfo(
            name=name,
            size=int(size),
            etag=etag if isinstance(etag, str) else None,
            version=generation,
            last_modified=_parse_time(item.get("updated")),
            checksums=tuple(checksums),
        )

    async def head(self, name: str) -> ObjectInfo:
        """What GCS records about ``name``: size, etag, generation, ``crc32c`` and ``md5Hash``
        (composed objects have no MD5).

        Raises:
            ObjectNotFoundError: No such object.
        """
        key = join_key(self.prefix, name)
        item = await self._get_json(self._object_url(key), {}, name)
        return self._object_info(item, name)

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
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise ConfigError(f"get_range offset must be an int >= 0, got {offset!r}")
        if isinstance(length, bool) or not isinstance(length, int) or length < 1:
            raise ConfigError(f"get_range length must be an int >= 1, got {length!r}")
        session = self._require_open(name)
        key = join_key(self.prefix, name)
        uri = self.uri(name)
        params = {"alt": "media"}
        generation = None
        if etag is not None:
            generation = self._generations.get(etag)
            if generation is None:
                info = await self.head(name)
                if info.etag != etag or info.version is None:
                    raise _changed(uri, name)
                generation = info.version
            params["ifGenerationMatch"] = generation
        try:
            headers = await self._auth_headers()
            headers["Range"] = f"bytes={offset}-{offset + length - 1}"
            # Accepting gzip stops GCS from decompressing an object stored gzip-encoded (it
            # would then ignore the range, and its checksums describe the stored bytes); with
            # auto_decompress off, the bytes arrive exactly as stored.
            headers["Accept-Encoding"] = "gzip"
            async with session.get(
                self._object_url(key, media=True),
                params=params,
                headers=headers,
                timeout=aiohttp.ClientTimeout(
                    total=self.request_timeout(length), sock_connect=self.timeout
                ),
                allow_redirects=False,
                auto_decompress=False,
            ) as resp:
                _refuse_redirect_answer(resp)
                await _raise_for_status(resp)
                served = resp.headers.get("X-Goog-Generation")
                if generation is not None and served is not None and served != generation:
                    raise _changed(uri, name)
                if resp.status != 206 and offset != 0:
                    raise ProviderError(
                        f"GCS ignored the byte range asked of {uri!r} ({resp.status})",
                        name=name,
                        uri=uri,
                        status=resp.status,
                    )
                body = bytearray()
                async for chunk in resp.content.iter_chunked(_CHUNK):
                    body += chunk
                    note_progress()
                    if len(body) > length:
                        raise ProviderError(
                            f"GCS sent more than the {length} bytes asked of {uri!r} at "
                            f"offset {offset}",
                            name=name,
                            uri=uri,
                            status=resp.status,
                        )
        except ProviderError:
            raise
        except Exception as exc:
            raise self._map(exc, name, reading=True) from exc
        if len(body) < length:
            raise ProviderError(
                f"GCS sent {len(body)} of the {length} bytes asked of {uri!r} at offset {offset}",
                name=name,
                uri=uri,
                transient=True,
            )
        return bytes(body)

    async def list(self, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        """Every object whose name (relative to the store's prefix) starts with ``prefix``,
        in name order."""
        base = f"{self.prefix}/" if self.prefix else ""
        params = {"prefix": base + prefix, "maxResults": str(_LIST_PAGE)}
        url = f"{self._root}/storage/v1/b/{quote(self.bucket, safe='')}/o"
        found: list[ObjectInfo] = []
        seen_tokens: set[str] = set()
        for _ in range(_MAX_PAGES):
            page = await self._get_json(url, params, None)
            items = page.get("items") or []
            if not isinstance(items, list):
                raise ProviderError(f"GCS answered a malformed listing of bucket {self.bucket!r}")
            for item in items:
                full = item.get("name") if isinstance(item, dict) else None
                if not isinstance(full, str) or not full.startswith(base + prefix):
                    continue
                rel = full[len(base) :]
                if rel:
                    found.append(self._object_info(item, rel))
            token = page.get("nextPageToken")
            if not token:
                break
            if not isinstance(token, str) or token in seen_tokens:
                raise ProviderError(
                    f"GCS listing of bucket {self.bucket!r} repeats a page token: stopped"
                )
            seen_tokens.add(token)
            params = {**params, "pageToken": token}
        found.sort(key=lambda info: info.name)
        for info in found:
            yield info

    async def delete(self, name: str) -> None:
        """Delete ``name``; a missing object is not an error."""
        session = self._require_open(name)
        key = join_key(self.prefix, name)
        try:
            headers = await self._auth_headers()
            async with session.delete(
                self._object_url(key),
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                allow_redirects=False,
            ) as resp:
                _refuse_redirect_answer(resp)
                if resp.status == 404:
                    await resp.read()
                    return
                await _raise_for_status(resp)
                await resp.read()
        except ProviderError:
            raise
        except Exception as exc:
            raise self._map(exc, name, reading=True) from exc

    # -- the two upload paths (seams a test subclass may wrap) -------------------------------

    async def _upload_small(
        self, key: str, body: bytes, crc: str, md5: str, *, overwrite: bool
    ) -> dict[str, Any] | None:
        """One multipart upload through the library. Returns the object resource it parsed."""
        assert self._storage is not None
        params = {} if overwrite else {"ifGenerationMatch": "0"}
        # The library turns 'a-b' into 'aB' (and lowercases 'md5Hash'): spell keys its way.
        metadata = {"crc32c": crc, "md5-hash": md5}
        resp: dict[str, Any] | None = await self._storage.upload(
            self.bucket,
            key,
            body,
            content_type=_content_type(key),
            parameters=params,
            metadata=metadata,
            # Metadata makes this a multipart upload; never let the library pick resumable.
            force_resumable_upload=False,
            timeout=self.request_timeout(len(body)),  # type: ignore[arg-type]
        )
        return resp

    async def _exists(self, key: str) -> bool:
        """Whether ``key`` exists (object metadata GET; 404 means no)."""
        assert self._storage is not None
        try:
            await self._storage.download_metadata(
                self.bucket,
                key,
                timeout=self.timeout,  # type: ignore[arg-type]  # passed on to aiohttp as is
            )
        except aiohttp.ClientResponseError as exc:
            if exc.status == 404 and self._is_storage_url(exc):
                return False
            raise
        return True

    async def _upload_resumable(
        self, key: str, data: FileSlice, crc: str, md5: str, *, overwrite: bool
    ) -> dict[str, Any] | None:
        """Open a resumable session, then stream the whole slice in one PUT."""
        session = self._session
        assert session is not None
        headers = await self._auth_headers()
        content_type = _content_type(key)
        params = {"uploadType": "resumable", "name": key}
        if not overwrite:
            params["ifGenerationMatch"] = "0"
        meta = json.dumps(
            {"name": key, "contentType": content_type, "crc32c": crc, "md5Hash": md5}
        ).encode()
        url = f"{self._root}/upload/storage/v1/b/{quote(self.bucket, safe='')}/o"
        async with session.post(
            url,
            params=params,
            data=meta,
            headers={
                **headers,
                "Content-Type": "application/json; charset=UTF-8",
                "X-Upload-Content-Type": content_type,
                "X-Upload-Content-Length": str(data.length),
            },
            timeout=aiohttp.ClientTimeout(total=self.timeout),
            allow_redirects=False,
        ) as resp:
            _refuse_redirect_answer(resp)
            await _raise_for_status(resp)
            location = resp.headers.get("Location")
        note_progress()
        if not location:
            raise ProviderError(
                f"GCS did not return a resumable session URL for gs://{self.bucket}/{key}",
                transient=True,
            )
        if not _same_origin(location, self._root):
            # The session URL gets the whole body and the token: only ever the API's own host.
            raise ProviderError(
                f"GCS returned a resumable session URL on another host "
                f"({_origin(location)!r}, not {_origin(self._root)!r}) for "
                f"gs://{self.bucket}/{key}: refused, nothing was sent there",
            )
        async with session.put(
            # The session URL is already encoded: yarl must not encode it again.
            URL(location, encoded=True),
            data=_iter_slice(data),
            headers={
                **headers,
                "Content-Type": content_type,
                "Content-Length": str(data.length),
            },
            timeout=aiohttp.ClientTimeout(
                total=self.request_timeout(data.length), sock_connect=self.timeout
            ),
            # 308 is GCS's "Resume Incomplete", not a redirect to follow.
            allow_redirects=False,
        ) as resp:
            if resp.status != 308 or "Location" in resp.headers:
                # A 308 with a Location is a redirect, not "Resume Incomplete".
                _refuse_redirect_answer(resp)
            await _raise_for_status(resp)
            if resp.status == 308:
                # "Resume Incomplete": the server kept fewer bytes than we sent. The library
                # returns None here; a new attempt starts a fresh session.
                raise ProviderError(
                    f"GCS resumable upload of gs://{self.bucket}/{key} ended incomplete "
                    f"(308, server has {resp.headers.get('Range', 'no bytes')})",
                    status=308,
                    transient=True,
                )
            text = await resp.text()
        parsed: dict[str, Any] | None = json.loads(text) if text.strip() else None
        return parsed

    async def _auth_headers(self) -> dict[str, str]:
        if self._anonymous:
            return {}
        assert self._storage is not None
        try:
            token = await self._storage.token.get()
        except Exception as exc:
            raise _auth_error(exc, self._credential_source()) from exc
        if not token:
            raise PermissionDeniedError("no GCS access token could be obtained")
        return {"Authorization": f"Bearer {token}"}

    # -- results and errors -----------------------------------------------------------------

    async def _result(
        self,
        name: str,
        data: FileSlice,
        resp: dict[str, Any] | None,
        crc: str,
        md5: str,
    ) -> PutResult:
        """The upload's result, checked against the object resource the server answered.

        The server's ``size``, ``crc32c`` and ``md5Hash`` must match what we hashed. On a
        mismatch the generation we just wrote is deleted (only that generation: a newer write
        by someone else stays) and the error is transient, so the engine's retry writes the
        object again, whatever ``overwrite`` is. The result claims a checksum only when the
        server reported that same value.
        """
        uri = self.uri(name)
        if not isinstance(resp, dict) or not resp:
            # gcloud-aio-storage returns None (no exception) when the server answered without
            # a body; the object may or may not exist, so a retry decides.
            raise ProviderError(
                f"GCS upload of {uri!r} returned no object metadata",
                name=name,
                uri=uri,
                transient=True,
            )
        generation = resp.get("generation")
        generation = str(generation) if isinstance(generation, str | int) else None
        for field, ours in (("crc32c", crc), ("md5Hash", md5), ("size", str(data.length))):
            theirs = resp.get(field)
            if theirs is not None and str(theirs) != ours:
                await self._discard(join_key(self.prefix, name), generation)
                raise IntegrityError(
                    self._redactor.scrub(
                        f"GCS stored {uri!r} with {field} {str(theirs)[:64]!r}, local file has "
                        f"{ours!r}"
                        + ("" if generation else " (no generation reported: not deleted)")
                    ),
                    name=name,
                    uri=uri,
                    transient=True,
                )
        etag = resp.get("etag")
        algorithm: str | None = None
        checksum: str | None = None
        if resp.get("crc32c") == crc:
            algorithm, checksum = "crc32c", crc
        elif resp.get("md5Hash") == md5:
            algorithm, checksum = "md5", md5
        # else nothing was confirmed by the server: claim nothing.
        return PutResult(
            etag=etag if isinstance(etag, str) else None,
            version=generation,
            checksum_algorithm=algorithm,
            checksum=checksum,
        )

    async def _discard(self, key: str, generation: str | None) -> None:
        """Delete generation ``generation`` of ``key``, a write that failed its check (best
        effort: a failure is logged)."""
        if generation is None or self._session is None:
            return
        try:
            headers = await self._auth_headers()
            async with self._session.delete(
                self._object_url(key),
                params={"ifGenerationMatch": generation},
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                allow_redirects=False,
            ) as resp:
                await resp.read()
                if resp.status >= 300 and resp.status not in (404, 412):
                    log.warning(
                        "could not delete the unverified upload gs://%s/%s (generation %s): %s",
                        self.bucket,
                        key,
                        generation,
                        resp.status,
                    )
        except Exception as exc:
            log.warning(
                "could not delete the unverified upload gs://%s/%s (generation %s): %s",
                self.bucket,
                key,
                generation,
                type(exc).__name__,
            )

    def _map(
        self,
        exc: Exception,
        name: str | None,
        *,
        overwrite: bool = True,
        bucket_op: bool = False,
        reading: bool = False,
    ) -> ProviderError:
        """Turn a library / aiohttp / local I/O exception into the library's error tree.

        ``exc`` and its whole chain are scrubbed of the access token in place (it becomes the
        ``__cause__`` of what is raised), and so is the returned error's message.
        """
        error = self._map_unscrubbed(
            exc, name, overwrite=overwrite, bucket_op=bucket_op, reading=reading
        )
        self._redactor.scrub_exception(exc)
        self._redactor.scrub_exception(error)
        return error

    def _credential_source(self) -> str:
        if isinstance(self._token, _StaticToken):
            return "access token passed as 'token' (expired, revoked or for another project?)"
        if self._token is not None:
            return "token source passed as 'token'"
        if self.service_file is not None:
            return f"service account key file {self.service_file!r}"
        return (
            "default Google credentials (GOOGLE_APPLICATION_CREDENTIALS, `gcloud auth "
            "application-default login`, or the VM's service account)"
        )

    def _map_unscrubbed(
        self,
        exc: Exception,
        name: str | None,
        *,
        overwrite: bool,
        bucket_op: bool,
        reading: bool,
    ) -> ProviderError:
        uri = self.uri(name) if name is not None else f"gs://{self.bucket}"
        what = f"{uri!r}" if name is not None else f"bucket {self.bucket!r}"
        if isinstance(exc, ProviderError):
            return exc
        if isinstance(exc, _RedirectRefused):
            return _redirect_error(exc.status, exc.location, what, name=name, uri=uri)
        if isinstance(exc, aiohttp.ClientResponseError):
            # It becomes the __cause__ of what we raise: its repr must not carry the token.
            _redact_request_headers(exc)
            if not self._is_storage_url(exc):
                return _auth_error(exc, self._credential_source())
            status = exc.status
            detail = _error_detail(exc.message)
            retry_after = parse_retry_after(exc.headers)
            kw: dict[str, Any] = {"name": name, "uri": uri, "status": status}
            if status in _REDIRECTS:
                location = exc.headers.get("Location", "") if exc.headers else ""
                return _redirect_error(status, location, what, name=name, uri=uri)
            if status == 412 and not overwrite:
                return ObjectExistsError(f"object {uri!r} already exists", **kw)
            if status == 401:
                return PermissionDeniedError(
                    f"GCS refused the credentials for {what} (401 Unauthorized: not a valid, "
                    f"current credential): check the {self._credential_source()}. "
                    f"Server said: {detail}",
                    **kw,
                )
            if status == 403:
                return PermissionDeniedError(
                    f"GCS refused access to {what} with the credentials given (403 Forbidden): "
                    f"check the {self._credential_source()} is the intended account and has "
                    f"the Storage permissions (storage.objects.create / get / list / delete) "
                    f"on bucket {self.bucket!r}. Server said: {detail}",
                    **kw,
                )
            in_session = "upload_id=" in str(exc.request_info.real_url)
            if status == 404 and reading and not bucket_op:
                if re.search(r"bucket", detail, re.IGNORECASE) and not re.search(
                    r"object", detail, re.IGNORECASE
                ):
                    return StoreNotFoundError(f"GCS bucket {self.bucket!r} does not exist", **kw)
                return ObjectNotFoundError(f"GCS object {uri!r} does not exist", **kw)
            if status == 404 and (bucket_op or not in_session):
                # Object-level 404s do not happen on uploads: the bucket is missing.
                return StoreNotFoundError(f"GCS bucket {self.bucket!r} does not exist", **kw)
            if status in (404, 410):
                # A resumable session that expired or vanished: a new attempt opens a new one.
                return ProviderError(
                    f"GCS upload session for {what} is gone ({status}): {detail}",
                    transient=True,
                    **kw,
                )
            if status == 400 and re.search(r"crc32c|md5|checksum|hash", detail, re.IGNORECASE):
                return IntegrityError(
                    f"GCS rejected the body of {what}: {detail}", transient=True, **kw
                )
            transient = status in (408, 429) or status >= 500
            return ProviderError(
                f"GCS request for {what} failed ({status}): {detail}",
                transient=transient,
                retry_after=retry_after,
                **kw,
            )
        if isinstance(exc, TimeoutError):
            return ProviderError(
                f"GCS request for {what} timed out", name=name, uri=uri, transient=True
            )
        if isinstance(exc, _TRANSIENT_EXCEPTIONS):
            return ProviderError(
                f"GCS request for {what} failed: {type(exc).__name__}: {exc}",
                name=name,
                uri=uri,
                transient=True,
            )
        if isinstance(exc, ValueError):
            # An unparseable response body (a proxy's HTML error page...).
            return ProviderError(
                f"GCS returned an unreadable response for {what}: {type(exc).__name__}",
                name=name,
                uri=uri,
                transient=True,
            )
        if isinstance(exc, OSError):
            return ProviderError(
                f"cannot read the file to upload as {what}: {exc}", name=name, uri=uri
            )
        return ProviderError(
            f"GCS request for {what} failed: {type(exc).__name__}: {exc}", name=name, uri=uri
        )

    def _is_storage_url(self, exc: aiohttp.ClientResponseError) -> bool:
        """False when the failed request went to a token endpoint, not to the storage API."""
        try:
            url = str(exc.request_info.real_url)
        except AttributeError:
            return True
        return not self._root or url.startswith(self._root)


# -- helpers ------------------------------------------------------------------------------------


def _redact_request_headers(exc: aiohttp.ClientResponseError) -> None:
    """Blank the Authorization header aiohttp keeps in the error's ``request_info`` (in place)."""
    info = getattr(exc, "request_info", None)
    headers = getattr(info, "headers", None)
    if info is None or not headers or "Authorization" not in headers:
        return
    clean = CIMultiDict(headers)
    clean["Authorization"] = "<redacted>"
    try:
        redacted = info._replace(headers=CIMultiDictProxy(clean))
    except (AttributeError, TypeError):
        return
    exc.request_info = redacted
    # repr() and the traceback show args, which hold the same request_info.
    exc.args = tuple(redacted if a is info else a for a in exc.args)


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme.lower()}://{(parts.hostname or '').lower()}" + (
        f":{parts.port}" if parts.port else ""
    )


def _same_origin(url: str, root: str) -> bool:
    try:
        return _origin(url) == _origin(root)
    except ValueError:
        return False


def _redirect_error(
    status: int, location: str, what: str, *, name: str | None, uri: str | None
) -> ProviderError:
    """A redirect answer: permanent, naming where it pointed (the request was not resent)."""
    where = location[:300] if location else "no Location given"
    return ProviderError(
        f"GCS answered {status} for {what}, redirecting to {where!r}: redirects are not "
        "followed (nothing was sent there); check api_root / STORAGE_EMULATOR_HOST",
        name=name,
        uri=uri,
        status=status,
    )


def _refuse_redirect_answer(resp: aiohttp.ClientResponse) -> None:
    """Raise for a redirect answered to a request sent with ``allow_redirects=False``."""
    if resp.status in _REDIRECTS:
        raise _RedirectRefused(resp.status, str(resp.headers.get("Location", "")))


def _b64_length(value: str) -> int:
    """Decoded length of base64 ``value``, or -1 when it is not valid base64."""
    try:
        return len(base64.b64decode(value, validate=True))
    except ValueError:
        return -1


def _parse_time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _changed(uri: str, name: str) -> ProviderError:
    return ProviderError(
        f"GCS object {uri!r} changed while it was being read (generation no longer matches)",
        name=name,
        uri=uri,
        status=412,
    )


def _service_file_option(opts: dict[str, object]) -> str | None:
    """The key file named by ``service_file``, or by the seed's ``key`` / ``secret``."""
    service_file = opts.pop("service_file", None)
    key = opts.pop("key", None)
    secret = opts.pop("secret", None)
    if service_file is not None and not isinstance(service_file, str | os.PathLike):
        raise ConfigError("GCS option 'service_file' must be a path")
    candidates: list[str] = []
    if isinstance(key, str | os.PathLike) and os.path.isfile(key):
        candidates.append(os.fspath(key))
    if isinstance(secret, str | os.PathLike) and os.path.isfile(secret):
        # libcloud's GCS driver takes key=<service account email>, secret=<key file path>.
        candidates.append(os.fspath(secret))
    elif secret is not None and not candidates:
        # The values are never echoed: they may be secrets.
        raise ConfigError(
            "GCS option 'secret' must be the path of a service-account JSON key file (with "
            "'key' the account's email); HMAC keys are not supported by the JSON API: pass "
            "service_file=<path> or token=<access token> instead"
        )
    if key is not None and not candidates:
        raise ConfigError(
            "GCS option 'key' must be the path of an existing service-account JSON key file; "
            "HMAC keys and client ids are not supported: pass service_file=<path> or "
            "token=<access token> instead"
        )
    if len(candidates) > 1:
        raise ConfigError("GCS options 'key' and 'secret' both name a key file; pass just one")
    if candidates:
        if service_file is not None:
            raise ConfigError("GCS option 'service_file' conflicts with the key file in 'key'")
        return candidates[0]
    return None if service_file is None else os.fspath(service_file)


def _api_root_option(opts: dict[str, object]) -> str | None:
    """``api_root`` / ``endpoint_url``, or one made of the seed's ``host``, ``port``, ``secure``."""
    api_root = opts.pop("api_root", None)
    endpoint_url = opts.pop("endpoint_url", None)
    host = opts.pop("host", None)
    port = opts.pop("port", None)
    secure = opts.pop("secure", None)
    given = [n for n, v in (("api_root", api_root), ("endpoint_url", endpoint_url)) if v]
    if len(given) > 1 or (given and host is not None):
        raise ConfigError("give the GCS endpoint once: api_root, endpoint_url or host/port")
    if secure is not None and not isinstance(secure, bool):
        raise ConfigError(f"GCS option 'secure' must be a bool, got {secure!r}")
    if port is not None and (isinstance(port, bool) or not isinstance(port, int | str)):
        raise ConfigError(f"GCS option 'port' must be an int, got {port!r}")
    if host is None:
        if port is not None:
            raise ConfigError("GCS option 'port' needs 'host'")
        if secure is False:
            raise ConfigError("GCS only serves HTTPS: secure=False needs 'host' (an emulator)")
        root = api_root or endpoint_url
        if root is not None and not isinstance(root, str):
            raise ConfigError("GCS option 'api_root' must be a str URL")
        return root
    if not isinstance(host, str) or not host:
        raise ConfigError(f"GCS option 'host' must be a non-empty str, got {host!r}")
    if "://" in host:
        root = host.rstrip("/")
    else:
        root = f"{'http' if secure is False else 'https'}://{host}"
    if port is not None:
        root = f"{root}:{port}"
    return root


def _check_service_file(path: str) -> None:
    """Refuse a key file that is not a JSON credential, naming the file, never its contents."""
    try:
        with open(path, "rb") as f:
            parsed = json.load(f)
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"GCS service_file {path!r} is not a readable JSON key file ({type(exc).__name__})"
        ) from None
    if not isinstance(parsed, dict) or not isinstance(parsed.get("type"), str):
        raise ConfigError(
            f"GCS service_file {path!r} is not a credential file (no 'type' field); expected a "
            "service-account or authorized-user JSON key"
        )


@functools.cache
def _mime_table() -> mimetypes.MimeTypes:
    # Python's built-in table only: the system's /etc/mime.types maps ".pt" (PyTorch checkpoints)
    # to "application/vnd.snesdev-page-table", and differs from machine to machine.
    return mimetypes.MimeTypes(filenames=())


def _content_type(key: str) -> str:
    return _mime_table().guess_type(key)[0] or "application/octet-stream"


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


def _read_and_hash(data: FileSlice) -> tuple[bytes, str, str]:
    body = data.read_sync()
    return (
        body,
        _b64(google_crc32c.Checksum(body).digest()),
        _b64(hashlib.md5(body, usedforsecurity=False).digest()),
    )


def _hash_slice(data: FileSlice) -> tuple[str, str]:
    """CRC32C and MD5 of a slice, read in chunks (blocking: run it in a worker thread)."""
    crc = google_crc32c.Checksum()
    md5 = hashlib.md5(usedforsecurity=False)
    with open(data.path, "rb") as f:
        f.seek(data.offset)
        left = data.length
        while left:
            chunk = f.read(min(_CHUNK, left))
            if not chunk:
                raise OSError(f"{data.path} is shorter than {data.offset + data.length} bytes")
            crc.update(chunk)
            md5.update(chunk)
            left -= len(chunk)
            # Hashing a large file is work for this attempt: keep the stall watchdog informed.
            note_progress()
    return _b64(crc.digest()), _b64(md5.digest())


def _open_binary(path: str | os.PathLike[str]) -> BinaryIO:
    return open(path, "rb")


async def _iter_slice(data: FileSlice) -> AsyncIterator[bytes]:
    """Yield the slice in 1 MiB chunks, each read in a worker thread."""
    f = await anyio.to_thread.run_sync(_open_binary, data.path)
    try:
        await anyio.to_thread.run_sync(f.seek, data.offset)
        left = data.length
        while left:
            # Back here once the HTTP client has taken the previous chunk: bytes are moving.
            note_progress()
            chunk: bytes = await anyio.to_thread.run_sync(f.read, min(_CHUNK, left))
            if not chunk:
                raise OSError(f"{data.path} shrank while it was being uploaded")
            left -= len(chunk)
            yield chunk
    finally:
        f.close()


async def _raise_for_status(resp: aiohttp.ClientResponse) -> None:
    """Like the library: raise ClientResponseError with the (small) error body as its message."""
    if resp.status >= 400:
        body = await resp.text(errors="replace")
        raise aiohttp.ClientResponseError(
            resp.request_info,
            resp.history,
            status=resp.status,
            message=f"{resp.reason}: {body[:2000]}",
            headers=resp.headers,
        )


def _error_detail(message: str) -> str:
    """The ``error.message`` of Google's JSON error body, else the raw text, shortened."""
    _, _, body = message.partition(": ")
    try:
        parsed = json.loads(body)
        detail = parsed["error"]["message"]
        if isinstance(detail, str) and detail:
            return detail[:300]
    except (ValueError, KeyError, TypeError):
        pass
    return (message or "no detail")[:300]


def _auth_error(exc: Exception, source: str) -> ProviderError:
    """A failure to obtain an access token (the token endpoint's body is never quoted)."""
    status = getattr(exc, "status", None)
    if isinstance(status, int) and (status in (408, 429) or status >= 500):
        return ProviderError(
            f"could not obtain a GCS access token ({status})", status=status, transient=True
        )
    if isinstance(exc, _TRANSIENT_EXCEPTIONS):
        return ProviderError(
            f"could not obtain a GCS access token: {type(exc).__name__}", transient=True
        )
    return PermissionDeniedError(
        f"could not obtain a GCS access token: {type(exc).__name__}"
        + (f" ({status})" if status else "")
        + f"; the credentials were refused or unusable: check the {source}",
        status=status if isinstance(status, int) else None,
    )
