"""The parts of ObjectStoreLogger that only speak Composer's language, over its public calls.

:class:`ComposerNames` is a base of :class:`~._logger.ObjectStoreLogger`: reading back
(``download_file``), the checkpointed state, and the LoggerDestination hooks that forward to the
logger's own calls (``log_file_artifact`` -> ``file_artifact``...) or accept and ignore what a
file store does not keep (metrics, tables, images). Where Composer is imported, the logger's
class also derives from Composer's ``LoggerDestination`` (see ``__new__``), below this one, so
Composer runs it as a logger destination, these win over Composer's defaults, and any hook not
defined here or by the logger is inherited from Composer rather than guessed. Without Composer
the same methods let the logger be driven by duck typing.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Mapping
from enum import IntEnum
from typing import TYPE_CHECKING, Any, Self, TypeVar

from ._errors import ConfigError, ObjectNotFoundError

if TYPE_CHECKING:
    from ._sync import Uploader

SYMLINK_SUFFIX = ".symlink"
_Logger = TypeVar("_Logger", bound="ComposerNames")


class LogLevel(IntEnum):
    """How often an artifact is logged, as in Composer."""

    FIT = 1
    EPOCH = 2
    BATCH = 3


class ComposerNames:
    """Composer's reading-back, checkpoint-state and LoggerDestination names (see the module)."""

    if TYPE_CHECKING:
        # What the logger provides (all public).
        run_name: str

        @property
        def uploader(self) -> Uploader: ...

        @property
        def object_name_template(self) -> str: ...

        def object_name_for(self, artifact_name: str) -> str: ...

        # (signatures in ObjectStoreLogger; these forward their arguments unchanged)
        file_artifact: Callable[..., Any]
        symlink_artifact: Callable[..., Any]

        def run_event(self, event: Any, state: Any, logger: Any = None) -> None: ...

        def close(self, timeout: Any = None, logger: Any = None, *, state: Any = None) -> None: ...

    def __new__(cls, *args: Any, **kwargs: Any) -> Self:
        del args, kwargs  # __init__ takes them
        return super().__new__(_with_composer_base(cls))

    def get_uri_for_artifact(self, artifact_name: str) -> str:
        """The URI the artifact is (or will be) uploaded to, e.g. ``s3://bucket/rank_0/a.pt``."""
        return self.uploader.uri(self.object_name_for(artifact_name))

    # -- Reading back --------------------------------------------------------------------------

    def download_file(
        self,
        remote_file_name: str,
        destination: str | os.PathLike[str],
        overwrite: bool = False,
        progress_bar: bool = True,
    ) -> None:
        """Download what was logged as ``remote_file_name`` to ``destination`` (Composer's API).

        ``remote_file_name`` is the name the file was logged under; it goes through the
        ``object_name`` template as on upload, so what was uploaded as ``X`` downloads as ``X``.
        When no object has that name, the name is also tried as a stored object name as it is
        (the text of a ``.symlink`` object is one). A missing object whose ``.symlink`` exists
        is followed to its target; asking for a ``.symlink`` name itself returns the symlink's
        text, as Composer's ``get_file`` expects. The write is atomic and verified against the
        checksum the store recorded (see :meth:`Uploader.download`).

        Args:
            remote_file_name: The logged name (Composer's remote file name).
            destination: Local file path to write.
            overwrite: Replace an existing ``destination``; False raises instead.
            progress_bar: Accepted for Composer's signature; progress is reported through the
                uploader's events, not a bar.

        Raises:
            ObjectNotFoundError: No such object (a ``FileNotFoundError``, which Composer's
                autoresume treats as "no checkpoint here").
            FileExistsError: ``destination`` exists and ``overwrite`` is False.
            IntegrityError: The bytes read do not match the stored checksum; nothing is left at
                ``destination``.
        """
        del progress_bar  # progress goes through the uploader's events
        name = self.object_name_for(remote_file_name)
        follow = not remote_file_name.endswith(SYMLINK_SUFFIX)
        try:
            self.uploader.download(name, destination, overwrite=overwrite, follow_symlinks=follow)
        except ObjectNotFoundError:
            literal = remote_file_name.lstrip("/")
            if literal == name or not literal:
                raise
            self.uploader.download(
                literal, destination, overwrite=overwrite, follow_symlinks=follow
            )

    def get_file_artifact(
        self,
        artifact_name: str,
        destination: str | os.PathLike[str],
        overwrite: bool = False,
        progress_bar: bool = True,
    ) -> None:
        """The seed-era name for :meth:`download_file`."""
        self.download_file(artifact_name, destination, overwrite, progress_bar)

    # -- Composer's checkpointed state -----------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """What Composer stores for this logger in each checkpoint.

        The logger holds no training state; uploads in flight are not part of a checkpoint
        (a persistent ``upload_staging_folder`` with ``resume=True`` finishes them). The run
        name and the object name template are recorded for the reader's information.
        """
        return {"run_name": self.run_name, "object_name": self.object_name_template}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Accept what :meth:`state_dict` stored (Composer calls this when it loads a checkpoint).

        Nothing is restored: where new uploads go is decided by this logger's own arguments.

        Raises:
            ConfigError: ``state`` is not a mapping (a checkpoint from something else).
        """
        if not isinstance(state, Mapping):
            raise ConfigError(
                f"ObjectStoreLogger state must be a mapping, got {type(state).__name__}"
            )

    # -- Composer's names for the logger's calls ----------------------------------------------

    def fit_end(self, state: Any, logger: Any = None) -> None:
        """Composer's ``fit_end`` hook: wait for every upload and raise any failure."""
        self.run_event("fit_end", state, logger)

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

    def log_table(
        self,
        columns: list[str],
        rows: list[list[Any]],
        name: str = "Table",
        step: int | None = None,
    ) -> None:
        """Accepted and ignored (Composer's ``Generate`` callback logs tables everywhere)."""

    def log_images(
        self,
        images: Any,
        name: str = "Images",
        channels_last: bool = False,
        step: int | None = None,
        masks: Mapping[str, Any] | None = None,
        mask_class_labels: Mapping[int, str] | None = None,
        use_table: bool = True,
    ) -> None:
        """Accepted and ignored (Composer's ``ImageVisualizer`` logs images everywhere)."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


_composer_classes: dict[tuple[type[Any], type[Any]], type[Any]] = {}
_composer_lock = threading.Lock()


def _with_composer_base(cls: type[_Logger]) -> type[_Logger]:
    """``cls`` with Composer's ``LoggerDestination`` as a base, where Composer is imported.

    Composer is never imported here: it is heavy, and a program that does not use it should
    not pay for it. A trainer script imports Composer before building its loggers, so the
    check at construction finds it. The subclass keeps ``cls``'s name and qualified name,
    under which Composer files the logger's ``state_dict`` in checkpoints.
    """
    module = sys.modules.get("composer.loggers.logger_destination")
    base = getattr(module, "LoggerDestination", None)
    if not isinstance(base, type) or issubclass(cls, base):
        return cls
    key = (cls, base)
    with _composer_lock:
        combined = _composer_classes.get(key)
        if combined is None:
            combined = type(
                cls.__name__,
                (cls, base),
                {"__qualname__": cls.__qualname__, "__module__": cls.__module__},
            )
            _composer_classes[key] = combined
    return combined
