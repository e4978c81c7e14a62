"""The engine's read side: ``download``, ``head``, ``exists`` and ``list``.

A mixin of :class:`~artifact_uploader.AsyncUploader` (and, blocking, of ``Uploader``), so that
reads share the engine's one semaphore, retry policy, stall watchdog and progress events.

A download:

1. refuses an existing ``dest`` (``overwrite=False``) or a missing destination folder before any
   request;
2. resolves ``.symlink`` objects (a chain of at most :data:`MAX_SYMLINKS`, loops refused);
3. ``head``s the object: its size, entity tag and recorded checksums;
4. fetches it as ranges of ``PartPolicy.part_size`` (objects of at least
   ``PartPolicy.threshold`` bytes; smaller ones in one GET; a composite checksum's own part
   size when the store recorded one, so every range is one of its parts), at most
   ``max_concurrency`` at once under the semaphore (a range is written before its slot is
   given back, so memory holds at most ``max_concurrency`` ranges across every transfer),
   every range retried on its own and conditional on the entity tag;
5. ``pwrite``s each range into a temporary file created ``O_EXCL`` with mode 0600 in ``dest``'s
   folder, computing its digest while the bytes are in hand;
6. verifies the whole against what the store recorded (CRC32C, MD5, or a composite of per-part
   digests), fsyncs, sets the final mode, and renames it into place (``os.link`` for
   ``overwrite=False``, so an existing file is never replaced).

Whatever fails or is cancelled, the temporary file is removed and ``dest`` is untouched.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from ._config import PartPolicy
from ._errors import (
    ConfigError,
    IntegrityError,
    ObjectNotFoundError,
    ProviderError,
)
from ._events import EventKind
from ._intake import Gate
from ._landing import DestinationExistsError as DestinationExistsError
from ._landing import (
    Plan,
    check_dest,
    checksum_usable,
    create_temp,
    finish,
    publish,
    split_count,
    write_range,
)
from ._report import Reporter
from ._transfer import RequestRunner, run_workers
from ._types import DownloadResult
from .providers._protocol import ObjectInfo, Provider, ReadableProvider

T = TypeVar("T")
log = logging.getLogger("artifact_uploader")

SYMLINK_SUFFIX = ".symlink"
#: Most ``.symlink`` objects one download follows.
MAX_SYMLINKS = 8
# Largest range held in memory: a composite checksum with larger parts is checked by reading
# the written file back instead of fetching each part as one range.
_MAX_RANGE = 128 * 1024 * 1024
# A symlink object holds one object name (at most 1024 bytes) plus whitespace.
_SYMLINK_MAX_BYTES = 4096


class SymlinkError(ProviderError):
    """A ``.symlink`` object could not be followed: a loop, a chain longer than
    :data:`MAX_SYMLINKS`, or a target that is not a valid object name."""


# Where a download may go.
Dest = str | os.PathLike[str]

_READ_METHODS = frozenset({"download", "head", "exists", "list"})


def check_read_timeout(timeout: float | None) -> None:
    """Refuse a read ``timeout`` that is not None or a positive number of seconds."""
    if timeout is not None and (isinstance(timeout, bool) or not timeout > 0):
        raise ConfigError(f"timeout must be a positive number of seconds, got {timeout!r}")


class _SyncReadSide:
    """The blocking twins of the read methods, for ``Uploader`` (thread and process modes).

    The facade runs each read: :meth:`_blocking_read` checks the uploader is usable, then the
    ``timeout`` (:func:`check_read_timeout`), then runs the read on its loop or child.
    """

    def _blocking_read(
        self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any], timeout: float | None
    ) -> Any:
        raise NotImplementedError

    def _read(self, method: str, *args: Any, timeout: float | None = None, **kw: Any) -> Any:
        return self._blocking_read(method, args, kw, timeout)

    def download(
        self,
        name: str,
        dest: str | os.PathLike[str],
        *,
        overwrite: bool = False,
        follow_symlinks: bool = True,
        timeout: float | None = None,
    ) -> DownloadResult:
        """Download object ``name`` to ``dest`` (blocking); see :meth:`AsyncUploader.download`.

        Args:
            name: Object name (``.symlink`` objects are followed).
            dest: Local file to write; its folder must exist.
            overwrite: Replace an existing ``dest``. Default False.
            follow_symlinks: Follow ``.symlink`` objects. Default True.
            timeout: Seconds before the download is abandoned (TimeoutError, nothing left at
                ``dest``). Default None.

        Raises:
            DestinationExistsError, ObjectNotFoundError, SymlinkError, IntegrityError,
            ProviderError: As for :meth:`AsyncUploader.download`.
        """
        # Absolute here: the upload process may not share this thread's idea of the cwd later.
        target = check_dest(dest, overwrite if isinstance(overwrite, bool) else True)
        result: DownloadResult = self._read(
            "download",
            name,
            str(target),
            overwrite=overwrite,
            follow_symlinks=follow_symlinks,
            timeout=timeout,
        )
        return result

    def head(self, name: str, *, timeout: float | None = None) -> ObjectInfo:
        """What the store records about ``name`` (blocking); see :meth:`AsyncUploader.head`."""
        info: ObjectInfo = self._read("head", name, timeout=timeout)
        return info

    def exists(self, name: str, *, timeout: float | None = None) -> bool:
        """True when object ``name`` exists (blocking)."""
        return bool(self._read("exists", name, timeout=timeout))

    def list(self, prefix: str = "", *, timeout: float | None = None) -> builtins.list[ObjectInfo]:
        """Objects whose name starts with ``prefix``, in name order (blocking)."""
        infos: builtins.list[ObjectInfo] = self._read("list", prefix, timeout=timeout)
        return infos


class _ReadSide:
    """``download`` / ``head`` / ``exists`` / ``list`` of ``AsyncUploader``: each runs on the
    engine's :class:`Reads` (see the module docstring)."""

    def _reads(self) -> Reads:
        """The open engine's read side (raises UploaderClosedError when not open)."""
        raise NotImplementedError

    async def head(self, name: str) -> ObjectInfo:
        """What the store records about object ``name`` (size, entity tag, checksums).

        Raises:
            ObjectNotFoundError: No such object.
            InvalidObjectNameError: The store cannot hold ``name``.
        """
        return await self._reads().head(name)

    async def exists(self, name: str) -> bool:
        """True when object ``name`` exists (``.symlink`` objects are not followed)."""
        return await self._reads().exists(name)

    async def list(self, prefix: str = "") -> builtins.list[ObjectInfo]:
        """Every object whose name starts with ``prefix``, in name order.

        ``list`` entries may carry no checksums (``head`` each one for them).
        """
        return await self._reads().list(prefix)

    async def download(
        self,
        name: str,
        dest: str | os.PathLike[str],
        *,
        overwrite: bool = False,
        follow_symlinks: bool = True,
    ) -> DownloadResult:
        """Download object ``name`` to the local file ``dest``, verified, atomically.

        Large objects are fetched as concurrent ranged GETs under the uploader's concurrency
        limit, each retried on transient errors; the file is checked against the checksum the
        store recorded, then renamed into place (see the "Downloads" page of the docs).

        Args:
            name: Object name, relative to the store's prefix. When it does not exist and
                ``name + ".symlink"`` does, that symlink is followed.
            dest: Local file to write (its folder must exist).
            overwrite: Replace an existing ``dest``. Default False: an existing file is refused
                before any request is made.
            follow_symlinks: Follow ``.symlink`` objects (whose text is the target's object
                name). Default True.

        Returns:
            What was written, and which object and checksum it was verified against.

        Raises:
            DestinationExistsError: ``dest`` exists and ``overwrite`` is False.
            ObjectNotFoundError: No such object (nor a ``.symlink`` for it).
            SymlinkError: A symlink loop, too long a chain, or an invalid target.
            IntegrityError: The bytes received do not match the store's checksum; nothing is
                left at ``dest``.
            ProviderError: Any other failure, after retries; nothing is left at ``dest``.
        """
        return await self._reads().download(
            name, dest, overwrite=overwrite, follow_symlinks=follow_symlinks
        )


@dataclass(eq=False)
class Reads:
    """The read side on the engine's loop: every request through its :class:`RequestRunner`
    (so reads share the uploads' semaphore, watchdog and retry policy), every event through
    its :class:`Reporter`."""

    provider: Provider
    parts: PartPolicy
    runner: RequestRunner
    reporter: Reporter
    gate: Gate

    def _reader(self) -> ReadableProvider:
        self.gate.check_open()
        provider = self.provider
        if not isinstance(provider, ReadableProvider):
            raise ConfigError(f"{provider!r} cannot read objects back (no ReadableProvider)")
        return provider

    async def head(self, name: str) -> ObjectInfo:
        """What the store records about object ``name`` (size, entity tag, checksums).

        Raises:
            ObjectNotFoundError: No such object.
            InvalidObjectNameError: The store cannot hold ``name``.
        """
        provider = self._reader()
        provider.check_name(name)
        return await self.runner.request(lambda: provider.head(name), f"HEAD {name!r}", name, 0)

    async def exists(self, name: str) -> bool:
        """True when object ``name`` exists (``.symlink`` objects are not followed)."""
        try:
            await self.head(name)
        except ObjectNotFoundError:
            return False
        return True

    async def list(self, prefix: str = "") -> builtins.list[ObjectInfo]:
        """Every object whose name starts with ``prefix``, in name order.

        ``list`` entries may carry no checksums (``head`` each one for them).
        """
        provider = self._reader()
        if not isinstance(prefix, str):
            raise ConfigError(f"prefix must be a str, got {prefix!r}")

        async def collect() -> builtins.list[ObjectInfo]:
            return [info async for info in provider.list(prefix)]

        return await self.runner.request(collect, f"LIST {prefix!r}", prefix, 0)

    async def download(
        self, name: str, dest: Dest, *, overwrite: bool = False, follow_symlinks: bool = True
    ) -> DownloadResult:
        """See ``AsyncUploader.download``."""
        provider = self._reader()
        provider.check_name(name)
        if not isinstance(overwrite, bool):
            raise ConfigError(f"overwrite must be a bool, got {overwrite!r}")
        if not isinstance(follow_symlinks, bool):
            raise ConfigError(f"follow_symlinks must be a bool, got {follow_symlinks!r}")
        target = check_dest(dest, overwrite)
        try:
            info = await self._resolve(provider, name, follow_symlinks)
            return await self._fetch(provider, info, target, overwrite)
        except BaseException as exc:
            self.reporter.emit(EventKind.DOWNLOAD_FAILED, name, 0, error=exc)
            raise

    async def call(
        self,
        method: str,
        args: tuple[object, ...],
        kwargs: dict[str, object],
        timeout: float | None,
    ) -> object:
        """One read on behalf of a sync facade (its loop thread, or the upload process)."""
        if method not in _READ_METHODS:
            raise ConfigError(f"unknown read call {method!r}")
        call = getattr(self, method)
        try:
            async with asyncio.timeout(timeout):
                result: object = await call(*args, **kwargs)
        except TimeoutError as exc:
            if str(exc):
                raise
            raise TimeoutError(f"{method}{args!r} did not finish within {timeout}s") from None
        return result

    # -- symlinks ---------------------------------------------------------------------------

    async def _resolve(self, provider: ReadableProvider, name: str, follow: bool) -> ObjectInfo:
        """``head`` of the object ``name`` designates, following ``.symlink`` objects."""
        chain = [name]
        current = name
        while True:
            if follow and current.endswith(SYMLINK_SUFFIX):
                current = await self._follow(provider, current, chain)
                continue
            try:
                return await self.head(current)
            except ObjectNotFoundError:
                if not follow:
                    raise
                link = current + SYMLINK_SUFFIX
                try:
                    await self.head(link)
                except ObjectNotFoundError:
                    if len(chain) > 1:
                        raise ObjectNotFoundError(
                            f"object {provider.uri(current)!r} does not exist (reached by "
                            f"following {' -> '.join(map(repr, chain))})",
                            name=current,
                            uri=provider.uri(current),
                        ) from None
                    raise
                current = await self._follow(provider, link, chain)

    async def _follow(
        self, provider: ReadableProvider, link: str, chain: builtins.list[str]
    ) -> str:
        """The target named by symlink object ``link`` (appended to ``chain``)."""
        info = await self.head(link)
        uri = provider.uri(link)
        if info.size > _SYMLINK_MAX_BYTES:
            raise SymlinkError(
                f"symlink {uri!r} is {info.size} bytes, too large to name an object",
                name=link,
                uri=uri,
            )
        raw = b""
        if info.size:
            raw = await self.runner.request(
                lambda: provider.get_range(link, 0, info.size, etag=info.etag),
                f"GET {link!r}",
                link,
                info.size,
            )
        try:
            target = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise SymlinkError(f"symlink {uri!r} is not UTF-8 text", name=link, uri=uri) from None
        try:
            provider.check_name(target)
        except ConfigError as exc:
            raise SymlinkError(
                f"symlink {uri!r} does not name a valid object: {exc}", name=link, uri=uri
            ) from None
        if link not in chain:
            chain.append(link)
        if target in chain or target + SYMLINK_SUFFIX in chain:
            raise SymlinkError(
                f"symlink loop: {' -> '.join(map(repr, [*chain, target]))}", name=link, uri=uri
            )
        if sum(1 for c in chain if c.endswith(SYMLINK_SUFFIX)) >= MAX_SYMLINKS:
            raise SymlinkError(
                f"more than {MAX_SYMLINKS} symlinks to follow from {chain[0]!r}",
                name=link,
                uri=uri,
            )
        chain.append(target)
        return target

    # -- the transfer -----------------------------------------------------------------------

    def _plan(self, info: ObjectInfo) -> Plan:
        """Pick the checksum to verify and a range size that lets us compute it."""
        size = info.size
        default = self.parts.part_size if size >= self.parts.threshold else max(size, 1)
        usable = [c for c in info.checksums if checksum_usable(c, size)]
        # CRC32C first (native, and combinable across ranges), then MD5.
        usable.sort(key=lambda c: (c.algorithm != "crc32c", c.part_size is not None))
        for checksum in usable:
            if checksum.part_size is not None:
                if checksum.part_size > _MAX_RANGE:
                    return Plan(checksum, default, read_back=True)
                # Every range is one of the store's parts: its digest is that part's.
                return Plan(checksum, checksum.part_size)
            return Plan(checksum, default)
        return Plan(None, default)

    async def _fetch(
        self, provider: ReadableProvider, info: ObjectInfo, dest: Path, overwrite: bool
    ) -> DownloadResult:
        import anyio.to_thread

        name, size, etag = info.name, info.size, info.etag
        plan = self._plan(info)
        algorithm = plan.checksum.algorithm if plan.checksum is not None else None
        step = plan.range_size
        count = -(-size // step) if size else 0
        digests: list[bytes | None] = [None] * count
        self.reporter.emit(EventKind.DOWNLOAD_STARTED, name, size)
        tmp = dest.parent / f".{dest.name}.{uuid.uuid4().hex[:12]}.download"
        fd = await anyio.to_thread.run_sync(create_temp, tmp)
        published = False
        try:
            numbers = iter(range(count))

            async def worker() -> None:
                # Workers pull range numbers. A range is written before its request gives back
                # its concurrency slot, so across every download and upload at most
                # max_concurrency ranges are in memory.
                for index in numbers:
                    offset = index * step
                    length = min(step, size - offset)

                    async def get(o: int = offset, n: int = length) -> bytes:
                        data = await provider.get_range(name, o, n, etag=etag)
                        if len(data) != n:
                            uri = provider.uri(name)
                            short = f"{len(data)} of {n} bytes at {o}"
                            raise ProviderError(
                                f"short read of {uri!r}: {short}",
                                name=name,
                                uri=uri,
                                transient=True,
                            )
                        # A failed write is an OSError, not a transient ProviderError: it ends
                        # the download rather than fetching the range again.
                        return await anyio.to_thread.run_sync(
                            write_range, fd, data, o, None if plan.read_back else algorithm
                        )

                    digests[index] = await self.runner.request(
                        get, f"range {index + 1}/{count} of {name!r}", name, size
                    )
                    self.reporter.count(bytes_received=length)
                    self.reporter.emit(EventKind.BYTES_RECEIVED, name, size, nbytes=length)

            if count == 1:
                await worker()
            elif count:
                await run_workers(worker, min(self.runner.max_concurrency, count))
            uri = provider.uri(name)

            def check_and_publish(found: list[bytes]) -> None:
                # One hop to a worker thread for the whole ending (a small object's cost).
                value = finish(fd, tmp, plan, size, step, found)
                if plan.checksum is not None and value != split_count(plan.checksum.value)[0]:
                    raise IntegrityError(
                        f"download of {uri!r} does not match the store's "
                        f"{plan.checksum.algorithm} {plan.checksum.value!r} (received bytes give "
                        f"{value!r}); nothing was written to {str(dest)!r}",
                        name=name,
                        uri=uri,
                    )
                publish(fd, tmp, dest, overwrite)

            await anyio.to_thread.run_sync(check_and_publish, [d or b"" for d in digests])
            published = True
        finally:
            with contextlib.suppress(OSError):
                os.close(fd)
            if not published:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
        self.reporter.emit(EventKind.DOWNLOADED, name, size)
        return DownloadResult(
            uri=provider.uri(name),
            name=name,
            path=str(dest),
            size=size,
            checksum_algorithm=algorithm,
            checksum=plan.checksum.value if plan.checksum is not None else None,
        )
