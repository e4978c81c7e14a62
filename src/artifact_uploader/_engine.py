"""The loop side of an uploader, wired: core + transfer + resumer + reads.

:func:`build_engine` builds it from a provider, the options, the staging folder and journal,
and a :class:`~._report.Reporter`. ``AsyncUploader`` and the thread runner use it with the
caller's :class:`~._report.LocalReporter`; the ``use_procs`` child uses it with a reporter that
writes to the pipe. The staging folder and the journal stay their owner's to close.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from ._core import Core
from ._download import Reads
from ._errors import ConfigError
from ._intake import EngineOptions, Gate, Intake, Lifecycle
from ._journal import Journal, JournalEntry
from ._report import LocalReporter, Reporter
from ._resume import Resumer, ResumeReport
from ._staging import Stager
from ._transfer import RequestRunner, Transfer, cleanup_budget
from .providers._protocol import Provider

log = logging.getLogger("artifact_uploader")


@dataclass(eq=False)
class Engine:
    """One provider's uploads and reads on one event loop (build it with
    :func:`build_engine`).

    Attributes:
        core: Scheduling (per-name chains, tasks); ``core.gate`` is the lifecycle it shares
            with its intake (its own in a child process).
        reads: download / head / exists / list (``reads.runner``: semaphore, watchdog,
            retries).
        loop: The loop it was built on (the only one it may be used from).
        enqueue: :meth:`Core.enqueue` (on the loop).
        enqueue_threadsafe: :meth:`Core.enqueue_threadsafe` (schedule it with
            ``loop.call_soon_threadsafe``).
        read_call: :meth:`Reads.call`, one read on behalf of a sync facade.
    """

    provider: Provider
    options: EngineOptions
    core: Core
    reads: Reads
    resumer: Resumer | None
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.get_running_loop)

    def __post_init__(self) -> None:
        self.gate = self.core.gate
        self.transfer = self.core.transfer
        self.runner = self.transfer.runner
        self.enqueue = self.core.enqueue
        self.enqueue_threadsafe = self.core.enqueue_threadsafe
        self.read_call = self.reads.call

    async def open(self) -> None:
        """Open the provider (checking the store when ``verify``); the gate opens.

        On failure the gate is closed and the provider closed; the caller closes its files.
        """
        try:
            await self.provider.open(verify=self.options.verify)
        except BaseException:
            self.gate.move(Lifecycle.CLOSED)
            await self.provider.aclose()
            raise
        self.gate.move(Lifecycle.OPEN)

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

        if self.gate.state in (Lifecycle.CLOSING, Lifecycle.CLOSED):
            return
        self.gate.move(Lifecycle.CLOSING)
        cleanup = self.transfer.cleanup_timeout = cleanup_budget(timeout)
        try:
            if not await self.core.drain(timeout):
                await self.core.cancel(cleanup)
            if stop_submits is not None:
                await anyio.to_thread.run_sync(stop_submits)
        finally:
            self.gate.move(Lifecycle.CLOSED)
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
        if self.resumer is None:
            raise ConfigError("resume needs a persistent staging folder (staging_dir=...)")
        return await self.resumer.resume(entries, problems, bad_entries)


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
    return Engine(provider, options, core, reads, resumer)


async def open_local(intake: Intake, reporter: LocalReporter, options: EngineOptions) -> Engine:
    """Build and open the engine of an uploader whose loop runs in this process (AsyncUploader,
    the thread runner): totals start, events stream through this loop, the engine shares the
    intake's gate. When opening fails, the intake's journal and staging folder are closed.
    """
    reporter.attach(asyncio.get_running_loop())
    engine = build_engine(
        intake.provider,
        options,
        intake.stager,
        intake.journal,
        reporter,
        gate=intake.gate,
        track_names=bool(intake.inherited),
    )
    try:
        await engine.open()
    except BaseException:
        intake.close_files()
        raise
    return engine


async def close_local(
    engine: Engine, intake: Intake, reporter: LocalReporter, timeout: float | None
) -> None:
    """Close what :func:`open_local` opened: the engine (see :meth:`Engine.aclose`), then the
    event streams and the intake's journal and staging folder, whatever happened."""
    try:
        await engine.aclose(timeout, stop_submits=intake.stop_submits)
    finally:
        reporter.end_streams()
        intake.close_files()
