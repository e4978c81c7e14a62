"""The upload process of ``Uploader(use_procs=True)`` (see :mod:`artifact_uploader._procs`).

It runs the same loop-side engine as the thread runner (:func:`~._engine.build_engine`), with
a :class:`PipeReporter` that turns every report (counters, events, failures, an upload's end)
into a :mod:`~._wire` message to the parent. The parent's messages arrive on an inbox thread and
are applied on the loop in the order they were sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import signal
import sys
import threading
import traceback
from collections.abc import Awaitable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Unpack

from . import _wire as wire
from ._core import UploadHandle
from ._engine import Engine, build_engine
from ._errors import ConfigError, FailedUpload, UploadError
from ._events import EventKind
from ._journal import Journal
from ._report import EventDetail
from ._staging import Stager
from ._types import UploadResult

log = logging.getLogger("artifact_uploader")

# How often the child checks that its parent is still alive (when the socket is quiet).
PARENT_CHECK = 1.0


class Outbox:
    """Messages to the parent, sent as one batch per loop iteration (fewer wake-ups there).

    One batch keeps every message in order, so an upload's :class:`~._wire.End` always
    reaches the parent before the reply of the flush that waited for it. Messages from other
    threads (a provider's worker thread logging) join the batch through the loop.
    """

    def __init__(self, conn: Connection, loop: asyncio.AbstractEventLoop) -> None:
        self._conn = conn
        self._loop = loop
        self._loop_thread = threading.get_ident()
        self._batch: list[wire.ToParent] = []
        self._scheduled = False
        self.broken = False

    def put(self, msg: wire.ToParent) -> None:
        """Queue ``msg`` for the next batch (any thread)."""
        if threading.get_ident() != self._loop_thread:
            with contextlib.suppress(RuntimeError):  # the loop already closed
                self._loop.call_soon_threadsafe(self.put, msg)
            return
        self._batch.append(msg)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self.flush)

    def flush(self) -> None:
        """Send the batch now (on the loop)."""
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

    def __init__(self, out: Outbox) -> None:
        super().__init__()
        self._out = out

    def emit(self, record: logging.LogRecord) -> None:
        self._out.put(wire.Log(record.levelno, self.format(record)))


class PipeReporter:
    """The child's :class:`~._report.Reporter`: every report goes to the parent, which alone
    keeps totals and failures (so each failure is reported once, as in thread mode).

    It also remembers which uploads still run and which failed, so a :class:`~._wire.Submit`
    naming an earlier upload (``after_id``) can wait for it or fail at once.
    """

    def __init__(self, out: Outbox, *, forward_events: bool) -> None:
        self._out = out
        self._forward_events = forward_events
        self.running: dict[str, UploadHandle] = {}
        self.failed: dict[str, BaseException] = {}

    def count(self, **deltas: int) -> None:
        """Counter deltas, for the parent's totals."""
        self._out.put(wire.Count(deltas))

    def emit(self, kind: EventKind, name: str, size: int, **detail: Unpack[EventDetail]) -> None:
        """A progress event, sent only when the parent has a listener."""
        if self._forward_events:
            error = wire.pack(detail.get("error"))
            nbytes, attempt = detail.get("nbytes", 0), detail.get("attempt", 0)
            self._out.put(
                wire.Event(kind, name, size, nbytes, attempt, detail.get("delay", 0.0), error)
            )

    def add_failure(self, failure: FailedUpload) -> None:
        """A failure, sent as it happens (nothing is kept in this process)."""
        error = wire.RemoteError.of(failure.cause)
        self._out.put(wire.Failure(failure.name, failure.staged_path, error))

    def ended(
        self, staged_id: str, result: UploadResult | None, error: BaseException | None
    ) -> None:
        """An upload ended: the parent resolves its future (and releases its budget)."""
        self.running.pop(staged_id, None)
        if error is not None:
            self.failed[staged_id] = error
        self._out.put(wire.End(staged_id, result, wire.pack(error)))


async def _reraise(exc: BaseException) -> None:
    raise exc


class _Child:
    """Applies the parent's messages to the engine and answers its calls."""

    def __init__(self, engine: Engine, reporter: PipeReporter, out: Outbox) -> None:
        self._engine = engine
        self._reporter = reporter
        self._out = out

    def accept(self, msg: wire.Submit) -> None:
        """Start uploading a file the parent staged (in the order the parent sent them)."""
        reporter = self._reporter
        after: Awaitable[Any] | None = None
        if msg.after_id is not None:
            # Sent earlier, so either still running, failed, or done (no need to wait).
            after = reporter.running.get(msg.after_id)
            if after is None and (exc := reporter.failed.get(msg.after_id)) is not None:
                after = _reraise(exc)
        try:
            reporter.running[msg.staged_id] = self._engine.enqueue(msg.prepared(), after)
        except UploadError as exc:
            # Closing: refused, like a hand-off that lost the race with close() in thread mode.
            if asyncio.iscoroutine(after):
                after.close()
            reporter.add_failure(FailedUpload(msg.name, msg.path, exc))
            reporter.ended(msg.staged_id, None, exc)

    async def call(self, msg: wire.Call) -> None:
        """Run one of the parent's blocking calls and send back its outcome."""
        engine = self._engine
        value: Any = None
        error: BaseException | None = None
        try:
            match msg:
                case wire.Flush():
                    await engine.flush(msg.timeout)
                case wire.Close():
                    await engine.aclose(msg.timeout)
                case wire.Resume():
                    value = await engine.resume(msg.entries, msg.skipped_lines, msg.bad_entries)
                case wire.Read():
                    # download / head / exists / list: on this loop, under its semaphore.
                    value = await engine.read_call(msg.method, msg.args, msg.kwargs, msg.timeout)
        except Exception as exc:
            error = exc
        self._out.put(wire.Reply(msg.req, value, wire.pack(error)))
        self._out.flush()


def _read_parent(
    conn: Connection,
    loop: asyncio.AbstractEventLoop,
    inbox: asyncio.Queue[wire.ToChild | None],
    parent_pid: int,
) -> None:
    """Inbox thread: parent messages onto the loop; None once the parent is gone."""
    try:
        while True:
            if conn.poll(PARENT_CHECK):
                msg = conn.recv()
                loop.call_soon_threadsafe(inbox.put_nowait, msg)
            elif os.getppid() != parent_pid:
                # Orphaned, though the socket is still open (a fork of the parent holds it).
                break
    except (EOFError, OSError):
        pass
    with contextlib.suppress(RuntimeError):  # the loop already closed
        loop.call_soon_threadsafe(inbox.put_nowait, None)


async def _open(spec: wire.Spec, reporter: PipeReporter, journal: Journal | None) -> Engine:
    """Rebuild the provider and open the engine on the parent's staging folder."""
    try:
        provider = pickle.loads(spec.provider)
    except Exception as exc:
        raise ConfigError(
            f"the upload process could not rebuild the provider ({type(exc).__name__}: "
            f"{exc}); define its class in an importable module, not in __main__"
        ) from None
    # The parent owns the folder, its lock and the byte budget: this view of it never removes
    # it, holds no lock and counts nothing.
    stager = Stager.borrowed(spec.folder)
    engine = build_engine(
        provider, spec.options, stager, journal, reporter, track_names=spec.track_names
    )
    await engine.open()
    return engine


async def _serve(conn: Connection, spec: wire.Spec) -> None:
    loop = asyncio.get_running_loop()
    out = Outbox(conn, loop)
    log.addHandler(_ForwardLogs(out))
    log.setLevel(spec.log_level)
    log.propagate = False
    reporter = PipeReporter(out, forward_events=spec.forward_events)
    # The child appends ``multipart`` and ``done`` lines; only the parent compacts the journal
    # (before this process starts and after it has exited), so it is only closed here.
    journal = Journal(Path(spec.folder)) if spec.persistent else None
    try:
        try:
            engine = await _open(spec, reporter, journal)
        except Exception as exc:
            out.put(wire.Ready(wire.RemoteError.of(exc)))
            out.flush()
            return
        # Through the outbox, so log records from opening reach the parent first, in order.
        out.put(wire.Ready(None))
        out.flush()
        await _run(conn, spec, engine, _Child(engine, reporter, out), out)
    finally:
        if journal is not None:
            journal.close()


async def _run(
    conn: Connection, spec: wire.Spec, engine: Engine, child: _Child, out: Outbox
) -> None:
    """Apply the parent's messages until it closes this process or dies."""
    loop = asyncio.get_running_loop()
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
            child.accept(msg)
            continue
        if isinstance(msg, wire.Close):
            await child.call(msg)
            if calls:  # a flush that was waiting alongside close: drained now, let it answer
                await asyncio.wait(calls)
            out.flush()
            return
        # flush / resume / reads run alongside further submissions, as on the thread-mode loop.
        task = loop.create_task(child.call(msg))
        calls.add(task)
        task.add_done_callback(calls.discard)
    # The parent died: stop now. What did not finish stays journalled for resume.
    out.broken = True
    with contextlib.suppress(Exception):
        await engine.aclose(0)


def child_main(fd: int) -> None:
    """Entry point of the upload process (see ``_procs.BOOT``)."""
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
