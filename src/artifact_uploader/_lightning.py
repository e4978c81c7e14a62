"""LightningUploadCallback: upload every checkpoint file a PyTorch Lightning ``Trainer`` writes.

Imported lazily (``artifact_uploader.LightningUploadCallback``). It works with ``lightning``
(``lightning.pytorch``) and, when only that is installed, the standalone ``pytorch_lightning``
package; without either, importing this module raises :class:`MissingDependencyError` naming
the ``lightning`` extra.

Why a Callback that installs a ``CheckpointIO``: Lightning's ``Callback.on_save_checkpoint``
runs *before* the file is written (it lets callbacks edit the dict), so a plain callback never
sees the file. A ``CheckpointIO`` sees every write — by ``ModelCheckpoint``, by
``trainer.save_checkpoint`` or anything else going through the strategy — right after it
happens, and only on the global-zero rank. But a ``CheckpointIO`` has no hook at the end of
training to wait and report failures, and passing it through ``plugins=`` would replace the
strategy's own one. So the callback wraps whatever ``CheckpointIO`` the strategy has at
``setup``, restores it at ``teardown`` (or on an exception), and owns the upload lifecycle:
one line, ``callbacks=[LightningUploadCallback(...)]``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._checkpoint_sink import (
    CheckpointSink,
    check_commit_template,
    render,
    selected_files,
)
from ._errors import ConfigError, MissingDependencyError
from ._naming import check_template
from ._sync import Uploader
from .providers._protocol import Provider

if TYPE_CHECKING:
    import lightning.pytorch as pl
    from lightning.fabric.plugins import CheckpointIO
    from lightning.pytorch.callbacks import Callback
    from lightning.pytorch.plugins.io import AsyncCheckpointIO
else:
    try:
        import lightning.pytorch as pl
        from lightning.fabric.plugins import CheckpointIO
        from lightning.pytorch.callbacks import Callback
        from lightning.pytorch.plugins.io import AsyncCheckpointIO
    except ImportError as exc:
        try:
            import pytorch_lightning as pl
            from lightning_fabric.plugins import CheckpointIO
            from pytorch_lightning.callbacks import Callback
            from pytorch_lightning.plugins.io import AsyncCheckpointIO
        except ImportError:
            raise MissingDependencyError("LightningUploadCallback", "lightning", str(exc)) from exc

NAME_FIELDS = ("path", "step")


class LightningUploadCallback(Callback):
    """A Lightning ``Callback`` that uploads each checkpoint file the Trainer writes.

    Every checkpoint saved through the strategy (``ModelCheckpoint``,
    ``trainer.save_checkpoint(...)``) is written locally as usual, then staged — copied into the
    uploader's private staging folder — and uploaded on the uploader's background thread while
    training goes on. Because the upload reads the staged copy, ``ModelCheckpoint`` deleting an
    older file (``save_top_k``) right after saving a better one does not affect it. Object names
    are the files' paths relative to ``root_dir`` (by default the Trainer's
    ``default_root_dir``), e.g. ``checkpoints/epoch=0-step=100.ckpt``; a file outside it is
    named by its file name alone. A checkpoint written as a folder (some sharded strategies)
    uploads each of its files.

    Only the global-zero rank uploads (Lightning calls the checkpoint I/O there alone); other
    ranks open no connection. At ``teardown`` the callback waits for every upload and closes the
    uploader it made; failures are raised there as :class:`UploadFailedError`, naming each
    object (or logged, with ``raise_on_failure=False``). If training raises, the uploader is
    closed and failures are logged without hiding the original exception.

    Strategies that write checkpoints without the ``CheckpointIO`` (DeepSpeed) are not covered,
    nor is ``ModelCheckpoint(save_last="link")``'s symlink. ``AsyncCheckpointIO`` is refused:
    uploads already run in the background, and its deferred writes would be staged before
    they exist.

    Example:
        ```python
        import lightning.pytorch as pl
        from lightning.pytorch.callbacks import ModelCheckpoint
        from artifact_uploader import LightningUploadCallback

        trainer = pl.Trainer(
            max_epochs=10,
            callbacks=[
                ModelCheckpoint(every_n_train_steps=500, save_top_k=3, monitor="val_loss"),
                LightningUploadCallback("s3://my-bucket/runs/resnet-7"),
            ],
        )
        trainer.fit(model, datamodule=dm)   # returns once every checkpoint is in the store
        ```

    Args:
        store: Where to upload: a URI (``s3://bucket/prefix``, ``gs://...``, ``az://...``,
            ``file:///abs/dir``), a provider instance (used for one ``fit``: it is closed at
            its end), or an existing :class:`Uploader` (which you own: the callback flushes it at
            the end but never closes it).
        object_name: Template for object names with fields ``{path}`` (the file's POSIX path
            relative to ``root_dir``) and ``{step}`` (the checkpoint's global step). Leading
            slashes are stripped. Default ``"{path}"``.
        root_dir: Folder the ``{path}`` field is relative to. Default None: the Trainer's
            ``default_root_dir``.
        overwrite: Replace existing objects. False makes an existing object a failure
            (``ObjectExistsError``). Default True.
        wait_on_save: Block after each checkpoint until it (and everything before it) is
            uploaded, raising failures there. Default False: training goes on at once.
        wait_on_end: Wait for every upload at ``teardown`` and report failures. False returns
            at once: call :meth:`close` later. Default True.
        raise_on_failure: Raise :class:`UploadFailedError` for failed uploads; False logs them
            (logger ``artifact_uploader``) instead. Default True.
        provider_kwargs: Provider options (credentials, region, endpoint) when ``store`` is a
            URI.
        uploader_options: :class:`Uploader` options (``max_concurrency``, ``staging_dir``,
            ``max_staged_bytes``, ``retry``...) when ``store`` is a URI or provider.
            ``staging="move"`` is refused: Lightning still needs its files.
        commit: Publish each checkpoint (a ``.ckpt`` file, or a folder a strategy writes) as
            one committed checkpoint under ``store`` (a URI: the checkpoint root), by its
            global step: its file(s) go to a fresh location ``step-<N>/<save-id>/<name>``
            and a commit record is written once every one is durable, so
            :func:`~artifact_uploader.latest_checkpoint` and
            :func:`~artifact_uploader.download_checkpoint` only ever see whole checkpoints.
            Two saves at one step (a top-k file and ``last.ckpt``) are two generations of
            that step; the later one is the latest. ``object_name`` must stay ``"{path}"``.
            Default False: plain uploads.
        keep_last: With ``commit``, keep only this many newest committed steps in the store
            (older ones, and earlier generations of a step, are deleted after a newer one is
            committed, record first). Default None: keep every one.

    Raises:
        ConfigError: Malformed URI, unknown option or template field.
        MissingDependencyError: The store's extra (or ``lightning``) is not installed.
    """

    def __init__(
        self,
        store: str | Provider | Uploader,
        *,
        object_name: str = "{path}",
        root_dir: str | os.PathLike[str] | None = None,
        overwrite: bool = True,
        wait_on_save: bool = False,
        wait_on_end: bool = True,
        raise_on_failure: bool = True,
        provider_kwargs: Mapping[str, Any] | None = None,
        uploader_options: Mapping[str, Any] | None = None,
        commit: bool = False,
        keep_last: int | None = None,
    ) -> None:
        self.object_name = check_template(object_name, NAME_FIELDS)
        check_commit_template("LightningUploadCallback", object_name, commit)
        if not isinstance(wait_on_end, bool):
            raise ConfigError(
                f"LightningUploadCallback: wait_on_end must be a bool, got {wait_on_end!r}"
            )
        self.wait_on_end = wait_on_end
        self.root_dir = None if root_dir is None else Path(root_dir)
        self._sink = CheckpointSink(
            store,
            owner="LightningUploadCallback",
            provider_kwargs=provider_kwargs,
            uploader_options=uploader_options,
            overwrite=overwrite,
            wait_on_save=wait_on_save,
            raise_on_failure=raise_on_failure,
            commit=commit,
            keep_last=keep_last,
        )
        self._root = Path.cwd()
        # (strategy, its CheckpointIO before ours), while installed.
        self._installed: tuple[Any, CheckpointIO] | None = None

    def __repr__(self) -> str:
        return (
            f"<LightningUploadCallback object_name={self.object_name!r} uploader={self.uploader!r}>"
        )

    @property
    def uploader(self) -> Uploader | None:
        """The uploader in use; None until ``setup`` (and on ranks other than zero)."""
        return self._sink.uploader

    def close(self) -> None:
        """Wait for every upload and close the uploader this callback made. Idempotent.

        Raises:
            UploadFailedError: Uploads failed (unless ``raise_on_failure`` is False).
        """
        self._sink.finish()

    def upload_checkpoint(self, path: str | os.PathLike[str], step: int = 0) -> None:
        """Stage the checkpoint at ``path`` (a file or a folder) and upload it in the background.

        Called for every checkpoint the Trainer writes while the callback is installed; call it
        yourself for files written some other way (global-zero rank only).

        Raises:
            SourceFileError: ``path`` does not exist.
            StagingError, InvalidObjectNameError: As for :meth:`Uploader.submit`.
        """
        local = Path(path)
        if self._sink.publisher is not None:
            # One checkpoint, one commit; inside the location it keeps its own name.
            if local.is_dir():
                files = [
                    (f"{local.name}/{f.relative_to(local).as_posix()}", f)
                    for f in selected_files(local, None, ())
                ]
            else:
                files = [(local.name, local)]
            self._sink.publish(files, step)
        elif local.is_dir():
            for file in selected_files(local, None, ()):
                self._sink.submit(file, render(self.object_name, path=self._rel(file), step=step))
        else:
            self._sink.submit(local, render(self.object_name, path=self._rel(local), step=step))
        self._sink.after_save()

    def _rel(self, path: Path) -> str:
        try:
            return path.absolute().relative_to(self._root).as_posix()
        except ValueError:
            return path.name

    # -- Trainer hooks ----------------------------------------------------------------------

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Wrap the strategy's ``CheckpointIO``; open the uploader on global zero.

        Raises:
            ConfigError: The strategy uses ``AsyncCheckpointIO``.
            StoreNotFoundError, PermissionDeniedError: The store is unreachable.
        """
        strategy = trainer.strategy
        current = strategy.checkpoint_io
        if isinstance(current, _UploadingCheckpointIO):
            return
        if isinstance(current, AsyncCheckpointIO):
            raise ConfigError(
                "LightningUploadCallback does not work with AsyncCheckpointIO: its writes "
                "finish later, after the callback would stage them; drop the plugin (uploads "
                "already run in the background)"
            )
        self._root = Path(self.root_dir or trainer.default_root_dir).absolute()
        if trainer.is_global_zero:
            self._sink.open()
        self._installed = (strategy, current)
        strategy.checkpoint_io = _UploadingCheckpointIO(current, self)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Restore the strategy's ``CheckpointIO``; wait for the uploads and report failures.

        Raises:
            UploadFailedError: Uploads failed (unless ``raise_on_failure`` is False or
                ``wait_on_end`` is False).
        """
        self._restore()
        if self.wait_on_end:
            self._sink.finish()

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        """Training raised: restore the ``CheckpointIO`` and close the uploader, logging
        failures (Lightning skips ``teardown`` then, and the original error must stay on top)."""
        self._restore()
        self._sink.abort()

    def _restore(self) -> None:
        if self._installed is not None:
            strategy, original = self._installed
            self._installed = None
            strategy.checkpoint_io = original


class _UploadingCheckpointIO(CheckpointIO):
    """Writes through the strategy's own ``CheckpointIO``, then hands the file to the callback."""

    def __init__(self, base: CheckpointIO, callback: LightningUploadCallback) -> None:
        super().__init__()
        self.base = base
        self.callback = callback

    def save_checkpoint(
        self,
        checkpoint: dict[str, Any],
        path: str | Path,
        storage_options: Any | None = None,
    ) -> None:
        self.base.save_checkpoint(checkpoint, path, storage_options=storage_options)
        step = checkpoint.get("global_step", 0)
        self.callback.upload_checkpoint(path, step=step if isinstance(step, int) else 0)

    def load_checkpoint(
        self,
        path: str | Path,
        map_location: Any | None = None,
        weights_only: bool | None = None,
    ) -> dict[str, Any]:
        return self.base.load_checkpoint(path, map_location=map_location, weights_only=weights_only)

    def remove_checkpoint(self, path: str | Path) -> None:
        # Local only: what was uploaded stays in the store (its staged copy is already taken).
        self.base.remove_checkpoint(path)

    def teardown(self) -> None:
        self.base.teardown()
