"""The contract between the engine and a backend.

A provider turns one request into one backend call and maps backend errors onto
:mod:`artifact_uploader._errors` (``raise ... from exc``), marking transient ones
(``ProviderError(..., transient=True)``). It knows nothing of staging, journals, retries, threads
or the concurrency limit: the engine calls each method under its one semaphore, retries transient
failures, and drives multipart uploads part by part. The one thing a provider remembers across
those retries is a conditional write whose answer was lost (:class:`~._kit.InDoubt`): when its
resend meets "already exists", the provider checks whether the stored object is its own first
send. Every coroutine runs on the engine's loop; SDK clients are created in
:meth:`Provider.open` and closed in :meth:`Provider.aclose` on that loop. What providers share
beyond this contract (names, endpoints, the error table, hashing) is in :mod:`._kit`.

Capabilities, as small protocols:

- :class:`Provider`: ``put`` writes a whole object in one request (any size the backend accepts
  in one request; a provider may stream a large file in that one call, as GCS resumable uploads do).
- :class:`MultipartProvider`: adds create / put_part / complete / abort. The engine uses it for
  files at or above ``PartPolicy.threshold``, uploading parts concurrently.
- :class:`MultipartListing`: adds ``list_multipart_uploads(name)``, the ids of an object's
  unfinished multipart uploads, so a resume can abort one its journal never recorded.
- :class:`LostCreates`: adds ``has_lost_creates(name)`` and ``lost_creates(name, upload_id)``,
  the ids of uploads that creates whose answers were lost started; the engine aborts them once
  a create succeeds.
- :class:`ReadableProvider`: the read side -- ``head`` (what the store recorded: size, entity tag,
  checksums), ``get_range`` (one ranged GET), ``list`` and ``delete``. The engine's ``download``
  splits large objects into ranges fetched concurrently under the same semaphore and verifies the
  whole file against :attr:`ObjectInfo.checksums`; resume's store checks use ``head`` and ``list``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, Protocol, runtime_checkable

from .._types import FileSlice, MiB, PartResult, PutResult


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


@runtime_checkable
class LostCreates(MultipartProvider, Protocol):
    """A multipart backend that remembers creates whose answers were lost.

    Such a create may still have started an upload nobody holds the id of. Once a create of the
    same name succeeds, the engine asks for those uploads as a request of its own (retried on
    its own, so a failed look never fails the create) and aborts each.
    """

    def has_lost_creates(self, name: str) -> bool:
        """Whether a create of ``name`` went unanswered since the last look (no request): the
        engine asks :meth:`lost_creates` only then, so a multipart upload with nothing lost
        never queues for a request slot to learn it."""
        ...

    async def lost_creates(self, name: str, upload_id: str) -> Sequence[str]:
        """Ids of the uploads of ``name`` started by creates whose answers were lost, never
        ``upload_id`` (the one the engine holds); ``[]`` without a request when none was lost.

        Raises:
            ProviderError: The look failed (``transient`` as for any request).
        """
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
