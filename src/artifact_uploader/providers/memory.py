"""An in-memory store with fault injection, for tests (the engine's ``MockTransport``)."""

from __future__ import annotations

import threading
import uuid
import zlib
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

import anyio.to_thread

from .._checksums import crc32c, crc32c_available, crc32c_b64, digest, md5_b64
from .._errors import ObjectExistsError, ObjectNotFoundError, ProviderError, StoreNotFoundError
from .._types import FileSlice, PartResult, PutResult
from ._kit import check_common_name
from ._protocol import Checksum, ObjectInfo, PartLimits

FaultFactory = Callable[[str, str], BaseException | None]
"""Called with (operation, object name); returns the exception to raise, or None to pass."""


@dataclass
class _Fault:
    factory: FaultFactory
    times: int | None
    ops: frozenset[str] | None


@dataclass
class _Multipart:
    name: str
    overwrite: bool
    parts: dict[int, bytes] = field(default_factory=dict)


class MemoryProvider:
    """Keeps objects in a dict. Thread-safe to inspect from tests while the engine runs.

    Args:
        name: Label used in URIs (``memory://<name>/<object>``). Defaults to "store".
        part_limits: Multipart limits; small defaults let tests exercise multipart cheaply.
        exists: False makes ``open(verify=True)`` fail as a missing bucket would.

    Test hooks:
        - :meth:`inject` makes chosen operations fail (transiently or not), a number of times.
        - :meth:`pause` / :meth:`resume` hold every request at its start, so a test can observe
          in-flight uploads without sleeping.
        - ``max_in_flight`` records the most requests seen running at once.
        - :meth:`corrupt_reads` flips one byte in the answers of the next ``get_range`` calls,
          as a corrupting network path would (the recorded checksum stays the original's).

    The read side reports, for each object, an entity tag and the checksum of its bytes
    (CRC32C when a native implementation is installed, else MD5), computed at ``head`` from the
    stored bytes, so objects a test writes into :attr:`objects` directly are described too.
    """

    scheme = "memory"

    def __init__(
        self, name: str = "store", *, part_limits: PartLimits | None = None, exists: bool = True
    ) -> None:
        self.label = name
        self.exists = exists
        self._limits = part_limits or PartLimits(
            min_part_size=1, max_part_size=1 << 40, max_parts=10_000
        )
        self.objects: dict[str, bytes] = {}
        self.multipart_uploads: dict[str, _Multipart] = {}
        self.requests: list[tuple[str, str]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.opened = False
        self.closed = False
        self._lock = threading.Lock()
        self._running = threading.Event()
        self._running.set()
        self._faults: list[_Fault] = []
        self._corrupt = 0

    def __repr__(self) -> str:
        return f"MemoryProvider({self.label!r}, objects={len(self.objects)})"

    @property
    def part_limits(self) -> PartLimits:
        return self._limits

    # -- test hooks -------------------------------------------------------------------------

    def inject(
        self,
        error: BaseException | FaultFactory,
        *,
        times: int | None = 1,
        ops: Sequence[str] | None = None,
    ) -> None:
        """Fail the next ``times`` matching operations (None: every one) with ``error``.

        ``ops`` limits it to some of "put", "create_multipart", "put_part", "complete_multipart",
        "head", "get_range", "list", "delete".
        A factory may return None to let an operation through without counting it.
        """
        factory: FaultFactory
        if isinstance(error, BaseException):
            exc = error

            def always(op: str, name: str) -> BaseException | None:
                return exc

            factory = always
        else:
            factory = error
        with self._lock:
            self._faults.append(_Fault(factory, times, None if ops is None else frozenset(ops)))

    def corrupt_reads(self, times: int = 1) -> None:
        """Flip one byte in each of the next ``times`` non-empty ``get_range`` answers."""
        with self._lock:
            self._corrupt += times

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def pause(self) -> None:
        """Hold every new request at its start until :meth:`resume`."""
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    def count(self, op: str) -> int:
        with self._lock:
            return sum(1 for o, _ in self.requests if o == op)

    # -- provider protocol ------------------------------------------------------------------

    def uri(self, name: str) -> str:
        return f"memory://{self.label}/{name}"

    def check_name(self, name: str) -> None:
        check_common_name(name)

    async def open(self, *, verify: bool = True) -> None:
        if verify and not self.exists:
            raise StoreNotFoundError(f"memory store {self.label!r} does not exist")
        self.opened = True

    async def aclose(self) -> None:
        self.closed = True

    async def _enter(self, op: str, name: str) -> None:
        with self._lock:
            self.requests.append((op, name))
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        if not self._running.is_set():
            try:
                await anyio.to_thread.run_sync(self._running.wait, abandon_on_cancel=True)
            except BaseException:
                self._exit()
                raise
        with self._lock:
            fault = None
            for f in self._faults:
                if f.ops is not None and op not in f.ops:
                    continue
                exc = f.factory(op, name)
                if exc is None:
                    continue
                if f.times is not None:
                    f.times -= 1
                    if f.times <= 0:
                        self._faults.remove(f)
                fault = exc
                break
        if fault is not None:
            self._exit()
            raise fault

    def _exit(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def _exists_error(self, name: str) -> ObjectExistsError:
        return ObjectExistsError(
            f"object {self.uri(name)!r} already exists", name=name, uri=self.uri(name)
        )

    async def put(self, name: str, data: FileSlice, *, overwrite: bool) -> PutResult:
        await self._enter("put", name)
        try:
            body = await data.read()
            with self._lock:
                if not overwrite and name in self.objects:
                    raise self._exists_error(name)
                self.objects[name] = body
            return _result(body)
        finally:
            self._exit()

    async def create_multipart(self, name: str, *, overwrite: bool) -> str:
        await self._enter("create_multipart", name)
        try:
            upload_id = uuid.uuid4().hex
            with self._lock:
                self.multipart_uploads[upload_id] = _Multipart(name, overwrite)
            return upload_id
        finally:
            self._exit()

    async def put_part(
        self, name: str, upload_id: str, part_number: int, data: FileSlice
    ) -> PartResult:
        await self._enter("put_part", name)
        try:
            body = await data.read()
            with self._lock:
                mpu = self.multipart_uploads.get(upload_id)
                if mpu is None:
                    raise ProviderError(f"no such multipart upload {upload_id!r}", name=name)
                mpu.parts[part_number] = body
            return PartResult(part_number, f"{zlib.crc32(body):08x}")
        finally:
            self._exit()

    async def complete_multipart(
        self, name: str, upload_id: str, parts: Sequence[PartResult], *, overwrite: bool
    ) -> PutResult:
        await self._enter("complete_multipart", name)
        try:
            with self._lock:
                mpu = self.multipart_uploads.get(upload_id)
                if mpu is None:
                    raise ProviderError(f"no such multipart upload {upload_id!r}", name=name)
                try:
                    body = b"".join(mpu.parts[p.part_number] for p in parts)
                except KeyError as exc:
                    raise ProviderError(f"part {exc} was never uploaded", name=name) from None
                if not overwrite and name in self.objects:
                    raise self._exists_error(name)
                self.objects[name] = body
                del self.multipart_uploads[upload_id]
            return _result(body, etag_suffix=f"-{len(parts)}")
        finally:
            self._exit()

    async def abort_multipart(self, name: str, upload_id: str) -> None:
        with self._lock:
            self.requests.append(("abort_multipart", name))
            self.multipart_uploads.pop(upload_id, None)

    async def list_multipart_uploads(self, name: str) -> list[str]:
        """Ids of the unfinished multipart uploads of exactly ``name``.

        Like ``abort_multipart`` (both are resume's clean-up), not subject to injected faults
        or ``pause``, so faults meant for the transfer are not consumed here.
        """
        with self._lock:
            self.requests.append(("list_multipart_uploads", name))
            return [i for i, m in self.multipart_uploads.items() if m.name == name]

    # -- read side --------------------------------------------------------------------------

    def _body(self, name: str) -> bytes:
        with self._lock:
            body = self.objects.get(name)
        if body is None:
            uri = self.uri(name)
            raise ObjectNotFoundError(f"object {uri!r} does not exist", name=name, uri=uri)
        return body

    async def head(self, name: str) -> ObjectInfo:
        await self._enter("head", name)
        try:
            return _info(name, self._body(name))
        finally:
            self._exit()

    async def get_range(
        self, name: str, offset: int, length: int, *, etag: str | None = None
    ) -> bytes:
        await self._enter("get_range", name)
        try:
            body = self._body(name)
            if etag is not None and _etag(body) != etag:
                raise ProviderError(
                    f"object {self.uri(name)!r} changed (entity tag {_etag(body)} is not {etag})",
                    name=name,
                    uri=self.uri(name),
                    status=412,
                )
            data = body[offset : offset + length]
            with self._lock:
                corrupt = self._corrupt > 0 and bool(data)
                if corrupt:
                    self._corrupt -= 1
            if corrupt:
                flipped = bytearray(data)
                flipped[len(flipped) // 2] ^= 0x01
                data = bytes(flipped)
            return data
        finally:
            self._exit()

    async def list(self, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        await self._enter("list", prefix)
        try:
            with self._lock:
                items = [(k, v) for k, v in self.objects.items() if k.startswith(prefix)]
        finally:
            self._exit()
        items.sort(key=lambda kv: kv[0].encode())
        for key, body in items:
            yield ObjectInfo(name=key, size=len(body), etag=_etag(body))

    async def delete(self, name: str) -> None:
        await self._enter("delete", name)
        try:
            with self._lock:
                self.objects.pop(name, None)
        finally:
            self._exit()


def _etag(body: bytes) -> str:
    return f'"{zlib.crc32(body):08x}-{len(body):x}"'


def _info(name: str, body: bytes) -> ObjectInfo:
    if crc32c_available():
        checksum = Checksum("crc32c", crc32c_b64(crc32c(body)))
    else:
        checksum = Checksum("md5", md5_b64(digest("md5", body)))
    return ObjectInfo(name=name, size=len(body), etag=_etag(body), checksums=(checksum,))


def _result(body: bytes, etag_suffix: str = "") -> PutResult:
    crc = f"{zlib.crc32(body):08x}"
    return PutResult(etag=crc + etag_suffix, checksum_algorithm="crc32", checksum=crc)
