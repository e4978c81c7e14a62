"""Retries under real faults: the S3 provider against moto through a fault-injecting proxy.

The proxy (tests/servers/fault_proxy.py) fails requests with 500, 503 SlowDown, 429 +
Retry-After, connection resets in the middle of a body, stalls and a permanent 403; everything
else reaches moto. Objects are read back from moto directly, never through the proxy.
Also the stall watchdog on the memory provider.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from artifact_uploader import (
    AsyncUploader,
    ConfigError,
    EventKind,
    MemoryProvider,
    PermissionDeniedError,
    ProviderError,
    RetryPolicy,
    StallTimeoutError,
    UploadEvent,
    UploadFailedError,
)
from artifact_uploader._retry import _ACTIVITY, StallWatchdog, note_progress
from artifact_uploader._types import FileSlice, PutResult
from tests.servers.fault_proxy import (
    PREFIX,
    SMALL_PARTS,
    Fault,
    FaultProxy,
    proxied_s3_uploader,
)
from tests.servers.moto import MotoServer, list_multipart_uploads, read_s3_object

MiB = 1024 * 1024


def retries(events: list[UploadEvent]) -> list[UploadEvent]:
    return [e for e in events if e.kind is EventKind.RETRY]


def write_files(tmp_path: Path, sizes: list[int], seed: int) -> dict[str, bytes]:
    """Files named ``f-<i>.bin`` with random contents; returns name -> bytes."""
    rng = random.Random(seed)
    src = tmp_path / "src"
    src.mkdir()
    files = {}
    for i, size in enumerate(sizes):
        data = rng.randbytes(size)
        (src / f"f-{i:03d}.bin").write_bytes(data)
        files[f"f-{i:03d}.bin"] = data
    return files


# -- transient faults ----------------------------------------------------------------------


@pytest.mark.asyncio
async def test_20_percent_transient_faults_200_uploads_all_land(
    moto_server: MotoServer,
    moto_s3: Any,
    s3_bucket: str,
    fault_proxy: FaultProxy,
    tmp_path: Path,
) -> None:
    rng = random.Random(4)
    sizes = [rng.randrange(0, 32 * 1024) for _ in range(190)]
    sizes += [5 * MiB + rng.randrange(1, 100 * 1024) for _ in range(10)]
    files = write_files(tmp_path, sizes, seed=5)
    events: list[UploadEvent] = []
    # Ten attempts. A one-request attempt fails all of them with probability 0.2**10 (1e-7).
    # Completing a multipart upload on moto takes two requests per attempt (moto leaves the
    # checksum out of Complete's answer, so a HEAD asks for it, and a retry resends Complete
    # before the HEAD): 0.36 per attempt, 0.36**10 (4e-5) for each of the 10 large files.
    # Retry-After asks for 1 s; max_delay caps it so the test stays fast.
    policy = RetryPolicy(attempts=10, base_delay=0.01, max_delay=0.05)
    async with proxied_s3_uploader(
        moto_server, fault_proxy, s3_bucket, policy, events, max_concurrency=8, parts=SMALL_PARTS
    ) as up:
        # Faults start once the uploader is open: opening checks the bucket and does not retry.
        fault_proxy.set_random(0.2, seed=20, retry_after="1")
        handles = [await up.submit(tmp_path / "src" / name, name) for name in files]
        await up.flush()
    assert all(h.done() for h in handles)

    for name, data in files.items():
        assert read_s3_object(moto_s3, s3_bucket, f"{PREFIX}/{name}") == data, name
    assert list_multipart_uploads(moto_s3, s3_bucket) == []

    counts = fault_proxy.counts
    multipart_requests = fault_proxy.seen("uploadId=")
    assert multipart_requests, "no multipart request went through the proxy"
    for kind in ("500", "503", "429", "reset"):
        assert counts[kind] >= 1, counts
    injected = fault_proxy.injected
    total = injected + counts["forwarded"]
    assert 0.1 * total <= injected <= 0.3 * total, counts
    # Every injected error response cost exactly one retry of the policy. A reset on a reused
    # keep-alive connection may instead be absorbed by aiohttp, which resends an idempotent
    # request (PUT) once by itself: resets cost at most one retry each.
    retried = retries(events)
    assert all(isinstance(e.error, ProviderError) and e.error.transient for e in retried)
    by_status = Counter(e.error.status for e in retried if isinstance(e.error, ProviderError))
    assert len(retried) == by_status.total()
    for status in (500, 503, 429):
        assert by_status[status] == counts[str(status)], (by_status, counts)
    assert by_status[None] <= counts["reset"], (by_status, counts)
    # Retry-After (1 s) was honoured up to max_delay.
    throttled = [e for e in retried if getattr(e.error, "status", None) == 429]
    assert all(getattr(e.error, "retry_after", None) == 1.0 for e in throttled)
    assert all(e.delay == pytest.approx(0.05) for e in throttled)


@pytest.mark.asyncio
async def test_retry_after_is_honoured(
    moto_server: MotoServer,
    moto_s3: Any,
    s3_bucket: str,
    fault_proxy: FaultProxy,
    tmp_path: Path,
) -> None:
    path = tmp_path / "a.bin"
    path.write_bytes(b"throttled")
    events: list[UploadEvent] = []
    policy = RetryPolicy(attempts=3, base_delay=0.0, max_delay=5.0)
    async with proxied_s3_uploader(moto_server, fault_proxy, s3_bucket, policy, events) as up:
        fault_proxy.script(Fault("429", retry_after="1"), match="a.bin", method="PUT")
        await (await up.submit(path, "a.bin"))
    (event,) = retries(events)
    assert event.delay == 1.0
    assert fault_proxy.counts["429"] == 1
    assert read_s3_object(moto_s3, s3_bucket, f"{PREFIX}/a.bin") == b"throttled"


@pytest.mark.asyncio
async def test_connection_reset_mid_body_is_retried(
    moto_server: MotoServer,
    moto_s3: Any,
    s3_bucket: str,
    fault_proxy: FaultProxy,
    tmp_path: Path,
) -> None:
    data = os.urandom(2 * MiB)  # over 1 MiB: botocore sends Expect: 100-continue
    path = tmp_path / "reset.bin"
    path.write_bytes(data)
    events: list[UploadEvent] = []
    policy = RetryPolicy(attempts=4, base_delay=0.0, max_delay=0.0)
    async with proxied_s3_uploader(moto_server, fault_proxy, s3_bucket, policy, events) as up:
        # Two in a row: aiohttp may resend a PUT once by itself, never twice.
        fault_proxy.script(Fault("reset"), Fault("reset"), match="reset.bin", method="PUT")
        await (await up.submit(path, "reset.bin"))
    assert read_s3_object(moto_s3, s3_bucket, f"{PREFIX}/reset.bin") == data
    assert fault_proxy.counts["reset"] == 2
    assert len(fault_proxy.seen("reset.bin")) == 3
    retried = retries(events)
    assert 1 <= len(retried) <= 2
    for event in retried:
        assert isinstance(event.error, ProviderError)
        assert event.error.transient and event.error.status is None
        assert "reset.bin" in str(event.error)


# -- a permanent error ---------------------------------------------------------------------


@pytest.mark.asyncio
async def test_permanent_403_is_reported_once_and_not_retried(
    moto_server: MotoServer,
    moto_s3: Any,
    s3_bucket: str,
    fault_proxy: FaultProxy,
    tmp_path: Path,
) -> None:
    files = write_files(tmp_path, [1000] * 6 + [5 * MiB + 10], seed=7)
    denied, denied_big = "f-002.bin", "f-006.bin"
    fault_proxy.deny(f"{PREFIX}/{denied}")
    fault_proxy.deny(f"{PREFIX}/{denied_big}")
    events: list[UploadEvent] = []
    policy = RetryPolicy(attempts=5, base_delay=0.0, max_delay=0.0)
    async with proxied_s3_uploader(
        moto_server, fault_proxy, s3_bucket, policy, events, parts=SMALL_PARTS
    ) as up:
        handles = {name: await up.submit(tmp_path / "src" / name, name) for name in files}
        with pytest.raises(UploadFailedError) as info:
            await up.flush()

    failed = {f.name: f for f in info.value.failures}
    assert set(failed) == {denied, denied_big}
    for name in (denied, denied_big):
        cause = failed[name].cause
        assert isinstance(cause, PermissionDeniedError)
        assert cause.attempts == 1
        assert cause.name == name
        assert f"{PREFIX}/{name}" in str(cause)
        assert name in str(info.value)
        with pytest.raises(PermissionDeniedError):
            handles[name].result()
        # One request each: PutObject, or CreateMultipartUpload for the big one.
        assert len(fault_proxy.seen(f"{PREFIX}/{name}")) == 1
    assert fault_proxy.counts["403"] == 2
    assert retries(events) == []
    for name, data in files.items():
        if name not in failed:
            assert read_s3_object(moto_s3, s3_bucket, f"{PREFIX}/{name}") == data
    assert list_multipart_uploads(moto_s3, s3_bucket) == []


# -- stalls --------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_stalled_request_is_aborted_and_retried(
    moto_server: MotoServer,
    moto_s3: Any,
    s3_bucket: str,
    fault_proxy: FaultProxy,
    tmp_path: Path,
) -> None:
    path = tmp_path / "held.bin"
    path.write_bytes(b"x" * 50_000)
    events: list[UploadEvent] = []
    policy = RetryPolicy(attempts=3, base_delay=0.0, max_delay=0.0, stall_timeout=2.0)
    async with proxied_s3_uploader(moto_server, fault_proxy, s3_bucket, policy, events) as up:
        # The whole body is read, then no answer ever comes.
        fault_proxy.script(Fault("stall", body_fraction=1.0), match="held.bin", method="PUT")
        result = await (await up.submit(path, "held.bin"))
    assert result.size == 50_000
    assert read_s3_object(moto_s3, s3_bucket, f"{PREFIX}/held.bin") == b"x" * 50_000
    assert fault_proxy.counts["stall"] == 1
    assert len(fault_proxy.seen("held.bin")) == 2
    stalls = [e for e in retries(events) if isinstance(e.error, StallTimeoutError)]
    assert len(stalls) == 1
    error = stalls[0].error
    assert isinstance(error, StallTimeoutError)
    assert error.transient and error.seconds == 2.0 and error.name == "held.bin"
    assert "'held.bin' made no progress for 2s" in str(error)


@pytest.mark.asyncio
async def test_part_stalled_mid_body_is_aborted_and_retried(
    moto_server: MotoServer,
    moto_s3: Any,
    s3_bucket: str,
    fault_proxy: FaultProxy,
    tmp_path: Path,
) -> None:
    data = os.urandom(5 * MiB + 1234)
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    events: list[UploadEvent] = []
    policy = RetryPolicy(attempts=3, base_delay=0.0, max_delay=0.0, stall_timeout=2.0)
    async with proxied_s3_uploader(
        moto_server, fault_proxy, s3_bucket, policy, events, parts=SMALL_PARTS
    ) as up:
        # A fifth of part 1's body is read, then the proxy stops reading.
        fault_proxy.script(Fault("stall", body_fraction=0.2), match="partNumber=1", method="PUT")
        await (await up.submit(path, "big.bin"))
    assert read_s3_object(moto_s3, s3_bucket, f"{PREFIX}/big.bin") == data
    assert list_multipart_uploads(moto_s3, s3_bucket) == []
    assert fault_proxy.counts["stall"] == 1
    assert len(fault_proxy.seen("partNumber=1")) == 2
    stalls = [e for e in retries(events) if isinstance(e.error, StallTimeoutError)]
    assert len(stalls) == 1
    assert "part 1/2 of 'big.bin'" in str(stalls[0].error)


@pytest.mark.asyncio
async def test_a_silent_complete_is_left_to_the_s3_read_timeout(
    moto_server: MotoServer,
    moto_s3: Any,
    s3_bucket: str,
    fault_proxy: FaultProxy,
    tmp_path: Path,
) -> None:
    # CompleteMultipartUpload is guarded by aiohttp's read timeout, which every byte restarts
    # (S3 trickles whitespace while assembling a large upload): the watchdog, which cannot see
    # those bytes, holds off, and the provider's own timeout ends the silent attempt.
    data = os.urandom(5 * MiB + 1)
    path = tmp_path / "done.bin"
    path.write_bytes(data)
    events: list[UploadEvent] = []
    # Margins a loaded machine keeps: parts through the proxy never idle 2 s, and the read
    # timeout (4 s) is well past the stall timeout the watchdog would have used.
    policy = RetryPolicy(attempts=3, base_delay=0.0, max_delay=0.0, stall_timeout=2.0)
    async with proxied_s3_uploader(
        moto_server,
        fault_proxy,
        s3_bucket,
        policy,
        events,
        options={"read_timeout": 4.0},
        parts=SMALL_PARTS,
    ) as up:
        fault_proxy.script(Fault("stall", body_fraction=1.0), match="uploadId=", method="POST")
        await (await up.submit(path, "done.bin"))
    assert read_s3_object(moto_s3, s3_bucket, f"{PREFIX}/done.bin") == data
    assert fault_proxy.counts["stall"] == 1
    completes = [e for e in retries(events) if "CompleteMultipartUpload" in str(e.error)]
    assert len(completes) == 1
    error = completes[0].error
    assert isinstance(error, ProviderError) and not isinstance(error, StallTimeoutError)
    assert error.transient and "Timeout" in str(error)
    assert not any("complete multipart" in str(e.error) for e in retries(events))


# -- the watchdog on the memory provider ---------------------------------------------------


@pytest.mark.asyncio
async def test_stall_on_every_attempt_fails_with_stall_error(
    memory: MemoryProvider, make_file: Callable[..., Path]
) -> None:
    path = make_file(b"never")
    policy = RetryPolicy(attempts=2, base_delay=0.0, max_delay=0.0, stall_timeout=0.2)
    memory.pause()
    try:
        async with AsyncUploader(memory, retry=policy) as up:
            handle = await up.submit(path, "stuck/obj.bin")
            with pytest.raises(UploadFailedError) as info:
                await up.flush()
    finally:
        memory.resume()
    (failure,) = info.value.failures
    assert failure.name == "stuck/obj.bin"
    assert isinstance(failure.cause, StallTimeoutError)
    assert failure.cause.attempts == 2
    assert failure.cause.uri == "memory://test/stuck/obj.bin"
    assert "'stuck/obj.bin' made no progress for 0.2s" in str(info.value)
    assert handle.done()
    assert memory.count("put") == 2
    assert "stuck/obj.bin" not in memory.objects


class _SlowButMoving(MemoryProvider):
    """Puts that take ``steps`` ticks ``interval`` apart, reporting progress at each."""

    def __init__(self, steps: int, interval: float) -> None:
        super().__init__("slow")
        self.steps = steps
        self.interval = interval

    async def put(self, name: str, data: FileSlice, *, overwrite: bool) -> PutResult:
        for _ in range(self.steps):
            # Simulated transfer time (not synchronisation): a slow link that keeps moving.
            await asyncio.sleep(self.interval)
            note_progress()
        return await super().put(name, data, overwrite=overwrite)


@pytest.mark.asyncio
async def test_progress_keeps_a_slow_request_alive(make_file: Callable[..., Path]) -> None:
    # 1.5 s in all, but never more than 0.05 s without progress: the 1 s watchdog never fires
    # (a 20x margin for a loaded machine).
    provider = _SlowButMoving(steps=30, interval=0.05)
    events: list[UploadEvent] = []
    policy = RetryPolicy(attempts=1, stall_timeout=1.0)
    async with AsyncUploader(provider, retry=policy, on_event=events.append) as up:
        await (await up.submit(make_file(b"slow"), "slow.bin"))
    assert provider.objects["slow.bin"] == b"slow"
    assert retries(events) == []


@pytest.mark.asyncio
async def test_waiting_for_a_slot_is_not_a_stall(make_file: Callable[..., Path]) -> None:
    # One slot: the second upload queues behind the first for longer than stall_timeout.
    provider = _SlowButMoving(steps=24, interval=0.05)  # 1.2 s each, 0.05 s between ticks
    policy = RetryPolicy(attempts=1, stall_timeout=1.0)
    async with AsyncUploader(provider, retry=policy, max_concurrency=1) as up:
        first = await up.submit(make_file(b"1"), "one")
        second = await up.submit(make_file(b"2"), "two")
        await up.flush()
    assert first.result().size == second.result().size == 1
    assert provider.objects == {"one": b"1", "two": b"2"}


@pytest.mark.asyncio
async def test_a_cancellation_from_elsewhere_is_not_a_stall() -> None:
    watchdog = StallWatchdog(60.0)
    started = asyncio.Event()

    async def forever() -> None:
        started.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(watchdog.run(forever, what="PUT 'x'"))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


@pytest.mark.asyncio
async def test_the_watchdog_wins_only_its_own_cancellation() -> None:
    # Stalled and cancelled from elsewhere at once: the outside cancellation is what surfaces.
    watchdog = StallWatchdog(0.1)
    started = asyncio.Event()

    async def forever() -> None:
        started.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(watchdog.run(forever, what="PUT 'x'"))
    await started.wait()
    (clock,) = watchdog._active
    clock.last -= 1.0  # idle for a second already
    watchdog._scan()
    assert clock.fired
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_note_progress_outside_an_attempt_is_harmless() -> None:
    note_progress()
    assert _ACTIVITY.get() is None


@pytest.mark.parametrize("bad", [0, -1.0, float("inf"), float("nan"), "10", True])
def test_stall_timeout_must_be_a_positive_finite_number(bad: object) -> None:
    with pytest.raises(ConfigError, match=r"RetryPolicy\.stall_timeout") as info:
        RetryPolicy(stall_timeout=bad)  # type: ignore[arg-type]
    assert repr(bad) in str(info.value)


def test_stall_timeout_defaults_and_none() -> None:
    assert RetryPolicy().stall_timeout == 120.0
    assert RetryPolicy(stall_timeout=None).stall_timeout is None


@pytest.mark.asyncio
async def test_no_watchdog_with_stall_timeout_none(
    memory: MemoryProvider, make_file: Callable[..., Path]
) -> None:
    async with AsyncUploader(memory, retry=RetryPolicy(stall_timeout=None)) as up:
        assert up._engine is not None and up._engine.runner.watchdog is None
        await (await up.submit(make_file(b"plain"), "plain"))
    assert memory.objects == {"plain": b"plain"}
