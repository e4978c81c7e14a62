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
from ._journal import Journal, JournalEntry, already_stored, staged_problem, unrecorded_uploads
from ._report import Reporter
from ._staging import StagedFile, Stager
from ._transfer import Transfer
from ._types import UploadResult
from .providers._protocol import MultipartProvider

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
                await self.transfer.abort(provider, entry.name, upload_id)
        if entry.name in self.core.submitted:
            self._supersede(entry, path, superseded)
            return None
        if isinstance(provider, MultipartProvider):
            for upload_id in await unrecorded_uploads(provider, entry.name):
                # Never an upload of this run (a newer submission of the same name).
                if upload_id not in entry.multipart_ids and upload_id not in self.transfer.live_ids:
                    await self.transfer.abort(provider, entry.name, upload_id)
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
