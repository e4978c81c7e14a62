"""A crash-safe record of staged uploads, kept in a persistent staging folder.

One JSON object per line, appended:

- ``pending``: written and fsync'd before ``submit`` returns, with all a later run needs to
  finish the upload (object name, staged file, size, overwrite flag);
- ``multipart``: the id of a multipart upload in progress, so a resume can abort it;
- ``done``: the upload is durable (the staged file is deleted after this).

What is read back is untrusted input (anyone who could write the folder once could have
written the journal): the file is streamed with each line bounded (:data:`MAX_LINE`), never
read whole; a line that is not a JSON object with a known ``op`` (a crash mid-append) is
skipped and reported; an entry with a wrong type or value (no coercion) is a *bad entry*:
reported, never acted on. A ``staged`` path must name a file directly inside the staged
sub-folder (``staged/<id>-...``): never absolute, never ``..``, never another folder.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import re
import stat
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from ._errors import StagingError, UploaderClosedError
from ._staging import _CREATE_EXCL, STAGED_DIR, _check_own_file, _refused, closed_on_error

JOURNAL_FILE = "journal.jsonl"
TMP_FILE = "journal.tmp"
# Longest journal line read back. A real line is a few hundred bytes (an object name is at
# most 1 KiB, a source path at most PATH_MAX); anything longer is skipped unread.
MAX_LINE = 64 * 1024
log = logging.getLogger("artifact_uploader")

_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")


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
    # Where it was read from (1-based line of the journal), for messages; 0 when not read.
    line: int = field(default=0, compare=False)

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

    def describe(self, folder: Path, why: str) -> str:
        """The bad-entry message for this entry, refused because ``why``."""
        where = f"{folder / JOURNAL_FILE}:{self.line}" if self.line else str(folder / JOURNAL_FILE)
        return (
            f"{where}: refused the entry for {_show(self.name)} (staged {_show(self.staged)}): "
            f"{why}; nothing was uploaded or deleted for it"
        )


@dataclass
class JournalContents:
    """What :func:`read` found in a journal.

    Attributes:
        entries: Well-formed pending entries not recorded as done, in journal order.
        skipped_lines: A message per line that is not a journal record (corrupt, truncated,
            too long, unknown ``op``).
        bad_entries: A message per record with a wrong type or value, naming the reason.
    """

    entries: list[JournalEntry] = field(default_factory=list)
    skipped_lines: list[str] = field(default_factory=list)
    bad_entries: list[str] = field(default_factory=list)


class Journal:
    """Append-only journal in ``folder``. Thread-safe (callers append pending, the loop done).

    The folder is the staging folder :class:`~artifact_uploader._staging.Stager` accepted
    (ours, not writable by others); the journal's own files are still never opened through a
    symbolic link or a second hard link, which an earlier owner of the folder could have
    planted.

    Raises:
        StagingError: The journal file is a symbolic link, not a regular file, hard-linked,
            or another user's.
    """

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
                    pass  # read() reports and skips a truncated line anyway
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
        """Rewrite the journal holding only ``keep`` (atomically).

        Raises:
            StagingError: The rewrite failed (the old journal stays as it was), or a
                ``journal.tmp`` that is not our own leftover (a symbolic link, a hard link,
                not a regular file) is in the way: it is refused, never followed.
        """
        tmp = self.folder / TMP_FILE
        with self._lock:
            fd = _create_tmp(tmp)
            try:
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
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            os.replace(tmp, self.path)
            self._fd = _open_append(self.path)

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


def _open_append(path: Path) -> int:
    try:
        fd = os.open(
            path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
        )
    except OSError as exc:
        raise _refused(path, exc, "journal") from exc
    with closed_on_error(fd):
        _check_own_file(fd, path, "journal")
        os.fchmod(fd, 0o600)
    return fd


def _create_tmp(tmp: Path) -> int:
    """Create ``journal.tmp`` afresh (0600), replacing only our leftover of a crashed rewrite."""
    for _ in range(2):
        try:
            return os.open(tmp, _CREATE_EXCL, 0o600)
        except FileExistsError:
            st = os.lstat(tmp)
            if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1 or st.st_uid != os.geteuid():
                kind = (
                    "a symbolic link"
                    if stat.S_ISLNK(st.st_mode)
                    else ("not a regular file of ours with one link")
                )
                raise StagingError(
                    f"{str(tmp)!r} is {kind}; refusing to write the journal through it "
                    "(something other than this library put it there: remove it)",
                    path=tmp,
                ) from None
            tmp.unlink()  # our own leftover from a crash mid-rewrite
        except OSError as exc:
            raise _refused(tmp, exc, "journal rewrite file") from exc
    raise StagingError(f"{str(tmp)!r} keeps reappearing; cannot rewrite the journal", path=tmp)


# -- reading it back ------------------------------------------------------------------------------


def read(folder: Path, *, log_problems: bool = True) -> JournalContents:
    """Stream the journal in ``folder``: pending entries, skipped lines and bad entries.

    Only structure is checked here (types, values, the ``staged`` path's form); what depends on
    the store (its ``check_name``) or on the staged file itself is checked by the uploader
    (:func:`refusal`). Memory stays bounded whatever the file holds.

    Args:
        folder: The staging folder.
        log_problems: Log a warning per skipped line and bad entry.

    Raises:
        StagingError: The journal is a symbolic link or not a regular file.
    """
    path = folder / JOURNAL_FILE
    out = JournalContents()
    entries: dict[str, JournalEntry] = {}
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return out
    except OSError as exc:
        raise _refused(path, exc, "journal") from exc
    with open(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise StagingError(f"journal {str(path)!r} is not a regular file", path=path)
        for lineno, raw in _bounded_lines(f):
            if raw is None:
                out.skipped_lines.append(
                    f"{path}:{lineno}: skipped a corrupt journal line (longer than "
                    f"{MAX_LINE // 1024} KiB; not read)"
                )
                continue
            if not raw.strip():
                continue
            try:
                rec = json.loads(raw.decode("utf-8"))
                if not isinstance(rec, dict):
                    raise ValueError(f"a JSON {type(rec).__name__}, not an object")
                op = rec.get("op")
                if op not in ("pending", "multipart", "done"):
                    raise ValueError(f"unknown op {_show(op)}")
            except (ValueError, RecursionError) as exc:
                # ValueError covers bad UTF-8 and bad JSON; RecursionError, absurd nesting.
                why = str(exc) if len(str(exc)) < 200 else type(exc).__name__
                out.skipped_lines.append(f"{path}:{lineno}: skipped a corrupt journal line ({why})")
                continue
            problem = _apply(rec, lineno, entries)
            if problem is not None:
                out.bad_entries.append(
                    f"{path}:{lineno}: refused a journal entry: {problem}; "
                    "nothing was uploaded or deleted for it"
                )
    out.entries = list(entries.values())
    if log_problems:
        for msg in (*out.skipped_lines, *out.bad_entries):
            log.warning(msg)
    return out


def load(folder: Path) -> tuple[list[JournalEntry], list[str]]:
    """The pending entries in ``folder``'s journal, and a message per skipped line or bad entry.

    Raises:
        StagingError: The journal is a symbolic link or not a regular file.
    """
    found = read(folder)
    return found.entries, found.skipped_lines + found.bad_entries


def pending_count(folder: str | os.PathLike[str]) -> int:
    """How many uploads an earlier run left pending in the staging folder ``folder``.

    Reads the journal as :func:`read` does (bounded, nothing logged); 0 without a journal.
    Entries the uploader would still refuse for its store (a name the store cannot hold, a
    staged file that is a link) are counted: they are announced with their reason at start.

    Raises:
        StagingError: The journal is a symbolic link or not a regular file.
    """
    return len(read(Path(folder), log_problems=False).entries)


# Set while an uploader is built only to resume its folder at once (Uploader.resume, the CLI's
# resume command, ObjectStoreLogger(resume=True)): telling the user to resume is then noise.
_quiet = contextvars.ContextVar("artifact_uploader_quiet_pending", default=False)


@contextlib.contextmanager
def resuming() -> Iterator[None]:
    """Build uploaders in this block without announcing pending entries (they are resumed)."""
    token = _quiet.set(True)
    try:
        yield
    finally:
        _quiet.reset(token)


def announce_pending(folder: Path, count: int) -> None:
    """Warn that ``count`` uploads of an earlier run wait in ``folder``; name how to finish them."""
    if count < 1 or _quiet.get():
        return
    log.warning(
        "staging folder %r holds %d upload(s) an earlier run left unfinished; they are not "
        "uploaded until resumed: Uploader.resume(%r, store) (or resume_pending() on this "
        "uploader, resume=True on ObjectStoreLogger), or `artifact-uploader resume %s --to URI`",
        str(folder),
        count,
        str(folder),
        _shell_quote(str(folder)),
    )


def refusal(provider: Any, folder: Path, entry: JournalEntry) -> tuple[str, bool] | None:
    """Why the uploader must not act on ``entry`` (and whether to keep it journalled), or None.

    A name this store refuses keeps its entry (another store may take it); a staged file that
    is a symbolic link or not a regular file drops it (no store can). A missing staged file is
    not a refusal: resume reports it as a failed upload.
    """
    from ._errors import InvalidObjectNameError

    try:
        provider.check_name(entry.name)
    except InvalidObjectNameError as exc:
        return f"the store refuses its name ({exc})", True
    why = staged_problem(folder, entry)
    return None if why is None else (why, False)


def staged_problem(folder: Path, entry: JournalEntry) -> str | None:
    """Why ``entry``'s staged file must not be read or deleted, or None (also when missing)."""
    try:
        st = os.lstat(folder / entry.staged)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"its staged file cannot be examined ({exc.strerror or exc})"
    if stat.S_ISLNK(st.st_mode):
        return "its staged file is a symbolic link (never followed)"
    if not stat.S_ISREG(st.st_mode):
        return "its staged file is not a regular file"
    return None


def _bounded_lines(f: IO[bytes]) -> Any:
    """Yield ``(lineno, line)``; ``line`` is None for a line over :data:`MAX_LINE` (skipped
    in bounded chunks, never held whole)."""
    lineno = 0
    while True:
        line = f.readline(MAX_LINE + 1)
        if not line:
            return
        lineno += 1
        if len(line) <= MAX_LINE or line.endswith(b"\n"):
            yield lineno, line
            continue
        while True:
            rest = f.readline(MAX_LINE)
            if not rest or rest.endswith(b"\n"):
                break
        yield lineno, None


def _apply(rec: dict[str, Any], lineno: int, entries: dict[str, JournalEntry]) -> str | None:
    """Apply one record to ``entries``; the reason it is a bad entry, or None."""
    op = rec["op"]
    entry_id = rec.get("id")
    if not isinstance(entry_id, str) or not _ID.fullmatch(entry_id):
        return f"{op} record with id {_show(entry_id)} (expected 1-128 of A-Z a-z 0-9 _ -)"
    if op == "done":
        entries.pop(entry_id, None)
        return None
    if op == "multipart":
        upload_id = rec.get("upload_id")
        if not isinstance(upload_id, str) or not upload_id or len(upload_id) > 1024:
            return f"multipart record for {entry_id} with upload_id {_show(upload_id)}"
        if entry_id in entries:
            entries[entry_id].multipart_ids.append(upload_id)
        return None
    name, staged, size = rec.get("name"), rec.get("staged"), rec.get("size")
    overwrite, source = rec.get("overwrite"), rec.get("source", "")
    # Exact types, no coercion: "false" is not False, 1 is not True, True is not a size.
    problems = []
    if not isinstance(name, str) or not name:
        problems.append(f"name {_show(name)} is not a non-empty string")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        problems.append(f"size {_show(size)} is not a non-negative integer")
    if not isinstance(overwrite, bool):
        problems.append(f"overwrite {_show(overwrite)} is not true or false")
    if not isinstance(source, str):
        problems.append(f"source {_show(source)} is not a string")
    staged_why = _staged_form(staged, entry_id)
    if staged_why is not None:
        problems.append(staged_why)
    if problems:
        label = _show(name) if isinstance(name, str) else f"id {entry_id}"
        return f"pending record for {label}: " + "; ".join(problems)
    assert isinstance(name, str) and isinstance(staged, str) and isinstance(size, int)
    assert isinstance(overwrite, bool) and isinstance(source, str)
    entries[entry_id] = JournalEntry(
        id=entry_id,
        name=name,
        staged=staged,
        size=size,
        overwrite=overwrite,
        source=source,
        line=lineno,
    )
    return None


def _staged_form(staged: object, entry_id: str) -> str | None:
    """Why ``staged`` is not ``staged/<entry_id>-<label>`` (a plain file name), or None."""
    if not isinstance(staged, str):
        return f"staged {_show(staged)} is not a string"
    head, sep, base = staged.partition("/")
    if (
        head != STAGED_DIR
        or not sep
        or not base
        or "/" in base
        or "\\" in base
        or "\x00" in base
        or base in (".", "..")
        or not base.startswith(f"{entry_id}-")
        or len(os.fsencode(base)) > 255
    ):
        return (
            f"staged {_show(staged)} is not a plain file name inside the staged folder "
            f"('{STAGED_DIR}/{entry_id}-...'): absolute paths, '..' and other folders are refused"
        )
    return None


def _show(value: object, limit: int = 120) -> str:
    """``repr(value)`` cut to ``limit`` characters: journal values can be anything, any size."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _shell_quote(text: str) -> str:
    import shlex

    return shlex.quote(text)
