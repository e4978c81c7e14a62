"""ObjectStoreLogger: the seed-compatible logger destination, over :class:`Uploader`."""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
from collections.abc import Callable, Mapping
from typing import Any

from ._config import PartPolicy, RetryPolicy, check_positive_int
from ._errors import ConfigError, UploadFailedError
from ._journal import resuming
from ._logger_commit import ComposerCommits
from ._logger_hooks import SYMLINK_SUFFIX as SYMLINK_SUFFIX
from ._logger_hooks import ComposerNames
from ._logger_hooks import LogLevel as LogLevel
from ._naming import NameTemplate, default_run_name
from ._registry import provider_from_seed
from ._sync import Uploader, submit_bytes, take_failures
from ._types import UploadResult
from ._uploader import ResumeReport


class ObjectStoreLogger(ComposerNames):
    """Uploads logged artifacts to an object store in the background.

    The signature and semantics follow Composer's ``ObjectStoreLogger``: ``file_artifact`` blocks
    only while the file is copied into the staging folder, then the upload runs behind the
    training loop. Failures are raised from the next ``file_artifact``, ``flush`` or ``close``,
    and in a Composer ``Trainer`` from ``fit_end``, so they fail ``fit()``.

    In a Composer ``Trainer`` it is a Composer ``LoggerDestination`` (when Composer is imported
    before the logger is built): checkpoints arrive through :meth:`upload_file`, Composer's
    ``latest`` ``.symlink`` file becomes a symlink object written once its checkpoint is durable,
    and autoresume reads checkpoints back through :meth:`download_file`.

    Args:
        provider: "s3", "gs" / "gcs" / "google_storage", "azure_blobs" / "az", or "file" / "local".
        container: The bucket (a directory path for "file"; with ``provider_kwargs={"key":
            folder}``, a folder inside ``folder``, as in libcloud's local driver).
        provider_kwargs: Provider options; the seed's keys (key, secret, secure, host, port,
            region, api_version) are understood.
        should_log_artifact: ``(state, log_level, artifact_name) -> bool``; False means the
            artifact is neither staged nor uploaded. Default: log everything.
        object_name: Format string for object names with fields ``{artifact_name}``,
            ``{run_name}``, ``{rank}``, ``{local_rank}``, ``{world_size}``,
            ``{local_world_size}``, ``{node_rank}``. Leading slashes are stripped.
            Default ``"{artifact_name}"``.
        num_concurrent_uploads: Most concurrent requests. Default 4.
        upload_staging_folder: Staging folder; persistent and journalled if given, else a
            temporary directory.
        use_procs: Run the event loop and the uploads in a child process instead of a
            background thread, keeping their Python work off the training process's GIL; same
            behaviour otherwise (see :class:`Uploader`). Default None: a child process when at
            least 4 cores are usable, a background thread otherwise.
        run_name: Fills ``{run_name}``; default the ``RUN_NAME`` env var, else a generated name.
        max_staged_bytes: Bound on staged bytes; ``file_artifact`` waits when full.
        resume: Upload what a previous run left pending in ``upload_staging_folder`` first.
        staging: Staging mode, as for :class:`Uploader`. Default "copy".
        retry: Retry policy for transient errors. Default ``RetryPolicy()``.
        parts: Multipart policy. Default ``PartPolicy()``.
        verify: Check the store is reachable at construction. Default True.
        commit_checkpoints: Opt-in: the folder Composer uploads its checkpoints under (the
            folder of its ``remote_file_name``, e.g. ``"{run_name}/checkpoints"``). Each
            checkpoint there (one file, or a sharded folder) goes to a fresh location
            ``<folder>/step-<batch>/<save-id>/`` and is published with a commit record once
            every file is durable; the ``latest`` ``.symlink`` is written after the commit and
            points into it. Readers (:func:`~artifact_uploader.latest_checkpoint`,
            :func:`~artifact_uploader.download_checkpoint` on :meth:`checkpoint_root_uri`)
            see whole checkpoints only. Default None: plain uploads, as the seed.

    Raises:
        ConfigError: Unknown provider or template field, invalid concurrency, etc.
    """

    def __init__(
        self,
        provider: str,
        container: str,
        provider_kwargs: Mapping[str, Any] | None = None,
        should_log_artifact: Callable[[Any, LogLevel, str], bool] | None = None,
        object_name: str = "{artifact_name}",
        num_concurrent_uploads: int = 4,
        upload_staging_folder: str | os.PathLike[str] | None = None,
        use_procs: bool | None = None,
        run_name: str | None = None,
        *,
        max_staged_bytes: int | None = None,
        resume: bool = False,
        staging: str = "copy",
        retry: RetryPolicy | None = None,
        parts: PartPolicy | None = None,
        verify: bool = True,
        commit_checkpoints: str | None = None,
    ) -> None:
        check_positive_int(num_concurrent_uploads, "num_concurrent_uploads")
        self._commits: ComposerCommits | None = None
        if commit_checkpoints is not None:
            seed = (provider, container, provider_kwargs)
            self._commits = ComposerCommits(commit_checkpoints, seed, retry)
        if should_log_artifact is not None and not callable(should_log_artifact):
            raise ConfigError(f"should_log_artifact must be callable, got {should_log_artifact!r}")
        self._template = NameTemplate(object_name)
        if run_name is not None and not isinstance(run_name, str):
            raise ConfigError(f"run_name must be a str, got {run_name!r}")
        self._explicit_run_name = run_name is not None
        self.run_name = run_name or default_run_name()
        self.should_log_artifact = should_log_artifact
        # With resume=True the pending entries are resumed right below: no warning telling the
        # user to resume them.
        with resuming() if resume else contextlib.nullcontext():
            self._uploader = Uploader(
                provider_from_seed(provider, container, provider_kwargs),
                max_concurrency=num_concurrent_uploads,
                staging_dir=upload_staging_folder,
                max_staged_bytes=max_staged_bytes,
                staging=staging,
                retry=retry,
                parts=parts,
                verify=verify,
                use_procs=use_procs,
            )
        self._latest: dict[str, concurrent.futures.Future[UploadResult]] = {}
        self.resume_report = _resume(self._uploader) if resume else None

    def __repr__(self) -> str:
        return f"<ObjectStoreLogger {self._uploader.provider!r} run_name={self.run_name!r}>"

    @property
    def object_name_template(self) -> str:
        """The ``object_name`` template, as given."""
        return self._template.template

    @property
    def uploader(self) -> Uploader:
        """The underlying :class:`Uploader`."""
        return self._uploader

    def object_name_for(self, artifact_name: str) -> str:
        """The object name ``artifact_name`` is stored under."""
        if not isinstance(artifact_name, str):
            raise ConfigError(f"artifact_name must be a str, got {artifact_name!r}")
        return self._template.format(artifact_name, self.run_name)

    def _should_log(self, state: Any, log_level: LogLevel, artifact_name: str) -> bool:
        should = self.should_log_artifact
        return should is None or bool(should(state, log_level, artifact_name))

    def _raise_earlier_failures(self) -> None:
        # A failed upload is reported at the next call rather than waiting for flush().
        if failures := take_failures(self._uploader):
            raise UploadFailedError(failures, context="in earlier uploads")

    def file_artifact(
        self,
        log_level: LogLevel,
        artifact_name: str,
        file_path: str | os.PathLike[str],
        *,
        overwrite: bool = False,
        state: Any = None,
    ) -> concurrent.futures.Future[UploadResult] | None:
        """Stage ``file_path`` and upload it in the background as ``artifact_name``.

        Blocks only while the file is copied into the staging folder.

        Returns:
            A future of the upload's result, or None if ``should_log_artifact`` declined it.

        Raises:
            UploadFailedError: An earlier upload failed (reported once).
            SourceFileError: ``file_path`` is missing, a directory or unreadable.
            InvalidObjectNameError: The formatted object name is not valid for the store.
        """
        self._raise_earlier_failures()
        if not self._should_log(state, log_level, artifact_name):
            return None
        name = self.object_name_for(artifact_name)
        future = self._uploader.submit(file_path, name, overwrite=overwrite)
        self._latest[artifact_name] = future
        return future

    def symlink_artifact(
        self,
        log_level: LogLevel,
        existing_artifact_name: str,
        symlink_artifact_name: str,
        *,
        overwrite: bool = False,
        state: Any = None,
    ) -> concurrent.futures.Future[UploadResult] | None:
        """Store ``<symlink name>.symlink`` whose text is the target's object name.

        It is written only after the target is durable; if the target's upload fails, the
        symlink is not written and the failure is reported.

        Raises:
            ConfigError: ``existing_artifact_name`` was never logged by this logger.
        """
        self._raise_earlier_failures()
        if not self._should_log(state, log_level, symlink_artifact_name):
            return None
        target_future = self._latest.get(existing_artifact_name)
        if target_future is None:
            raise ConfigError(
                f"cannot symlink to {existing_artifact_name!r}: it was never logged by this logger"
            )
        target = self.object_name_for(existing_artifact_name)
        name = self.object_name_for(symlink_artifact_name)
        if not name.endswith(SYMLINK_SUFFIX):
            name += SYMLINK_SUFFIX
        return submit_bytes(
            self._uploader, target.encode("utf-8"), name, overwrite=overwrite, after=target_future
        )

    def flush(self, timeout: float | None = None) -> None:
        """Wait for every upload so far; raise :class:`UploadFailedError` for any that failed
        (and, with ``commit_checkpoints``, a commit's failure)."""
        failures = [] if self._commits is None else self._commits.flush()
        self._uploader.flush(timeout)
        if failures:
            raise failures[0]

    def checkpoint_root_uri(self) -> str | None:
        """With ``commit_checkpoints``, the URI of the checkpoint root (for
        :func:`~artifact_uploader.latest_checkpoint` / ``download_checkpoint``); else None."""
        return None if self._commits is None else self._commits.root_uri(self)

    def close(self, timeout: Any = None, logger: Any = None, *, state: Any = None) -> None:
        """Flush and shut down the background thread (or process). Idempotent.

        Composer's engine calls ``close(state, logger)`` as an event hook (positionally or by
        keyword) and then :meth:`post_close`; a call with a trainer state instead of a timeout,
        or with ``logger``/``state`` given, is that hook and does nothing, so the drain happens
        once, in ``post_close`` (Composer may still log files between the two).

        Args:
            timeout: Seconds to wait for the remaining uploads; None waits as long as it takes.
            logger: Composer's ``Logger`` (only in the event hook; ignored).
            state: Composer's ``State`` (only in the event hook; ignored).

        Raises:
            UploadFailedError: An upload failed and was not reported before.
        """
        is_number = isinstance(timeout, int | float) and not isinstance(timeout, bool)
        if state is not None or logger is not None or (timeout is not None and not is_number):
            return
        self._latest.clear()
        failures = [] if self._commits is None else self._commits.close()
        self._uploader.close(timeout)
        if failures:
            raise failures[0]

    # -- Composer's LoggerDestination interface (the rest is in ComposerNames) ---------------

    def run_event(self, event: Any, state: Any, logger: Any = None) -> None:
        """Composer's event hook.

        ``init`` takes ``state.run_name`` for ``{run_name}`` (unless ``run_name`` was given to
        the constructor); ``batch_end`` and ``epoch_end`` raise an earlier upload's failure, as
        Composer's own logger does; ``fit_end``, ``eval_standalone_end`` and ``predict_end``
        wait for every upload so far and raise any failure, so a checkpoint that did not reach
        the store fails ``fit()`` (Composer only logs what ``close``/``post_close`` raise).
        Other events go to Composer's own ``Callback.run_event`` where Composer is the base.

        Raises:
            UploadFailedError: An upload failed.
        """
        name = getattr(event, "value", event)
        if name == "init":
            run_name = getattr(state, "run_name", None)
            if isinstance(run_name, str) and run_name and not self._explicit_run_name:
                self.run_name = run_name
        elif name in ("batch_end", "epoch_end"):
            self._raise_earlier_failures()
        elif name in ("fit_end", "eval_standalone_end", "predict_end"):
            # Drain first, then raise: raising what has failed so far without waiting would
            # leave failures still on their way (a symlink whose target failed) to post_close,
            # where Composer only logs them.
            self.flush()
        elif name not in ("close", "post_close"):
            parent = getattr(super(), "run_event", None)
            if parent is not None:
                parent(event, state, logger)

    def upload_file(
        self,
        state: Any,
        remote_file_name: str,
        file_path: str | os.PathLike[str],
        *,
        overwrite: bool = False,
    ) -> None:
        """Newer Composer releases' name for uploading a file (no log level).

        Composer uploads its ``latest`` checkpoint symlink as an ordinary file named
        ``*.symlink`` whose text is the checkpoint's remote file name. When that checkpoint
        was logged here, the symlink is stored as by :meth:`symlink_artifact`: written only
        after the checkpoint is durable (never when its upload failed), its text the
        checkpoint's stored object name (``object_name`` template applied).
        With ``commit_checkpoints``, checkpoint files go to the commit instead.
        """
        if self._commits is not None:
            self._raise_earlier_failures()
            if self._commits.upload_file(self, state, remote_file_name, file_path):
                return
        if remote_file_name.endswith(SYMLINK_SUFFIX):
            target = _read_symlink_text(file_path)
            if target is not None and target in self._latest:
                self.symlink_artifact(
                    LogLevel.FIT,
                    target,
                    remote_file_name[: -len(SYMLINK_SUFFIX)],
                    overwrite=overwrite,
                    state=state,
                )
                return
        self.file_artifact(
            LogLevel.FIT, remote_file_name, file_path, overwrite=overwrite, state=state
        )


# The longest symlink file read: its text is one object name (S3 allows 1024 bytes).
_MAX_SYMLINK_BYTES = 64 * 1024


def _resume(uploader: Uploader) -> ResumeReport:
    """Resume what ``uploader``'s folder holds; on failure close it (there is no logger to close
    later: let go of the loop thread and the folder lock now)."""
    try:
        return uploader.resume_pending()
    except BaseException:
        with contextlib.suppress(Exception):
            uploader.close()
        raise


def _read_symlink_text(path: str | os.PathLike[str]) -> str | None:
    """The target named by a local ``.symlink`` file, or None when it is not one."""
    try:
        with open(path, "rb") as f:
            data = f.read(_MAX_SYMLINK_BYTES + 1)
    except OSError:
        return None  # staging reports the unreadable file with the usual error
    if len(data) > _MAX_SYMLINK_BYTES:
        return None
    try:
        text = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        return None
    return text or None
