"""The file side of a download: the destination check, the temporary file, range writes,
verification against the store's checksum, and the atomic publish (worker threads)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from ._checksums import crc32c, crc32c_available, crc32c_b64, crc32c_combine, decode_b64
from ._errors import ConfigError, UploadError
from .providers._protocol import Checksum


class DestinationExistsError(UploadError, FileExistsError):
    """``download(..., overwrite=False)`` and the destination file exists (nothing was read)."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True, slots=True)
class Plan:
    """How one object is verified: the checksum, and the range size its digest needs."""

    checksum: Checksum | None
    range_size: int
    # A composite checksum whose parts are too large to hold as ranges: the per-part digests
    # are computed by reading the written file back.
    read_back: bool = False


def checksum_usable(checksum: Checksum, size: int) -> bool:
    """Whether a recorded checksum is well-formed and one this client can compute."""
    if checksum.algorithm == "crc32c" and not crc32c_available():
        return False
    if checksum.algorithm not in ("crc32c", "md5"):
        return False
    width = 4 if checksum.algorithm == "crc32c" else 16
    if checksum.part_size is None:
        return decode_b64(checksum.value, width) is not None
    # Composite: base64 of the digest of the per-part digests ("-N" appended or not), with a
    # part layout that matches the object.
    value, parts = split_count(checksum.value)
    if decode_b64(value, width) is None:
        return False
    part_size, count = checksum.part_size, checksum.parts
    if part_size <= 0 or count is None or (parts is not None and parts != count):
        return False
    return -(-size // part_size) == count if size else count <= 1


def split_count(value: str) -> tuple[str, int | None]:
    """``"<base64>-N"`` -> (base64, N); a value without the suffix -> (value, None)."""
    head, sep, tail = value.rpartition("-")
    if sep and head and tail.isdigit() and len(tail) <= 6:
        return head, int(tail)
    return value, None


def check_dest(dest: str | os.PathLike[str], overwrite: bool) -> Path:
    """The absolute destination, refused early when it cannot be written as asked."""
    try:
        path = Path(os.fspath(dest)).expanduser().absolute()
    except TypeError:
        raise ConfigError(f"dest must be a path, got {dest!r}") from None
    if not path.name:
        raise ConfigError(f"dest {str(dest)!r} names a folder, not a file")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise ConfigError(f"cannot use {str(path)!r} as a destination: {exc.strerror}") from None
    if st is not None:
        if stat.S_ISDIR(st.st_mode):
            raise ConfigError(f"dest {str(path)!r} is a directory; name the file to write")
        if not overwrite:
            raise DestinationExistsError(f"{str(path)!r} exists; pass overwrite=True to replace it")
    if not path.parent.is_dir():
        raise ConfigError(f"the folder of dest {str(path)!r} does not exist")
    return path


def create_temp(tmp: Path) -> int:
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        return os.open(tmp, flags, 0o600)
    except OSError as exc:
        raise UploadError(
            f"cannot create {str(tmp)!r} for the download: {exc.strerror or exc}"
        ) from exc


def write_range(fd: int, data: bytes, offset: int, algorithm: str | None) -> bytes:
    """Write one range at its offset; return its raw digest (b"" when not verifying)."""
    view = memoryview(data)
    written = 0
    while written < len(view):
        written += os.pwrite(fd, view[written:], offset + written)
    if algorithm == "crc32c":
        return crc32c(data).to_bytes(4, "big")
    if algorithm == "md5":
        return hashlib.md5(data, usedforsecurity=False).digest()
    return b""


def finish(
    fd: int, tmp: Path, plan: Plan, size: int, step: int, digests: list[bytes]
) -> str | None:
    """The base64 checksum of what was written (composite: without "-N"; None: unchecked)."""
    checksum = plan.checksum
    if checksum is None:
        return None
    if checksum.part_size is not None:
        if plan.read_back:
            digests = _read_back_parts(tmp, checksum.algorithm, checksum.part_size)
        if checksum.algorithm == "crc32c":
            whole = crc32c_b64(crc32c(b"".join(digests)))
        else:
            whole = _b64(hashlib.md5(b"".join(digests), usedforsecurity=False).digest())
        return whole
    if checksum.algorithm == "crc32c":
        crc = 0
        for i, raw in enumerate(digests):
            crc = crc32c_combine(crc, int.from_bytes(raw, "big"), min(step, size - i * step))
        return crc32c_b64(crc)
    if len(digests) == 1:
        return _b64(digests[0])
    if not digests:
        return _b64(hashlib.md5(b"", usedforsecurity=False).digest())
    # MD5 does not combine: read the file back once (from the page cache).
    md5 = hashlib.md5(usedforsecurity=False)
    with open(tmp, "rb", buffering=0) as f:
        while chunk := f.read(8 * 1024 * 1024):
            md5.update(chunk)
    return _b64(md5.digest())


def _read_back_parts(tmp: Path, algorithm: str, part_size: int) -> list[bytes]:
    """Per-part raw digests of the written file, streamed in 8 MiB reads."""
    out: list[bytes] = []
    with open(tmp, "rb", buffering=0) as f:
        while True:
            left, crc, md5, got = part_size, 0, hashlib.md5(usedforsecurity=False), 0
            while left and (chunk := f.read(min(left, 8 * 1024 * 1024))):
                if algorithm == "crc32c":
                    crc = crc32c(chunk, crc)
                else:
                    md5.update(chunk)
                left -= len(chunk)
                got += len(chunk)
            if not got:
                return out
            out.append(crc.to_bytes(4, "big") if algorithm == "crc32c" else md5.digest())


def _b64(raw: bytes) -> str:
    import base64

    return base64.b64encode(raw).decode()


def _default_mode() -> int:
    """0666 less the umask, read without changing it (os.umask would race other threads)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o644


def publish(fd: int, tmp: Path, dest: Path, overwrite: bool) -> None:
    """fsync, final mode, then into place: replace, or link (never clobbering) then unlink."""
    mode = _default_mode()
    if overwrite:
        with contextlib.suppress(OSError):
            st = os.stat(dest)
            if stat.S_ISREG(st.st_mode):
                mode = stat.S_IMODE(st.st_mode)  # replacing a file keeps its mode
    os.fchmod(fd, mode)
    os.fsync(fd)
    if overwrite:
        os.replace(tmp, dest)
    else:
        try:
            os.link(tmp, dest, follow_symlinks=False)
        except FileExistsError:
            raise DestinationExistsError(
                f"{str(dest)!r} appeared during the download; pass overwrite=True to replace it"
            ) from None
        os.unlink(tmp)
    dfd = os.open(dest.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)  # the rename itself survives a crash
    except OSError:
        pass
    finally:
        os.close(dfd)
