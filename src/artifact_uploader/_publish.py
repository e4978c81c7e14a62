"""Publishing a trainer's checkpoint (local files) through the commit protocol.

The trainer integrations hand over the files of one checkpoint (an HF ``checkpoint-N`` folder,
a Lightning ``.ckpt`` file or folder, a Composer checkpoint); :class:`CheckpointPublisher`
stages each into a fresh location ``<root>/step-N/<save-id>/`` through the integration's
:class:`~artifact_uploader.Uploader` (``overwrite=False``), and on a background thread waits
until every one is durable, then creates the commit record (conditionally, last) and applies
retention. It is :mod:`artifact_uploader._commit`'s protocol, the one DCP's writer uses; only
the record's ``kind`` differs (``"files"``: no ``.metadata``).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import logging
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import _commit as protocol
from ._commit import CheckpointError, CommittedCheckpoint, Store
from ._errors import ConfigError, UploadError
from ._sync import Uploader
from ._types import UploadResult

log = logging.getLogger("artifact_uploader")


class CheckpointPublisher:
    """Publishes checkpoints made of local files as commits under one root.

    Args:
        store: The checkpoint root.
        name_prefix: What the uploader's object names need in front of a name relative to
            the root (``""`` when the uploader's store is the root itself).
        keep_last: After each commit, keep only this many newest checkpoints. None: all.
        owner: The integration's name, for messages.

    Raises:
        ConfigError: ``keep_last`` is not an int >= 1.
    """

    def __init__(
        self, store: Store, *, name_prefix: str = "", keep_last: int | None = None, owner: str
    ) -> None:
        if keep_last is not None:
            protocol.check_retention(keep_last, 0, "max")
        self.store = store
        self.root = store.root
        self.owner = owner
        self.name_prefix = name_prefix.strip("/") + "/" if name_prefix.strip("/") else ""
        self._keep_last = keep_last
        self._lock = threading.Lock()
        self._commits: list[concurrent.futures.Future[CommittedCheckpoint]] = []
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._runner: protocol.StoreRunner | None = None
        self._scratch: Path | None = None

    def __repr__(self) -> str:
        return f"<CheckpointPublisher {self.root!r}>"

    def start(self, uploader: Uploader, step: int) -> PendingSave:
        """Begin a checkpoint of ``step`` at a fresh location; add its files, then commit it.

        Raises:
            ConfigError: A bad step.
        """
        return PendingSave(self, uploader, protocol.check_step(step))

    def publish(
        self,
        uploader: Uploader,
        files: Sequence[tuple[str, Path]],
        step: int,
    ) -> concurrent.futures.Future[CommittedCheckpoint]:
        """Stage ``files`` (``(name inside the checkpoint, local path)``) and commit them.

        Blocks while the files are staged; the uploads and the commit run in the background.
        Commits happen in the order of the calls.

        Returns:
            A future of the commit; it fails with :class:`CheckpointError` when a file did not
            upload or the record could not be written (the save stays uncommitted: invisible).

        Raises:
            ConfigError: No files, a bad step, or a file name a checkpoint cannot hold.
            SourceFileError, StagingError: As for :meth:`Uploader.submit`.
        """
        for name, _ in files:
            check_file_name(self.owner, name)  # all of them before staging any
        save = self.start(uploader, step)
        for name, path in files:
            save.add(name, path)
        return save.commit()

    def _enqueue(
        self,
        ckpt: CommittedCheckpoint,
        names: list[str],
        futures: list[concurrent.futures.Future[UploadResult]],
    ) -> concurrent.futures.Future[CommittedCheckpoint]:
        with self._lock:
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(
                    1, thread_name_prefix="au-commit"
                )
            commit = self._pool.submit(self._commit, ckpt, names, futures)
            # Forget commits that succeeded; keep the rest for wait() to report.
            self._commits = [c for c in self._commits if not _succeeded(c)]
            self._commits.append(commit)
        return commit

    def wait(self, timeout: float | None = None) -> list[BaseException]:
        """Wait for every commit so far; return (and forget) the failures."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            commits, self._commits = self._commits, []
        failures = []
        for commit in commits:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                commit.result(left)
            except concurrent.futures.TimeoutError:
                raise
            except BaseException as exc:
                failures.append(exc)
        return failures

    def close(self) -> list[BaseException]:
        """Wait for every commit, then stop the commit thread; return the failures."""
        try:
            return self.wait()
        finally:
            with self._lock:
                pool, self._pool = self._pool, None
            if pool is not None:
                pool.shutdown(wait=True)
            if self._runner is not None:
                self._runner.close()
                self._runner = None
            if self._scratch is not None:
                shutil.rmtree(self._scratch, ignore_errors=True)
                self._scratch = None

    # -- the commit (background thread) ------------------------------------------------------

    def _commit(
        self,
        ckpt: CommittedCheckpoint,
        names: list[str],
        futures: list[concurrent.futures.Future[UploadResult]],
    ) -> CommittedCheckpoint:
        sizes: dict[str, int] = {}
        for name, future in zip(names, futures, strict=True):
            try:
                sizes[name] = future.result().size
            except BaseException as exc:
                # Wait for the others too: the location must not change after we give up.
                for other in futures:
                    with contextlib.suppress(BaseException):
                        other.result()
                log.error(
                    "%s: checkpoint %s/%s was not committed: %s failed: %s",
                    self.owner,
                    self.root,
                    ckpt.location,
                    name,
                    exc,
                )
                raise CheckpointError(
                    f"checkpoint of step {ckpt.step} at {ckpt.uri} was not committed: "
                    f"{name} did not upload ({exc})",
                    location=ckpt.location,
                    missing=(name,),
                ) from exc
        ready = dataclasses.replace(ckpt, files=sizes)
        keep_last = self._keep_last
        scratch = self._scratch_dir()

        async def publish(s: Any) -> CommittedCheckpoint:
            final: CommittedCheckpoint = await s.publish(ready, scratch)
            if keep_last is not None:
                # Only now that a newer checkpoint is committed: never below keep_last whole.
                await protocol.apply_retention(s, keep_last)
            return final

        try:
            final = self._commit_runner().run(publish)
        except UploadError as exc:
            log.error("%s: checkpoint %s was not committed: %s", self.owner, ready.uri, exc)
            raise
        log.info("%s: committed checkpoint %s (%s)", self.owner, final.uri, final.record)
        return final

    def _commit_runner(self) -> protocol.StoreRunner:
        # Only the commit thread calls this (one thread: no race creating it).
        if self._runner is None:
            self._runner = protocol.StoreRunner(self.store)
        return self._runner

    def _scratch_dir(self) -> Path:
        if self._scratch is None:
            self._scratch = Path(tempfile.mkdtemp(prefix="au-commit-"))
        return self._scratch


def _succeeded(future: concurrent.futures.Future[Any]) -> bool:
    return future.done() and not future.cancelled() and future.exception() is None


def check_file_name(owner: str, name: str) -> None:
    """Raise :class:`ConfigError` unless a checkpoint may hold a file called ``name``."""
    if not protocol.is_file_name(name):
        raise ConfigError(
            f"{owner}: checkpoint file {name!r} cannot be committed: use plain relative "
            "paths (letters, digits, '_.=+@,-'; no '.' or '..' segment)"
        )


class PendingSave:
    """One checkpoint being staged: :meth:`add` each file (uploads start at once), then
    :meth:`commit`. Made by :meth:`CheckpointPublisher.start`.

    Attributes:
        step: The checkpoint's step.
        location: ``step-N/<save-id>``, relative to the root.
    """

    def __init__(self, publisher: CheckpointPublisher, uploader: Uploader, step: int) -> None:
        self.step = step
        self.location = protocol.location_for(step, uuid.uuid4().hex)
        self._publisher = publisher
        self._uploader = uploader
        self._names: list[str] = []
        self._futures: list[concurrent.futures.Future[UploadResult]] = []
        self._committed = False

    def object_name(self, name: str) -> str:
        """The uploader's object name of file ``name`` of this checkpoint."""
        return f"{self._publisher.name_prefix}{self.location}/{name}"

    def add(self, name: str, path: Path) -> concurrent.futures.Future[UploadResult]:
        """Stage ``path`` (blocking) as file ``name`` of the checkpoint; it uploads behind.

        Raises:
            ConfigError: A name a checkpoint cannot hold, one added twice, or already committed.
            SourceFileError, StagingError: As for :meth:`Uploader.submit`.
        """
        owner = self._publisher.owner
        check_file_name(owner, name)
        if self._committed or name in self._names:
            raise ConfigError(f"{owner}: {name!r} added twice or after the commit")
        # A fresh location: nothing can exist there, and nothing may be replaced.
        future = self._uploader.submit(path, self.object_name(name), overwrite=False)
        self._names.append(name)
        self._futures.append(future)
        return future

    def commit(self) -> concurrent.futures.Future[CommittedCheckpoint]:
        """Commit once every file added is durable (in the background, in call order).

        Raises:
            ConfigError: No file was added, or it was committed already.
        """
        owner = self._publisher.owner
        if self._committed or not self._names:
            raise ConfigError(f"{owner}: checkpoint of step {self.step} has no files to commit")
        self._committed = True
        ckpt = CommittedCheckpoint(
            root=self._publisher.root,
            step=self.step,
            generation=0,
            save_id=self.location.rpartition("/")[2],
            location=self.location,
            files={},
            metric=None,
            world_size=1,
            record="",
            kind="files",
        )
        return self._publisher._enqueue(ckpt, self._names, self._futures)


def own_failures(failures: list[BaseException]) -> list[BaseException]:
    """The commit failures that are not a file's failed upload (the uploader reports those,
    naming the object)."""
    return [f for f in failures if not (isinstance(f, CheckpointError) and f.missing)]
