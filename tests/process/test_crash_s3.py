"""Crash safety against a real S3 server (moto): SIGKILL mid-upload, then resume.

The memory-store version of the kill-and-resume test is ``tests/engine/test_journal.py``; here the
store is moto, the files include multipart-sized ones (moto enforces S3's 5 MiB minimum for every
part but the last, so the parts are 5 MiB), and the process dies while multipart uploads are in
flight. The kill is timed by an observable condition, never a sleep: once all 50 files are staged,
the child's ``on_event`` callback writes a marker file at the first moment that is either "a part of
a multipart upload was sent" or, better, "an ``overwrite=False`` object is in the store but its
``done`` line is not written yet, while a multipart upload is half sent", and then holds the
upload loop still, so the state the parent kills is the state the marker describes (parts sent,
uploads unfinished, other requests possibly still on the wire).

The last tests check the same resume rule (an ``overwrite=False`` object that landed before the
crash is accepted when it holds exactly the staged bytes, refused otherwise) on fake-gcs-server
and Azurite.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import anyio.to_thread
import pytest

from artifact_uploader import (
    MemoryProvider,
    ObjectExistsError,
    ObjectStoreLogger,
    PartPolicy,
    Uploader,
    UploadFailedError,
)
from artifact_uploader._journal import JOURNAL_FILE, load
from tests.conftest import wait_until
from tests.servers.azurite import AzureContainer
from tests.servers.fake_gcs import FakeGCSServer
from tests.servers.moto import MotoServer, list_multipart_uploads, list_s3_keys, read_s3_object

MiB = 1024 * 1024
PARTS = PartPolicy(threshold=6 * MiB, part_size=5 * MiB)
BIG = 11 * MiB  # three parts: 5 + 5 + 1 MiB

_CHILD = textwrap.dedent(
    """
    import json, os, sys, threading
    from pathlib import Path
    from artifact_uploader import EventKind, PartPolicy, Uploader

    spec = json.loads(sys.argv[1])
    big = set(spec["big"])
    conditional = {name for _, name, overwrite in spec["files"] if not overwrite}
    sent, done = {}, set()
    all_staged = threading.Event()
    marker = Path(spec["marker"])

    def on_event(event):
        # Runs on the upload loop; the loop stands still from the marker until SIGKILL.
        if event.kind is EventKind.DONE:
            done.add(event.name)
        if event.kind is not EventKind.BYTES_SENT:
            return
        sent[event.name] = sent.get(event.name, 0) + 1
        if not all_staged.is_set():
            return
        # A multipart upload with parts still to send cannot have its completion on the wire.
        unfinished = [b for b in big if 0 < sent.get(b, 0) < spec["parts"]]
        if event.name in conditional - big and unfinished:
            # An overwrite=False object is in the store and its "done" line not yet written,
            # while a multipart upload is half sent: the worst moment to die.
            why = "landed"
        elif event.name in unfinished and not conditional - big - done:
            why = "part"  # no small overwrite=False upload left to catch in the act
        else:
            return
        # Written whole, then renamed: the parent never reads a half-written marker.
        tmp = marker.with_suffix(".tmp")
        tmp.write_text(json.dumps([why, event.name]))
        os.replace(tmp, marker)
        threading.Event().wait()

    up = Uploader(
        spec["store"],
        provider_kwargs=spec["options"],
        staging_dir=spec["staging"],
        max_concurrency=3,
        parts=PartPolicy(threshold=spec["threshold"], part_size=spec["part_size"]),
        on_event=on_event,
    )
    for path, name, overwrite in spec["files"]:
        up.submit(path, name, overwrite=overwrite)
    all_staged.set()
    print("staged", flush=True)
    threading.Event().wait()
    """
)


BIG_AT = (0, 24, 25, 49)


def _make_sources(folder: Path) -> tuple[list[tuple[str, str, bool]], dict[str, bytes], list[str]]:
    """50 files in submission order: multipart-sized ones at the start, in the middle and last
    (so at least one is still uploading once everything is staged), small ones between. Odd
    ones are submitted with overwrite=False."""
    folder.mkdir()
    files: list[tuple[str, str, bool]] = []
    expected: dict[str, bytes] = {}
    big: list[str] = []
    for i in range(50):
        size = BIG + i if i in BIG_AT else 1000 + 997 * i
        data = os.urandom(size)
        path = folder / f"f{i:02d}.bin"
        path.write_bytes(data)
        name = f"ckpt/f{i:02d}.bin"
        files.append((str(path), name, i % 2 == 0))
        expected[name] = data
        if size >= PARTS.threshold:
            big.append(name)
    return files, expected, big


def test_sigkill_mid_multipart_then_resume(
    moto_server: MotoServer, moto_s3: Any, s3_bucket: str, tmp_path: Path
) -> None:
    staging = tmp_path / "staging"
    marker = tmp_path / "marker"
    files, expected, big = _make_sources(tmp_path / "src")
    store = f"s3://{s3_bucket}/run"
    spec = {
        "store": store,
        "options": moto_server.options(),
        "staging": str(staging),
        "threshold": PARTS.threshold,
        "part_size": PARTS.part_size,
        "files": files,
        "big": big,
        "parts": -(-BIG // PARTS.part_size),
        "marker": str(marker),
    }
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, json.dumps(spec)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(
            lambda: marker.exists() or proc.poll() is not None,
            timeout=90,
            what="the child to reach the moment it is killed at (all 50 files staged)",
        )
        assert proc.poll() is None, proc.communicate()[1]
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL, err

    # The state the kill left: every file journalled or uploaded, multipart uploads unfinished.
    pending, problems = load(staging)
    assert problems == []
    landed_before = set(list_s3_keys(moto_s3, s3_bucket, "run/"))
    pending_names = {e.name for e in pending}
    assert pending_names, "the child finished everything before it was killed"
    assert {f"run/{n}" for n in expected} <= landed_before | {f"run/{n}" for n in pending_names}
    assert list_multipart_uploads(moto_s3, s3_bucket), "no multipart upload was in flight"
    assert any(e.name in big for e in pending)
    # Resume uploads from the staged copies: the sources may be gone by now.
    for path, _, _ in files:
        Path(path).unlink()

    report = Uploader.resume(staging, store, provider_kwargs=moto_server.options(), parts=PARTS)

    for name, data in expected.items():
        body = read_s3_object(moto_s3, s3_bucket, f"run/{name}")
        assert hashlib.sha256(body).digest() == hashlib.sha256(data).digest(), name
    assert len(list_s3_keys(moto_s3, s3_bucket, "run/")) == 50
    assert list_multipart_uploads(moto_s3, s3_bucket) == []
    assert load(staging) == ([], [])
    assert list((staging / "staged").iterdir()) == []
    resumed = {r.name for r in report.uploaded} | set(report.already_present)
    assert resumed == pending_names
    why, name = json.loads(marker.read_text())
    if why == "landed":
        # Uploaded before the kill, never marked done: completed, not refused as existing.
        assert name in report.already_present
    assert report.skipped_lines == []


def _leave_pending(staging: Path, sources: dict[str, Path]) -> None:
    """A run that stages ``sources`` with overwrite=False and dies before uploading them."""
    memory = MemoryProvider("never")
    memory.pause()
    up = Uploader(memory, staging_dir=staging)
    for name, path in sources.items():
        up.submit(path, name, overwrite=False)
    wait_until(lambda: memory.in_flight == len(sources), what="uploads to start")
    with pytest.raises(UploadFailedError):
        up.close(timeout=0)
    memory.resume()
    assert {e.name for e in load(staging)[0]} == set(sources)


@pytest.mark.parametrize("entry", ["Uploader.resume", "ObjectStoreLogger(resume=True)"])
def test_resume_accepts_an_object_that_landed_before_its_done_line(
    moto_server: MotoServer, moto_s3: Any, s3_bucket: str, tmp_path: Path, entry: str
) -> None:
    """overwrite=False entries whose object is already there, byte for byte (the ``done`` line
    is written without fsync, and a kill can come after the store answered but before the line
    was written): resume completes them instead of failing with ObjectExistsError."""
    small, large = os.urandom(3000), os.urandom(BIG)
    src = tmp_path / "src"
    src.mkdir()
    (src / "small.bin").write_bytes(small)
    (src / "large.bin").write_bytes(large)
    staging = tmp_path / "staging"
    _leave_pending(staging, {"small.bin": src / "small.bin", "large.bin": src / "large.bin"})
    # Both landed before the crash: one PutObject, one multipart upload of 5 MiB parts.
    moto_s3.put_object(Bucket=s3_bucket, Key="run/small.bin", Body=small)
    mpu = moto_s3.create_multipart_upload(Bucket=s3_bucket, Key="run/large.bin")["UploadId"]
    etags = [
        moto_s3.upload_part(
            Bucket=s3_bucket,
            Key="run/large.bin",
            UploadId=mpu,
            PartNumber=n + 1,
            Body=large[n * 5 * MiB : (n + 1) * 5 * MiB],
        )["ETag"]
        for n in range(3)
    ]
    moto_s3.complete_multipart_upload(
        Bucket=s3_bucket,
        Key="run/large.bin",
        UploadId=mpu,
        MultipartUpload={"Parts": [{"PartNumber": n + 1, "ETag": e} for n, e in enumerate(etags)]},
    )
    # And an upload of small.bin the journal never heard of (created, then the crash).
    moto_s3.create_multipart_upload(Bucket=s3_bucket, Key="run/small.bin")

    if entry == "Uploader.resume":
        report = Uploader.resume(
            staging, f"s3://{s3_bucket}/run", provider_kwargs=moto_server.options(), parts=PARTS
        )
    else:
        with ObjectStoreLogger(
            "s3",
            f"{s3_bucket}/run",
            provider_kwargs=moto_server.options(),
            upload_staging_folder=staging,
            parts=PARTS,
            resume=True,
        ) as logger:
            assert logger.resume_report is not None
            report = logger.resume_report

    assert sorted(report.already_present) == ["large.bin", "small.bin"]
    assert report.uploaded == []
    assert read_s3_object(moto_s3, s3_bucket, "run/small.bin") == small
    assert read_s3_object(moto_s3, s3_bucket, "run/large.bin") == large
    assert list_multipart_uploads(moto_s3, s3_bucket) == []
    assert load(staging) == ([], [])
    assert list((staging / "staged").iterdir()) == []


def test_resume_refuses_to_replace_a_different_object(
    moto_server: MotoServer, moto_s3: Any, s3_bucket: str, tmp_path: Path
) -> None:
    """If the object under an overwrite=False name holds other bytes, resume reports
    ObjectExistsError naming it, leaves the store alone and keeps the entry journalled."""
    src = tmp_path / "mine.bin"
    src.write_bytes(b"my checkpoint")
    staging = tmp_path / "staging"
    _leave_pending(staging, {"mine.bin": src})
    moto_s3.put_object(Bucket=s3_bucket, Key="run/mine.bin", Body=b"someone else's")

    with pytest.raises(UploadFailedError) as info:
        Uploader.resume(staging, f"s3://{s3_bucket}/run", provider_kwargs=moto_server.options())

    (failure,) = info.value.failures
    assert failure.name == "mine.bin" and isinstance(failure.cause, ObjectExistsError)
    assert failure.staged_path and Path(failure.staged_path).read_bytes() == b"my checkpoint"
    assert read_s3_object(moto_s3, s3_bucket, "run/mine.bin") == b"someone else's"
    assert [e.name for e in load(staging)[0]] == ["mine.bin"]
    assert (staging / JOURNAL_FILE).exists()


# -- the same on the other stores ----------------------------------------------------------------


def _landed_then_resumed(store: str, options: dict[str, Any], tmp_path: Path) -> None:
    """An overwrite=False entry that landed (uploaded here first, with the same bytes) and one
    that differs: resume completes the first, refuses the second and keeps it journalled."""
    same, other = os.urandom(3000), b"my version"
    src = tmp_path / "src"
    src.mkdir()
    (src / "same.bin").write_bytes(same)
    (src / "other.bin").write_bytes(other)
    staging = tmp_path / "staging"
    _leave_pending(staging, {"same.bin": src / "same.bin", "other.bin": src / "other.bin"})
    with Uploader(store, provider_kwargs=options) as up:
        up.upload(src / "same.bin", "same.bin")
        (tmp_path / "theirs.bin").write_bytes(b"their version")
        up.upload(tmp_path / "theirs.bin", "other.bin")
    with pytest.raises(UploadFailedError) as info:
        Uploader.resume(staging, store, provider_kwargs=options)
    (failure,) = info.value.failures
    assert failure.name == "other.bin" and isinstance(failure.cause, ObjectExistsError)
    assert [e.name for e in load(staging)[0]] == ["other.bin"]


def test_resume_on_gcs_accepts_landed_object(
    fake_gcs_server: FakeGCSServer, gcs_bucket: str, tmp_path: Path
) -> None:
    _landed_then_resumed(f"gs://{gcs_bucket}/run", fake_gcs_server.options(), tmp_path)
    assert fake_gcs_server.read_object(gcs_bucket, "run/other.bin") == b"their version"


@pytest.mark.asyncio
async def test_resume_on_azure_accepts_landed_object(
    azure_container: AzureContainer, tmp_path: Path
) -> None:
    server = azure_container.server
    options = {
        "account_url": server.account_url,
        "account_name": server.account_name,
        "account_key": server.account_key,
    }
    await anyio.to_thread.run_sync(
        _landed_then_resumed, f"az://{azure_container.name}/run", options, tmp_path
    )
    assert await azure_container.read("run/other.bin") == b"their version"
