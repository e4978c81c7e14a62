"""Crash journal and resume: a process SIGKILLed mid-upload loses nothing."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from artifact_uploader import (
    Checksum,
    MemoryProvider,
    ObjectInfo,
    Uploader,
    UploaderClosedError,
    UploadFailedError,
)
from artifact_uploader._checksums import digest
from artifact_uploader._journal import JOURNAL_FILE, Journal, JournalEntry, load
from artifact_uploader._resume import already_stored, unrecorded_uploads
from artifact_uploader.providers._protocol import MultipartListing
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
        assert [e.name for e in other._intake.inherited] == ["a.txt"]
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


# -- what resume asks the store: only through the provider protocol ---------------------------


class _Described(MemoryProvider):
    """A memory store whose ``head`` reports the checksums a test chooses (or none)."""

    def __init__(self, checksums: tuple[Checksum, ...] | None) -> None:
        super().__init__("described")
        self.checksums = checksums

    async def head(self, name: str) -> ObjectInfo:
        info = await super().head(name)
        if self.checksums is None:
            return info
        return dataclasses.replace(info, checksums=self.checksums)


def _composite(algorithm: str, data: bytes, part_size: int) -> str:
    parts = [data[i : i + part_size] for i in range(0, len(data), part_size)] or [b""]
    raw = b"".join(digest(algorithm, p) for p in parts)
    return base64.b64encode(digest(algorithm, raw)).decode()


def _b64(algorithm: str, data: bytes) -> str:
    return base64.b64encode(digest(algorithm, data)).decode()


DATA = bytes(range(256)) * 40  # 10240 bytes: 3 parts of 4096


@pytest.mark.parametrize(
    "checksums",
    [
        pytest.param((Checksum("md5", _b64("md5", DATA)),), id="md5"),
        pytest.param((Checksum("crc32c", _b64("crc32c", DATA)),), id="crc32c"),
        pytest.param(
            (Checksum("md5", _composite("md5", DATA, 4096), part_size=4096, parts=3),),
            id="composite-md5",
        ),
        pytest.param(
            (Checksum("crc32c", _composite("crc32c", DATA, 4096), part_size=4096, parts=3),),
            id="composite-crc32c",
        ),
        pytest.param(
            (Checksum("md5", _composite("md5", DATA, 4096) + "-3", part_size=4096, parts=3),),
            id="composite-md5-suffixed",
        ),
        pytest.param((), id="none: read back"),
    ],
)
@pytest.mark.asyncio
async def test_already_stored_compares_through_head_checksums(
    tmp_path: Path, checksums: tuple[Checksum, ...]
) -> None:
    staged = tmp_path / "staged.bin"
    staged.write_bytes(DATA)
    store = _Described(checksums)
    store.objects["obj"] = DATA
    assert await already_stored(store, "obj", staged, len(DATA), None)
    # The same size, one byte different: never taken for the same object.
    store.objects["obj"] = DATA[:-1] + b"\x00"
    if checksums:
        # head() still reports the old checksum: the staged file must match it, and it does;
        # a staged file that differs must not.
        other = tmp_path / "other.bin"
        other.write_bytes(DATA[:-1] + b"\x00")
        assert not await already_stored(store, "obj", other, len(DATA), None)
    else:
        assert not await already_stored(store, "obj", staged, len(DATA), None)
    assert not await already_stored(store, "missing", staged, len(DATA), None)
    assert not await already_stored(store, "obj", staged, len(DATA) + 1, None)


@pytest.mark.asyncio
async def test_already_stored_without_a_read_side_is_false(tmp_path: Path) -> None:
    class WriteOnly:
        scheme = "s3"  # a scheme alone no longer makes the helper reach into internals

        def __init__(self) -> None:
            self._client = object()

    staged = tmp_path / "staged.bin"
    staged.write_bytes(DATA)
    assert not await already_stored(WriteOnly(), "obj", staged, len(DATA), None)


def test_resume_aborts_an_upload_the_journal_never_recorded(tmp_path: Path) -> None:
    staging = tmp_path / "staging"
    leave_pending(staging, {"big": b"b" * 10})
    store = MemoryProvider("m")
    assert isinstance(store, MultipartListing)
    # A crash right after CreateMultipartUpload: the store has it, the journal does not.
    orphan = asyncio.run(store.create_multipart("big", overwrite=True))
    other = asyncio.run(store.create_multipart("big-other", overwrite=True))
    report = Uploader.resume(staging, store)
    assert store.objects["big"] == b"b" * 10 and len(report.uploaded) == 1
    assert orphan not in store.multipart_uploads
    assert other in store.multipart_uploads, "an upload of another name was aborted"


@pytest.mark.asyncio
async def test_unrecorded_uploads_lists_exactly_the_name() -> None:
    store = MemoryProvider("m")
    mine = await store.create_multipart("big", overwrite=True)
    await store.create_multipart("big-other", overwrite=True)
    assert await unrecorded_uploads(store, "big") == [mine]
    assert await unrecorded_uploads(store, "none") == []


@pytest.mark.asyncio
async def test_unrecorded_uploads_needs_the_listing_capability() -> None:
    class NoListing:
        """A multipart store without list_multipart_uploads (and with an SDK client)."""

        scheme = "s3"

        def __init__(self) -> None:
            self.inner = MemoryProvider("m")
            self._client = self  # internals are never reached into
            self.bucket = "b"

        def key(self, name: str) -> str:
            return name

        async def create_multipart(self, name: str, *, overwrite: bool) -> str:
            return await self.inner.create_multipart(name, overwrite=overwrite)

    store = NoListing()
    await store.create_multipart("big", overwrite=True)
    assert not isinstance(store, MultipartListing)
    assert await unrecorded_uploads(store, "big") == []


@pytest.mark.asyncio
async def test_unrecorded_uploads_when_the_listing_fails_is_empty() -> None:
    class Failing(MemoryProvider):
        async def list_multipart_uploads(self, name: str) -> list[str]:
            raise ConnectionResetError("reset")

    store = Failing("m")
    await store.create_multipart("big", overwrite=True)
    assert await unrecorded_uploads(store, "big") == []
