"""Bounded retries with full jitter; only errors marked transient are retried."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from ._config import RetryPolicy
from ._errors import ProviderError, is_transient

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
