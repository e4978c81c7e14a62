"""HFUploadCallback: upload every checkpoint a Hugging Face ``transformers.Trainer`` saves.

Imported lazily (``artifact_uploader.HFUploadCallback``); importing this module without
``transformers`` installed raises :class:`MissingDependencyError` naming the ``hf`` extra.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ._checkpoint_sink import (
    CheckpointSink,
    check_commit_template,
    check_patterns,
    render,
    selected_files,
)
from ._errors import ConfigError, MissingDependencyError, SourceFileError
from ._naming import check_template
from ._sync import Uploader
from ._types import UploadResult
from .providers._protocol import Provider

try:
    from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
except ImportError as exc:
    raise MissingDependencyError("HFUploadCallback", "hf", str(exc)) from exc

NAME_FIELDS = ("path", "step")
TRAINER_STATE_NAME = "trainer_state.json"


class HFUploadCallback(TrainerCallback):
    """A ``transformers`` ``TrainerCallback`` that uploads each saved checkpoint folder.

    On every ``on_save`` the files of the folder the Trainer just wrote (``checkpoint-<step>``
    under ``output_dir``) are staged — copied into the uploader's private staging folder — and
    the hook returns; the uploads run on the uploader's background thread while training goes
    on. Object names are the files' paths relative to ``output_dir`` (for example
    ``checkpoint-2/model.safetensors``), shaped by ``object_name``.

    Staging is what makes ``save_total_limit`` safe: the Trainer deletes old checkpoint folders
    right after writing a new one (and again at the end of training), possibly while their
    uploads are still in flight. The uploads read the staged copies, so a deleted folder still
    lands in the store whole.

    Only the main process (``state.is_world_process_zero``) uploads; the other ranks do nothing
    and open no connection. At ``on_train_end`` the callback uploads the trainer state (with its
    log history) and, if asked, the final model, then waits for every upload and closes the
    uploader it made; failures are raised there as :class:`UploadFailedError`, naming each
    object (or logged, with ``raise_on_failure=False``). A failure is also logged when it
    happens. If training crashes, call :meth:`close`; an uploader left open is flushed at
    interpreter exit with a warning.

    Example:
        ```python
        from transformers import Trainer, TrainingArguments
        from artifact_uploader import HFUploadCallback

        upload = HFUploadCallback(
            "s3://my-bucket/runs/bert-42",
            object_name="{path}",             # checkpoint-500/model.safetensors, ...
            exclude=["optimizer.pt"],         # skip the optimizer state
            final_model="final",              # also upload the model at the end under final/
        )
        args = TrainingArguments(output_dir="out", save_steps=500, save_total_limit=2)
        trainer = Trainer(model=model, args=args, train_dataset=ds, callbacks=[upload])
        trainer.train()                       # returns once every checkpoint is in the store
        ```

    Args:
        store: Where to upload: a URI (``s3://bucket/prefix``, ``gs://...``, ``az://...``,
            ``file:///abs/dir``), a provider instance (used for one training run: it is closed
            at its end), or an existing :class:`Uploader` (which you own: the callback flushes
            it at the end but never closes it).
        object_name: Template for object names with fields ``{path}`` (the file's POSIX path
            relative to ``output_dir``, e.g. ``checkpoint-2/config.json``) and ``{step}`` (the
            global step). Leading slashes are stripped. Default ``"{path}"``.
        include: Glob patterns (matched against the path inside the checkpoint folder, e.g.
            ``"*.safetensors"``); only matching files are uploaded. Default None: every file.
        exclude: Glob patterns of files to skip, applied after ``include``. Default ``()``.
        overwrite: Replace existing objects. False makes an existing object a failure
            (``ObjectExistsError``). Default True.
        upload_state: At the end of training, upload the trainer state (``log_history``,
            best checkpoint, ...) as ``trainer_state.json`` (through ``object_name``).
            Default True.
        final_model: A folder name: at the end of training, the model (and processing class,
            if any) is written with ``save_pretrained`` to a temporary folder and uploaded as
            ``<final_model>/<file>``. For FSDP or DeepSpeed, whose shards ``save_pretrained``
            cannot gather, call ``trainer.save_model(dir)`` and :meth:`upload_folder` instead.
            Default None: not uploaded.
        wait_on_save: Block in ``on_save`` until that checkpoint (and everything before it)
            is uploaded, raising failures there. Default False: training goes on at once.
        wait_on_end: Wait for every upload in ``on_train_end`` and report failures. False
            returns at once: call :meth:`close` later (an uploader left open is flushed at
            interpreter exit, with a warning). Default True.
        raise_on_failure: Raise :class:`UploadFailedError` for failed uploads; False logs
            them (logger ``artifact_uploader``) instead. Default True.
        provider_kwargs: Provider options (credentials, region, endpoint) when ``store`` is a
            URI.
        uploader_options: :class:`Uploader` options (``max_concurrency``, ``staging_dir``,
            ``max_staged_bytes``, ``retry``...) when ``store`` is a URI or provider.
            ``staging="move"`` is refused: the Trainer still needs its files.
        commit: Publish each ``checkpoint-N`` folder as one committed checkpoint under
            ``store`` (a URI: the checkpoint root): its files go to a fresh location
            ``step-<N>/<save-id>/`` and a commit record is written after every one of them is
            durable, so :func:`~artifact_uploader.latest_checkpoint` and
            :func:`~artifact_uploader.download_checkpoint` only ever see whole checkpoints.
            ``object_name`` must stay ``"{path}"``. Default False: plain uploads.
        keep_last: With ``commit``, keep only this many newest committed checkpoints in the
            store (older ones are deleted after a newer one is committed, record first).
            Default None: keep every one.

    Raises:
        ConfigError: Malformed URI, unknown option or template field, bad patterns.
        MissingDependencyError: The store's extra (or ``transformers``) is not installed.
    """

    def __init__(
        self,
        store: str | Provider | Uploader,
        *,
        object_name: str = "{path}",
        include: Sequence[str] | None = None,
        exclude: Sequence[str] = (),
        overwrite: bool = True,
        upload_state: bool = True,
        final_model: str | None = None,
        wait_on_save: bool = False,
        wait_on_end: bool = True,
        raise_on_failure: bool = True,
        provider_kwargs: Mapping[str, Any] | None = None,
        uploader_options: Mapping[str, Any] | None = None,
        commit: bool = False,
        keep_last: int | None = None,
    ) -> None:
        self.object_name = check_template(object_name, NAME_FIELDS)
        check_commit_template("HFUploadCallback", object_name, commit)
        self.include = check_patterns(include, "include")
        self.exclude = check_patterns(exclude, "exclude") or ()
        for option, value in (("upload_state", upload_state), ("wait_on_end", wait_on_end)):
            if not isinstance(value, bool):
                raise ConfigError(f"HFUploadCallback: {option} must be a bool, got {value!r}")
        if final_model is not None and (
            not isinstance(final_model, str) or not final_model.strip("/")
        ):
            raise ConfigError(
                f"HFUploadCallback: final_model must be a folder name or None, got {final_model!r}"
            )
        self.upload_state = upload_state
        self.final_model = None if final_model is None else final_model.strip("/")
        self.wait_on_end = wait_on_end
        self._sink = CheckpointSink(
            store,
            owner="HFUploadCallback",
            provider_kwargs=provider_kwargs,
            uploader_options=uploader_options,
            overwrite=overwrite,
            wait_on_save=wait_on_save,
            raise_on_failure=raise_on_failure,
            commit=commit,
            keep_last=keep_last,
        )

    def __repr__(self) -> str:
        return f"<HFUploadCallback object_name={self.object_name!r} uploader={self.uploader!r}>"

    @property
    def uploader(self) -> Uploader | None:
        """The uploader in use; None until training starts (and on non-main processes)."""
        return self._sink.uploader

    def upload_folder(
        self,
        folder: str | os.PathLike[str],
        under: str,
        *,
        step: int = 0,
    ) -> list[concurrent.futures.Future[UploadResult]]:
        """Stage every file of ``folder`` and upload it as ``<under>/<relative path>``.

        For folders the Trainer does not announce through ``on_save``, e.g. after
        ``trainer.save_model("final")``. ``include`` / ``exclude`` apply. Call it on the main
        process only. Failures are reported by :meth:`close` (or the next ``on_train_end``).

        Args:
            folder: The local folder.
            under: The ``{path}`` prefix of its objects (e.g. ``"final"``).
            step: The ``{step}`` field. Default 0.

        Returns:
            One future per file, resolving once the object is durable.

        Raises:
            SourceFileError: ``folder`` is not a directory.
            StagingError, InvalidObjectNameError: As for :meth:`Uploader.submit`.
        """
        root = Path(folder)
        if not root.is_dir():
            raise SourceFileError(root, "not a directory")
        futures = []
        for path in selected_files(root, self.include, self.exclude):
            rel = path.relative_to(root).as_posix()
            name = render(self.object_name, path=f"{under.strip('/')}/{rel}", step=step)
            futures.append(self._sink.submit(path, name))
        return futures

    def close(self) -> None:
        """Wait for every upload and close the uploader this callback made. Idempotent.

        Raises:
            UploadFailedError: Uploads failed (unless ``raise_on_failure`` is False).
        """
        self._sink.finish()

    # -- Trainer events ---------------------------------------------------------------------

    def on_train_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        **kwargs: Any,
    ) -> None:
        """Open the uploader on the main process, so an unreachable store fails now."""
        if state.is_world_process_zero:
            self._sink.open()

    def on_save(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        **kwargs: Any,
    ) -> None:
        """Stage the files of the checkpoint just saved; they upload in the background.

        Raises:
            SourceFileError: The checkpoint folder the Trainer announced is not there.
            StagingError: A file could not be staged (staging folder full or unwritable).
        """
        if not state.is_world_process_zero:
            return
        # TrainingArguments fills in a default output_dir; str() only satisfies the type.
        output_dir = Path(str(args.output_dir))
        folder = _checkpoint_folder(output_dir, state.global_step)
        if self._sink.publisher is not None:
            files = selected_files(folder, self.include, self.exclude)
            self._sink.publish(
                [(p.relative_to(folder).as_posix(), p) for p in files], state.global_step
            )
        else:
            self.upload_folder(
                folder, folder.relative_to(output_dir).as_posix(), step=state.global_step
            )
        self._sink.after_save()

    def on_train_end(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        **kwargs: Any,
    ) -> None:
        """Upload the trainer state and final model (as configured), then wait and report.

        Raises:
            UploadFailedError: Uploads failed (unless ``raise_on_failure`` is False or
                ``wait_on_end`` is False).
        """
        if not state.is_world_process_zero:
            return
        if self.upload_state:
            name = render(self.object_name, path=TRAINER_STATE_NAME, step=state.global_step)
            # The same JSON the Trainer writes into each checkpoint folder.
            data = json.dumps(dataclasses.asdict(state), indent=2, sort_keys=True) + "\n"
            self._sink.submit_bytes(data.encode(), name)
        if self.final_model is not None:
            self._upload_final_model(kwargs, state.global_step)
        if self.wait_on_end:
            self._sink.finish()

    def _upload_final_model(self, hook_kwargs: Mapping[str, Any], step: int) -> None:
        model = hook_kwargs.get("model")
        save = getattr(model, "save_pretrained", None)
        if save is None:
            raise ConfigError(
                f"HFUploadCallback: final_model needs a model with save_pretrained(), "
                f"got {type(model).__name__}"
            )
        # Staging copies each file before upload_folder returns, so the temporary folder can go.
        with tempfile.TemporaryDirectory(prefix="hf-final-model-") as tmp:
            save(tmp)
            processing_class = hook_kwargs.get("processing_class")
            save_processing = getattr(processing_class, "save_pretrained", None)
            if save_processing is not None:
                save_processing(tmp)
            assert self.final_model is not None
            self.upload_folder(tmp, self.final_model, step=step)


def _checkpoint_folder(output_dir: Path, step: int) -> Path:
    """The folder the Trainer wrote for ``step``: ``output_dir/checkpoint-<step>``, or, in a
    hyperparameter search, ``output_dir/<run>/checkpoint-<step>`` (the newest)."""
    name = f"{PREFIX_CHECKPOINT_DIR}-{step}"
    folder = output_dir / name
    if folder.is_dir():
        return folder
    candidates = [p for p in output_dir.glob(f"*/{name}") if p.is_dir()]
    if candidates:
        return max(candidates, key=lambda p: p.stat().st_mtime_ns)
    raise SourceFileError(
        folder, "the Trainer reported a checkpoint save but this folder does not exist"
    )
