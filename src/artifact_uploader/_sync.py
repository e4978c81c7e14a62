"""Uploader: the sync facade. Stages in the caller's thread; uploads on its own loop thread,
or in a child process with ``use_procs=True`` (see :mod:`artifact_uploader._procs`).

An :class:`Uploader` wires three parts: the :class:`~._intake.Intake` (validate, stage, journal;
in the caller's thread), a :class:`~._report.LocalReporter` (totals, events, failures) and a
:class:`Runner` that runs the loop-side engine: :class:`ThreadRunner` here, or
:class:`~._procs.ProcessRunner`. Both runners feed the same reporter, so ``flush``/``close``
report failures the same way in both modes.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import functools
import logging
import os
import pickle
import threading
import warnings
import weakref
from collections.abc import Mapping
from typing import Any, Protocol

from anyio.from_thread import BlockingPortal, start_blocking_portal

from ._config import PartPolicy, RetryPolicy
from ._download import _SyncReadSide, check_read_timeout
from ._engine import close_local, open_local
from ._errors import ConfigError, FailedUpload, UploaderClosedError, UploadError, UploadFailedError
from ._events import EventCallback, ProgressTotals
from ._intake import EngineOptions, Intake, Prepared
from ._journal import JournalEntry, resuming
from ._procs import ProcessRunner
from ._report import LocalReporter
from ._resume import ResumeReport
from ._types import UploadResult
from .providers._protocol import Provider

log = logging.getLogger("artifact_uploader")

# ``use_procs=None`` picks processes from this many usable cores. Below it the child competes
# with the training loop for the same cores: on the 2-core benchmark machine the loop kept
# 0.63-0.80 of its speed with ``use_procs=True`` against 0.73-0.87 in thread mode while
# uploading small files (docs/benchmarks.md). From 4 cores a spare one is likely.
PROCS_MIN_CORES = 4


def usable_cores() -> int:
    """How many cores this process may run on (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def resolve_use_procs(use_procs: bool | None, provider: Provider) -> bool:
    """``use_procs`` as given, or for ``None``: processes when :data:`PROCS_MIN_CORES` cores
    are usable and the provider can be sent to a child process, threads otherwise."""
    if use_procs is not None:
        return use_procs
    if usable_cores() < PROCS_MIN_CORES:
        return False
    try:
        pickle.dumps(provider)
    except Exception:
        # A provider that only lives in this process (MemoryProvider, a closure...): the
        # automatic choice must not turn a working default into a ConfigError.
        return False
    return True


class Runner(Protocol):
    """Where the uploads run: a loop thread (:class:`ThreadRunner`) or a child process
    (:class:`~._procs.ProcessRunner`). The Uploader stages (its intake), hands off, and waits;
    failures, totals and events reach its reporter either way."""

    # The thread that resolves futures (and runs their callbacks): calling back into the
    # uploader from it would deadlock.
    thread_ident: int
    worker_pid: int

    def check_alive(self) -> None:
        """Raise UploaderClosedError if the runner died (a child process)."""
        ...

    def hand_off(
        self, prepared: Prepared, after: concurrent.futures.Future[Any] | None
    ) -> concurrent.futures.Future[UploadResult]:
        """Start uploading a staged file (after ``after``, a future of the same uploader)."""
        ...

    def flush(self, timeout: float | None) -> None:
        """Wait for every upload handed off so far; TimeoutError if ``timeout`` expires."""
        ...

    def close(self, timeout: float | None) -> None:
        """Drain (up to ``timeout``), stop, and close the intake's journal and folder."""
        ...

    def resume(
        self, entries: list[JournalEntry], skipped_lines: list[str], bad_entries: list[str]
    ) -> ResumeReport:
        """Upload what a previous run left journalled (the intake vetted the entries)."""
        ...

    def read(
        self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any], timeout: float | None
    ) -> Any:
        """download / head / exists / list, on the runner's loop."""
        ...


class ThreadRunner:
    """The loop-side engine on an event loop in one background thread (anyio's portal)."""

    def __init__(self, intake: Intake, reporter: LocalReporter, options: EngineOptions) -> None:
        self._intake = intake
        self._reporter = reporter
        self.worker_pid = os.getpid()
        self._portal_cm = start_blocking_portal("asyncio", name="artifact-uploader")
        self._portal: BlockingPortal = self._portal_cm.__enter__()
        try:
            self.thread_ident: int = self._portal.call(threading.get_ident)
            self._engine = self._portal.call(open_local, intake, reporter, options)
        except BaseException as exc:
            # Passing the exception on makes the portal cancel the open still running on its
            # loop (a Ctrl-C here must not wait for the store to answer).
            self._portal_cm.__exit__(type(exc), exc, exc.__traceback__)
            raise

    def check_alive(self) -> None:
        return None

    def hand_off(
        self, prepared: Prepared, after: concurrent.futures.Future[Any] | None
    ) -> concurrent.futures.Future[UploadResult]:
        future: concurrent.futures.Future[UploadResult] = concurrent.futures.Future()
        engine = self._engine
        # Scheduled, not awaited: a blocking round trip to a busy loop thread would cost the
        # caller more than staging a small file. Callbacks run in order, so per-name ordering
        # holds; a refused hand-off fails the future (Core.enqueue_threadsafe).
        try:
            engine.loop.call_soon_threadsafe(engine.enqueue_threadsafe, prepared, future, after)
        except RuntimeError:  # the loop is closed: so is the uploader
            raise UploaderClosedError(
                "the uploader is closed; submit() is no longer accepted"
            ) from None
        return future

    def flush(self, timeout: float | None) -> None:
        self._portal.call(self._engine.flush, timeout)

    def close(self, timeout: float | None) -> None:
        try:
            self._portal.call(close_local, self._engine, self._intake, self._reporter, timeout)
        except BaseException as exc:
            # As in __init__: an interrupted close cancels what is left on the loop.
            with contextlib.suppress(Exception):
                self._portal_cm.__exit__(type(exc), exc, exc.__traceback__)
            raise
        with contextlib.suppress(Exception):
            self._portal_cm.__exit__(None, None, None)

    def resume(
        self, entries: list[JournalEntry], skipped_lines: list[str], bad_entries: list[str]
    ) -> ResumeReport:
        return self._portal.call(self._engine.resume, entries, skipped_lines, bad_entries)

    def read(
        self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any], timeout: float | None
    ) -> Any:
        return self._portal.call(self._engine.read_call, method, args, kwargs, timeout)


class Uploader(_SyncReadSide):
    """The synchronous twin of :class:`AsyncUploader`, for training loops.

    ``submit`` blocks only while the file is staged, then returns a
    :class:`concurrent.futures.Future`; the upload runs on an event loop in one background thread
    that this object owns (anyio's blocking portal), or, with ``use_procs=True``, in a child
    process. Use it as a context manager, or call :meth:`close`. An uploader left open at
    interpreter exit is flushed then, with a warning.

    ``download``, ``head``, ``exists`` and ``list`` are the blocking twins of the engine's read
    side (with an optional ``timeout``); with ``use_procs=True`` they run in the child process.

    With ``use_procs=True`` the API and behaviour are the same: staging and the journal's
    ``pending`` record (fsync'd) still happen in the caller's thread before ``submit`` returns;
    the event loop, the SDK clients, retries and checksums run in a child process (started
    with ``sys.executable``; about a second of start-up), so they do not compete with the
    training loop for this process's GIL. Uploads of one object name keep their order, failures
    arrive with the same exception types, and ``close``/``resume``/at-exit flushing work
    alike. The child exits when this process dies (what it did not finish stays journalled);
    if the child dies, its pending uploads fail with :class:`UploaderClosedError` and later
    calls raise it. The store must be a URI or a picklable provider (not ``MemoryProvider``);
    ``on_event`` then runs on this process's results thread. :attr:`worker_pid` is the child's
    pid (e.g. to pin it to a core with ``os.sched_setaffinity``). It pays off when a core is
    free for the child: where every core is busy, the two processes compete for CPU time
    instead of for the GIL.

    Args:
        store: A URI (``file:///abs/dir``, ``s3://bucket/prefix``, ...) or a provider instance.
        max_concurrency: Most requests in flight at once. Default 4.
        staging_dir: Persistent, journalled staging folder (resumable). Default: a temp folder.
        provider_kwargs: Options for the provider built from ``store``.
        staging: "copy" (default), "reflink", "link", "move" or "auto".
        max_staged_bytes: Bound on staged bytes; ``submit`` waits when full. Default None.
        retry: Retry policy for transient errors.
        parts: Multipart policy.
        verify: Check the store is reachable at construction. Default True.
        on_event: Progress callback; runs on the loop thread (the results thread with
            ``use_procs``, the submitting thread for "queued" / "staged"), so keep it short.
        use_procs: Run the event loop and the uploads in a child process (True) or in a
            thread (False). Default None: a child process when at least 4 cores are usable
            (``os.sched_getaffinity``) and the provider can be sent to it, a thread otherwise;
            :attr:`use_procs` holds the choice.

    Raises:
        ConfigError: Invalid option, URI or provider (with ``use_procs``, a provider that
            cannot be sent to a process); MissingDependencyError for a missing extra.
        StagingError: The staging folder is not usable.
        StoreNotFoundError, PermissionDeniedError: The store is unreachable (when ``verify``).
        UploadError: With ``use_procs``, the child process could not start.
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
        use_procs: bool | None = None,
    ) -> None:
        if use_procs is not None and not isinstance(use_procs, bool):
            raise ConfigError(f"use_procs must be a bool or None, got {use_procs!r}")
        options = EngineOptions.of(max_concurrency, retry, parts, verify)
        self._reporter = LocalReporter(on_event)
        self._intake = Intake.create(
            store,
            self._reporter,
            staging_dir=staging_dir,
            provider_kwargs=provider_kwargs,
            staging=staging,
            max_staged_bytes=max_staged_bytes,
        )
        self._pid = os.getpid()
        self._closed = False
        self._close_lock = threading.Lock()
        self._runner: Runner
        try:
            # True or False as resolved: what this uploader actually does.
            self.use_procs = resolve_use_procs(use_procs, self._intake.provider)
            if self.use_procs:
                self._runner = ProcessRunner(
                    self._intake, self._reporter, options, forward_events=on_event is not None
                )
            else:
                self._runner = ThreadRunner(self._intake, self._reporter, options)
        except BaseException:
            self._closed = True
            self._intake.close_unopened()  # the staging folder's lock and temporary folder
            raise
        self._loop_thread = self._runner.thread_ident
        # A weak reference: the hook must not keep an abandoned uploader alive.
        self._at_exit = functools.partial(_close_at_exit, weakref.ref(self))
        atexit.register(self._at_exit)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<Uploader {self._intake.provider!r} {state}>"

    def __enter__(self) -> Uploader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def provider(self) -> Provider:
        """The provider in use."""
        return self._intake.provider

    @property
    def staging_folder(self) -> str:
        """The staging folder in use."""
        return str(self._intake.stager.folder)

    @property
    def worker_pid(self) -> int:
        """The pid of the process running the uploads: this one, or the child with
        ``use_procs=True``."""
        return self._runner.worker_pid

    @property
    def totals(self) -> ProgressTotals:
        """Running totals: files and bytes queued, sent, failed, in flight."""
        return self._reporter.totals

    def uri(self, name: str) -> str:
        """The URI object ``name`` has (or will have) in the store."""
        return self._intake.provider.uri(name)

    def _check_usable(self, what: str) -> None:
        if os.getpid() != self._pid:
            raise UploaderClosedError(
                f"this Uploader belongs to process {self._pid}, not this forked child "
                f"({os.getpid()}); create a new Uploader in the child"
            )
        if self._closed:
            raise UploaderClosedError(f"the uploader is closed; cannot {what}")
        if threading.get_ident() == self._loop_thread:
            raise RuntimeError(
                f"Uploader.{what.split()[0]}() was called from the uploader's own loop thread "
                "(e.g. a future callback); it would deadlock. Call it from another thread."
            )

    def _blocking_read(
        self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any], timeout: float | None
    ) -> Any:
        self._check_usable(method)
        check_read_timeout(timeout)
        return self._runner.read(method, args, kwargs, timeout)

    def submit(
        self,
        path: str | os.PathLike[str],
        name: str,
        *,
        overwrite: bool = True,
        timeout: float | None = None,
        staging: str | None = None,
    ) -> concurrent.futures.Future[UploadResult]:
        """Stage ``path`` (blocking) and upload it as ``name`` in the background.

        Args:
            path: Local file to upload.
            name: Object name, relative to the store's prefix.
            overwrite: Replace an existing object; False fails with ObjectExistsError if it exists.
            timeout: Seconds to wait for staging space when ``max_staged_bytes`` is full.
            staging: Override the staging mode for this file.

        Returns:
            A future resolving to the :class:`UploadResult` once the object is durable.

        Raises:
            SourceFileError: ``path`` is missing, a directory or unreadable.
            InvalidObjectNameError: The store cannot hold ``name``.
            StagingError: Staging failed; nothing half-staged remains.
            StagingTimeoutError: The staging budget stayed full past ``timeout``.
            UploaderClosedError: The uploader is closed.
        """
        self._check_usable(f"submit {name!r}")
        self._runner.check_alive()  # before staging: a dead child would only refuse it
        with self._intake.submitting(name):  # close() waits for it to hand off
            prepared = self._intake.prepare(path, name, overwrite, timeout, staging)
            return self._hand_off(prepared)

    def _hand_off(
        self, prepared: Prepared, after: concurrent.futures.Future[Any] | None = None
    ) -> concurrent.futures.Future[UploadResult]:
        try:
            return self._runner.hand_off(prepared, after)
        except BaseException as exc:
            # Closed between staging and hand-off: the staged copy must not leak, nor its
            # journal entry (a resume would report its missing copy); a moved file goes back.
            self._intake.withdraw(prepared, exc)
            raise

    def upload(
        self, path: str | os.PathLike[str], name: str, *, overwrite: bool = True
    ) -> UploadResult:
        """Upload ``path`` as ``name`` and return once it is durable."""
        return self.submit(path, name, overwrite=overwrite).result()

    def flush(self, timeout: float | None = None) -> None:
        """Wait for every upload submitted so far.

        Raises:
            UploadFailedError: Every upload that failed since the last flush, each reported once.
            TimeoutError: ``timeout`` expired first.
        """
        self._check_usable("flush")
        try:
            self._runner.flush(timeout)
        except UploaderClosedError:
            self._raise_failures()  # what a dead child lost comes first
            raise
        self._raise_failures()

    def close(self, timeout: float | None = None) -> None:
        """Drain (up to ``timeout`` seconds), stop the loop and join its thread (or the child
        process). Idempotent.

        Raises:
            UploadFailedError: Every upload that failed or did not finish in time, each with its
                kept staged copy (resumable with a persistent staging folder).
        """
        if os.getpid() != self._pid:
            # A forked child must not touch the parent's loop thread (it does not exist here).
            self._closed = True
            return
        with self._close_lock:
            if self._closed:
                return
            if threading.get_ident() == self._loop_thread:
                raise RuntimeError(
                    "Uploader.close() was called from the uploader's own loop thread; "
                    "it would deadlock. Call it from another thread."
                )
            self._closed = True
            atexit.unregister(self._at_exit)
            self._runner.close(timeout)
        self._raise_failures("before close")

    def resume_pending(self) -> ResumeReport:
        """Upload what a previous run left pending in this uploader's staging folder."""
        self._check_usable("resume")
        intake = self._intake
        report = self._runner.resume(
            intake.take_inherited(),
            list(intake.journal_problems),
            list(intake.journal_bad_entries),
        )
        self._raise_failures("while resuming")
        return report

    def _raise_failures(self, context: str = "") -> None:
        if failures := self._reporter.take_failures():
            raise UploadFailedError(failures, context=context)

    @classmethod
    def resume(
        cls,
        staging_folder: str | os.PathLike[str],
        store: str | Provider,
        provider_kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> ResumeReport:
        """Finish what a crashed run left in ``staging_folder``, then close.

        Aborts the orphaned multipart uploads the journal names, uploads every pending staged
        file, and removes completed entries from the journal. Corrupt journal lines are reported
        in the result and skipped.

        Args:
            staging_folder: The persistent staging folder of the crashed run.
            store: Where the crashed run was uploading (URI or provider).
            provider_kwargs: Provider options, as for the constructor.
            **options: Other constructor options (max_concurrency, retry...).

        Raises:
            UploadFailedError: Some entries could not be uploaded (they stay journalled, except
                one whose staged copy is missing or short: reported once, then dropped).
        """
        # Built only to resume its folder at once: no "resume them" warning first.
        with resuming():
            up = cls(store, staging_dir=staging_folder, provider_kwargs=provider_kwargs, **options)
        with up:
            return up.resume_pending()


def _close_at_exit(ref: weakref.ref[Uploader]) -> None:
    """The at-exit hook of an uploader left open: flush and close it, with a warning."""
    uploader = ref()
    if uploader is not None and not uploader._closed and os.getpid() == uploader._pid:
        warnings.warn(
            f"{uploader!r} was not closed; flushing it at interpreter exit",
            ResourceWarning,
            stacklevel=1,
        )
        try:
            uploader.close()
        except UploadError as exc:
            log.error("uploads lost at exit: %s", exc)


# -- for the package's own layers (the logger, the checkpoint sink) ------------------------------


def take_failures(uploader: Uploader) -> list[FailedUpload]:
    """Failures ``uploader`` has not reported yet, clearing them: the logger raises them at its
    next call rather than waiting for a flush."""
    return uploader._reporter.take_failures()


def submit_bytes(
    uploader: Uploader,
    data: bytes,
    name: str,
    *,
    overwrite: bool,
    after: concurrent.futures.Future[Any] | None = None,
) -> concurrent.futures.Future[UploadResult]:
    """Upload generated content as ``name`` (staged from memory), after ``after`` if given.

    ``after`` must be a future of the same uploader: the upload waits for it and fails with
    :class:`DependencyFailedError` if it failed (a symlink is never written before its target).
    """
    uploader._check_usable(f"submit {name!r}")
    with uploader._intake.submitting(name):
        return uploader._hand_off(uploader._intake.prepare_bytes(data, name, overwrite), after)


def staged_bytes(uploader: Uploader) -> int:
    """Bytes ``uploader``'s staging budget counts now: staged and not yet uploaded or given up
    (what ``max_staged_bytes`` bounds)."""
    return uploader._intake.stager.budget.used
