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
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

from . import _commit as protocol
from ._commit import CheckpointError, CommittedCheckpoint, Store
from ._errors import ConfigError, UploadError
from ._sync import Uploader
from ._types import UploadResult

log = logging.getLogger("artifact_uploader")
T = TypeVar("T")


class CheckpointPublisher:
    """Publishes checkpoints made of local files as commits under one root.

    Args:
        store: The checkpoint root.
        name_prefix: What the uploader's object names need in front of a name relative to
            the root (``""`` when the uploader's store is the root itself).
        keep_last: After each commit, keep only this many newest checkpoints. None: all.
        keep_best: Also keep this many best checkpoints by their metric.
        best: Whether a larger (``"max"``) or smaller (``"min"``) metric is better.
        owner: The integration's name, for messages.

    Raises:
        ConfigError: A bad retention option.
    """

    def __init__(
        self,
        store: Store,
        *,
        name_prefix: str = "",
        keep_last: int | None = None,
        keep_best: int = 0,
        best: Literal["max", "min"] = "max",
        owner: str,
    ) -> None:
        if keep_last is not None or keep_best:
            protocol.check_retention(keep_last if keep_last is not None else 1, keep_best, best)
        self.store = store
        self.root = store.root
        self.owner = owner
        self.name_prefix = name_prefix.strip("/") + "/" if name_prefix.strip("/") else ""
        self._keep_last = keep_last
        self._keep_best = keep_best
        self._best: Literal["max", "min"] = best
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

    def submit(
        self, job: Callable[[], CommittedCheckpoint]
    ) -> concurrent.futures.Future[CommittedCheckpoint]:
        """Run ``job`` on the commit thread, after every commit submitted before it.

        ``job`` waits for its checkpoint's objects and ends with :meth:`publish_record`.
        """
        with self._lock:
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(
                    1, thread_name_prefix="au-commit"
                )
            commit = self._pool.submit(job)
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

    def run(self, fn: Callable[[Any], Awaitable[T]]) -> T:
        """Run ``fn(session)`` on the publisher's open store session (commit thread only)."""
        # Only the commit thread calls this (one thread: no race creating the runner).
        if self._runner is None:
            self._runner = protocol.StoreRunner(self.store)
        return self._runner.run(fn)

    def publish_record(self, ckpt: CommittedCheckpoint) -> CommittedCheckpoint:
        """Create ``ckpt``'s commit record (every object it lists must be durable), then apply
        retention; return the checkpoint as committed (commit thread only)."""
        keep_last, keep_best, best = self._keep_last, self._keep_best, self._best
        if self._scratch is None:
            self._scratch = Path(tempfile.mkdtemp(prefix="au-commit-"))
        scratch = self._scratch

        async def publish(s: Any) -> CommittedCheckpoint:
            final: CommittedCheckpoint = await s.publish(ckpt, scratch)
            if keep_last is not None or keep_best:
                # Only now that a newer checkpoint is committed: never below keep_last whole.
                await protocol.apply_retention(s, keep_last or 1 << 62, keep_best, best)
            return final

        return self.run(publish)

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
        try:
            final = self.publish_record(ready)
        except UploadError as exc:
            log.error("%s: checkpoint %s was not committed: %s", self.owner, ready.uri, exc)
            raise
        log.info("%s: committed checkpoint %s (%s)", self.owner, final.uri, final.record)
        return final


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

    def commit(
        self, then: Callable[[CommittedCheckpoint], object] | None = None
    ) -> concurrent.futures.Future[CommittedCheckpoint]:
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
        publisher, names, futures = self._publisher, self._names, self._futures

        def job() -> CommittedCheckpoint:
            final = publisher._commit(ckpt, names, futures)
            if then is not None:
                then(final)  # inside the job: whoever waits for the commit waits for it too
            return final

        return publisher.submit(job)


def own_failures(failures: list[BaseException]) -> list[BaseException]:
    """The commit failures that are not a file's failed upload (the uploader reports those,
    naming the object)."""
    return [f for f in failures if not (isinstance(f, CheckpointError) and f.missing)]
