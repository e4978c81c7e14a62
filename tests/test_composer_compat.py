"""ObjectStoreLogger driven the way Composer's trainer drives a logger destination.

Composer itself cannot be installed beside this project's PyTorch (its releases pin an older
torch), so these tests replay Composer's calling convention instead: the engine calls
``run_event(event, state, logger)`` for every event, then ``close(state, logger)`` and
``post_close()``; its ``Logger`` calls ``log_metrics``/``log_hyperparameters`` on every
destination and ``log_file_artifact``/``log_symlink_artifact`` (or, in newer releases,
``upload_file``) to store files. The logger itself is the real one, writing to a real store.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from artifact_uploader import LogLevel, ObjectExistsError, ObjectStoreLogger, UploadFailedError


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


def test_run_name_comes_from_the_trainer_state(
    store_dir: Path, make_file: Callable[..., Path]
) -> None:
    dest = ObjectStoreLogger("file", str(store_dir), object_name="{run_name}/{artifact_name}")
    state = State(run_name="foo")
    src = make_file(b"epoch 1 weights")

    def epoch() -> None:
        dest.log_file_artifact(state, LogLevel.EPOCH, "ep1.pt", src, overwrite=False)
        dest.log_symlink_artifact(state, LogLevel.EPOCH, "ep1.pt", "latest.pt", overwrite=True)

    assert dest.can_log_file_artifacts() and dest.can_upload_files()
    run_composer_like_fit(dest, state, [epoch])
    assert (store_dir / "foo" / "ep1.pt").read_bytes() == b"epoch 1 weights"
    assert (store_dir / "foo" / "latest.pt.symlink").read_text() == "foo/ep1.pt"


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
