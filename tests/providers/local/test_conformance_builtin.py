"""The conformance suite on the embedded stores: memory and local filesystem."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from artifact_uploader import LocalProvider, MemoryProvider
from artifact_uploader.testing import (
    MultipartConformance,
    ProviderConformance,
    ReadConformance,
    ReadObject,
)


class _CorruptingLocal(LocalProvider):
    """The same root, read through a path that flips one byte of every answer."""

    async def get_range(
        self, name: str, offset: int, length: int, *, etag: str | None = None
    ) -> bytes:
        data = bytearray(await super().get_range(name, offset, length, etag=etag))
        data[len(data) // 2] ^= 0x40
        return bytes(data)


class TestMemoryConformance(MultipartConformance, ReadConformance):
    @pytest.fixture
    def corrupting_provider(self, provider: MemoryProvider) -> MemoryProvider:
        # The same objects, read through a path that corrupts every answer.
        p = MemoryProvider(provider.label)
        p.objects = provider.objects
        p.corrupt_reads(10**6)
        return p

    @pytest_asyncio.fixture
    async def provider(self) -> AsyncIterator[MemoryProvider]:
        p = MemoryProvider(f"m-{uuid.uuid4().hex[:6]}")
        await p.open()
        yield p
        await p.aclose()

    @pytest.fixture
    def read_object(self, provider: MemoryProvider) -> ReadObject:
        async def read(name: str) -> bytes:
            if name not in provider.objects:
                raise FileNotFoundError(name)
            return provider.objects[name]

        return read

    @pytest.fixture
    def missing_store(self) -> MemoryProvider:
        return MemoryProvider("gone", exists=False)


class TestLocalConformance(ProviderConformance, ReadConformance):
    @pytest_asyncio.fixture
    async def corrupting_provider(self, provider: LocalProvider) -> AsyncIterator[LocalProvider]:
        p = _CorruptingLocal(provider.root)
        await p.open()
        yield p
        await p.aclose()

    @pytest_asyncio.fixture
    async def provider(self, tmp_path: Path) -> AsyncIterator[LocalProvider]:
        p = LocalProvider(tmp_path / "root")
        await p.open()
        yield p
        await p.aclose()

    @pytest.fixture
    def read_object(self, provider: LocalProvider) -> ReadObject:
        async def read(name: str) -> bytes:
            return (provider.root / name).read_bytes()

        return read

    @pytest.fixture
    def missing_store(self, tmp_path: Path) -> LocalProvider:
        blocker = tmp_path / "a-file"
        blocker.write_text("not a directory")
        return LocalProvider(blocker / "root")


@pytest.mark.asyncio
async def test_read_conformance_engines_borrow_the_fixture_provider(tmp_path: Path) -> None:
    # The fixture owns its provider: the engines the mixin starts must neither reopen nor close
    # it, and a multipart store stays multipart through them.
    provider = MemoryProvider("borrowed")
    await provider.open()
    provider.opened = False
    await ReadConformance()._store(provider, tmp_path, "big.bin", b"x" * (9 * 1024 * 1024))
    assert not provider.closed and not provider.opened
    assert provider.count("create_multipart") == 1
    assert provider.objects["big.bin"] == b"x" * (9 * 1024 * 1024)
