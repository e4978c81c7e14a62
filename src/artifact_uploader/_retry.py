"""Bounded retries with full jitter; only errors marked transient are retried.

Also the stall watchdog: :class:`StallWatchdog` runs each attempt under an activity clock that
providers advance with :func:`note_progress` whenever bytes move; an attempt whose clock stands
still for ``stall_timeout`` seconds is cancelled and ends in a transient
:class:`StallTimeoutError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

from ._config import RetryPolicy
from ._errors import ProviderError, StallTimeoutError, is_transient

T = TypeVar("T")
log = logging.getLogger("artifact_uploader")

OnRetry = Callable[[int, BaseException, float], None]
"""Called with (failed attempt number, error, delay before the next attempt)."""


async def retrying(
    policy: RetryPolicy,
    attempt: Callable[[], Awaitable[T]],
    *,
    what: str,
    on_retry: OnRetry | None = None,
) -> T:
    """Run ``attempt`` until it succeeds, a permanent error occurs, or the policy is exhausted.

    The final error is re-raised as is; a :class:`ProviderError` gets ``attempts`` set so callers
    can tell how hard we tried.
    """
    start = time.monotonic()
    failures = 0
    while True:
        try:
            return await attempt()
        except Exception as exc:
            failures += 1
            if not is_transient(exc) or failures >= policy.attempts:
                _note_attempts(exc, failures)
                raise
            retry_after = exc.retry_after if isinstance(exc, ProviderError) else None
            delay = policy.backoff(failures, retry_after)
            if policy.deadline is not None and time.monotonic() - start + delay > policy.deadline:
                _note_attempts(exc, failures)
                raise
            log.info("retrying %s after %s (attempt %d, waiting %.2fs)", what, exc, failures, delay)
            if on_retry is not None:
                on_retry(failures, exc, delay)
            await asyncio.sleep(delay)


def _note_attempts(exc: BaseException, attempts: int) -> None:
    if isinstance(exc, ProviderError):
        exc.attempts = attempts


class _Clock:
    """One watched attempt: when it last made progress (``time.monotonic()``), whether a
    provider's own timeouts guard it right now (``self_timed`` depth), and whether the
    watchdog cancelled it."""

    __slots__ = ("fired", "last", "self_timed", "task")

    def __init__(self, task: asyncio.Task[Any]) -> None:
        self.last = time.monotonic()
        self.self_timed = 0
        self.fired = False
        self.task = task


# Set by the engine around each watched attempt. A context variable rather than an argument so
# the Provider protocol stays unchanged; anyio's worker threads and the tasks an attempt starts
# inherit it, so body readers running there tick the same clock.
_ACTIVITY: contextvars.ContextVar[_Clock | None] = contextvars.ContextVar(
    "artifact_uploader_activity", default=None
)


def note_progress() -> None:
    """Tell the stall watchdog that the current request moved bytes.

    Providers call it when body bytes are read or sent and when response bytes arrive. It
    costs one context-variable lookup and one timestamp store; outside a watched attempt it
    does nothing.
    """
    clock = _ACTIVITY.get()
    if clock is not None:
        clock.last = time.monotonic()


@contextlib.contextmanager
def self_timed() -> Iterator[None]:
    """Hold the stall watchdog off while the provider's own timeouts guard a request.

    For requests whose every phase a progress-based socket timeout already covers (the S3
    provider's bodiless or tiny-body requests: aiohttp's read timeout restarts on every byte
    received), so a slow answer that keeps trickling in (S3 sends whitespace while it completes
    a large multipart upload) is not cut off by a watchdog that cannot see those bytes.
    """
    clock = _ACTIVITY.get()
    if clock is None:
        yield
        return
    clock.self_timed += 1
    try:
        yield
    finally:
        clock.self_timed -= 1
        clock.last = time.monotonic()


class StallWatchdog:
    """Aborts attempts that make no progress for ``stall_timeout`` seconds.

    One timer per uploader, not one per attempt: it wakes every quarter of ``stall_timeout``
    while attempts are running and cancels those idle for at least ``stall_timeout``, so an
    attempt costs a set insertion and a context-variable set (a stalled one is aborted between
    1 and 1.25 ``stall_timeout`` after its last progress). Bound to the loop it first runs on.
    """

    def __init__(self, stall_timeout: float) -> None:
        self.stall_timeout = stall_timeout
        self._active: set[_Clock] = set()
        self._handle: asyncio.TimerHandle | None = None

    async def run(
        self,
        op: Callable[[], Awaitable[T]],
        *,
        what: str,
        name: str | None = None,
        uri: str | None = None,
    ) -> T:
        """Run one attempt of ``op`` under the watchdog.

        Raises:
            StallTimeoutError: The attempt stood still for ``stall_timeout`` seconds (transient).
        """
        task = asyncio.current_task()
        assert task is not None
        clock = _Clock(task)
        token = _ACTIVITY.set(clock)
        self._active.add(clock)
        if self._handle is None:
            self._handle = asyncio.get_running_loop().call_later(self.stall_timeout / 4, self._scan)
        try:
            result = await op()
        except (Exception, asyncio.CancelledError) as exc:
            # Our cancel may surface as CancelledError or, if something below converted it,
            # as another error. uncancel() > 0 means someone else cancelled the task too:
            # then the cancellation wins.
            if clock.fired and task.uncancel() == 0:
                raise StallTimeoutError(
                    f"{what} made no progress for {self.stall_timeout:g}s; aborted",
                    seconds=self.stall_timeout,
                    name=name,
                    uri=uri,
                ) from (None if isinstance(exc, asyncio.CancelledError) else exc)
            raise
        else:
            if clock.fired:
                # Finished all the same (something below swallowed the cancellation).
                task.uncancel()
            return result
        finally:
            self._active.discard(clock)
            _ACTIVITY.reset(token)

    def _scan(self) -> None:
        now = time.monotonic()
        for clock in self._active:
            if not clock.fired and not clock.self_timed and now - clock.last >= self.stall_timeout:
                clock.fired = True
                clock.task.cancel()
        if self._active:
            self._handle = asyncio.get_running_loop().call_later(self.stall_timeout / 4, self._scan)
        else:
            # Idle: the next attempt re-arms the timer.
            self._handle = None
