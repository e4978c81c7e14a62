"""Security of the staging folder and its journal (issue 11, findings 1 and 2; issue 14).

Everything read back from a staging folder is untrusted input: whoever could once write the
folder could have written the journal or planted links in it. These are the probes' scenarios,
each reproduced on the local filesystem:

- Finding 1, ``resume`` trusted the journal: an absolute or ``..`` ``staged`` path was
  uploaded and then deleted; a name ``../x`` was written outside a local store's root; wrong
  JSON types were coerced; one huge line was read whole into memory.
- Finding 2, a pre-existing staging folder was taken as it was: mode 0777 was accepted, and
  symbolic links planted in it (``journal.tmp``, ``lock``, the staged sub-folder) were followed.
- Issue 14: pending entries from an earlier run are announced when the folder is opened.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import tracemalloc
import uuid
from pathlib import Path
from typing import Any

import pytest

from artifact_uploader import (
    LogLevel,
    MemoryProvider,
    ObjectStoreLogger,
    StagingError,
    Uploader,
    UploadFailedError,
)
from artifact_uploader._journal import (
    JOURNAL_FILE,
    MAX_LINE,
    load,
    pending_count,
    read,
    resuming,
)
from tests._pending import leave_pending

VICTIM = b"the victim's data, never to be uploaded, deleted or changed"


def _staging(tmp_path: Path) -> Path:
    """A staging folder as a previous run of this user leaves it (0700, with staged/)."""
    folder = tmp_path / "staging"
    (folder / "staged").mkdir(parents=True)
    folder.chmod(0o700)
    (folder / "staged").chmod(0o700)
    return folder


def _victim(tmp_path: Path) -> Path:
    victim = tmp_path / "victim.txt"
    victim.write_bytes(VICTIM)
    victim.chmod(0o644)
    return victim


def _write_entries(folder: Path, *records: dict[str, Any]) -> None:
    with open(folder / JOURNAL_FILE, "a") as f:
        for rec in records:
            f.write(json.dumps(rec) + "\n")


def _pending(name: object = "obj", *, staged: object = None, **fields: Any) -> dict[str, Any]:
    """A ``pending`` record; ``staged`` defaults to the entry's own (missing) staged file."""
    sid = fields.pop("id", uuid.uuid4().hex)
    rec = {
        "op": "pending",
        "id": sid,
        "name": name,
        "staged": f"staged/{sid}-obj" if staged is None else staged,
        "size": len(VICTIM),
        "overwrite": True,
        "source": "src",
    }
    rec.update(fields)
    return rec


def _assert_victim_untouched(victim: Path, store: MemoryProvider) -> None:
    assert victim.read_bytes() == VICTIM, "the victim file was changed or deleted"
    assert stat.S_IMODE(victim.stat().st_mode) == 0o644, "the victim file was chmod'ed"
    assert VICTIM not in store.objects.values(), "the victim file was uploaded"


# -- finding 1: the journal is input ---------------------------------------------------------


def test_absolute_staged_path_is_neither_uploaded_nor_deleted(tmp_path: Path) -> None:
    folder = _staging(tmp_path)
    victim = _victim(tmp_path)
    _write_entries(folder, _pending("stolen", staged=str(victim)))
    store = MemoryProvider("m")
    report = Uploader.resume(folder, store)
    _assert_victim_untouched(victim, store)
    assert store.objects == {}
    assert len(report.bad_entries) == 1
    assert "'stolen'" in report.bad_entries[0] and "absolute" in report.bad_entries[0]
    assert report.uploaded == []


def test_bad_entries_reach_the_report_in_process_mode(tmp_path: Path) -> None:
    # use_procs: the parent reads and refuses; the child resumes and builds the report.
    folder = _staging(tmp_path)
    victim = _victim(tmp_path)
    root = tmp_path / "store"
    root.mkdir()
    good = _pending("good")
    (folder / good["staged"]).write_bytes(VICTIM)
    _write_entries(folder, _pending("stolen", staged=str(victim)), good)
    report = Uploader.resume(folder, f"file://{root}", use_procs=True)
    assert victim.read_bytes() == VICTIM
    assert not (root / "stolen").exists()
    assert (root / "good").read_bytes() == VICTIM
    assert [r.name for r in report.uploaded] == ["good"]
    assert len(report.bad_entries) == 1 and "'stolen'" in report.bad_entries[0]


def test_dotdot_staged_path_is_neither_uploaded_nor_deleted(tmp_path: Path) -> None:
    folder = _staging(tmp_path)
    victim = _victim(tmp_path)
    _write_entries(folder, _pending("stolen", staged="staged/../../victim.txt"))
    store = MemoryProvider("m")
    report = Uploader.resume(folder, store)
    _assert_victim_untouched(victim, store)
    assert store.objects == {}
    assert len(report.bad_entries) == 1 and "'..'" in report.bad_entries[0]


def test_staged_file_that_is_a_symlink_is_not_followed(tmp_path: Path) -> None:
    folder = _staging(tmp_path)
    victim = _victim(tmp_path)
    rec = _pending("stolen")
    (folder / rec["staged"]).symlink_to(victim)
    _write_entries(folder, rec)
    store = MemoryProvider("m")
    report = Uploader.resume(folder, store)
    _assert_victim_untouched(victim, store)
    assert (folder / rec["staged"]).is_symlink(), "the planted link was deleted"
    assert len(report.bad_entries) == 1 and "symbolic link" in report.bad_entries[0]


def test_a_name_escaping_a_local_store_is_refused(tmp_path: Path) -> None:
    folder = _staging(tmp_path)
    root = tmp_path / "store"
    root.mkdir()
    rec = _pending("../x")
    staged = folder / rec["staged"]
    staged.write_bytes(VICTIM)
    _write_entries(folder, rec)
    report = Uploader.resume(folder, f"file://{root}")
    assert not (tmp_path / "x").exists(), "resume wrote outside the store's root"
    assert [p.name for p in root.iterdir() if not p.name.startswith(".")] == []
    assert len(report.bad_entries) == 1 and "'../x'" in report.bad_entries[0]
    assert "refuses its name" in report.bad_entries[0]
    # Never acted on: the staged copy stays, and so does the entry (another store may take it).
    assert staged.read_bytes() == VICTIM
    assert [e.name for e in load(folder)[0]] == ["../x"]


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"overwrite": "false"}, "overwrite"),
        ({"overwrite": 0}, "overwrite"),
        ({"name": ["a", "b"]}, "name"),
        ({"name": None}, "name"),
        ({"size": str(len(VICTIM))}, "size"),
        ({"size": True}, "size"),
        ({"size": -1}, "size"),
        ({"source": 7}, "source"),
        ({"staged": ["staged", "x"]}, "staged"),
        ({"id": 12}, "id"),
    ],
)
def test_wrong_types_are_bad_entries_never_coerced(
    tmp_path: Path, fields: dict[str, Any], named: str
) -> None:
    folder = _staging(tmp_path)
    rec = _pending("obj")
    staged = folder / rec["staged"]
    staged.write_bytes(VICTIM)
    rec.update(fields)
    _write_entries(folder, rec)
    store = MemoryProvider("m")
    store.objects["obj"] = b"the stored object, which overwrite='false' must not replace"
    before = dict(store.objects)
    report = Uploader.resume(folder, store)
    assert store.objects == before, "a bad entry was acted on"
    assert staged.read_bytes() == VICTIM, "a bad entry's staged file was touched"
    assert len(report.bad_entries) == 1 and named in report.bad_entries[0]
    assert report.uploaded == [] and report.skipped_lines == []


def test_a_bad_multipart_record_is_reported_and_ignored(tmp_path: Path) -> None:
    folder = tmp_path / "staging"
    leave_pending(folder, {"good": b"good"})
    sid = load(folder)[0][0].id
    _write_entries(folder, {"op": "multipart", "id": sid, "upload_id": {"x": 1}})
    found = read(folder, log_problems=False)
    assert [e.name for e in found.entries] == ["good"] and found.entries[0].multipart_ids == []
    assert len(found.bad_entries) == 1 and "upload_id" in found.bad_entries[0]


def test_a_300_mib_line_is_skipped_in_bounded_memory(tmp_path: Path) -> None:
    folder = tmp_path / "staging"
    leave_pending(folder, {"before": b"1"})
    journal = folder / JOURNAL_FILE
    # 300 MiB of NULs without a newline (sparse: no disk used), then a newline.
    os.truncate(journal, journal.stat().st_size + 300 * 1024 * 1024)
    with open(journal, "ab") as f:
        f.write(b"\n")
    leave_pending(folder, {"after": b"2"})
    tracemalloc.start()
    try:
        found = read(folder, log_problems=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    print(f"read() of a 300 MiB line: peak {peak} bytes traced")
    assert peak < 8 * MAX_LINE + 4 * 1024 * 1024, f"read() peaked at {peak} bytes"
    assert [e.name for e in found.entries] == ["before", "after"]
    assert len(found.skipped_lines) == 1 and "longer than 64 KiB" in found.skipped_lines[0]
    # And end to end: both good entries resume.
    store = MemoryProvider("m")
    report = Uploader.resume(folder, store)
    assert store.objects == {"before": b"1", "after": b"2"}
    assert len(report.skipped_lines) == 1


# -- finding 2: the staging folder is ours or refused ----------------------------------------


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o703], ids=["0777", "0770", "0703"])
def test_a_group_or_world_writable_staging_folder_is_refused(tmp_path: Path, mode: int) -> None:
    folder = tmp_path / "shared"
    folder.mkdir()
    folder.chmod(mode)
    with pytest.raises(StagingError) as info:
        Uploader(MemoryProvider("m"), staging_dir=folder)
    assert str(folder) in str(info.value) and f"{mode:04o}" in str(info.value)
    assert list(folder.iterdir()) == [], "the refused folder was written to"
    assert stat.S_IMODE(folder.stat().st_mode) == mode


def test_a_fresh_staging_folder_is_created_0700_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o277)  # even one that takes the owner's own write bit away
    try:
        with Uploader(MemoryProvider("m"), staging_dir=tmp_path / "staging") as up:
            folder = Path(up.staging_folder)
            assert stat.S_IMODE(folder.stat().st_mode) == 0o700
            assert stat.S_IMODE((folder / "staged").stat().st_mode) == 0o700
            assert stat.S_IMODE((folder / JOURNAL_FILE).stat().st_mode) == 0o600
    finally:
        os.umask(old)


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a folder to another user needs root")
def test_a_staging_folder_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "theirs"
    folder.mkdir(mode=0o700)
    os.chown(folder, 65534, 65534)
    with pytest.raises(StagingError, match="owned by uid 65534"):
        Uploader(MemoryProvider("m"), staging_dir=folder)
    assert list(folder.iterdir()) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="planting another user's link needs root")
def test_a_staging_folder_reached_through_another_users_link_is_refused(tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir(mode=0o700)
    link = tmp_path / "planted"
    link.symlink_to(mine)
    os.lchown(link, 65534, 65534)
    with pytest.raises(StagingError, match="symbolic link owned by uid 65534"):
        Uploader(MemoryProvider("m"), staging_dir=link)
    assert list(mine.iterdir()) == []


def test_planted_journal_tmp_symlink_is_refused(tmp_path: Path) -> None:
    folder = _staging(tmp_path)
    victim = _victim(tmp_path)
    (folder / "journal.tmp").symlink_to(victim)
    with pytest.raises(StagingError) as info:
        Uploader(MemoryProvider("m"), staging_dir=folder)
    assert "journal.tmp" in str(info.value) and "symbolic link" in str(info.value)
    _assert_victim_untouched(victim, MemoryProvider("unused"))
    # Refused, so the folder lock was let go: once the link is removed the folder works.
    (folder / "journal.tmp").unlink()
    with Uploader(MemoryProvider("m"), staging_dir=folder):
        pass


def test_planted_journal_symlink_is_refused(tmp_path: Path) -> None:
    folder = _staging(tmp_path)
    victim = _victim(tmp_path)
    (folder / JOURNAL_FILE).symlink_to(victim)
    with pytest.raises(StagingError, match=r"journal .* symbolic link"):
        Uploader(MemoryProvider("m"), staging_dir=folder)
    _assert_victim_untouched(victim, MemoryProvider("unused"))
    assert (folder / JOURNAL_FILE).is_symlink()


def test_planted_journal_hard_link_is_refused(tmp_path: Path) -> None:
    folder = _staging(tmp_path)
    victim = _victim(tmp_path)
    os.link(victim, folder / JOURNAL_FILE)
    with pytest.raises(StagingError, match="hard links"):
        Uploader(MemoryProvider("m"), staging_dir=folder)
    _assert_victim_untouched(victim, MemoryProvider("unused"))


def test_planted_lock_symlink_is_refused(tmp_path: Path) -> None:
    folder = _staging(tmp_path)
    target = tmp_path / "created-through-the-lock"
    (folder / "lock").symlink_to(target)
    with pytest.raises(StagingError) as info:
        Uploader(MemoryProvider("m"), staging_dir=folder)
    assert str(folder / "lock") in str(info.value) and "symbolic link" in str(info.value)
    assert not target.exists(), "the lock link's target was created"


def test_planted_staged_folder_symlink_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "staging"
    folder.mkdir(mode=0o700)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    elsewhere.chmod(0o755)
    (folder / "staged").symlink_to(elsewhere, target_is_directory=True)
    src = tmp_path / "ckpt.pt"
    src.write_bytes(b"weights")
    with pytest.raises(StagingError) as info:
        with Uploader(MemoryProvider("m"), staging_dir=folder) as up:
            up.submit(src, "ckpt.pt")
    assert "staged sub-folder" in str(info.value) and "symbolic link" in str(info.value)
    assert stat.S_IMODE(elsewhere.stat().st_mode) == 0o755, "the link's target was chmod'ed"
    assert list(elsewhere.iterdir()) == [], "staged copies were written through the link"


# -- issue 14: what an earlier run left is announced -----------------------------------------


def _announcements(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "artifact_uploader" and "left unfinished" in r.getMessage()
    ]


def test_pending_entries_from_an_earlier_run_are_announced_at_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "staging"
    leave_pending(folder, {"a": b"1", "b": b"2"})
    assert pending_count(folder) == 2
    store = MemoryProvider("m")
    with caplog.at_level(logging.WARNING, logger="artifact_uploader"):
        with Uploader(store, staging_dir=folder):
            pass
    (msg,) = _announcements(caplog)
    assert "2 upload(s)" in msg
    assert f"Uploader.resume({str(folder)!r}, store)" in msg
    assert f"artifact-uploader resume {folder} --to URI" in msg
    # Not resumed: still there (and announced again next time).
    assert store.objects == {} and pending_count(folder) == 2
    # An uploader built only to resume the folder at once need not be told to resume it.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="artifact_uploader"):
        with resuming(), Uploader(store, staging_dir=folder) as up:
            up.resume_pending()
    assert store.objects == {"a": b"1", "b": b"2"}
    assert _announcements(caplog) == []
    # Once resumed, the folder is empty and nothing more is said.
    with caplog.at_level(logging.WARNING, logger="artifact_uploader"):
        with Uploader(store, staging_dir=folder):
            pass
    assert _announcements(caplog) == [] and pending_count(folder) == 0


@pytest.mark.parametrize("use_procs", [False, True], ids=["threads", "procs"])
def test_resume_is_not_told_to_resume(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, use_procs: bool
) -> None:
    # Uploader.resume builds its uploader only to resume the folder at once.
    folder = tmp_path / "staging"
    leave_pending(folder, {"a": b"1", "b": b"2"})
    store_dir = tmp_path / "store"
    store_dir.mkdir()
    with caplog.at_level(logging.WARNING, logger="artifact_uploader"):
        report = Uploader.resume(folder, f"file://{store_dir}", use_procs=use_procs)
    assert sorted(r.name for r in report.uploaded) == ["a", "b"]
    assert (store_dir / "a").read_bytes() == b"1" and pending_count(folder) == 0
    assert _announcements(caplog) == []


def test_logger_with_resume_is_not_told_to_resume(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "staging"
    leave_pending(folder, {"a": b"1"})
    store_dir = tmp_path / "store"
    store_dir.mkdir()
    with caplog.at_level(logging.WARNING, logger="artifact_uploader"):
        logger = ObjectStoreLogger(
            "file", str(store_dir), upload_staging_folder=folder, use_procs=False, resume=True
        )
        logger.close()
    assert logger.resume_report is not None
    assert [r.name for r in logger.resume_report.uploaded] == ["a"]
    assert (store_dir / "a").read_bytes() == b"1"
    assert _announcements(caplog) == []
    # Without resume=True the same leftovers are announced (the warning is not just gone).
    leave_pending(folder, {"b": b"2"})
    with caplog.at_level(logging.WARNING, logger="artifact_uploader"):
        ObjectStoreLogger(
            "file", str(store_dir), upload_staging_folder=folder, use_procs=False
        ).close()
    (msg,) = _announcements(caplog)
    assert "1 upload(s)" in msg


def test_logger_failed_copies_are_announced_at_the_next_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The README's logger flow, run twice: the second run's ep1.pt exists already
    # (overwrite=False by default), fails, and its staged copy is kept for the next start.
    store_dir = tmp_path / "store"
    staging = tmp_path / "staging"
    ckpt = tmp_path / "ep1.pt"
    ckpt.write_bytes(b"epoch 1")

    def run() -> ObjectStoreLogger:
        return ObjectStoreLogger(
            "file", str(store_dir), upload_staging_folder=staging, use_procs=False
        )

    first = run()
    first.file_artifact(LogLevel.EPOCH, artifact_name="ep1.pt", file_path=ckpt)
    first.close()
    second = run()
    second.file_artifact(LogLevel.EPOCH, artifact_name="ep1.pt", file_path=ckpt)
    with pytest.raises(UploadFailedError, match=r"ep1\.pt"):
        second.close()
    with caplog.at_level(logging.WARNING, logger="artifact_uploader"):
        third = run()
        third.close()
    (msg,) = _announcements(caplog)
    assert "1 upload(s)" in msg and str(staging) in msg and "resume=True" in msg
