"""The ``artifact-uploader`` command line: ``put``, ``resume``, ``get`` and ``bench``.

Output streams: the progress bar, warnings and every error go to stderr; the result (a summary
table, or one JSON document with ``--json``) goes to stdout, so ``--json`` output can be piped.

Exit codes:

- 0: everything was uploaded (``get``: downloaded and verified);
- 1: some uploads failed (each is named on stderr); ``get``: no such object, the download
  failed or did not verify, or DEST exists without ``--overwrite``;
- 2: bad usage or configuration (argparse's own code): unknown option, malformed URI, missing
  extra, unusable staging folder, no such local file;
- 3: the store could not be opened (missing bucket, credentials refused, unreachable):
  nothing was uploaded;
- 130: interrupted (Ctrl-C); what was not uploaded is listed with its staged copy.

Values given with ``--provider-kwarg`` may be secrets: they are never echoed, and every line the
command prints is scrubbed of them.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import json
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import unquote, urlsplit

from ._errors import (
    ConfigError,
    FailedUpload,
    ObjectNotFoundError,
    ProviderError,
    SourceFileError,
    StagingError,
    UploadError,
    UploadFailedError,
)
from ._events import EventKind, ProgressTotals, UploadEvent
from ._journal import JOURNAL_FILE, JournalEntry, load, pending_count, resuming
from ._staging import STAGING_MODES
from ._types import UploadResult

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, TaskID

    from ._sync import Uploader

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_STORE = 3
EXIT_INTERRUPTED = 130

# After Ctrl-C, uploads in flight get this long to finish before they are cancelled.
INTERRUPT_CLOSE_TIMEOUT = 3.0
# Bound on bytes held in the staging folder at once: a huge directory is not copied wholesale
# ahead of the uploads (a single larger file is still staged, alone).
MAX_STAGED_BYTES = 1024**3
DEFAULT_CONCURRENCY = 8
# Lines of a long list (failures, files not started) printed on stderr; --json lists them all.
_MAX_LISTED = 50

# --provider-kwarg values are strings on the command line. These options take typed values, so
# "true"/"false", "none" and numbers are converted for them.
_TYPED_OPTIONS = frozenset(
    {
        "secure",
        "port",
        "fsync",
        "verify",
        "checksum",
        "max_pool_connections",
        "connect_timeout",
        "read_timeout",
        "connection_timeout",
        "resumable_threshold",
        "timeout",
        "min_throughput",
    }
)
# Options known to hold no secret (shown in messages as given). Every other option's value is
# treated as a secret: kept a string, never printed, and scrubbed from anything printed.
_PUBLIC_OPTIONS = _TYPED_OPTIONS | frozenset(
    {
        "region",
        "region_name",
        "endpoint_url",
        "host",
        "api_root",
        "api_version",
        "checksum_mode",
        "account_url",
        "account_name",
        "service_file",
    }
)
# Shorter secrets are not scrubbed: replacing every "ab" in the output would garble it, and a
# two-character secret protects nothing.
_MIN_SCRUBBED = 4

_EPILOG = """\
examples:
  # a directory into a local folder (the folder is created if missing)
  artifact-uploader put ./checkpoints --to file:///tmp/store

  # into S3 under a prefix; credentials come from the usual AWS environment / config files
  artifact-uploader put ./run-42 model.safetensors --to s3://my-bucket/runs/42

  # an S3-compatible server (MinIO, moto...) with an explicit endpoint and credentials
  AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=... \\
  artifact-uploader put ./ckpt --to s3://bucket/prefix \\
      --provider-kwarg endpoint_url=http://127.0.0.1:9000 --provider-kwarg region=us-east-1

  # Google Cloud Storage with a service-account file (else application default credentials)
  artifact-uploader put ./ckpt --to gs://my-bucket/prefix --provider-kwarg service_file=sa.json

  # Azure Blob Storage: AZURE_STORAGE_CONNECTION_STRING from the environment, or
  artifact-uploader put ./ckpt --to az://container/prefix \\
      --provider-kwarg account_url=https://acct.blob.core.windows.net  # default credential

  # for scripts: one JSON document on stdout, no progress bar
  artifact-uploader put ./ckpt --to s3://bucket/prefix --json | jq '.uploaded[].uri'

  # download an object, verified against the store's checksum, written atomically
  artifact-uploader get s3://my-bucket/runs/42/model.safetensors ./weights/
  # ...following a .symlink object (latest.pt.symlink) written under the prefix runs/42
  artifact-uploader get s3://my-bucket/runs/42/latest.pt . --store s3://my-bucket/runs/42

  # finish what a killed run left in its (persistent) staging folder
  artifact-uploader put ./ckpt --to s3://bucket/p --staging-dir /var/tmp/up   # killed...
  artifact-uploader resume /var/tmp/up --to s3://bucket/p

  # the bundled S3 concurrency benchmark (from a source checkout)
  artifact-uploader bench --quick

exit codes:
  0 everything uploaded       1 some uploads failed (named on stderr)
  2 bad usage or config       3 the store could not be opened (nothing uploaded)
  130 interrupted (Ctrl-C): what was not uploaded is listed with its staged copy
"""

_PUT_DESCRIPTION = """\
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

_RESUME_DESCRIPTION = """\
Finish what a killed or interrupted `put --staging-dir DIR` left behind: every file
still journalled in DIR is uploaded from its staged copy (the sources are not needed),
orphaned multipart uploads are aborted, and corrupt journal lines are reported and skipped."""


class _UsageError(Exception):
    """A problem with the command line found after argparse (exit 2)."""


# -- secrets -----------------------------------------------------------------------------------


class _Scrubber:
    """Replaces secret values (from --provider-kwarg) in anything the command prints."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        # Longest first, so a secret that contains another is replaced whole.
        self.secrets = sorted(
            {s for s in secrets if len(s) >= _MIN_SCRUBBED}, key=len, reverse=True
        )

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text

    def obj(self, value: Any) -> Any:
        """Scrub every string inside a JSON-like value."""
        if isinstance(value, str):
            return self(value)
        if isinstance(value, dict):
            return {self(str(k)): self.obj(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.obj(v) for v in value]
        return value


def _coerce(value: str) -> Any:
    low = value.strip().lower()
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    if low in ("none", "null"):
        return None
    if re.fullmatch(r"[+-]?\d+", value.strip()):
        return int(value)
    try:
        return float(value)
    except ValueError:
        return value


def parse_provider_kwargs(items: Sequence[str]) -> tuple[dict[str, Any], _Scrubber]:
    """Turn ``KEY=VALUE`` strings into provider options, and a scrubber for their secrets.

    Values of typed options (``secure``, ``port``, timeouts...) are converted from
    ``true``/``false``/``none``/numbers; every other value stays a string.

    Raises:
        _UsageError: An item without ``=`` or a key given twice. The value is never echoed.
    """
    options: dict[str, Any] = {}
    secrets: list[str] = []
    for i, item in enumerate(items, 1):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            # Not echoed: the text may well be a secret typed without its key.
            raise _UsageError(
                f"--provider-kwarg #{i} must look like KEY=VALUE (its text is not shown: "
                "it may be a secret)"
            )
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise _UsageError(f"--provider-kwarg #{i}: the key must be an option name")
        if key in options:
            raise _UsageError(f"--provider-kwarg {key} is given twice")
        if key.lower() in _TYPED_OPTIONS:
            options[key] = _coerce(value)
        else:
            options[key] = value
            if key.lower() not in _PUBLIC_OPTIONS:
                secrets.append(value)
    return options, _Scrubber(secrets)


# "scheme:" at the start (two characters or more, so a drive-letter-like "c:" is not one).
_SCHEME_LIKE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]+):")


def _store_uri(to: str, what: str = "--to") -> str:
    """``--to`` as a store URI: a plain local path becomes a ``file://`` URI.

    Text that looks like a URI but is not a well-formed one (``s3:/bucket``, ``s3:bucket``,
    ``gs:/b``, ``az:container``, ``s3//bucket``) is refused instead of being taken as a local
    folder named ``s3:``: uploads would land on the local disk and the command report success.
    ``scheme://...`` is left to the library, which checks the scheme and the rest.

    Raises:
        _UsageError: Empty, or URI-like but malformed (the message suggests the fix).
    """
    if not to:
        raise _UsageError(f"{what} must not be empty")
    if "://" in to:
        return to
    schemes = sorted(_known_schemes())
    match = _SCHEME_LIKE.match(to) or re.match(rf"({'|'.join(schemes)})/+", to, re.IGNORECASE)
    if match:
        scheme = match.group(1).lower()
        rest = to[match.end() :].lstrip("/")
        fix = f"file:///{rest}" if scheme == "file" else f"{scheme}://{rest}"
        hint = f"did you mean {fix}? " if scheme in schemes else ""
        raise _UsageError(
            f"{what} {to!r} looks like a store URI but is not a well-formed one "
            f"(expected scheme://..., schemes: {', '.join(schemes)}); {hint}"
            f"for a local folder of that name, write ./{to}"
        )
    return Path(to).expanduser().absolute().as_uri()


def _known_schemes() -> frozenset[str]:
    from ._registry import _SCHEMES

    return frozenset(_SCHEMES)


# -- collecting the files ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Item:
    source: Path
    name: str
    size: int


def collect(paths: Sequence[str]) -> list[_Item]:
    """The files to upload and their object names (see the ``put`` help for the rules).

    Raises:
        _UsageError: A path does not exist, or two sources make the same object name.
    """
    items: list[_Item] = []
    seen: dict[str, Path] = {}

    def add(source: Path, name: str) -> None:
        if name in seen:
            raise _UsageError(
                f"{str(seen[name])!r} and {str(source)!r} would both be uploaded as {name!r}; "
                "upload them in separate commands (with different --to prefixes)"
            )
        seen[name] = source
        try:
            size = source.stat().st_size
        except OSError:
            size = 0  # A broken symlink: submit reports it as a failed upload, by name.
        items.append(_Item(source, name, size))

    for raw in paths:
        path = Path(raw)
        if not os.path.lexists(path):
            raise _UsageError(f"no such file or directory: {raw!r}")
        if path.is_dir():
            for dirpath, dirnames, filenames in os.walk(path):
                dirnames.sort()
                for filename in sorted(filenames):
                    source = Path(dirpath, filename)
                    add(source, source.relative_to(path).as_posix())
        else:
            add(path, path.name)
    return items


# -- output ------------------------------------------------------------------------------------


def _human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


class _Output:
    """Where the command writes: stderr for progress, warnings and errors; stdout for results."""

    def __init__(self, *, json_mode: bool, quiet: bool, scrub: _Scrubber) -> None:
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
        self.err.print(self.scrub(message), markup=False, highlight=False, soft_wrap=True)

    def info(self, message: str) -> None:
        """A note on stderr, unless --quiet or --json."""
        if not self.quiet and not self.json_mode:
            self.error(message)

    def emit_json(self, doc: dict[str, Any]) -> None:
        text = json.dumps(self.scrub.obj(doc), indent=2)
        sys.stdout.write(text + "\n")
        sys.stdout.flush()


class _Progress:
    """A rich progress bar of files, bytes and rate, driven by the uploader's events.

    Built before the uploader (which takes ``on_event``); the bar appears at :meth:`begin`,
    once the totals are known, and only when ``output.live``.
    """

    def __init__(self, output: _Output, verb: str) -> None:
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
        self.files = files
        if not self.output.live:
            return
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TaskProgressColumn,
            TextColumn,
            TimeElapsedColumn,
        )

        progress = Progress(
            TextColumn(f"[bold]{self.verb}"),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[files]} files"),
            DownloadColumn(),
            # The library's own rate (bytes confirmed by the store / elapsed), not rich's
            # estimate, which has too few samples when each update is a whole file.
            TextColumn("[red]{task.fields[rate]}"),
            TimeElapsedColumn(),
            console=self.output.err,
            refresh_per_second=8,
        )
        # With only empty files there are no bytes to count: the bar counts files instead.
        self._by_bytes = nbytes > 0
        self._task = progress.add_task(
            self.verb,
            total=nbytes if self._by_bytes else max(files, 1),
            files=f"0/{files}",
            rate="",
        )
        progress.start()
        self._progress = progress

    def end(self) -> None:
        """Stop the bar (idempotent), leaving its last state on the terminal.

        Events after this (uploads cancelled after Ctrl-C) are not printed: the final report
        names each of them once.
        """
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def refuse(self) -> None:
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
            rate=f"{_human_bytes(totals.rate)}/s",
        )


# -- put ---------------------------------------------------------------------------------------


@dataclass
class _Outcome:
    uploaded: list[tuple[_Item | None, UploadResult]] = field(default_factory=list)
    failed: list[tuple[str, str, str, str | None]] = field(default_factory=list)
    not_started: list[_Item] = field(default_factory=list)
    interrupted: bool = False
    seconds: float = 0.0
    staging_dir: str | None = None
    error: str | None = None
    skipped_lines: list[str] = field(default_factory=list)
    already_present: list[str] = field(default_factory=list)


def _configure_logging(output: _Output, verbose: bool) -> None:
    """Route the library's log records to stderr, scrubbed; drop those the CLI reports itself."""
    logger = logging.getLogger("artifact_uploader")

    class Handler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if not verbose and (
                str(record.msg).startswith("upload of %r failed")
                or "skipped a corrupt journal line" in record.getMessage()
            ):
                return
            try:
                output.error(f"{record.levelname.lower()}: {record.getMessage()}")
            except Exception:
                self.handleError(record)

    for old in [h for h in logger.handlers if getattr(h, "_artifact_uploader_cli", False)]:
        logger.removeHandler(old)
    handler = Handler(logging.DEBUG if verbose else logging.WARNING)
    handler._artifact_uploader_cli = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbose else logging.WARNING)
    # The CLI prints failures itself; Python's last-resort handler would print them twice.
    logger.propagate = False


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


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


# What a failure caused by Ctrl-C is called in the report (and in --json's "error").
INTERRUPTED = "interrupted before it finished"


def _describe_failure(exc: BaseException, interrupted: bool) -> str:
    """A failure's description; uploads that Ctrl-C cut short are "interrupted".

    After Ctrl-C the uploader is closed with a short timeout and cancels what is still in
    flight, reporting each as a TimeoutError: the user stopped them, nothing timed out.
    """
    if interrupted and isinstance(exc, (TimeoutError, asyncio.CancelledError)):
        return INTERRUPTED
    return _describe(exc)


def resume_command(args: argparse.Namespace, staging_dir: str) -> tuple[str, list[str]]:
    """The ``resume`` command that finishes ``staging_dir`` into the same store.

    It carries ``--to`` and every ``--provider-kwarg`` the user gave, shell-quoted, so that,
    copied as printed, it targets the same store (endpoint, region...). A secret option's
    value is never printed: it becomes a ``<KEY>`` placeholder.

    Returns:
        The command line, and the keys whose values were replaced by placeholders.
    """
    words = [*_prog().split(), "resume", staging_dir, "--to", args.store]
    hidden: list[str] = []
    for item in args.provider_kwarg:
        key, _, value = item.partition("=")
        key = key.strip()
        if key.lower() in _PUBLIC_OPTIONS:
            words += ["--provider-kwarg", f"{key}={value}"]
        else:
            words += ["--provider-kwarg", f"{key}=<{key}>"]
            hidden.append(key)
    if args.concurrency != DEFAULT_CONCURRENCY:
        words += ["--concurrency", str(args.concurrency)]
    return shlex.join(words), hidden


def _print_resume_hint(
    output: _Output, args: argparse.Namespace, staging_dir: str, lead: str
) -> None:
    """``lead``, then the resume command on a line of its own (easy to copy)."""
    command, hidden = resume_command(args, staging_dir)
    output.error(f"{lead}\n  {command}")
    if hidden:
        output.error(_hidden_note(hidden))


def _hidden_note(hidden: Sequence[str]) -> str:
    names = ", ".join(f"<{k}>" for k in hidden)
    return (
        f"  (replace {names} with the value(s) you gave: secrets are not printed; or leave "
        "them out and give the credentials through the provider's environment variables)"
    )


def _run_put(
    args: argparse.Namespace, output: _Output, options: dict[str, Any], items: list[_Item]
) -> tuple[int, _Outcome]:
    outcome = _Outcome()
    progress = _Progress(output, "Uploading")
    start = time.monotonic()
    # Always a journalled staging folder, so an interrupted run can be resumed. One the user
    # did not ask for is private and temporary: removed unless it holds something to resume.
    own_staging = args.staging_dir is None
    staging_dir = tempfile.mkdtemp(prefix="artifact-uploader-") if own_staging else args.staging_dir
    try:
        with _opening(
            output,
            f"nothing was uploaded ({len(items)} file(s))",
            lambda: _remove_own(staging_dir, own_staging),
        ):
            up = _open_uploader(args, staging_dir, options, progress.on_event)
    except (ConfigError, StagingError) as exc:
        outcome.error = f"{_prog()} put: error: {exc}"
        code = EXIT_USAGE
    except ProviderError as exc:
        outcome.error = f"error: cannot open the store {args.store}: {exc}"
        code = EXIT_STORE
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
    futures: list[tuple[_Item, concurrent.futures.Future[UploadResult]]] = []
    close_error: UploadFailedError | None = None

    def stop_now() -> NoReturn:
        _stop_now(output, args, up.staging_folder, own=own_staging, again=True)

    with _CtrlC(stop_now):
        try:
            _run_put_uploads(args, output, up, items, outcome, progress, futures, own_staging)
            try:
                up.close(timeout=INTERRUPT_CLOSE_TIMEOUT if outcome.interrupted else None)
            except UploadFailedError as exc:
                close_error = exc
            except KeyboardInterrupt:
                # The first Ctrl-C, during a normal close (a second one goes to stop_now).
                progress.end()
                _stop_now(output, args, up.staging_folder, own=own_staging, again=False)
        finally:
            progress.end()
    outcome.seconds = time.monotonic() - start
    for item, future in futures:
        if future.done() and not future.cancelled() and future.exception() is None:
            outcome.uploaded.append((item, future.result()))
    if close_error is not None:
        for failure in close_error.failures:
            item_or_none = by_name.get(failure.name)
            source = str(item_or_none.source) if item_or_none else ""
            outcome.failed.append(
                (
                    failure.name,
                    source,
                    _describe_failure(failure.cause, outcome.interrupted),
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
    output: _Output,
    up: Uploader,
    items: list[_Item],
    outcome: _Outcome,
    progress: _Progress,
    futures: list[tuple[_Item, concurrent.futures.Future[UploadResult]]],
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
                outcome.failed.append((item.name, str(item.source), _describe(exc), None))
                progress.refuse()
            else:
                futures.append((item, future))
            index += 1
        concurrent.futures.wait([f for _, f in futures])
    except KeyboardInterrupt:
        outcome.interrupted = True
        # What submit() had not taken yet (the item being staged included) did not start.
        outcome.not_started = items[index:]
        # Stop the bar first so the notes below are not drawn over.
        progress.end()
        output.error(
            f"interrupted: giving uploads in flight {INTERRUPT_CLOSE_TIMEOUT:.0f}s to finish "
            "(Ctrl-C again to stop now)"
        )


def _announce_leftovers(output: _Output, args: argparse.Namespace, staging_dir: str) -> None:
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
        _print_resume_hint(
            output,
            args,
            staging_dir,
            f"warning: staging folder {staging_dir} holds {left} upload(s) an earlier run left "
            "unfinished; this run does not upload them. To finish them (into this run's "
            "store; give another --to if they were meant for another one):",
        )


def _stop_now(
    output: _Output,
    args: argparse.Namespace,
    staging_dir: str,
    *,
    own: bool,
    again: bool,
) -> NoReturn:
    """Leave at once (a second Ctrl-C), saying truthfully what stays behind.

    The staging folder is journalled (the CLI always journals): every upload not confirmed
    there is still pending with its staged copy, so ``resume`` finishes exactly those. The
    folder is kept, not deleted: with ``--staging move`` it holds the only copy of the files,
    and deleting gigabytes is not what a second Ctrl-C asks for.

    Runs from the SIGINT handler too, possibly while the main thread is inside a write to
    stderr: it writes with ``os.write`` (no buffered stream, no lock) and exits with
    ``os._exit`` (the loop thread may still be busy: it is not joined).
    """
    what = "interrupted again" if again else "interrupted while closing"
    command, hidden = resume_command(args, staging_dir)
    lines = [
        f"{what}: stopped now. Uploads that did not finish are kept, journalled, with their "
        f"staged copies in {staging_dir}; to upload them:",
        f"  {command}",
    ]
    if hidden:
        lines.append(_hidden_note(hidden))
    if own and getattr(args, "staging", None) != "move":
        lines.append(
            "  (or, to start over with `put` instead, delete that folder: "
            f"rm -r {shlex.quote(staging_dir)})"
        )
    _exit_now(output, lines)


def _exit_now(output: _Output, lines: Sequence[str]) -> NoReturn:
    """Write ``lines`` to stderr and exit 130 at once (safe inside a SIGINT handler)."""
    data = ("\n" + output.scrub("\n".join(lines)) + "\n").encode(errors="replace")
    with contextlib.suppress(OSError):
        while data:
            data = data[os.write(2, data) :]
    os._exit(EXIT_INTERRUPTED)


def _opening(output: _Output, what: str, cleanup: Callable[[], None] = lambda: None) -> _CtrlC:
    """The SIGINT handler while the store is being opened: stop at once.

    Nothing has been staged or sent yet, so there is nothing to wait for; and an interrupted
    open can otherwise wait in the uploader's clean-up for the store's answer (up to the read
    timeout) before the KeyboardInterrupt gets out.
    """

    def stop() -> NoReturn:
        cleanup()
        _exit_now(output, [f"interrupted while opening the store; {what}"])

    return _CtrlC(stop, first=stop)


class _CtrlC:
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

    def __enter__(self) -> _CtrlC:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self)
            self._installed = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)
            self._installed = False


def _remove_own(folder: str, own: bool) -> None:
    if own:
        shutil.rmtree(folder, ignore_errors=True)


def _report_failures(output: _Output, outcome: _Outcome, args: argparse.Namespace) -> None:
    for name, source, cause, staged in outcome.failed[:_MAX_LISTED]:
        kept = f" (staged copy kept at {staged})" if staged else ""
        origin = f" from {source}" if source else ""
        if cause == INTERRUPTED:
            output.error(f"not uploaded (interrupted): {name}{origin}{kept}")
        else:
            output.error(f"error: failed to upload {name}{origin}: {cause}{kept}")
    if len(outcome.failed) > _MAX_LISTED:
        output.error(f"... and {len(outcome.failed) - _MAX_LISTED} more failed (see --json)")
    if outcome.not_started:
        output.error(f"not started: {len(outcome.not_started)} file(s):")
        for item in outcome.not_started[:_MAX_LISTED]:
            output.error(f"  {item.source}")
        if len(outcome.not_started) > _MAX_LISTED:
            output.error(f"  ... and {len(outcome.not_started) - _MAX_LISTED} more (see --json)")
    if any(staged for *_, staged in outcome.failed) and outcome.staging_dir:
        _print_resume_hint(output, args, outcome.staging_dir, "to upload what is left, run:")


def _summary_table(output: _Output, title: str, outcome: _Outcome) -> None:
    from rich.table import Table

    nbytes = sum(r.size for _, r in outcome.uploaded)
    rate = nbytes / outcome.seconds if outcome.seconds > 0 else 0.0
    output.out.print(title, markup=False, highlight=False, soft_wrap=True)
    table = Table()
    for column in ("uploaded", "failed", "bytes", "time", "rate"):
        table.add_column(column, justify="right")
    failed = len(outcome.failed) + len(outcome.not_started)
    table.add_row(
        str(len(outcome.uploaded)),
        str(failed),
        _human_bytes(nbytes),
        f"{outcome.seconds:.2f} s",
        f"{_human_bytes(rate)}/s",
    )
    output.out.print(table)


def _json_doc(args: argparse.Namespace, outcome: _Outcome, code: int) -> dict[str, Any]:
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


def cmd_put(args: argparse.Namespace, output: _Output, options: dict[str, Any]) -> int:
    items = collect(args.paths)
    if not items:
        output.info("nothing to upload: the given directories hold no files")
        if output.json_mode:
            output.emit_json(_json_doc(args, _Outcome(), EXIT_OK))
        return EXIT_OK
    code, outcome = _run_put(args, output, options, items)
    if outcome.error is not None:
        if output.json_mode:
            output.emit_json(_json_doc(args, outcome, code))
        return code
    _report_failures(output, outcome, args)
    if output.json_mode:
        output.emit_json(_json_doc(args, outcome, code))
    elif not output.quiet:
        _summary_table(output, f"{_prog()} put -> {output.scrub(args.store)}", outcome)
    return code


# -- resume ------------------------------------------------------------------------------------


def cmd_resume(args: argparse.Namespace, output: _Output, options: dict[str, Any]) -> int:
    from ._sync import Uploader

    folder = Path(args.staging_dir)
    if not (folder / JOURNAL_FILE).is_file():
        raise _UsageError(
            f"{str(folder)!r} holds no crash journal ({JOURNAL_FILE}); give the folder that was "
            "passed to --staging-dir (or staging_dir=...)"
        )
    outcome = _Outcome(staging_dir=str(folder))
    progress = _Progress(output, "Resuming")
    start = time.monotonic()
    # What the uploader will find (it reads the journal the same way), for the bar and report.
    entries, outcome.skipped_lines = _read_journal(folder)
    try:
        with resuming(), _opening(output, "nothing was uploaded"):
            # Built to resume its folder: no "resume me" warning.
            up = Uploader(
                args.store,
                staging_dir=folder,
                provider_kwargs=options,
                max_concurrency=args.concurrency,
                on_event=progress.on_event,
            )
    except (ConfigError, StagingError) as exc:
        outcome.error = f"{_prog()} resume: error: {exc}"
        code = EXIT_USAGE
    except ProviderError as exc:
        outcome.error = f"error: cannot open the store {args.store}: {exc}"
        code = EXIT_STORE
    else:
        code = EXIT_OK
    if outcome.error is not None:
        output.error(outcome.error)
        if output.json_mode:
            output.emit_json(_json_doc(args, outcome, code))
        return code

    sizes = {e.name: e.size for e in entries}
    progress.begin(len(entries), sum(sizes.values()))
    failures: list[FailedUpload] = []

    def stop_now() -> NoReturn:
        _stop_now(output, args, str(folder), own=False, again=True)

    with _CtrlC(stop_now):
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
                failures = exc.failures
            except KeyboardInterrupt:
                outcome.interrupted = True
                progress.end()
                output.error(
                    f"interrupted: giving uploads in flight {INTERRUPT_CLOSE_TIMEOUT:.0f}s to "
                    "finish (Ctrl-C again to stop now)"
                )
            try:
                up.close(timeout=INTERRUPT_CLOSE_TIMEOUT if outcome.interrupted else None)
            except UploadFailedError as exc:
                failures.extend(exc.failures)
            except KeyboardInterrupt:
                progress.end()
                _stop_now(output, args, str(folder), own=False, again=False)
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
        (f.name, "", _describe_failure(f.cause, outcome.interrupted), f.staged_path)
        for f in failures
    ]
    # The journal is the truth for what is left (an interrupt can lose the failure list).
    for entry in load(folder)[0]:
        if entry.name not in reported:
            outcome.failed.append((entry.name, "", INTERRUPTED, str(folder / entry.staged)))
    if outcome.interrupted:
        code = EXIT_INTERRUPTED
    elif outcome.failed:
        code = EXIT_FAILED
    for line in outcome.skipped_lines:
        output.error(f"skipped: {line}")
    _report_failures(output, outcome, args)
    if output.json_mode:
        output.emit_json(_json_doc(args, outcome, code))
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
        _summary_table(output, f"{_prog()} resume -> {output.scrub(args.store)}", outcome)
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


# -- get ---------------------------------------------------------------------------------------

_GET_DESCRIPTION = """\
Download one object to a local file, verified against the checksum the store recorded
(CRC32C, MD5 or a multipart composite) and written atomically: a temporary file in DEST's
folder renamed into place, so DEST is either the whole verified object or untouched.

URI is the object's full URI (s3://bucket/key, gs://..., az://..., file:///dir/name). Its
object name is the key below the bucket (for file://, the file name in its folder); give
--store for a store root or prefix, e.g. `--store s3://b/run1` for `s3://b/run1/latest.pt`, so
that `.symlink` objects (latest.pt.symlink), whose text names an object relative to the store,
are followed: `get URI` of a missing X with an X.symlink beside it downloads its target.

DEST is a file path, or an existing directory (the object's base name is used there). An
existing file is refused unless --overwrite."""


def split_object_uri(uri: str, store: str | None) -> tuple[str, str]:
    """``(store URI, object name)`` for the object at ``uri`` (see the ``get`` help).

    Raises:
        _UsageError: A malformed URI, one that names no object, or one outside ``store``.
    """
    uri = _store_uri(uri, "URI")
    if store is not None:
        root = _store_uri(store, "--store").rstrip("/")
        if not uri.startswith(root + "/") or len(uri) == len(root) + 1:
            raise _UsageError(f"URI {uri!r} is not an object inside --store {root!r}")
        name = uri[len(root) + 1 :]
        return root, unquote(name) if root.startswith("file:") else name
    parts = urlsplit(uri)
    if parts.scheme.lower() == "file":
        folder, _, name = uri.rpartition("/")
        if not name or folder.endswith(":/"):
            raise _UsageError(f"URI {uri!r} names no file")
        return folder, unquote(name)
    name = uri.split("://", 1)[1].partition("/")[2]
    if not name or name.endswith("/"):
        raise _UsageError(f"URI {uri!r} names no object (expected {parts.scheme}://bucket/key)")
    return f"{parts.scheme}://{parts.netloc}", name


class _DownloadProgress:
    """A byte progress bar for one download, started when the object's size is known."""

    def __init__(self, output: _Output) -> None:
        self.output = output
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._base = 0  # bytes received before this download (the uploader's running total)

    def on_event(self, event: UploadEvent) -> None:
        """The uploader's callback (its loop thread)."""
        if not self.output.live:
            return
        if event.kind is EventKind.DOWNLOAD_STARTED and self._progress is None:
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TaskProgressColumn,
                TextColumn,
                TimeElapsedColumn,
                TransferSpeedColumn,
            )

            progress = Progress(
                TextColumn("[bold]Downloading"),
                BarColumn(),
                TaskProgressColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeElapsedColumn(),
                console=self.output.err,
                refresh_per_second=8,
            )
            self._base = event.totals.bytes_received
            self._task = progress.add_task("download", total=max(event.size, 1))
            progress.start()
            self._progress = progress
        elif self._progress is not None and self._task is not None:
            done = event.totals.bytes_received - self._base
            if event.kind is EventKind.DOWNLOADED:
                done = max(event.size, 1)
            self._progress.update(self._task, completed=done)

    def end(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def cmd_get(args: argparse.Namespace, output: _Output, options: dict[str, Any]) -> int:
    from ._download import DestinationExistsError
    from ._sync import Uploader

    store, name = split_object_uri(args.uri, args.store_root)
    args.store = store
    dest = Path(args.dest).expanduser()
    if dest.is_dir():
        dest = dest / name.rsplit("/", 1)[-1]
    doc: dict[str, Any] = {"ok": False, "uri": args.uri, "store": store, "name": name}
    progress = _DownloadProgress(output)
    start = time.monotonic()

    def finish(code: int, error: str | None = None) -> int:
        if error is not None:
            output.error(error)
        if output.json_mode:
            doc.update(ok=code == EXIT_OK, exit_code=code, error=error)
            output.emit_json(doc)
        return code

    try:
        with _opening(output, f"{dest} was not written"):
            up = Uploader(
                store,
                provider_kwargs=options,
                max_concurrency=args.concurrency,
                on_event=progress.on_event,
            )
    except (ConfigError, StagingError) as exc:
        return finish(EXIT_USAGE, f"{_prog()} get: error: {exc}")
    except ProviderError as exc:
        return finish(EXIT_STORE, f"error: cannot open the store {store}: {exc}")
    except KeyboardInterrupt:
        return finish(EXIT_INTERRUPTED, "interrupted while opening the store; nothing written")
    code, error = EXIT_OK, None
    try:
        try:
            result = up.download(name, dest, overwrite=args.overwrite)
        finally:
            progress.end()
    except DestinationExistsError:
        code = EXIT_FAILED
        error = f"error: {dest} exists; pass --overwrite to replace it (nothing was downloaded)"
    except ObjectNotFoundError as exc:
        code, error = EXIT_FAILED, f"error: no such object: {args.uri} ({exc})"
    except ConfigError as exc:
        code, error = EXIT_USAGE, f"{_prog()} get: error: {exc}"
    except KeyboardInterrupt:
        code = EXIT_INTERRUPTED
        error = f"interrupted: the download stopped; {dest} was not written"
    except UploadError as exc:
        code = EXIT_FAILED
        error = f"error: failed to download {args.uri}: {_describe(exc)} ({dest} was not written)"
    else:
        seconds = time.monotonic() - start
        doc.update(
            name=result.name,
            uri=result.uri,
            path=str(result.path),
            size=result.size,
            checksum_algorithm=result.checksum_algorithm,
            checksum=result.checksum,
            seconds=round(seconds, 6),
            bytes_per_second=round(result.size / seconds, 1) if seconds > 0 else 0.0,
        )
        if not output.json_mode and not output.quiet:
            verified = (
                f", {result.checksum_algorithm} verified"
                if result.checksum_algorithm
                else ", not verified: the store recorded no checksum this client can check"
            )
            output.out.print(
                f"downloaded {result.uri} -> {result.path} "
                f"({_human_bytes(result.size)} in {seconds:.2f} s{verified})",
                markup=False,
                highlight=False,
                soft_wrap=True,
            )
    try:
        up.close(timeout=INTERRUPT_CLOSE_TIMEOUT if code == EXIT_INTERRUPTED else None)
    except (UploadError, KeyboardInterrupt):
        pass  # nothing was uploaded: the download's own outcome is the one to report
    return finish(code, error)


# -- bench -------------------------------------------------------------------------------------

BENCH_SCRIPT = Path("benchmarks") / "bench_s3.py"


def find_bench_script(starts: Iterable[Path]) -> Path | None:
    """``benchmarks/bench_s3.py`` in the nearest folder above any of ``starts``, if any."""
    for start in starts:
        for folder in (start, *start.parents):
            candidate = folder / BENCH_SCRIPT
            if candidate.is_file():
                return candidate
    return None


def cmd_bench(argv: Sequence[str]) -> int:
    """Run the bundled benchmark with ``argv``; its exit code is ours."""
    # The checkout the user stands in first, then the one this package was installed from.
    script = find_bench_script([Path.cwd().resolve(), Path(__file__).resolve().parent])
    if script is None:
        sys.stderr.write(
            f"{_prog()} bench: benchmarks/bench_s3.py was not found. The benchmark ships with "
            "the source, not the wheel: run this command from a source checkout of "
            "artifact-uploader (with `pip install -e '.[bench]'`).\n"
        )
        return EXIT_USAGE
    try:
        return subprocess.call([sys.executable, str(script), *argv])
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


# -- the parser --------------------------------------------------------------------------------


def _prog() -> str:
    argv0 = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return "python -m artifact_uploader" if argv0 == "__main__.py" else "artifact-uploader"


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _add_store_options(parser: argparse.ArgumentParser, *, with_to: bool = True) -> None:
    if with_to:
        parser.add_argument(
            "--to",
            required=True,
            metavar="URI",
            help="the store: file:///abs/dir (or a plain local path), s3://bucket[/prefix], "
            "gs://bucket[/prefix] or az://container[/prefix]",
        )
    parser.add_argument(
        "--provider-kwarg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a store option (repeatable): endpoint_url, region, key, secret, token, host, "
        "port, secure, service_file, connection_string, account_key... Values are never "
        "echoed; prefer the provider's environment variables for credentials, since "
        "command lines are visible to other users of the machine",
    )
    parser.add_argument(
        "--concurrency",
        type=_positive_int,
        default=DEFAULT_CONCURRENCY,
        metavar="N",
        help=f"most requests in flight at once, parts included (default {DEFAULT_CONCURRENCY})",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print one JSON document with the result on stdout (and nothing else there); "
        "no progress bar",
    )
    parser.add_argument(
        "-q", "--quiet", action="store_true", help="no progress bar and no summary; errors only"
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="also print the library's log messages"
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for the docs and the tests)."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog=_prog(),
        description="Upload files and directories to object storage (a local folder, S3, GCS or\n"
        "Azure Blob) with a progress bar, bounded concurrency, retries, checksums and an\n"
        "optional crash journal. `COMMAND --help` describes each command.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    put = sub.add_parser(
        "put",
        help="upload files and directories (recursively) to a store",
        description=_PUT_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    put.add_argument("paths", nargs="+", metavar="FILE|DIR", help="what to upload")
    _add_store_options(put)
    put.add_argument(
        "--no-overwrite",
        action="store_true",
        help="fail (per object, exit 1) instead of replacing an object that already exists; "
        "atomic where the store supports conditional writes",
    )
    put.add_argument(
        "--staging",
        choices=STAGING_MODES,
        default="auto",
        help="how files are staged before upload: auto (default) or reflink: a copy-on-write "
        "clone where the filesystem supports it (btrfs, xfs), else a copy; copy: always a "
        "copy; link: a hard link (no copy, same filesystem only, but later writes to a source "
        "leak into its upload); move: the sources are moved away",
    )
    put.add_argument(
        "--staging-dir",
        metavar="DIR",
        help="a persistent staging folder with a crash journal: after a kill or Ctrl-C, "
        "`resume DIR` finishes the upload (default: a private temporary folder, removed "
        "when everything uploaded)",
    )
    put.set_defaults(handler=cmd_put)

    resume = sub.add_parser(
        "resume",
        help="finish the uploads a killed run left in its staging folder",
        description=_RESUME_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    resume.add_argument("staging_dir", metavar="STAGING_DIR", help="the --staging-dir of the run")
    _add_store_options(resume)
    resume.set_defaults(handler=cmd_resume)

    get = sub.add_parser(
        "get",
        help="download one object to a local file (verified, atomic)",
        description=_GET_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    get.add_argument("uri", metavar="URI", help="the object: s3://bucket/key, file:///dir/name...")
    get.add_argument("dest", metavar="DEST", help="a file path, or an existing directory")
    get.add_argument(
        "--overwrite", action="store_true", help="replace DEST if it exists (default: refuse)"
    )
    get.add_argument(
        "--store",
        dest="store_root",
        metavar="URI",
        help="the store root or prefix URI is inside (default: its bucket; for file://, its "
        "folder); .symlink objects name their target relative to it",
    )
    _add_store_options(get, with_to=False)
    get.set_defaults(handler=cmd_get)

    sub.add_parser(
        "bench",
        help="run the bundled S3 concurrency benchmark (source checkout only); "
        "arguments are passed to it (`bench --help` shows them)",
        add_help=False,
    )
    return parser


def _fail_usage(parser: argparse.ArgumentParser, message: str) -> NoReturn:
    parser.error(message)


def _ensure_ctrl_c() -> None:
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


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code.

    Args:
        argv: The arguments (default ``sys.argv[1:]``).
    """
    _ensure_ctrl_c()
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] == "bench":
        # Everything after `bench` belongs to the benchmark, --help included.
        return cmd_bench(args_list[1:])
    try:
        import rich  # noqa: F401
    except ImportError:
        sys.stderr.write(
            "artifact-uploader: the command line needs the 'cli' extra: "
            "pip install 'artifact-uploader[cli]'\n"
        )
        return EXIT_USAGE
    parser = build_parser()
    args = parser.parse_args(args_list)
    try:
        options, scrub = parse_provider_kwargs(args.provider_kwarg)
    except _UsageError as exc:
        _fail_usage(parser, str(exc))
    try:
        if hasattr(args, "to"):
            args.store = _store_uri(args.to)
    except _UsageError as exc:
        _fail_usage(parser, str(exc))
    output = _Output(json_mode=args.json, quiet=args.quiet, scrub=scrub)
    _configure_logging(output, args.verbose)
    handler: Callable[[argparse.Namespace, _Output, dict[str, Any]], int] = args.handler
    try:
        return handler(args, output, options)
    except _UsageError as exc:
        output.error(f"{parser.prog} {args.command}: error: {exc}")
        return EXIT_USAGE
    except KeyboardInterrupt:
        output.error("interrupted")
        return EXIT_INTERRUPTED
    except UploadError as exc:
        # Anything the commands did not map: still a clear message, scrubbed, and no traceback.
        output.error(f"error: {_describe(exc)}")
        return EXIT_FAILED


__all__ = ["build_parser", "main"]
