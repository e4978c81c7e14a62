"""Back-pressure: ``max_staged_bytes`` bounds the staging folder, even under a burst.

The staging folder lives on a RAM disk (``/dev/shm`` where there is one), as it would for a
training job that stages checkpoints into memory: without a bound a burst of submissions would
fill it until the machine runs out of memory. The store is a memory store that keeps only a
SHA-256 of each object, so the test itself holds no copy of the half gigabyte.

See also ``engine/test_staging.py``: the budget wait and its timeout, and a file larger than the
budget on an idle uploader (``test_file_larger_than_budget_is_staged_alone``). Here the oversize
file arrives while the queue is busy, and must wait for it to drain.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import anyio.to_thread
import pytest

from artifact_uploader import EventKind, FileSlice, MemoryProvider, PutResult, Uploader, UploadEvent
from artifact_uploader._sync import staged_bytes as budget_used
from tests.conftest import resumed, wait_until

MiB = 1024 * 1024


class DigestStore(MemoryProvider):
    """A memory store that keeps each object's SHA-256 and size instead of its bytes."""

    def __init__(self) -> None:
        super().__init__("digests")
        self.digests: dict[str, tuple[int, str]] = {}

    async def put(self, name: str, data: FileSlice, *, overwrite: bool) -> PutResult:
        await self._enter("put", name)
        try:
            body = await data.read()
            with self._lock:
                self.digests[name] = (len(body), hashlib.sha256(body).hexdigest())
            return PutResult()
        finally:
            self._exit()


def staged_bytes(folder: Path) -> int:
    """Bytes the staging folder's staged files hold right now (their sizes, as the budget
    counts them; a file being copied counts with what has been written so far)."""
    total = 0
    try:
        with os.scandir(folder / "staged") as it:
            for entry in it:
                try:
                    total += entry.stat(follow_symlinks=False).st_size
                except FileNotFoundError:
                    pass  # uploaded and deleted between listing and stat
    except FileNotFoundError:
        pass
    return total


class Sampler:
    """Samples the staging folder's size (and this process's RSS) from a thread until stopped."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.max_staged = 0
        self.max_rss = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="staging-sampler", daemon=True)

    def sample(self) -> None:
        self.max_staged = max(self.max_staged, staged_bytes(self.folder))
        self.max_rss = max(self.max_rss, rss_bytes())
        self.samples += 1

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(0.001)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.fixture
def ram_dir() -> Iterator[Path]:
    """A folder on a RAM disk (tmpfs) when the machine has one, else an ordinary temp folder."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    folder = Path(tempfile.mkdtemp(prefix="au-backpressure-", dir=base))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_burst_of_512_mib_stays_within_a_64_mib_budget(ram_dir: Path) -> None:
    budget = 64 * MiB
    src_dir = ram_dir / "src"
    src_dir.mkdir()
    block = os.urandom(13 * MiB)
    expected: dict[str, tuple[int, str]] = {}
    sizes = [(1 + (i * 7) % 12) * MiB + i for i in range(200)]
    total = 0
    files: list[tuple[Path, str]] = []
    for i, size in enumerate(sizes):
        if total >= 512 * MiB:
            break
        # Each file differs (its index up front) so a mix-up between objects cannot pass.
        data = i.to_bytes(4, "big") + block[: size - 4]
        path = src_dir / f"f{i:03d}.bin"
        path.write_bytes(data)
        files.append((path, f"burst/f{i:03d}.bin"))
        expected[f"burst/f{i:03d}.bin"] = (size, hashlib.sha256(data).hexdigest())
        total += size
    del block
    assert total >= 512 * MiB
    staging = ram_dir / "staging"
    store = DigestStore()
    store.pause()
    at_staged: list[int] = []

    def on_event(event: UploadEvent) -> None:
        # STAGED runs in the submitting thread right after a file is staged: the peak moment.
        if event.kind is EventKind.STAGED:
            at_staged.append(staged_bytes(staging))

    rss_before = rss_bytes()
    up = Uploader(store, staging_dir=staging, max_staged_bytes=budget, on_event=on_event)
    errors: list[BaseException] = []

    def burst() -> None:
        try:
            for path, name in files:
                up.submit(path, name)
        except BaseException as exc:
            errors.append(exc)

    with Sampler(staging) as sampler:
        # Daemon, resumed() and close in finally: a failing assertion ends the test at once
        # instead of leaving the burst waiting on a held store.
        submitter = threading.Thread(target=burst, name="burst", daemon=True)
        try:
            with resumed(store):
                submitter.start()
                # The store holds every request, so the burst must stop once the next file
                # does not fit: after exactly `fits` files.
                used = [sum(sizes[:k]) for k in range(len(files) + 1)]
                fits = max(k for k in range(len(files) + 1) if used[k] <= budget)
                wait_until(lambda: len(at_staged) >= fits, what="the budget to fill")
                assert submitter.is_alive() and len(at_staged) == fits
                # All `fits` files sit in the folder: within one file of the budget, not above.
                assert used[fits] == at_staged[-1] > budget - sizes[fits]
            submitter.join(120)
            assert not submitter.is_alive()
        finally:
            up.close()
    assert errors == []
    assert len(at_staged) == len(files)
    assert store.digests == expected
    assert sampler.samples > 10
    assert sampler.max_staged <= budget, f"{sampler.max_staged} bytes staged at once"
    assert max(at_staged) <= budget
    # Memory stayed far below the half gigabyte that went through.
    assert sampler.max_rss - rss_before < 160 * MiB
    assert list((staging / "staged").iterdir()) == []


class HoldingStore(MemoryProvider):
    """A memory store that holds a chosen object's upload until the test releases it."""

    def __init__(self, held: str) -> None:
        super().__init__("m")
        self.held = held
        self.release = threading.Event()
        self.holding = threading.Event()

    async def put(self, name: str, data: FileSlice, *, overwrite: bool) -> PutResult:
        if name == self.held:
            self.holding.set()
            # Bounded: a test that fails before releasing must not hold a thread forever.
            await anyio.to_thread.run_sync(self.release.wait, 60, abandon_on_cancel=True)
        return await super().put(name, data, overwrite=overwrite)


def test_oversize_file_waits_for_the_queue_to_drain_then_is_staged_alone(
    tmp_path: Path,
) -> None:
    budget = 64 * 1024
    store = HoldingStore(held="big")
    store.pause()
    small = [tmp_path / f"s{i}.bin" for i in range(3)]
    for i, p in enumerate(small):
        p.write_bytes(bytes([i]) * 20_000)
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(5 * budget))
    later = tmp_path / "later.bin"
    later.write_bytes(b"L" * 1000)
    staged_with: dict[str, int] = {}
    events: list[tuple[EventKind, str]] = []
    up: Uploader

    def on_event(event: UploadEvent) -> None:
        events.append((event.kind, event.name))
        if event.kind is EventKind.STAGED:
            # Bytes staged besides this file at the moment it was staged.
            staged_with[event.name] = budget_used(up) - event.size

    up = Uploader(store, max_staged_bytes=budget, on_event=on_event, max_concurrency=2)
    submitted = {"big": threading.Event(), "later": threading.Event()}

    def submit(path: Path, name: str) -> None:
        up.submit(path, name)
        submitted[name].set()

    try:
        for i, p in enumerate(small):
            up.submit(p, f"small/{i}")
        t_big = threading.Thread(target=submit, args=(big, "big"), daemon=True)
        with resumed(store):
            t_big.start()
            wait_until(lambda: store.in_flight == 2, what="two small uploads to be held")
            assert not submitted["big"].wait(0.05), (
                "the oversize file was staged next to queued files"
            )
        t_big.join(30)
        assert submitted["big"].is_set()
        assert staged_with["big"] == 0, "the oversize file must be staged alone"
        # While it is staged (its upload held), a small file must wait for it: the budget holds.
        assert store.holding.wait(10)
        t_later = threading.Thread(target=submit, args=(later, "later"), daemon=True)
        t_later.start()
        assert not submitted["later"].wait(0.05)
        store.release.set()
        t_later.join(30)
        assert submitted["later"].is_set()
    finally:
        # Whatever failed above: nothing stays held, and close() does not wait on it.
        store.resume()
        store.release.set()
        up.close()
    assert events.index((EventKind.STAGED, "later")) > events.index((EventKind.DONE, "big"))
    for i in range(3):
        assert events.index((EventKind.STAGED, "big")) > events.index(
            (EventKind.DONE, f"small/{i}")
        )
    assert store.objects["big"] == big.read_bytes()
    assert store.objects["later"] == b"L" * 1000
    assert {f"small/{i}" for i in range(3)} <= set(store.objects)
