"""Shared fixtures. Real-server fixtures live in tests/servers/ and are loaded here."""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, AnyStr, NoReturn

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


def wait_until(
    predicate: Callable[[], bool], timeout: float = 10.0, what: str = "", interval: float = 0.005
) -> None:
    """Poll ``predicate`` every ``interval`` seconds until true or fail after ``timeout``
    seconds (never a bare sleep); a longer interval for a predicate that asks a server."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


async def poll_until(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    """The event loop's :func:`wait_until`: poll ``predicate`` without blocking the loop."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        await asyncio.sleep(0.002)


def skip_outside_ci(reason: str) -> NoReturn:
    """Skip a test the machine cannot run (missing tool, no namespaces) — but fail it in CI.

    CI (``$CI`` set, as the clean-clone check does) must run everything, so a missing tool is
    a broken CI image, not a reason to pass silently; ``ARTIFACT_UPLOADER_ALLOW_SKIP=1``
    allows the skip there too.
    """
    in_ci = os.environ.get("CI", "").lower() not in ("", "0", "false", "no")
    if in_ci and os.environ.get("ARTIFACT_UPLOADER_ALLOW_SKIP") != "1":
        pytest.fail(f"{reason} (CI is set; ARTIFACT_UPLOADER_ALLOW_SKIP=1 allows the skip)")
    pytest.skip(reason)


@pytest.fixture(autouse=True)
def _private_tempdir(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """Point ``tempfile`` and ``$TMPDIR`` at a folder of this test's own.

    Default staging folders (``tempfile.mkdtemp``) left behind by a failing upload then land in
    pytest's temporary tree, which pytest prunes, instead of piling up in /tmp; child processes
    inherit ``$TMPDIR``. ``monkeypatch`` restores both afterwards. The name is short because
    multiprocessing puts AF_UNIX socket paths (108 bytes at most) under the temp folder.
    """
    folder = tmp_path_factory.mktemp("t")
    monkeypatch.setenv("TMPDIR", str(folder))
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def wait_child(pid: int, timeout: float = 30.0) -> int:
    """``waitpid`` a forked child with a deadline; SIGKILL it (and fail) when it overruns.

    Returns:
        The child's exit code (as ``os.waitstatus_to_exitcode``).
    """
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError(f"forked child {pid} did not exit within {timeout}s: killed")
        time.sleep(0.005)


def read_line(stream: IO[AnyStr], timeout: float = 30.0) -> AnyStr:
    """The next line of a child's pipe, failing after ``timeout`` instead of blocking forever.

    The read runs on a daemon thread; once the child is killed its pipe closes and it ends.
    """
    lines: queue.Queue[AnyStr] = queue.Queue()
    threading.Thread(target=lambda: lines.put(stream.readline()), daemon=True).start()
    try:
        return lines.get(timeout=timeout)
    except queue.Empty:
        raise AssertionError(f"no line from the child within {timeout}s") from None


@contextlib.contextmanager
def reaped(proc: subprocess.Popen[AnyStr]) -> Iterator[subprocess.Popen[AnyStr]]:
    """Kill ``proc`` (if still running) and collect it on exit, also when the test fails."""
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        # Drains and closes the pipes; a second communicate() after a finished one is harmless.
        with contextlib.suppress(subprocess.TimeoutExpired, ValueError):
            proc.communicate(timeout=30)


@contextlib.contextmanager
def resumed(provider: MemoryProvider) -> Iterator[MemoryProvider]:
    """Resume a paused ``provider`` on exit, also when the block fails.

    A failed assertion while requests are held would otherwise leave the uploader waiting on
    them until its close timeout.
    """
    try:
        yield provider
    finally:
        provider.resume()


@pytest.fixture
def refused_port() -> Iterator[int]:
    """A loopback port that refuses connections for the whole test.

    The socket stays bound (so no other process can take the port) but never listens, so a
    connection attempt gets ECONNREFUSED at once.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        yield port


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
