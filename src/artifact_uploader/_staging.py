"""Staging: put a private copy (or clone, link, or the file itself) where the uploader owns it.

The caller blocks only here. After staging, changing or deleting the source does not change
what is uploaded (except in ``link`` mode, whose caveat is documented: the staged file is the
source's inode, so it also keeps the source's permissions, where every other mode's staged file
is private, 0600). A byte budget bounds the staging folder: when full, staging waits for
uploads to free space.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import stat
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ._errors import ConfigError, SourceFileError, StagingError, StagingTimeoutError

StagingMode = Literal["copy", "reflink", "link", "move", "auto"]
STAGING_MODES: tuple[str, ...] = ("copy", "reflink", "link", "move", "auto")
STAGED_DIR = "staged"
_FICLONE = 0x40049409  # ioctl(dest, FICLONE, src): a copy-on-write clone on btrfs / xfs / bcachefs


@dataclass(frozen=True, slots=True)
class StagedFile:
    """A file the uploader owns until it is uploaded."""

    id: str
    path: Path
    size: int
    source: str
    # Set in "move" mode only: the source's permission bits, to put the file back intact
    # when the submission is refused after staging (see Stager.discard).
    moved_mode: int | None = None


class ByteBudget:
    """Bounds the bytes held in staging. Thread-safe: staging waits in callers' threads while
    uploads on the loop thread release.

    A file larger than the whole budget is admitted alone once nothing else is staged, so it can
    never deadlock.
    """

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.used = 0
        self._cond = threading.Condition()

    def acquire(self, n: int, timeout: float | None) -> None:
        if self.limit is None:
            with self._cond:
                self.used += n
            return
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self.used > 0 and self.used + n > self.limit:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise StagingTimeoutError(
                        f"staging budget of {self.limit} bytes stayed full for {timeout}s "
                        f"({self.used} bytes staged, {n} more requested)"
                    )
                self._cond.wait(remaining)
            self.used += n

    def release(self, n: int) -> None:
        with self._cond:
            self.used = max(0, self.used - n)
            self._cond.notify_all()

    def adjust(self, delta: int) -> None:
        """Correct an acquisition by ``delta`` bytes without waiting (a source that grew or
        shrank while it was staged)."""
        if delta < 0:
            self.release(-delta)
        else:
            with self._cond:
                self.used += delta


class Stager:
    """Owns the staging folder.

    Args:
        folder: Persistent staging folder (journalled, resumable). None: a private temporary
            directory, removed at close if nothing failed.
        mode: "copy" (default), "reflink", "link", "move" or "auto" (reflink, else copy).
        max_staged_bytes: Bound on bytes staged at once; None for no bound.
    """

    def __init__(
        self,
        folder: str | os.PathLike[str] | None,
        *,
        mode: str = "copy",
        max_staged_bytes: int | None = None,
    ) -> None:
        if mode not in STAGING_MODES:
            raise ConfigError(f"staging mode must be one of {STAGING_MODES}, got {mode!r}")
        if max_staged_bytes is not None and (
            isinstance(max_staged_bytes, bool)
            or not isinstance(max_staged_bytes, int)
            or max_staged_bytes < 1
        ):
            raise ConfigError(
                f"max_staged_bytes must be a positive integer, got {max_staged_bytes!r}"
            )
        self.mode = mode
        self.budget = ByteBudget(max_staged_bytes)
        self.persistent = folder is not None
        if folder is None:
            # mkdtemp creates the folder 0700.
            self.folder = Path(tempfile.mkdtemp(prefix="artifact-uploader-"))
        else:
            self.folder = Path(folder).expanduser().absolute()
        self.staged_dir = self.folder / STAGED_DIR
        self._lock_fd: int | None = None
        self._prepare()

    @classmethod
    def borrowed(cls, folder: str | os.PathLike[str]) -> Stager:
        """The staging folder another process owns (the ``use_procs`` parent).

        Uploads read from it and delete what they finished; it takes no lock and keeps no
        byte budget (the owner does), and closing it never removes the folder.
        """
        stager = cls.__new__(cls)
        stager.mode = "copy"
        stager.budget = ByteBudget(None)
        stager.persistent = True
        stager.folder = Path(folder)
        stager.staged_dir = stager.folder / STAGED_DIR
        stager._lock_fd = None
        return stager

    def __repr__(self) -> str:
        return f"Stager({str(self.folder)!r}, mode={self.mode!r})"

    @property
    def lock_fd(self) -> int | None:
        """The open lock file of a persistent folder (a child process inherits it, so no other
        uploader takes the folder while it runs); None when not held."""
        return self._lock_fd

    def _prepare(self) -> None:
        """Take the folder if it is ours, else refuse it; create what is missing, privately.

        Anything already in a folder given by the caller may have been planted: the folder
        itself must be owned by this user and not writable by group or others, and nothing in
        it is followed through a symbolic link (the staged sub-folder, the lock).
        """
        try:
            fd = _open_private_dir(self.folder)
        except OSError as exc:
            raise StagingError(
                f"staging folder {str(self.folder)!r} is not usable: {exc.strerror or exc}",
                path=self.folder,
            ) from exc
        try:
            self._prepare_in(fd)
        finally:
            os.close(fd)

    def _prepare_in(self, fd: int) -> None:
        """Prepare the staged sub-folder and the lock inside the folder open as ``fd``."""
        try:
            staged_fd = _open_subdir(fd, self.folder, STAGED_DIR)
            try:
                probe = f".probe-{uuid.uuid4().hex}"
                os.close(os.open(probe, _CREATE_EXCL, 0o600, dir_fd=staged_fd))
                os.unlink(probe, dir_fd=staged_fd)
            finally:
                os.close(staged_fd)
        except StagingError:
            raise
        except OSError as exc:
            raise StagingError(
                f"staging folder {str(self.folder)!r} is not usable: {exc.strerror or exc}",
                path=self.folder,
            ) from exc
        if self.persistent:
            # One uploader per folder at a time; a crashed owner's lock dies with its process.
            lock = self.folder / "lock"
            try:
                lock_fd = os.open("lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600, dir_fd=fd)
            except OSError as exc:
                raise _refused(lock, exc, "the lock file") from exc
            try:
                _check_own_file(lock_fd, lock, "the lock file")
                fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(lock_fd)
                raise StagingError(
                    f"staging folder {str(self.folder)!r} is in use by another live uploader",
                    path=self.folder,
                ) from None
            except BaseException:
                os.close(lock_fd)
                raise
            self._lock_fd = lock_fd

    # -- staging ----------------------------------------------------------------------------

    @staticmethod
    def check_source(path: str | os.PathLike[str]) -> tuple[Path, int]:
        """Validate the source file; return it and its size.

        Raises:
            SourceFileError: Missing, not a regular file, or unreadable; the message names it.
        """
        if not isinstance(path, str | os.PathLike):
            raise SourceFileError(repr(path), f"expected a path, got {type(path).__name__}")
        p = Path(path)
        try:
            st = p.stat()
        except FileNotFoundError:
            raise SourceFileError(p, "no such file") from None
        except OSError as exc:
            raise SourceFileError(p, exc.strerror or str(exc)) from None
        if stat.S_ISDIR(st.st_mode):
            raise SourceFileError(p, "is a directory, not a file")
        if not stat.S_ISREG(st.st_mode):
            raise SourceFileError(p, "is not a regular file")
        if not os.access(p, os.R_OK):
            raise SourceFileError(p, "is not readable (permission denied)")
        return p, st.st_size

    def stage(
        self, path: str | os.PathLike[str], *, timeout: float | None = None, mode: str | None = None
    ) -> StagedFile:
        """Stage ``path``; blocks while the budget is full and while copying.

        Raises:
            SourceFileError: The source is missing, a directory or unreadable.
            StagingError: The staging folder is unwritable or full; nothing half-staged remains.
            StagingTimeoutError: The budget stayed full past ``timeout``.
        """
        src, size = self.check_source(path)
        mode = mode or self.mode
        staged_id = uuid.uuid4().hex
        dest = self.staged_dir / f"{staged_id}-{_label(src.name)}"
        self.budget.acquire(size, timeout)
        moved_mode: int | None = None
        try:
            moved_mode = self._place(src, dest, mode)
            # What was staged, not what stat() said before: a source still being written
            # would otherwise upload a truncated prefix and never match on resume.
            staged_size = os.stat(dest).st_size
        except BaseException as exc:
            self.budget.release(size)
            with contextlib.suppress(OSError):  # never hide the real error behind this one
                dest.unlink(missing_ok=True)
            if isinstance(exc, OSError) and not isinstance(exc, StagingError | SourceFileError):
                if exc.filename is not None and os.fspath(exc.filename) == str(src):
                    # The source refused to open although os.access said yes (root, ACLs,
                    # network filesystems): that is the source's fault, not the folder's.
                    raise SourceFileError(src, exc.strerror or str(exc)) from exc
                raise self._staging_error(src, exc) from exc
            raise
        if staged_size != size:
            self.budget.adjust(staged_size - size)
        return StagedFile(staged_id, dest, staged_size, str(src), moved_mode)

    def _staging_error(self, src: Path, exc: OSError) -> StagingError:
        if exc.errno == errno.ENOSPC:
            why = "no space left on the staging device"
        elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            why = "the staging folder is not writable"
        else:
            why = exc.strerror or str(exc)
        return StagingError(
            f"could not stage {str(src)!r} into {str(self.staged_dir)!r}: {why}", path=src
        )

    def _place(self, src: Path, dest: Path, mode: str) -> int | None:
        """Put ``src`` at ``dest``; in "move" mode, return the source's permission bits."""
        if mode == "link":
            # The staged file is the source's inode: its mode cannot change without changing
            # the source's (a documented caveat of "link").
            os.link(src, dest)
            return None
        if mode == "move":
            src_mode = stat.S_IMODE(os.stat(src).st_mode)
            try:
                os.rename(src, dest)
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
                _copy(src, dest)
                src.unlink()
            # The moved file is now the uploader's private copy, like every staged file.
            os.chmod(dest, 0o600)
            return src_mode
        if mode in ("reflink", "auto") and _reflink(src, dest):
            return None
        _copy(src, dest)
        return None

    def adopt(self, path: Path, size: int, staged_id: str, source: str) -> StagedFile:
        """Account for a file already in the staging folder (resume)."""
        self.budget.acquire(size, None)
        return StagedFile(staged_id, path, size, source)

    def write_bytes(self, data: bytes, label: str) -> StagedFile:
        """Stage generated content (e.g. a symlink object's text)."""
        staged_id = uuid.uuid4().hex
        dest = self.staged_dir / f"{staged_id}-{_label(label)}"
        self.budget.acquire(len(data), None)
        try:
            fd = os.open(dest, _CREATE_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        except OSError as exc:
            self.budget.release(len(data))
            with contextlib.suppress(OSError):
                dest.unlink(missing_ok=True)
            raise self._staging_error(Path(label), exc) from exc
        return StagedFile(staged_id, dest, len(data), label)

    def release(self, staged: StagedFile) -> None:
        """Delete a staged file after its upload and return its bytes to the budget."""
        try:
            staged.path.unlink()
        except FileNotFoundError:
            pass
        self.budget.release(staged.size)

    def discard(self, staged: StagedFile) -> Path | None:
        """Undo the staging of a submission refused after staging (closed, journal unwritable).

        A copy is deleted. A moved file is the caller's only copy: it is put back at its source
        (with its permission bits), never deleted; if that fails (a new file took its place, or
        the folder is gone), it is kept in the staging folder and its path returned so the
        caller can name it.
        """
        if staged.moved_mode is None:
            self.release(staged)
            return None
        self.budget.release(staged.size)
        src = Path(staged.source)
        try:
            # link + unlink, not rename: never replace a file written at the source since.
            os.link(staged.path, src)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                return staged.path
            try:
                _copy(staged.path, src)  # O_EXCL: also never replaces a newer file
            except OSError as copy_exc:
                if copy_exc.errno != errno.EEXIST:
                    with contextlib.suppress(OSError):
                        src.unlink()  # ours, half-written
                return staged.path
        with contextlib.suppress(OSError):
            os.chmod(src, staged.moved_mode)
        with contextlib.suppress(OSError):
            staged.path.unlink()
        return None

    def forget(self, staged: StagedFile) -> None:
        """Keep a failed upload's staged file but stop counting it against the budget."""
        self.budget.release(staged.size)

    def close(self) -> None:
        """Release the folder lock; remove a temporary folder that holds nothing kept."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        if not self.persistent:
            try:
                if not any(self.staged_dir.iterdir()):
                    shutil.rmtree(self.folder, ignore_errors=True)
            except FileNotFoundError:
                pass


@contextlib.contextmanager
def closed_on_error(fd: int) -> Iterator[int]:
    """Close ``fd`` if the block raises (a descriptor refused by a check must not leak)."""
    try:
        yield fd
    except BaseException:
        os.close(fd)
        raise


# Create a new file, never through a symbolic link and never reusing a name that exists.
_CREATE_EXCL = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def _refused(path: Path, exc: OSError, what: str) -> StagingError:
    """The StagingError for ``what`` at ``path`` that could not be opened safely."""
    if exc.errno == errno.ELOOP:
        why = "is a symbolic link; a staging folder's files are never followed through one"
    else:
        why = f"cannot be opened: {exc.strerror or exc}"
    return StagingError(f"{what} {str(path)!r} {why}", path=path)


def _check_owner_and_mode(st: os.stat_result, path: Path, what: str) -> None:
    """Refuse a folder or file another user owns or that group / others may write."""
    uid = os.geteuid()
    if st.st_uid != uid:
        raise StagingError(
            f"{what} {str(path)!r} is owned by uid {st.st_uid}, not by this user (uid {uid}); "
            "refusing it: use a folder this user created",
            path=path,
        )
    mode = stat.S_IMODE(st.st_mode)
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise StagingError(
            f"{what} {str(path)!r} has mode {mode:04o}: group or others can write it, so its "
            f"contents cannot be trusted; refusing it (chmod 700 it, or use a new folder)",
            path=path,
        )


def _check_own_file(fd: int, path: Path, what: str) -> None:
    """Refuse an open file that is not a regular file of ours with one link."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise StagingError(f"{what} {str(path)!r} is not a regular file; refusing it", path=path)
    if st.st_nlink != 1:
        # A hard link planted to another file: writing here would write there.
        raise StagingError(
            f"{what} {str(path)!r} has {st.st_nlink} hard links; refusing to write through it",
            path=path,
        )
    _check_owner_and_mode(st, path, what)


def _open_private_dir(folder: Path) -> int:
    """Open the staging folder, creating it 0700 if missing; refuse one that is not ours.

    Raises:
        StagingError: Owned by another user, writable by group or others, or a symbolic
            link owned by another user.
        OSError: It cannot be created or opened.
    """
    fresh = False
    try:
        lst = os.lstat(folder)
    except FileNotFoundError:
        folder.parent.mkdir(parents=True, exist_ok=True)
        try:
            # The umask can only take bits away from 0700: a fresh folder passes the check.
            os.mkdir(folder, 0o700)
            fresh = True
        except FileExistsError:
            pass  # created meanwhile: checked below like any existing folder
        lst = os.lstat(folder)
    if stat.S_ISLNK(lst.st_mode) and lst.st_uid != os.geteuid():
        # The user may point at their folder through their own link; a link someone else
        # planted (e.g. in /tmp) would hand them the folder.
        raise StagingError(
            f"staging folder {str(folder)!r} is a symbolic link owned by uid {lst.st_uid}, "
            f"not by this user; refusing it",
            path=folder,
        )
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    with closed_on_error(fd):
        _check_owner_and_mode(os.fstat(fd), folder, "staging folder")
        if fresh:
            os.fchmod(fd, 0o700)  # whatever owner bits the umask took away
    return fd


def _open_subdir(parent_fd: int, parent: Path, name: str) -> int:
    """Open (creating it 0700) the sub-folder ``name``, never through a symbolic link."""
    path = parent / name
    try:
        os.mkdir(name, 0o700, dir_fd=parent_fd)
    except FileExistsError:
        pass
    try:
        fd = os.open(
            name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent_fd
        )
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                raise StagingError(
                    f"staged sub-folder {str(path)!r} is a symbolic link; a staging folder's "
                    "files are never followed through one",
                    path=path,
                ) from exc
            raise StagingError(
                f"staged sub-folder {str(path)!r} is not a directory; refusing it", path=path
            ) from exc
        raise
    with closed_on_error(fd):
        st = os.fstat(fd)
        if st.st_uid != os.geteuid():
            _check_owner_and_mode(st, path, "staged sub-folder")
        # Ours: make it private again, whatever an earlier run or the umask left.
        os.fchmod(fd, 0o700)
    return fd


def _label(name: str, limit: int = 150) -> str:
    """``name`` cut to at most ``limit`` bytes on a character boundary, for a staged file's
    name (uuid + "-" + label): filesystems cap a name at 255 bytes, not characters."""
    raw = os.fsencode(name)
    if len(raw) <= limit:
        return name
    # "ignore" drops the partial character the cut may leave at the end.
    return raw[:limit].decode("utf-8", errors="ignore")


def _copy(src: Path, dest: Path) -> None:
    """Copy with the kernel doing the work (copy_file_range, which may clone; else sendfile)."""
    fd_out = os.open(dest, _CREATE_EXCL, 0o600)
    try:
        with open(src, "rb", buffering=0) as fsrc:
            fd_in = fsrc.fileno()
            size = os.fstat(fd_in).st_size
            copied = 0
            try:
                while copied < size:
                    n = os.copy_file_range(fd_in, fd_out, size - copied)
                    if n == 0:
                        break
                    copied += n
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                    raise
                os.lseek(fd_in, copied, os.SEEK_SET)
                os.lseek(fd_out, copied, os.SEEK_SET)
                while True:
                    n = os.sendfile(fd_out, fd_in, None, 8 * 1024 * 1024)
                    if n == 0:
                        break
    finally:
        os.close(fd_out)


def _reflink(src: Path, dest: Path) -> bool:
    """Clone ``src`` to ``dest`` copy-on-write; False (and no dest) when unsupported."""
    fd_out = os.open(dest, _CREATE_EXCL, 0o600)
    try:
        with open(src, "rb", buffering=0) as fsrc:
            fcntl.ioctl(fd_out, _FICLONE, fsrc.fileno())
        return True
    except OSError:
        os.close(fd_out)
        fd_out = -1
        dest.unlink(missing_ok=True)
        return False
    finally:
        if fd_out >= 0:
            os.close(fd_out)
