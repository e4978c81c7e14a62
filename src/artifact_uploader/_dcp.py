"""``torch.distributed.checkpoint`` (DCP) storage on the engine, committed atomically.

:class:`CheckpointWriter` is a DCP ``StorageWriter``: each rank serializes its shards exactly as
DCP's ``FileSystemWriter`` does, but into a local scratch folder, then *moves* them into its
:class:`~artifact_uploader.Uploader`'s staging folder and returns; the uploads continue behind
the training loop. The coordinator (rank 0) writes ``.metadata`` and then, on a background thread,
waits until every rank's shards are durable in the store, uploads ``.metadata`` and publishes the
save with a conditional commit record (see :mod:`artifact_uploader._commit`).

:class:`CheckpointReader` is a DCP ``StorageReader`` that loads only committed, whole
checkpoints, downloading each shard file it needs (verified against the store's checksums).

``torch`` is an optional extra (``pip install 'artifact-uploader[dcp]'``): this module raises
:class:`~artifact_uploader.MissingDependencyError` on import without it.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import logging
import os
import pickle
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from ._commit import (
    METADATA_NAME,
    SCRATCH_PREFIX,
    CheckpointError,
    CommittedCheckpoint,
    Store,
    check_step,
    location_for,
    wait_present,
)
from ._config import RetryPolicy
from ._errors import ConfigError, MissingDependencyError, UploadError
from ._publish import CheckpointPublisher
from ._sync import Uploader
from ._types import UploadResult

try:
    import torch.distributed as dist
    from torch.distributed.checkpoint.filesystem import (
        FileSystemReader,
        FileSystemWriter,
        _StorageInfo,
        _StoragePrefix,
    )
    from torch.distributed.checkpoint.metadata import Metadata
    from torch.distributed.checkpoint.planner import LoadPlan, LoadPlanner, SavePlan, SavePlanner
    from torch.distributed.checkpoint.storage import WriteResult
    from torch.futures import Future as TorchFuture
except ImportError as exc:  # pragma: no cover - exercised without torch only
    raise MissingDependencyError("CheckpointWriter", "dcp", str(exc)) from exc

log = logging.getLogger("artifact_uploader")

# How long the coordinator waits for every rank's shards before giving up on a commit.
DEFAULT_COMMIT_TIMEOUT = 3600.0


@dataclasses.dataclass
class _SaveTarget(_StoragePrefix):
    """What the coordinator sends every rank in its plan: file prefix, step and save id."""

    step: int = 0
    save_id: str = ""


@dataclasses.dataclass(frozen=True)
class _RankRoot:
    """What each rank's local plan carries to the coordinator: the root it writes to."""

    root: str


class CheckpointWriter(FileSystemWriter):
    """A DCP ``StorageWriter`` that stages shards and commits them atomically across ranks.

    Create one per rank with the same arguments, call :meth:`set_step` before each save, and
    pass it to ``dcp.save`` or ``dcp.async_save``. ``dcp.save`` returns once every rank's shards
    are staged; uploads and the commit continue in the background. :meth:`wait_durable` waits
    for them (on the coordinator: until the save is committed). Close the writer at the end.

    Every save goes to a fresh location ``<root>/step-N/<save-id>/``; the coordinator publishes
    it with a commit record only after every shard is durable, so readers never see a partial
    save, and saving step N again never mixes with the earlier save of step N.

    Args:
        root: The checkpoint root, a store URI (``file:///abs/dir``, ``s3://bucket/prefix``,
            ``gs://...``, ``az://...``).
        provider_kwargs: Options for the store's provider (endpoint, credentials...).
        staging_dir: Persistent staging folder: each rank journals its shards in
            ``<staging_dir>/rank-<r>`` (resumable with :func:`resume_checkpoints`). Default None:
            a private temporary folder per rank.
        keep_last: After each commit, keep only this many newest checkpoints (by step). Default
            None: keep everything.
        keep_best: Also keep this many best checkpoints by the metric given to
            :meth:`set_step`. Default 0.
        best: Whether a larger (``"max"``, default) or smaller (``"min"``) metric is better.
        commit_timeout: Seconds the coordinator waits for every rank's shards to be durable
            before giving the save up (it stays uncommitted). Default 3600.
        uploader_options: Other :class:`~artifact_uploader.Uploader` options
            (``max_concurrency``, ``max_staged_bytes``, ``retry``, ``parts``, ``on_event``...).
        thread_count: Serialization threads per rank (as ``FileSystemWriter``). Default 1.
        sync_files: fsync each shard before staging it. Default True.

    Raises:
        ConfigError: A bad URI or option.
        MissingDependencyError: The store's extra is not installed.
    """

    def __init__(
        self,
        root: str,
        *,
        provider_kwargs: Mapping[str, Any] | None = None,
        staging_dir: str | os.PathLike[str] | None = None,
        keep_last: int | None = None,
        keep_best: int = 0,
        best: Literal["max", "min"] = "max",
        commit_timeout: float = DEFAULT_COMMIT_TIMEOUT,
        uploader_options: Mapping[str, Any] | None = None,
        thread_count: int = 1,
        sync_files: bool = True,
    ) -> None:
        if not isinstance(commit_timeout, int | float) or commit_timeout <= 0:
            raise ConfigError(f"commit_timeout must be a positive number, got {commit_timeout!r}")
        options = _writer_options(uploader_options)
        retry = options.get("retry")
        self._store = Store(
            root, provider_kwargs, retry if isinstance(retry, RetryPolicy) else None
        )
        self.root = self._store.root
        # The commit thread, record and retention: the protocol every writer shares.
        self._publisher = CheckpointPublisher(
            self._store,
            keep_last=keep_last,
            keep_best=keep_best,
            best=best,
            owner="CheckpointWriter",
        )
        if staging_dir is not None:
            Path(staging_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
        # Shards are serialized here and then moved into staging: beside the staging folder,
        # so the move is a rename on the same filesystem, not a second copy.
        self._scratch_base = tempfile.mkdtemp(
            prefix=SCRATCH_PREFIX, dir=None if staging_dir is None else Path(staging_dir)
        )
        super().__init__(
            self._scratch_base,
            single_file_per_rank=True,
            sync_files=sync_files,
            thread_count=thread_count,
            overwrite=True,
        )
        self._staging_dir = None if staging_dir is None else Path(staging_dir).absolute()
        self._uploader_options = options
        self._commit_timeout = float(commit_timeout)
        self._uploader: Uploader | None = None
        self._uploader_rank = -1
        self._step: int | None = None
        self._metric: float | None = None
        self._target: _SaveTarget | None = None
        self._world_size = 1
        self._lock = threading.Lock()
        self._pending: list[concurrent.futures.Future[UploadResult]] = []
        self._commits: list[concurrent.futures.Future[CommittedCheckpoint]] = []
        self._closed = False
        if dist.is_available() and dist.is_initialized():
            # Started now, not in the first save: its start-up is not the training loop's wait.
            self._open_uploader(dist.get_rank())

    def __repr__(self) -> str:
        return f"<CheckpointWriter {self.root!r} step={self._step}>"

    # -- what the caller calls ---------------------------------------------------------------

    def set_step(self, step: int, *, metric: float | None = None) -> None:
        """Name the next save: its training step and, for keep-best retention, its metric.

        Call it on every rank with the same values before ``dcp.save`` / ``dcp.async_save``
        (and, with ``async_save``, only after the previous save's future is done).

        Raises:
            ConfigError: ``step`` is not an int from 0 to 10**10 - 1, or ``metric`` not a number.
        """
        self._metric = _check_metric(metric)
        self._step = check_step(step)

    def wait_durable(self, timeout: float | None = None) -> CommittedCheckpoint | None:
        """Wait until every save so far is durable: on the coordinator, committed.

        Returns:
            On the coordinator, the last save's commit; on other ranks None (their shards are
            durable; the coordinator commits).

        Raises:
            TimeoutError: ``timeout`` expired first.
            UploadError: A shard upload or a commit failed (the save stays uncommitted).
        """
        deadline = None if timeout is None else time.monotonic() + timeout

        def left() -> float | None:
            return None if deadline is None else max(0.0, deadline - time.monotonic())

        with self._lock:
            pending, commits = list(self._pending), list(self._commits)
        for fut in pending:
            fut.result(left())
        last = None
        for commit in commits:
            last = commit.result(left())
        return last

    def close(self, timeout: float | None = None) -> None:
        """Wait for durability (see :meth:`wait_durable`), then close the uploader. Idempotent.

        Raises:
            UploadFailedError: Some shard did not upload (it stays journalled with a
                persistent ``staging_dir``).
            UploadError: A commit failed.
        """
        if self._closed:
            return
        self._closed = True
        try:
            with contextlib.suppress(UploadError):  # the uploader's close reports the same
                self.wait_durable(timeout)
        finally:
            try:
                if self._uploader is not None:
                    self._uploader.close(timeout)
            finally:
                self._publisher.close()  # its failures are the commits', raised below
                shutil.rmtree(self._scratch_base, ignore_errors=True)
        with self._lock:
            commits = list(self._commits)
        for commit in commits:
            commit.result(0)  # raise a failed commit

    def __enter__(self) -> CheckpointWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- StorageWriter -----------------------------------------------------------------------

    def reset(self, checkpoint_id: str | os.PathLike[str] | None = None) -> None:
        if checkpoint_id is not None:
            # The root names where checkpoints go; set_step names which one.
            raise ConfigError(
                "CheckpointWriter takes its location from its root and set_step(); "
                f"do not pass checkpoint_id (got {checkpoint_id!r})"
            )
        if self._closed:
            raise ConfigError("this CheckpointWriter is closed")
        super().reset(None)
        self._target = None

    def set_up_storage_writer(self, is_coordinator: bool, *args: Any, **kwargs: Any) -> None:
        super().set_up_storage_writer(is_coordinator, *args, **kwargs)
        if not self.use_collectives:
            raise ConfigError("CheckpointWriter needs use_collectives=True (one commit per save)")
        rank = kwargs.get("rank")
        if rank is None:
            rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        self.rank = rank
        if dist.is_available() and dist.is_initialized():
            self._world_size = dist.get_world_size()
        if self._uploader is None:
            self._open_uploader(rank)
        elif self._uploader_rank != rank:
            raise ConfigError(
                f"this CheckpointWriter was opened for rank {self._uploader_rank}, "
                f"not rank {rank}; create one writer per rank"
            )

    def _open_uploader(self, rank: int) -> None:
        staging = None if self._staging_dir is None else self._staging_dir / f"rank-{rank}"
        self._uploader = _rank_uploader(self._store, staging, self._uploader_options)
        self._uploader_rank = rank

    def prepare_local_plan(self, plan: SavePlan) -> SavePlan:
        # Every save goes to a fresh location: nothing to check in the store. The root travels
        # to the coordinator, which refuses ranks that disagree (their shards would land where
        # the commit never looks, and the commit would wait for them in vain).
        return dataclasses.replace(plan, storage_data=_RankRoot(self.root))

    def prepare_global_plan(self, plans: list[SavePlan]) -> list[SavePlan]:
        if self._step is None:
            raise ConfigError("call CheckpointWriter.set_step(step) before saving")
        roots = {p.storage_data.root for p in plans if isinstance(p.storage_data, _RankRoot)}
        if roots and roots != {self.root}:
            raise ConfigError(
                f"ranks were given different checkpoint roots: {sorted(roots | {self.root})}; "
                "every rank's CheckpointWriter needs the same root"
            )
        save_id = uuid.uuid4().hex
        return [
            dataclasses.replace(
                plan, storage_data=_SaveTarget(f"__{i}_", step=self._step, save_id=save_id)
            )
            for i, plan in enumerate(plans)
        ]

    def write_data(self, plan: SavePlan, planner: SavePlanner) -> TorchFuture[list[WriteResult]]:
        target = plan.storage_data
        if not isinstance(target, _SaveTarget):
            raise ConfigError("plan was not prepared by a CheckpointWriter coordinator")
        self._target = target
        location = location_for(target.step, target.save_id)
        local = Path(self._scratch_base) / target.save_id
        local.mkdir(parents=True, exist_ok=True)
        self.path = local
        results: list[WriteResult] = super().write_data(plan, planner).wait()
        uploader = self._uploader
        assert uploader is not None  # set_up_storage_writer ran
        files = sorted({r.storage_data.relative_path for r in results})
        futures = [
            # "move": the serialized shard becomes the staged copy; nothing is copied twice.
            uploader.submit(local / name, f"{location}/{name}", overwrite=False, staging="move")
            for name in files
        ]
        with self._lock:
            self._pending = [f for f in self._pending if not f.done()] + futures
        done: TorchFuture[list[WriteResult]] = TorchFuture()
        done.set_result(results)
        return done

    def finish(self, metadata: Metadata, results: list[list[WriteResult]]) -> None:
        target = self._target
        assert target is not None  # write_data ran
        super().finish(metadata, results)  # writes .metadata into the local scratch folder
        files: dict[str, int] = {}
        for rank_results in results:
            for r in rank_results:
                info: _StorageInfo = r.storage_data
                end = info.offset + info.length
                files[info.relative_path] = max(files.get(info.relative_path, 0), end)
        local = Path(self._scratch_base) / target.save_id
        meta_path = local / METADATA_NAME
        files[METADATA_NAME] = meta_path.stat().st_size
        ckpt = CommittedCheckpoint(
            root=self.root,
            step=target.step,
            generation=0,
            save_id=target.save_id,
            location=location_for(target.step, target.save_id),
            files=files,
            metric=self._metric,
            world_size=self._world_size,
            record="",
        )
        with self._lock:
            own = list(self._pending)
            uploader, publisher = self._uploader, self._publisher
            assert uploader is not None
            timeout = self._commit_timeout
            self._commits.append(
                publisher.submit(lambda: _commit(publisher, uploader, ckpt, own, local, timeout))
            )

    def storage_meta(self) -> Any:
        meta = super().storage_meta()
        if meta is not None and self._target is not None:
            meta.checkpoint_id = (
                f"{self.root}/{location_for(self._target.step, self._target.save_id)}"
            )
        return meta

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: str | os.PathLike[str]) -> bool:
        return False


def _writer_options(uploader_options: Mapping[str, Any] | None) -> dict[str, Any]:
    options = dict(uploader_options or {})
    for key in ("store", "staging_dir", "provider_kwargs", "staging"):
        if key in options:
            raise ConfigError(f"uploader_options must not set {key!r}; it is the writer's")
    return options


def _check_metric(metric: object) -> float | None:
    if metric is not None and (isinstance(metric, bool) or not isinstance(metric, int | float)):
        raise ConfigError(f"metric must be a number or None, got {metric!r}")
    return None if metric is None else float(metric)


def _rank_uploader(store: Store, staging: Path | None, options: Mapping[str, Any]) -> Uploader:
    """One rank's uploader: shards are moved (not copied) into ``staging``, journalled there."""
    if staging is not None:
        staging.mkdir(parents=True, exist_ok=True, mode=0o700)
    return Uploader(
        store.root,
        provider_kwargs=store.provider_kwargs,
        staging_dir=staging,
        staging="move",
        **{"use_procs": False, **options},
    )


def _commit(
    publisher: CheckpointPublisher,
    uploader: Uploader,
    ckpt: CommittedCheckpoint,
    own: list[concurrent.futures.Future[UploadResult]],
    local: Path,
    timeout: float,
) -> CommittedCheckpoint:
    """The coordinator's commit of one save, on the publisher's commit thread: every rank's
    shards durable (within ``timeout`` seconds), then ``.metadata``, then the record (and
    retention)."""
    deadline = time.monotonic() + timeout
    try:
        for fut in own:
            fut.result(max(0.0, deadline - time.monotonic()))
        shards = {n: s for n, s in ckpt.files.items() if n != METADATA_NAME}

        async def durable(s: Any) -> None:
            await wait_present(s, ckpt.location, shards, deadline)

        publisher.run(durable)
        # .metadata only after every shard: a reader of the location alone sees no checkpoint.
        uploader.submit(
            local / METADATA_NAME,
            f"{ckpt.location}/{METADATA_NAME}",
            overwrite=False,
            staging="move",
        ).result(max(1.0, deadline - time.monotonic()))
        # The record, then retention (only once this newer commit exists).
        final = publisher.publish_record(ckpt)
        log.info("committed checkpoint %s (%s)", final.uri, final.record)
        return final
    except BaseException as exc:
        log.error("checkpoint %s/%s was not committed: %s", publisher.root, ckpt.location, exc)
        raise
    finally:
        shutil.rmtree(local, ignore_errors=True)


class CheckpointReader(FileSystemReader):
    """A DCP ``StorageReader`` that loads committed checkpoints only.

    Resolves the newest committed checkpoint under ``root`` (of ``step``, with ``save_id``, when
    given), proves every object its commit record names is present with its recorded size, and
    downloads the shard files this rank needs into a private folder (verified against the
    store's checksums) before reading them. With a process group, rank 0 resolves and
    broadcasts, so every rank loads the same checkpoint even while new ones are committed.

    Args:
        root: The checkpoint root (as given to :class:`CheckpointWriter`).
        step: Load this step. Default None: the newest.
        save_id: Load this save of ``step`` (needs ``step``). Default None: its newest commit.
        provider_kwargs: Options for the store's provider.
        cache_dir: Where downloaded shards are kept while loading. Default: a temporary folder,
            removed after ``read_data``.
        uploader_options: Other :class:`~artifact_uploader.Uploader` options (``max_concurrency``,
            ``retry``...).

    Raises:
        ConfigError: A bad URI or option.
        CheckpointNotCommittedError: (from ``dcp.load`` / :meth:`resolve`) nothing committed
            matches; the message names what is missing.
        CheckpointError: The commit names objects that are missing (a torn checkpoint).
    """

    def __init__(
        self,
        root: str,
        *,
        step: int | None = None,
        save_id: str | None = None,
        provider_kwargs: Mapping[str, Any] | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        uploader_options: Mapping[str, Any] | None = None,
    ) -> None:
        if step is not None:
            check_step(step)
        if save_id is not None and (step is None or not isinstance(save_id, str)):
            raise ConfigError("save_id needs step, and must be a str")
        options = dict(uploader_options or {})
        retry = options.get("retry")
        self._store = Store(
            root, provider_kwargs, retry if isinstance(retry, RetryPolicy) else None
        )
        self.root = self._store.root
        self._step, self._save_id = step, save_id
        self._cache_parent = None if cache_dir is None else Path(cache_dir)
        self._options = options
        self._checkpoint: CommittedCheckpoint | None = None
        super().__init__(tempfile.gettempdir())

    def __repr__(self) -> str:
        return f"<CheckpointReader {self.root!r} step={self._step}>"

    @property
    def checkpoint(self) -> CommittedCheckpoint | None:
        """The checkpoint resolved (by :meth:`resolve` or ``dcp.load``), if any yet."""
        return self._checkpoint

    def resolve(self) -> CommittedCheckpoint:
        """Resolve the checkpoint to load (collective with a process group: call it on every
        rank, or let ``dcp.load`` call it).

        Raises:
            CheckpointNotCommittedError: Nothing committed matches; names what is missing.
            CheckpointError: The matching commit is torn; names the missing objects.
        """
        if self._checkpoint is not None:
            return self._checkpoint
        step, save_id = self._step, self._save_id
        outcome: list[Any] = [None]
        distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        if not distributed or dist.get_rank() == 0:
            try:
                outcome[0] = ("ok", self._store.run(lambda s: s.resolve(step, save_id)))
            except CheckpointError as exc:
                outcome[0] = ("error", exc)
        if distributed:
            dist.broadcast_object_list(outcome, src=0)
        kind, value = outcome[0]
        if kind == "error":
            raise value
        assert isinstance(value, CommittedCheckpoint)
        if value.kind != "dcp":
            raise CheckpointError(
                f"checkpoint {value.uri} was committed by a trainer integration (kind "
                f"{value.kind!r}), not by a CheckpointWriter: it has no DCP metadata; "
                "use download_checkpoint() to fetch its files",
                location=value.location,
            )
        self._checkpoint = value
        return value

    def reset(self, checkpoint_id: str | os.PathLike[str] | None = None) -> None:
        if checkpoint_id is not None:
            raise ConfigError(
                "CheckpointReader takes its checkpoint from root/step/save_id; "
                f"do not pass checkpoint_id (got {checkpoint_id!r})"
            )
        super().reset(None)

    def read_metadata(self) -> Metadata:
        ckpt = self.resolve()
        with self._session_dir() as folder:
            self._download([METADATA_NAME], folder)
            # DCP's own format is a pickle; it is read only from a committed checkpoint whose
            # every object was proven present with its recorded size, and downloads are
            # verified against the store's checksums.
            with open(folder / METADATA_NAME, "rb") as f:
                metadata: Metadata = pickle.load(f)
        if getattr(metadata, "storage_data", None) is None:
            raise CheckpointError(f"{ckpt.uri}/{METADATA_NAME} carries no storage data")
        names = {info.relative_path for info in metadata.storage_data.values()}
        unknown = names - set(ckpt.files)
        if unknown:
            raise CheckpointError(
                f"{ckpt.uri}/{METADATA_NAME} names files its commit record does not: "
                f"{', '.join(sorted(unknown))}",
                location=ckpt.location,
                missing=tuple(sorted(unknown)),
            )
        return super_read_metadata_fixup(metadata, self.load_id)

    def read_data(self, plan: LoadPlan, planner: LoadPlanner) -> TorchFuture[None]:
        needed = sorted(
            {self.storage_data[item.storage_index].relative_path for item in plan.items}
        )
        with self._session_dir() as folder:
            self._download(needed, folder)
            self.path = folder
            return super().read_data(plan, planner)

    @contextlib.contextmanager
    def _session_dir(self) -> Any:
        if self._cache_parent is not None:
            self._cache_parent.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix="au-dcp-load-", dir=self._cache_parent))
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def _download(self, names: list[str], folder: Path) -> None:
        ckpt = self._checkpoint
        assert ckpt is not None
        options = {"use_procs": False, "verify": False, **self._options}
        with Uploader(self.root, provider_kwargs=self._store.provider_kwargs, **options) as up:
            futures = []
            with concurrent.futures.ThreadPoolExecutor(min(4, max(1, len(names)))) as pool:
                for name in names:
                    futures.append(
                        pool.submit(up.download, f"{ckpt.location}/{name}", folder / name)
                    )
                for fut in futures:
                    fut.result()

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: str | os.PathLike[str]) -> bool:
        return False


def super_read_metadata_fixup(metadata: Metadata, load_id: str) -> Metadata:
    """What ``FileSystemReader.read_metadata`` does after unpickling: attach the load id."""
    from torch.distributed.checkpoint.metadata import StorageMeta

    meta = getattr(metadata, "storage_meta", None) or StorageMeta()
    meta.load_id = load_id
    metadata.storage_meta = meta
    return metadata
