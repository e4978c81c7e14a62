"""The engine's seams, as the runners use them: build_engine with any Reporter, the Intake's
gate and withdraw, a borrowed staging folder."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from artifact_uploader import MemoryProvider, ProviderError, UploaderClosedError
from artifact_uploader._engine import build_engine
from artifact_uploader._errors import FailedUpload
from artifact_uploader._events import EventKind
from artifact_uploader._intake import EngineOptions, Intake, Prepared
from artifact_uploader._journal import Journal, load
from artifact_uploader._report import EventDetail, LocalReporter
from artifact_uploader._staging import Stager
from artifact_uploader._types import UploadResult
from tests.conftest import poll_until, wait_until

MakeFile = Callable[..., Path]


class Recorder:
    """A Reporter that keeps everything, as a pipe reporter would send it."""

    def __init__(self) -> None:
        self.counts: list[dict[str, int]] = []
        self.events: list[tuple[EventKind, str, dict[str, Any]]] = []
        self.failures: list[FailedUpload] = []
        self.ends: list[tuple[str, UploadResult | None, BaseException | None]] = []

    def count(self, **deltas: int) -> None:
        self.counts.append(deltas)

    def emit(self, kind: EventKind, name: str, size: int, **detail: Any) -> None:
        self.events.append((kind, name, dict(detail)))

    def add_failure(self, failure: FailedUpload) -> None:
        self.failures.append(failure)

    def ended(
        self, staged_id: str, result: UploadResult | None, error: BaseException | None
    ) -> None:
        self.ends.append((staged_id, result, error))


def _prepared(stager: Stager, path: Path, name: str) -> Prepared:
    return Prepared(name, stager.stage(path), overwrite=True)


@pytest.mark.asyncio
async def test_engine_reports_every_end_once_to_any_reporter(
    memory: MemoryProvider, make_file: MakeFile, tmp_path: Path
) -> None:
    stager = Stager(tmp_path / "staging")
    journal = Journal(stager.folder)
    recorder = Recorder()
    engine = build_engine(memory, EngineOptions(), stager, journal, recorder)
    await engine.open()
    good = _prepared(stager, make_file(b"good"), "good")
    bad = _prepared(stager, make_file(b"bad"), "bad")
    memory.inject(lambda op, name: ProviderError("refused") if name == "bad" else None, ops=["put"])
    ok = engine.enqueue(good)
    failed = engine.enqueue(bad)
    await engine.flush(30)
    assert (await ok).name == "good"
    with pytest.raises(ProviderError, match="refused"):
        await failed
    # An upload cancelled before its first step still ends, exactly once.
    late = _prepared(stager, make_file(b"late"), "late")
    engine.enqueue(late)
    await engine.aclose(0)
    ends = {staged_id: (result, error) for staged_id, result, error in recorder.ends}
    assert len(recorder.ends) == len(ends) == 3
    assert ends[good.staged.id][0] is not None and ends[good.staged.id][1] is None
    assert isinstance(ends[bad.staged.id][1], ProviderError)
    assert isinstance(ends[late.staged.id][1], TimeoutError)
    assert sorted(f.name for f in recorder.failures) == ["bad", "late"]
    assert sum(c.get("files_done", 0) for c in recorder.counts) == 1
    assert sum(c.get("files_failed", 0) for c in recorder.counts) == 2
    assert (EventKind.BYTES_SENT, "good", {"nbytes": 4}) in recorder.events
    assert engine.gate.state == "closed"
    with pytest.raises(UploaderClosedError):
        engine.enqueue(_prepared(stager, make_file(b"after"), "after"))
    # Failed copies are kept and named; the journal and folder stay their owner's to close.
    assert all(Path(str(f.staged_path)).exists() for f in recorder.failures)
    assert not good.staged.path.exists()
    journal.done("x" * 32)  # still open
    journal.close()
    stager.close()


def test_gate_close_waits_for_a_submission_then_refuses_new_ones(
    memory: MemoryProvider, tmp_path: Path
) -> None:
    intake = Intake(memory, Stager(tmp_path / "staging"), LocalReporter())
    inside, release = threading.Event(), threading.Event()

    def submitter() -> None:
        with intake.submitting("a"):
            inside.set()
            release.wait(30)

    thread = threading.Thread(target=submitter)
    thread.start()
    assert inside.wait(30)
    closer = threading.Thread(target=intake.stop_submits)
    closer.start()
    wait_until(lambda: intake.gate.submits_stopped)
    assert closer.is_alive()  # waits for the submission still staging
    release.set()
    closer.join(30)
    thread.join(30)
    assert not closer.is_alive()
    with pytest.raises(UploaderClosedError, match="'b'"):
        with intake.submitting("b"):
            pass
    intake.close_unopened()
    assert intake.gate.state == "closed"


def test_withdraw_ends_the_journal_entry_and_puts_a_moved_file_back(
    memory: MemoryProvider, make_file: MakeFile, tmp_path: Path
) -> None:
    staging = tmp_path / "staging"
    intake = Intake(memory, Stager(staging, mode="move"), LocalReporter())
    src = make_file(b"only copy")
    prepared = intake.prepare(src, "x", True, None)
    assert not src.exists()
    assert [e.name for e in load(staging)[0]] == ["x"]
    intake.withdraw(prepared, UploaderClosedError("refused"))
    assert src.read_bytes() == b"only copy"
    assert load(staging)[0] == []
    assert intake.reporter is not None
    intake.close_unopened()


def test_borrowed_folder_is_never_removed_nor_locked(tmp_path: Path) -> None:
    owner = Stager(tmp_path / "staging")
    assert owner.lock_fd is not None
    borrowed = Stager.borrowed(owner.folder)
    assert borrowed.lock_fd is None and borrowed.persistent
    assert borrowed.staged_dir == owner.staged_dir
    borrowed.close()
    assert owner.staged_dir.is_dir()
    owner.close()
    # Nothing held by the borrowed view: the folder can be taken again.
    again = Stager(tmp_path / "staging")
    again.close()


def test_event_detail_keys_match_upload_event() -> None:
    seen: list[Any] = []
    reporter = LocalReporter(seen.append)
    detail: EventDetail = {"nbytes": 3, "attempt": 2, "delay": 0.5, "error": None}
    reporter.emit(EventKind.RETRY, "n", 10, **detail)
    (event,) = seen
    assert (event.bytes, event.attempt, event.delay, event.error) == (3, 2, 0.5, None)
    reporter.count(files_queued=1, bytes_sent=5)
    totals = reporter.totals
    assert (totals.files_queued, totals.bytes_sent, totals.in_flight) == (1, 5, 1)


@pytest.mark.parametrize("bad", [0, -1, "4"])
def test_engine_options_refuse_bad_concurrency(bad: Any) -> None:
    with pytest.raises(ValueError, match="max_concurrency"):
        EngineOptions.of(bad, None, None, True)


@pytest.mark.asyncio
async def test_reporter_streams_end(memory: MemoryProvider) -> None:
    reporter = LocalReporter()
    reporter.attach(asyncio.get_running_loop())
    got: list[Any] = []

    async def consume() -> None:
        async for event in reporter.events():
            got.append(event.kind)

    task = asyncio.ensure_future(consume())
    await poll_until(lambda: reporter.subscribers == 1)
    reporter.emit(EventKind.QUEUED, "a", 0)
    reporter.end_streams()
    await asyncio.wait_for(task, 30)
    assert got == [EventKind.QUEUED]
