"""``use_procs=True``: the event loop and the uploads run in a child process.

The training process keeps the only part that must block, staging: ``Uploader.submit``
validates, stages and journals (fsync'd) the file in the caller's thread exactly as in thread
mode (the uploader's :class:`~._intake.Intake`), then sends the staged file's record to the
child over a socket and returns. The child (:mod:`~._child`) runs the same loop-side engine as
thread mode (the same ordering per object name, retries, multipart uploads and checksums) on its
own event loop, so neither its network code nor its Python work takes the training process's
GIL. A reader thread in the parent resolves each ``concurrent.futures.Future`` and feeds the
uploader's reporter (totals, ``on_event``, failures) from the child's messages::

    parent (training process)                     child (python -c ... child_main)
    -------------------------                     ---------------------------------
    submit: stage + journal "pending" (fsync)
      Submit(id, name, staged path, ...)     ───►  engine: upload, journal "multipart" /
    Flush / Close / Resume / Read(req, ...)  ───►  "done", delete the staged copy
    reader thread  ◄───  batches of Count | Event | Failure | End | Log | Reply
      resolves futures; the uploader's reporter     (from the child's PipeReporter)
      gets the totals, on_event and failures

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
- Failures: every failure the child's engine reports is forwarded and kept by the parent alone,
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
import weakref
from collections.abc import Callable
from functools import partial
from multiprocessing import Pipe
from multiprocessing.connection import Connection
from typing import Any

from . import _wire as wire
from ._errors import ConfigError, FailedUpload, UploaderClosedError, UploadError
from ._events import EventKind
from ._intake import EngineOptions, Intake, Prepared
from ._journal import JournalEntry
from ._report import LocalReporter
from ._resume import ResumeReport
from ._staging import StagedFile
from ._transfer import cleanup_budget
from ._types import UploadResult

log = logging.getLogger("artifact_uploader")

# The child's command line: adopt the parent's import path, then serve on the socket fd.
BOOT = (
    "import json, sys; sys.path[:] = json.loads(sys.argv[2]); "
    "from artifact_uploader._child import child_main; child_main(int(sys.argv[1]))"
)
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


def _spawn(lock_fd: int | None) -> tuple[subprocess.Popen[bytes], Connection]:
    """Start the child (fork + exec of ``sys.executable``) and return it and our socket end.

    The staging folder's lock goes along, so a second uploader cannot take the folder while an
    orphaned child still runs.
    """
    conn, child_conn = Pipe()
    fds = [child_conn.fileno()]
    if lock_fd is not None:
        fds.append(lock_fd)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-c", BOOT, str(child_conn.fileno()), json.dumps(sys.path)],
            pass_fds=fds,
            stdin=subprocess.DEVNULL,
        )
    except BaseException:
        conn.close()
        raise
    finally:
        child_conn.close()
    return proc, conn


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


class ProcessRunner:
    """Runs an uploader's uploads in a child process (``Uploader(..., use_procs=True)``).

    The uploader's ``intake`` stages and journals in the caller's thread and owns the staging
    folder; its ``reporter`` receives the child's counters, events and failures. This object
    starts the child, sends it each staged file and call, and resolves the futures.

    Raises:
        ConfigError: The provider cannot be sent to a child process (not picklable).
        UploadError: The child could not start; or what opening the store raised there
            (StoreNotFoundError, PermissionDeniedError...), with the same type.
    """

    def __init__(
        self,
        intake: Intake,
        reporter: LocalReporter,
        options: EngineOptions,
        *,
        forward_events: bool,
    ) -> None:
        self._intake = intake
        self._reporter = reporter
        try:
            provider = pickle.dumps(intake.provider)
        except Exception as exc:
            raise ConfigError(
                f"use_procs=True cannot send {intake.provider!r} to the upload process "
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
        stager = intake.stager
        spec = wire.Spec(
            provider=provider,
            options=options,
            folder=str(stager.folder),
            persistent=stager.persistent,
            forward_events=forward_events,
            parent_pid=os.getpid(),
            log_level=log.getEffectiveLevel(),
            track_names=bool(intake.inherited),
        )
        self._proc, self._conn = _spawn(intake.lock_fd)
        self.worker_pid = self._proc.pid
        self._start(spec)
        self._reader = threading.Thread(
            target=self._read, name="artifact-uploader-results", daemon=True
        )
        self._reader.start()
        assert self._reader.ident is not None
        self.thread_ident: int = self._reader.ident

    def _start(self, spec: wire.Spec) -> None:
        """Send the spec; apply the child's first messages (log records) until it says whether
        it opened. Raises what opening raised there (or why the child died)."""
        conn = self._conn
        error: wire.RemoteError | None = None
        try:
            conn.send(spec)
            while True:
                batch: list[wire.ToParent] = conn.recv()
                ready = [msg for msg in batch if isinstance(msg, wire.Ready)]
                for msg in batch:
                    if not isinstance(msg, wire.Ready):
                        self._dispatch(msg)
                if ready:
                    error = ready[0].error
                    break
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

    # -- the Runner interface ----------------------------------------------------------------

    def check_alive(self) -> None:
        """Raise UploaderClosedError if the child died."""
        gone = self._gone
        if gone is not None and not self._closing:
            raise UploaderClosedError(gone)

    def hand_off(
        self, prepared: Prepared, after: concurrent.futures.Future[Any] | None
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
        """Wait for the child to finish what was sent (its failures are already here)."""
        self._call(partial(wire.Flush, timeout=timeout))

    def resume(
        self, entries: list[JournalEntry], skipped_lines: list[str], bad_entries: list[str]
    ) -> ResumeReport:
        """Upload what a previous run left journalled (in the child)."""
        report: ResumeReport = self._call(
            partial(
                wire.Resume, entries=entries, skipped_lines=skipped_lines, bad_entries=bad_entries
            )
        )
        return report

    def read(
        self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any], timeout: float | None
    ) -> Any:
        """A read (download, head, exists, list), run by the child's engine."""
        return self._call(
            partial(wire.Read, method=method, args=args, kwargs=kwargs, timeout=timeout)
        )

    def close(self, timeout: float | None) -> None:
        """Drain (up to ``timeout``), stop the child, close the staging folder."""
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
            self._intake.close_unopened()

    # -- plumbing ----------------------------------------------------------------------------

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
        reporter = self._reporter
        match msg:
            case wire.Count():
                reporter.count(**msg.deltas)
            case wire.Event():
                reporter.emit(
                    msg.kind,
                    msg.name,
                    msg.size,
                    nbytes=msg.nbytes,
                    attempt=msg.attempt,
                    delay=msg.delay,
                    error=wire.unpack(msg.error),
                )
            case wire.Failure():
                reporter.add_failure(FailedUpload(msg.name, msg.staged_path, msg.error.rebuild()))
            case wire.End():
                with self._lock:
                    entry = self._pending.pop(msg.staged_id, None)
                if entry is not None:  # None: an upload resumed from the journal
                    future, staged, _ = entry
                    self._intake.forget(staged)  # the child deleted it if it was uploaded
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
        clean = returncode == 0 and self._closing
        with self._lock:
            if clean:
                reason = "the uploader closed"
            else:
                reason = f"the upload process (pid {self.worker_pid}) {_exit_status(returncode)}"
            self._gone = reason
            pending, self._pending = self._pending, {}
            calls, self._calls = self._calls, {}
        reporter = self._reporter
        for future, staged, name in pending.values():
            cause: BaseException
            if clean:
                cause = TimeoutError(
                    f"upload of {name!r} did not finish before the uploader closed"
                )
            else:
                cause = UploaderClosedError(f"{name!r} was not uploaded: {reason}")
            self._intake.forget(staged)
            reporter.add_failure(FailedUpload(name, str(staged.path), cause))
            reporter.count(files_failed=1)
            reporter.emit(EventKind.FAILED, name, staged.size, error=cause)
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
