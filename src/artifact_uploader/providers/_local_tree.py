"""The local store's file tree, walked without ever following a symbolic link.

Every path below the root is reached one component at a time with ``openat(...,
O_NOFOLLOW)`` on directory descriptors (see :mod:`artifact_uploader.providers.local`). Objects
are written to a temporary file in :data:`TMP_DIR` inside the root, then renamed (or linked,
for ``overwrite=False``) into place; each write records its checksum in an extended attribute.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from .._checksums import crc32c, crc32c_available, crc32c_b64, decode_b64, md5_b64
from .._errors import ObjectExistsError, ObjectNotFoundError, PermissionDeniedError, ProviderError
from .._types import FileSlice, PutResult
from ._kit import MiB, md5
from ._protocol import Checksum, ObjectInfo

# Temporary files live inside the root so the final rename never crosses a filesystem.
TMP_DIR: Final = ".artifact-uploader-tmp"
_XATTR: Final = "user.artifact_uploader.checksum"
# A recorded checksum is a small JSON object; anything longer is not ours.
_XATTR_MAX: Final = 512
_DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class SymlinkRefused(ProviderError):
    """A path component inside the root is a symbolic link."""


class Tree:
    """The files under one root, reached without following links.

    Attributes:
        root: The store's root directory (it may itself be a link: the user named it).
    """

    __slots__ = ("root",)

    def __init__(self, root: Path) -> None:
        self.root = root

    def __repr__(self) -> str:
        return f"Tree({str(self.root)!r})"

    def uri(self, name: str) -> str:
        """``file://`` URI of object ``name``."""
        return (self.root / name).as_uri()

    @contextlib.contextmanager
    def dir(self, segments: list[str], *, create: bool, name: str) -> Iterator[int]:
        """A descriptor of ``root/segments...``, reached without following any symbolic link.

        Raises:
            SymlinkRefused: A component is a symbolic link (nothing was created through it).
            FileNotFoundError: A component is missing and ``create`` is False.
            OSError: Any other failure (a component is a file: ENOTDIR).
        """
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for depth, seg in enumerate(segments, 1):
                try:
                    nfd = os.open(seg, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    with contextlib.suppress(FileExistsError):  # a concurrent put made it
                        os.mkdir(seg, 0o777, dir_fd=fd)
                    nfd = os.open(seg, _DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR) and _is_link(fd, seg):
                        raise self.link_error(name, segments[:depth]) from None
                    raise
                os.close(fd)
                fd = nfd
            yield fd
        finally:
            os.close(fd)

    def link_error(self, name: str, segments: list[str]) -> SymlinkRefused:
        """The refusal of a path through a link (``segments`` lead to the link)."""
        where = "/".join(segments)
        return SymlinkRefused(
            f"refusing {self.uri(name)!r}: {where!r} inside the local store "
            f"{str(self.root)!r} is a symbolic link, and the local store never follows links "
            "below its root",
            name=name,
            uri=self.uri(name),
        )

    @contextlib.contextmanager
    def open_object(self, name: str) -> Iterator[int]:
        """A read descriptor of object ``name`` (a regular file reached without links)."""
        *parents, leaf = name.split("/")
        try:
            with self.dir(parents, create=False, name=name) as dfd:
                try:
                    fd = os.open(leaf, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
                except OSError as exc:
                    if exc.errno == errno.ELOOP:
                        raise self.link_error(name, [*parents, leaf]) from None
                    raise
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise self.not_found(name) from None
        except ProviderError:
            raise
        except OSError as exc:
            raise self.map(exc, name, "read") from exc
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise self.not_found(name)
            yield fd
        finally:
            os.close(fd)

    def not_found(self, name: str) -> ObjectNotFoundError:
        """No object ``name``."""
        uri = self.uri(name)
        return ObjectNotFoundError(f"object {uri!r} does not exist", name=name, uri=uri)

    def map(self, exc: OSError, name: str, verb: str = "write") -> ProviderError:
        """A failure to ``verb`` object ``name`` as the library's error (disk full, I/O errors
        transient)."""
        uri = self.uri(name)
        if isinstance(exc, PermissionError) or exc.errno == errno.EROFS:
            why = "read-only filesystem" if exc.errno == errno.EROFS else "permission denied"
            return PermissionDeniedError(f"{why} when trying to {verb} {uri!r}", name=name, uri=uri)
        if exc.errno in (errno.ENOTDIR, errno.EISDIR, errno.EEXIST):
            return ProviderError(
                f"cannot {verb} {uri!r}: a path segment is a file or a directory is in the way",
                name=name,
                uri=uri,
            )
        # Disk full and I/O errors may clear up; the engine's bounded retries decide.
        return ProviderError(
            f"cannot {verb} {uri!r}: {exc.strerror or exc}",
            name=name,
            uri=uri,
            transient=exc.errno in (errno.ENOSPC, errno.EIO, errno.EAGAIN),
        )

    def put(self, name: str, data: FileSlice, *, overwrite: bool, fsync: bool) -> PutResult:
        """Write ``data`` as object ``name`` (blocking: run it in a worker thread)."""
        *parents, leaf = name.split("/")
        try:
            with (
                self.dir([TMP_DIR], create=True, name=name) as tmp_dir,
                self.dir(parents, create=True, name=name) as dest_dir,
            ):
                return self._write(name, leaf, data, overwrite, fsync, tmp_dir, dest_dir)
        except ProviderError:
            raise
        except OSError as exc:
            raise self.map(exc, name) from exc

    def _write(
        self,
        name: str,
        leaf: str,
        data: FileSlice,
        overwrite: bool,
        fsync: bool,
        tmp_dir: int,
        dest_dir: int,
    ) -> PutResult:
        tmp = f"put-{uuid.uuid4().hex}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(tmp, flags, 0o600, dir_fd=tmp_dir)
        try:
            use_crc = crc32c_available()
            crc = 0
            digest = md5()
            with os.fdopen(fd, "wb", closefd=False) as out, open(data.path, "rb") as src:
                src.seek(data.offset)
                left = data.length
                while left:
                    chunk = src.read(min(MiB, left))
                    if not chunk:
                        raise ProviderError(
                            f"{data.path} shrank while uploading {name!r}", name=name
                        )
                    if use_crc:
                        crc = crc32c(chunk, crc)
                    else:
                        digest.update(chunk)
                    out.write(chunk)
                    left -= len(chunk)
                out.flush()
            if fsync:
                os.fsync(fd)
            os.fchmod(fd, 0o644)
            algorithm, value = ("crc32c", crc32c_b64(crc)) if use_crc else ("md5", "")
            if not use_crc:
                value = md5_b64(digest.digest())
            st = os.fstat(fd)
            record = {"algorithm": algorithm, "value": value, "size": st.st_size}
            record["mtime_ns"] = st.st_mtime_ns
            with contextlib.suppress(OSError):  # no user xattrs here: head reports none
                os.setxattr(fd, _XATTR, json.dumps(record).encode())
            if overwrite:
                os.replace(tmp, leaf, src_dir_fd=tmp_dir, dst_dir_fd=dest_dir)
            else:
                try:
                    os.link(
                        tmp, leaf, src_dir_fd=tmp_dir, dst_dir_fd=dest_dir, follow_symlinks=False
                    )
                except FileExistsError:
                    raise ObjectExistsError(
                        f"object {self.uri(name)!r} already exists", name=name, uri=self.uri(name)
                    ) from None
        finally:
            os.close(fd)
            # After os.replace the temp name is gone; after os.link (or a failure) it remains.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=tmp_dir)
        return PutResult(checksum_algorithm=algorithm, checksum=value)

    def scan(self, dfd: int, base: str, prefix: str, found: list[ObjectInfo]) -> None:
        with os.scandir(dfd) as entries:
            for entry in entries:
                rel = f"{base}/{entry.name}" if base else entry.name
                if not base and entry.name == TMP_DIR:
                    continue
                if entry.is_dir(follow_symlinks=False):
                    if not (rel + "/").startswith(prefix) and not prefix.startswith(rel + "/"):
                        continue
                    try:
                        sub = os.open(entry.name, _DIR_FLAGS, dir_fd=dfd)
                    except OSError:
                        continue  # replaced by a link or removed meanwhile
                    try:
                        self.scan(sub, rel, prefix, found)
                    finally:
                        os.close(sub)
                elif entry.is_file(follow_symlinks=False) and rel.startswith(prefix):
                    try:
                        fd = os.open(entry.name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dfd)
                    except OSError:
                        continue
                    try:
                        found.append(file_info(rel, fd))
                    finally:
                        os.close(fd)


def file_etag(st: os.stat_result) -> str:
    """The entity tag of a file: inode, mtime and size."""
    # A replaced object is a new inode; one rewritten in place has a new mtime.
    return f'"{st.st_ino:x}-{st.st_mtime_ns:x}-{st.st_size:x}"'


def file_info(name: str, fd: int) -> ObjectInfo:
    """What the store records about the object open as ``fd``."""
    st = os.fstat(fd)
    return ObjectInfo(
        name=name,
        size=st.st_size,
        etag=file_etag(st),
        last_modified=datetime.fromtimestamp(st.st_mtime, UTC),
        checksums=_recorded_checksum(fd, st),
    )


def _recorded_checksum(fd: int, st: os.stat_result) -> tuple[Checksum, ...]:
    """The checksum the put recorded, if it still describes the file (untrusted input)."""
    try:
        raw = os.getxattr(fd, _XATTR)
    except OSError:
        return ()
    if len(raw) > _XATTR_MAX:
        return ()
    try:
        record = json.loads(raw)
    except ValueError:
        return ()
    if not isinstance(record, dict):
        return ()
    algorithm, value = record.get("algorithm"), record.get("value")
    size, mtime = record.get("size"), record.get("mtime_ns")
    if type(size) is not int or type(mtime) is not int or not isinstance(value, str):
        return ()
    if size != st.st_size or mtime != st.st_mtime_ns:
        return ()  # changed by something else since: the record no longer says anything
    if algorithm == "crc32c" and decode_b64(value, 4) is not None:
        return (Checksum("crc32c", value),)
    if algorithm == "md5" and decode_b64(value, 16) is not None:
        return (Checksum("md5", value),)
    return ()


def _is_link(dir_fd: int, name: str) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def read_only(path: Path) -> bool:
    """Whether ``path`` is on a read-only filesystem."""
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False
