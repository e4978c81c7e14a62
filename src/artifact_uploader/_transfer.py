"""Transfer: put / multipart / abort, over one request runner.

Every request to the store (uploads, and the read side's ranged GETs) goes through
:meth:`RequestRunner.request`: one semaphore (``max_concurrency``), the stall watchdog and the
retry policy, in one place.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ._config import PartPolicy, RetryPolicy
from ._errors import ConfigError, ProviderError
from ._events import EventKind
from ._intake import Prepared
from ._journal import Journal
from ._report import Reporter
from ._retry import OnRetry, StallWatchdog, retrying
from ._types import FileSlice, PartResult, PutResult, UploadResult
from .providers._protocol import LostCreates, MultipartProvider, Provider

T = TypeVar("T")
log = logging.getLogger("artifact_uploader")

# How long a shielded cleanup (aborting a multipart upload) may hold up close(); a close with a
# shorter timeout shortens it too (see cleanup_budget).
_CLEANUP_TIMEOUT = 10.0


def cleanup_budget(timeout: float | None) -> float:
    """Seconds close(timeout) may spend on each cleanup step past ``timeout``.

    The steps: waiting for cancelled uploads (their multipart aborts), then closing the
    provider. So close(timeout) returns within ``timeout + 2 * cleanup_budget(timeout)``.
    """
    if timeout is None:
        return _CLEANUP_TIMEOUT
    return min(_CLEANUP_TIMEOUT, max(1.0, timeout))


def _first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return _first_error(exc)
        if not isinstance(exc, asyncio.CancelledError):
            return exc
    return group.exceptions[0]


async def run_workers(worker: Callable[[], Coroutine[Any, Any, None]], count: int) -> None:
    """Run ``count`` copies of ``worker`` at once; the first to fail cancels the others, and
    its error (not a sibling's cancellation) is raised as itself, not as a group."""
    try:
        async with asyncio.TaskGroup() as tg:
            for _ in range(count):
                tg.create_task(worker())
    except BaseExceptionGroup as group:
        raise _first_error(group) from None


@dataclass(eq=False)
class RequestRunner:
    """Runs one request to the store: under the semaphore, watched for stalls, retried.

    Built on the loop it serves (the semaphore and the watchdog's timer belong to it).
    """

    provider: Provider
    retry: RetryPolicy
    max_concurrency: int
    reporter: Reporter
    semaphore: asyncio.Semaphore = field(init=False)
    watchdog: StallWatchdog | None = field(init=False)

    def __post_init__(self) -> None:
        self.semaphore = asyncio.Semaphore(self.max_concurrency)
        stall = self.retry.stall_timeout
        self.watchdog = StallWatchdog(stall) if stall is not None else None

    async def request(self, op: Callable[[], Awaitable[T]], what: str, name: str, size: int) -> T:
        """``await op()`` under the semaphore and the watchdog, retried per the policy; each
        retry is reported as a RETRY event of object ``name`` (``size`` bytes)."""
        sem = self.semaphore
        watchdog = self.watchdog

        async def attempt() -> T:
            async with sem:
                if watchdog is None:
                    return await op()
                # Watched once a slot is held: queueing for one is not a stall.
                return await watchdog.run(op, what=what, name=name, uri=self.provider.uri(name))

        return await retrying(self.retry, attempt, what=what, on_retry=self.on_retry(name, size))

    def on_retry(self, name: str, size: int) -> OnRetry:
        """A callback reporting each retry as a RETRY event of object ``name``."""

        def on_retry(n: int, exc: BaseException, delay: float) -> None:
            self.reporter.emit(EventKind.RETRY, name, size, attempt=n, delay=delay, error=exc)

        return on_retry


@dataclass(eq=False)
class Transfer:
    """Moves one staged file into the store: one PUT, or a multipart upload (aborted on
    failure or cancellation).

    Attributes:
        live_ids: Multipart upload ids in flight (a resume must never abort one).
        cleanup_timeout: How long one abort may take (shortened by a close with a timeout).
    """

    runner: RequestRunner
    parts: PartPolicy
    reporter: Reporter
    journal: Journal | None
    live_ids: set[str] = field(default_factory=set)
    cleanup_timeout: float = _CLEANUP_TIMEOUT

    @property
    def provider(self) -> Provider:
        """The store."""
        return self.runner.provider

    @functools.cached_property
    def lost_creates(self) -> LostCreates | None:
        """The store, if it names uploads that lost creates started (checked once: a
        runtime-checkable Protocol isinstance costs tens of microseconds)."""
        provider = self.provider
        return provider if isinstance(provider, LostCreates) else None

    def _sent(self, name: str, size: int, n: int) -> None:
        self.reporter.count(bytes_sent=n)
        self.reporter.emit(EventKind.BYTES_SENT, name, size, nbytes=n)

    async def upload(self, prepared: Prepared) -> UploadResult:
        """Upload ``prepared``'s staged copy as its name; the result once durable."""
        name, staged, overwrite = prepared.name, prepared.staged, prepared.overwrite
        provider = self.provider
        size = staged.size
        # Size first: a runtime-checkable Protocol isinstance costs tens of microseconds.
        if size >= self.parts.threshold and isinstance(provider, MultipartProvider):
            put = await self._multipart(provider, prepared)
        else:
            data = FileSlice(staged.path, 0, size)
            put = await self.runner.request(
                lambda: provider.put(name, data, overwrite=overwrite), f"PUT {name!r}", name, size
            )
            self._sent(name, size, size)
        return UploadResult(
            uri=provider.uri(name),
            name=name,
            size=size,
            checksum_algorithm=put.checksum_algorithm,
            checksum=put.checksum,
            etag=put.etag,
            version=put.version,
        )

    async def _multipart(self, provider: MultipartProvider, prepared: Prepared) -> PutResult:
        name, staged, overwrite = prepared.name, prepared.staged, prepared.overwrite
        size = staged.size
        limits = provider.part_limits
        part_size = self.parts.choose_part_size(
            size, limits.min_part_size, limits.max_part_size, limits.max_parts
        )
        count = -(-size // part_size)
        request = self.runner.request
        upload_id = await request(
            lambda: provider.create_multipart(name, overwrite=overwrite),
            f"create multipart {name!r}",
            name,
            size,
        )
        self.live_ids.add(upload_id)
        results: list[PartResult | None] = [None] * count
        numbers = iter(range(1, count + 1))

        async def worker() -> None:
            # Workers pull part numbers, so at most max_concurrency parts are read at once:
            # memory stays bounded by parts in flight, never the whole file.
            for number in numbers:
                offset = (number - 1) * part_size
                data = FileSlice(staged.path, offset, min(part_size, size - offset))

                def put_part(n: int = number, d: FileSlice = data) -> Awaitable[PartResult]:
                    return provider.put_part(name, upload_id, n, d)

                results[number - 1] = await request(
                    put_part, f"part {number}/{count} of {name!r}", name, size
                )
                self._sent(name, size, data.length)

        try:
            if self.journal is not None:
                # Inside the try: an upload whose id could not be journalled is aborted now,
                # never left for no resume to find.
                self.journal.multipart(staged.id, upload_id)
            lost = self.lost_creates
            if lost is not None and lost.has_lost_creates(name):
                await self._abort_lost(lost, name, upload_id, size)
            await run_workers(worker, min(self.runner.max_concurrency, count))
            parts = [r for r in results if r is not None]
            return await request(
                lambda: provider.complete_multipart(name, upload_id, parts, overwrite=overwrite),
                f"complete multipart {name!r}",
                name,
                size,
            )
        except BaseException:
            await self.abort(provider, name, upload_id, size)
            raise
        finally:
            self.live_ids.discard(upload_id)

    async def _abort_lost(
        self, provider: LostCreates, name: str, upload_id: str, size: int
    ) -> None:
        """Abort the uploads that creates of ``name`` whose answers were lost started.

        The look is a request of its own, retried on its own: were it part of the create, each
        failed look would fail the create and orphan one more upload. A look that fails for
        good is logged (the store's lifecycle rule is left to clean up), never the upload's end.
        """
        try:
            lost = await self.runner.request(
                lambda: provider.lost_creates(name, upload_id),
                f"look for uploads of {name!r} whose create answers were lost",
                name,
                size,
            )
        except ProviderError as exc:
            log.warning("could not look for uploads of %r orphaned by a lost answer: %s", name, exc)
            return
        for orphan in lost:
            if orphan != upload_id and orphan not in self.live_ids:
                log.info("aborting an upload of %r whose create answer was lost", name)
                await self.abort(provider, name, orphan, size)

    async def abort(
        self, provider: MultipartProvider, name: str, upload_id: str, size: int
    ) -> None:
        """Abort a multipart upload of ``name`` (``size`` bytes), shielded and bounded by
        :attr:`cleanup_timeout`; each retry is reported as a RETRY event, a failure is logged,
        never raised."""

        # Shielded so a cancelled upload (close timeout) still leaves no orphaned parts.
        # Not under the semaphore: a cancelled upload holds no permit, and while other uploads
        # hang in their requests (the reason close timed out) an abort queueing for a permit
        # could spend its whole cleanup budget waiting. Aborts are small and rare, so exceeding
        # max_concurrency by the uploads being aborted is the lesser cost.
        on_retry = self.runner.on_retry(name, size)

        async def abort() -> None:
            try:
                async with asyncio.timeout(self.cleanup_timeout):
                    await retrying(
                        self.runner.retry,
                        lambda: provider.abort_multipart(name, upload_id),
                        what=f"abort multipart {name!r}",
                        on_retry=on_retry,
                    )
            except Exception as exc:
                why = (
                    f"no answer within {self.cleanup_timeout:g}s"
                    if isinstance(exc, TimeoutError) and not str(exc)
                    else exc
                )
                log.warning("could not abort multipart upload of %r: %s", name, why)

        task = asyncio.get_running_loop().create_task(abort())
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            await asyncio.wait([task])
            raise

    def part_size(self, size: int) -> int | None:
        """The part size this uploader would use for ``size`` bytes (None: a single request)."""
        provider = self.provider
        if not isinstance(provider, MultipartProvider) or size < self.parts.threshold:
            return None
        limits = provider.part_limits
        try:
            return self.parts.choose_part_size(
                size, limits.min_part_size, limits.max_part_size, limits.max_parts
            )
        except ConfigError:
            return None
