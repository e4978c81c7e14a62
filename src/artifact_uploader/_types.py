"""Small typed records passed between the engine, providers and callers."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final

MiB: Final = 1024 * 1024
# Below this, reading (and hashing) on the event loop costs less than the hop to a worker
# thread. The one copy: providers take it through providers/_kit.py.
INLINE_LIMIT: Final = 256 * 1024


@dataclass(frozen=True, slots=True)
class FileSlice:
    """A byte range of a staged file: what one request sends.

    Attributes:
        path: The staged file.
        offset: First byte of the range.
        length: Number of bytes.
    """

    path: Path
    offset: int
    length: int

    def read_sync(self) -> bytes:
        """Read the range (blocking)."""
        with open(self.path, "rb", buffering=0) as f:
            if self.offset:
                f.seek(self.offset)
            data = f.read(self.length)
        if len(data) != self.length:
            raise OSError(
                f"{self.path}: expected {self.length} bytes at {self.offset}, got {len(data)}"
            )
        return data

    async def read(self) -> bytes:
        """Read the range without blocking the event loop for large ranges."""
        if self.length <= INLINE_LIMIT:
            return self.read_sync()
        import anyio.to_thread

        return await anyio.to_thread.run_sync(self.read_sync)

    @classmethod
    def whole(cls, path: str | os.PathLike[str]) -> FileSlice:
        """The whole of ``path``."""
        p = Path(path)
        return cls(p, 0, p.stat().st_size)


@dataclass(frozen=True, slots=True)
class PutResult:
    """What a provider reports after writing an object.

    Attributes:
        etag: The backend's entity tag, if any.
        version: The backend's version or generation, if any.
        checksum_algorithm: Name of the checksum the store verified (e.g. "crc32c"), if any.
        checksum: The checksum value as the store reports it, if any.
    """

    etag: str | None = None
    version: str | None = None
    checksum_algorithm: str | None = None
    checksum: str | None = None


@dataclass(frozen=True, slots=True)
class PartResult:
    """One uploaded part of a multipart (or block) upload.

    Attributes:
        part_number: 1-based part index.
        etag: The part's entity tag or block id.
        checksum: The part's checksum as the store reports it, if any.
    """

    part_number: int
    etag: str
    checksum: str | None = None


@dataclass(frozen=True, slots=True)
class UploadResult:
    """A durable object.

    Attributes:
        uri: Full URI of the object (``s3://bucket/key``, ``file:///root/name``...).
        name: Object name relative to the store's root/prefix.
        size: Bytes uploaded.
        checksum_algorithm: Checksum verified by the store, if any.
        checksum: Its value, if any.
        etag: Backend entity tag, if any.
        version: Backend version or generation, if any.
    """

    uri: str
    name: str
    size: int
    checksum_algorithm: str | None = None
    checksum: str | None = None
    etag: str | None = None
    version: str | None = None


@dataclass(frozen=True, slots=True)
class DownloadResult:
    """A downloaded object, verified and in place at ``path``.

    Attributes:
        uri: Full URI of the object read.
        name: The object actually read (after ``.symlink`` resolution), relative to the
            store's root/prefix.
        path: The local file written.
        size: Bytes written.
        checksum_algorithm: The checksum the download was verified against ("crc32c" or
            "md5"), or None when the store recorded none the client can check.
        checksum: Its value as the store reported it (base64; composite ones end in "-N").
    """

    uri: str
    name: str
    path: str
    size: int
    checksum_algorithm: str | None = None
    checksum: str | None = None
