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
import subprocess
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from ._cli_get import GET_DESCRIPTION, cmd_get
from ._cli_interrupt import ensure_ctrl_c
from ._cli_options import (
    DEFAULT_CONCURRENCY,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    UsageError,
    describe,
    parse_provider_kwargs,
    positive_int,
    prog,
    store_uri,
)
from ._cli_output import Output, configure_logging
from ._cli_put import PUT_DESCRIPTION, cmd_put
from ._cli_resume import RESUME_DESCRIPTION, cmd_resume
from ._errors import UploadError
from ._staging import STAGING_MODES

# A command's handler: the parsed arguments, where to write, the typed store options.
Handler = Callable[[argparse.Namespace, Output, dict[str, Any]], int]

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
            f"{prog()} bench: benchmarks/bench_s3.py was not found. The benchmark ships with "
            "the source, not the wheel: run this command from a source checkout of "
            "artifact-uploader (with `pip install -e '.[bench]'`).\n"
        )
        return EXIT_USAGE
    try:
        return subprocess.call([sys.executable, str(script), *argv])
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


# -- the parser --------------------------------------------------------------------------------


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
        type=positive_int,
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


def _command(
    add_parser: Callable[..., argparse.ArgumentParser],
    name: str,
    handler: Handler,
    summary: str,
    description: str,
    **kwargs: Any,
) -> argparse.ArgumentParser:
    """A subcommand whose ``--help`` prints ``description`` as written (line breaks kept)."""
    parser = add_parser(
        name,
        help=summary,
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        **kwargs,
    )
    parser.set_defaults(handler=handler)
    return parser


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for the docs and the tests)."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog=prog(),
        description="Upload files and directories to object storage (a local folder, S3, GCS or\n"
        "Azure Blob) with a progress bar, bounded concurrency, retries, checksums and an\n"
        "optional crash journal. `COMMAND --help` describes each command.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    put = _command(
        sub.add_parser,
        "put",
        cmd_put,
        "upload files and directories (recursively) to a store",
        PUT_DESCRIPTION,
        epilog=_EPILOG,
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

    resume = _command(
        sub.add_parser,
        "resume",
        cmd_resume,
        "finish the uploads a killed run left in its staging folder",
        RESUME_DESCRIPTION,
    )
    resume.add_argument("staging_dir", metavar="STAGING_DIR", help="the --staging-dir of the run")
    _add_store_options(resume)

    get = _command(
        sub.add_parser,
        "get",
        cmd_get,
        "download one object to a local file (verified, atomic)",
        GET_DESCRIPTION,
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

    sub.add_parser(
        "bench",
        help="run the bundled S3 concurrency benchmark (source checkout only); "
        "arguments are passed to it (`bench --help` shows them)",
        add_help=False,
    )
    return parser


def _fail_usage(parser: argparse.ArgumentParser, message: str) -> NoReturn:
    parser.error(message)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code.

    Args:
        argv: The arguments (default ``sys.argv[1:]``).
    """
    ensure_ctrl_c()
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
        if hasattr(args, "to"):
            args.store = store_uri(args.to)
    except UsageError as exc:
        _fail_usage(parser, str(exc))
    output = Output(json_mode=args.json, quiet=args.quiet, scrub=scrub)
    configure_logging(output, args.verbose)
    handler: Handler = args.handler
    try:
        return handler(args, output, options)
    except UsageError as exc:
        output.error(f"{parser.prog} {args.command}: error: {exc}")
        return EXIT_USAGE
    except KeyboardInterrupt:
        output.error("interrupted")
        return EXIT_INTERRUPTED
    except UploadError as exc:
        # Anything the commands did not map: still a clear message, scrubbed, and no traceback.
        output.error(f"error: {describe(exc)}")
        return EXIT_FAILED


__all__ = ["build_parser", "main"]
