"""Staging modes and the staged-bytes budget."""

from __future__ import annotations

import json
import os
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
from artifact_uploader._journal import JOURNAL_FILE, Journal, JournalEntry
from artifact_uploader._staging import Stager
from tests.conftest import resumed

MakeFile = Callable[..., Path]


def test_budget_full_waits_then_times_out_with_clear_error(
    memory: MemoryProvider, make_file: MakeFile
) -> None:
    memory.pause()
    with Uploader(memory, max_staged_bytes=10) as up:
        # resumed(): a failing assertion must not leave close() waiting on held requests.
        with resumed(memory):
            first = up.submit(make_file(b"x" * 8), "a")
            with pytest.raises(StagingTimeoutError, match="10 bytes"):
                up.submit(make_file(b"y" * 8), "b", timeout=0.05)
        first.result(timeout=10)
        # Space is back: the same submit now goes through.
        up.submit(make_file(b"y" * 8), "b").result(timeout=10)
    assert memory.objects["b"] == b"y" * 8


def test_waiting_submit_proceeds_when_space_frees(
    memory: MemoryProvider, make_file: MakeFile
) -> None:
    memory.pause()
    with Uploader(memory, max_staged_bytes=10) as up:
        done = threading.Event()
        with resumed(memory):
            up.submit(make_file(b"x" * 8), "a")

            def second() -> None:
                up.submit(make_file(b"z" * 8), "c")
                done.set()

            t = threading.Thread(target=second, daemon=True)
            t.start()
            assert not done.wait(0.1), "second submit must wait while the budget is full"
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


def _journal_full(self: Journal, entry: JournalEntry) -> None:
    raise StagingError("could not write the journal: No space left on device", path=self.path)


def test_move_refused_after_staging_puts_the_file_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "ckpt.pt"
    src.write_bytes(b"the only copy")
    src.chmod(0o640)
    monkeypatch.setattr(Journal, "pending", _journal_full)
    with Uploader(MemoryProvider("m"), staging_dir=tmp_path / "stg", staging="move") as up:
        with pytest.raises(StagingError, match="No space"):
            up.submit(src, "ckpt.pt")
        # Refused after the move: the file is back where it was, as it was.
        assert src.read_bytes() == b"the only copy"
        assert src.stat().st_mode & 0o777 == 0o640
        assert list((tmp_path / "stg" / "staged").iterdir()) == []


def test_move_refused_and_source_taken_keeps_the_file_and_names_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "ckpt.pt"
    src.write_bytes(b"the only copy")

    def full_and_source_rewritten(self: Journal, entry: JournalEntry) -> None:
        src.write_bytes(b"a newer file")  # written at the source meanwhile: never replaced
        _journal_full(self, entry)

    monkeypatch.setattr(Journal, "pending", full_and_source_rewritten)
    with Uploader(MemoryProvider("m"), staging_dir=tmp_path / "stg", staging="move") as up:
        with pytest.raises(StagingError) as info:
            up.submit(src, "ckpt.pt")
        kept = list((tmp_path / "stg" / "staged").iterdir())
        assert len(kept) == 1 and kept[0].read_bytes() == b"the only copy"
        assert str(kept[0]) in "\n".join(info.value.__notes__)
        assert src.read_bytes() == b"a newer file"


def test_moved_file_is_made_private(tmp_path: Path) -> None:
    src = tmp_path / "ckpt.pt"
    src.write_bytes(b"weights")
    src.chmod(0o644)
    stager = Stager(tmp_path / "staging", mode="move")
    staged = stager.stage(src)
    assert staged.path.stat().st_mode & 0o777 == 0o600
    stager.release(staged)
    stager.close()


def test_a_source_that_grows_while_staged_uploads_what_was_staged(
    memory: MemoryProvider, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "log.txt"
    src.write_bytes(b"first part;")
    real_check = Stager.check_source

    def check_then_grow(path: str | os.PathLike[str]) -> tuple[Path, int]:
        checked = real_check(path)
        with open(src, "ab") as f:  # the writer appends between stat() and the copy
            f.write(b" second part")
        return checked

    monkeypatch.setattr(Stager, "check_source", staticmethod(check_then_grow))
    staging = tmp_path / "staging"
    with Uploader(memory, staging_dir=staging) as up:
        result = up.submit(src, "log.txt").result(timeout=10)
        # The journalled size is what was staged, so a resume would find the staged copy whole.
        pending = json.loads((staging / JOURNAL_FILE).read_text().splitlines()[0])
    assert pending["size"] == len(b"first part; second part")
    assert memory.objects["log.txt"] == b"first part; second part"
    assert result.size == len(b"first part; second part")


@pytest.mark.parametrize("mode", ["copy", "move"])
def test_long_non_ascii_file_name_stages(tmp_path: Path, mode: str) -> None:
    # 80 characters of 3 bytes each: within the 255-byte limit for the source's own name, but
    # not with the staged file's 33-byte id prefix, unless the label is cut by bytes.
    src = tmp_path / ("字" * 80 + ".bin")
    src.write_bytes(b"weights")
    store = MemoryProvider("m")
    with Uploader(store, staging=mode) as up:
        up.submit(src, "model.bin").result(timeout=10)
    assert store.objects["model.bin"] == b"weights"


def test_our_own_leftovers_in_a_staging_folder_are_reused(tmp_path: Path) -> None:
    # What a crashed run of this user leaves (a rewrite cut short, a lock, a staged folder a
    # umask left open) is ours: taken over and made private again, not refused.
    folder = tmp_path / "staging"
    (folder / "staged").mkdir(parents=True)
    folder.chmod(0o700)
    (folder / "staged").chmod(0o777)
    (folder / "journal.tmp").write_text('{"op": "pending", "half-writ')
    (folder / "lock").write_text("")
    with Uploader(MemoryProvider("m"), staging_dir=folder):
        assert (folder / "staged").stat().st_mode & 0o777 == 0o700
    assert not (folder / "journal.tmp").exists()
    assert (folder / JOURNAL_FILE).stat().st_mode & 0o777 == 0o600
