"""A crash-safe record of staged uploads, kept in a persistent staging folder.

One JSON object per line, appended:

- ``pending``: written and fsync'd before ``submit`` returns, with all a later run needs to
  finish the upload (object name, staged file, size, overwrite flag);
- ``multipart``: the id of a multipart upload in progress, so a resume can abort it;
- ``done``: the upload is durable (the staged file is deleted after this).

A corrupt or truncated line (a crash mid-append) is reported and skipped, never fatal.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._errors import StagingError, UploaderClosedError

JOURNAL_FILE = "journal.jsonl"
log = logging.getLogger("artifact_uploader")


@dataclass
class JournalEntry:
    """An upload that was staged but not recorded as done."""

    id: str
    name: str
    staged: str
    size: int
    overwrite: bool
    source: str = ""
    multipart_ids: list[str] = field(default_factory=list)

    def to_record(self) -> dict[str, Any]:
        return {
            "op": "pending",
            "id": self.id,
            "name": self.name,
            "staged": self.staged,
            "size": self.size,
            "overwrite": self.overwrite,
            "source": self.source,
        }


class Journal:
    """Append-only journal in ``folder``. Thread-safe (callers append pending, the loop done)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.path = folder / JOURNAL_FILE
        self._lock = threading.Lock()
        self._fd: int | None = _open_append(self.path)

    def _append(self, record: dict[str, Any], *, sync: bool) -> None:
        """Append one line. A failed write (disk full) is cut off again, never left half-written.

        Raises:
            StagingError: The line could not be written (and synced); the journal is unchanged.
            UploaderClosedError: The journal is closed (its uploader closed): nothing written.
        """
        data = (json.dumps(record, separators=(",", ":"), ensure_ascii=False) + "\n").encode()
        with self._lock:
            fd = self._fd
            if fd is None:
                # Never silently: a pending record the caller was promised must not go missing.
                raise UploaderClosedError(
                    f"the journal {str(self.path)!r} is closed; its uploader was closed"
                )
            size = os.fstat(fd).st_size
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                if sync:
                    os.fsync(fd)
            except OSError as exc:
                # A partial line would glue onto the next record; cut back to the last full one.
                try:
                    os.ftruncate(fd, size)
                except OSError:
                    pass  # load() reports and skips a truncated line anyway
                raise StagingError(
                    f"could not write the journal {str(self.path)!r}: {exc.strerror or exc}",
                    path=self.path,
                ) from exc

    def pending(self, entry: JournalEntry) -> None:
        """Record a staged upload durably (fsync) before the caller is told it is staged."""
        self._append(entry.to_record(), sync=True)

    def multipart(self, entry_id: str, upload_id: str) -> None:
        self._append({"op": "multipart", "id": entry_id, "upload_id": upload_id}, sync=True)

    def done(self, entry_id: str) -> None:
        # No fsync: if a crash loses this line, resume finds the object already in the store
        # (see AsyncUploader.resume). A failed write is only logged: the object is durable.
        try:
            self._append({"op": "done", "id": entry_id}, sync=False)
        except (StagingError, UploaderClosedError) as exc:
            log.warning("%s; a later resume will find the object already uploaded", exc)

    def compact(self, keep: list[JournalEntry]) -> None:
        """Rewrite the journal holding only ``keep`` (atomically)."""
        tmp = self.path.with_suffix(".tmp")
        with self._lock:
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
                with open(fd, "w", encoding="utf-8") as f:
                    for entry in keep:
                        f.write(json.dumps(entry.to_record(), ensure_ascii=False) + "\n")
                        for upload_id in entry.multipart_ids:
                            rec = {"op": "multipart", "id": entry.id, "upload_id": upload_id}
                            f.write(json.dumps(rec) + "\n")
                    f.flush()
                    os.fsync(f.fileno())
            except OSError as exc:
                # The old journal stays as it was; no half-written rewrite is left beside it.
                tmp.unlink(missing_ok=True)
                raise StagingError(
                    f"could not rewrite the journal {str(self.path)!r}: {exc.strerror or exc}",
                    path=self.path,
                ) from exc
            os.chmod(tmp, 0o600)
            if self._fd is not None:
                os.close(self._fd)
            os.replace(tmp, self.path)
            self._fd = _open_append(self.path)

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


def _open_append(path: Path) -> int:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    os.fchmod(fd, 0o600)
    return fd


def load(folder: Path) -> tuple[list[JournalEntry], list[str]]:
    """Read the journal in ``folder``: the entries not done, and a message per bad line."""
    path = folder / JOURNAL_FILE
    entries: dict[str, JournalEntry] = {}
    problems: list[str] = []
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return [], []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            op = rec["op"]
            if op == "pending":
                entries[rec["id"]] = JournalEntry(
                    id=str(rec["id"]),
                    name=str(rec["name"]),
                    staged=str(rec["staged"]),
                    size=int(rec["size"]),
                    overwrite=bool(rec["overwrite"]),
                    source=str(rec.get("source", "")),
                )
            elif op == "multipart":
                if rec["id"] in entries:
                    entries[rec["id"]].multipart_ids.append(str(rec["upload_id"]))
            elif op == "done":
                entries.pop(rec["id"], None)
            else:
                raise ValueError(f"unknown op {op!r}")
        except (ValueError, KeyError, TypeError) as exc:
            msg = f"{path}:{lineno}: skipped a corrupt journal line ({exc})"
            log.warning(msg)
            problems.append(msg)
    return list(entries.values()), problems


# -- what a resume asks the store ----------------------------------------------------------------
#
# The provider protocol has no read or listing call, so these two helpers know the built-in
# stores that can answer. Any other store (or any error while asking) gives the conservative
# answer: "not known to be there" / "no unrecorded uploads".


async def already_stored(
    provider: Any, name: str, path: Path, size: int, part_size: int | None
) -> bool:
    """True only when the store provably holds exactly the bytes of ``path`` as ``name``.

    Used by resume for ``overwrite=False`` entries: the upload may have landed just before the
    crash, with its ``done`` line lost (or never written). Local and memory stores compare the
    bytes; S3 compares the size and the MD5 ETag (single PUT, or the multipart ETag recomputed
    with ``part_size``); GCS and Azure compare the size and the MD5 the store keeps for the
    object. Anything else, or any doubt, is False.
    """
    import anyio.to_thread

    from .providers.local import LocalProvider
    from .providers.memory import MemoryProvider

    try:
        if isinstance(provider, LocalProvider):
            target = provider.root / name
            return await anyio.to_thread.run_sync(_same_file, target, path)
        if isinstance(provider, MemoryProvider):
            stored = provider.objects.get(name)
            return stored is not None and stored == await anyio.to_thread.run_sync(path.read_bytes)
        client = getattr(provider, "_client", None)
        if getattr(provider, "scheme", None) == "s3" and client is not None:
            head = await client.head_object(Bucket=provider.bucket, Key=provider.key(name))
            if head.get("ContentLength") != size:
                return False
            etag = str(head.get("ETag") or "").strip('"')
            return await anyio.to_thread.run_sync(_etag_matches, etag, path, size, part_size)
        scheme = getattr(provider, "scheme", None)
        storage = getattr(provider, "_storage", None)
        if scheme == "gs" and storage is not None:
            key = f"{provider.prefix}/{name}" if provider.prefix else name
            meta = await storage.download_metadata(provider.bucket, key)
            if int(meta.get("size", -1)) != size:
                return False
            md5 = await anyio.to_thread.run_sync(_md5, path)
            return bool(meta.get("md5Hash")) and meta["md5Hash"] == base64.b64encode(md5).decode()
        if scheme == "az" and getattr(provider, "_container", None) is not None:
            props = await provider._blob(name).get_blob_properties()
            stored = props.content_settings.content_md5
            if props.size != size or not stored:
                return False
            return bytes(stored) == await anyio.to_thread.run_sync(_md5, path)
    except Exception as exc:
        log.debug("could not compare %r with the stored object: %s", name, type(exc).__name__)
    return False


async def unrecorded_uploads(provider: Any, name: str) -> list[str]:
    """Ids of unfinished multipart uploads of ``name`` in the store (S3 and memory stores).

    A crash between CreateMultipartUpload reaching the server and its id reaching the journal
    leaves an upload the journal cannot name; resume aborts these as well.
    """
    from .providers.memory import MemoryProvider

    try:
        if isinstance(provider, MemoryProvider):
            with provider._lock:
                return [i for i, m in provider.multipart_uploads.items() if m.name == name]
        client = getattr(provider, "_client", None)
        if getattr(provider, "scheme", None) == "s3" and client is not None:
            key = provider.key(name)
            resp = await client.list_multipart_uploads(Bucket=provider.bucket, Prefix=key)
            return [
                str(u["UploadId"]) for u in resp.get("Uploads", []) or [] if u.get("Key") == key
            ]
    except Exception as exc:
        log.debug("could not list multipart uploads of %r: %s", name, type(exc).__name__)
    return []


def _same_file(a: Path, b: Path) -> bool:
    import filecmp

    return a.is_file() and filecmp.cmp(a, b, shallow=False)


def _md5(path: Path) -> bytes:
    import hashlib

    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.digest()


def _etag_matches(etag: str, path: Path, size: int, part_size: int | None) -> bool:
    import hashlib

    digest, _, count = etag.partition("-")
    if not count:
        return _md5(path).hex() == digest
    if part_size is None or not count.isdigit() or -(-size // part_size) != int(count):
        return False
    parts = b""
    with open(path, "rb") as f:
        while chunk := f.read(part_size):
            parts += hashlib.md5(chunk, usedforsecurity=False).digest()
    return hashlib.md5(parts, usedforsecurity=False).hexdigest() == digest
