"""The intake: what runs in the caller's threads before an upload reaches the loop.

Option validation, the lifecycle and submit gate (:class:`Gate`), and the front end of every
submission: validate the name, stage the file, journal its ``pending`` line, and hand back a
:class:`Prepared` for the loop. Thread-safe; used by ``AsyncUploader`` (through a worker
thread), ``Uploader`` (in the caller's thread) and the process runner's parent.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from ._config import PartPolicy, RetryPolicy, check_positive_int
from ._errors import ConfigError, UploaderClosedError
from ._events import EventKind
from ._journal import Journal, JournalEntry, announce_pending, read, refusal
from ._registry import make_provider
from ._report import Reporter
from ._staging import StagedFile, Stager
from .providers._protocol import Provider

log = logging.getLogger("artifact_uploader")


@dataclass(slots=True)
class Prepared:
    """A staged (and journalled) file ready to hand to the loop."""

    name: str
    staged: StagedFile
    overwrite: bool


@dataclass(frozen=True, slots=True)
class EngineOptions:
    """The loop side's options, validated (picklable: the process runner sends them)."""

    max_concurrency: int = 4
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    parts: PartPolicy = field(default_factory=PartPolicy)
    verify: bool = True

    @classmethod
    def of(
        cls,
        max_concurrency: int,
        retry: RetryPolicy | None,
        parts: PartPolicy | None,
        verify: bool,
    ) -> EngineOptions:
        """Check the options as given to an uploader's constructor.

        Raises:
            ConfigError: Naming the option that is wrong.
        """
        concurrency = check_positive_int(max_concurrency, "max_concurrency")
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise ConfigError(f"retry must be a RetryPolicy, got {retry!r}")
        if parts is not None and not isinstance(parts, PartPolicy):
            raise ConfigError(f"parts must be a PartPolicy, got {parts!r}")
        return cls(concurrency, retry or RetryPolicy(), parts or PartPolicy(), verify)


class Lifecycle(StrEnum):
    """Where an uploader is in its life; it only moves forward."""

    NEW = "new"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


class Gate:
    """An uploader's lifecycle (new -> open -> closing -> closed) and its submit gate.

    Submissions between their start and their hand-off (staging, journalling) are counted:
    close waits for them before it closes the journal and the staging folder under them.
    """

    def __init__(self) -> None:
        self._state = Lifecycle.NEW
        self._submits = 0
        self._submits_stopped = False
        self._submits_cond = threading.Condition()

    @property
    def state(self) -> Lifecycle:
        """Where the uploader is in its life."""
        return self._state

    def move(self, state: Lifecycle) -> None:
        """Enter ``state`` (the facade and the engine drive the lifecycle)."""
        self._state = state

    @property
    def accepting(self) -> bool:
        """Whether a submission may still start (new or open)."""
        return self._state in (Lifecycle.NEW, Lifecycle.OPEN)

    def check_open(self) -> None:
        """Raise UploaderClosedError unless open."""
        if self._state is Lifecycle.NEW:
            raise UploaderClosedError("the uploader is not open: use `async with` or await open()")
        if self._state is not Lifecycle.OPEN:
            raise UploaderClosedError("the uploader is closed; submit() is no longer accepted")

    @contextlib.contextmanager
    def submitting(self, name: str) -> Iterator[None]:
        """Count one submission from its start to its hand-off (any thread)."""
        with self._submits_cond:
            if self._submits_stopped or not self.accepting:
                raise UploaderClosedError(f"the uploader is closed; cannot submit {name!r}")
            self._submits += 1
        try:
            yield
        finally:
            with self._submits_cond:
                self._submits -= 1
                if not self._submits:
                    self._submits_cond.notify_all()

    def stop_submits(self) -> None:
        """Refuse new submissions and wait for those in progress to hand off (blocking).

        Called once uploads have drained, so a staging waiting for budget gets it.
        """
        with self._submits_cond:
            self._submits_stopped = True
            self._submits_cond.wait_for(lambda: not self._submits)

    @property
    def submits_stopped(self) -> bool:
        """Whether :meth:`stop_submits` was called."""
        return self._submits_stopped


def withdraw(
    stager: Stager, journal: Journal | None, staged: StagedFile, exc: BaseException
) -> None:
    """Undo a submission refused with ``exc`` after it was journalled (any thread).

    Its ``pending`` line is ended (or every later resume would report a missing staged copy)
    and its staged copy discarded; in "move" mode the staged file is the caller's only copy: it
    goes back to its source, and if it cannot, it is kept and ``exc`` names where.
    """
    if journal is not None:
        journal.done(staged.id)
    discard(stager, staged, exc)


def discard(stager: Stager, staged: StagedFile, exc: BaseException) -> None:
    """Undo the staging of a submission refused with ``exc`` (see :func:`withdraw`)."""
    kept = stager.discard(staged)
    if kept is not None:
        note = (
            f"the moved file could not be put back at {staged.source!r}; "
            f"it is kept at {str(kept)!r}"
        )
        log.error("%s", note)
        exc.add_note(note)


class Intake:
    """Validate -> stage -> journal, in the caller's threads; owns the staging folder and the
    journal. Build it with :meth:`create`.

    Attributes:
        provider: The store's provider (not opened here).
        stager: The staging folder.
        journal: The journal of a persistent staging folder, else None.
        gate: The lifecycle and submit gate.
        journal_problems: Corrupt journal lines skipped when the folder was read.
        journal_bad_entries: Journal entries refused as untrusted input.
    """

    def __init__(self, provider: Provider, stager: Stager, reporter: Reporter) -> None:
        self.provider = provider
        self.stager = stager
        self.reporter = reporter
        self.gate = Gate()
        self.journal: Journal | None = None
        self._inherited: list[JournalEntry] = []
        self.journal_problems: list[str] = []
        self.journal_bad_entries: list[str] = []
        if stager.persistent:
            try:
                self._inherit()
            except BaseException:
                if self.journal is not None:
                    self.journal.close()
                stager.close()  # the folder lock
                raise

    def __repr__(self) -> str:
        folder = str(self.stager.folder)
        return f"<Intake {self.provider!r} state={self.gate.state} staging={folder!r}>"

    @classmethod
    def create(
        cls,
        store: str | Provider,
        reporter: Reporter,
        *,
        staging_dir: str | os.PathLike[str] | None = None,
        provider_kwargs: Mapping[str, Any] | None = None,
        staging: str = "copy",
        max_staged_bytes: int | None = None,
    ) -> Intake:
        """Build the provider and the staging folder, and read what a previous run left.

        Raises:
            ConfigError: Invalid URI, provider or staging option.
            MissingDependencyError: The store's extra is not installed.
            StagingError: The staging folder is not usable (or in use by a live uploader).
        """
        provider = make_provider(store, provider_kwargs)
        stager = Stager(staging_dir, mode=staging, max_staged_bytes=max_staged_bytes)
        return cls(provider, stager, reporter)

    def _inherit(self) -> None:
        """Read what a previous run left in the journal; keep only what may be acted on.

        The journal is untrusted input: a bad entry (wrong types, a ``staged`` path outside the
        staged folder, a staged file that is a link, a name this store refuses) is reported and
        never acted on. Entries a previous (crashed) run left pending stay journalled until
        resumed, and are announced.
        """
        folder = self.stager.folder
        found = read(folder)
        self.journal_problems = found.skipped_lines
        self.journal_bad_entries = list(found.bad_entries)
        keep: list[JournalEntry] = []
        for entry in found.entries:
            refused = refusal(self.provider, folder, entry)
            if refused is None:
                self._inherited.append(entry)
                keep.append(entry)
                continue
            why, keep_it = refused
            msg = entry.describe(folder, why)
            log.warning(msg)
            self.journal_bad_entries.append(msg)
            if keep_it:
                keep.append(entry)
        self.journal = Journal(folder)
        self.journal.compact(keep)
        announce_pending(folder, len(self._inherited))

    # -- what a previous run left ------------------------------------------------------------

    @property
    def inherited(self) -> list[JournalEntry]:
        """Entries a previous run left pending and no resume has taken yet (a copy)."""
        return list(self._inherited)

    def take_inherited(self) -> list[JournalEntry]:
        """The entries awaiting a resume, handed over (none are left)."""
        entries, self._inherited = self._inherited, []
        return entries

    # -- submissions (any thread) ------------------------------------------------------------

    def submitting(self, name: str) -> contextlib.AbstractContextManager[None]:
        """Count a submission until its hand-off; see :meth:`Gate.submitting`."""
        return self.gate.submitting(name)

    def prepare(
        self,
        path: str | os.PathLike[str],
        name: str,
        overwrite: bool,
        timeout: float | None,
        staging: str | None = None,
    ) -> Prepared:
        """Validate, stage and journal ``path`` (blocking; any thread)."""
        if not self.gate.accepting:
            raise UploaderClosedError(f"the uploader is closed; cannot submit {name!r}")
        self.provider.check_name(name)
        if not isinstance(overwrite, bool):
            raise ConfigError(f"overwrite must be a bool, got {overwrite!r}")
        # Here rather than in submit(), so the sync facade (which stages through this method in
        # the caller's thread) reports it too.
        self.reporter.emit(EventKind.QUEUED, name, 0)
        staged = self.stager.stage(path, timeout=timeout, mode=staging)
        return self._record(name, staged, overwrite)

    def prepare_bytes(self, data: bytes, name: str, overwrite: bool) -> Prepared:
        """Stage ``data`` as a file and journal it (blocking; any thread)."""
        self.provider.check_name(name)
        self.reporter.emit(EventKind.QUEUED, name, 0)
        staged = self.stager.write_bytes(data, Path(name).name or "object")
        return self._record(name, staged, overwrite)

    def _record(self, name: str, staged: StagedFile, overwrite: bool) -> Prepared:
        if self.journal is not None:
            try:
                self.journal.pending(
                    JournalEntry(
                        id=staged.id,
                        name=name,
                        staged=str(staged.path.relative_to(self.stager.folder)),
                        size=staged.size,
                        overwrite=overwrite,
                        source=staged.source,
                    )
                )
            except BaseException as exc:
                discard(self.stager, staged, exc)
                raise
        self.reporter.count(files_queued=1, bytes_queued=staged.size)
        self.reporter.emit(EventKind.STAGED, name, staged.size)
        return Prepared(name, staged, overwrite)

    def withdraw(self, prepared: Prepared, exc: BaseException) -> None:
        """Undo a prepared submission the loop refused with ``exc`` (see :func:`withdraw`)."""
        withdraw(self.stager, self.journal, prepared.staged, exc)

    def forget(self, staged: StagedFile) -> None:
        """Stop counting ``staged`` against the byte budget (its upload ended elsewhere)."""
        self.stager.forget(staged)

    @property
    def lock_fd(self) -> int | None:
        """The staging folder's lock (a process runner passes it to its child), if any."""
        return self.stager.lock_fd

    # -- closing -----------------------------------------------------------------------------

    def stop_submits(self) -> None:
        """Refuse new submissions; wait for those staging to hand off (blocking)."""
        self.gate.stop_submits()

    def close_files(self) -> None:
        """Compact the journal to what is still pending, close it and the staging folder."""
        if self.journal is not None:
            # What is still pending on disk (failed, cancelled, or inherited and not resumed)
            # stays journalled; everything done is dropped.
            pending = read(self.stager.folder, log_problems=False).entries
            self.journal.compact(pending)
            self.journal.close()
        self.stager.close()

    def close_unopened(self) -> None:
        """Close for an uploader whose loop never opened (or is gone): let submissions still
        staging hand off, then, if never opened, close the journal and staging folder."""
        self.stop_submits()
        if self.gate.state is Lifecycle.NEW:
            self.gate.move(Lifecycle.CLOSED)
            self.close_files()
