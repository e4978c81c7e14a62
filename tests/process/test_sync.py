"""Uploader (sync facade) and ObjectStoreLogger semantics."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from artifact_uploader import (
    ConfigError,
    FailedUpload,
    LogLevel,
    MemoryProvider,
    ObjectStoreLogger,
    ProviderError,
    SourceFileError,
    Uploader,
    UploaderClosedError,
    UploadFailedError,
)
from artifact_uploader._journal import load
from artifact_uploader._report import LocalReporter
from artifact_uploader._staging import Stager
from tests._pending import leave_pending
from tests.conftest import resumed, wait_child, wait_until

MakeFile = Callable[..., Path]


def test_submit_returns_future_after_staging(memory: MemoryProvider, make_file: MakeFile) -> None:
    src = make_file(b"v1")
    memory.pause()
    with Uploader(memory) as up:
        # resumed(): a failing assertion must not leave close() waiting on held requests.
        with resumed(memory):
            fut = up.submit(src, "a")
            assert isinstance(fut, concurrent.futures.Future)
            assert not fut.done()
            src.write_bytes(b"v2 changed")
        assert fut.result(timeout=10).size == 2
    assert memory.objects["a"] == b"v1"


def test_loop_runs_on_one_dedicated_thread_and_close_joins_it(memory: MemoryProvider) -> None:
    before = {t.ident for t in threading.enumerate()}
    up = Uploader(memory)
    new = [t for t in threading.enumerate() if t.ident not in before and t.is_alive()]
    assert any("artifact-uploader" in t.name for t in new)
    up.close()
    up.close()  # idempotent
    assert not any(t.is_alive() and "artifact-uploader" in t.name for t in new)


def test_submit_after_close(memory: MemoryProvider, make_file: MakeFile) -> None:
    up = Uploader(memory)
    up.close()
    with pytest.raises(UploaderClosedError):
        up.submit(make_file(), "x")


def test_close_from_loop_thread_raises_instead_of_deadlocking(
    memory: MemoryProvider, make_file: MakeFile
) -> None:
    errors: list[BaseException] = []
    done = threading.Event()
    memory.pause()
    with Uploader(memory) as up:
        with resumed(memory):
            fut = up.submit(make_file(), "x")

            def callback(_: object) -> None:
                try:
                    up.close()
                except BaseException as exc:
                    errors.append(exc)
                done.set()

            # The future is pending: the callback will run on the loop thread.
            fut.add_done_callback(callback)
        assert done.wait(10)
    assert errors and isinstance(errors[0], RuntimeError)
    assert "loop thread" in str(errors[0])


def test_works_from_a_thread_running_an_asyncio_loop(
    memory: MemoryProvider, make_file: MakeFile
) -> None:
    async def notebook_cell() -> int:
        with Uploader(memory) as up:
            return up.upload(make_file(b"nb"), "nb.txt").size

    assert asyncio.run(notebook_cell()) == 2
    assert memory.objects["nb.txt"] == b"nb"


def test_failure_raised_from_flush_and_close(memory: MemoryProvider, make_file: MakeFile) -> None:
    memory.inject(ProviderError("boom"), times=1)
    up = Uploader(memory)
    up.submit(make_file(b"z"), "z")
    with pytest.raises(UploadFailedError) as info:
        up.flush()
    assert info.value.failures[0].name == "z"
    memory.inject(ProviderError("boom2"), times=1)
    up.submit(make_file(b"y"), "y")
    with pytest.raises(UploadFailedError, match="y"):
        up.close()


@pytest.mark.parametrize("use_procs", [False, True], ids=["thread", "procs"])
def test_atexit_flushes_an_unclosed_uploader(tmp_path: Path, use_procs: bool) -> None:
    src = tmp_path / "f.txt"
    src.write_bytes(b"at exit")
    store = tmp_path / "store"
    script = textwrap.dedent(
        f"""
        from artifact_uploader import Uploader
        up = Uploader({store.as_uri()!r}, use_procs={use_procs})
        up.submit({str(src)!r}, "exit.txt")
        """
    )
    proc = subprocess.run(
        [sys.executable, "-W", "default", "-c", script], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert (store / "exit.txt").read_bytes() == b"at exit"
    assert "was not closed" in proc.stderr


@pytest.mark.parametrize("use_procs", [False, True], ids=["thread", "procs"])
def test_forked_child_gets_clear_error(
    store_dir: Path, make_file: MakeFile, use_procs: bool
) -> None:
    src = make_file(b"f")
    with Uploader(store_dir.as_uri(), use_procs=use_procs) as up:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child
            code = 1
            try:
                up.submit(src, "child")
            except UploaderClosedError:
                code = 0
            os._exit(code)
        os.close(w)
        # Polled with a deadline: a child stuck in the fork-inherited state is killed, not
        # waited on forever.
        exit_code = wait_child(pid)
        os.close(r)
        assert exit_code == 0
        assert up.upload(src, "parent").size == 1  # parent unaffected
    assert (store_dir / "parent").read_bytes() == b"f" and not (store_dir / "child").exists()


# -- ObjectStoreLogger -----------------------------------------------------------------------


def test_seed_example_stores_rank_prefixed_object(
    store_dir: Path, make_file: MakeFile, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RANK", raising=False)
    src = make_file(b"bar contents", name="file.txt")
    logger = ObjectStoreLogger("file", str(store_dir), object_name="rank_{rank}/{artifact_name}")
    logger.file_artifact(log_level=LogLevel.EPOCH, artifact_name="bar.txt", file_path=str(src))
    logger.close()
    assert (store_dir / "rank_0" / "bar.txt").read_bytes() == b"bar contents"
    assert logger.get_uri_for_artifact("bar.txt") == (store_dir / "rank_0" / "bar.txt").as_uri()


def test_template_fields_from_env(
    store_dir: Path, make_file: MakeFile, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var, val in [("RANK", "3"), ("LOCAL_RANK", "1"), ("WORLD_SIZE", "8")]:
        monkeypatch.setenv(var, val)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setenv("NODE_RANK", "1")
    monkeypatch.setenv("RUN_NAME", "envrun")
    fmt = (
        "/{run_name}/{rank}-{local_rank}-{world_size}-{local_world_size}-{node_rank}"
        "/{artifact_name}"
    )
    with ObjectStoreLogger("local", str(store_dir), object_name=fmt) as logger:
        assert logger.object_name_for("a.pt") == "envrun/3-1-8-2-1/a.pt"
        logger.file_artifact(LogLevel.BATCH, "a.pt", make_file(b"1"))
    assert (store_dir / "envrun/3-1-8-2-1/a.pt").exists()


def test_run_name_argument_and_generated(store_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RUN_NAME", raising=False)
    with ObjectStoreLogger("file", str(store_dir), run_name="given") as a:
        assert a.run_name == "given"
    with (
        ObjectStoreLogger("file", str(store_dir)) as b,
        ObjectStoreLogger("file", str(store_dir)) as c,
    ):
        assert b.run_name.startswith("run-") and b.run_name != c.run_name


def test_should_log_artifact_false_stages_nothing(
    store_dir: Path, make_file: MakeFile, tmp_path: Path
) -> None:
    seen: list[tuple[object, LogLevel, str]] = []

    def only_checkpoints(state: object, level: LogLevel, name: str) -> bool:
        seen.append((state, level, name))
        return name.endswith(".pt")

    staging = tmp_path / "staging"
    logger = ObjectStoreLogger(
        "file", str(store_dir), should_log_artifact=only_checkpoints, upload_staging_folder=staging
    )
    assert logger.file_artifact(LogLevel.BATCH, "x.log", make_file(b"1"), state="S") is None
    assert list((staging / "staged").iterdir()) == []
    logger.file_artifact(LogLevel.BATCH, "m.pt", make_file(b"2"))
    logger.close()
    assert seen[0] == ("S", LogLevel.BATCH, "x.log")
    assert not (store_dir / "x.log").exists() and (store_dir / "m.pt").exists()


def test_symlink_written_after_target_and_suffix_not_doubled(
    memory: MemoryProvider, store_dir: Path, make_file: MakeFile
) -> None:
    with ObjectStoreLogger("file", str(store_dir), object_name="r/{artifact_name}") as logger:
        logger.file_artifact(LogLevel.EPOCH, "ep1.pt", make_file(b"weights"))
        logger.symlink_artifact(LogLevel.EPOCH, "ep1.pt", "latest")
        logger.symlink_artifact(LogLevel.EPOCH, "ep1.pt", "best.symlink")
    assert (store_dir / "r/latest.symlink").read_text() == "r/ep1.pt"
    assert (store_dir / "r/best.symlink").read_text() == "r/ep1.pt"
    assert not (store_dir / "r/best.symlink.symlink").exists()


def _memory_logger(
    memory: MemoryProvider, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> ObjectStoreLogger:
    """A logger over ``memory``, to inject failures (its behaviour is store-agnostic)."""
    monkeypatch.setattr(
        "artifact_uploader._logger.provider_from_seed", lambda *args, **kwargs: memory
    )
    logger = ObjectStoreLogger("file", str(tmp_path / "unused"), use_procs=False)
    assert logger.uploader.provider is memory
    return logger


def test_symlink_not_written_when_target_fails(
    tmp_path: Path, make_file: MakeFile, monkeypatch: pytest.MonkeyPatch
) -> None:
    memory = MemoryProvider("m")
    memory.pause()
    logger = _memory_logger(memory, tmp_path, monkeypatch)
    memory.inject(ProviderError("target broke"), times=1)
    logger.file_artifact(LogLevel.EPOCH, "t.pt", make_file(b"t"))
    logger.symlink_artifact(LogLevel.EPOCH, "t.pt", "latest")
    memory.resume()
    with pytest.raises(UploadFailedError) as info:
        logger.flush()
    names = sorted(f.name for f in info.value.failures)
    assert names == ["latest.symlink", "t.pt"]
    assert memory.objects == {}
    logger.close()


def test_failure_raised_from_next_file_artifact(
    tmp_path: Path, make_file: MakeFile, monkeypatch: pytest.MonkeyPatch
) -> None:
    memory = MemoryProvider("m")
    logger = _memory_logger(memory, tmp_path, monkeypatch)
    memory.inject(ProviderError("denied"), times=1)
    fut = logger.file_artifact(LogLevel.EPOCH, "a.pt", make_file(b"a"))
    assert fut is not None
    wait_until(fut.done, what="first upload to fail")
    with pytest.raises(UploadFailedError, match=r"a\.pt"):
        logger.file_artifact(LogLevel.EPOCH, "b.pt", make_file(b"b"))
    logger.close()


def test_symlink_to_unlogged_name(store_dir: Path) -> None:
    with (
        ObjectStoreLogger("file", str(store_dir)) as logger,
        pytest.raises(ConfigError, match=r"never\.pt"),
    ):
        logger.symlink_artifact(LogLevel.EPOCH, "never.pt", "latest")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"object_name": "{artifact_name}/{epoch}"}, "epoch"),
        ({"num_concurrent_uploads": 0}, "num_concurrent_uploads"),
        ({"num_concurrent_uploads": -2}, "num_concurrent_uploads"),
        ({"num_concurrent_uploads": 2.5}, "num_concurrent_uploads"),
        ({"provider": "dropbox"}, "dropbox"),
        ({"use_procs": "yes"}, "use_procs"),
    ],
)
def test_bad_logger_arguments_raise_config_error(
    store_dir: Path, kwargs: dict[str, object], match: str
) -> None:
    args: dict[str, object] = {"provider": "file", "container": str(store_dir)}
    args.update(kwargs)
    with pytest.raises(ConfigError, match=match):
        ObjectStoreLogger(**args)  # type: ignore[arg-type]


def test_wrong_path_and_directory_raise_at_file_artifact(store_dir: Path, tmp_path: Path) -> None:
    with ObjectStoreLogger("file", str(store_dir)) as logger:
        with pytest.raises(SourceFileError, match=r"nope\.pt"):
            logger.file_artifact(LogLevel.EPOCH, "x", tmp_path / "nope.pt")
        with pytest.raises(SourceFileError, match="directory"):
            logger.file_artifact(LogLevel.EPOCH, "x", tmp_path)


def test_malformed_uri_and_missing_scheme() -> None:
    with pytest.raises(ConfigError, match="malformed"):
        Uploader("bucket-without-scheme")
    with pytest.raises(ConfigError, match="ftp"):
        Uploader("ftp://host/x")


@pytest.mark.parametrize("use_procs", [False, True], ids=["thread", "procs"])
def test_logger_resume_with_a_lost_staged_copy_reports_it_once(
    tmp_path: Path, use_procs: bool
) -> None:
    folder = tmp_path / "staging"
    (lost,) = leave_pending(folder, {"gone": b"12345"})
    lost.unlink()  # e.g. a staging folder on /dev/shm after a reboot
    store = tmp_path / "store"
    with pytest.raises(UploadFailedError, match="is missing") as info:
        ObjectStoreLogger(
            "file", str(store), upload_staging_folder=str(folder), resume=True, use_procs=use_procs
        )
    assert [f.name for f in info.value.failures] == ["gone"]
    # The failed constructor let go of the folder (a leaked lock would say "in use"), and the
    # entry that can never be resumed is not reported again.
    logger = ObjectStoreLogger(
        "file", str(store), upload_staging_folder=str(folder), resume=True, use_procs=use_procs
    )
    try:
        assert logger.resume_report is not None and logger.resume_report.uploaded == []
    finally:
        logger.close()
    assert load(folder) == ([], [])


class _HeldList(list[FailedUpload]):
    """A failure list whose append pauses midway, as a thread switch can."""

    def __init__(self) -> None:
        super().__init__()
        self.in_append, self.go = threading.Event(), threading.Event()

    def append(self, item: FailedUpload) -> None:
        self.in_append.set()
        self.go.wait()
        super().append(item)


def test_a_failure_recorded_while_the_caller_takes_failures_is_not_lost() -> None:
    reporter = LocalReporter()
    held = _HeldList()
    reporter._failures = held
    # The loop's side: an upload fails (its report paused inside the append).
    recorder = threading.Thread(
        target=reporter.add_failure, args=(FailedUpload("f", None, ProviderError("boom")),)
    )
    recorder.start()
    held.in_append.wait()
    # The caller's side (the logger's next call) takes the failures meanwhile.
    taken: list[list[FailedUpload]] = []
    taker = threading.Thread(target=lambda: taken.append(list(reporter.take_failures())))
    taker.start()
    wait_until(
        lambda: not taker.is_alive() or _waiting_in("take_failures", taker),
        what="the taker to finish or wait",
    )
    held.go.set()
    recorder.join()
    taker.join()
    reported = taken[0] + list(reporter.take_failures())
    assert [f.name for f in reported] == ["f"]


def _waiting_in(function: str, thread: threading.Thread | None = None) -> bool:
    """Whether ``thread`` (any thread when None) is inside ``function`` right now."""
    frames = sys._current_frames()
    stacks = [frames.get(thread.ident or 0)] if thread is not None else list(frames.values())
    for frame in stacks:
        while frame is not None:
            if frame.f_code.co_name == function:
                return True
            frame = frame.f_back
    return False


@pytest.mark.parametrize(
    ("persistent", "use_procs"),
    [(True, False), (False, False), (True, True)],
    ids=["persistent", "temporary", "procs"],
)
def test_submit_racing_close_fails_cleanly(
    make_file: MakeFile,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    persistent: bool,
    use_procs: bool,
) -> None:
    in_place, let_go = threading.Event(), threading.Event()
    real_place = Stager._place

    def held_place(self: Stager, src: Path, dest: Path, mode: str) -> int | None:
        in_place.set()
        let_go.wait()
        return real_place(self, src, dest, mode)

    monkeypatch.setattr(Stager, "_place", held_place)
    src = make_file(b"late")
    store = tmp_path / "store"
    up = Uploader(
        f"file://{store}",
        staging_dir=tmp_path / "stg" if persistent else None,
        use_procs=use_procs,
    )
    folder = Path(up.staging_folder)
    outcome: dict[str, object] = {}

    def submit() -> None:
        try:
            outcome["error"] = up.submit(src, "late").exception(timeout=30)
        except BaseException as exc:
            outcome["error"] = exc

    submitter = threading.Thread(target=submit)
    submitter.start()
    in_place.wait()
    closer = threading.Thread(target=up.close)
    closer.start()
    # close() gets as far as it can (it waits for the submission still staging).
    wait_until(lambda: not closer.is_alive() or _waiting_in("stop_submits"))
    let_go.set()
    submitter.join()
    closer.join()
    assert isinstance(outcome["error"], UploaderClosedError), outcome
    assert not (store / "late").exists()
    if persistent:
        assert load(folder) == ([], [])
        assert list((folder / "staged").iterdir()) == []
    else:
        assert not folder.exists()
