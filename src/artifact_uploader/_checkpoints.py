"""What callers call on a checkpoint root: find, list, prune, resume and download checkpoints.

These are synchronous front-ends of the commit protocol in :mod:`artifact_uploader._commit`,
shared by every writer of it: DCP's :class:`~artifact_uploader.CheckpointWriter` and the trainer
integrations (``HFUploadCallback``, ``LightningUploadCallback``, ``ObjectStoreLogger`` with
``commit_checkpoints``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

from ._commit import (
    SCRATCH_PREFIX,
    CheckpointError,
    CheckpointNotCommittedError,
    CommittedCheckpoint,
    Store,
    apply_retention,
    check_retention,
    check_step,
)
from ._errors import ConfigError, ObjectNotFoundError
from ._sync import Uploader

# How often a download starts over when retention deleted the checkpoint it was reading.
_DOWNLOAD_ATTEMPTS = 3


def latest_checkpoint(
    root: str,
    *,
    step: int | None = None,
    provider_kwargs: Mapping[str, Any] | None = None,
) -> CommittedCheckpoint | None:
    """The newest committed, whole checkpoint under ``root`` (of ``step`` if given), or None.

    Raises:
        CheckpointError: The newest commit names objects that are missing (torn).
        ConfigError: A bad URI or option.
    """
    if step is not None:
        check_step(step)
    store = Store(root, provider_kwargs)
    try:
        return store.run(lambda s: s.resolve(step, None))
    except CheckpointNotCommittedError:
        return None


def list_checkpoints(
    root: str, *, provider_kwargs: Mapping[str, Any] | None = None
) -> list[CommittedCheckpoint]:
    """Every committed checkpoint under ``root``, newest first (records only; not proven whole)."""
    return Store(root, provider_kwargs).run(lambda s: s.committed())


def prune_checkpoints(
    root: str,
    *,
    keep_last: int,
    keep_best: int = 0,
    best: Literal["max", "min"] = "max",
    provider_kwargs: Mapping[str, Any] | None = None,
    _on_delete: Callable[[str], None] | None = None,
) -> list[CommittedCheckpoint]:
    """Keep the ``keep_last`` newest committed checkpoints (and ``keep_best`` best by metric).

    Each other checkpoint is uncommitted first (its commit record deleted), then its objects,
    so a crash midway leaves nothing torn visible. Older saves of a step that was saved again
    are deleted too.

    Returns:
        The checkpoints deleted.

    Raises:
        ConfigError: A bad option.
    """
    check_retention(keep_last, keep_best, best)
    store = Store(root, provider_kwargs)
    return store.run(lambda s: apply_retention(s, keep_last, keep_best, best, _on_delete))


def resume_checkpoints(
    root: str,
    staging_dir: str | os.PathLike[str],
    *,
    provider_kwargs: Mapping[str, Any] | None = None,
    delete_uncommitted: bool = True,
) -> list[str]:
    """After a crash: finish each rank's journal, then delete saves that were never committed.

    Removes the serialization scratch folders a killed writer left in ``staging_dir``, runs
    :meth:`Uploader.resume` on every ``rank-*`` folder of it (aborting the
    multipart uploads the journal names and uploading what was pending), then deletes every
    ``step-N/<save-id>/`` location under ``root`` that no commit record names. Call it when no
    save to ``root`` is running.

    Returns:
        The locations deleted.

    Raises:
        UploadFailedError: A journalled upload could not be finished (it stays journalled).
    """
    folder = Path(staging_dir)
    for scratch in sorted(folder.glob(SCRATCH_PREFIX + "*")):
        # Shards a killed writer was serializing: never staged, so never journalled.
        if scratch.is_dir() and not scratch.is_symlink():
            shutil.rmtree(scratch, ignore_errors=True)
    for rank_dir in sorted(folder.glob("rank-*")):
        if rank_dir.is_dir():
            Uploader.resume(rank_dir, root, provider_kwargs=provider_kwargs, use_procs=False)
    if not delete_uncommitted:
        return []
    store = Store(root, provider_kwargs)

    async def clean(s: Any) -> list[str]:
        locations: list[str] = await s.uncommitted_locations()
        for location in locations:
            await s.delete_location(location)
        return locations

    return store.run(clean)


def download_checkpoint(
    root: str,
    destination: str | os.PathLike[str],
    *,
    step: int | None = None,
    provider_kwargs: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    uploader_options: Mapping[str, Any] | None = None,
) -> CommittedCheckpoint:
    """Download the newest committed checkpoint under ``root`` (of ``step``) into a folder.

    Every file its commit record names is downloaded (ranged, verified against the store's
    checksums and the record's sizes) into a temporary folder beside ``destination``, which is
    then renamed to ``destination``: the folder appears whole or not at all. A checkpoint that
    retention deletes meanwhile is skipped and the next newest one downloaded.

    The folder holds what the trainer saved: an HF ``checkpoint-N`` folder's files (pass it to
    ``trainer.train(resume_from_checkpoint=...)``), a Lightning ``.ckpt`` file (``ckpt_path=``),
    a Composer checkpoint (``load_path=``) or a DCP save (``FileSystemReader``).

    Args:
        root: The checkpoint root (as given to the writer or callback).
        destination: The local folder to create.
        step: Download this step's newest commit. Default None: the newest checkpoint.
        provider_kwargs: Options for the store's provider.
        overwrite: Replace an existing ``destination``. Default False: raise instead.
        uploader_options: Other :class:`~artifact_uploader.Uploader` options
            (``max_concurrency``, ``retry``...) for the downloads.

    Returns:
        The checkpoint downloaded.

    Raises:
        CheckpointNotCommittedError: Nothing committed under ``root`` (of ``step``).
        CheckpointError: The newest commit is torn (objects missing or of another size).
        FileExistsError: ``destination`` exists and ``overwrite`` is False.
        ConfigError: A bad URI or option.
    """
    if step is not None:
        check_step(step)
    if not isinstance(overwrite, bool):
        raise ConfigError(f"overwrite must be a bool, got {overwrite!r}")
    target = Path(destination).absolute()
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} exists; pass overwrite=True to replace it")
    store = Store(root, provider_kwargs)
    target.parent.mkdir(parents=True, exist_ok=True)
    options = {"use_procs": False, "verify": False, **(uploader_options or {})}
    with Uploader(store.root, provider_kwargs=store.provider_kwargs, **options) as up:
        for attempt in range(_DOWNLOAD_ATTEMPTS):
            ckpt = store.run(lambda s: s.resolve(step, None))
            scratch = Path(tempfile.mkdtemp(prefix=".download-", dir=target.parent))
            try:
                _download_files(up, ckpt, scratch)
            except ObjectNotFoundError:
                shutil.rmtree(scratch, ignore_errors=True)
                gone = _record_gone(store, ckpt.record)
                if gone and attempt + 1 < _DOWNLOAD_ATTEMPTS:
                    continue  # retention uncommitted it while we read: take the next newest
                raise
            except BaseException:
                shutil.rmtree(scratch, ignore_errors=True)
                raise
            _replace(scratch, target, overwrite)
            return ckpt
    raise AssertionError("unreachable")  # pragma: no cover


def _record_gone(store: Store, record: str) -> bool:
    return store.run(lambda s: s.head_size(record)) is None


def _download_files(up: Uploader, ckpt: CommittedCheckpoint, folder: Path) -> None:
    for name, size in sorted(ckpt.files.items()):
        dest = folder / name  # the record's names were checked: relative, no "..": stays inside
        dest.parent.mkdir(parents=True, exist_ok=True)
        up.download(f"{ckpt.location}/{name}", dest, follow_symlinks=False)
        if dest.stat().st_size != size:
            raise CheckpointError(
                f"{ckpt.uri}/{name} is {dest.stat().st_size} bytes; its commit record "
                f"{ckpt.record} says {size}",
                location=ckpt.location,
                missing=(name,),
            )


def _replace(scratch: Path, target: Path, overwrite: bool) -> None:
    """Rename ``scratch`` to ``target``; an existing ``target`` is replaced only if allowed."""
    old = None
    try:
        if target.exists() or target.is_symlink():
            if not overwrite:
                raise FileExistsError(f"{target} exists; pass overwrite=True to replace it")
            old = Path(tempfile.mkdtemp(prefix=".replaced-", dir=target.parent))
            os.replace(target, old / "old")
        os.replace(scratch, target)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        if old is not None and (old / "old").exists() and not target.exists():
            os.replace(old / "old", target)  # put back what was there
        raise
    finally:
        if old is not None:
            with contextlib.suppress(OSError):
                shutil.rmtree(old)
