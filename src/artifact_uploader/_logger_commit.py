"""``ObjectStoreLogger(commit_checkpoints=...)``: Composer checkpoints published as commits.

Composer uploads a checkpoint through the logger file by file (one ``.pt`` file, or a sharded
folder's ``.metadata`` and shard files), then its ``latest`` ``.symlink``. With
``commit_checkpoints`` naming the folder Composer's checkpoints are uploaded under (its
``remote_file_name``'s folder, e.g. ``"{run_name}/checkpoints"``), each file under it goes to a
fresh location ``<folder>/step-<batch>/<save-id>/<path>`` instead of its plain name, and the
checkpoint is committed (the commit protocol of :mod:`artifact_uploader._commit`, kind
``"files"``) when its ``.symlink`` arrives, when a file of another step arrives, or at the
latest when the logger flushes. The ``.symlink`` object is written only after the commit and
names the file (or folder) inside the committed location, so Composer's autoresume, which
follows it, and :func:`~artifact_uploader.latest_checkpoint` /
:func:`~artifact_uploader.download_checkpoint` on the folder's URI see whole checkpoints only.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from ._commit import CommittedCheckpoint, Store
from ._config import RetryPolicy
from ._errors import ConfigError
from ._publish import CheckpointPublisher, PendingSave, own_failures
from ._registry import provider_from_seed
from ._sync import Uploader, submit_bytes

log = logging.getLogger("artifact_uploader")

SYMLINK_SUFFIX = ".symlink"
_OWNER = "ObjectStoreLogger"


class _Logger(Protocol):
    """What this module needs of the logger (its public surface)."""

    run_name: str

    @property
    def uploader(self) -> Uploader: ...

    def object_name_for(self, artifact_name: str) -> str: ...


class ComposerCommits:
    """The logger's checkpoint commits.

    Args:
        folder: The artifact-name folder Composer uploads checkpoints under; ``{run_name}``
            is filled in when first used.
        seed: The logger's ``(provider, container, provider_kwargs)``, to read the store back.
        retry: The retry policy for the commit's requests.

    Raises:
        ConfigError: ``folder`` is empty, absolute or has a field other than ``{run_name}``.
    """

    def __init__(
        self,
        folder: str,
        seed: tuple[str, str, Mapping[str, Any] | None],
        retry: RetryPolicy | None,
    ) -> None:
        if not isinstance(folder, str) or not folder.strip("/") or folder.startswith("/"):
            raise ConfigError(
                f"commit_checkpoints must name a relative folder, e.g. "
                f"'{{run_name}}/checkpoints', got {folder!r}"
            )
        try:
            folder.format(run_name="x")
        except (KeyError, IndexError, ValueError) as exc:
            raise ConfigError(
                f"commit_checkpoints {folder!r} may use only the field {{run_name}} ({exc})"
            ) from None
        self._folder = folder.strip("/")
        self._seed = seed
        self._retry = retry
        self._publisher: CheckpointPublisher | None = None
        self._pending: PendingSave | None = None
        self._pending_names: list[str] = []

    def __repr__(self) -> str:
        return f"<ComposerCommits {self._folder!r}>"

    def folder(self, logger: _Logger) -> str:
        """The artifact-name folder, ``{run_name}`` filled in."""
        return self._folder.format(run_name=logger.run_name)

    def root_uri(self, logger: _Logger) -> str:
        """The checkpoint root's URI (for ``latest_checkpoint`` / ``download_checkpoint``)."""
        return logger.uploader.uri(logger.object_name_for(self.folder(logger)))

    def upload_file(
        self, logger: _Logger, state: Any, artifact: str, path: str | os.PathLike[str]
    ) -> bool:
        """Take ``artifact`` if it belongs to a checkpoint; False leaves it to the logger.

        Raises:
            ConfigError: The file cannot be part of a checkpoint (its name), or no step is known.
            SourceFileError, StagingError: As for :meth:`Uploader.submit`.
        """
        prefix = self.folder(logger) + "/"
        if not artifact.startswith(prefix):
            return False
        rel = artifact[len(prefix) :]
        if artifact.endswith(SYMLINK_SUFFIX):
            return self._symlink(logger, rel, path)
        step = _batch(state)
        if self._pending is not None and self._pending.step != step:
            self._commit_pending()  # a new checkpoint began: the previous one is complete
        if self._pending is None:
            self._pending = self._publisher_for(logger).start(logger.uploader, step)
            self._pending_names = []
        self._pending.add(rel, Path(path))
        self._pending_names.append(rel)
        return True

    def _symlink(self, logger: _Logger, rel: str, path: str | os.PathLike[str]) -> bool:
        """Composer's ``latest`` symlink: commit its checkpoint, then write it pointing there."""
        target = _read_text(path)
        prefix = self.folder(logger) + "/"
        save, names = self._pending, self._pending_names
        if target is None or not target.startswith(prefix) or save is None:
            return False
        inner = target[len(prefix) :]
        if not any(n == inner or n.startswith(inner + "/") for n in names):
            return False  # names something this checkpoint does not hold: a plain upload
        stored_target = logger.object_name_for(
            self.folder(logger) + "/" + save.location + "/" + inner
        )
        name = logger.object_name_for(self.folder(logger) + "/" + rel)
        uploader = logger.uploader

        def write(_: CommittedCheckpoint) -> None:
            # On the commit thread, once the checkpoint is committed: only then does `latest`
            # move. Its failure is the uploader's, reported by the logger's next flush.
            submit_bytes(uploader, stored_target.encode(), name, overwrite=True)

        self._commit_pending(then=write)
        return True

    def _commit_pending(self, then: Callable[[CommittedCheckpoint], object] | None = None) -> None:
        save, self._pending = self._pending, None
        assert save is not None
        save.commit(then)

    def _publisher_for(self, logger: _Logger) -> CheckpointPublisher:
        if self._publisher is None:
            provider, container, kwargs = self._seed
            stored_root = logger.object_name_for(self.folder(logger))
            where = f"{container.rstrip('/')}/{stored_root}"
            factory: Callable[[], Any] = lambda: provider_from_seed(provider, where, kwargs)  # noqa: E731
            store = Store(logger.uploader.uri(stored_root), retry=self._retry, factory=factory)
            self._publisher = CheckpointPublisher(store, name_prefix=stored_root, owner=_OWNER)
        return self._publisher

    def flush(self) -> list[BaseException]:
        """Commit what is pending and wait for every commit; return the failures that are
        the commit's own (a file that did not upload is the uploader's failure to report)."""
        if self._pending is not None:
            self._commit_pending()
        return [] if self._publisher is None else own_failures(self._publisher.wait())

    def close(self) -> list[BaseException]:
        """As :meth:`flush`, then stop the commit thread."""
        if self._pending is not None:
            self._commit_pending()
        return [] if self._publisher is None else own_failures(self._publisher.close())


def _batch(state: Any) -> int:
    batch = getattr(getattr(state, "timestamp", None), "batch", None)
    value = getattr(batch, "value", batch)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(
            "commit_checkpoints needs Composer's state (its timestamp's batch names the step); "
            f"got {type(state).__name__}"
        )
    return value


def _read_text(path: str | os.PathLike[str]) -> str | None:
    try:
        with open(path, "rb") as f:
            data = f.read(64 * 1024 + 1)
        return data.decode("utf-8").strip() or None if len(data) <= 64 * 1024 else None
    except (OSError, UnicodeDecodeError):
        return None
