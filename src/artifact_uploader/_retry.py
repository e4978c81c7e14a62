"""Bounded retries with full jitter; only errors marked transient are retried.

Also the stall watchdog: :func:`watched` runs one attempt under an activity clock that
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
from typing import TypeVar

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
    """When the current attempt last made progress (``time.monotonic()``), and whether a
    provider's own timeouts guard it right now (``self_timed`` depth)."""

    __slots__ = ("last", "self_timed")

    def __init__(self) -> None:
        self.last = time.monotonic()
        self.self_timed = 0


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


async def watched(
    op: Callable[[], Awaitable[T]],
    stall_timeout: float,
    *,
    what: str,
    name: str | None = None,
    uri: str | None = None,
) -> T:
    """Run one attempt of ``op``; cancel it once it has made no progress for ``stall_timeout``.

    Raises:
        StallTimeoutError: The attempt stood still for ``stall_timeout`` seconds (transient).
    """
    loop = asyncio.get_running_loop()
    clock = _Clock()
    token = _ACTIVITY.set(clock)
    handle: asyncio.TimerHandle | None = None
    cm = asyncio.timeout(None)
    try:
        async with cm:

            def check() -> None:
                nonlocal handle
                idle = time.monotonic() - clock.last
                if clock.self_timed:
                    handle = loop.call_later(stall_timeout, check)
                elif idle >= stall_timeout:
                    # Expire the timeout scope now: asyncio cancels the attempt and turns the
                    # cancellation into TimeoutError at the scope's end.
                    cm.reschedule(loop.time())
                else:
                    handle = loop.call_later(stall_timeout - idle, check)

            handle = loop.call_later(stall_timeout, check)
            return await op()
    except Exception as exc:
        if cm.expired():
            raise StallTimeoutError(
                f"{what} made no progress for {stall_timeout:g}s; aborted",
                seconds=stall_timeout,
                name=name,
                uri=uri,
            ) from exc
        raise
    finally:
        if handle is not None:
            handle.cancel()
        _ACTIVITY.reset(token)
