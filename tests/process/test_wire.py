"""The messages between ``Uploader(use_procs=True)`` and its child (``_wire.py``)."""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path

import pytest

from artifact_uploader import EventKind, ObjectExistsError, RetryPolicy, UploadResult
from artifact_uploader import _wire as wire
from artifact_uploader._intake import EngineOptions, Prepared
from artifact_uploader._staging import StagedFile

_CLASSES = [
    obj
    for name, obj in vars(wire).items()
    if isinstance(obj, type) and obj.__module__ == wire.__name__ and not name.startswith("_")
]


def _across(msg: object) -> object:
    return pickle.loads(pickle.dumps(msg))


def test_every_message_is_a_frozen_dataclass() -> None:
    names = {cls.__name__ for cls in _CLASSES}
    assert {"Spec", "Submit", "Flush", "Close", "Resume", "Read"} <= names
    assert {"Ready", "Count", "Event", "Failure", "End", "Log", "Reply"} <= names
    for cls in _CLASSES:
        assert dataclasses.is_dataclass(cls), cls
        assert cls.__dataclass_params__.frozen, cls  # type: ignore[attr-defined]


def test_submit_carries_a_prepared_file_across(tmp_path: Path) -> None:
    staged = StagedFile("id-2", tmp_path / "staged" / "x", 5, "/data/ckpt.pt")
    msg = _across(wire.Submit.of(Prepared("runs/ckpt.pt", staged, False), "id-1"))
    assert isinstance(msg, wire.Submit)
    assert msg.after_id == "id-1"
    rebuilt = msg.prepared()
    assert (rebuilt.name, rebuilt.overwrite) == ("runs/ckpt.pt", False)
    assert (rebuilt.staged.id, rebuilt.staged.path, rebuilt.staged.size) == ("id-2", staged.path, 5)
    assert rebuilt.staged.source == "/data/ckpt.pt"
    with pytest.raises(dataclasses.FrozenInstanceError):
        msg.name = "other"  # type: ignore[misc]


def test_messages_cross_with_their_types() -> None:
    spec = wire.Spec(
        provider=b"p",
        options=EngineOptions(max_concurrency=2, retry=RetryPolicy(attempts=3)),
        folder="/tmp/f",
        persistent=True,
        forward_events=True,
        parent_pid=1,
        log_level=20,
    )
    back = _across(spec)
    assert back == spec and isinstance(back, wire.Spec)
    assert back.options.retry.attempts == 3
    event = _across(
        wire.Event(EventKind.RETRY, "a", 3, 0, 2, 0.5, wire.pack(ObjectExistsError("a exists")))
    )
    assert isinstance(event, wire.Event) and event.kind is EventKind.RETRY
    assert type(wire.unpack(event.error)) is ObjectExistsError
    result = UploadResult(uri="file:///x/a", name="a", size=3)
    end = _across(wire.End("id", result, None))
    assert isinstance(end, wire.End) and end.result == result and wire.unpack(end.error) is None
