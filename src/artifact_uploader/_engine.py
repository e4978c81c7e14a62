"""The loop side of an uploader, wired: core + transfer + resumer + reads.

:func:`build_engine` builds it from a provider, the options, the staging folder and journal,
and a :class:`~._report.Reporter`. ``AsyncUploader`` and the thread runner use it with the
caller's :class:`~._report.LocalReporter`; the ``use_procs`` child uses it with a reporter that
writes to the pipe. The staging folder and the journal stay their owner's to close.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from ._core import Core, UploadHandle
from ._download import Reads
from ._errors import ConfigError
from ._intake import EngineOptions, Gate, Prepared
from ._journal import Journal, JournalEntry
from ._report import Reporter
from ._resume import Resumer, ResumeReport
from ._staging import Stager
from ._transfer import RequestRunner, Transfer, cleanup_budget
from ._types import UploadResult
from .providers._protocol import Provider

log = logging.getLogger("artifact_uploader")


class Engine:
    """One provider's uploads and reads on one event loop.

    Attributes:
        loop: The loop it was built on (the only one it may be used from).
        gate: The lifecycle it shares with its intake (its own in a child process).
        core: Scheduling (per-name chains, tasks).
        transfer: Put / multipart / abort.
        runner: The request runner (semaphore, watchdog, retries).
        reads: download / head / exists / list.
    """

    def __init__(
        self,
        provider: Provider,
        options: EngineOptions,
        gate: Gate,
        core: Core,
        transfer: Transfer,
        reads: Reads,
        journal: Journal | None,
        resumer: Resumer | None,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.provider = provider
        self.options = options
        self.gate = gate
        self.core = core
        self.transfer = transfer
        self.runner = transfer.runner
        self.reads = reads
        self.journal = journal
        self._resumer = resumer

    async def open(self) -> None:
        """Open the provider (checking the store when ``verify``); the gate opens.

        On failure the gate is closed and the provider closed; the caller closes its files.
        """
        try:
            await self.provider.open(verify=self.options.verify)
        except BaseException:
            self.gate.move("closed")
            await self.provider.aclose()
            raise
        self.gate.move("open")

    def enqueue(self, prepared: Prepared, after: Awaitable[Any] | None = None) -> UploadHandle:
        """Start uploading ``prepared`` (on the loop); see :meth:`Core.enqueue`."""
        return self.core.enqueue(prepared, after)

    def enqueue_threadsafe(
        self,
        prepared: Prepared,
        target: concurrent.futures.Future[UploadResult],
        after: concurrent.futures.Future[Any] | None = None,
    ) -> None:
        """Schedule with ``loop.call_soon_threadsafe``; see :meth:`Core.enqueue_threadsafe`."""
        self.core.enqueue_threadsafe(prepared, target, after)

    async def flush(self, timeout: float | None = None) -> None:
        """Wait until every upload started so far has finished (failures stay with the
        reporter).

        Raises:
            TimeoutError: ``timeout`` expired first (nothing is cancelled).
        """
        if not await self.core.drain(timeout):
            raise TimeoutError(
                f"flush: {self.core.running} upload(s) still running after {timeout}s"
            )

    async def aclose(
        self, timeout: float | None = None, *, stop_submits: Callable[[], None] | None = None
    ) -> None:
        """Drain up to ``timeout``, cancel what is left (aborting multipart uploads), then
        close the provider; each cleanup step bounded by :func:`cleanup_budget`.

        ``stop_submits`` (blocking, run in a worker thread once uploads have drained) lets
        submissions still staging hand off first, so they are refused cleanly rather than
        finding their journal and staging folder closed under them. The gate ends "closed".
        """
        import anyio.to_thread

        if self.gate.state in ("closing", "closed"):
            return
        self.gate.move("closing")
        cleanup = self.transfer.cleanup_timeout = cleanup_budget(timeout)
        try:
            if not await self.core.drain(timeout):
                await self.core.cancel(cleanup)
            if stop_submits is not None:
                await anyio.to_thread.run_sync(stop_submits)
        finally:
            self.gate.move("closed")
            try:
                async with asyncio.timeout(cleanup):
                    await self.provider.aclose()
            except TimeoutError:
                log.warning("the provider did not close within %.1f s; left behind", cleanup)

    async def resume(
        self, entries: list[JournalEntry], problems: list[str], bad_entries: list[str]
    ) -> ResumeReport:
        """Resume what a previous run left journalled; see :meth:`Resumer.resume`.

        Raises:
            UploaderClosedError: Not open.
            ConfigError: No persistent staging folder (no journal).
        """
        self.gate.check_open()
        if self._resumer is None:
            raise ConfigError("resume needs a persistent staging folder (staging_dir=...)")
        return await self._resumer.resume(entries, problems, bad_entries)

    async def read_call(
        self,
        method: str,
        args: tuple[object, ...],
        kwargs: dict[str, object],
        timeout: float | None,
    ) -> object:
        """One read on behalf of a sync facade; see :meth:`Reads.call`."""
        return await self.reads.call(method, args, kwargs, timeout)


def build_engine(
    provider: Provider,
    options: EngineOptions,
    stager: Stager,
    journal: Journal | None,
    reporter: Reporter,
    *,
    gate: Gate | None = None,
    track_names: bool = False,
) -> Engine:
    """Wire the loop side. Call it on the loop that will run it, then ``await engine.open()``.

    Args:
        provider: The store (unopened).
        options: Validated options (:meth:`EngineOptions.of`).
        stager: The staging folder the uploads read from (budget released as they end).
        journal: The journal to append ``multipart`` / ``done`` lines to, or None.
        reporter: Where counters, events, failures and ends go.
        gate: The lifecycle to share with an intake; a new one when None (a child process).
        track_names: Inherited entries await a resume: remember names submitted meanwhile.
    """
    gate = gate if gate is not None else Gate()
    runner = RequestRunner(provider, options.retry, options.max_concurrency, reporter)
    transfer = Transfer(runner, options.parts, reporter, journal)
    core = Core(gate, transfer, reporter, stager, journal, track_names=track_names)
    resumer = Resumer(core, transfer, reporter, stager, journal) if journal is not None else None
    reads = Reads(provider, options.parts, runner, reporter, gate)
    return Engine(provider, options, gate, core, transfer, reads, journal, resumer)
