"""Where the engine reports what happens: counters, progress events, failures, ends.

The engine never keeps this state itself; it talks to a :class:`Reporter`. In the caller's
process that is a :class:`LocalReporter` (totals, ``on_event`` listeners, ``events()`` streams
and the failure registry); in the ``use_procs`` child it is one that writes each report to the
pipe, and the parent's :class:`LocalReporter` receives them there.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Protocol, TypedDict

from ._errors import FailedUpload
from ._events import EventCallback, EventKind, ProgressTotals, UploadEvent
from ._types import UploadResult

if TYPE_CHECKING:
    from typing_extensions import Unpack

log = logging.getLogger("artifact_uploader")

# Most events an events() consumer may fall behind before the oldest are dropped.
_EVENT_BUFFER = 10_000
# What count() may add to (ProgressTotals' fields that are running sums).
_COUNTERS = (
    "files_queued",
    "files_done",
    "files_failed",
    "bytes_queued",
    "bytes_sent",
    "bytes_received",
)


class EventDetail(TypedDict, total=False):
    """An event's optional fields (see :class:`UploadEvent`); absent ones are 0 / None."""

    nbytes: int
    attempt: int
    delay: float
    error: BaseException | None


class Reporter(Protocol):
    """What the engine tells the outside world. Called on the loop (``count`` / ``emit`` also
    from caller threads, while staging), so implementations are thread-safe."""

    def count(self, **deltas: int) -> None:
        """Add ``deltas`` to the running totals (``files_done=1``, ``bytes_sent=n``...)."""
        ...

    def emit(self, kind: EventKind, name: str, size: int, **detail: Unpack[EventDetail]) -> None:
        """One progress event (see :class:`UploadEvent` for the fields)."""
        ...

    def add_failure(self, failure: FailedUpload) -> None:
        """Record a failure, to be raised once by the next flush or close."""
        ...

    def ended(
        self, staged_id: str, result: UploadResult | None, error: BaseException | None
    ) -> None:
        """An upload the core accepted has ended: ``result``, or ``error`` (already recorded
        through :meth:`add_failure`). Called exactly once per accepted upload."""
        ...


class LocalReporter:
    """The reporter of the caller's process: totals, listeners, event streams and failures."""

    def __init__(self, on_event: EventCallback | None = None) -> None:
        self._listeners: list[EventCallback] = [on_event] if on_event is not None else []
        self._counts = dict.fromkeys(_COUNTERS, 0)
        self._start = time.monotonic()
        self._counter_lock = threading.Lock()
        self._failures: list[FailedUpload] = []
        # The loop appends failures while a caller's thread takes them (the logger, at its next
        # call): without a lock, one appended during the swap would be lost.
        self._failures_lock = threading.Lock()
        self._queues: list[asyncio.Queue[UploadEvent | None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def totals(self) -> ProgressTotals:
        """Running totals: files and bytes queued, sent, failed, in flight."""
        with self._counter_lock:
            counts = dict(self._counts)
            elapsed = time.monotonic() - self._start
        in_flight = counts["files_queued"] - counts["files_done"] - counts["files_failed"]
        return ProgressTotals(**counts, in_flight=in_flight, elapsed=elapsed)

    @property
    def subscribers(self) -> int:
        """How many ``events()`` iterators are listening."""
        return len(self._queues)

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the totals from zero, and stream events to ``events()`` through ``loop``."""
        with self._counter_lock:
            self._counts = dict.fromkeys(_COUNTERS, 0)
            self._start = time.monotonic()
        self._loop = loop

    # -- Reporter ----------------------------------------------------------------------------

    def count(self, **deltas: int) -> None:
        """Add ``deltas`` to the running totals."""
        with self._counter_lock:
            for k, v in deltas.items():
                self._counts[k] += v

    def emit(self, kind: EventKind, name: str, size: int, **detail: Unpack[EventDetail]) -> None:
        """Call every listener with the event (a raising listener is logged and ignored) and
        queue it for every ``events()`` iterator."""
        if not self._listeners and not self._queues:
            return
        event = UploadEvent(
            kind,
            name,
            size,
            self.totals,
            detail.get("nbytes", 0),
            detail.get("attempt", 0),
            detail.get("delay", 0.0),
            detail.get("error"),
        )
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:
                log.exception("progress callback raised; ignored")
        if self._queues and self._loop is not None:
            for q in self._queues:
                self._loop.call_soon_threadsafe(_offer, q, event)

    def add_failure(self, failure: FailedUpload) -> None:
        """Keep ``failure`` until :meth:`take_failures`."""
        with self._failures_lock:
            self._failures.append(failure)

    def ended(
        self, staged_id: str, result: UploadResult | None, error: BaseException | None
    ) -> None:
        """Nothing to do here: the upload's handle already carries its outcome."""

    # -- failures ----------------------------------------------------------------------------

    def take_failures(self) -> list[FailedUpload]:
        """Failures not yet reported; clears them (each is reported once)."""
        with self._failures_lock:
            failures, self._failures = self._failures, []
        return failures

    def failures(self) -> list[FailedUpload]:
        """Failures not yet reported, without clearing them."""
        with self._failures_lock:
            return list(self._failures)

    # -- event streams -----------------------------------------------------------------------

    async def events(self) -> AsyncIterator[UploadEvent]:
        """Events from now until :meth:`end_streams` (the oldest dropped past 10,000 behind)."""
        q: asyncio.Queue[UploadEvent | None] = asyncio.Queue(maxsize=_EVENT_BUFFER)
        self._queues.append(q)
        try:
            while (event := await q.get()) is not None:
                yield event
        finally:
            self._queues.remove(q)

    def end_streams(self) -> None:
        """End every ``events()`` iteration (on the loop), after the events already sent."""
        for q in self._queues:
            if self._loop is not None:
                # Behind the events emit() scheduled: each consumer gets them, then the end.
                self._loop.call_soon_threadsafe(_offer, q, None)
            else:
                _offer(q, None)


def _offer(q: asyncio.Queue[UploadEvent | None], item: UploadEvent | None) -> None:
    # A slow consumer loses the oldest events; the end-of-stream marker always gets in.
    if q.full():
        q.get_nowait()
    q.put_nowait(item)
