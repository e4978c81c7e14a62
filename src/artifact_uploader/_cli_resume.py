"""``artifact-uploader resume``: finish what a killed run left in its staging folder.

The journal in the folder is the truth: every entry still in it is uploaded from its staged
copy, and whatever is left in it afterwards is reported as not uploaded.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

from ._cli_interrupt import CtrlC, Stop, close_uploader, opening, say_interrupted
from ._cli_options import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    UsageError,
    opening_failure,
    prog,
)
from ._cli_output import Output, UploadProgress
from ._cli_report import (
    INTERRUPTED,
    Outcome,
    describe_failure,
    json_doc,
    report_failures,
    summary_table,
)
from ._errors import ConfigError, FailedUpload, ProviderError, StagingError, UploadFailedError
from ._journal import JOURNAL_FILE, JournalEntry, load, resuming
from ._types import UploadResult

RESUME_DESCRIPTION = """\
Finish what a killed or interrupted `put --staging-dir DIR` left behind: every file
still journalled in DIR is uploaded from its staged copy (the sources are not needed),
orphaned multipart uploads are aborted, and corrupt journal lines are reported and skipped."""


def cmd_resume(args: argparse.Namespace, output: Output, options: dict[str, Any]) -> int:
    """Run ``resume``; return the exit code."""
    from ._sync import Uploader

    folder = Path(args.staging_dir)
    if not (folder / JOURNAL_FILE).is_file():
        raise UsageError(
            f"{str(folder)!r} holds no crash journal ({JOURNAL_FILE}); give the folder that was "
            "passed to --staging-dir (or staging_dir=...)"
        )
    outcome = Outcome(staging_dir=str(folder))
    progress = UploadProgress(output, "Resuming")
    start = time.monotonic()
    # What the uploader will find (it reads the journal the same way), for the bar and report.
    entries, outcome.skipped_lines = _read_journal(folder)
    try:
        with resuming(), opening(output, "nothing was uploaded"):
            # Built to resume its folder: no "resume me" warning.
            up = Uploader(
                args.store,
                staging_dir=folder,
                provider_kwargs=options,
                max_concurrency=args.concurrency,
                on_event=progress.on_event,
            )
    except (ConfigError, StagingError, ProviderError) as exc:
        code, outcome.error = opening_failure("resume", args.store, exc)
        output.error(outcome.error)
        if output.json_mode:
            output.emit_json(json_doc(args, outcome, code))
        return code

    sizes = {e.name: e.size for e in entries}
    progress.begin(len(entries), sum(sizes.values()))
    failures: list[FailedUpload] = []
    stop = Stop(output, args, str(folder), own=False)
    with CtrlC(stop.again):
        try:
            try:
                report = up.resume_pending()
                outcome.uploaded = [(None, r) for r in report.uploaded]
                outcome.already_present = report.already_present
                progress.credit(
                    len(report.already_present),
                    sum(sizes.get(n, 0) for n in report.already_present),
                )
            except UploadFailedError as exc:
                failures = list(exc.failures)
            except KeyboardInterrupt:
                outcome.interrupted = True
                say_interrupted(output, progress)
            failures += close_uploader(
                up, interrupted=outcome.interrupted, progress=progress, stop=stop
            )
        finally:
            progress.end()
    outcome.seconds = time.monotonic() - start
    if not outcome.uploaded:
        # resume_pending() raised: what it did upload is known from the events.
        outcome.uploaded = [
            (None, UploadResult(uri=up.uri(n), name=n, size=sizes.get(n, 0)))
            for n in progress.done_names
        ]
    reported = {f.name for f in failures}
    outcome.failed = [
        (f.name, "", describe_failure(f.cause, outcome.interrupted), f.staged_path)
        for f in failures
    ]
    # The journal is the truth for what is left (an interrupt can lose the failure list).
    for entry in load(folder)[0]:
        if entry.name not in reported:
            outcome.failed.append((entry.name, "", INTERRUPTED, str(folder / entry.staged)))
    code = EXIT_OK
    if outcome.interrupted:
        code = EXIT_INTERRUPTED
    elif outcome.failed:
        code = EXIT_FAILED
    for line in outcome.skipped_lines:
        output.error(f"skipped: {line}")
    report_failures(output, outcome, args)
    if output.json_mode:
        output.emit_json(json_doc(args, outcome, code))
    elif not output.quiet:
        if not entries:
            output.error(f"nothing to resume in {folder}")
        for _, result in outcome.uploaded:
            output.out.print(f"uploaded {result.uri}", markup=False, highlight=False)
        for name in outcome.already_present:
            output.out.print(
                f"already in the store (not uploaded again) {up.uri(name)}",
                markup=False,
                highlight=False,
            )
        summary_table(output, f"{prog()} resume -> {output.scrub(args.store)}", outcome)
    return code


def _read_journal(folder: Path) -> tuple[list[JournalEntry], list[str]]:
    """The journal's pending entries and a message per corrupt line (reported by the caller)."""
    logger = logging.getLogger("artifact_uploader")
    level = logger.level
    # load() logs each corrupt line; the CLI reports them itself, once.
    logger.setLevel(logging.ERROR)
    try:
        return load(folder)
    finally:
        logger.setLevel(level)
