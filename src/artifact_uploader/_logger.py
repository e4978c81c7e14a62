"""ObjectStoreLogger: the seed-compatible logger destination, over :class:`Uploader`."""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
from collections.abc import Callable, Mapping
from enum import IntEnum
from typing import Any

from ._config import PartPolicy, RetryPolicy, check_positive_int
from ._errors import ConfigError, FailedUpload, UploadFailedError
from ._naming import NameTemplate, default_run_name
from ._registry import provider_from_seed
from ._sync import Uploader
from ._types import UploadResult
from ._uploader import ResumeReport

SYMLINK_SUFFIX = ".symlink"


class LogLevel(IntEnum):
    """How often an artifact is logged, as in Composer."""

    FIT = 1
    EPOCH = 2
    BATCH = 3


class ObjectStoreLogger:
    """Uploads logged artifacts to an object store in the background.

    The signature and semantics follow Composer's ``ObjectStoreLogger``: ``file_artifact`` blocks
    only while the file is copied into the staging folder, then the upload runs behind the
    training loop. Failures are raised from the next ``file_artifact``, ``flush`` or ``close``.

    Args:
        provider: "s3", "gs" / "gcs" / "google_storage", "azure_blobs" / "az", or "file" / "local".
        container: The bucket (a directory path for "file").
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
    ) -> None:
        check_positive_int(num_concurrent_uploads, "num_concurrent_uploads")
        if should_log_artifact is not None and not callable(should_log_artifact):
            raise ConfigError(f"should_log_artifact must be callable, got {should_log_artifact!r}")
        self._template = NameTemplate(object_name)
        if run_name is not None and not isinstance(run_name, str):
            raise ConfigError(f"run_name must be a str, got {run_name!r}")
        self._explicit_run_name = run_name is not None
        self.run_name = run_name or default_run_name()
        self.should_log_artifact = should_log_artifact
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
        self.resume_report: ResumeReport | None = None
        if resume:
            try:
                self.resume_report = self._uploader.resume_pending()
            except BaseException:
                # No logger to close later: let go of the loop thread and the folder lock now.
                with contextlib.suppress(Exception):
                    self._uploader.close()
                raise

    def __repr__(self) -> str:
        return f"<ObjectStoreLogger {self._uploader.provider!r} run_name={self.run_name!r}>"

    @property
    def uploader(self) -> Uploader:
        """The underlying :class:`Uploader`."""
        return self._uploader

    def object_name_for(self, artifact_name: str) -> str:
        """The object name ``artifact_name`` is stored under."""
        if not isinstance(artifact_name, str):
            raise ConfigError(f"artifact_name must be a str, got {artifact_name!r}")
        return self._template.format(artifact_name, self.run_name)

    def get_uri_for_artifact(self, artifact_name: str) -> str:
        """The URI the artifact is (or will be) uploaded to, e.g. ``s3://bucket/rank_0/a.pt``."""
        return self._uploader.uri(self.object_name_for(artifact_name))

    def _should_log(self, state: Any, log_level: LogLevel, artifact_name: str) -> bool:
        if self.should_log_artifact is None:
            return True
        return bool(self.should_log_artifact(state, log_level, artifact_name))

    def _raise_earlier_failures(self) -> None:
        # A failed upload is reported at the next call rather than waiting for flush().
        failures: list[FailedUpload] = self._uploader._take_failures()
        if failures:
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
        return self._uploader._submit_bytes(
            target.encode("utf-8"), name, overwrite=overwrite, after=target_future
        )

    def flush(self, timeout: float | None = None) -> None:
        """Wait for every upload so far; raise :class:`UploadFailedError` for any that failed."""
        self._uploader.flush(timeout)

    def close(self, timeout: float | None = None, *_composer_args: Any) -> None:
        """Flush and shut down the background thread (or process). Idempotent.

        Composer's engine calls ``close(state, logger)`` as an event hook and then
        :meth:`post_close`; a call with a trainer state instead of a timeout is that hook and
        does nothing, so the drain happens once, in ``post_close``.
        """
        if timeout is not None and not isinstance(timeout, int | float):
            return
        self._latest.clear()
        self._uploader.close(timeout)

    # -- Composer's LoggerDestination interface ---------------------------------------------
    # Composer drives its logger destinations by duck typing: the engine calls run_event() for
    # every event and close()/post_close() at the end; its Logger calls log_*/upload_file on
    # each destination. These let `Trainer(loggers=[ObjectStoreLogger(...)])` work without this
    # library depending on Composer.

    def run_event(self, event: Any, state: Any, logger: Any = None) -> None:
        """Composer's event hook.

        On ``init`` it takes ``state.run_name`` for ``{run_name}`` (unless ``run_name`` was given
        to the constructor); on ``batch_end`` and ``epoch_end`` it raises an earlier upload's
        failure, as Composer's own logger does. Other events are ignored.

        Raises:
            UploadFailedError: An earlier upload failed (reported once).
        """
        del logger  # unused
        name = getattr(event, "value", event)
        if name == "init":
            run_name = getattr(state, "run_name", None)
            if isinstance(run_name, str) and run_name and not self._explicit_run_name:
                self.run_name = run_name
        elif name in ("batch_end", "epoch_end"):
            self._raise_earlier_failures()

    def post_close(self) -> None:
        """Composer's final hook: drain and shut down, raising any failed upload."""
        self.close()

    def log_file_artifact(
        self,
        state: Any,
        log_level: LogLevel,
        artifact_name: str,
        file_path: str | os.PathLike[str],
        *,
        overwrite: bool = False,
    ) -> None:
        """Composer's name for :meth:`file_artifact` (state first)."""
        self.file_artifact(log_level, artifact_name, file_path, overwrite=overwrite, state=state)

    def log_symlink_artifact(
        self,
        state: Any,
        log_level: LogLevel,
        existing_artifact_name: str,
        symlink_artifact_name: str,
        *,
        overwrite: bool = False,
    ) -> None:
        """Composer's name for :meth:`symlink_artifact` (state first)."""
        self.symlink_artifact(
            log_level,
            existing_artifact_name,
            symlink_artifact_name,
            overwrite=overwrite,
            state=state,
        )

    def upload_file(
        self,
        state: Any,
        remote_file_name: str,
        file_path: str | os.PathLike[str],
        *,
        overwrite: bool = False,
    ) -> None:
        """Newer Composer releases' name for uploading a file (no log level)."""
        self.file_artifact(
            LogLevel.FIT, remote_file_name, file_path, overwrite=overwrite, state=state
        )

    def can_log_file_artifacts(self) -> bool:
        """Composer asks whether this destination stores files: it does."""
        return True

    def can_upload_files(self) -> bool:
        """Newer Composer releases' name for :meth:`can_log_file_artifacts`."""
        return True

    def log_hyperparameters(self, hyperparameters: Mapping[str, Any]) -> None:
        """Accepted and ignored: this destination stores files, not metrics."""

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Accepted and ignored: this destination stores files, not metrics."""

    def log_traces(self, traces: Mapping[str, Any]) -> None:
        """Accepted and ignored: this destination stores files, not traces."""

    def __enter__(self) -> ObjectStoreLogger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
