"""``artifact-uploader put``: upload files and directories, with a progress bar and a report.

Every file is staged into a journalled folder before it uploads (a private temporary one unless
``--staging-dir`` is given), so an interrupted run can always be finished by ``resume``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._cli_interrupt import CtrlC, Stop, close_uploader, opening, say_interrupted
from ._cli_options import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    UsageError,
    describe,
    opening_failure,
    prog,
)
from ._cli_output import Output, UploadProgress
from ._cli_report import (
    Item,
    Outcome,
    describe_failure,
    json_doc,
    print_resume_hint,
    report_failures,
    summary_table,
)
from ._errors import ConfigError, ProviderError, SourceFileError, StagingError
from ._events import UploadEvent
from ._journal import pending_count, resuming
from ._types import UploadResult

if TYPE_CHECKING:
    from ._sync import Uploader

# Bound on bytes held in the staging folder at once: a huge directory is not copied wholesale
# ahead of the uploads (a single larger file is still staged, alone).
MAX_STAGED_BYTES = 1024**3

PUT_DESCRIPTION = """\
Upload files and directories to an object store, with a progress bar.

A FILE becomes one object named after the file (its base name). A DIR is uploaded
recursively and its files are named by their path relative to DIR: the directory's own
name is NOT part of the object names, as with `aws s3 cp --recursive` and
`huggingface-cli upload`. So `put ./ckpt --to s3://b/run1` with ./ckpt/opt/state.pt
writes s3://b/run1/opt/state.pt. To keep the directory name, put it in the URI:
`--to s3://b/run1/ckpt`. Symlinked files are followed; symlinked directories are not.
Two sources that would make the same object name are refused before anything uploads.

Each file is staged (cloned or copied into a private folder under $TMPDIR, or into
--staging-dir) before it uploads, so later changes to the sources do not leak into the
store; at most 1 GiB is staged at once. After Ctrl-C, what did not upload is listed with
its staged copy, and `resume STAGING_DIR` finishes it."""


def collect(paths: Sequence[str]) -> list[Item]:
    """The files to upload and their object names (see the ``put`` help for the rules).

    Raises:
        UsageError: A path does not exist, or two sources make the same object name.
    """
    items: list[Item] = []
    seen: dict[str, Path] = {}

    def add(source: Path, name: str) -> None:
        if name in seen:
            raise UsageError(
                f"{str(seen[name])!r} and {str(source)!r} would both be uploaded as {name!r}; "
                "upload them in separate commands (with different --to prefixes)"
            )
        seen[name] = source
        try:
            size = source.stat().st_size
        except OSError:
            size = 0  # A broken symlink: submit reports it as a failed upload, by name.
        items.append(Item(source, name, size))

    for raw in paths:
        path = Path(raw)
        if not os.path.lexists(path):
            raise UsageError(f"no such file or directory: {raw!r}")
        if path.is_dir():
            for dirpath, dirnames, filenames in os.walk(path):
                dirnames.sort()
                for filename in sorted(filenames):
                    source = Path(dirpath, filename)
                    add(source, source.relative_to(path).as_posix())
        else:
            add(path, path.name)
    return items


def cmd_put(args: argparse.Namespace, output: Output, options: dict[str, Any]) -> int:
    """Run ``put``; return the exit code."""
    items = collect(args.paths)
    if not items:
        output.info("nothing to upload: the given directories hold no files")
        if output.json_mode:
            output.emit_json(json_doc(args, Outcome(), EXIT_OK))
        return EXIT_OK
    code, outcome = _run_put(args, output, options, items)
    if outcome.error is not None:
        if output.json_mode:
            output.emit_json(json_doc(args, outcome, code))
        return code
    report_failures(output, outcome, args)
    if output.json_mode:
        output.emit_json(json_doc(args, outcome, code))
    elif not output.quiet:
        summary_table(output, f"{prog()} put -> {output.scrub(args.store)}", outcome)
    return code


def _open_uploader(
    args: argparse.Namespace,
    staging_dir: str,
    options: dict[str, Any],
    on_event: Callable[[UploadEvent], None],
) -> Uploader:
    from ._sync import Uploader

    # Pending entries of an earlier run are announced by the CLI itself, with the exact
    # command (_announce_leftovers), not by the library's generic warning.
    with resuming():
        return Uploader(
            args.store,
            max_concurrency=args.concurrency,
            staging_dir=staging_dir,
            provider_kwargs=options,
            staging=args.staging,
            max_staged_bytes=MAX_STAGED_BYTES,
            on_event=on_event,
        )


def _run_put(
    args: argparse.Namespace, output: Output, options: dict[str, Any], items: list[Item]
) -> tuple[int, Outcome]:
    outcome = Outcome()
    progress = UploadProgress(output, "Uploading")
    start = time.monotonic()
    # Always a journalled staging folder, so an interrupted run can be resumed. One the user
    # did not ask for is private and temporary: removed unless it holds something to resume.
    own_staging = args.staging_dir is None
    staging_dir = tempfile.mkdtemp(prefix="artifact-uploader-") if own_staging else args.staging_dir
    try:
        with opening(
            output,
            f"nothing was uploaded ({len(items)} file(s))",
            lambda: _remove_own(staging_dir, own_staging),
        ):
            up = _open_uploader(args, staging_dir, options, progress.on_event)
    except (ConfigError, StagingError, ProviderError) as exc:
        code, outcome.error = opening_failure("put", args.store, exc)
    except KeyboardInterrupt:
        outcome.error = "interrupted while opening the store"
        outcome.interrupted = True
        code = EXIT_INTERRUPTED
    else:
        code = EXIT_OK
    if code != EXIT_OK:
        _remove_own(staging_dir, own_staging)
        outcome.not_started = items
        output.error(outcome.error or "")
        output.error(f"nothing was uploaded ({len(items)} file(s))")
        return code, outcome
    outcome.staging_dir = up.staging_folder
    by_name = {i.name: i for i in items}
    futures: list[tuple[Item, concurrent.futures.Future[UploadResult]]] = []
    stop = Stop(output, args, up.staging_folder, own=own_staging)
    with CtrlC(stop.again):
        try:
            _run_put_uploads(args, output, up, items, outcome, progress, futures, own_staging)
            failures = close_uploader(
                up, interrupted=outcome.interrupted, progress=progress, stop=stop
            )
        finally:
            progress.end()
    outcome.seconds = time.monotonic() - start
    for item, future in futures:
        if future.done() and not future.cancelled() and future.exception() is None:
            outcome.uploaded.append((item, future.result()))
    for failure in failures:
        item_or_none = by_name.get(failure.name)
        source = str(item_or_none.source) if item_or_none else ""
        outcome.failed.append(
            (
                failure.name,
                source,
                describe_failure(failure.cause, outcome.interrupted),
                failure.staged_path,
            )
        )
    kept = any(staged for *_, staged in outcome.failed)
    if own_staging and not (kept and (outcome.interrupted or args.staging == "move")):
        # Nothing to resume, or only failures whose sources are still in place (a re-run
        # retries them): a private staging folder is not left behind.
        _remove_own(staging_dir, own_staging)
        outcome.failed = [(n, s, c, None) for n, s, c, _ in outcome.failed]
        outcome.staging_dir = None
    if outcome.interrupted:
        return EXIT_INTERRUPTED, outcome
    return (EXIT_FAILED if outcome.failed else EXIT_OK), outcome


def _run_put_uploads(
    args: argparse.Namespace,
    output: Output,
    up: Uploader,
    items: list[Item],
    outcome: Outcome,
    progress: UploadProgress,
    futures: list[tuple[Item, concurrent.futures.Future[UploadResult]]],
    own_staging: bool,
) -> None:
    """Submit every item and wait for them; a (first) Ctrl-C marks the outcome interrupted."""
    index = 0
    try:
        if not own_staging:
            _announce_leftovers(output, args, up.staging_folder)
        progress.begin(len(items), sum(i.size for i in items))
        for item in items:
            try:
                future = up.submit(item.source, item.name, overwrite=not args.no_overwrite)
            except (SourceFileError, StagingError, ConfigError) as exc:
                # Refused before staging (missing, unreadable, a name the store refuses).
                outcome.failed.append((item.name, str(item.source), describe(exc), None))
                progress.refuse()
            else:
                futures.append((item, future))
            index += 1
        concurrent.futures.wait([f for _, f in futures])
    except KeyboardInterrupt:
        outcome.interrupted = True
        # What submit() had not taken yet (the item being staged included) did not start.
        outcome.not_started = items[index:]
        say_interrupted(output, progress)


def _announce_leftovers(output: Output, args: argparse.Namespace, staging_dir: str) -> None:
    """Warn when a persistent staging folder holds uploads an earlier run left pending.

    The library's own warning (silenced while the uploader is built, see ``_open_uploader``)
    names the command only in general; this one is the exact command, with this run's store
    and options (the journal does not record the store: the user may give another ``--to``).
    """
    try:
        left = pending_count(staging_dir)
    except StagingError:
        return  # the uploader has already accepted the folder; nothing to announce
    if left:
        print_resume_hint(
            output,
            args,
            staging_dir,
            f"warning: staging folder {staging_dir} holds {left} upload(s) an earlier run left "
            "unfinished; this run does not upload them. To finish them (into this run's "
            "store; give another --to if they were meant for another one):",
        )


def _remove_own(folder: str, own: bool) -> None:
    if own:
        shutil.rmtree(folder, ignore_errors=True)
