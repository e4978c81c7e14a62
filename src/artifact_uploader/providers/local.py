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
import errno
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

import anyio.to_thread

from .._errors import (
    ConfigError,
    InvalidObjectNameError,
    PermissionDeniedError,
    ProviderError,
    StoreNotFoundError,
)
from .._types import FileSlice, PutResult
from ._kit import check_common_name
from ._local_tree import TMP_DIR, SymlinkRefused, Tree, file_etag, file_info, read_only
from ._protocol import ObjectInfo


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
        self._tree = Tree(path)

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
        """``file://`` URI of object ``name``."""
        return self._tree.uri(name)

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
        if segments[0] == TMP_DIR:
            raise InvalidObjectNameError(name, f"{TMP_DIR!r} is reserved")
        for s in segments:
            if len(s.encode()) > 255:
                raise InvalidObjectNameError(name, "a path segment is longer than 255 bytes")

    async def open(self, *, verify: bool = True) -> None:
        await anyio.to_thread.run_sync(self._open_sync)

    def _open_sync(self) -> None:
        root = str(self.root)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with self._tree.dir([TMP_DIR], create=True, name=TMP_DIR):
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
            why = "is on a read-only filesystem" if read_only(self.root) else "is not writable"
            raise PermissionDeniedError(f"local store root {root!r} {why}")

    async def aclose(self) -> None:
        return None

    # -- writing ----------------------------------------------------------------------------

    async def put(self, name: str, data: FileSlice, *, overwrite: bool) -> PutResult:
        return await anyio.to_thread.run_sync(self._put_sync, name, data, overwrite)

    def _put_sync(self, name: str, data: FileSlice, overwrite: bool) -> PutResult:
        return self._tree.put(name, data, overwrite=overwrite, fsync=self.fsync)

    # -- reading ----------------------------------------------------------------------------

    async def head(self, name: str) -> ObjectInfo:
        """What the store records about ``name`` (size, an entity tag, the put's checksum)."""
        self.check_name(name)
        return await anyio.to_thread.run_sync(self._head_sync, name)

    def _head_sync(self, name: str) -> ObjectInfo:
        with self._tree.open_object(name) as fd:
            return file_info(name, fd)

    async def get_range(
        self, name: str, offset: int, length: int, *, etag: str | None = None
    ) -> bytes:
        """Bytes ``offset .. offset + length - 1`` of ``name``; conditional on ``etag``."""
        self.check_name(name)
        return await anyio.to_thread.run_sync(self._get_sync, name, offset, length, etag)

    def _get_sync(self, name: str, offset: int, length: int, etag: str | None) -> bytes:
        with self._tree.open_object(name) as fd:
            st = os.fstat(fd)
            if etag is not None and file_etag(st) != etag:
                raise ProviderError(
                    f"object {self.uri(name)!r} changed during the download (entity tag "
                    f"{file_etag(st)} is not {etag})",
                    name=name,
                    uri=self.uri(name),
                    status=412,
                )
            try:
                data = os.pread(fd, length, offset)
            except OSError as exc:
                raise self._tree.map(exc, name, "read") from exc
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
            with self._tree.dir(start, create=False, name=prefix or ".") as fd:
                self._tree.scan(fd, "/".join(start), prefix, found)
        except (FileNotFoundError, NotADirectoryError, SymlinkRefused):
            return []
        except OSError as exc:
            raise self._tree.map(exc, prefix or ".", "list") from exc
        found.sort(key=lambda i: i.name.encode("utf-8", "surrogateescape"))
        return found

    async def delete(self, name: str) -> None:
        """Delete ``name`` (a missing object is not an error; links are never followed)."""
        self.check_name(name)
        await anyio.to_thread.run_sync(self._delete_sync, name)

    def _delete_sync(self, name: str) -> None:
        *parents, leaf = name.split("/")
        try:
            with self._tree.dir(parents, create=False, name=name) as dfd:
                st = os.stat(leaf, dir_fd=dfd, follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    return  # a folder of other objects, not an object
                os.unlink(leaf, dir_fd=dfd)
        except (FileNotFoundError, NotADirectoryError):
            return
        except ProviderError:
            raise
        except OSError as exc:
            raise self._tree.map(exc, name, "delete") from exc
