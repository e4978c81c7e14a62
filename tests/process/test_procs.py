"""use_procs=True: the uploads run in a child process and behave exactly like thread mode.

Shared behaviour is parametrized over both modes; what only a child process can do (be killed,
outlive its parent) is tested in procs mode alone. Nothing here is timed but the close(timeout)
bound, which is the feature.
"""

from __future__ import annotations

import os
import pickle
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from artifact_uploader import (
    ConfigError,
    DependencyFailedError,
    EventKind,
    LogLevel,
    MemoryProvider,
    ObjectExistsError,
    ObjectStoreLogger,
    PartPolicy,
    ProviderError,
    RetryPolicy,
    StoreNotFoundError,
    Uploader,
    UploaderClosedError,
    UploadError,
    UploadEvent,
    UploadFailedError,
)
from artifact_uploader._journal import load
from artifact_uploader._sync import staged_bytes, submit_bytes
from tests._hanging import SilentAfterCreate
from tests._pending import leave_pending
from tests.conftest import read_line, reaped, wait_until
from tests.servers.moto import (
    MOTO_OPTIONS,
    MotoServer,
    list_multipart_uploads,
    read_s3_object,
)
from tests.servers.s3_faults import FaultServer, s3_error

MakeFile = Callable[..., Path]
MiB = 1024 * 1024
MODES = pytest.mark.parametrize("use_procs", [False, True], ids=["thread", "procs"])


def _alive(pid: int) -> bool:
    """True while any thread of ``pid`` runs (a zombie awaiting its reaper counts as gone).

    Every thread counts: a process's files (and the staging lock) are released only once its
    last thread has exited, while the main thread may already show as a zombie.
    """
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except FileNotFoundError:
        return False
    for task in tasks:
        try:
            stat = (task / "stat").read_text()
        except FileNotFoundError:
            continue
        if stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X"):
            return True
    return False


@pytest.fixture
def silent_s3() -> Iterator[dict[str, object]]:
    """S3 options for an endpoint that accepts connections and never answers: uploads hang."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        port = sock.getsockname()[1]
        yield {**MOTO_OPTIONS, "endpoint_url": f"http://127.0.0.1:{port}"}


@MODES
def test_uploads_land_byte_identical(tmp_path: Path, make_file: MakeFile, use_procs: bool) -> None:
    store = tmp_path / "store"
    events: list[UploadEvent] = []
    sources = {f"d/{size}.bin": make_file(os.urandom(size)) for size in (0, 1, 65536, MiB + 7)}
    up = Uploader(store.as_uri(), use_procs=use_procs, on_event=events.append)
    assert (up.worker_pid != os.getpid()) is use_procs
    futures = {name: up.submit(src, name) for name, src in sources.items()}
    results = {name: fut.result(timeout=60) for name, fut in futures.items()}
    up.close()
    for name, src in sources.items():
        assert (store / name).read_bytes() == src.read_bytes()
        assert results[name].size == src.stat().st_size
        assert results[name].uri == (store / name).as_uri()
    kinds = [e.kind for e in events if e.name == f"d/{MiB + 7}.bin"]
    assert kinds == [EventKind.QUEUED, EventKind.STAGED, EventKind.BYTES_SENT, EventKind.DONE]
    totals = up.totals
    assert (totals.files_queued, totals.files_done, totals.in_flight) == (4, 4, 0)
    assert totals.bytes_sent == sum(p.stat().st_size for p in sources.values())
    if use_procs:
        assert not _alive(up.worker_pid)


@MODES
def test_one_name_lands_in_submission_order(
    tmp_path: Path, make_file: MakeFile, use_procs: bool
) -> None:
    store = tmp_path / "store"
    completed: list[int] = []
    with Uploader(store.as_uri(), use_procs=use_procs, max_concurrency=8) as up:
        for i in range(8):
            fut = up.submit(make_file(f"version {i} ".encode() * 5000), "same.bin")
            fut.add_done_callback(lambda _, i=i: completed.append(i))
    assert completed == list(range(8))
    assert (store / "same.bin").read_bytes() == b"version 7 " * 5000


@MODES
def test_logger_writes_symlink_after_its_target(
    tmp_path: Path, make_file: MakeFile, use_procs: bool
) -> None:
    store = tmp_path / "store"
    weights = os.urandom(4 * MiB)
    with ObjectStoreLogger("file", str(store), use_procs=use_procs) as logger:
        logger.file_artifact(LogLevel.EPOCH, "ep1.pt", make_file(weights))
        link = logger.symlink_artifact(LogLevel.EPOCH, "ep1.pt", "latest")
        assert link is not None
        assert link.result(timeout=60).name == "latest.symlink"
        # The symlink is durable only once its target is.
        assert (store / "ep1.pt").read_bytes() == weights
    assert (store / "latest.symlink").read_text() == "ep1.pt"


@MODES
def test_dependent_upload_not_written_when_its_target_fails(
    tmp_path: Path, make_file: MakeFile, use_procs: bool
) -> None:
    store = tmp_path / "store"
    store.mkdir()
    (store / "t.pt").write_bytes(b"already there")
    with Uploader(store.as_uri(), use_procs=use_procs) as up:
        target = up.submit(make_file(b"new"), "t.pt", overwrite=False)
        link = submit_bytes(up, b"t.pt", "latest.symlink", overwrite=False, after=target)
        with pytest.raises(ObjectExistsError):
            target.result(timeout=60)
        with pytest.raises(DependencyFailedError, match=r"latest\.symlink"):
            link.result(timeout=60)
        with pytest.raises(UploadFailedError) as info:
            up.flush()
    causes = {f.name: type(f.cause) for f in info.value.failures}
    assert causes == {"t.pt": ObjectExistsError, "latest.symlink": DependencyFailedError}
    assert not (store / "latest.symlink").exists()
    assert (store / "t.pt").read_bytes() == b"already there"


@MODES
def test_permanent_failures_reported_like_thread_mode(
    tmp_path: Path, make_file: MakeFile, use_procs: bool
) -> None:
    store, staging = tmp_path / "store", tmp_path / "staging"
    store.mkdir()
    (store / "exists.bin").write_bytes(b"old")
    (store / "afile").write_bytes(b"a file where a directory would go")
    up = Uploader(store.as_uri(), use_procs=use_procs, staging_dir=staging)
    conflict = up.submit(make_file(b"new"), "exists.bin", overwrite=False)
    refused = up.submit(make_file(b"data"), "afile/inside.bin")
    fine = up.submit(make_file(b"fine"), "fine.bin")
    with pytest.raises(ObjectExistsError, match=r"exists\.bin") as exists:
        conflict.result(timeout=60)
    assert exists.value.name == "exists.bin" and exists.value.uri == (store / "exists.bin").as_uri()
    with pytest.raises(ProviderError, match="in the way") as in_the_way:
        refused.result(timeout=60)
    assert not in_the_way.value.transient
    assert fine.result(timeout=60).size == 4
    with pytest.raises(UploadFailedError) as info:
        up.flush()
    failures = {f.name: f for f in info.value.failures}
    assert set(failures) == {"exists.bin", "afile/inside.bin"}
    assert isinstance(failures["exists.bin"].cause, ObjectExistsError)
    kept = failures["exists.bin"].staged_path
    assert kept is not None and Path(kept).read_bytes() == b"new"
    up.flush()  # each failure is reported once
    up.submit(make_file(b"again"), "exists.bin", overwrite=False)
    with pytest.raises(UploadFailedError, match=r"exists\.bin") as at_close:
        up.close()
    assert [f.name for f in at_close.value.failures] == ["exists.bin"]
    pending, _ = load(staging)
    assert sorted(e.name for e in pending) == ["afile/inside.bin", "exists.bin", "exists.bin"]
    assert (store / "exists.bin").read_bytes() == b"old"


@MODES
def test_logger_raises_an_earlier_failure_at_its_next_call(
    tmp_path: Path, make_file: MakeFile, use_procs: bool
) -> None:
    store = tmp_path / "store"
    store.mkdir()
    (store / "a.pt").write_bytes(b"old")
    logger = ObjectStoreLogger("file", str(store), use_procs=use_procs)
    fut = logger.file_artifact(LogLevel.EPOCH, "a.pt", make_file(b"a"))  # overwrite=False
    assert fut is not None
    wait_until(fut.done, timeout=60, what="the conflicting upload to fail")
    with pytest.raises(UploadFailedError, match=r"a\.pt"):
        logger.file_artifact(LogLevel.EPOCH, "b.pt", make_file(b"b"))
    logger.close()  # reported already: not again
    assert not (store / "b.pt").exists()


@MODES
def test_close_timeout_keeps_unfinished_uploads_journalled(
    silent_s3: dict[str, object], tmp_path: Path, make_file: MakeFile, use_procs: bool
) -> None:
    staging = tmp_path / "staging"
    up = Uploader(
        "s3://silent-bucket",
        provider_kwargs=silent_s3,
        verify=False,
        use_procs=use_procs,
        staging_dir=staging,
    )
    fut = up.submit(make_file(b"never answered"), "never.bin")
    with pytest.raises(UploadFailedError) as info:
        up.close(timeout=0.5)
    [failure] = info.value.failures
    assert failure.name == "never.bin" and isinstance(failure.cause, TimeoutError)
    assert failure.staged_path is not None
    assert Path(failure.staged_path).read_bytes() == b"never answered"
    with pytest.raises(TimeoutError):
        fut.result(timeout=0)
    assert [e.name for e in load(staging)[0]] == ["never.bin"]
    if use_procs:
        assert not _alive(up.worker_pid)


def test_s3_logger_in_procs_mode_with_multipart(
    moto_server: MotoServer, moto_s3: Any, s3_bucket: str, make_file: MakeFile
) -> None:
    big, small = os.urandom(11 * MiB), b"metrics"
    with ObjectStoreLogger(
        "s3",
        s3_bucket,
        provider_kwargs=moto_server.options(),
        object_name="run/{artifact_name}",
        use_procs=True,
        parts=PartPolicy(threshold=5 * MiB, part_size=5 * MiB),
    ) as logger:
        assert logger.uploader.worker_pid != os.getpid()
        logger.file_artifact(LogLevel.EPOCH, "ckpt.pt", make_file(big))
        logger.file_artifact(LogLevel.EPOCH, "metrics.json", make_file(small))
        logger.symlink_artifact(LogLevel.EPOCH, "ckpt.pt", "latest")
    assert read_s3_object(moto_s3, s3_bucket, "run/ckpt.pt") == big
    assert read_s3_object(moto_s3, s3_bucket, "run/metrics.json") == small
    assert read_s3_object(moto_s3, s3_bucket, "run/latest.symlink") == b"run/ckpt.pt"
    assert list_multipart_uploads(moto_s3, s3_bucket) == []


@MODES
def test_unreachable_store_raises_the_same_type(moto_server: MotoServer, use_procs: bool) -> None:
    with pytest.raises(StoreNotFoundError, match="no-such-bucket"):
        Uploader("s3://no-such-bucket", provider_kwargs=moto_server.options(), use_procs=use_procs)


def test_killed_child_fails_pending_uploads_instead_of_hanging(
    silent_s3: dict[str, object], tmp_path: Path, make_file: MakeFile
) -> None:
    staging = tmp_path / "staging"
    up = Uploader(
        "s3://silent-bucket",
        provider_kwargs=silent_s3,
        verify=False,
        use_procs=True,
        staging_dir=staging,
    )
    fut = up.submit(make_file(b"lost"), "lost.bin")
    from_callback: list[BaseException] = []

    def flush_from_callback(_: object) -> None:
        try:
            up.flush()
        except BaseException as exc:
            from_callback.append(exc)

    fut.add_done_callback(flush_from_callback)
    os.kill(up.worker_pid, signal.SIGKILL)
    with pytest.raises(UploaderClosedError, match="SIGKILL"):
        fut.result(timeout=60)
    # The callback ran on the results thread: calling back in raises instead of deadlocking.
    wait_until(lambda: bool(from_callback), what="the done callback")
    assert isinstance(from_callback[0], RuntimeError) and "thread" in str(from_callback[0])
    with pytest.raises(UploadFailedError) as info:
        up.flush()
    [failure] = info.value.failures
    assert failure.name == "lost.bin" and "SIGKILL" in str(failure.cause)
    assert failure.staged_path is not None and Path(failure.staged_path).read_bytes() == b"lost"
    with pytest.raises(UploaderClosedError, match="SIGKILL"):
        up.submit(make_file(b"x"), "x.bin")
    up.close()  # nothing new to report
    assert [e.name for e in load(staging)[0]] == ["lost.bin"]


def test_sigkilled_parent_takes_its_child_down_and_resume_finishes(
    silent_s3: dict[str, object],
    moto_server: MotoServer,
    moto_s3: Any,
    s3_bucket: str,
    tmp_path: Path,
) -> None:
    staging, src_dir = tmp_path / "staging", tmp_path / "src"
    src_dir.mkdir()
    expected = {}
    for i in range(20):
        data = os.urandom(1000 + i)
        (src_dir / f"f{i}.bin").write_bytes(data)
        expected[f"obj/f{i}.bin"] = data
    script = textwrap.dedent(
        f"""
        import sys
        from artifact_uploader import Uploader
        up = Uploader("s3://silent-bucket", provider_kwargs={silent_s3!r}, verify=False,
                      use_procs=True, staging_dir={str(staging)!r})
        for i in range(20):
            up.submit({str(src_dir)!r} + f"/f{{i}}.bin", f"obj/f{{i}}.bin")
        print(up.worker_pid, flush=True)
        sys.stdin.read()
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdin is not None
    # reaped(): killed and collected even when the child never reports its worker.
    with reaped(proc):
        child_pid = int(read_line(proc.stdout))
        assert _alive(child_pid)
        proc.kill()
        proc.wait(timeout=30)
    wait_until(lambda: not _alive(child_pid), timeout=30, what="the orphaned child to exit")
    # submit() returned only after each entry was journalled (fsync'd) in the parent.
    pending, problems = load(staging)
    assert sorted(e.name for e in pending) == sorted(expected) and problems == []
    for p in src_dir.iterdir():
        p.unlink()
    report = Uploader.resume(
        staging, f"s3://{s3_bucket}", provider_kwargs=moto_server.options(), use_procs=True
    )
    assert sorted(r.name for r in report.uploaded) == sorted(expected)
    for name, data in expected.items():
        assert read_s3_object(moto_s3, s3_bucket, name) == data
    assert load(staging) == ([], [])
    assert list((staging / "staged").iterdir()) == []


def test_provider_that_cannot_cross_a_process_is_refused(tmp_path: Path) -> None:
    staging = tmp_path / "staging"
    with pytest.raises(ConfigError, match="MemoryProvider"):
        Uploader(MemoryProvider("m"), use_procs=True, staging_dir=staging)
    # Nothing held: the folder can be used again at once.
    Uploader(MemoryProvider("m"), staging_dir=staging).close()
    with pytest.raises(ConfigError, match="use_procs"):
        Uploader(MemoryProvider("m"), use_procs="yes")  # type: ignore[arg-type]


@MODES
def test_retry_events_cross_the_process(
    s3_faults: FaultServer, make_file: MakeFile, use_procs: bool
) -> None:
    # A transient failure in the uploading process is retried there, reported as a RETRY here.
    events: list[UploadEvent] = []
    s3_faults.script(s3_error(503, "SlowDown"))
    with Uploader(
        "s3://fault-bucket",
        provider_kwargs={**MOTO_OPTIONS, "endpoint_url": s3_faults.endpoint_url},
        verify=False,
        use_procs=use_procs,
        on_event=events.append,
        retry=RetryPolicy(attempts=2, base_delay=0.0, max_delay=0.0),
    ) as up:
        up.upload(make_file(b"x"), "x.bin")
    kinds = [e.kind for e in events]
    assert kinds == [
        EventKind.QUEUED,
        EventKind.STAGED,
        EventKind.RETRY,
        EventKind.BYTES_SENT,
        EventKind.DONE,
    ]
    retry = events[2]
    assert retry.attempt == 1 and isinstance(retry.error, ProviderError) and retry.error.transient
    assert retry.error.status == 503
    assert events[-1].totals.files_done == 1


@MODES
def test_staging_budget_is_released_as_uploads_finish(
    tmp_path: Path, make_file: MakeFile, use_procs: bool
) -> None:
    # Five 60 kB files through a 100 kB budget: each submit waits for an earlier upload to end.
    store = tmp_path / "store"
    with Uploader(store.as_uri(), use_procs=use_procs, max_staged_bytes=100_000) as up:
        futures = [
            up.submit(make_file(os.urandom(60_000)), f"b{i}.bin", timeout=60) for i in range(5)
        ]
        assert [f.result(timeout=60).size for f in futures] == [60_000] * 5
        assert staged_bytes(up) == 0
    assert sorted(p.name for p in store.iterdir() if p.is_file()) == [f"b{i}.bin" for i in range(5)]


@MODES
def test_upload_failures_are_logged_in_this_process(
    tmp_path: Path, make_file: MakeFile, use_procs: bool, caplog: pytest.LogCaptureFixture
) -> None:
    store = tmp_path / "store"
    store.mkdir()
    (store / "exists.bin").write_bytes(b"old")
    with Uploader(store.as_uri(), use_procs=use_procs) as up:
        fut = up.submit(make_file(b"new"), "exists.bin", overwrite=False)
        with pytest.raises(ObjectExistsError):
            fut.result(timeout=60)
        messages = [r.getMessage() for r in caplog.records if r.name == "artifact_uploader"]
        assert any("upload of 'exists.bin' failed" in m for m in messages)
        with pytest.raises(UploadFailedError):
            up.flush()


def test_errors_cross_the_process_boundary_with_type_and_attributes(tmp_path: Path) -> None:
    from artifact_uploader import InvalidObjectNameError, SourceFileError, StagingTimeoutError
    from artifact_uploader._wire import RemoteError

    def across(exc: BaseException) -> BaseException:
        return pickle.loads(pickle.dumps(RemoteError.of(exc))).rebuild()

    exists = across(ObjectExistsError("object 'a' exists", name="a", uri="s3://b/a", status=412))
    assert type(exists) is ObjectExistsError and str(exists) == "object 'a' exists"
    assert (exists.name, exists.uri, exists.status, exists.transient) == (
        "a",
        "s3://b/a",
        412,
        False,
    )
    assert isinstance(exists, FileExistsError)
    source = across(SourceFileError(tmp_path / "gone.pt", "no such file"))
    assert type(source) is SourceFileError and source.path == str(tmp_path / "gone.pt")
    assert "gone.pt" in str(source)
    name = across(InvalidObjectNameError("a/../b", "escapes the root"))
    assert type(name) is InvalidObjectNameError and name.reason == "escapes the root"
    assert type(across(StagingTimeoutError("full"))) is StagingTimeoutError

    class Local(Exception):  # not importable by qualified name in another process
        pass

    unknown = across(Local("odd"))
    assert type(unknown) is UploadError and "Local: odd" in str(unknown)
    unpicklable = ProviderError("with a lock", name="x")
    unpicklable.response = threading.Lock()  # type: ignore[attr-defined]
    plain = across(unpicklable)
    assert type(plain) is ProviderError and str(plain) == "with a lock" and plain.name == "x"


@MODES
def test_close_timeout_is_bounded_when_the_store_never_answers_aborts(
    tmp_path: Path, make_file: MakeFile, use_procs: bool
) -> None:
    marker = tmp_path / "part-started"
    up = Uploader(
        SilentAfterCreate(str(marker)),
        parts=PartPolicy(threshold=100, part_size=50),
        retry=RetryPolicy(attempts=1),
        use_procs=use_procs,
    )
    up.submit(make_file(b"x" * 400), "big")
    wait_until(marker.exists, what="the multipart upload to start")
    start = time.monotonic()
    with pytest.raises(UploadFailedError, match="big"):
        up.close(timeout=1)
    elapsed = time.monotonic() - start
    # The documented bound: timeout + 2 * min(10, max(1, timeout)), plus the child's reply and
    # exit margins with use_procs (2 s each). A hung abort used to hold close for 10 s more.
    bound = 1 + 2 * 1 + (4 if use_procs else 0)
    assert elapsed < bound + 1, f"close(timeout=1) took {elapsed:.1f}s"


@MODES
def test_resume_keeps_a_newer_submission_of_the_same_name(
    tmp_path: Path, make_file: MakeFile, use_procs: bool
) -> None:
    staging, store = tmp_path / "staging", tmp_path / "store"
    leave_pending(staging, {"latest.pt": b"OLD checkpoint of the crashed run"})
    with Uploader(f"file://{store}", staging_dir=staging, use_procs=use_procs) as up:
        up.submit(make_file(b"NEW checkpoint"), "latest.pt")
        report = up.resume_pending()
    assert report.superseded == ["latest.pt"]
    assert (store / "latest.pt").read_bytes() == b"NEW checkpoint"
    assert load(staging) == ([], [])
