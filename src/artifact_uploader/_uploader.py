"""AsyncUploader: the asyncio facade wiring the engine's rooms.

- :mod:`._intake`: option validation, the lifecycle and submit gate, validate -> stage ->
  journal (thread-safe; staging runs in a worker thread here);
- :mod:`._engine`: the loop side (:mod:`._core` scheduling, :mod:`._transfer` requests,
  :mod:`._resume`, the read side of :mod:`._download`), built when the uploader opens;
- :mod:`._report`: counters, events and failures (a :class:`~._report.LocalReporter`).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

from ._config import PartPolicy, RetryPolicy
from ._core import DependencyFailedError, UploadHandle
from ._download import Reads, _ReadSide
from ._engine import Engine, close_local, open_local
from ._errors import ConfigError, FailedUpload, UploaderClosedError, UploadFailedError
from ._events import EventCallback, ProgressTotals, UploadEvent
from ._intake import EngineOptions, Intake, Lifecycle
from ._journal import JournalEntry
from ._report import LocalReporter
from ._resume import ResumeReport
from ._types import UploadResult
from .providers._protocol import Provider

__all__ = [
    "AsyncUploader",
    "DependencyFailedError",
    "ResumeReport",
    "UploadHandle",
]


class AsyncUploader(_ReadSide):
    """Uploads files to an object store in the background, on the running asyncio loop.

    Use it as ``async with AsyncUploader("s3://bucket/prefix") as up:``. ``submit`` returns as
    soon as the file is staged; the upload runs behind the caller.

    It reads back too: :meth:`download` (ranged, verified, atomic), :meth:`head`,
    :meth:`exists` and :meth:`list`, under the same concurrency limit and retry policy.

    Args:
        store: A URI (``file:///abs/dir``, ``s3://bucket/prefix``, ``gs://bucket/prefix``,
            ``az://container/prefix``) or a provider instance.
        max_concurrency: Most requests in flight at once (whole objects and parts alike). Default 4.
        staging_dir: Persistent staging folder: uploads are journalled there and can be resumed
            after a crash. Default None: a private temporary folder.
        provider_kwargs: Options for the provider built from ``store`` (endpoint, credentials...).
        staging: "copy" (default), "reflink", "link", "move" or "auto". See the staging docs.
        max_staged_bytes: Bound on bytes held in staging; ``submit`` waits when full. Default None.
        retry: Retry policy for transient errors. Default ``RetryPolicy()``.
        parts: Multipart policy. Default ``PartPolicy()``.
        verify: Check the store is reachable when opening. Default True.
        on_event: Called (on the loop or the submitting thread) with every progress event.

    Raises:
        ConfigError: Invalid option, URI, or provider name; raised here, not at first upload.
        MissingDependencyError: The store's extra is not installed.
        StagingError: The staging folder is not usable.
    """

    def __init__(
        self,
        store: str | Provider,
        *,
        max_concurrency: int = 4,
        staging_dir: str | os.PathLike[str] | None = None,
        provider_kwargs: Mapping[str, Any] | None = None,
        staging: str = "copy",
        max_staged_bytes: int | None = None,
        retry: RetryPolicy | None = None,
        parts: PartPolicy | None = None,
        verify: bool = True,
        on_event: EventCallback | None = None,
    ) -> None:
        options = EngineOptions.of(max_concurrency, retry, parts, verify)
        self.max_concurrency = options.max_concurrency
        self.retry = options.retry
        self.parts = options.parts
        self.verify = verify
        self._options = options
        self._reporter = LocalReporter(on_event)
        self._intake = Intake.create(
            store,
            self._reporter,
            staging_dir=staging_dir,
            provider_kwargs=provider_kwargs,
            staging=staging,
            max_staged_bytes=max_staged_bytes,
        )
        self.provider: Provider = self._intake.provider
        # The intake's lists: a resume appends the entries it refuses to the second.
        self.journal_problems: list[str] = self._intake.journal_problems
        self.journal_bad_entries: list[str] = self._intake.journal_bad_entries
        self._engine: Engine | None = None  # built on the loop, by open()

    def __repr__(self) -> str:
        return (
            f"<AsyncUploader {self.provider!r} state={self._intake.gate.state} "
            f"max_concurrency={self.max_concurrency} staging={str(self.staging_folder)!r}>"
        )

    @property
    def staging_folder(self) -> Path:
        """The staging folder in use."""
        return self._intake.stager.folder

    @property
    def totals(self) -> ProgressTotals:
        """Running totals: files and bytes queued, sent, failed, in flight."""
        return self._reporter.totals

    # -- lifecycle --------------------------------------------------------------------------

    async def __aenter__(self) -> AsyncUploader:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def open(self) -> None:
        """Open the provider on this loop (and check the store unless ``verify=False``)."""
        intake = self._intake
        if intake.gate.state is not Lifecycle.NEW:
            if intake.gate.state is Lifecycle.OPEN:
                return
            raise UploaderClosedError("this uploader was closed; create a new one")
        self._engine = await open_local(intake, self._reporter, self._options)

    def _opened(self) -> Engine:
        """The engine, once open (raises UploaderClosedError otherwise)."""
        self._intake.gate.check_open()
        assert self._engine is not None  # open implies built
        return self._engine

    def _reads(self) -> Reads:
        return self._opened().reads

    # -- submitting -------------------------------------------------------------------------

    async def submit(
        self,
        path: str | os.PathLike[str],
        name: str,
        *,
        overwrite: bool = True,
        timeout: float | None = None,
        staging: str | None = None,
    ) -> UploadHandle:
        """Stage ``path`` and start uploading it as ``name``; return once it is staged.

        Args:
            path: Local file to upload.
            name: Object name, relative to the store's prefix.
            overwrite: Replace an existing object. False makes the write conditional
                (atomic where the store supports it) and fails with ObjectExistsError.
            timeout: Seconds to wait for staging space when ``max_staged_bytes`` is full.
            staging: Override the uploader's staging mode for this file.

        Returns:
            A handle; ``await handle`` gives the :class:`UploadResult` once durable.

        Raises:
            SourceFileError: ``path`` is missing, a directory or unreadable.
            InvalidObjectNameError: The store cannot hold ``name``.
            StagingError, StagingTimeoutError: Staging failed; nothing half-staged remains.
            UploaderClosedError: The uploader is closed.
        """
        import anyio.to_thread

        engine = self._opened()
        intake = self._intake
        with intake.submitting(name):
            prepared = await anyio.to_thread.run_sync(
                intake.prepare, path, name, overwrite, timeout, staging
            )
            if intake.gate.state is not Lifecycle.OPEN:
                exc = UploaderClosedError(f"the uploader closed while staging {name!r}")
                # Its pending line is already journalled: end it, or every later resume would
                # report a missing staged copy.
                intake.withdraw(prepared, exc)
                raise exc
            return engine.enqueue(prepared)

    async def upload(
        self, path: str | os.PathLike[str], name: str, *, overwrite: bool = True
    ) -> UploadResult:
        """Upload ``path`` as ``name`` and return once it is durable."""
        return await (await self.submit(path, name, overwrite=overwrite))

    # -- waiting and closing ----------------------------------------------------------------

    async def flush(self, timeout: float | None = None) -> None:
        """Wait until every upload submitted so far has finished.

        Raises:
            UploadFailedError: Listing every upload that failed since the last flush (each
                failure is reported once), with its kept staged copy.
            TimeoutError: ``timeout`` expired first (nothing is cancelled).
        """
        if self._intake.gate.state is Lifecycle.NEW:
            return
        if self._engine is not None:
            await self._engine.flush(timeout)
        self._raise_failures()

    def _raise_failures(self, context: str = "") -> None:
        failures = self._reporter.take_failures()
        if failures:
            raise UploadFailedError(failures, context=context)

    def _take_failures(self) -> list[FailedUpload]:
        """Failures not yet reported (clearing them)."""
        return self._reporter.take_failures()

    def failures(self) -> list[FailedUpload]:
        """Failures not yet reported, without clearing them."""
        return self._reporter.failures()

    async def aclose(self, timeout: float | None = None) -> None:
        """Wait for pending uploads (up to ``timeout``), then close. Idempotent.

        Uploads still running at the timeout are cancelled (multipart uploads are aborted) and
        reported; their staged copies are kept (and, in a persistent staging folder, stay
        journalled for :meth:`Uploader.resume`). An upload cancelled while its
        CreateMultipartUpload was in flight never learned its upload id, so it cannot be
        aborted here: with a persistent staging folder, :meth:`resume` aborts it (on stores
        that list unfinished uploads, S3); otherwise the store's lifecycle rule for incomplete
        multipart uploads removes it.

        Returns within ``timeout + 2 * min(10, max(1, timeout))`` seconds whatever the store
        does (aborts, then closing the provider, each get that cleanup budget), except that a
        ``submit`` still staging when the close began is let finish (then refused).

        Raises:
            UploadFailedError: Listing every upload that failed or did not finish.
        """
        intake = self._intake
        if intake.gate.state in (Lifecycle.CLOSING, Lifecycle.CLOSED):
            return
        if intake.gate.state is Lifecycle.NEW or self._engine is None:
            intake.gate.move(Lifecycle.CLOSED)
            intake.close_files()
            return
        await close_local(self._engine, intake, self._reporter, timeout)
        self._raise_failures("before close")

    @property
    def pending_from_previous_run(self) -> list[JournalEntry]:
        """Journal entries a previous run of this staging folder left unfinished."""
        return self._intake.inherited

    async def resume(self) -> ResumeReport:
        """Upload what a previous run left pending in this (persistent) staging folder.

        Orphaned multipart uploads are aborted first: those the journal recorded and, where the
        store can list them (S3), any other unfinished upload of the same object name, which a
        crash right after CreateMultipartUpload leaves unrecorded. Each object is then uploaded
        again from its staged copy. An ``overwrite=False`` entry whose object is already in the
        store with exactly the staged bytes (it landed, but the crash lost its ``done`` line) is
        completed without uploading it again; one whose stored object differs (or cannot be
        compared) fails with :class:`ObjectExistsError` and stays journalled. Completed entries
        leave the journal.

        Returns:
            A report of what was uploaded and which journal lines were skipped as corrupt.

        Raises:
            ConfigError: The uploader has no persistent staging folder.
            UploadFailedError: Some pending uploads failed again (they stay journalled). An
                entry whose staged copy is missing or short can never be resumed: it is
                reported once and leaves the journal (a short copy is kept and named).
        """
        engine = self._opened()
        intake = self._intake
        if intake.journal is None:
            raise ConfigError("resume needs a persistent staging folder (staging_dir=...)")
        report = await engine.resume(
            intake.take_inherited(), self.journal_problems, self.journal_bad_entries
        )
        self._raise_failures("while resuming")
        return report

    # -- events -----------------------------------------------------------------------------

    async def events(self) -> AsyncIterator[UploadEvent]:
        """Iterate over progress events from now until the uploader closes.

        A consumer that falls more than 10,000 events behind loses the oldest ones rather than
        growing memory without bound.
        """
        async for event in self._reporter.events():
            yield event
