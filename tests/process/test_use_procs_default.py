"""``use_procs=None`` (the default) follows the cores this process may use.

Processes from 4 usable cores (``os.sched_getaffinity``), threads below that, and threads when
the provider cannot be sent to a child process; an explicit True/False is obeyed as before.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from artifact_uploader import ConfigError, MemoryProvider, ObjectStoreLogger, Uploader
from artifact_uploader._sync import PROCS_MIN_CORES, resolve_use_procs, usable_cores
from artifact_uploader.providers.local import LocalProvider

MakeFile = Callable[..., Path]


def _cores(monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(n)))


def test_the_threshold_is_four_cores() -> None:
    assert PROCS_MIN_CORES == 4


@pytest.mark.parametrize(("cores", "expected"), [(1, False), (2, False), (3, False), (4, True)])
def test_none_resolves_by_usable_cores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cores: int, expected: bool
) -> None:
    _cores(monkeypatch, cores)
    assert usable_cores() == cores
    assert resolve_use_procs(None, LocalProvider(str(tmp_path))) is expected


@pytest.mark.parametrize("cores", [1, 64])
@pytest.mark.parametrize("explicit", [True, False])
def test_explicit_choice_is_obeyed_whatever_the_cores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cores: int, explicit: bool
) -> None:
    _cores(monkeypatch, cores)
    assert resolve_use_procs(explicit, LocalProvider(str(tmp_path))) is explicit
    assert resolve_use_procs(explicit, MemoryProvider("m")) is explicit


def test_a_provider_that_cannot_cross_processes_gets_threads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _cores(monkeypatch, 64)
    assert resolve_use_procs(None, MemoryProvider("m")) is False
    with Uploader(MemoryProvider("m")) as up:
        assert up.use_procs is False
        assert up.worker_pid == os.getpid()


def test_default_uploader_runs_in_a_thread_below_four_cores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_file: MakeFile
) -> None:
    _cores(monkeypatch, 2)
    store = tmp_path / "store"
    with Uploader(store.as_uri()) as up:
        assert up.use_procs is False
        assert up.worker_pid == os.getpid()
        up.submit(make_file(b"thread"), "a.bin").result(timeout=60)
    assert (store / "a.bin").read_bytes() == b"thread"


def test_default_uploader_runs_in_a_child_process_from_four_cores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_file: MakeFile
) -> None:
    _cores(monkeypatch, 4)
    store = tmp_path / "store"
    with Uploader(store.as_uri()) as up:
        assert up.use_procs is True
        assert up.worker_pid != os.getpid()
        up.submit(make_file(b"procs"), "a.bin").result(timeout=60)
    assert (store / "a.bin").read_bytes() == b"procs"


@pytest.mark.parametrize(("cores", "expected"), [(2, False), (8, True)])
def test_logger_default_follows_the_cores_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cores: int, expected: bool
) -> None:
    _cores(monkeypatch, cores)
    with ObjectStoreLogger("file", str(tmp_path / "store")) as logger:
        assert logger.uploader.use_procs is expected


def test_this_machine_gets_what_its_cores_say(tmp_path: Path) -> None:
    # No monkeypatching: the real affinity mask decides.
    with Uploader((tmp_path / "store").as_uri()) as up:
        assert up.use_procs is (len(os.sched_getaffinity(0)) >= 4)


@pytest.mark.parametrize("bad", ["yes", 1, 0])
def test_a_non_bool_is_refused_at_the_call(tmp_path: Path, bad: object) -> None:
    with pytest.raises(ConfigError, match="use_procs must be a bool or None"):
        Uploader((tmp_path / "store").as_uri(), use_procs=bad)  # type: ignore[arg-type]
