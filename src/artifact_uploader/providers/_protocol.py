"""The contract between the engine and a backend.

A provider turns one request into one backend call and maps backend errors onto
:mod:`artifact_uploader._errors` (``raise ... from exc``), marking transient ones
(``ProviderError(..., transient=True)``). It knows nothing of staging, journals, retries, threads
or the concurrency limit: the engine calls each method under its one semaphore, retries transient
failures, and drives multipart uploads part by part. Every coroutine runs on the engine's loop;
SDK clients are created in :meth:`Provider.open` and closed in :meth:`Provider.aclose` on that loop.

Capabilities, as small protocols:

- :class:`Provider`: ``put`` writes a whole object in one request (any size the backend accepts
  in one request; a provider may stream a large file in that one call, as GCS resumable uploads do).
- :class:`MultipartProvider`: adds create / put_part / complete / abort. The engine uses it for
  files at or above ``PartPolicy.threshold``, uploading parts concurrently.
- :class:`MultipartListing`: adds ``list_multipart_uploads(name)``, the ids of an object's
  unfinished multipart uploads, so a resume can abort one its journal never recorded.
- :class:`ReadableProvider`: the read side -- ``head`` (what the store recorded: size, entity tag,
  checksums), ``get_range`` (one ranged GET), ``list`` and ``delete``. The engine's ``download``
  splits large objects into ranges fetched concurrently under the same semaphore and verifies the
  whole file against :attr:`ObjectInfo.checksums`; resume's store checks use ``head`` and ``list``.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any, Literal, Protocol, runtime_checkable
from urllib.parse import SplitResult, urlsplit

from .._types import FileSlice, PartResult, PutResult

MiB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class PartLimits:
    """What a backend allows for multipart uploads.

    Attributes:
        min_part_size: Smallest part except the last (S3: 5 MiB).
        max_part_size: Largest part (S3: 5 GiB).
        max_parts: Most parts in one upload (S3: 10,000).
    """

    min_part_size: int = 5 * MiB
    max_part_size: int = 5 * 1024 * MiB
    max_parts: int = 10_000


@runtime_checkable
class Provider(Protocol):
    """A backend that can write an object in one request."""

    @property
    def scheme(self) -> str:
        """URI scheme, e.g. ``"s3"``."""
        ...

    def uri(self, name: str) -> str:
        """Full URI of object ``name`` (which is relative to the store's prefix)."""
        ...

    def check_name(self, name: str) -> None:
        """Raise :class:`InvalidObjectNameError` if the store cannot hold ``name``."""
        ...

    async def open(self, *, verify: bool = True) -> None:
        """Create clients on the running loop; when ``verify``, check the bucket is reachable.

        Raises:
            StoreNotFoundError: The bucket / container / root does not exist.
            PermissionDeniedError: The credentials were refused.
        """
        ...

    async def put(self, name: str, data: FileSlice, *, overwrite: bool) -> PutResult:
        """Write ``data`` as object ``name`` atomically.

        Raises:
            ObjectExistsError: ``overwrite`` is False and the object exists.
            ProviderError: Any other failure, ``transient`` set when a retry may help.
        """
        ...

    async def aclose(self) -> None:
        """Close clients. Idempotent."""
        ...


@runtime_checkable
class MultipartProvider(Provider, Protocol):
    """A backend that can upload one object as parts sent concurrently."""

    @property
    def part_limits(self) -> PartLimits:
        """The backend's part-size and part-count limits."""
        ...

    async def create_multipart(self, name: str, *, overwrite: bool) -> str:
        """Start a multipart upload and return its id."""
        ...

    async def put_part(
        self, name: str, upload_id: str, part_number: int, data: FileSlice
    ) -> PartResult:
        """Upload part ``part_number`` (1-based)."""
        ...

    async def complete_multipart(
        self, name: str, upload_id: str, parts: Sequence[PartResult], *, overwrite: bool
    ) -> PutResult:
        """Assemble the parts into the object; atomic and conditional when ``overwrite`` is False.

        Raises:
            ObjectExistsError: ``overwrite`` is False and the object exists.
        """
        ...

    async def abort_multipart(self, name: str, upload_id: str) -> None:
        """Discard an unfinished upload and its parts. Must not raise if it is already gone."""
        ...


@runtime_checkable
class MultipartListing(MultipartProvider, Protocol):
    """A multipart backend that can name the unfinished uploads of one object.

    Resume uses it to abort the upload a crash left between CreateMultipartUpload reaching the
    store and its id reaching the journal (nothing else knows that id). A backend without it
    leaves such uploads to the store's lifecycle rule for incomplete multipart uploads.
    """

    async def list_multipart_uploads(self, name: str) -> Sequence[str]:
        """Ids of the unfinished multipart uploads of exactly ``name`` (not of longer names)."""
        ...


@dataclass(frozen=True, slots=True)
class Checksum:
    """One digest the store recorded for an object, to verify a download against.

    Attributes:
        algorithm: ``"crc32c"`` (big-endian, 4 bytes) or ``"md5"``.
        value: The digest, base64 of its raw bytes (as S3's ``x-amz-checksum-crc32c``, GCS's
            ``crc32c`` / ``md5Hash`` and Azure's ``Content-MD5`` report it). For a composite
            checksum, the digest of the concatenated raw per-part digests.
        part_size: Set for a composite checksum (S3 multipart ``crc32c`` "...-N" or the multipart
            ETag "hex-N"): every part but the last is this many bytes.
        parts: The number of parts of a composite checksum.
    """

    algorithm: Literal["crc32c", "md5"]
    value: str
    part_size: int | None = None
    parts: int | None = None


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """What a store records about one object (the answer to ``head`` and each ``list`` entry).

    Attributes:
        name: Object name relative to the store's prefix.
        size: Size in bytes.
        etag: The backend's entity tag (for S3 / Azure: quoted as the server sent it), if any.
        version: Version / generation, if the store keeps one.
        last_modified: When the object was written, if the store says.
        checksums: Digests the store recorded. ``list`` may leave this empty; ``head`` fills
            what the store offers cheaply.
    """

    name: str
    size: int
    etag: str | None = None
    version: str | None = None
    last_modified: datetime | None = None
    checksums: tuple[Checksum, ...] = field(default=())


@runtime_checkable
class ReadableProvider(Provider, Protocol):
    """A backend that can read back, list and delete what it stored."""

    async def head(self, name: str) -> ObjectInfo:
        """What the store records about ``name``.

        Raises:
            ObjectNotFoundError: No such object.
        """
        ...

    async def get_range(
        self, name: str, offset: int, length: int, *, etag: str | None = None
    ) -> bytes:
        """Bytes ``offset .. offset + length - 1`` of ``name`` (``length`` >= 1).

        When ``etag`` is given the read is conditional on it (``If-Match``), so every range of
        one download comes from the same object; a changed object raises a transient-free
        :class:`ProviderError` (status 412). Fewer bytes than asked is a transient error.

        Raises:
            ObjectNotFoundError: No such object.
        """
        ...

    def list(self, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        """Every object whose name starts with ``prefix``, in name order (lexicographic UTF-8)."""
        ...

    async def delete(self, name: str) -> None:
        """Delete ``name``. Deleting a missing object is not an error."""
        ...


MAX_NAME_BYTES = 1024


def check_common_name(name: str, *, max_bytes: int = MAX_NAME_BYTES) -> None:
    """Checks every store shares: non-empty, no NUL, not only slashes, at most ``max_bytes``.

    Raises:
        InvalidObjectNameError: Naming the offending value and why.
    """
    from .._errors import InvalidObjectNameError

    if not isinstance(name, str):
        raise InvalidObjectNameError(repr(name), f"must be a str, not {type(name).__name__}")
    if not name.strip("/"):
        raise InvalidObjectNameError(name, "empty (or only slashes)")
    if "\x00" in name:
        raise InvalidObjectNameError(name, "contains a NUL character")
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidObjectNameError(name, f"not valid UTF-8 ({exc.reason})") from None
    if len(encoded) > max_bytes:
        raise InvalidObjectNameError(
            name[:64] + "...", f"{len(encoded)} bytes long, the limit is {max_bytes}"
        )


def join_key(prefix: str, name: str) -> str:
    """Join a store prefix and an object name with exactly one slash."""
    prefix = prefix.strip("/")
    return f"{prefix}/{name}" if prefix else name


def parse_retry_after(headers: Mapping[str, Any] | None) -> float | None:
    """Seconds a ``Retry-After`` header asks for (delta-seconds or an HTTP date), else None.

    Header lookup is tried as given and in lower case, since SDKs differ in header casing.
    """
    if not headers:
        return None
    value = headers.get("Retry-After") or headers.get("retry-after")
    if value is None:
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        try:
            seconds = parsedate_to_datetime(str(value)).timestamp() - time.time()
        except (TypeError, ValueError, IndexError):
            return None
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def is_loopback_host(host: str | None) -> bool:
    """Whether ``host`` names this machine: ``localhost`` or a loopback IPv4/IPv6 address."""
    if not host:
        return False
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_plain_http(url: str, *, label: str, allow_http: bool, what: str = "endpoint") -> None:
    """Refuse a plain ``http://`` URL to a host other than this machine unless ``allow_http``.

    On plain HTTP anyone on the path can read the credentials sent with each request and change
    a body together with its checksum; a loopback emulator is the one place that is harmless.

    Raises:
        ConfigError: Naming the URL's host and the option that allows it.
    """
    from .._errors import ConfigError

    parts = urlsplit(url)
    if parts.scheme.lower() != "http" or is_loopback_host(parts.hostname) or allow_http:
        return
    raise ConfigError(
        f"{label} {what} http://{parts.hostname} is plain HTTP to a host that is not "
        "this machine: credentials and data would travel unencrypted; use https, or pass "
        "allow_http=True if that network is trusted"
    )


def split_store_uri(uri: str, scheme: str, label: str) -> SplitResult:
    """Parse ``scheme://bucket[/prefix]``; refuse other schemes, queries, fragments, userinfo.

    Args:
        uri: The store URI.
        scheme: The scheme expected (``"s3"``, ``"gs"``, ``"az"``).
        label: The store's name in messages ("S3", "GCS", "Azure").

    Raises:
        ConfigError: Naming the URI and what is wrong with it (never echoing embedded
            credentials).
    """
    from .._errors import ConfigError

    parts = urlsplit(uri)
    if parts.scheme.lower() != scheme:
        # "an S3", "an Azure", "a GCS": the article follows how the label is spoken.
        article = "an" if label[0] in "AEIOUS" else "a"
        raise ConfigError(
            f"not {article} {label} URI: {uri!r} (expected {scheme}://bucket[/prefix])"
        )
    if parts.username or parts.password:
        # Never echo the URI back: it may hold a secret.
        raise ConfigError(f"{label} URI must not embed credentials; pass them as options")
    if parts.query or parts.fragment:
        raise ConfigError(f"{label} URI {uri!r} must not carry a query or fragment")
    if not parts.netloc:
        raise ConfigError(
            f"{label} URI {uri!r} names no bucket: expected {scheme}://bucket[/prefix]"
        )
    return parts
