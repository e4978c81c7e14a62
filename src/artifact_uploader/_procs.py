"""``use_procs=True``: the event loop and the uploads run in a child process.

The training process keeps the only part that must block, staging: ``Uploader.submit``
validates, stages and journals (fsync'd) the file in the caller's thread exactly as in thread
mode, then sends the staged file's record to the child over a socket and returns. The child runs
an :class:`AsyncUploader` (the same engine, so the same ordering per object name, retries,
multipart uploads and checksums) on its own event loop, so neither its network code nor its
Python work takes the training process's GIL. A reader thread in the parent resolves each
``concurrent.futures.Future`` and feeds the ``on_event`` callback from the child's messages::

    parent (training process)                     child (python -c ... _child_main)
    -------------------------                     ---------------------------------
    submit: stage + journal "pending" (fsync)
      Submit(id, name, staged path, ...)     ───►  _ChildEngine: upload, journal "multipart" /
    Flush / Close / Resume / Read(req, ...)  ───►  "done", delete the staged copy
    reader thread  ◄───  batches of Count | Event | Failure | End | Log | Reply
      resolves futures, on_event, records failures

Every message is a frozen dataclass in :mod:`artifact_uploader._wire`.

Who owns what:

- The provider is sent *unopened* (its configuration only); the child opens its clients on its
  own loop. A provider that cannot be pickled (``MemoryProvider`` holds locks) is refused with a
  :class:`ConfigError` naming it.
- The parent owns the staging folder, its lock (also passed to the child, so a second uploader
  cannot take the folder while an orphaned child still runs) and the byte budget, released when
  the child reports an upload's end. The child appends ``multipart`` and ``done`` journal lines
  (``O_APPEND``, one write per line); only the parent rewrites (compacts) the journal, before the
  child starts and after it has exited.
- Failures: every failure the child's engine records is forwarded and kept by the parent alone,
  so ``flush``/``close`` (and the logger's next call) report each once, as in thread mode.
  Exceptions cross as (class, args, attributes) and are rebuilt with the same type.
- Lifetimes: the child ends when its socket reaches EOF or its parent pid changes (the parent
  died): it cancels its uploads, aborts multipart uploads and exits; what did not finish stays
  journalled for ``Uploader.resume``. When the child dies, every upload it held fails with
  :class:`UploaderClosedError` naming its exit status, and later calls raise it.

The child is started with ``subprocess`` (fork + exec of ``sys.executable``, the parent's
``sys.path`` passed along): never a bare fork of a process that has threads, and, unlike
multiprocessing's spawn, the user's ``__main__`` is not re-imported.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import json
import logging
import os
import pickle
import signal
import subprocess
import sys
import threading
import traceback
import weakref
from collections.abc import Awaitable, Callable
from functools import partial
from multiprocessing import Pipe
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from . import _wire as wire
from ._errors import ConfigError, FailedUpload, UploaderClosedError, UploadError, UploadFailedError
from ._events import EventKind
from ._journal import Journal, JournalEntry
from ._staging import STAGED_DIR, StagedFile
from ._types import UploadResult
from ._uploader import AsyncUploader, ResumeReport, _Prepared, cleanup_budget
from .providers._protocol import Provider

log = logging.getLogger("artifact_uploader")

# The child's command line: adopt the parent's import path, then serve on the socket fd.
_BOOT = (
    "import json, sys; sys.path[:] = json.loads(sys.argv[2]); "
    "from artifact_uploader._procs import _child_main; _child_main(int(sys.argv[1]))"
)
# How often the child checks that its parent is still alive (when the socket is quiet).
_PARENT_CHECK = 1.0
# How long close() waits for the child to exit after it answered, before killing it.
_EXIT_TIMEOUT = 30.0
# Past the child's own close bound, how long its reply to close() may take to arrive.
_REPLY_MARGIN = 2.0

_Pending = tuple[concurrent.futures.Future[UploadResult], StagedFile, str]


def _exit_status(returncode: int | None) -> str:
    if returncode is None:
        return "stopped answering"
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with status {returncode}"


# -- the child ----------------------------------------------------------------------------


class _Outbox:
    """Messages to the parent, sent as one batch per loop iteration (fewer wake-ups there).

    Used on the child's loop thread only; one batch keeps every message in order, so an
    upload's "end" always reaches the parent before the reply of the flush that waited for it.
    """

    def __init__(self, conn: Connection, loop: asyncio.AbstractEventLoop) -> None:
        self._conn = conn
        self._loop = loop
        self._batch: list[wire.ToParent] = []
        self._scheduled = False
        self.broken = False

    def put_threadsafe(self, msg: wire.ToParent) -> None:
        with contextlib.suppress(RuntimeError):  # the loop already closed
            self._loop.call_soon_threadsafe(self.put, msg)

    def put(self, msg: wire.ToParent) -> None:
        self._batch.append(msg)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self.flush)

    def flush(self) -> None:
        self._scheduled = False
        batch, self._batch = self._batch, []
        if not batch or self.broken:
            return
        try:
            self._conn.send(batch)
        except OSError:
            # The parent is gone; the inbox reader sees EOF and shuts this process down.
            self.broken = True


class _ForwardLogs(logging.Handler):
    """Sends the child's ``artifact_uploader`` log records to the parent, which logs them
    through its own handlers (as if the uploads ran in a thread there)."""

    def __init__(self, out: _Outbox, loop_thread: int) -> None:
        super().__init__()
        self._out = out
        self._loop_thread = loop_thread

    def emit(self, record: logging.LogRecord) -> None:
        msg = wire.Log(record.levelno, self.format(record))
        if threading.get_ident() == self._loop_thread:
            self._out.put(msg)
        else:  # e.g. a provider's worker thread
            self._out.put_threadsafe(msg)


async def _reraise(exc: BaseException) -> None:
    raise exc


class _ChildEngine(AsyncUploader):
    """The engine in the child: uploads files the parent staged, reports everything back."""

    def __init__(self, provider: Provider, spec: wire.Spec, out: _Outbox) -> None:
        self._out = out
        self._forward_events = spec.forward_events
        super().__init__(
            provider,
            max_concurrency=spec.max_concurrency,
            retry=spec.retry,
            parts=spec.parts,
            verify=spec.verify,
        )
        # The parent owns the staging folder: point the engine's stager at it. Marked
        # persistent, so closing it can never remove the parent's folder (and it holds no lock).
        stager = self._stager
        stager.close()
        stager.folder = Path(spec.folder)
        stager.staged_dir = stager.folder / STAGED_DIR
        stager.persistent = True
        if spec.persistent:
            self._journal = Journal(stager.folder)
        self._track_names = spec.track_names
        self._running: dict[str, Awaitable[Any]] = {}
        self._failed: dict[str, BaseException] = {}

    def _add_failure(self, failure: FailedUpload) -> None:
        # Every engine path records failures here: they go to the parent as they happen, and
        # the parent alone reports them (nothing is kept in this process).
        self._out.put(
            wire.Failure(failure.name, failure.staged_path, wire.RemoteError.of(failure.cause))
        )

    def _count(self, **deltas: int) -> None:
        self._out.put(wire.Count(deltas))

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
        if self._forward_events:
            self._out.put(wire.Event(kind, name, size, nbytes, attempt, delay, wire.pack(error)))

    def accept(self, msg: wire.Submit) -> None:
        """Start uploading a file the parent staged (in the order the parent sent them)."""
        prepared = msg.prepared()
        staged_id, after_id = msg.staged_id, msg.after_id
        after: Awaitable[Any] | None = None
        if after_id is not None:
            # Sent earlier, so either still running, failed, or done (no need to wait).
            after = self._running.get(after_id)
            if after is None and (exc := self._failed.get(after_id)) is not None:
                after = _reraise(exc)
        try:
            self._running[staged_id] = self._enqueue(prepared, after)
        except UploadError as exc:
            # Closing: refused, like a hand-off that lost the race with close() in thread mode.
            if asyncio.iscoroutine(after):
                after.close()
            self._add_failure(FailedUpload(msg.name, msg.path, exc))
            self._out.put(wire.End(staged_id, None, wire.RemoteError.of(exc)))

    async def _run(
        self,
        prepared: _Prepared,
        future: asyncio.Future[UploadResult],
        previous: asyncio.Future[UploadResult] | None,
        after: Awaitable[Any] | None,
    ) -> None:
        try:
            await super()._run(prepared, future, previous, after)
        finally:
            self._report_end(prepared.staged.id, future)

    def _report_end(self, staged_id: str, future: asyncio.Future[UploadResult]) -> None:
        self._running.pop(staged_id, None)
        if future.done() and not future.cancelled() and future.exception() is None:
            self._out.put(wire.End(staged_id, future.result(), None))
            return
        if future.done() and not future.cancelled():
            exc: BaseException = future.exception() or UploadError("upload failed")
        else:
            exc = TimeoutError("the upload did not finish before the uploader closed")
        self._failed[staged_id] = exc
        self._out.put(wire.End(staged_id, None, wire.RemoteError.of(exc)))

    async def call(self, msg: wire.Call) -> None:
        """Run one of the parent's blocking calls and send back its outcome."""
        value: Any = None
        error: BaseException | None = None
        try:
            match msg:
                case wire.Flush(timeout=timeout):
                    await self.flush(timeout)
                case wire.Close(timeout=timeout):
                    await self.aclose(timeout)
                case wire.Resume():
                    self._inherited = msg.entries
                    self.journal_problems = msg.skipped_lines
                    self.journal_bad_entries = msg.bad_entries
                    value = await self.resume()
                case wire.Read():
                    # download / head / exists / list: on this loop, under its semaphore.
                    value = await self._read_call(msg.method, msg.args, msg.kwargs, msg.timeout)
        except Exception as exc:
            error = exc
        self._out.put(wire.Reply(msg.req, value, wire.pack(error)))
        self._out.flush()

    def _close_files(self) -> None:
        # The parent compacts the journal once this process has exited; only let go here.
        if self._journal is not None:
            self._journal.close()


def _read_parent(
    conn: Connection,
    loop: asyncio.AbstractEventLoop,
    inbox: asyncio.Queue[wire.ToChild | None],
    parent_pid: int,
) -> None:
    """Child's inbox thread: parent messages onto the loop; None once the parent is gone."""
    try:
        while True:
            if conn.poll(_PARENT_CHECK):
                msg = conn.recv()
                loop.call_soon_threadsafe(inbox.put_nowait, msg)
            elif os.getppid() != parent_pid:
                # Orphaned, though the socket is still open (a fork of the parent holds it).
                break
    except (EOFError, OSError):
        pass
    with contextlib.suppress(RuntimeError):  # the loop already closed
        loop.call_soon_threadsafe(inbox.put_nowait, None)


async def _serve(conn: Connection, spec: wire.Spec) -> None:
    loop = asyncio.get_running_loop()
    out = _Outbox(conn, loop)
    handler = _ForwardLogs(out, threading.get_ident())
    log.addHandler(handler)
    log.setLevel(spec.log_level)
    log.propagate = False
    try:
        try:
            provider = pickle.loads(spec.provider)
        except Exception as exc:
            raise ConfigError(
                f"the upload process could not rebuild the provider ({type(exc).__name__}: "
                f"{exc}); define its class in an importable module, not in __main__"
            ) from None
        engine = _ChildEngine(provider, spec, out)
        await engine.open()
    except Exception as exc:
        out.put(wire.Ready(wire.RemoteError.of(exc)))
        out.flush()
        return
    # Through the outbox, so log records from opening reach the parent first, in order.
    out.put(wire.Ready(None))
    out.flush()
    inbox: asyncio.Queue[wire.ToChild | None] = asyncio.Queue()
    reader = threading.Thread(
        target=_read_parent,
        args=(conn, loop, inbox, spec.parent_pid),
        name="artifact-uploader-inbox",
        daemon=True,
    )
    reader.start()
    calls: set[asyncio.Task[None]] = set()
    while (msg := await inbox.get()) is not None:
        if isinstance(msg, wire.Submit):
            engine.accept(msg)
            continue
        if isinstance(msg, wire.Close):
            await engine.call(msg)
            if calls:  # a flush that was waiting alongside close: drained now, let it answer
                await asyncio.wait(calls)
            out.flush()
            return
        # flush / resume run alongside further submissions, as on the thread-mode loop.
        task = loop.create_task(engine.call(msg))
        calls.add(task)
        task.add_done_callback(calls.discard)
    # The parent died: stop now. What did not finish stays journalled for resume.
    out.broken = True
    with contextlib.suppress(Exception):
        await engine.aclose(0)


def _child_main(fd: int) -> None:
    """Entry point of the upload process (see ``_BOOT``)."""
    # Ctrl-C (and a scheduler's SIGTERM) reach the whole process group: they are the training
    # process's to handle; it then closes (drains) this process, or dies and this process
    # follows it. Dying here first would lose uploads the handler still wants to make.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    conn = Connection(fd)
    code = 0
    try:
        spec: wire.Spec = conn.recv()
        asyncio.run(_serve(conn, spec))
    except BaseException:
        traceback.print_exc()  # to the inherited stderr: the log handler needs the loop
        code = 1
    # Exit without waiting for threads a library may have left behind (nothing is buffered:
    # the journal and the socket are closed or flushed); the parent waits for this exit.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


# -- the parent ---------------------------------------------------------------------------


def close_unopened(engine: AsyncUploader) -> None:
    """Close an engine that never opened (or whose loop is gone): journal and staging folder."""
    engine._stop_submits()  # a submission still staging must hand off first
    if engine._state == "new":
        engine._state = "closed"
        engine._close_files()


class _Call:
    """A blocking call waiting for the child's reply."""

    __slots__ = ("_done", "error", "value")

    def __init__(self) -> None:
        self._done = threading.Event()
        self.value: Any = None
        self.error: BaseException | None = None

    def set(self, value: Any, error: BaseException | None) -> None:
        self.value, self.error = value, error
        self._done.set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    def result(self) -> Any:
        self._done.wait()
        if self.error is not None:
            raise self.error
        return self.value


class ProcessBackend:
    """Runs an uploader's uploads in a child process (``Uploader(..., use_procs=True)``).

    ``engine`` is the parent's :class:`AsyncUploader`, never opened: it validates the options,
    stages and journals in the caller's thread (its ``_prepare``), holds the counters, the event
    listeners and the failures. This object moves everything else to the child.

    Raises:
        ConfigError: The provider cannot be sent to a child process (not picklable).
        UploadError: The child could not start; or what opening the store raised there
            (StoreNotFoundError, PermissionDeniedError...), with the same type.
    """

    def __init__(self, engine: AsyncUploader, *, forward_events: bool) -> None:
        self._engine = engine
        try:
            provider = pickle.dumps(engine.provider)
        except Exception as exc:
            raise ConfigError(
                f"use_procs=True cannot send {engine.provider!r} to the upload process "
                f"({type(exc).__name__}: {exc}); give the store as a URI (file://, s3://, "
                "gs://, az://) or a picklable provider, or use use_procs=False"
            ) from None
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        # staged id -> (future, staged file, object name) of each upload the child holds.
        self._pending: dict[str, _Pending] = {}
        self._ids: weakref.WeakKeyDictionary[concurrent.futures.Future[Any], str] = (
            weakref.WeakKeyDictionary()
        )
        self._calls: dict[int, _Call] = {}
        self._call_ids = itertools.count()
        self._closing = False
        self._gone: str | None = None  # why the child is gone, once it is
        stager = engine._stager
        spec = wire.Spec(
            provider=provider,
            max_concurrency=engine.max_concurrency,
            retry=engine.retry,
            parts=engine.parts,
            verify=engine.verify,
            folder=str(stager.folder),
            persistent=stager.persistent,
            forward_events=forward_events,
            parent_pid=os.getpid(),
            log_level=log.getEffectiveLevel(),
            track_names=bool(engine._inherited),
        )
        conn, child_conn = Pipe()
        fds = [child_conn.fileno()]
        if stager._lock_fd is not None:
            fds.append(stager._lock_fd)
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-c", _BOOT, str(child_conn.fileno()), json.dumps(sys.path)],
                pass_fds=fds,
                stdin=subprocess.DEVNULL,
            )
        finally:
            child_conn.close()
        self._conn = conn
        self.worker_pid = self._proc.pid
        try:
            conn.send(spec)
            error = self._wait_ready()
        except (EOFError, OSError):
            error = wire.RemoteError.of(
                UploadError(
                    f"the upload process (pid {self.worker_pid}) "
                    f"{_exit_status(self._stop_child())} while starting; see its output"
                )
            )
        except BaseException:
            self._stop_child(kill=True)
            conn.close()
            raise
        if error is not None:
            self._stop_child()
            conn.close()
            raise error.rebuild()
        self._reader = threading.Thread(
            target=self._read, name="artifact-uploader-results", daemon=True
        )
        self._reader.start()
        assert self._reader.ident is not None
        self.thread_ident: int = self._reader.ident

    def _wait_ready(self) -> wire.RemoteError | None:
        """Apply the child's first messages (log records) until it says whether it opened."""
        while True:
            batch: list[wire.ToParent] = self._conn.recv()
            ready = [msg for msg in batch if isinstance(msg, wire.Ready)]
            for msg in batch:
                if not isinstance(msg, wire.Ready):
                    self._dispatch(msg)
            if ready:
                return ready[0].error

    # -- calls from the Uploader -------------------------------------------------------------

    def check_alive(self) -> None:
        """Raise UploaderClosedError if the child died."""
        gone = self._gone
        if gone is not None and not self._closing:
            raise UploaderClosedError(gone)

    def hand_off(
        self, prepared: _Prepared, after: concurrent.futures.Future[Any] | None
    ) -> concurrent.futures.Future[UploadResult]:
        """Send a staged file to the child; return the future its upload resolves."""
        after_id = None
        if after is not None:
            after_id = self._ids.get(after)
            if after_id is None:
                raise ConfigError(f"{after!r} is not an upload of this uploader")
        future: concurrent.futures.Future[UploadResult] = concurrent.futures.Future()
        staged = prepared.staged
        with self._lock:
            if self._gone is not None:
                raise UploaderClosedError(self._gone)
            self._pending[staged.id] = (future, staged, prepared.name)
            self._ids[future] = staged.id
        try:
            self._send(wire.Submit.of(prepared, after_id))
        except UploaderClosedError:
            with self._lock:
                if self._pending.pop(staged.id, None) is None:
                    return future  # the reader already failed it (kept and reported)
            raise
        return future

    def flush(self, timeout: float | None) -> None:
        """Wait for the child to finish what was sent; raise failures like thread mode."""
        try:
            self._call(partial(wire.Flush, timeout=timeout))
        except UploaderClosedError:
            self._raise_failures()  # what the dead child lost comes first
            raise
        self._raise_failures()

    def resume(self) -> ResumeReport:
        """Upload what a previous run left journalled (in the child)."""
        engine = self._engine
        entries: list[JournalEntry]
        entries, engine._inherited = engine._inherited, []
        report: ResumeReport = self._call(
            partial(
                wire.Resume,
                entries=entries,
                skipped_lines=list(engine.journal_problems),
                bad_entries=list(engine.journal_bad_entries),
            )
        )
        self._raise_failures("while resuming")
        return report

    def read(
        self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any], timeout: float | None
    ) -> Any:
        """A read (download, head, exists, list), run by the child's engine."""
        return self._call(
            partial(wire.Read, method=method, args=args, kwargs=kwargs, timeout=timeout)
        )

    def take_failures(self) -> list[FailedUpload]:
        """Failures not yet reported; clears them."""
        with self._lock:
            return self._engine._take_failures()

    def close(self, timeout: float | None) -> None:
        """Drain (up to ``timeout``), stop the child, close the staging folder, raise failures."""
        with self._lock:
            self._closing = True
        # The child bounds its own close by ``timeout`` plus its cleanup budget; past a small
        # margin on top of that it is stuck, and is killed: its unfinished uploads stay
        # journalled. Its exit after answering gets the same short margin.
        patience = None
        exit_wait = _EXIT_TIMEOUT
        if timeout is not None:
            patience = timeout + 2 * cleanup_budget(timeout) + _REPLY_MARGIN
            exit_wait = _REPLY_MARGIN
        interrupted = True
        try:
            with contextlib.suppress(UploaderClosedError):  # already gone: losses are recorded
                self._call(partial(wire.Close, timeout=timeout), patience=patience)
            interrupted = False
        finally:
            # Interrupted (a second Ctrl-C): stop now; what did not finish stays journalled.
            self._stop_child(kill=interrupted, wait=exit_wait)
            self._reader.join()
            self._conn.close()
            close_unopened(self._engine)
        self._raise_failures("before close")

    # -- plumbing ----------------------------------------------------------------------------

    def _raise_failures(self, context: str = "") -> None:
        failures = self.take_failures()
        if failures:
            raise UploadFailedError(failures, context=context)

    def _send(self, msg: wire.ToChild) -> None:
        try:
            with self._send_lock:
                self._conn.send(msg)
        except OSError as exc:
            raise UploaderClosedError(
                self._gone or f"the upload process (pid {self.worker_pid}) is gone ({exc})"
            ) from None

    def _call(self, make: Callable[[int], wire.Call], *, patience: float | None = None) -> Any:
        call = _Call()
        with self._lock:
            if self._gone is not None:
                raise UploaderClosedError(self._gone)
            req = next(self._call_ids)
            self._calls[req] = call
        msg = make(req)
        self._send(msg)
        if not call.wait(patience):
            what = type(msg).__name__.lower()
            log.error("upload process %d did not answer %s(); killing it", self.worker_pid, what)
            with contextlib.suppress(OSError):
                self._proc.kill()
        return call.result()

    def _stop_child(self, *, kill: bool = False, wait: float = _EXIT_TIMEOUT) -> int | None:
        if kill:
            with contextlib.suppress(OSError):
                self._proc.kill()
        try:
            return self._proc.wait(wait)
        except subprocess.TimeoutExpired:
            log.error("upload process %d did not exit; killing it", self._proc.pid)
            self._proc.kill()
            return self._proc.wait()

    def _read(self) -> None:
        """Reader thread: apply the child's messages until its socket closes."""
        try:
            while True:
                batch: list[wire.ToParent] = self._conn.recv()
                for msg in batch:
                    try:
                        self._dispatch(msg)
                    except Exception:
                        log.exception("could not apply a message from the upload process")
        except (EOFError, OSError):
            pass
        except Exception:
            log.exception("lost the connection to the upload process")
            with contextlib.suppress(OSError):
                self._proc.kill()
        self._child_gone()

    def _dispatch(self, msg: wire.ToParent) -> None:
        engine = self._engine
        match msg:
            case wire.Count():
                engine._count(**msg.deltas)
            case wire.Event():
                engine._emit(
                    msg.kind,
                    msg.name,
                    msg.size,
                    nbytes=msg.nbytes,
                    attempt=msg.attempt,
                    delay=msg.delay,
                    error=wire.unpack(msg.error),
                )
            case wire.Failure():
                with self._lock:
                    engine._add_failure(
                        FailedUpload(msg.name, msg.staged_path, msg.error.rebuild())
                    )
            case wire.End():
                with self._lock:
                    entry = self._pending.pop(msg.staged_id, None)
                if entry is not None:  # None: an upload resumed from the journal
                    future, staged, _ = entry
                    engine._stager.forget(staged)  # the child deleted it if it was uploaded
                    _resolve(future, msg.result, wire.unpack(msg.error))
            case wire.Log():
                log.log(msg.level, "%s", msg.text)
            case wire.Reply():
                with self._lock:
                    call = self._calls.pop(msg.req, None)
                if call is not None:
                    call.set(msg.value, wire.unpack(msg.error))

    def _child_gone(self) -> None:
        """The child's socket closed: fail what it still held, wake every waiting call."""
        try:
            returncode: int | None = self._proc.wait(_EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            returncode = None
        with self._lock:
            if returncode == 0 and self._closing:
                reason = "the uploader closed"
            else:
                reason = f"the upload process (pid {self.worker_pid}) {_exit_status(returncode)}"
            self._gone = reason
            pending, self._pending = self._pending, {}
            calls, self._calls = self._calls, {}
        engine = self._engine
        for future, staged, name in pending.values():
            cause: BaseException
            if returncode == 0 and self._closing:
                cause = TimeoutError(
                    f"upload of {name!r} did not finish before the uploader closed"
                )
            else:
                cause = UploaderClosedError(f"{name!r} was not uploaded: {reason}")
            engine._stager.forget(staged)
            with self._lock:
                engine._add_failure(FailedUpload(name, str(staged.path), cause))
            engine._count(files_failed=1)
            engine._emit(EventKind.FAILED, name, staged.size, error=cause)
            _resolve(future, None, cause)
        for call in calls.values():
            call.set(None, UploaderClosedError(reason))


def _resolve(
    future: concurrent.futures.Future[UploadResult],
    result: UploadResult | None,
    error: BaseException | None,
) -> None:
    # A future the caller cancelled stays cancelled; the upload's outcome is still recorded.
    with contextlib.suppress(concurrent.futures.InvalidStateError):
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]
