"""Staging modes and the staged-bytes budget."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from artifact_uploader import (
    ConfigError,
    MemoryProvider,
    StagingError,
    StagingTimeoutError,
    Uploader,
)
from artifact_uploader._staging import Stager

MakeFile = Callable[..., Path]


def test_budget_full_waits_then_times_out_with_clear_error(
    memory: MemoryProvider, make_file: MakeFile
) -> None:
    memory.pause()
    with Uploader(memory, max_staged_bytes=10) as up:
        first = up.submit(make_file(b"x" * 8), "a")
        with pytest.raises(StagingTimeoutError, match="10 bytes"):
            up.submit(make_file(b"y" * 8), "b", timeout=0.05)
        memory.resume()
        first.result(timeout=10)
        # Space is back: the same submit now goes through.
        up.submit(make_file(b"y" * 8), "b").result(timeout=10)
    assert memory.objects["b"] == b"y" * 8


def test_waiting_submit_proceeds_when_space_frees(
    memory: MemoryProvider, make_file: MakeFile
) -> None:
    memory.pause()
    with Uploader(memory, max_staged_bytes=10) as up:
        up.submit(make_file(b"x" * 8), "a")
        done = threading.Event()

        def second() -> None:
            up.submit(make_file(b"z" * 8), "c")
            done.set()

        t = threading.Thread(target=second)
        t.start()
        assert not done.wait(0.1), "second submit must wait while the budget is full"
        memory.resume()
        t.join(10)
        assert done.is_set()
        up.flush()
    assert set(memory.objects) == {"a", "c"}


def test_file_larger_than_budget_is_staged_alone(
    memory: MemoryProvider, make_file: MakeFile
) -> None:
    with Uploader(memory, max_staged_bytes=4) as up:
        up.submit(make_file(b"big file, 20 bytes.."), "big").result(timeout=10)
    assert memory.objects["big"] == b"big file, 20 bytes.."


@pytest.mark.parametrize("mode", ["copy", "reflink", "link", "move", "auto"])
def test_staging_modes(tmp_path: Path, mode: str) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(b"payload")
    stager = Stager(tmp_path / "staging", mode=mode)
    staged = stager.stage(src)
    assert staged.path.read_bytes() == b"payload"
    assert src.exists() == (mode != "move")
    if mode in ("copy", "reflink", "auto"):
        src.write_bytes(b"changed")
        assert staged.path.read_bytes() == b"payload"
    stager.release(staged)
    assert not staged.path.exists()
    stager.close()


def test_unknown_mode_and_bad_budget() -> None:
    with pytest.raises(ConfigError, match="teleport"):
        Stager(None, mode="teleport")
    with pytest.raises(ConfigError, match="max_staged_bytes"):
        Stager(None, max_staged_bytes=0)


def test_unwritable_staging_folder(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StagingError, match="not usable"):
        Stager(blocker / "staging")


def test_second_uploader_on_same_folder_refused(tmp_path: Path) -> None:
    with Uploader(MemoryProvider("a"), staging_dir=tmp_path / "s"):
        with pytest.raises(StagingError, match="in use"):
            Uploader(MemoryProvider("b"), staging_dir=tmp_path / "s")
