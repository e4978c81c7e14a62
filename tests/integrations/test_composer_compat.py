"""ObjectStoreLogger driven by replayed Composer calls, where a real run cannot show the case.

test_composer_real.py runs a real Composer Trainer. The replays here cover what a real
run does not reach or cannot pin down: the older seed-era names (``log_file_artifact``,
``log_symlink_artifact``), the window between Composer's ``close`` hook and ``post_close``,
a failure raised at the next ``batch_end`` rather than at ``fit_end``, the keyword form of the
close hook, bad checkpointed state, and the logger without Composer imported. The logger is
the real one, writing to a real store.
"""

from __future__ import annotations

import enum
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from artifact_uploader import (
    ConfigError,
    LogLevel,
    ObjectExistsError,
    ObjectStoreLogger,
    UploadFailedError,
)
from tests.conftest import wait_until


class Event(enum.Enum):
    """The event names Composer's engine passes (a subset, with Composer's string values)."""

    INIT = "init"
    FIT_START = "fit_start"
    BATCH_END = "batch_end"
    EPOCH_END = "epoch_end"
    FIT_END = "fit_end"


@dataclass
class State:
    run_name: str


def run_composer_like_fit(
    destination: ObjectStoreLogger,
    state: State,
    epochs: list[Callable[[], None]],
) -> None:
    """Replay Composer's engine: init, fit_start, per-epoch work + events, fit_end, close."""
    logger = object()  # Composer passes its Logger; destinations may ignore it
    destination.run_event(Event.INIT, state, logger)
    destination.log_hyperparameters({"lr": 0.1})
    destination.run_event(Event.FIT_START, state, logger)
    for epoch in epochs:
        epoch()
        destination.log_metrics({"loss": 1.0}, step=1)
        destination.run_event(Event.BATCH_END, state, logger)
        destination.run_event(Event.EPOCH_END, state, logger)
    destination.run_event(Event.FIT_END, state, logger)
    destination.close(state, logger)  # the engine's close hook...
    destination.post_close()  # ...then the real shutdown


def test_constructor_run_name_wins_over_the_state(
    store_dir: Path, make_file: Callable[..., Path]
) -> None:
    dest = ObjectStoreLogger(
        "file", str(store_dir), object_name="{run_name}/{artifact_name}", run_name="mine"
    )
    state = State(run_name="trainers")
    run_composer_like_fit(
        dest,
        state,
        [lambda: dest.upload_file(state, "a.txt", make_file(b"a"), overwrite=False)],
    )
    assert (store_dir / "mine" / "a.txt").read_bytes() == b"a"
    assert not (store_dir / "trainers").exists()


def test_the_close_hook_does_not_shut_down_before_post_close(
    store_dir: Path, make_file: Callable[..., Path]
) -> None:
    dest = ObjectStoreLogger("file", str(store_dir))
    state = State(run_name="r")
    dest.close(state, object())
    dest.close(state, logger=object())  # the hook by keyword, as Callback subclasses call it
    dest.close(state=state, logger=object())
    # Still open: Composer may log the final checkpoint between close() and post_close().
    dest.upload_file(state, "final.pt", make_file(b"final"))
    dest.post_close()
    assert (store_dir / "final.pt").read_bytes() == b"final"


def test_a_failed_upload_is_raised_at_the_next_batch_end(
    store_dir: Path, make_file: Callable[..., Path]
) -> None:
    (store_dir / "taken.pt").parent.mkdir(parents=True)
    (store_dir / "taken.pt").write_bytes(b"already here")
    dest = ObjectStoreLogger("file", str(store_dir))
    state = State(run_name="r")
    dest.run_event(Event.INIT, state, None)
    future = dest.file_artifact(LogLevel.BATCH, "taken.pt", make_file(b"new"), overwrite=False)
    assert future is not None
    with pytest.raises(ObjectExistsError):
        future.result(timeout=30)
    with pytest.raises(UploadFailedError) as info:
        dest.run_event(Event.BATCH_END, state, None)
    assert "taken.pt" in str(info.value)
    dest.post_close()  # reported once: nothing left to raise
    assert (store_dir / "taken.pt").read_bytes() == b"already here"


def test_post_close_raises_what_did_not_upload(
    store_dir: Path, make_file: Callable[..., Path]
) -> None:
    (store_dir / "taken.pt").parent.mkdir(parents=True)
    (store_dir / "taken.pt").write_bytes(b"already here")
    dest = ObjectStoreLogger("file", str(store_dir))
    state = State(run_name="r")
    dest.run_event(Event.INIT, state, None)
    dest.log_file_artifact(state, LogLevel.FIT, "taken.pt", make_file(b"new"), overwrite=False)
    dest.close(state, None)
    with pytest.raises(UploadFailedError) as info:
        dest.post_close()
    assert [f.name for f in info.value.failures] == ["taken.pt"]


def test_the_seed_era_names_store_files_and_symlinks(
    store_dir: Path, make_file: Callable[..., Path]
) -> None:
    dest = ObjectStoreLogger("file", str(store_dir), object_name="{run_name}/{artifact_name}")
    state = State(run_name="foo")

    def epoch() -> None:
        dest.log_file_artifact(state, LogLevel.EPOCH, "ep1.pt", make_file(b"w1"), overwrite=False)
        dest.log_symlink_artifact(state, LogLevel.EPOCH, "ep1.pt", "latest.pt", overwrite=True)

    assert dest.can_log_file_artifacts() and dest.can_upload_files()
    run_composer_like_fit(dest, state, [epoch])
    assert (store_dir / "foo" / "ep1.pt").read_bytes() == b"w1"
    assert (store_dir / "foo" / "latest.pt.symlink").read_text() == "foo/ep1.pt"


def test_fit_end_waits_for_the_uploads_and_raises_their_failure(
    store_dir: Path, make_file: Callable[..., Path]
) -> None:
    (store_dir / "taken.pt").parent.mkdir(parents=True)
    (store_dir / "taken.pt").write_bytes(b"already here")
    dest = ObjectStoreLogger("file", str(store_dir))
    state = State(run_name="r")
    dest.upload_file(state, "fine.pt", make_file(b"fine"))
    dest.upload_file(state, "taken.pt", make_file(b"new"), overwrite=False)
    with pytest.raises(UploadFailedError) as info:
        dest.fit_end(state, None)
    assert [f.name for f in info.value.failures] == ["taken.pt"]
    # Drained: everything that could land had landed when fit_end returned.
    assert (store_dir / "fine.pt").read_bytes() == b"fine"
    dest.post_close()


@pytest.mark.parametrize("wait_for_failure", [False, True], ids=["racing", "target-failed-first"])
def test_a_symlink_upload_waits_for_its_target_and_is_dropped_when_it_fails(
    store_dir: Path, make_file: Callable[..., Path], wait_for_failure: bool
) -> None:
    (store_dir / "ckpt" / "ep2.pt").parent.mkdir(parents=True)
    (store_dir / "ckpt" / "ep2.pt").write_bytes(b"someone else's")
    dest = ObjectStoreLogger("file", str(store_dir))
    state = State(run_name="r")
    dest.upload_file(state, "ckpt/ep1.pt", make_file(b"one"))
    dest.upload_file(
        state, "ckpt/latest.pt.symlink", make_file(b"ckpt/ep1.pt", "a.symlink"), overwrite=True
    )
    dest.flush()
    assert (store_dir / "ckpt" / "latest.pt.symlink").read_text() == "ckpt/ep1.pt"
    dest.upload_file(state, "ckpt/ep2.pt", make_file(b"two"), overwrite=False)  # will fail
    reported: list[str] = []
    try:
        dest.upload_file(
            state, "ckpt/latest.pt.symlink", make_file(b"ckpt/ep2.pt", "b.symlink"), overwrite=True
        )
        symlink_submitted = True
    except UploadFailedError as early:
        # The target failed before this call could submit the symlink (the upload runs on its
        # own thread; on a busy machine it can win): reported here, and no symlink is written.
        reported += [f.name for f in early.failures]
        symlink_submitted = False
    if wait_for_failure:
        # The target has failed before fit_end (as on a busy machine): fit_end must still wait
        # for the symlink's own failure, not raise what has failed so far and leave the rest
        # to post_close, whose errors Composer only logs.
        wait_until(
            lambda: dest.uploader.totals.files_failed >= 1, 60, "the conflicting upload to fail"
        )
    if symlink_submitted:
        with pytest.raises(UploadFailedError) as info:
            dest.fit_end(state, None)
        reported += [f.name for f in info.value.failures]
    else:
        dest.fit_end(state, None)  # the one failure was reported already, and only once
    expected = ["ckpt/ep2.pt", "ckpt/latest.pt.symlink"] if symlink_submitted else ["ckpt/ep2.pt"]
    assert sorted(reported) == expected
    assert (store_dir / "ckpt" / "latest.pt.symlink").read_text() == "ckpt/ep1.pt"
    dest.post_close()  # nothing left to report


def test_a_symlink_file_to_something_not_logged_here_is_stored_as_a_file(
    store_dir: Path, make_file: Callable[..., Path]
) -> None:
    dest = ObjectStoreLogger("file", str(store_dir), object_name="p/{artifact_name}")
    state = State(run_name="r")
    dest.upload_file(state, "x.symlink", make_file(b"elsewhere/obj", "x.symlink"))
    dest.post_close()
    assert (store_dir / "p" / "x.symlink").read_bytes() == b"elsewhere/obj"


def test_load_state_dict_refuses_what_is_not_a_mapping(store_dir: Path) -> None:
    with ObjectStoreLogger("file", str(store_dir), run_name="r") as dest:
        assert dest.state_dict() == {"run_name": "r", "object_name": "{artifact_name}"}
        dest.load_state_dict({"run_name": "other", "unknown": 1})  # accepted, nothing restored
        assert dest.run_name == "r"
        with pytest.raises(ConfigError, match="mapping"):
            dest.load_state_dict(["not", "a", "mapping"])  # type: ignore[arg-type]


def test_the_metrics_tables_and_images_calls_are_accepted(store_dir: Path) -> None:
    with ObjectStoreLogger("file", str(store_dir)) as dest:
        dest.log_hyperparameters({"lr": 0.1})
        dest.log_metrics({"loss": 1.0}, step=3)
        dest.log_traces({"t": 1})
        dest.log_table(["a"], [[1]], name="t", step=1)
        dest.log_images([[0.0]], name="i", channels_last=True, step=1, masks=None, use_table=False)
    # Nothing stored: these are metrics, not files.
    assert [p for p in store_dir.rglob("*") if p.is_file()] == []


def test_libcloud_style_local_store_takes_its_folder_from_key(
    tmp_path: Path, make_file: Callable[..., Path]
) -> None:
    folder = tmp_path / "libcloud"
    folder.mkdir()
    with ObjectStoreLogger("local", ".", provider_kwargs={"key": str(folder)}) as dest:
        dest.file_artifact(LogLevel.FIT, "a/b.txt", make_file(b"ab"))
    assert (folder / "a" / "b.txt").read_bytes() == b"ab"
    # As in libcloud, the container is a folder inside `key`.
    with ObjectStoreLogger("local", "bucket", provider_kwargs={"key": str(folder)}) as dest:
        dest.file_artifact(LogLevel.FIT, "c.txt", make_file(b"c"))
    assert (folder / "bucket" / "c.txt").read_bytes() == b"c"
    with pytest.raises(ConfigError, match="key"):
        ObjectStoreLogger("local", ".", provider_kwargs={"key": 42})


def test_without_composer_imported_the_logger_is_a_plain_class(store_dir: Path) -> None:
    code = (
        "import sys, tempfile\n"
        "from artifact_uploader import ObjectStoreLogger\n"
        "lg = ObjectStoreLogger('file', tempfile.mkdtemp())\n"
        "lg.close()\n"
        "assert type(lg) is ObjectStoreLogger, type(lg).__mro__\n"
        "assert not any(m.startswith(('composer', 'torch')) for m in sys.modules), 'imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
