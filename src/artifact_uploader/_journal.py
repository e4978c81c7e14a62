"""A crash-safe record of staged uploads, kept in a persistent staging folder.

One JSON object per line, appended:

- ``pending``: written and fsync'd before ``submit`` returns, with all a later run needs to
  finish the upload (object name, staged file, size, overwrite flag);
- ``multipart``: the id of a multipart upload in progress, so a resume can abort it;
- ``done``: the upload is durable (the staged file is deleted after this).

A corrupt or truncated line (a crash mid-append) is reported and skipped, never fatal.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
        self._file = open(self.path, "a", encoding="utf-8")
        os.chmod(self.path, 0o600)

    def _append(self, record: dict[str, Any], *, sync: bool) -> None:
        line = json.dumps(record, separators=(",", ":"), ensure_ascii=False) + "\n"
        with self._lock:
            if self._file.closed:
                return
            self._file.write(line)
            self._file.flush()
            if sync:
                os.fsync(self._file.fileno())

    def pending(self, entry: JournalEntry) -> None:
        """Record a staged upload durably (fsync) before the caller is told it is staged."""
        self._append(entry.to_record(), sync=True)

    def multipart(self, entry_id: str, upload_id: str) -> None:
        self._append({"op": "multipart", "id": entry_id, "upload_id": upload_id}, sync=True)

    def done(self, entry_id: str) -> None:
        # No fsync: if a crash loses this line, resume uploads the object again, which is safe.
        self._append({"op": "done", "id": entry_id}, sync=False)

    def compact(self, keep: list[JournalEntry]) -> None:
        """Rewrite the journal holding only ``keep`` (atomically)."""
        tmp = self.path.with_suffix(".tmp")
        with self._lock:
            with open(tmp, "w", encoding="utf-8") as f:
                for entry in keep:
                    f.write(json.dumps(entry.to_record(), ensure_ascii=False) + "\n")
                    for upload_id in entry.multipart_ids:
                        rec = {"op": "multipart", "id": entry.id, "upload_id": upload_id}
                        f.write(json.dumps(rec) + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o600)
            self._file.close()
            os.replace(tmp, self.path)
            self._file = open(self.path, "a", encoding="utf-8")

    def close(self) -> None:
        with self._lock:
            self._file.close()


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
