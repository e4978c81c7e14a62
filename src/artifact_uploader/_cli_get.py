"""``artifact-uploader get``: download one object, verified, written atomically."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from ._cli_interrupt import opening
from ._cli_options import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    INTERRUPT_CLOSE_TIMEOUT,
    UsageError,
    describe,
    opening_failure,
    prog,
    store_uri,
)
from ._cli_output import DownloadProgress, Output, human_bytes
from ._errors import ConfigError, ObjectNotFoundError, ProviderError, StagingError, UploadError

GET_DESCRIPTION = """\
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
        UsageError: A malformed URI, one that names no object, or one outside ``store``.
    """
    uri = store_uri(uri, "URI")
    if store is not None:
        root = store_uri(store, "--store").rstrip("/")
        if not uri.startswith(root + "/") or len(uri) == len(root) + 1:
            raise UsageError(f"URI {uri!r} is not an object inside --store {root!r}")
        name = uri[len(root) + 1 :]
        return root, unquote(name) if root.startswith("file:") else name
    parts = urlsplit(uri)
    if parts.scheme.lower() == "file":
        folder, _, name = uri.rpartition("/")
        if not name or folder.endswith(":/"):
            raise UsageError(f"URI {uri!r} names no file")
        return folder, unquote(name)
    name = uri.split("://", 1)[1].partition("/")[2]
    if not name or name.endswith("/"):
        raise UsageError(f"URI {uri!r} names no object (expected {parts.scheme}://bucket/key)")
    return f"{parts.scheme}://{parts.netloc}", name


def cmd_get(args: argparse.Namespace, output: Output, options: dict[str, Any]) -> int:
    """Run ``get``; return the exit code."""
    from ._download import DestinationExistsError
    from ._sync import Uploader

    store, name = split_object_uri(args.uri, args.store_root)
    args.store = store
    dest = Path(args.dest).expanduser()
    if dest.is_dir():
        dest = dest / name.rsplit("/", 1)[-1]
    doc: dict[str, Any] = {"ok": False, "uri": args.uri, "store": store, "name": name}
    progress = DownloadProgress(output)
    start = time.monotonic()

    def finish(code: int, error: str | None = None) -> int:
        if error is not None:
            output.error(error)
        if output.json_mode:
            doc.update(ok=code == EXIT_OK, exit_code=code, error=error)
            output.emit_json(doc)
        return code

    try:
        with opening(output, f"{dest} was not written"):
            up = Uploader(
                store,
                provider_kwargs=options,
                max_concurrency=args.concurrency,
                on_event=progress.on_event,
            )
    except (ConfigError, StagingError, ProviderError) as exc:
        return finish(*opening_failure("get", store, exc))
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
        code, error = EXIT_USAGE, f"{prog()} get: error: {exc}"
    except KeyboardInterrupt:
        code = EXIT_INTERRUPTED
        error = f"interrupted: the download stopped; {dest} was not written"
    except UploadError as exc:
        code = EXIT_FAILED
        error = f"error: failed to download {args.uri}: {describe(exc)} ({dest} was not written)"
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
            output.result(
                f"downloaded {result.uri} -> {result.path} "
                f"({human_bytes(result.size)} in {seconds:.2f} s{verified})"
            )
    try:
        up.close(timeout=INTERRUPT_CLOSE_TIMEOUT if code == EXIT_INTERRUPTED else None)
    except (UploadError, KeyboardInterrupt):
        pass  # nothing was uploaded: the download's own outcome is the one to report
    return finish(code, error)
