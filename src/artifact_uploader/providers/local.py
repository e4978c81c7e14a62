"""The local filesystem store (``file:///abs/dir``): the embedded default.

Objects are written to a temporary file inside the root, fsync'd, then renamed into place, so a
reader never sees a partial object. ``overwrite=False`` publishes with ``os.link``, which fails
atomically when the name exists.

Symbolic links inside the root are never followed, for writes or reads: every path below the
root is walked one component at a time with ``openat(..., O_NOFOLLOW)`` on directory file
descriptors, and the object itself is created, renamed or opened relative to its parent
directory's descriptor. A link planted at ``root/link`` therefore cannot make ``link/x`` land
(or be read) outside the root, and swapping a directory for a link mid-write cannot either:
the walk holds descriptors, not path names. The root itself may be a link (the user named it).

Checksums: each ``put`` computes CRC32C (native implementation installed) or else MD5 while it
copies, and stores it in the extended attribute ``user.artifact_uploader.checksum`` together
with the file's size and modification time. ``head`` reports it only while size and mtime still
match, so a download of an object written by this library is verified end to end at no extra
read. Files placed in the root by other tools, or on a filesystem without user extended
attributes, have no recorded checksum: ``head`` reports none and downloads are not verified.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import hashlib
import json
import os
import stat
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import unquote, urlsplit

import anyio.to_thread

from .._checksums import crc32c, crc32c_available, crc32c_b64, decode_b64, md5_b64
from .._errors import (
    ConfigError,
    InvalidObjectNameError,
    ObjectExistsError,
    ObjectNotFoundError,
    PermissionDeniedError,
    ProviderError,
    StoreNotFoundError,
)
from .._types import FileSlice, PutResult
from ._protocol import Checksum, ObjectInfo, check_common_name

_CHUNK = 1024 * 1024
# Temporary files live inside the root so the final rename never crosses a filesystem.
_TMP_DIR = ".artifact-uploader-tmp"
_XATTR = "user.artifact_uploader.checksum"
# A recorded checksum is a small JSON object; anything longer is not ours.
_XATTR_MAX = 512
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class _SymlinkRefused(ProviderError):
    """Internal marker: a path component inside the root is a symbolic link."""


class LocalProvider:
    """Stores objects as files under ``root``.

    Args:
        root: Directory that holds the objects; created on open if missing.
        fsync: Flush each object to disk before publishing it. Default True.
    """

    scheme = "file"

    def __init__(self, root: str | os.PathLike[str], *, fsync: bool = True) -> None:
        path = Path(root).expanduser()
        if not path.is_absolute():
            path = path.absolute()
        self.root = path
        self.fsync = fsync

    def __repr__(self) -> str:
        return f"LocalProvider({str(self.root)!r})"

    @classmethod
    def from_uri(cls, uri: str, options: dict[str, object] | None = None) -> LocalProvider:
        """Build from ``file:///abs/dir`` (or a plain absolute path)."""
        parts = urlsplit(uri)
        if parts.scheme not in ("file", ""):
            raise ConfigError(f"not a file URI: {uri!r}")
        if parts.netloc not in ("", "localhost"):
            raise ConfigError(f"file URI {uri!r} names host {parts.netloc!r}; use file:///abs/path")
        path = unquote(parts.path)
        if not path:
            raise ConfigError(f"file URI {uri!r} has no path")
        opts = dict(options or {})
        fsync = bool(opts.pop("fsync", True))
        if opts:
            raise ConfigError(f"unknown option(s) for the file store: {sorted(opts)}")
        return cls(path, fsync=fsync)

    def uri(self, name: str) -> str:
        return (self.root / name).as_uri()

    def check_name(self, name: str) -> None:
        check_common_name(name)
        if name.startswith("/"):
            raise InvalidObjectNameError(name, "absolute names are refused on the local store")
        segments = name.split("/")
        if any(s in ("..", ".") for s in segments):
            raise InvalidObjectNameError(
                name, "'.' and '..' segments would escape the store's root"
            )
        if any(s == "" for s in segments):
            raise InvalidObjectNameError(name, "empty path segment ('//' or trailing '/')")
        if segments[0] == _TMP_DIR:
            raise InvalidObjectNameError(name, f"{_TMP_DIR!r} is reserved")
        for s in segments:
            if len(s.encode()) > 255:
                raise InvalidObjectNameError(name, "a path segment is longer than 255 bytes")

    async def open(self, *, verify: bool = True) -> None:
        await anyio.to_thread.run_sync(self._open_sync)

    def _open_sync(self) -> None:
        root = str(self.root)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with self._dir([_TMP_DIR], create=True, name=_TMP_DIR):
                pass
        except ProviderError:
            raise
        except PermissionError as exc:
            raise PermissionDeniedError(
                f"cannot create the local store {root!r}: {exc.strerror}"
            ) from exc
        except (FileExistsError, NotADirectoryError) as exc:
            raise StoreNotFoundError(f"local store root {root!r} is not a directory") from exc
        except OSError as exc:
            if exc.errno == errno.EROFS:
                raise PermissionDeniedError(
                    f"local store root {root!r} is on a read-only filesystem"
                ) from exc
            raise StoreNotFoundError(
                f"cannot open the local store {root!r}: {exc.strerror or exc}"
            ) from exc
        if not os.access(self.root, os.W_OK):
            why = "is on a read-only filesystem" if _read_only(self.root) else "is not writable"
            raise PermissionDeniedError(f"local store root {root!r} {why}")

    async def aclose(self) -> None:
        return None

    # -- walking without following links ----------------------------------------------------

    @contextlib.contextmanager
    def _dir(self, segments: list[str], *, create: bool, name: str) -> Iterator[int]:
        """A descriptor of ``root/segments...``, reached without following any symbolic link.

        Raises:
            _SymlinkRefused: A component is a symbolic link (nothing was created through it).
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
                        raise self._link_error(name, segments[:depth]) from None
                    raise
                os.close(fd)
                fd = nfd
            yield fd
        finally:
            os.close(fd)

    def _link_error(self, name: str, segments: list[str]) -> _SymlinkRefused:
        where = "/".join(segments)
        return _SymlinkRefused(
            f"refusing {self.uri(name)!r}: {where!r} inside the local store "
            f"{str(self.root)!r} is a symbolic link, and the local store never follows links "
            "below its root",
            name=name,
            uri=self.uri(name),
        )

    @contextlib.contextmanager
    def _open_object(self, name: str) -> Iterator[int]:
        """A read descriptor of object ``name`` (a regular file reached without links)."""
        *parents, leaf = name.split("/")
        try:
            with self._dir(parents, create=False, name=name) as dfd:
                try:
                    fd = os.open(leaf, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
                except OSError as exc:
                    if exc.errno == errno.ELOOP:
                        raise self._link_error(name, [*parents, leaf]) from None
                    raise
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise self._not_found(name) from None
        except ProviderError:
            raise
        except OSError as exc:
            raise self._map(exc, name, "read") from exc
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise self._not_found(name)
            yield fd
        finally:
            os.close(fd)

    def _not_found(self, name: str) -> ObjectNotFoundError:
        uri = self.uri(name)
        return ObjectNotFoundError(f"object {uri!r} does not exist", name=name, uri=uri)

    # -- writing ----------------------------------------------------------------------------

    async def put(self, name: str, data: FileSlice, *, overwrite: bool) -> PutResult:
        return await anyio.to_thread.run_sync(self._put_sync, name, data, overwrite)

    def _put_sync(self, name: str, data: FileSlice, overwrite: bool) -> PutResult:
        *parents, leaf = name.split("/")
        try:
            with (
                self._dir([_TMP_DIR], create=True, name=name) as tmp_dir,
                self._dir(parents, create=True, name=name) as dest_dir,
            ):
                return self._write(name, leaf, data, overwrite, tmp_dir, dest_dir)
        except ProviderError:
            raise
        except OSError as exc:
            raise self._map(exc, name) from exc

    def _write(
        self, name: str, leaf: str, data: FileSlice, overwrite: bool, tmp_dir: int, dest_dir: int
    ) -> PutResult:
        tmp = f"put-{uuid.uuid4().hex}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(tmp, flags, 0o600, dir_fd=tmp_dir)
        try:
            use_crc = crc32c_available()
            crc = 0
            md5 = hashlib.md5(usedforsecurity=False)
            with os.fdopen(fd, "wb", closefd=False) as out, open(data.path, "rb") as src:
                src.seek(data.offset)
                left = data.length
                while left:
                    chunk = src.read(min(_CHUNK, left))
                    if not chunk:
                        raise ProviderError(
                            f"{data.path} shrank while uploading {name!r}", name=name
                        )
                    if use_crc:
                        crc = crc32c(chunk, crc)
                    else:
                        md5.update(chunk)
                    out.write(chunk)
                    left -= len(chunk)
                out.flush()
            if self.fsync:
                os.fsync(fd)
            os.fchmod(fd, 0o644)
            algorithm, value = ("crc32c", crc32c_b64(crc)) if use_crc else ("md5", "")
            if not use_crc:
                value = md5_b64(md5.digest())
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

    # -- reading ----------------------------------------------------------------------------

    async def head(self, name: str) -> ObjectInfo:
        """What the store records about ``name`` (size, an entity tag, the put's checksum)."""
        self.check_name(name)
        return await anyio.to_thread.run_sync(self._head_sync, name)

    def _head_sync(self, name: str) -> ObjectInfo:
        with self._open_object(name) as fd:
            return _info(name, fd)

    async def get_range(
        self, name: str, offset: int, length: int, *, etag: str | None = None
    ) -> bytes:
        """Bytes ``offset .. offset + length - 1`` of ``name``; conditional on ``etag``."""
        self.check_name(name)
        return await anyio.to_thread.run_sync(self._get_sync, name, offset, length, etag)

    def _get_sync(self, name: str, offset: int, length: int, etag: str | None) -> bytes:
        with self._open_object(name) as fd:
            st = os.fstat(fd)
            if etag is not None and _etag(st) != etag:
                raise ProviderError(
                    f"object {self.uri(name)!r} changed during the download (entity tag "
                    f"{_etag(st)} is not {etag})",
                    name=name,
                    uri=self.uri(name),
                    status=412,
                )
            try:
                data = os.pread(fd, length, offset)
            except OSError as exc:
                raise self._map(exc, name, "read") from exc
        if len(data) != length:
            raise ProviderError(
                f"short read of {self.uri(name)!r}: {len(data)} of {length} bytes at {offset}",
                name=name,
                uri=self.uri(name),
                transient=True,
            )
        return data

    async def list(self, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        """Every object whose name starts with ``prefix``, in name order (links skipped)."""
        infos = await anyio.to_thread.run_sync(self._list_sync, prefix)
        for info in infos:
            yield info

    def _list_sync(self, prefix: str) -> builtins.list[ObjectInfo]:
        # Start at the deepest directory the prefix names; the rest filters by name.
        start = [s for s in prefix.split("/")[:-1] if s]
        if any(s in (".", "..") for s in start):
            return []
        found: builtins.list[ObjectInfo] = []
        try:
            with self._dir(start, create=False, name=prefix or ".") as fd:
                self._scan(fd, "/".join(start), prefix, found)
        except (FileNotFoundError, NotADirectoryError, _SymlinkRefused):
            return []
        except OSError as exc:
            raise self._map(exc, prefix or ".", "list") from exc
        found.sort(key=lambda i: i.name.encode("utf-8", "surrogateescape"))
        return found

    def _scan(self, dfd: int, base: str, prefix: str, found: builtins.list[ObjectInfo]) -> None:
        with os.scandir(dfd) as entries:
            for entry in entries:
                rel = f"{base}/{entry.name}" if base else entry.name
                if not base and entry.name == _TMP_DIR:
                    continue
                if entry.is_dir(follow_symlinks=False):
                    if not (rel + "/").startswith(prefix) and not prefix.startswith(rel + "/"):
                        continue
                    try:
                        sub = os.open(entry.name, _DIR_FLAGS, dir_fd=dfd)
                    except OSError:
                        continue  # replaced by a link or removed meanwhile
                    try:
                        self._scan(sub, rel, prefix, found)
                    finally:
                        os.close(sub)
                elif entry.is_file(follow_symlinks=False) and rel.startswith(prefix):
                    try:
                        fd = os.open(entry.name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dfd)
                    except OSError:
                        continue
                    try:
                        found.append(_info(rel, fd))
                    finally:
                        os.close(fd)

    async def delete(self, name: str) -> None:
        """Delete ``name`` (a missing object is not an error; links are never followed)."""
        self.check_name(name)
        await anyio.to_thread.run_sync(self._delete_sync, name)

    def _delete_sync(self, name: str) -> None:
        *parents, leaf = name.split("/")
        try:
            with self._dir(parents, create=False, name=name) as dfd:
                st = os.stat(leaf, dir_fd=dfd, follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    return  # a folder of other objects, not an object
                os.unlink(leaf, dir_fd=dfd)
        except (FileNotFoundError, NotADirectoryError):
            return
        except ProviderError:
            raise
        except OSError as exc:
            raise self._map(exc, name, "delete") from exc

    def _map(self, exc: OSError, name: str, verb: str = "write") -> ProviderError:
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


def _etag(st: os.stat_result) -> str:
    # A replaced object is a new inode; one rewritten in place has a new mtime.
    return f'"{st.st_ino:x}-{st.st_mtime_ns:x}-{st.st_size:x}"'


def _info(name: str, fd: int) -> ObjectInfo:
    st = os.fstat(fd)
    return ObjectInfo(
        name=name,
        size=st.st_size,
        etag=_etag(st),
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


def _read_only(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False
