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
Requires pytest and pytest-asyncio.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from ._config import PartPolicy
from ._errors import InvalidObjectNameError, ObjectExistsError, StoreNotFoundError
from ._types import FileSlice, PutResult
from ._uploader import AsyncUploader
from .providers._protocol import MultipartProvider, Provider

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
            up._take_failures()
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
