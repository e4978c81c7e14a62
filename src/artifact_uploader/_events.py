"""Progress events: what happened to each upload, and running totals."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum


class EventKind(StrEnum):
    """What an :class:`UploadEvent` reports."""

    QUEUED = "queued"
    """Accepted by ``submit``; staging starts."""
    STAGED = "staged"
    """Staged; ``submit`` returns."""
    BYTES_SENT = "bytes_sent"
    """A request (a whole object or one part) finished; ``bytes`` says how many it carried."""
    RETRY = "retry"
    """A transient failure; the request will be retried after ``delay`` seconds."""
    DONE = "done"
    """Durable in the store."""
    FAILED = "failed"
    """Gave up; ``error`` says why."""
    DOWNLOAD_STARTED = "download_started"
    """A download began; ``name`` is the object read (after symlinks), ``size`` its size."""
    BYTES_RECEIVED = "bytes_received"
    """A ranged GET of a download finished and was written; ``bytes`` says how many."""
    DOWNLOADED = "downloaded"
    """A download is verified and renamed into place."""
    DOWNLOAD_FAILED = "download_failed"
    """A download gave up (nothing was left at its destination); ``error`` says why."""


@dataclass(frozen=True, slots=True)
class UploadEvent:
    """One progress event (of an upload or, for the ``DOWNLOAD_*`` / ``BYTES_RECEIVED`` kinds, a
    download).

    Attributes:
        kind: What happened.
        name: Object name.
        size: The object's total size in bytes.
        bytes: Bytes carried by this event (BYTES_SENT), else 0.
        attempt: Failed attempt number (RETRY), else 0.
        delay: Seconds before the retry (RETRY), else 0.
        error: The error (RETRY, FAILED), else None.
        totals: Running totals after this event.
    """

    kind: EventKind
    name: str
    size: int
    totals: ProgressTotals
    bytes: int = 0
    attempt: int = 0
    delay: float = 0.0
    error: BaseException | None = None


@dataclass(frozen=True, slots=True)
class ProgressTotals:
    """Running totals since the uploader opened.

    Attributes:
        files_queued: Files accepted by ``submit``.
        files_done: Files durable.
        files_failed: Files given up on.
        bytes_queued: Bytes of files accepted.
        bytes_sent: Bytes confirmed by the store (retried bytes counted once).
        bytes_received: Bytes downloaded and written (retried ranges counted once).
        in_flight: Files accepted and not yet done or failed.
        elapsed: Seconds since the uploader opened.
    """

    files_queued: int = 0
    files_done: int = 0
    files_failed: int = 0
    bytes_queued: int = 0
    bytes_sent: int = 0
    in_flight: int = 0
    elapsed: float = 0.0
    bytes_received: int = 0

    @property
    def rate(self) -> float:
        """Bytes per second sent since the uploader opened."""
        return self.bytes_sent / self.elapsed if self.elapsed > 0 else 0.0


EventCallback = Callable[[UploadEvent], None]
