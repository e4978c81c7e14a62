"""Frozen option records, validated at construction so bad values fail where they are made."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from ._errors import ConfigError

MiB = 1024 * 1024


def check_positive_int(value: object, what: str, *, minimum: int = 1) -> int:
    """Return ``value`` if it is an int >= ``minimum`` (bools refused), else raise ConfigError."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{what} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ConfigError(f"{what} must be >= {minimum}, got {value!r}")
    return value


def _check_number(value: object, what: str, *, allow_zero: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{what} must be a number, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{what} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return float(value)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How transient failures are retried. Only errors marked transient are retried.

    Each request (a PUT, a part, a multipart completion) is retried on its own. The delay before
    attempt ``n + 1`` is drawn uniformly from ``[0, min(max_delay, base_delay * 2**(n-1))]`` ("full
    jitter"), and never less than a ``Retry-After`` the server sent.

    Args:
        attempts: Total attempts per request, the first included. Default 5; 1 disables retries.
        base_delay: Seconds; scale of the first backoff. Default 0.2.
        max_delay: Seconds; cap on one backoff (and on an honoured Retry-After). Default 20.
        deadline: Seconds; no retry starts after this much time since the first attempt of a
            request. Default 300; None for no deadline.
        stall_timeout: Seconds an attempt may go without progress before it is aborted and
            retried as a transient :class:`StallTimeoutError`. Progress is what the provider can
            see: body bytes read from the staged file, chunks of a streamed body taken by the
            HTTP client, and responses between the requests of one attempt. The S3 provider
            hands a request's body over in one piece, so for PutObject and UploadPart it bounds
            the time from the body being ready to the response: the default leaves margin for
            an 8 MiB part down to ~70 KB/s per connection. Requests that a provider's own
            progress-based socket timeout fully covers (S3's CompleteMultipartUpload, under its
            ``read_timeout``: 60 s without a byte) are left to that timeout, which also ends in
            a transient error retried by this policy. Waiting for a concurrency slot is not
            timed. Default 120; None disables the watchdog.
    """

    attempts: int = 5
    base_delay: float = 0.2
    max_delay: float = 20.0
    deadline: float | None = 300.0
    stall_timeout: float | None = 120.0

    def __post_init__(self) -> None:
        check_positive_int(self.attempts, "RetryPolicy.attempts")
        _check_number(self.base_delay, "RetryPolicy.base_delay")
        _check_number(self.max_delay, "RetryPolicy.max_delay")
        if self.deadline is not None:
            _check_number(self.deadline, "RetryPolicy.deadline", allow_zero=False)
        if self.stall_timeout is not None:
            _check_number(self.stall_timeout, "RetryPolicy.stall_timeout", allow_zero=False)
            if not math.isfinite(self.stall_timeout):
                raise ConfigError(
                    "RetryPolicy.stall_timeout must be finite (None disables it), "
                    f"got {self.stall_timeout!r}"
                )

    def backoff(self, failed_attempts: int, retry_after: float | None = None) -> float:
        """Seconds to wait after ``failed_attempts`` failures (>= 1)."""
        cap = min(self.max_delay, self.base_delay * (2 ** (failed_attempts - 1)))
        delay = random.uniform(0.0, cap)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.max_delay))
        return delay


@dataclass(frozen=True, slots=True)
class PartPolicy:
    """When and how files are split into concurrently uploaded parts.

    Args:
        threshold: Files of at least this many bytes use multipart uploads where the store
            supports them. Default 16 MiB.
        part_size: Preferred part size; raised automatically so a file fits the store's part-count
            limit (a 1 TiB file on S3 gets ~105 MiB parts) and kept within its size limits.
            Default 8 MiB.
    """

    threshold: int = 16 * MiB
    part_size: int = 8 * MiB

    def __post_init__(self) -> None:
        check_positive_int(self.threshold, "PartPolicy.threshold")
        check_positive_int(self.part_size, "PartPolicy.part_size")

    def choose_part_size(self, size: int, min_part: int, max_part: int, max_parts: int) -> int:
        """Part size for a file of ``size`` bytes within the store's limits."""
        part = max(self.part_size, min_part, -(-size // max_parts))
        # Round up to a whole MiB: tidy numbers and aligned reads.
        part = -(-part // MiB) * MiB if part > MiB else part
        if part > max_part:
            raise ConfigError(
                f"a {size}-byte file needs parts of {part} bytes, above the store's {max_part}"
            )
        return part
