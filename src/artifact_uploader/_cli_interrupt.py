"""Ctrl-C in the command line: the first one lets uploads in flight finish, a second stops now.

While uploads run, :class:`CtrlC` is the SIGINT handler. The first Ctrl-C raises
KeyboardInterrupt: the command gives uploads in flight :data:`INTERRUPT_CLOSE_TIMEOUT` seconds
and reports what is left. A second one (or the first while the store is being opened, or while
closing) leaves at once through :func:`exit_now`, saying truthfully what stays behind.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import signal
import threading
from collections.abc import Callable, Sequence
from types import FrameType
from typing import TYPE_CHECKING, Any, NoReturn

from ._cli_options import EXIT_INTERRUPTED, INTERRUPT_CLOSE_TIMEOUT, hidden_note, resume_command
from ._cli_output import Output, UploadProgress
from ._errors import FailedUpload, UploadFailedError

if TYPE_CHECKING:
    from ._sync import Uploader


def ensure_ctrl_c() -> None:
    """Make Ctrl-C (SIGINT) raise KeyboardInterrupt even if it was ignored when we started.

    A process inherits an ignored SIGINT across exec, and Python installs its handler only when
    SIGINT is not ignored. POSIX shells ignore SIGINT for commands started in the background
    without job control (``cmd &`` in a script, CI runners, test harnesses), so there the
    command would carry on through every Ctrl-C or ``kill -INT``. Stopping an upload with
    Ctrl-C must always work: the report and the ``resume`` hint depend on it.
    """
    if threading.current_thread() is not threading.main_thread():
        return  # main() called from a thread: signal handlers belong to the main thread
    if signal.getsignal(signal.SIGINT) in (signal.SIG_IGN, signal.SIG_DFL, None):
        signal.signal(signal.SIGINT, signal.default_int_handler)


class CtrlC:
    """The SIGINT handler while uploads run (installed as a context manager).

    The first Ctrl-C calls ``first`` if given (which does not return), else raises
    KeyboardInterrupt: the command gives uploads in flight a few seconds, then reports what is
    left. A second one stops at once through ``second``,
    wherever it lands, even inside the first one's report or the uploader's close, where a
    second KeyboardInterrupt would escape the code that reports it.
    """

    def __init__(
        self, second: Callable[[], NoReturn], *, first: Callable[[], NoReturn] | None = None
    ) -> None:
        self.count = 0
        self._first = first
        self._second = second
        self._previous: Any = None
        self._installed = False

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1
        if self.count > 1:
            self._second()
        if self._first is not None:
            self._first()
        raise KeyboardInterrupt

    def __enter__(self) -> CtrlC:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self)
            self._installed = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)
            self._installed = False


def exit_now(output: Output, lines: Sequence[str]) -> NoReturn:
    """Write ``lines`` to stderr and exit 130 at once (safe inside a SIGINT handler).

    Runs from the SIGINT handler too, possibly while the main thread is inside a write to
    stderr: it writes with ``os.write`` (no buffered stream, no lock) and exits with
    ``os._exit`` (the loop thread may still be busy: it is not joined).
    """
    data = ("\n" + output.scrub("\n".join(lines)) + "\n").encode(errors="replace")
    with contextlib.suppress(OSError):
        while data:
            data = data[os.write(2, data) :]
    os._exit(EXIT_INTERRUPTED)


def opening(output: Output, what: str, cleanup: Callable[[], None] = lambda: None) -> CtrlC:
    """The SIGINT handler while the store is being opened: stop at once.

    Nothing has been staged or sent yet, so there is nothing to wait for; and an interrupted
    open can otherwise wait in the uploader's clean-up for the store's answer (up to the read
    timeout) before the KeyboardInterrupt gets out.
    """

    def stop() -> NoReturn:
        cleanup()
        exit_now(output, [f"interrupted while opening the store; {what}"])

    return CtrlC(stop, first=stop)


class Stop:
    """Leaving a run at once (a second Ctrl-C), saying truthfully what stays behind.

    The staging folder is journalled (the CLI always journals): every upload not confirmed
    there is still pending with its staged copy, so ``resume`` finishes exactly those. The
    folder is kept, not deleted: with ``--staging move`` it holds the only copy of the files,
    and deleting gigabytes is not what a second Ctrl-C asks for.
    """

    def __init__(
        self, output: Output, args: argparse.Namespace, staging_dir: str, *, own: bool
    ) -> None:
        self.output = output
        self.args = args
        self.staging_dir = staging_dir
        self.own = own

    def again(self) -> NoReturn:
        """A second Ctrl-C while uploads run."""
        self.now("interrupted again")

    def now(self, what: str) -> NoReturn:
        """Say ``what`` happened, what is kept and the command that finishes it; exit 130."""
        command, hidden = resume_command(self.args, self.staging_dir)
        lines = [
            f"{what}: stopped now. Uploads that did not finish are kept, journalled, with their "
            f"staged copies in {self.staging_dir}; to upload them:",
            f"  {command}",
        ]
        if hidden:
            lines.append(hidden_note(hidden))
        if self.own and getattr(self.args, "staging", None) != "move":
            lines.append(
                "  (or, to start over with `put` instead, delete that folder: "
                f"rm -r {shlex.quote(self.staging_dir)})"
            )
        exit_now(self.output, lines)


def say_interrupted(output: Output, progress: UploadProgress) -> None:
    """After a first Ctrl-C: stop the bar (so it is not drawn over) and say what happens."""
    progress.end()
    output.error(
        f"interrupted: giving uploads in flight {INTERRUPT_CLOSE_TIMEOUT:.0f}s to finish "
        "(Ctrl-C again to stop now)"
    )


def close_uploader(
    up: Uploader, *, interrupted: bool, progress: UploadProgress, stop: Stop
) -> list[FailedUpload]:
    """Close ``up`` (briefly after Ctrl-C) and return the failures it reports.

    A Ctrl-C during a normal close (the first one: a second goes to ``CtrlC``'s ``second``)
    stops at once.
    """
    try:
        up.close(timeout=INTERRUPT_CLOSE_TIMEOUT if interrupted else None)
    except UploadFailedError as exc:
        return list(exc.failures)
    except KeyboardInterrupt:
        progress.end()
        stop.now("interrupted while closing")
    return []
