"""Where the command line writes, and the progress bars it draws from the uploader's events.

The progress bar, warnings and every error go to stderr; the result (a summary table, or one
JSON document with ``--json``) goes to stdout. Every line passes through the
:class:`~artifact_uploader._cli_options.Scrubber` first. rich is imported only when something
is drawn, so ``main`` can say that the ``cli`` extra is missing instead of failing to import.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import TYPE_CHECKING, Any

from ._cli_options import Scrubber
from ._events import EventKind, ProgressTotals, UploadEvent

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, ProgressColumn, TaskID


def human_bytes(n: float) -> str:
    """``n`` bytes in decimal units (``12 B``, ``3.4 MB``)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


class Output:
    """Where the command writes: stderr for progress, warnings and errors; stdout for results."""

    def __init__(self, *, json_mode: bool, quiet: bool, scrub: Scrubber) -> None:
        from rich.console import Console

        self.json_mode = json_mode
        self.quiet = quiet
        self.scrub = scrub
        self.err: Console = Console(stderr=True, highlight=False)
        self.out: Console = Console(highlight=False)
        # A live bar only where someone watches it: stderr is a terminal that can redraw.
        # rich's is_terminal can be forced by FORCE_COLOR; a bar is drawn only on a real one.
        self.live = (
            not json_mode
            and not quiet
            and sys.stderr.isatty()
            and self.err.is_terminal
            and not self.err.is_dumb_terminal
        )

    def error(self, message: str) -> None:
        """A line on stderr, scrubbed."""
        self.err.print(self.scrub(message), markup=False, highlight=False, soft_wrap=True)

    def info(self, message: str) -> None:
        """A note on stderr, unless --quiet or --json."""
        if not self.quiet and not self.json_mode:
            self.error(message)

    def result(self, message: str) -> None:
        """A plain line on stdout (no markup, no highlighting, not wrapped)."""
        self.out.print(message, markup=False, highlight=False, soft_wrap=True)

    def emit_json(self, doc: dict[str, Any]) -> None:
        """The one JSON document of ``--json``, scrubbed, on stdout."""
        text = json.dumps(self.scrub.obj(doc), indent=2)
        sys.stdout.write(text + "\n")
        sys.stdout.flush()


class LogHandler(logging.Handler):
    """The library's log records on stderr, scrubbed; those the CLI reports itself dropped."""

    def __init__(self, output: Output, verbose: bool) -> None:
        super().__init__(logging.DEBUG if verbose else logging.WARNING)
        self.output = output
        self.verbose = verbose

    def emit(self, record: logging.LogRecord) -> None:
        if not self.verbose and (
            str(record.msg).startswith("upload of %r failed")
            or "skipped a corrupt journal line" in record.getMessage()
        ):
            return
        try:
            self.output.error(f"{record.levelname.lower()}: {record.getMessage()}")
        except Exception:
            self.handleError(record)


def configure_logging(output: Output, verbose: bool) -> None:
    """Route the library's log records to ``output`` (replacing an earlier run's handler)."""
    logger = logging.getLogger("artifact_uploader")
    for old in [h for h in logger.handlers if isinstance(h, LogHandler)]:
        logger.removeHandler(old)
    logger.addHandler(LogHandler(output, verbose))
    logger.setLevel(logging.DEBUG if verbose else logging.WARNING)
    # The CLI prints failures itself; Python's last-resort handler would print them twice.
    logger.propagate = False


def _start_bar(
    output: Output, label: str, columns: list[ProgressColumn], total: int, **fields: Any
) -> tuple[Progress, TaskID]:
    """A started rich bar: ``label``, the bar and its percentage, ``columns``, elapsed time."""
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

    progress = Progress(
        TextColumn(f"[bold]{label}"),
        BarColumn(),
        TaskProgressColumn(),
        *columns,
        TimeElapsedColumn(),
        console=output.err,
        refresh_per_second=8,
    )
    task = progress.add_task(label, total=total, **fields)
    progress.start()
    return progress, task


class UploadProgress:
    """A rich progress bar of files, bytes and rate, driven by the uploader's events.

    Built before the uploader (which takes ``on_event``); the bar appears at :meth:`begin`,
    once the totals are known, and only when ``output.live``.
    """

    def __init__(self, output: Output, verb: str) -> None:
        self.output = output
        self.verb = verb
        self.files = 0
        # Files refused at submit: they never reach the uploader's totals.
        self.refused = 0
        self.done_names: list[str] = []
        # Files counted as done without an upload (resume: already in the store).
        self._credited = (0, 0)
        self._last = ProgressTotals()
        self._by_bytes = True
        self._progress: Progress | None = None
        self._task: TaskID | None = None

    def begin(self, files: int, nbytes: int) -> None:
        """Draw the bar for ``files`` files of ``nbytes`` bytes in all."""
        self.files = files
        if not self.output.live:
            return
        from rich.progress import DownloadColumn, TextColumn

        # With only empty files there are no bytes to count: the bar counts files instead.
        self._by_bytes = nbytes > 0
        self._progress, self._task = _start_bar(
            self.output,
            self.verb,
            [
                TextColumn("{task.fields[files]} files"),
                DownloadColumn(),
                # The library's own rate (bytes confirmed by the store / elapsed), not rich's
                # estimate, which has too few samples when each update is a whole file.
                TextColumn("[red]{task.fields[rate]}"),
            ],
            nbytes if self._by_bytes else max(files, 1),
            files=f"0/{files}",
            rate="",
        )

    def end(self) -> None:
        """Stop the bar (idempotent), leaving its last state on the terminal.

        Events after this (uploads cancelled after Ctrl-C) are not printed: the final report
        names each of them once.
        """
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def refuse(self) -> None:
        """Count a file that submit refused (it never reaches the uploader's totals)."""
        self.refused += 1

    def credit(self, files: int, nbytes: int) -> None:
        """Count ``files`` of ``nbytes`` as done without an upload, and redraw."""
        self._credited = (files, nbytes)
        self._draw(self._last)

    def on_event(self, event: UploadEvent) -> None:
        """The uploader's callback (runs on its loop thread): keep it short."""
        if event.kind is EventKind.DONE:
            self.done_names.append(event.name)
        progress, task = self._progress, self._task
        if progress is None or task is None:
            return
        if event.kind is EventKind.FAILED:
            # Printed above the bar as it happens; the full list follows at the end.
            progress.console.print(
                self.output.scrub(f"failed: {event.name}: {event.error}"),
                markup=False,
                style="red",
            )
        self._last = event.totals
        self._draw(event.totals)

    def _draw(self, totals: ProgressTotals) -> None:
        progress, task = self._progress, self._task
        if progress is None or task is None:
            return
        failed = totals.files_failed + self.refused
        done = totals.files_done + self._credited[0]
        label = f"{done}/{self.files}"
        if failed:
            label += f" ({failed} failed)"
        progress.update(
            task,
            completed=totals.bytes_sent + self._credited[1] if self._by_bytes else done + failed,
            files=label,
            rate=f"{human_bytes(totals.rate)}/s",
        )


class DownloadProgress:
    """A byte progress bar for one download, started when the object's size is known."""

    def __init__(self, output: Output) -> None:
        self.output = output
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._base = 0  # bytes received before this download (the uploader's running total)

    def on_event(self, event: UploadEvent) -> None:
        """The uploader's callback (its loop thread)."""
        if not self.output.live:
            return
        if event.kind is EventKind.DOWNLOAD_STARTED and self._progress is None:
            from rich.progress import DownloadColumn, TransferSpeedColumn

            self._base = event.totals.bytes_received
            self._progress, self._task = _start_bar(
                self.output,
                "Downloading",
                [DownloadColumn(), TransferSpeedColumn()],
                max(event.size, 1),
            )
        elif self._progress is not None and self._task is not None:
            done = event.totals.bytes_received - self._base
            if event.kind is EventKind.DOWNLOADED:
                done = max(event.size, 1)
            self._progress.update(self._task, completed=done)

    def end(self) -> None:
        """Stop the bar (idempotent)."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
