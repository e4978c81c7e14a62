"""Crash journal and resume: a process SIGKILLed mid-upload loses nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from artifact_uploader import MemoryProvider, Uploader, UploaderClosedError, UploadFailedError
from artifact_uploader._journal import JOURNAL_FILE, Journal, JournalEntry, load
from tests._pending import leave_pending
from tests.conftest import read_line, reaped, resumed, wait_until


def test_sigkill_mid_upload_then_resume(tmp_path: Path) -> None:
    staging = tmp_path / "staging"
    src_dir = tmp_path / "src"
    src_dir.mkdir()
    expected = {}
    for i in range(50):
        data = os.urandom(1000 + i)
        (src_dir / f"f{i}.bin").write_bytes(data)
        expected[f"obj/f{i}.bin"] = data
    # The child stages all 50 into a persistent folder against a store that never finishes a
    # request, reports "staged", and is killed.
    script = textwrap.dedent(
        f"""
        import sys
        from artifact_uploader import MemoryProvider, Uploader
        store = MemoryProvider("hang")
        store.pause()
        up = Uploader(store, staging_dir={str(staging)!r})
        for i in range(50):
            up.submit({str(src_dir)!r} + f"/f{{i}}.bin", f"obj/f{{i}}.bin")
        print("staged", flush=True)
        sys.stdin.read()
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    # reaped(): killed and collected even when the child never reports.
    with reaped(proc):
        assert proc.stdout is not None
        assert read_line(proc.stdout).strip() == "staged"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    pending, problems = load(staging)
    assert len(pending) == 50 and problems == []
    # A crash mid-append leaves a truncated line: reported and skipped, never fatal.
    with open(staging / JOURNAL_FILE, "a") as f:
        f.write('{"op": "pending", "id": "trunc')
    # The sources are gone: resume must upload from the staged copies.
    for p in src_dir.iterdir():
        p.unlink()
    store = MemoryProvider("resumed")
    report = Uploader.resume(staging, store)
    assert len(report.uploaded) == 50
    assert len(report.skipped_lines) == 1 and "corrupt" in report.skipped_lines[0]
    assert store.objects == expected
    assert load(staging) == ([], [])
    assert list((staging / "staged").iterdir()) == []


def test_pending_entries_survive_a_run_that_does_not_resume(tmp_path: Path) -> None:
    staging = tmp_path / "staging"
    src = tmp_path / "a.txt"
    src.write_bytes(b"a")
    store = MemoryProvider("m")
    store.pause()
    up = Uploader(store, staging_dir=staging)
    with resumed(store):
        up.submit(src, "a.txt")
        wait_until(lambda: store.in_flight == 1)
        with pytest.raises(UploadFailedError, match=r"a\.txt"):
            up.close(timeout=0.1)
    # Another run on the same folder, not resuming, must keep the entry journalled.
    with Uploader(MemoryProvider("other"), staging_dir=staging) as other:
        assert [e.name for e in other._engine.pending_from_previous_run] == ["a.txt"]
    entries, _ = load(staging)
    assert [e.name for e in entries] == ["a.txt"]
    lines = (staging / JOURNAL_FILE).read_text().splitlines()
    assert json.loads(lines[0])["name"] == "a.txt"


def test_staged_files_are_private(tmp_path: Path) -> None:
    staging = tmp_path / "staging"
    src = tmp_path / "s.txt"
    src.write_bytes(b"secret weights")
    store = MemoryProvider("m")
    store.pause()
    with Uploader(store, staging_dir=staging) as up:
        fut = up.submit(src, "s")
        staged = next((staging / "staged").iterdir())
        assert staged.stat().st_mode & 0o777 == 0o600
        assert (staging / "staged").stat().st_mode & 0o777 == 0o700
        store.resume()
        fut.result(timeout=10)


def test_resume_with_a_full_byte_budget_does_not_deadlock(tmp_path: Path) -> None:
    staging = tmp_path / "staging"
    objects = {f"obj{i}": bytes([i]) * 1000 for i in range(3)}
    leave_pending(staging, objects)
    store = MemoryProvider("m")
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["report"] = Uploader.resume(staging, store, max_staged_bytes=1500)
        except BaseException as exc:
            outcome["error"] = exc

    # A thread, so a deadlocked resume fails the test instead of hanging the suite.
    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(60)
    assert not worker.is_alive(), "resume deadlocked on the staging byte budget"
    assert "error" not in outcome, outcome
    assert store.objects == objects
    assert load(staging) == ([], [])


def test_a_closed_journal_refuses_a_pending_record(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.close()
    entry = JournalEntry(id="x", name="n", staged="staged/x-n", size=1, overwrite=True)
    with pytest.raises(UploaderClosedError, match="closed"):
        journal.pending(entry)
    journal.done("x")  # only logged: the object is durable whatever the journal says
    assert load(tmp_path) == ([], [])
