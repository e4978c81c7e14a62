"""The resumer: finish what a previous (crashed) run left in the journal.

The journal is untrusted input (see :mod:`._journal`), and the store is asked only through
provider capabilities: ``MultipartProvider`` (abort), ``MultipartListing`` (unrecorded
uploads) and ``ReadableProvider`` (is it already there?).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from ._core import Core, UploadHandle, succeeded
from ._errors import FailedUpload, UploadError
from ._intake import Prepared
from ._journal import Journal, JournalEntry, staged_problem
from ._report import Reporter
from ._staging import StagedFile, Stager
from ._transfer import Transfer
from ._types import UploadResult
from .providers._protocol import (
    Checksum,
    MultipartListing,
    MultipartProvider,
    Provider,
    ReadableProvider,
)

log = logging.getLogger("artifact_uploader")


@dataclass(frozen=True, slots=True)
class ResumeReport:
    """What :meth:`AsyncUploader.resume` did.

    Attributes:
        uploaded: The objects a previous run left pending, now durable.
        skipped_lines: A message for each corrupt journal line that was skipped.
        already_present: Names of ``overwrite=False`` entries whose object was already in the
            store with exactly the staged bytes (it landed before the crash, but the journal
            did not record it); they were not uploaded again.
        superseded: Names of entries not uploaded because this run had already submitted the
            same name (newer content); their staged copies were deleted.
        bad_entries: A message per journal entry refused as untrusted input, naming it and the
            reason: a wrong type or value, a ``staged`` path outside the staged folder
            (absolute, ``..``), a staged file that is a symbolic link or not a regular file, or
            a name the store refuses. Nothing was uploaded, aborted or deleted for them; one
            refused only for its name stays journalled (another store may take it).
    """

    uploaded: list[UploadResult]
    skipped_lines: list[str]
    already_present: list[str] = field(default_factory=list)
    superseded: list[str] = field(default_factory=list)
    bad_entries: list[str] = field(default_factory=list)


@dataclass(eq=False)
class Resumer:
    """Hands each inherited journal entry over: superseded, already present, failed or
    uploaded again."""

    core: Core
    transfer: Transfer
    reporter: Reporter
    stager: Stager
    journal: Journal

    async def resume(
        self, entries: list[JournalEntry], problems: list[str], bad_entries: list[str]
    ) -> ResumeReport:
        """Resume ``entries``; wait for their uploads; report (failures go to the reporter).

        ``bad_entries`` gets a message for each entry refused now (its staged copy replaced
        since the journal was read).
        """
        handles: list[UploadHandle] = []
        present: list[str] = []
        superseded: list[str] = []
        try:
            for entry in entries:
                handle = await self._hand_over(entry, present, superseded, bad_entries)
                if handle is not None:
                    handles.append(handle)
        finally:
            # Every inherited entry is handed over: nothing left for a newer name to beat.
            self.core.track_names = False
            self.core.submitted.clear()
        await self.core.drain(None)
        uploaded = [r for r in map(succeeded, handles) if r is not None]
        return ResumeReport(
            uploaded=uploaded,
            skipped_lines=list(problems),
            already_present=present,
            superseded=superseded,
            bad_entries=list(bad_entries),
        )

    async def _hand_over(
        self,
        entry: JournalEntry,
        present: list[str],
        superseded: list[str],
        bad_entries: list[str],
    ) -> UploadHandle | None:
        folder = self.stager.folder
        path = folder / entry.staged
        why = staged_problem(folder, entry)
        if why is not None:
            # Replaced since this uploader read the journal: refused, never followed.
            msg = entry.describe(folder, why)
            log.warning(msg)
            bad_entries.append(msg)
            self.journal.done(entry.id)
            return None
        provider = self.transfer.provider
        if isinstance(provider, MultipartProvider):
            # The crashed run's own uploads: always safe to abort.
            for upload_id in entry.multipart_ids:
                await self.transfer.abort(provider, entry.name, upload_id, entry.size)
        if entry.name in self.core.submitted:
            self._supersede(entry, path, superseded)
            return None
        if isinstance(provider, MultipartProvider):
            for upload_id in await unrecorded_uploads(provider, entry.name):
                # Never an upload of this run (a newer submission of the same name).
                if upload_id not in entry.multipart_ids and upload_id not in self.transfer.live_ids:
                    await self.transfer.abort(provider, entry.name, upload_id, entry.size)
        if not self._intact(entry, path):
            return None
        if not entry.overwrite and await already_stored(
            provider, entry.name, path, entry.size, self.transfer.part_size(entry.size)
        ):
            self.journal.done(entry.id)
            path.unlink(missing_ok=True)
            present.append(entry.name)
            return None
        staged = await self._adopt(path, entry)
        if entry.name in self.core.submitted:
            # Submitted again while this resume waited: the newer content wins.
            self.stager.forget(staged)
            self._supersede(entry, path, superseded)
            return None
        try:
            handle = self.core.enqueue(Prepared(entry.name, staged, entry.overwrite), resumed=True)
        except BaseException:
            self.stager.forget(staged)  # closed meanwhile: the entry stays journalled
            raise
        self.reporter.count(files_queued=1, bytes_queued=entry.size)
        return handle

    def _intact(self, entry: JournalEntry, path: Path) -> bool:
        """Whether the staged copy has the journalled size; if not, report it once and drop
        the entry (no later resume can do better: it would fail every one)."""
        try:
            actual = path.lstat().st_size
        except FileNotFoundError:
            actual = -1
        if actual == entry.size:
            return True
        why = "is missing" if actual < 0 else f"has {actual} bytes, journal says {entry.size}"
        self.reporter.add_failure(
            FailedUpload(
                entry.name,
                str(path) if actual >= 0 else None,
                UploadError(
                    f"staged copy {str(path)!r} {why}; cannot resume it (reported "
                    "once: the entry leaves the journal, a short copy is kept)"
                ),
            )
        )
        self.journal.done(entry.id)
        return False

    def _supersede(self, entry: JournalEntry, path: Path, superseded: list[str]) -> None:
        """Drop an inherited entry whose name this run already submitted (newer content)."""
        self.journal.done(entry.id)
        path.unlink(missing_ok=True)
        superseded.append(entry.name)

    async def _adopt(self, path: Path, entry: JournalEntry) -> StagedFile:
        """Count a resumed staged copy against the byte budget without blocking the loop.

        A full budget is freed only by uploads finishing on this loop, so waiting for it here
        would deadlock: the wait runs in a worker thread while the loop keeps uploading. The
        staging folder thus stays within ``max_staged_bytes`` (a copy larger than the whole
        budget is admitted alone, once the rest has drained).
        """
        import anyio.to_thread

        adopt = self.stager.adopt
        if self.stager.budget.limit is None:
            return adopt(path, entry.size, entry.id, entry.source)
        return await anyio.to_thread.run_sync(adopt, path, entry.size, entry.id, entry.source)


# -- what a resume asks the store ----------------------------------------------------------------
#
# Only through the provider protocol: ``head`` (size and the checksums the store recorded),
# ``get_range`` (to compare bytes when the store recorded no checksum) and
# ``list_multipart_uploads``. Any other store, or any error while asking, gives the
# conservative answer: "not known to be there" / "no unrecorded uploads".

_COMPARE_CHUNK = 8 * 1024 * 1024


async def already_stored(
    provider: Provider, name: str, path: Path, size: int, part_size: int | None
) -> bool:
    """True only when the store provably holds exactly the bytes of ``path`` as ``name``.

    Used by resume for ``overwrite=False`` entries: the upload may have landed just before the
    crash, with its ``done`` line lost (or never written). The store's ``head`` must report
    ``size`` bytes and a checksum the staged file matches (CRC32C or MD5, whole-object or
    composite per part; ``part_size`` is this uploader's part size, used when a composite
    checksum does not carry its own). A store that recorded no usable checksum is read back
    and compared byte for byte. Anything else, or any doubt, is False.
    """
    import anyio.to_thread

    if not isinstance(provider, ReadableProvider):
        return False
    try:
        info = await provider.head(name)
        if info.size != size:
            return False
        # CRC32C first: cheaper to compute than MD5.
        for checksum in sorted(info.checksums, key=lambda c: c.algorithm != "crc32c"):
            same = await anyio.to_thread.run_sync(_file_matches, path, checksum, size, part_size)
            if same is not None:
                return same
        return await _same_bytes(provider, name, path, size, info.etag)
    except Exception as exc:
        log.debug("could not compare %r with the stored object: %s", name, type(exc).__name__)
    return False


async def unrecorded_uploads(provider: Provider, name: str) -> list[str]:
    """Ids of unfinished multipart uploads of ``name`` in the store, where it can list them.

    A crash between CreateMultipartUpload reaching the server and its id reaching the journal
    leaves an upload the journal cannot name; resume aborts these as well.
    """
    if not isinstance(provider, MultipartListing):
        return []
    try:
        return [str(i) for i in await provider.list_multipart_uploads(name)]
    except Exception as exc:
        log.debug("could not list multipart uploads of %r: %s", name, type(exc).__name__)
    return []


def _file_matches(
    path: Path, checksum: Checksum, size: int, default_part_size: int | None
) -> bool | None:
    """Whether ``path`` has ``checksum``; None when it cannot be compared (unknown shape,
    no CRC32C implementation, a malformed value)."""
    from ._checksums import crc32c_available, decode_b64

    algorithm = checksum.algorithm
    if algorithm not in ("crc32c", "md5") or (algorithm == "crc32c" and not crc32c_available()):
        return None
    # S3 reports a composite value bare, Azure's composite MD5 as "<base64>-N".
    value, _, suffix = checksum.value.partition("-")
    want = decode_b64(value, 4 if algorithm == "crc32c" else 16)
    if want is None:
        return None
    composite = checksum.parts is not None or checksum.part_size is not None or bool(suffix)
    if not composite:
        return _file_digest(path, algorithm, None)[0] == want
    parts = checksum.parts
    if parts is None and suffix.isdigit():
        parts = int(suffix)
    part_size = checksum.part_size or default_part_size
    if parts is None or part_size is None or part_size < 1:
        return None
    if (-(-size // part_size) if size else 1) != parts:
        return None
    digests = _file_digest(path, algorithm, part_size)
    return _raw_digest(algorithm, b"".join(digests)) == want


def _file_digest(path: Path, algorithm: str, part_size: int | None) -> list[bytes]:
    """Raw digests of ``path`` (one, or one per ``part_size`` bytes), read in bounded chunks."""
    import hashlib

    from ._checksums import crc32c

    out: list[bytes] = []
    with open(path, "rb", buffering=0) as f:
        while True:
            left = part_size
            crc, md5, got = 0, hashlib.md5(usedforsecurity=False), 0
            while left is None or left > 0:
                chunk = f.read(1 << 20 if left is None else min(1 << 20, left))
                if not chunk:
                    break
                got += len(chunk)
                if left is not None:
                    left -= len(chunk)
                if algorithm == "crc32c":
                    crc = crc32c(chunk, crc)
                else:
                    md5.update(chunk)
            if got == 0 and out:
                return out
            out.append(crc.to_bytes(4, "big") if algorithm == "crc32c" else md5.digest())
            if part_size is None or got < part_size:
                return out


def _raw_digest(algorithm: str, data: bytes) -> bytes:
    from ._checksums import digest

    return digest(algorithm, data)


async def _same_bytes(
    provider: ReadableProvider, name: str, path: Path, size: int, etag: str | None
) -> bool:
    """Read the stored object back (bounded chunks, conditional on ``etag``) and compare."""
    import anyio.to_thread

    offset = 0
    f = await anyio.to_thread.run_sync(path.open, "rb")
    try:
        while offset < size:
            n = min(_COMPARE_CHUNK, size - offset)
            stored = await provider.get_range(name, offset, n, etag=etag)
            mine = await anyio.to_thread.run_sync(f.read, n)
            if stored != mine:
                return False
            offset += n
        return bool(await anyio.to_thread.run_sync(f.read, 1) == b"")
    finally:
        f.close()
