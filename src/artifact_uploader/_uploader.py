"""AsyncUploader: the engine. One semaphore, one task per upload, ordered per object name."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from ._config import PartPolicy, RetryPolicy, check_positive_int
from ._download import _ReadSide
from ._errors import (
    ConfigError,
    FailedUpload,
    UploaderClosedError,
    UploadError,
    UploadFailedError,
)
from ._events import EventCallback, EventKind, ProgressTotals, UploadEvent, _Counters
from ._journal import (
    Journal,
    JournalEntry,
    already_stored,
    announce_pending,
    read,
    refusal,
    staged_problem,
    unrecorded_uploads,
)
from ._registry import make_provider
from ._retry import StallWatchdog, retrying
from ._staging import StagedFile, Stager
from ._types import FileSlice, PartResult, PutResult, UploadResult
from .providers._protocol import MultipartProvider, Provider

T = TypeVar("T")
log = logging.getLogger("artifact_uploader")

# Most events an events() consumer may fall behind before the oldest are dropped.
_EVENT_BUFFER = 10_000
# How long a shielded cleanup (aborting a multipart upload) may hold up close(); a close with a
# shorter timeout shortens it too (see cleanup_budget).
_CLEANUP_TIMEOUT = 10.0


def cleanup_budget(timeout: float | None) -> float:
    """Seconds close(timeout) may spend on each cleanup step past ``timeout``.

    The steps: waiting for cancelled uploads (their multipart aborts), then closing the
    provider. So close(timeout) returns within ``timeout + 2 * cleanup_budget(timeout)``.
    """
    if timeout is None:
        return _CLEANUP_TIMEOUT
    return min(_CLEANUP_TIMEOUT, max(1.0, timeout))


class DependencyFailedError(UploadError):
    """An upload that had to wait for another (a symlink for its target) did not run."""


@dataclass(slots=True)
class _Prepared:
    """A staged file ready to hand to the loop (built in the caller's thread)."""

    name: str
    staged: StagedFile
    overwrite: bool


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


class UploadHandle:
    """Awaitable result of :meth:`AsyncUploader.submit`: resolves once the object is durable.

    Attributes:
        name: The object name.
        staged_path: Where the staged copy lives until the upload completes.
    """

    __slots__ = ("_future", "name", "staged_path")

    def __init__(self, name: str, staged_path: Path, future: asyncio.Future[UploadResult]) -> None:
        self.name = name
        self.staged_path = staged_path
        self._future = future

    def __repr__(self) -> str:
        state = "done" if self._future.done() else "pending"
        return f"<UploadHandle {self.name!r} {state}>"

    def __await__(self) -> Generator[Any, None, UploadResult]:
        return asyncio.shield(self._future).__await__()

    def done(self) -> bool:
        """True once the upload succeeded or failed."""
        return self._future.done()

    def result(self) -> UploadResult:
        """The result; raises the upload's error, or InvalidStateError if not done."""
        return self._future.result()


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
        self.max_concurrency = check_positive_int(max_concurrency, "max_concurrency")
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise ConfigError(f"retry must be a RetryPolicy, got {retry!r}")
        if parts is not None and not isinstance(parts, PartPolicy):
            raise ConfigError(f"parts must be a PartPolicy, got {parts!r}")
        self.retry = retry or RetryPolicy()
        stall = self.retry.stall_timeout
        self._watchdog = StallWatchdog(stall) if stall is not None else None
        self.parts = parts or PartPolicy()
        self.verify = verify
        self.provider: Provider = make_provider(store, provider_kwargs)
        self._stager = Stager(staging_dir, mode=staging, max_staged_bytes=max_staged_bytes)
        self._journal: Journal | None = None
        self._inherited: list[JournalEntry] = []
        self.journal_problems: list[str] = []
        self.journal_bad_entries: list[str] = []
        if self._stager.persistent:
            try:
                self._inherit()
            except BaseException:
                if self._journal is not None:
                    self._journal.close()
                self._stager.close()  # the folder lock
                raise
        self._listeners: list[EventCallback] = [on_event] if on_event is not None else []
        self._counters = _Counters()
        self._counter_lock = threading.Lock()
        self._state = "new"  # new -> open -> closing -> closed
        self._cleanup_timeout = _CLEANUP_TIMEOUT  # shortened by aclose(timeout)
        # Submissions between their start and their hand-off (staging, journalling): close
        # waits for them before it closes the journal and the staging folder under them.
        self._submits = 0
        self._submits_stopped = False
        self._submits_cond = threading.Condition()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sem: asyncio.Semaphore | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._chains: dict[str, asyncio.Future[UploadResult]] = {}
        self._failures: list[FailedUpload] = []
        # The loop appends failures while a caller's thread takes them (the logger, at its next
        # call): without a lock, one appended during the swap would be lost.
        self._failures_lock = threading.Lock()
        # Names submitted in this run, and multipart upload ids this engine has in flight:
        # resume() must not let a stale journal entry replace the one, nor abort the other.
        # Names are tracked only while inherited entries await a resume (memory stays flat).
        self._track_names = bool(self._inherited)
        self._submitted: set[str] = set()
        self._live_ids: set[str] = set()
        self._queues: list[asyncio.Queue[UploadEvent | None]] = []

    def _inherit(self) -> None:
        """Read what a previous run left in the journal; keep only what may be acted on.

        The journal is untrusted input: a bad entry (wrong types, a ``staged`` path outside the
        staged folder, a staged file that is a link, a name this store refuses) is reported and
        never acted on. Entries a previous (crashed) run left pending stay journalled until
        resumed, and are announced.
        """
        folder = self._stager.folder
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
        self._journal = Journal(folder)
        self._journal.compact(keep)
        announce_pending(folder, len(self._inherited))

    def __repr__(self) -> str:
        return (
            f"<AsyncUploader {self.provider!r} state={self._state} "
            f"max_concurrency={self.max_concurrency} staging={str(self._stager.folder)!r}>"
        )

    @property
    def staging_folder(self) -> Path:
        """The staging folder in use."""
        return self._stager.folder

    @property
    def totals(self) -> ProgressTotals:
        """Running totals: files and bytes queued, sent, failed, in flight."""
        with self._counter_lock:
            return self._counters.snapshot()

    # -- lifecycle --------------------------------------------------------------------------

    async def __aenter__(self) -> AsyncUploader:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def open(self) -> None:
        """Open the provider on this loop (and check the store unless ``verify=False``)."""
        if self._state != "new":
            if self._state == "open":
                return
            raise UploaderClosedError("this uploader was closed; create a new one")
        self._loop = asyncio.get_running_loop()
        self._sem = asyncio.Semaphore(self.max_concurrency)
        self._counters = _Counters()
        try:
            await self.provider.open(verify=self.verify)
        except BaseException:
            self._state = "closed"
            await self.provider.aclose()
            self._close_files()
            raise
        self._state = "open"

    def _check_open(self) -> None:
        if self._state == "new":
            raise UploaderClosedError("the uploader is not open: use `async with` or await open()")
        if self._state != "open":
            raise UploaderClosedError("the uploader is closed; submit() is no longer accepted")

    # -- submitting -------------------------------------------------------------------------

    @contextlib.contextmanager
    def _submitting(self, name: str) -> Iterator[None]:
        """Count one submission from its start to its hand-off (any thread)."""
        with self._submits_cond:
            if self._submits_stopped or self._state not in ("new", "open"):
                raise UploaderClosedError(f"the uploader is closed; cannot submit {name!r}")
            self._submits += 1
        try:
            yield
        finally:
            with self._submits_cond:
                self._submits -= 1
                if not self._submits:
                    self._submits_cond.notify_all()

    def _stop_submits(self) -> None:
        """Refuse new submissions and wait for those in progress to hand off (blocking).

        Called once uploads have drained, so a staging waiting for budget gets it.
        """
        with self._submits_cond:
            self._submits_stopped = True
            self._submits_cond.wait_for(lambda: not self._submits)

    def _prepare(
        self,
        path: str | os.PathLike[str],
        name: str,
        overwrite: bool,
        timeout: float | None,
        staging: str | None = None,
    ) -> _Prepared:
        """Validate, stage and journal ``path`` (blocking; any thread)."""
        if self._state not in ("new", "open"):
            raise UploaderClosedError(f"the uploader is closed; cannot submit {name!r}")
        self.provider.check_name(name)
        if not isinstance(overwrite, bool):
            raise ConfigError(f"overwrite must be a bool, got {overwrite!r}")
        # Here rather than in submit(), so the sync facade (which stages through this method in
        # the caller's thread) reports it too.
        self._emit(EventKind.QUEUED, name, 0)
        staged = self._stager.stage(path, timeout=timeout, mode=staging)
        return self._record(name, staged, overwrite)

    def _prepare_bytes(self, data: bytes, name: str, overwrite: bool) -> _Prepared:
        self.provider.check_name(name)
        self._emit(EventKind.QUEUED, name, 0)
        staged = self._stager.write_bytes(data, Path(name).name or "object")
        return self._record(name, staged, overwrite)

    def _record(self, name: str, staged: StagedFile, overwrite: bool) -> _Prepared:
        if self._journal is not None:
            try:
                self._journal.pending(
                    JournalEntry(
                        id=staged.id,
                        name=name,
                        staged=str(staged.path.relative_to(self._stager.folder)),
                        size=staged.size,
                        overwrite=overwrite,
                        source=staged.source,
                    )
                )
            except BaseException as exc:
                self._discard(staged, exc)
                raise
        self._count(files_queued=1, bytes_queued=staged.size)
        self._emit(EventKind.STAGED, name, staged.size)
        return _Prepared(name, staged, overwrite)

    def _discard(self, staged: StagedFile, exc: BaseException) -> None:
        """Undo the staging of a submission refused with ``exc`` (any thread).

        In "move" mode the staged file is the caller's only copy: it goes back to its source;
        if it cannot, it is kept and ``exc`` names where.
        """
        kept = self._stager.discard(staged)
        if kept is not None:
            note = (
                f"the moved file could not be put back at {staged.source!r}; "
                f"it is kept at {str(kept)!r}"
            )
            log.error("%s", note)
            exc.add_note(note)

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
        self._check_open()
        with self._submitting(name):
            return await self._submit(path, name, overwrite, timeout, staging)

    async def _submit(
        self,
        path: str | os.PathLike[str],
        name: str,
        overwrite: bool,
        timeout: float | None,
        staging: str | None,
    ) -> UploadHandle:
        import anyio.to_thread

        prepared = await anyio.to_thread.run_sync(
            self._prepare, path, name, overwrite, timeout, staging
        )
        if self._state != "open":
            exc = UploaderClosedError(f"the uploader closed while staging {name!r}")
            # Its pending line is already journalled: end it, or every later resume would
            # report a missing staged copy.
            if self._journal is not None:
                self._journal.done(prepared.staged.id)
            self._discard(prepared.staged, exc)
            raise exc
        return self._enqueue(prepared)

    async def upload(
        self, path: str | os.PathLike[str], name: str, *, overwrite: bool = True
    ) -> UploadResult:
        """Upload ``path`` as ``name`` and return once it is durable."""
        return await (await self.submit(path, name, overwrite=overwrite))

    def _enqueue(
        self, prepared: _Prepared, after: Awaitable[Any] | None = None, *, resumed: bool = False
    ) -> UploadHandle:
        """Start the upload task (on the loop thread). Ordering per name is fixed here."""
        self._check_open()
        if self._track_names and not resumed:
            # A later resume() must not let an older journalled copy of this name win.
            self._submitted.add(prepared.name)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[UploadResult] = loop.create_future()
        # Failures are reported by flush()/close(); don't let asyncio log them as unretrieved.
        future.add_done_callback(_consume)
        previous = self._chains.get(prepared.name)
        self._chains[prepared.name] = future
        task = loop.create_task(self._run(prepared, future, previous, after))
        self._tasks.add(task)

        def finished(task: asyncio.Task[None]) -> None:
            self._tasks.discard(task)
            if not future.done():
                # Cancelled before its first step (close(timeout=0) right after submit): _run
                # never ran, so its bookkeeping happens here; the upload is reported, not lost.
                self._record_failure(prepared, future, asyncio.CancelledError())
                if self._chains.get(prepared.name) is future:
                    del self._chains[prepared.name]

        task.add_done_callback(finished)
        return UploadHandle(prepared.name, prepared.staged.path, future)

    def _enqueue_threadsafe(self, prepared: _Prepared, target: Any, after: Any = None) -> None:
        """Called on the loop by the sync facade: start the upload, resolve ``target`` (a
        concurrent.futures.Future) with its outcome.

        The facade schedules this without waiting for it (no round trip to the loop thread per
        submit), so a hand-off refused here (the uploader closed meanwhile) fails ``target`` and
        leaves nothing behind: not the staged copy, not its journal entry.
        """
        try:
            after_aw = asyncio.wrap_future(after) if after is not None else None
            handle = self._enqueue(prepared, after_aw)
        except BaseException as exc:
            if self._journal is not None:
                self._journal.done(prepared.staged.id)
            self._discard(prepared.staged, exc)
            if not target.done():
                target.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return

        def copy(f: asyncio.Future[UploadResult]) -> None:
            if target.done():
                return
            if f.cancelled():
                target.cancel()
            elif (exc := f.exception()) is not None:
                target.set_exception(exc)
            else:
                target.set_result(f.result())

        handle._future.add_done_callback(copy)

    async def _run(
        self,
        prepared: _Prepared,
        future: asyncio.Future[UploadResult],
        previous: asyncio.Future[UploadResult] | None,
        after: Awaitable[Any] | None,
    ) -> None:
        name, staged = prepared.name, prepared.staged
        try:
            if previous is not None and not previous.done():
                # The later submission of a name always wins: wait for the earlier one.
                await asyncio.wait([previous])
            if after is not None:
                try:
                    await after
                except BaseException as exc:
                    if isinstance(exc, asyncio.CancelledError):
                        raise
                    raise DependencyFailedError(
                        f"{name!r} was not written because what it depends on failed: {exc}"
                    ) from exc
            result = await self._transfer(prepared)
        except BaseException as exc:
            self._record_failure(prepared, future, exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
        else:
            if self._journal is not None:
                self._journal.done(staged.id)
            self._stager.release(staged)
            self._count(files_done=1)
            self._emit(EventKind.DONE, name, staged.size)
            if not future.done():
                future.set_result(result)
        finally:
            if self._chains.get(name) is future:
                del self._chains[name]

    def _record_failure(
        self, prepared: _Prepared, future: asyncio.Future[UploadResult], exc: BaseException
    ) -> None:
        """Report a failed (or cancelled) upload once; its staged copy is kept and named."""
        name, staged = prepared.name, prepared.staged
        self._stager.forget(staged)
        if isinstance(exc, asyncio.CancelledError):
            cause: BaseException = TimeoutError(
                f"upload of {name!r} did not finish before the uploader closed"
            )
        else:
            cause = exc
        self._add_failure(FailedUpload(name, str(staged.path), cause))
        self._count(files_failed=1)
        self._emit(EventKind.FAILED, name, staged.size, error=cause)
        log.warning("upload of %r failed: %s", name, cause)
        if not future.done():
            future.set_exception(cause)

    # -- transfer ---------------------------------------------------------------------------

    async def _request(self, op: Callable[[], Awaitable[T]], what: str, name: str, size: int) -> T:
        sem = self._sem
        assert sem is not None
        watchdog = self._watchdog

        async def attempt() -> T:
            async with sem:
                if watchdog is None:
                    return await op()
                # Watched once a slot is held: queueing for one is not a stall.
                return await watchdog.run(op, what=what, name=name, uri=self.provider.uri(name))

        def on_retry(n: int, exc: BaseException, delay: float) -> None:
            self._emit(EventKind.RETRY, name, size, attempt=n, delay=delay, error=exc)

        return await retrying(self.retry, attempt, what=what, on_retry=on_retry)

    async def _transfer(self, prepared: _Prepared) -> UploadResult:
        name, staged, overwrite = prepared.name, prepared.staged, prepared.overwrite
        provider = self.provider
        size = staged.size
        # Size first: a runtime-checkable Protocol isinstance costs tens of microseconds.
        if size >= self.parts.threshold and isinstance(provider, MultipartProvider):
            put = await self._multipart(provider, prepared)
        else:
            data = FileSlice(staged.path, 0, size)
            put = await self._request(
                lambda: provider.put(name, data, overwrite=overwrite), f"PUT {name!r}", name, size
            )
            self._sent(name, size, size)
        return UploadResult(
            uri=provider.uri(name),
            name=name,
            size=size,
            checksum_algorithm=put.checksum_algorithm,
            checksum=put.checksum,
            etag=put.etag,
            version=put.version,
        )

    async def _multipart(self, provider: MultipartProvider, prepared: _Prepared) -> PutResult:
        name, staged, overwrite = prepared.name, prepared.staged, prepared.overwrite
        size = staged.size
        limits = provider.part_limits
        part_size = self.parts.choose_part_size(
            size, limits.min_part_size, limits.max_part_size, limits.max_parts
        )
        count = -(-size // part_size)
        upload_id = await self._request(
            lambda: provider.create_multipart(name, overwrite=overwrite),
            f"create multipart {name!r}",
            name,
            size,
        )
        self._live_ids.add(upload_id)
        results: list[PartResult | None] = [None] * count
        numbers = iter(range(1, count + 1))

        async def worker() -> None:
            # Workers pull part numbers, so at most max_concurrency parts are read at once:
            # memory stays bounded by parts in flight, never the whole file.
            for number in numbers:
                offset = (number - 1) * part_size
                data = FileSlice(staged.path, offset, min(part_size, size - offset))

                def put_part(n: int = number, d: FileSlice = data) -> Awaitable[PartResult]:
                    return provider.put_part(name, upload_id, n, d)

                results[number - 1] = await self._request(
                    put_part, f"part {number}/{count} of {name!r}", name, size
                )
                self._sent(name, size, data.length)

        try:
            if self._journal is not None:
                # Inside the try: an upload whose id could not be journalled is aborted now,
                # never left for no resume to find.
                self._journal.multipart(staged.id, upload_id)
            try:
                async with asyncio.TaskGroup() as tg:
                    for _ in range(min(self.max_concurrency, count)):
                        tg.create_task(worker())
            except BaseExceptionGroup as group:
                raise _first_error(group) from None
            parts = [r for r in results if r is not None]
            return await self._request(
                lambda: provider.complete_multipart(name, upload_id, parts, overwrite=overwrite),
                f"complete multipart {name!r}",
                name,
                size,
            )
        except BaseException:
            await self._abort(provider, name, upload_id)
            raise
        finally:
            self._live_ids.discard(upload_id)

    async def _abort(self, provider: MultipartProvider, name: str, upload_id: str) -> None:
        # Shielded so a cancelled upload (close timeout) still leaves no orphaned parts.
        # Not under the semaphore: a cancelled upload holds no permit, and while other uploads
        # hang in their requests (the reason close timed out) an abort queueing for a permit
        # could spend its whole cleanup budget waiting. Aborts are small and rare, so exceeding
        # max_concurrency by the uploads being aborted is the lesser cost.
        async def abort() -> None:
            try:
                async with asyncio.timeout(self._cleanup_timeout):
                    await retrying(
                        self.retry,
                        lambda: provider.abort_multipart(name, upload_id),
                        what=f"abort multipart {name!r}",
                    )
            except Exception as exc:
                why = (
                    f"no answer within {self._cleanup_timeout:g}s"
                    if isinstance(exc, TimeoutError) and not str(exc)
                    else exc
                )
                log.warning("could not abort multipart upload of %r: %s", name, why)

        task = asyncio.get_running_loop().create_task(abort())
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            await asyncio.wait([task])
            raise

    # -- waiting and closing ----------------------------------------------------------------

    def _add_failure(self, failure: FailedUpload) -> None:
        with self._failures_lock:
            self._failures.append(failure)

    def _take_failures(self) -> list[FailedUpload]:
        with self._failures_lock:
            failures, self._failures = self._failures, []
        return failures

    async def _drain(self, timeout: float | None) -> bool:
        """Wait for every upload submitted so far; False if the timeout expired first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._tasks:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            await asyncio.wait(set(self._tasks), timeout=remaining)
        return True

    async def flush(self, timeout: float | None = None) -> None:
        """Wait until every upload submitted so far has finished.

        Raises:
            UploadFailedError: Listing every upload that failed since the last flush (each
                failure is reported once), with its kept staged copy.
            TimeoutError: ``timeout`` expired first (nothing is cancelled).
        """
        if self._state == "new":
            return
        if not await self._drain(timeout):
            raise TimeoutError(
                f"flush: {len(self._tasks)} upload(s) still running after {timeout}s"
            )
        self._raise_failures()

    def _raise_failures(self, context: str = "") -> None:
        failures = self._take_failures()
        if failures:
            raise UploadFailedError(failures, context=context)

    def failures(self) -> list[FailedUpload]:
        """Failures not yet reported, without clearing them."""
        with self._failures_lock:
            return list(self._failures)

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
        import anyio.to_thread

        if self._state in ("closing", "closed"):
            return
        if self._state == "new":
            self._state = "closed"
            self._close_files()
            return
        self._state = "closing"
        cleanup = self._cleanup_timeout = cleanup_budget(timeout)
        try:
            if not await self._drain(timeout):
                for task in list(self._tasks):
                    task.cancel()
                # Each abort is bounded by the same budget, so this wait ends with them.
                await asyncio.wait(set(self._tasks), timeout=cleanup)
            # A submission still staging would otherwise find its journal closed and its
            # temporary folder removed under it; once handed off, it is refused cleanly.
            await anyio.to_thread.run_sync(self._stop_submits)
        finally:
            self._state = "closed"
            try:
                try:
                    async with asyncio.timeout(cleanup):
                        await self.provider.aclose()
                except TimeoutError:
                    log.warning("the provider did not close within %.1f s; left behind", cleanup)
            finally:
                for q in self._queues:
                    _offer(q, None)
                self._close_files()
        self._raise_failures("before close")

    def _close_files(self) -> None:
        if self._journal is not None:
            # What is still pending on disk (failed, cancelled, or inherited and not resumed)
            # stays journalled; everything done is dropped.
            pending = read(self._stager.folder, log_problems=False).entries
            self._journal.compact(pending)
            self._journal.close()
        self._stager.close()

    @property
    def pending_from_previous_run(self) -> list[JournalEntry]:
        """Journal entries a previous run of this staging folder left unfinished."""
        return list(self._inherited)

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
        self._check_open()
        if self._journal is None:
            raise ConfigError("resume needs a persistent staging folder (staging_dir=...)")
        entries, self._inherited = self._inherited, []
        handles: list[UploadHandle] = []
        present: list[str] = []
        superseded: list[str] = []
        try:
            await self._resume_entries(entries, handles, present, superseded)
        finally:
            # Every inherited entry is handed over: nothing left for a newer name to beat.
            self._track_names = False
            self._submitted.clear()
        await self._drain(None)
        uploaded = [h.result() for h in handles if h.done() and h._future.exception() is None]
        report = ResumeReport(
            uploaded=uploaded,
            skipped_lines=list(self.journal_problems),
            already_present=present,
            superseded=superseded,
            bad_entries=list(self.journal_bad_entries),
        )
        self._raise_failures("while resuming")
        return report

    async def _resume_entries(
        self,
        entries: list[JournalEntry],
        handles: list[UploadHandle],
        present: list[str],
        superseded: list[str],
    ) -> None:
        """Hand each inherited entry over: superseded, already present, failed or enqueued."""
        assert self._journal is not None
        for entry in entries:
            path = self._stager.folder / entry.staged
            why = staged_problem(self._stager.folder, entry)
            if why is not None:
                # Replaced since this uploader read the journal: refused, never followed.
                msg = entry.describe(self._stager.folder, why)
                log.warning(msg)
                self.journal_bad_entries.append(msg)
                self._journal.done(entry.id)
                continue
            if isinstance(self.provider, MultipartProvider):
                # The crashed run's own uploads: always safe to abort.
                for upload_id in entry.multipart_ids:
                    await self._abort(self.provider, entry.name, upload_id)
            if entry.name in self._submitted:
                self._supersede(entry, path, superseded)
                continue
            if isinstance(self.provider, MultipartProvider):
                for upload_id in await unrecorded_uploads(self.provider, entry.name):
                    # Never an upload of this run (a newer submission of the same name).
                    if upload_id not in entry.multipart_ids and upload_id not in self._live_ids:
                        await self._abort(self.provider, entry.name, upload_id)
            try:
                actual = path.lstat().st_size
            except FileNotFoundError:
                actual = -1
            if actual != entry.size:
                why = (
                    "is missing" if actual < 0 else f"has {actual} bytes, journal says {entry.size}"
                )
                self._add_failure(
                    FailedUpload(
                        entry.name,
                        str(path) if actual >= 0 else None,
                        UploadError(
                            f"staged copy {str(path)!r} {why}; cannot resume it (reported "
                            "once: the entry leaves the journal, a short copy is kept)"
                        ),
                    )
                )
                # No later resume can do better: drop the entry, or it would fail every one.
                self._journal.done(entry.id)
                continue
            if not entry.overwrite and await already_stored(
                self.provider, entry.name, path, entry.size, self._part_size(entry.size)
            ):
                self._journal.done(entry.id)
                path.unlink(missing_ok=True)
                present.append(entry.name)
                continue
            staged = await self._adopt(path, entry)
            if entry.name in self._submitted:
                # Submitted again while this resume waited: the newer content wins.
                self._stager.forget(staged)
                self._supersede(entry, path, superseded)
                continue
            try:
                handle = self._enqueue(_Prepared(entry.name, staged, entry.overwrite), resumed=True)
            except BaseException:
                self._stager.forget(staged)  # closed meanwhile: the entry stays journalled
                raise
            self._count(files_queued=1, bytes_queued=entry.size)
            handles.append(handle)

    def _supersede(self, entry: JournalEntry, path: Path, superseded: list[str]) -> None:
        """Drop an inherited entry whose name this run already submitted (newer content)."""
        assert self._journal is not None
        self._journal.done(entry.id)
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

        adopt = self._stager.adopt
        if self._stager.budget.limit is None:
            return adopt(path, entry.size, entry.id, entry.source)
        return await anyio.to_thread.run_sync(adopt, path, entry.size, entry.id, entry.source)

    def _part_size(self, size: int) -> int | None:
        """The part size this uploader would use for ``size`` bytes (None: a single request)."""
        provider = self.provider
        if not isinstance(provider, MultipartProvider) or size < self.parts.threshold:
            return None
        limits = provider.part_limits
        try:
            return self.parts.choose_part_size(
                size, limits.min_part_size, limits.max_part_size, limits.max_parts
            )
        except ConfigError:
            return None

    # -- events -----------------------------------------------------------------------------

    def _count(self, **deltas: int) -> None:
        with self._counter_lock:
            for k, v in deltas.items():
                setattr(self._counters, k, getattr(self._counters, k) + v)

    def _sent(self, name: str, size: int, n: int) -> None:
        self._count(bytes_sent=n)
        self._emit(EventKind.BYTES_SENT, name, size, nbytes=n)

    def _emit(
        self,
        kind: EventKind,
        name: str,
        size: int,
        *,
        nbytes: int = 0,
        attempt: int = 0,
        delay: float = 0.0,
        error: BaseException | None = None,
    ) -> None:
        if not self._listeners and not self._queues:
            return
        event = UploadEvent(kind, name, size, self.totals, nbytes, attempt, delay, error)
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:
                log.exception("progress callback raised; ignored")
        if self._queues and self._loop is not None:
            for q in self._queues:
                self._loop.call_soon_threadsafe(_offer, q, event)

    async def events(self) -> AsyncIterator[UploadEvent]:
        """Iterate over progress events from now until the uploader closes.

        A consumer that falls more than 10,000 events behind loses the oldest ones rather than
        growing memory without bound.
        """
        q: asyncio.Queue[UploadEvent | None] = asyncio.Queue(maxsize=_EVENT_BUFFER)
        self._queues.append(q)
        try:
            while (event := await q.get()) is not None:
                yield event
        finally:
            self._queues.remove(q)


def _offer(q: asyncio.Queue[UploadEvent | None], item: UploadEvent | None) -> None:
    # A slow consumer loses the oldest events; the end-of-stream marker always gets in.
    if q.full():
        q.get_nowait()
    q.put_nowait(item)


def _consume(f: asyncio.Future[Any]) -> None:
    if not f.cancelled():
        f.exception()


def _first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return _first_error(exc)
        if not isinstance(exc, asyncio.CancelledError):
            return exc
    return group.exceptions[0]
