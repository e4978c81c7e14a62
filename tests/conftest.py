"""Shared fixtures. Real-server fixtures live in tests/servers/ and are loaded here."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from artifact_uploader import MemoryProvider, RetryPolicy

pytest_plugins = [
    "tests.servers.moto",
    "tests.servers.s3_faults",
    "tests.servers.fault_proxy",
    "tests.servers.fake_gcs",
    "tests.servers.azurite",
]

# Retries without waiting: tests exercise the retry logic, not the clock.
FAST_RETRY = RetryPolicy(attempts=4, base_delay=0.0, max_delay=0.0)


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    """Poll ``predicate`` until true or fail after ``timeout`` seconds (never a bare sleep)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(0.005)


@pytest.fixture
def memory() -> MemoryProvider:
    return MemoryProvider("test")


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def make_file(tmp_path: Path) -> Callable[..., Path]:
    counter = iter(range(1_000_000))

    def make(data: bytes = b"hello", name: str | None = None) -> Path:
        path = tmp_path / "src" / (name or f"file-{next(counter)}.bin")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path

    return make
