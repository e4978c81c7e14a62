"""AsyncUploader semantics on the memory and local providers."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from artifact_uploader import (
    AsyncUploader,
    EventKind,
    MemoryProvider,
    ObjectExistsError,
    PartPolicy,
    ProviderError,
    RetryPolicy,
    SourceFileError,
    StagingError,
    UploaderClosedError,
    UploadEvent,
    UploadFailedError,
    _resume,
)
from artifact_uploader._journal import Journal, load
from artifact_uploader._staging import Stager
from artifact_uploader._types import FileSlice, PartResult
from tests._pending import leave_pending
from tests.conftest import FAST_RETRY, resumed
from tests.conftest import poll_until as poll

pytestmark = pytest.mark.asyncio
MakeFile = Callable[..., Path]


async def test_submit_returns_after_staging_and_source_changes_do_not_leak(
    memory: MemoryProvider, make_file: MakeFile
) -> None:
    src = make_file(b"original bytes")
    memory.pause()
    async with AsyncUploader(memory) as up:
        # resumed(): a failing assertion must not leave close() waiting on held requests.
        with resumed(memory):
            handle = await up.submit(src, "a.bin")
            # Staged, not yet uploaded: the provider is holding every request.
            assert not handle.done()
            assert handle.staged_path.read_bytes() == b"original bytes"
            src.write_bytes(b"changed after submit")
            src.unlink()
        result = await handle
        assert not handle.staged_path.exists(), "staged copy must be deleted after upload"
    assert memory.objects["a.bin"] == b"original bytes"
    assert result.size == len(b"original bytes")
    assert result.uri == "memory://test/a.bin"


async def test_one_semaphore_caps_requests(memory: MemoryProvider, make_file: MakeFile) -> None:
    memory.pause()
    async with AsyncUploader(memory, max_concurrency=3) as up:
        with resumed(memory):
            handles = [await up.submit(make_file(b"x" * i), f"f{i}") for i in range(10)]
            await poll(lambda: memory.in_flight == 3)
        await asyncio.gather(*handles)
    assert memory.max_in_flight == 3
    assert len(memory.objects) == 10


async def test_semaphore_caps_parts_of_multipart_uploads_too(
    memory: MemoryProvider, make_file: MakeFile
) -> None:
    parts = PartPolicy(threshold=1000, part_size=100)

    def hold_after_create(op: str, name: str) -> None:
        # Once the last upload exists, hold every later request: the engine fills all its
        # slots with parts. (Not earlier: the next submit may wait for its create.)
        if name == "b":
            memory.pause()

    memory.inject(hold_after_create, times=None, ops=["create_multipart"])
    async with AsyncUploader(memory, max_concurrency=4, parts=parts) as up:
        with resumed(memory):
            a = await up.submit(make_file(os.urandom(1500)), "a")
            b = await up.submit(make_file(os.urandom(1500)), "b")
            await poll(lambda: memory.in_flight == 4)
        await asyncio.gather(a, b)
    assert memory.max_in_flight == 4
    assert memory.count("put_part") == 30


async def test_same_name_later_submission_wins(memory: MemoryProvider, make_file: MakeFile) -> None:
    async with AsyncUploader(memory, max_concurrency=8) as up:
        for i in range(30):
            await up.submit(make_file(f"version {i}".encode()), "same.txt")
        await up.flush()
    assert memory.objects["same.txt"] == b"version 29"


async def test_same_name_later_wins_even_when_earlier_is_slower(
    memory: MemoryProvider, make_file: MakeFile
) -> None:
    # The first put of "k" fails transiently once, so it finishes later than it would; the
    # second submission must still be what remains.
    memory.inject(ProviderError("flaky", transient=True), times=1)
    async with AsyncUploader(memory, max_concurrency=4, retry=FAST_RETRY) as up:
        await up.submit(make_file(b"old"), "k")
        await up.submit(make_file(b"new"), "k")
        await up.flush()
    assert memory.objects["k"] == b"new"


async def test_transient_failure_overcome_is_not_reported(
    memory: MemoryProvider, make_file: MakeFile
) -> None:
    memory.inject(ProviderError("503 SlowDown", transient=True), times=2)
    retries: list[UploadEvent] = []
    async with AsyncUploader(
        memory,
        retry=FAST_RETRY,
        on_event=lambda e: retries.append(e) if e.kind is EventKind.RETRY else None,
    ) as up:
        result = await up.upload(make_file(b"data"), "r.bin")
        await up.flush()  # must not raise
    assert result.size == 4
    assert memory.count("put") == 3
    assert [e.attempt for e in retries] == [1, 2]


async def test_retries_are_bounded(memory: MemoryProvider, make_file: MakeFile) -> None:
    memory.inject(ProviderError("503", transient=True), times=None)
    policy = RetryPolicy(attempts=3, base_delay=0, max_delay=0)
    up = AsyncUploader(memory, retry=policy)
    await up.open()
    handle = await up.submit(make_file(b"data"), "never.bin")
    with pytest.raises(ProviderError) as info:
        await handle
    assert info.value.attempts == 3
    assert memory.count("put") == 3
    with pytest.raises(UploadFailedError) as failed:
        await up.aclose()
    assert [f.name for f in failed.value.failures] == ["never.bin"]


async def test_permanent_error_is_not_retried(memory: MemoryProvider, make_file: MakeFile) -> None:
    memory.inject(ProviderError("403 AccessDenied", transient=False), times=None)
    async with AsyncUploader(memory, retry=FAST_RETRY) as up:
        await up.submit(make_file(b"data"), "denied.bin")
        with pytest.raises(UploadFailedError) as info:
            await up.flush()
    assert memory.count("put") == 1
    (failure,) = info.value.failures
    assert failure.name == "denied.bin"
    assert failure.staged_path is not None and Path(failure.staged_path).exists()
    assert Path(failure.staged_path).read_bytes() == b"data"
    assert "denied.bin" in str(info.value) and failure.staged_path in str(info.value)


async def test_failures_are_reported_once(memory: MemoryProvider, make_file: MakeFile) -> None:
    memory.inject(ProviderError("nope"), times=1)
    async with AsyncUploader(memory) as up:
        await up.submit(make_file(b"1"), "one")
        with pytest.raises(UploadFailedError):
            await up.flush()
        await up.flush()  # the same failure is not raised twice
        await up.upload(make_file(b"2"), "two")
    assert "two" in memory.objects and "one" not in memory.objects


async def test_multipart_failure_aborts_upload(memory: MemoryProvider, make_file: MakeFile) -> None:
    memory.inject(ProviderError("part broke"), ops=["put_part"], times=1)
    parts = PartPolicy(threshold=100, part_size=50)
    async with AsyncUploader(memory, parts=parts) as up:
        handle = await up.submit(make_file(os.urandom(400)), "big")
        with pytest.raises(ProviderError, match="part broke"):
            await handle
        up._take_failures()
    assert memory.multipart_uploads == {}
    assert memory.count("abort_multipart") == 1
    assert "big" not in memory.objects


async def test_overwrite_false(memory: MemoryProvider, make_file: MakeFile) -> None:
    async with AsyncUploader(memory) as up:
        await up.upload(make_file(b"1"), "x", overwrite=False)
        with pytest.raises(ObjectExistsError):
            await up.upload(make_file(b"2"), "x", overwrite=False)
        up._take_failures()
    assert memory.objects["x"] == b"1"


async def test_submit_after_close_raises(memory: MemoryProvider, make_file: MakeFile) -> None:
    up = AsyncUploader(memory)
    async with up:
        pass
    with pytest.raises(UploaderClosedError):
        await up.submit(make_file(), "late")
    await up.aclose()  # idempotent


async def test_bad_path_raises_at_submit(memory: MemoryProvider, tmp_path: Path) -> None:
    async with AsyncUploader(memory) as up:
        with pytest.raises(SourceFileError, match="no such file"):
            await up.submit(tmp_path / "missing.pt", "m")
        with pytest.raises(SourceFileError, match="is a directory"):
            await up.submit(tmp_path, "d")
        assert list((up.staging_folder / "staged").iterdir()) == []


async def test_close_timeout_cancels_and_lists_unfinished(
    memory: MemoryProvider, make_file: MakeFile
) -> None:
    memory.pause()
    up = AsyncUploader(memory)
    await up.open()
    await up.submit(make_file(b"stuck"), "stuck.bin")
    await poll(lambda: memory.in_flight == 1)
    loop = asyncio.get_running_loop()
    start = loop.time()
    with resumed(memory), pytest.raises(UploadFailedError) as info:
        await up.aclose(timeout=0.2)
    assert loop.time() - start < 5
    (failure,) = info.value.failures
    assert failure.name == "stuck.bin"
    assert failure.staged_path and Path(failure.staged_path).read_bytes() == b"stuck"


async def test_close_at_once_reports_an_upload_that_never_started(
    memory: MemoryProvider, make_file: MakeFile
) -> None:
    # close(timeout=0) straight after submit cancels the task before its first step; the upload
    # must still be reported (future failed, listed by close, staged copy kept), never lost.
    up = AsyncUploader(memory)
    await up.open()
    handle = await up.submit(make_file(b"early"), "early.bin")
    with pytest.raises(UploadFailedError) as info:
        await up.aclose(timeout=0)
    (failure,) = info.value.failures
    assert failure.name == "early.bin"
    assert failure.staged_path and Path(failure.staged_path).read_bytes() == b"early"
    assert handle.done()
    with pytest.raises(TimeoutError, match=r"early\.bin"):
        handle.result()
    assert memory.count("put") == 0


async def test_events_and_totals(memory: MemoryProvider, make_file: MakeFile) -> None:
    seen: list[UploadEvent] = []
    async with AsyncUploader(memory) as up:
        collector = asyncio.ensure_future(_collect(up))
        await poll(lambda: up._reporter.subscribers == 1)  # the iterator has subscribed
        for i in range(3):
            await up.submit(make_file(b"abc"), f"e{i}")
        await up.flush()
        totals = up.totals
    seen = await collector
    kinds = [e.kind for e in seen]
    assert kinds.count(EventKind.DONE) == 3
    assert kinds.count(EventKind.STAGED) == 3
    assert totals.files_done == 3 and totals.bytes_sent == 9 and totals.in_flight == 0


async def _collect(up: AsyncUploader) -> list[UploadEvent]:
    return [e async for e in up.events()]


async def test_resume_does_not_let_a_stale_entry_replace_a_newer_submission(
    memory: MemoryProvider, make_file: MakeFile, tmp_path: Path
) -> None:
    staging = tmp_path / "staging"
    (stale,) = leave_pending(staging, {"latest.pt": b"OLD checkpoint of the crashed run"})
    async with AsyncUploader(memory, staging_dir=staging) as up:
        await up.submit(make_file(b"NEW checkpoint"), "latest.pt")
        report = await up.resume()
    assert memory.objects["latest.pt"] == b"NEW checkpoint"
    assert report.superseded == ["latest.pt"] and report.uploaded == []
    assert not stale.exists()
    assert load(staging) == ([], [])


class _HeldParts(MemoryProvider):
    """Holds every part until the test lets go."""

    def __init__(self) -> None:
        super().__init__("held")
        self.parts_gate = asyncio.Event()

    async def put_part(
        self, name: str, upload_id: str, part_number: int, data: FileSlice
    ) -> PartResult:
        await self.parts_gate.wait()
        return await super().put_part(name, upload_id, part_number, data)


async def test_resume_never_aborts_a_multipart_upload_of_this_run(
    make_file: MakeFile, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    staging = tmp_path / "staging"
    leave_pending(staging, {"big": b"o" * 400})
    store = _HeldParts()
    listing_reached, listing_gate = asyncio.Event(), asyncio.Event()
    real_listing = _resume.unrecorded_uploads

    async def slow_listing(provider: object, name: str) -> list[str]:
        # A listing that takes a round trip (as on S3): this run's upload starts meanwhile.
        listing_reached.set()
        await listing_gate.wait()
        return await real_listing(provider, name)

    monkeypatch.setattr(_resume, "unrecorded_uploads", slow_listing)
    parts = PartPolicy(threshold=100, part_size=50)
    async with AsyncUploader(store, staging_dir=staging, parts=parts) as up:
        resuming = asyncio.ensure_future(up.resume())
        await listing_reached.wait()
        handle = await up.submit(make_file(b"n" * 400), "big")
        await poll(lambda: len(store.multipart_uploads) == 1)
        listing_gate.set()
        store.parts_gate.set()
        report = await resuming
        result = await handle
    assert store.objects["big"] == b"n" * 400 and result.size == 400
    assert report.superseded == ["big"] and report.uploaded == []
    assert store.count("abort_multipart") == 0


async def test_submit_losing_the_race_with_close_leaves_no_journal_entry(
    memory: MemoryProvider, make_file: MakeFile, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    staging = tmp_path / "staging"
    in_place, let_go = threading.Event(), threading.Event()
    real_place = Stager._place

    def held_place(self: Stager, src: Path, dest: Path, mode: str) -> int | None:
        if src.name == "late.bin":
            in_place.set()
            assert let_go.wait(timeout=30), "never let go"
        return real_place(self, src, dest, mode)

    monkeypatch.setattr(Stager, "_place", held_place)
    memory.pause()
    up = AsyncUploader(memory, staging_dir=staging)
    await up.open()
    try:
        with resumed(memory):
            await up.submit(make_file(b"a"), "a")
            late = asyncio.ensure_future(up.submit(make_file(b"b", name="late.bin"), "late"))
            await poll(in_place.is_set)
            closing = asyncio.ensure_future(up.aclose())
            await poll(lambda: up._intake.gate.state == "closing")
            let_go.set()  # staging finishes after close began: the submit is refused
            with pytest.raises(UploaderClosedError, match="late"):
                await late
    finally:
        # Also on failure: the held staging thread must not outlive the test.
        let_go.set()
    await closing
    assert memory.objects == {"a": b"a"}
    assert load(staging) == ([], [])
    assert list((staging / "staged").iterdir()) == []


async def test_multipart_upload_is_aborted_when_its_id_cannot_be_journalled(
    memory: MemoryProvider, make_file: MakeFile, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def journal_full(self: Journal, entry_id: str, upload_id: str) -> None:
        raise StagingError("could not write the journal: No space left on device", path=self.path)

    monkeypatch.setattr(Journal, "multipart", journal_full)
    parts = PartPolicy(threshold=100, part_size=50)
    async with AsyncUploader(memory, staging_dir=tmp_path / "staging", parts=parts) as up:
        handle = await up.submit(make_file(os.urandom(400)), "big")
        with pytest.raises(StagingError, match="No space"):
            await handle
        up._take_failures()
    assert memory.multipart_uploads == {}
    assert memory.count("abort_multipart") == 1
