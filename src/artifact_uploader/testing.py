"""The provider conformance suite: one set of tests every provider runs.

Subclass :class:`ProviderConformance` in a pytest module and define two fixtures::

    class TestMyStore(ProviderConformance):
        @pytest_asyncio.fixture
        async def provider(self):
            p = MyProvider(bucket, prefix=f"t-{uuid4().hex}")   # fresh prefix per test
            await p.open()
            yield p
            await p.aclose()

        @pytest.fixture
        def read_object(self, provider):
            async def read(name: str) -> bytes: ...   # straight from the server, not via p
            return read

``read_object`` must raise :class:`FileNotFoundError` for an object that does not exist (the
multipart tests check that an aborted upload leaves none): translate the SDK's own not-found
error, and let every other error through.

Also define ``missing_store``: an unopened provider whose bucket / container / root does not
exist. Set ``multipart_size`` / ``part_size`` for the store's limits. Stores that implement
:class:`MultipartProvider` subclass :class:`MultipartConformance` instead, which adds the
multipart-specific tests.
Stores that implement :class:`ReadableProvider` also subclass :class:`ReadConformance` (the
read side through the engine: ranged downloads, verification, ``overwrite=False``, ``.symlink``
resolution, head / exists / list / delete, missing objects). It uses the same ``provider``
fixture, plus an optional ``corrupting_provider``: a provider reading the same objects through a
path that flips a byte of every GET answer (the fault proxy's "corrupt-response" mode for the
HTTP stores). Without it, the corruption test is skipped.

Requires pytest and pytest-asyncio.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from ._config import PartPolicy
from ._download import DestinationExistsError, SymlinkError
from ._errors import (
    IntegrityError,
    InvalidObjectNameError,
    ObjectExistsError,
    ObjectNotFoundError,
    StoreNotFoundError,
    UploadFailedError,
)
from ._events import EventKind, UploadEvent
from ._types import FileSlice, PartResult, PutResult
from ._uploader import AsyncUploader
from .providers._protocol import (
    MultipartProvider,
    ObjectInfo,
    PartLimits,
    Provider,
    ReadableProvider,
)

MiB = 1024 * 1024
ReadObject = Callable[[str], Awaitable[bytes]]


def _write(tmp_path: Path, data: bytes, label: str = "f") -> Path:
    path = tmp_path / f"{label}-{uuid.uuid4().hex[:8]}.bin"
    path.write_bytes(data)
    return path


class ProviderConformance:
    """Tests every provider must pass. See the module docstring for the fixtures to define."""

    #: Size of the file used to exercise multipart uploads (at least 2 parts of ``part_size``).
    multipart_size: int = 11 * MiB
    #: Part size for that file; must satisfy the store's minimum part size.
    part_size: int = 5 * MiB

    def _engine(self, provider: Provider, **kw: object) -> AsyncUploader:
        parts = PartPolicy(threshold=self.part_size + 1, part_size=self.part_size)
        return AsyncUploader(provider, parts=parts, **kw)  # type: ignore[arg-type]

    @pytest.mark.asyncio
    async def test_round_trip_empty(
        self, provider: Provider, read_object: ReadObject, tmp_path: Path
    ) -> None:
        path = _write(tmp_path, b"")
        result = await provider.put("empty.bin", FileSlice.whole(path), overwrite=True)
        assert isinstance(result, PutResult)
        assert await read_object("empty.bin") == b""
        # Through the engine too: an empty file is an object of size 0, not a skipped upload.
        async with self._engine(provider) as up:
            uploaded = await up.upload(path, "empty-engine.bin")
        assert uploaded.size == 0
        assert uploaded.uri == provider.uri("empty-engine.bin")
        assert await read_object("empty-engine.bin") == b""

    @pytest.mark.asyncio
    async def test_round_trip_small(
        self, provider: Provider, read_object: ReadObject, tmp_path: Path
    ) -> None:
        data = os.urandom(100_000)
        await provider.put("small.bin", FileSlice.whole(_write(tmp_path, data)), overwrite=True)
        assert await read_object("small.bin") == data

    @pytest.mark.asyncio
    async def test_round_trip_multipart_through_engine(
        self, provider: Provider, read_object: ReadObject, tmp_path: Path
    ) -> None:
        data = os.urandom(self.multipart_size)
        path = _write(tmp_path, data)
        async with self._engine(provider, max_concurrency=3) as up:
            result = await up.upload(path, "big/checkpoint.pt")
        assert result.size == len(data)
        assert result.uri == provider.uri("big/checkpoint.pt")
        assert await read_object("big/checkpoint.pt") == data

    @pytest.mark.asyncio
    async def test_unicode_and_nested_names(
        self, provider: Provider, read_object: ReadObject, tmp_path: Path
    ) -> None:
        names = ["rank_0/ep 1/ckpt-ünï©ødé-模型.pt", "a/b/c/d/e/f/g.txt", "with space & plus+.txt"]
        for i, name in enumerate(names):
            data = f"payload {i}".encode()
            await provider.put(name, FileSlice.whole(_write(tmp_path, data)), overwrite=True)
            assert await read_object(name) == data

    @pytest.mark.asyncio
    async def test_overwrite_true_replaces(
        self, provider: Provider, read_object: ReadObject, tmp_path: Path
    ) -> None:
        await provider.put("o.txt", FileSlice.whole(_write(tmp_path, b"first")), overwrite=True)
        await provider.put("o.txt", FileSlice.whole(_write(tmp_path, b"second")), overwrite=True)
        assert await read_object("o.txt") == b"second"

    @pytest.mark.asyncio
    async def test_overwrite_false_creates_then_refuses(
        self, provider: Provider, read_object: ReadObject, tmp_path: Path
    ) -> None:
        await provider.put("c.txt", FileSlice.whole(_write(tmp_path, b"one")), overwrite=False)
        with pytest.raises(ObjectExistsError) as info:
            await provider.put("c.txt", FileSlice.whole(_write(tmp_path, b"two")), overwrite=False)
        assert "c.txt" in str(info.value)
        assert await read_object("c.txt") == b"one"

    @pytest.mark.asyncio
    async def test_overwrite_false_multipart_refuses_existing(
        self, provider: Provider, read_object: ReadObject, tmp_path: Path
    ) -> None:
        await provider.put("m.bin", FileSlice.whole(_write(tmp_path, b"keep")), overwrite=True)
        big = _write(tmp_path, os.urandom(self.multipart_size))
        async with self._engine(provider) as up:
            handle = await up.submit(big, "m.bin", overwrite=False)
            with pytest.raises(ObjectExistsError):
                await handle
            failures = up.failures()
            assert [f.name for f in failures] == ["m.bin"]
            # Reported (and cleared) here, so closing the uploader does not raise it again.
            with pytest.raises(UploadFailedError) as info:
                await up.flush()
            assert [f.name for f in info.value.failures] == ["m.bin"]
        assert await read_object("m.bin") == b"keep"

    def test_uri_names_the_object(self, provider: Provider) -> None:
        uri = provider.uri("dir/obj.txt")
        assert uri.startswith(f"{provider.scheme}://")
        assert uri.endswith("dir/obj.txt")

    @pytest.mark.parametrize("bad", ["", "/", "a\x00b", "x" * 2000])
    def test_invalid_names_refused(self, provider: Provider, bad: str) -> None:
        with pytest.raises(InvalidObjectNameError) as info:
            provider.check_name(bad)
        assert "invalid object name" in str(info.value)

    @pytest.mark.asyncio
    async def test_missing_store_maps_to_store_not_found(self, missing_store: Provider) -> None:
        try:
            with pytest.raises(StoreNotFoundError):
                await missing_store.open(verify=True)
        finally:
            await missing_store.aclose()


class MultipartConformance(ProviderConformance):
    """The suite plus the tests for :class:`MultipartProvider` stores."""

    @pytest.mark.asyncio
    async def test_multipart_abort_leaves_nothing(
        self, provider: Provider, read_object: ReadObject, tmp_path: Path
    ) -> None:
        assert isinstance(provider, MultipartProvider)
        path = _write(tmp_path, os.urandom(self.part_size))
        upload_id = await provider.create_multipart("aborted.bin", overwrite=True)
        await provider.put_part("aborted.bin", upload_id, 1, FileSlice.whole(path))
        await provider.abort_multipart("aborted.bin", upload_id)
        await provider.abort_multipart("aborted.bin", upload_id)  # idempotent
        with pytest.raises(FileNotFoundError):
            await read_object("aborted.bin")


class _Borrowed:
    """Lends an open provider to an engine without giving it away: every call goes to
    ``inner`` except ``open`` and ``aclose``, which do nothing, so the engine's exit leaves the
    provider open for the fixture that owns it (and closes it). Use :func:`_borrow`, which keeps
    the multipart capability when ``inner`` has it.
    """

    def __init__(self, inner: ReadableProvider) -> None:
        self.inner = inner
        self.scheme = inner.scheme

    def __repr__(self) -> str:
        return f"_Borrowed({self.inner!r})"

    def uri(self, name: str) -> str:
        return self.inner.uri(name)

    def check_name(self, name: str) -> None:
        self.inner.check_name(name)

    async def open(self, *, verify: bool = True) -> None:
        return None

    async def aclose(self) -> None:
        return None

    async def put(self, name: str, data: FileSlice, *, overwrite: bool) -> PutResult:
        return await self.inner.put(name, data, overwrite=overwrite)

    async def head(self, name: str) -> ObjectInfo:
        return await self.inner.head(name)

    async def get_range(
        self, name: str, offset: int, length: int, *, etag: str | None = None
    ) -> bytes:
        return await self.inner.get_range(name, offset, length, etag=etag)

    async def list(self, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        async for info in self.inner.list(prefix):
            yield info

    async def delete(self, name: str) -> None:
        await self.inner.delete(name)


class CountingReader(_Borrowed):
    """Wraps a :class:`ReadableProvider` (already open) and records every read request.

    The engine under test opens and closes the wrapper; the wrapped provider stays open (the
    test's fixture owns it). ``ranges`` lists each ``get_range`` as (offset, length, etag);
    ``max_in_flight`` is the most ``get_range`` calls seen running at once.
    """

    def __init__(self, inner: ReadableProvider) -> None:
        super().__init__(inner)
        self.ranges: list[tuple[int, int, str | None]] = []
        self.calls: list[str] = []
        self.in_flight = 0
        self.max_in_flight = 0

    def __repr__(self) -> str:
        return f"CountingReader({self.inner!r})"

    async def put(self, name: str, data: FileSlice, *, overwrite: bool) -> PutResult:
        self.calls.append("put")
        return await super().put(name, data, overwrite=overwrite)

    async def head(self, name: str) -> ObjectInfo:
        self.calls.append("head")
        return await super().head(name)

    async def get_range(
        self, name: str, offset: int, length: int, *, etag: str | None = None
    ) -> bytes:
        self.calls.append("get_range")
        self.ranges.append((offset, length, etag))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await super().get_range(name, offset, length, etag=etag)
        finally:
            self.in_flight -= 1

    async def list(self, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        self.calls.append("list")
        async for info in super().list(prefix):
            yield info

    async def delete(self, name: str) -> None:
        self.calls.append("delete")
        await super().delete(name)


class _BorrowedMultipart(_Borrowed):
    """A :class:`_Borrowed` of a :class:`MultipartProvider`."""

    def __init__(self, inner: ReadableProvider) -> None:
        assert isinstance(inner, MultipartProvider)
        super().__init__(inner)
        self._multipart = inner

    @property
    def part_limits(self) -> PartLimits:
        return self._multipart.part_limits

    async def create_multipart(self, name: str, *, overwrite: bool) -> str:
        return await self._multipart.create_multipart(name, overwrite=overwrite)

    async def put_part(
        self, name: str, upload_id: str, part_number: int, data: FileSlice
    ) -> PartResult:
        return await self._multipart.put_part(name, upload_id, part_number, data)

    async def complete_multipart(
        self, name: str, upload_id: str, parts: Sequence[PartResult], *, overwrite: bool
    ) -> PutResult:
        return await self._multipart.complete_multipart(name, upload_id, parts, overwrite=overwrite)

    async def abort_multipart(self, name: str, upload_id: str) -> None:
        await self._multipart.abort_multipart(name, upload_id)


def _borrow(provider: Provider) -> _Borrowed:
    """``provider`` (open, readable) lent to an engine that must not close it."""
    assert isinstance(provider, ReadableProvider), f"{provider!r} is not a ReadableProvider"
    if isinstance(provider, MultipartProvider):
        return _BorrowedMultipart(provider)
    return _Borrowed(provider)


def _leftovers(folder: Path, *keep: str) -> list[str]:
    """Files in ``folder`` other than ``keep`` (a download must leave no temporary behind)."""
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


class ReadConformance:
    """The read side every :class:`ReadableProvider` must pass, through the engine.

    Fixtures: ``provider`` (an open ReadableProvider on a fresh prefix), optionally
    ``corrupting_provider`` (see the module docstring). The fixtures own their providers and
    close them; the engines these tests start only borrow them (never open or close them).
    """

    #: Size of the object that must be fetched as several ranges.
    large_size: int = 40 * MiB

    @pytest.fixture
    def corrupting_provider(self) -> ReadableProvider | None:
        """Override to return a provider whose GET answers arrive corrupted."""
        return None

    def _reader(self, provider: Provider, **kw: Any) -> tuple[AsyncUploader, CountingReader]:
        assert isinstance(provider, ReadableProvider), f"{provider!r} is not a ReadableProvider"
        counting = CountingReader(provider)
        parts = PartPolicy(threshold=16 * MiB, part_size=8 * MiB)
        return AsyncUploader(counting, parts=parts, **kw), counting

    async def _store(self, provider: Provider, tmp_path: Path, name: str, data: bytes) -> None:
        # Through the engine, so large objects are stored as a multipart upload where the store
        # supports one (and carry the checksum the store records for that). Borrowed: the
        # engine's exit must not close the fixture's provider.
        async with AsyncUploader(_borrow(provider), parts=PartPolicy(threshold=8 * MiB)) as up:
            await up.upload(_write(tmp_path, data, "src"), name)

    @pytest.mark.asyncio
    async def test_download_large_object_in_ranges(
        self, provider: Provider, tmp_path: Path
    ) -> None:
        data = os.urandom(self.large_size)
        await self._store(provider, tmp_path, "big/model.pt", data)
        out = tmp_path / "out"
        out.mkdir()
        events: list[UploadEvent] = []
        up, counting = self._reader(provider, max_concurrency=3, on_event=events.append)
        async with up:
            info = await up.head("big/model.pt")
            result = await up.download("big/model.pt", out / "model.pt")
        assert (out / "model.pt").read_bytes() == data
        assert _leftovers(out, "model.pt") == []
        assert result.size == len(data) and result.name == "big/model.pt"
        assert result.uri == provider.uri("big/model.pt")
        assert result.path == str(out / "model.pt")
        if info.checksums:
            assert result.checksum_algorithm in {c.algorithm for c in info.checksums}
        # Several ranged GETs, covering the object exactly once, all conditional on one ETag.
        spans = sorted((o, n) for o, n, _ in counting.ranges)
        assert len(spans) >= 3, spans
        assert spans[0][0] == 0 and sum(n for _, n in spans) == len(data)
        assert all(a + n == b for (a, n), (b, _) in itertools.pairwise(spans))
        assert {e for _, _, e in counting.ranges} == {info.etag}
        assert 1 <= counting.max_in_flight <= 3
        received = [e for e in events if e.kind is EventKind.BYTES_RECEIVED]
        assert sum(e.bytes for e in received) == len(data) and len(received) == len(spans)
        ends = (EventKind.DOWNLOAD_STARTED, EventKind.DOWNLOADED, EventKind.DOWNLOAD_FAILED)
        assert [e.kind for e in events if e.kind in ends] == list(ends[:2])
        assert events[-1].kind is EventKind.DOWNLOADED

    @pytest.mark.asyncio
    async def test_download_small_and_empty(self, provider: Provider, tmp_path: Path) -> None:
        await self._store(provider, tmp_path, "s.txt", b"hello")
        await self._store(provider, tmp_path, "e.txt", b"")
        up, counting = self._reader(provider)
        async with up:
            small = await up.download("s.txt", tmp_path / "s.out")
            empty = await up.download("e.txt", tmp_path / "e.out")
        assert (tmp_path / "s.out").read_bytes() == b"hello" and small.size == 5
        assert (tmp_path / "e.out").read_bytes() == b"" and empty.size == 0
        assert [n for _, n, _ in counting.ranges] == [5]  # an empty object needs no GET

    @pytest.mark.asyncio
    async def test_download_overwrite_false_refuses_before_any_request(
        self, provider: Provider, tmp_path: Path
    ) -> None:
        await self._store(provider, tmp_path, "o.txt", b"new")
        dest = tmp_path / "o.txt"
        dest.write_bytes(b"mine")
        up, counting = self._reader(provider)
        async with up:
            with pytest.raises(DestinationExistsError) as info:
                await up.download("o.txt", dest)
            assert isinstance(info.value, FileExistsError)
            assert str(dest) in str(info.value)
            assert counting.calls == []
            assert dest.read_bytes() == b"mine"
            await up.download("o.txt", dest, overwrite=True)
        assert dest.read_bytes() == b"new"

    @pytest.mark.asyncio
    async def test_download_missing_object(self, provider: Provider, tmp_path: Path) -> None:
        out = tmp_path / "out"
        out.mkdir()
        up, _ = self._reader(provider)
        async with up:
            with pytest.raises(ObjectNotFoundError) as info:
                await up.download("no/such.bin", out / "x")
            assert "no/such.bin" in str(info.value)
            with pytest.raises(ObjectNotFoundError):
                await up.head("no/such.bin")
            assert await up.exists("no/such.bin") is False
        assert _leftovers(out) == []

    @pytest.mark.asyncio
    async def test_symlink_resolution(self, provider: Provider, tmp_path: Path) -> None:
        data = os.urandom(3000)
        await self._store(provider, tmp_path, "run/ep1.pt", data)
        await self._store(provider, tmp_path, "latest.pt.symlink", b"run/ep1.pt\n")
        await self._store(provider, tmp_path, "alias.pt.symlink", b"latest.pt.symlink")
        up, _ = self._reader(provider)
        async with up:
            via_missing = await up.download("latest.pt", tmp_path / "a.pt")
            via_link = await up.download("latest.pt.symlink", tmp_path / "b.pt")
            chained = await up.download("alias.pt", tmp_path / "c.pt")
            raw = await up.download("latest.pt.symlink", tmp_path / "d", follow_symlinks=False)
        for result, path in ((via_missing, "a.pt"), (via_link, "b.pt"), (chained, "c.pt")):
            assert result.name == "run/ep1.pt"
            assert (tmp_path / path).read_bytes() == data
        assert raw.name == "latest.pt.symlink"
        assert (tmp_path / "d").read_bytes() == b"run/ep1.pt\n"

    @pytest.mark.asyncio
    async def test_symlink_loop_and_dangling_raise(
        self, provider: Provider, tmp_path: Path
    ) -> None:
        await self._store(provider, tmp_path, "a.symlink", b"b")
        await self._store(provider, tmp_path, "b.symlink", b"a")
        await self._store(provider, tmp_path, "dangling.symlink", b"gone/ckpt.pt")
        out = tmp_path / "out"
        out.mkdir()
        up, _ = self._reader(provider)
        async with up:
            with pytest.raises(SymlinkError, match="loop"):
                await up.download("a", out / "x")
            with pytest.raises(ObjectNotFoundError, match=r"gone/ckpt\.pt"):
                await up.download("dangling", out / "y")
        assert _leftovers(out) == []

    @pytest.mark.asyncio
    async def test_head_exists_list_delete(self, provider: Provider, tmp_path: Path) -> None:
        names = ["d/b.bin", "d/a.bin", "d/sub/c.bin", "dz.bin", "e.bin"]
        for i, name in enumerate(names):
            await self._store(provider, tmp_path, name, b"x" * (i + 1))
        up, _ = self._reader(provider)
        async with up:
            info = await up.head("d/sub/c.bin")
            assert info.name == "d/sub/c.bin" and info.size == 3
            assert await up.exists("e.bin") and not await up.exists("d")
            listed = await up.list("d/")
            assert [i.name for i in listed] == ["d/a.bin", "d/b.bin", "d/sub/c.bin"]
            assert [i.size for i in listed] == [2, 1, 3]
            assert [i.name for i in await up.list("d")] == [
                "d/a.bin",
                "d/b.bin",
                "d/sub/c.bin",
                "dz.bin",
            ]
            assert [i.name for i in await up.list()] == sorted(names)
            assert await up.list("nothing/") == []
            assert isinstance(provider, ReadableProvider)
            await provider.delete("d/b.bin")
            await provider.delete("d/b.bin")  # deleting a missing object is not an error
            assert not await up.exists("d/b.bin")
            assert [i.name for i in await up.list("d/")] == ["d/a.bin", "d/sub/c.bin"]

    @pytest.mark.asyncio
    async def test_corrupted_download_raises_and_leaves_nothing(
        self,
        provider: Provider,
        corrupting_provider: ReadableProvider | None,
        tmp_path: Path,
    ) -> None:
        if corrupting_provider is None:
            pytest.skip("this store has no corrupting path to read through")
        data = os.urandom(3 * MiB)
        await self._store(provider, tmp_path, "c.bin", data)
        out = tmp_path / "out"
        out.mkdir()
        up, _ = self._reader(corrupting_provider)
        async with up:
            assert (await up.head("c.bin")).checksums, "the store must record a checksum"
            with pytest.raises(IntegrityError) as info:
                await up.download("c.bin", out / "c.bin")
        assert "c.bin" in str(info.value)
        assert _leftovers(out) == []
        # Through the clean path the same object verifies.
        up, _ = self._reader(provider)
        async with up:
            await asyncio.wait_for(up.download("c.bin", out / "c.bin"), 120)
        assert (out / "c.bin").read_bytes() == data
