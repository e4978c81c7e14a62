"""The core: loop-only scheduling. One task per upload, ordered per object name.

Everything here runs on the engine's event loop (only :meth:`Core.enqueue_threadsafe` is
scheduled onto it from another thread). It knows nothing of how a file travels (that is
:mod:`._transfer`) nor of who listens (that is the :class:`~._report.Reporter`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections.abc import Awaitable, Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._errors import FailedUpload, UploadError
from ._events import EventKind
from ._intake import Gate, Prepared, withdraw
from ._journal import Journal
from ._report import Reporter
from ._staging import Stager
from ._transfer import Transfer
from ._types import UploadResult

log = logging.getLogger("artifact_uploader")


class DependencyFailedError(UploadError):
    """An upload that had to wait for another (a symlink for its target) did not run."""


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


def succeeded(handle: UploadHandle) -> UploadResult | None:
    """The handle's result if its upload is done and succeeded, else None (never raises)."""
    future = handle._future
    if not future.done() or future.cancelled() or future.exception() is not None:
        return None
    return future.result()


@dataclass(eq=False)
class Core:
    """Per-name chains and upload tasks; drain and cancel.

    Attributes:
        track_names: Whether to remember the names submitted in this run: while inherited
            journal entries await a resume, an older journalled copy of a name must not
            replace a newer submission of it (memory stays flat otherwise).
        submitted: Those names.
    """

    gate: Gate
    transfer: Transfer
    reporter: Reporter
    stager: Stager
    journal: Journal | None
    track_names: bool = False
    submitted: set[str] = field(default_factory=set)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set, init=False)
    _chains: dict[str, asyncio.Future[UploadResult]] = field(default_factory=dict, init=False)

    @property
    def running(self) -> int:
        """Uploads not finished yet."""
        return len(self._tasks)

    def enqueue(
        self, prepared: Prepared, after: Awaitable[Any] | None = None, *, resumed: bool = False
    ) -> UploadHandle:
        """Start the upload task (on the loop thread). Ordering per name is fixed here.

        ``after``: an awaitable this upload waits for first (a symlink's target); when it
        fails, this upload fails with :class:`DependencyFailedError`.
        """
        self.gate.check_open()
        if self.track_names and not resumed:
            # A later resume() must not let an older journalled copy of this name win.
            self.submitted.add(prepared.name)
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
                self._report_end(prepared, future)

        task.add_done_callback(finished)
        return UploadHandle(prepared.name, prepared.staged.path, future)

    def enqueue_threadsafe(
        self,
        prepared: Prepared,
        target: concurrent.futures.Future[UploadResult],
        after: concurrent.futures.Future[Any] | None = None,
    ) -> None:
        """Called on the loop by the sync facade: start the upload, resolve ``target`` with its
        outcome.

        The facade schedules this without waiting for it (no round trip to the loop thread per
        submit), so a hand-off refused here (the uploader closed meanwhile) fails ``target`` and
        leaves nothing behind: not the staged copy, not its journal entry.
        """
        try:
            after_aw = asyncio.wrap_future(after) if after is not None else None
            handle = self.enqueue(prepared, after_aw)
        except BaseException as exc:
            withdraw(self.stager, self.journal, prepared.staged, exc)
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
        prepared: Prepared,
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
            result = await self.transfer.upload(prepared)
        except BaseException as exc:
            self._record_failure(prepared, future, exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
        else:
            if self.journal is not None:
                self.journal.done(staged.id)
            self.stager.release(staged)
            self.reporter.count(files_done=1)
            self.reporter.emit(EventKind.DONE, name, staged.size)
            if not future.done():
                future.set_result(result)
        finally:
            if self._chains.get(name) is future:
                del self._chains[name]
            self._report_end(prepared, future)

    def _record_failure(
        self, prepared: Prepared, future: asyncio.Future[UploadResult], exc: BaseException
    ) -> None:
        """Report a failed (or cancelled) upload once; its staged copy is kept and named."""
        name, staged = prepared.name, prepared.staged
        self.stager.forget(staged)
        if isinstance(exc, asyncio.CancelledError):
            cause: BaseException = TimeoutError(
                f"upload of {name!r} did not finish before the uploader closed"
            )
        else:
            cause = exc
        self.reporter.add_failure(FailedUpload(name, str(staged.path), cause))
        self.reporter.count(files_failed=1)
        self.reporter.emit(EventKind.FAILED, name, staged.size, error=cause)
        log.warning("upload of %r failed: %s", name, cause)
        if not future.done():
            future.set_exception(cause)

    def _report_end(self, prepared: Prepared, future: asyncio.Future[UploadResult]) -> None:
        if future.done() and not future.cancelled() and future.exception() is None:
            self.reporter.ended(prepared.staged.id, future.result(), None)
            return
        if future.done() and not future.cancelled():
            exc: BaseException = future.exception() or UploadError("upload failed")
        else:
            exc = TimeoutError("the upload did not finish before the uploader closed")
        self.reporter.ended(prepared.staged.id, None, exc)

    async def drain(self, timeout: float | None) -> bool:
        """Wait for every upload started so far; False if the timeout expired first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._tasks:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            await asyncio.wait(set(self._tasks), timeout=remaining)
        return True

    async def cancel(self, cleanup: float) -> None:
        """Cancel every running upload; wait up to ``cleanup`` seconds for them (their
        multipart aborts are bounded by the same budget, so this wait ends with them)."""
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=cleanup)


def _consume(f: asyncio.Future[Any]) -> None:
    if not f.cancelled():
        f.exception()
