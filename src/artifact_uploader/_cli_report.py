"""What ``put`` and ``resume`` report at the end: failures on stderr, a table or JSON on stdout.

Both commands fill one :class:`Outcome`; this module turns it into the lines a user reads (every
failure named, with its staged copy and the exact ``resume`` command when one is left) and the
``--json`` document scripts read.
"""

from __future__ import annotations

import argparse
import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._cli_options import EXIT_OK, describe, hidden_note, resume_command
from ._cli_output import Output, human_bytes
from ._types import UploadResult

# What a failure caused by Ctrl-C is called in the report (and in --json's "error").
INTERRUPTED = "interrupted before it finished"
# Lines of a long list (failures, files not started) printed on stderr; --json lists them all.
MAX_LISTED = 50


@dataclass(frozen=True, slots=True)
class Item:
    """One file to upload and its object name."""

    source: Path
    name: str
    size: int


@dataclass
class Outcome:
    """What a ``put`` or ``resume`` run did; ``failed`` rows are (name, source, cause, staged)."""

    uploaded: list[tuple[Item | None, UploadResult]] = field(default_factory=list)
    failed: list[tuple[str, str, str, str | None]] = field(default_factory=list)
    not_started: list[Item] = field(default_factory=list)
    interrupted: bool = False
    seconds: float = 0.0
    staging_dir: str | None = None
    error: str | None = None
    skipped_lines: list[str] = field(default_factory=list)
    already_present: list[str] = field(default_factory=list)


def describe_failure(exc: BaseException, interrupted: bool) -> str:
    """A failure's description; uploads that Ctrl-C cut short are "interrupted".

    After Ctrl-C the uploader is closed with a short timeout and cancels what is still in
    flight, reporting each as a TimeoutError: the user stopped them, nothing timed out.
    """
    if interrupted and isinstance(exc, (TimeoutError, asyncio.CancelledError)):
        return INTERRUPTED
    return describe(exc)


def print_resume_hint(
    output: Output, args: argparse.Namespace, staging_dir: str, lead: str
) -> None:
    """``lead``, then the resume command on a line of its own (easy to copy)."""
    command, hidden = resume_command(args, staging_dir)
    output.error(f"{lead}\n  {command}")
    if hidden:
        output.error(hidden_note(hidden))


def report_failures(output: Output, outcome: Outcome, args: argparse.Namespace) -> None:
    """Name every failure and file not started on stderr, then how to finish them."""
    for name, source, cause, staged in outcome.failed[:MAX_LISTED]:
        kept = f" (staged copy kept at {staged})" if staged else ""
        origin = f" from {source}" if source else ""
        if cause == INTERRUPTED:
            output.error(f"not uploaded (interrupted): {name}{origin}{kept}")
        else:
            output.error(f"error: failed to upload {name}{origin}: {cause}{kept}")
    if len(outcome.failed) > MAX_LISTED:
        output.error(f"... and {len(outcome.failed) - MAX_LISTED} more failed (see --json)")
    if outcome.not_started:
        output.error(f"not started: {len(outcome.not_started)} file(s):")
        for item in outcome.not_started[:MAX_LISTED]:
            output.error(f"  {item.source}")
        if len(outcome.not_started) > MAX_LISTED:
            output.error(f"  ... and {len(outcome.not_started) - MAX_LISTED} more (see --json)")
    if any(staged for *_, staged in outcome.failed) and outcome.staging_dir:
        print_resume_hint(output, args, outcome.staging_dir, "to upload what is left, run:")


def summary_table(output: Output, title: str, outcome: Outcome) -> None:
    """``title`` and a one-row table (uploaded, failed, bytes, time, rate) on stdout."""
    from rich.table import Table

    nbytes = sum(r.size for _, r in outcome.uploaded)
    rate = nbytes / outcome.seconds if outcome.seconds > 0 else 0.0
    output.result(title)
    table = Table()
    for column in ("uploaded", "failed", "bytes", "time", "rate"):
        table.add_column(column, justify="right")
    failed = len(outcome.failed) + len(outcome.not_started)
    table.add_row(
        str(len(outcome.uploaded)),
        str(failed),
        human_bytes(nbytes),
        f"{outcome.seconds:.2f} s",
        f"{human_bytes(rate)}/s",
    )
    output.out.print(table)


def json_doc(args: argparse.Namespace, outcome: Outcome, code: int) -> dict[str, Any]:
    """The ``--json`` document of a ``put`` or ``resume`` run."""
    nbytes = sum(r.size for _, r in outcome.uploaded)
    return {
        "ok": code == EXIT_OK,
        "exit_code": code,
        "store": args.store,
        "interrupted": outcome.interrupted,
        "uploaded": [
            {
                "name": r.name,
                "uri": r.uri,
                "size": r.size,
                "source": str(item.source) if item else None,
                "checksum_algorithm": r.checksum_algorithm,
                "checksum": r.checksum,
                "etag": r.etag,
                "version": r.version,
            }
            for item, r in outcome.uploaded
        ],
        "failed": [
            {"name": n, "source": s or None, "error": c, "staged_path": p}
            for n, s, c, p in outcome.failed
        ],
        "not_started": [{"name": i.name, "source": str(i.source)} for i in outcome.not_started],
        "files": len(outcome.uploaded),
        "bytes": nbytes,
        "seconds": round(outcome.seconds, 6),
        "bytes_per_second": round(nbytes / outcome.seconds, 1) if outcome.seconds > 0 else 0.0,
        "staging_dir": outcome.staging_dir,
        "error": outcome.error,
        "skipped_lines": outcome.skipped_lines,
        "already_present": outcome.already_present,
    }
