"""The local filesystem store (``file:///abs/dir``): the embedded default.

Objects are written to a temporary file inside the root, fsync'd, then renamed into place, so a
reader never sees a partial object. ``overwrite=False`` publishes with ``os.link``, which fails
atomically when the name exists.
"""

from __future__ import annotations

import errno
import os
import tempfile
import zlib
from pathlib import Path
from urllib.parse import unquote, urlsplit

import anyio.to_thread

from .._errors import (
    ConfigError,
    InvalidObjectNameError,
    ObjectExistsError,
    PermissionDeniedError,
    ProviderError,
    StoreNotFoundError,
)
from .._types import FileSlice, PutResult
from ._protocol import check_common_name

_CHUNK = 1024 * 1024
# Temporary files live inside the root so the final rename never crosses a filesystem.
_TMP_DIR = ".artifact-uploader-tmp"


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
        try:
            (self.root / _TMP_DIR).mkdir(parents=True, exist_ok=True)
        except PermissionError as exc:
            raise PermissionDeniedError(
                f"cannot create the local store {str(self.root)!r}: {exc.strerror}"
            ) from exc
        except (FileExistsError, NotADirectoryError) as exc:
            raise StoreNotFoundError(
                f"local store root {str(self.root)!r} is not a directory"
            ) from exc
        if not os.access(self.root, os.W_OK):
            raise PermissionDeniedError(f"local store root {str(self.root)!r} is not writable")

    async def aclose(self) -> None:
        return None

    async def put(self, name: str, data: FileSlice, *, overwrite: bool) -> PutResult:
        return await anyio.to_thread.run_sync(self._put_sync, name, data, overwrite)

    def _put_sync(self, name: str, data: FileSlice, overwrite: bool) -> PutResult:
        dest = self.root / name
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.root / _TMP_DIR, prefix="put-")
        except OSError as exc:
            raise self._map(exc, name) from exc
        try:
            crc = 0
            with os.fdopen(fd, "wb") as out, open(data.path, "rb") as src:
                src.seek(data.offset)
                left = data.length
                while left:
                    chunk = src.read(min(_CHUNK, left))
                    if not chunk:
                        raise ProviderError(
                            f"{data.path} shrank while uploading {name!r}", name=name
                        )
                    crc = zlib.crc32(chunk, crc)
                    out.write(chunk)
                    left -= len(chunk)
                if self.fsync:
                    out.flush()
                    os.fsync(out.fileno())
            os.chmod(tmp, 0o644)
            if overwrite:
                os.replace(tmp, dest)
            else:
                try:
                    os.link(tmp, dest)
                except FileExistsError:
                    raise ObjectExistsError(
                        f"object {self.uri(name)!r} already exists", name=name, uri=self.uri(name)
                    ) from None
        except OSError as exc:
            if isinstance(exc, ProviderError):
                raise
            raise self._map(exc, name) from exc
        finally:
            # After os.replace the temp name is gone; after os.link (or a failure) it remains.
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
        return PutResult(checksum_algorithm="crc32", checksum=f"{crc:08x}")

    def _map(self, exc: OSError, name: str) -> ProviderError:
        uri = self.uri(name)
        if isinstance(exc, PermissionError):
            return PermissionDeniedError(f"permission denied writing {uri!r}", name=name, uri=uri)
        if exc.errno in (errno.ENOTDIR, errno.EISDIR, errno.EEXIST):
            return ProviderError(
                f"cannot write {uri!r}: a path segment is a file or a directory is in the way",
                name=name,
                uri=uri,
            )
        # Disk full and I/O errors may clear up; the engine's bounded retries decide.
        return ProviderError(
            f"cannot write {uri!r}: {exc.strerror or exc}",
            name=name,
            uri=uri,
            transient=exc.errno in (errno.ENOSPC, errno.EIO, errno.EAGAIN),
        )
