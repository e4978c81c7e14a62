"""What the trainer integrations share: one lazily opened Uploader, name templates, failure policy.

The Hugging Face callback (:mod:`._hf`) and the Lightning callback (:mod:`._lightning`) differ
only in the hooks they listen to and in how they find the files a trainer wrote. Everything else
lives here so the two behave alike: the store is checked at construction, the :class:`Uploader`
is opened on the main process only, every checkpoint file is staged (copied) before the hook
returns, and failures are logged as they happen and raised (or logged) when training ends.
"""

from __future__ import annotations

import concurrent.futures
import fnmatch
import inspect
import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from ._commit import Store
from ._config import RetryPolicy
from ._errors import ConfigError, UploadFailedError
from ._publish import CheckpointPublisher, own_failures
from ._registry import make_provider
from ._sync import Uploader, submit_bytes
from ._types import UploadResult
from .providers._protocol import Provider

log = logging.getLogger("artifact_uploader")

# Uploader options a caller may pass through ``uploader_options``.
_UPLOADER_OPTIONS = frozenset(inspect.signature(Uploader.__init__).parameters) - {
    "self",
    "store",
    "provider_kwargs",
}


def check_commit_template(owner: str, object_name: str, commit: bool) -> None:
    """With ``commit``, names come from the commit protocol: refuse a custom template.

    Raises:
        ConfigError: ``commit`` and an ``object_name`` other than ``"{path}"``.
    """
    if commit is True and object_name != "{path}":
        raise ConfigError(
            f"{owner}: object_name {object_name!r} does not apply with commit=True: each "
            "checkpoint goes to <store>/step-<N>/<save-id>/; put a prefix in the store URI"
        )


def render(template: str, **values: object) -> str:
    """Fill ``template``; leading slashes are stripped (names are relative to the store)."""
    return template.format(**values).lstrip("/")


def check_patterns(patterns: object, option: str) -> tuple[str, ...] | None:
    """Validate a sequence of glob patterns (None stays None).

    Raises:
        ConfigError: A bare str (a common slip for a one-element list) or a non-str item.
    """
    if patterns is None:
        return None
    if isinstance(patterns, str) or not isinstance(patterns, Sequence):
        raise ConfigError(f"{option} must be a list of glob patterns, got {patterns!r}")
    for pattern in patterns:
        if not isinstance(pattern, str) or not pattern:
            raise ConfigError(f"{option} must hold non-empty str patterns, got {pattern!r}")
    return tuple(patterns)


def selected_files(
    folder: Path, include: tuple[str, ...] | None, exclude: tuple[str, ...]
) -> Iterator[Path]:
    """Regular files under ``folder`` (recursively, sorted) whose relative POSIX path matches
    one of ``include`` (everything when None) and none of ``exclude``."""
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for filename in sorted(filenames):
            path = Path(dirpath, filename)
            rel = path.relative_to(folder).as_posix()
            if include is not None and not any(fnmatch.fnmatchcase(rel, p) for p in include):
                continue
            if any(fnmatch.fnmatchcase(rel, p) for p in exclude):
                continue
            if path.is_file():
                yield path


class CheckpointSink:
    """One integration's connection to the store.

    Args:
        store: A URI, a provider (single use: it is closed with the uploader) or an
            :class:`Uploader` that the caller owns (flushed, never closed, at the end).
        owner: The integration's class name, for messages.
        provider_kwargs: Provider options when ``store`` is a URI.
        uploader_options: :class:`Uploader` options when ``store`` is a URI or a provider.
        overwrite: Passed to every ``submit``.
        wait_on_save: Block after each checkpoint until it is uploaded (and committed).
        raise_on_failure: Raise failures at the end (else log them).
        commit: Publish each checkpoint through the commit protocol (:meth:`publish`):
            ``store`` must be a URI, the checkpoint root.
        keep_last: With ``commit``, keep only this many newest committed checkpoints.

    Raises:
        ConfigError: Bad URI, option, or an option that makes no sense with an Uploader given.
        MissingDependencyError: The store's extra is not installed.
    """

    def __init__(
        self,
        store: str | Provider | Uploader,
        *,
        owner: str,
        provider_kwargs: Mapping[str, Any] | None,
        uploader_options: Mapping[str, Any] | None,
        overwrite: bool,
        wait_on_save: bool,
        raise_on_failure: bool,
        commit: bool = False,
        keep_last: int | None = None,
    ) -> None:
        self.owner = owner
        for option, value in (
            ("overwrite", overwrite),
            ("wait_on_save", wait_on_save),
            ("raise_on_failure", raise_on_failure),
            ("commit", commit),
        ):
            if not isinstance(value, bool):
                raise ConfigError(f"{owner}: {option} must be a bool, got {value!r}")
        self.overwrite = overwrite
        self.wait_on_save = wait_on_save
        self.raise_on_failure = raise_on_failure
        options = dict(uploader_options or {})
        unknown = sorted(set(options) - _UPLOADER_OPTIONS)
        if unknown:
            raise ConfigError(
                f"{owner}: unknown uploader_options {unknown}; "
                f"known: {', '.join(sorted(_UPLOADER_OPTIONS))}"
            )
        if options.get("staging") == "move":
            # The trainer still needs its checkpoint folder (to resume, to rotate, to load the
            # best model): moving the files out from under it would break it.
            raise ConfigError(
                f"{owner}: staging='move' would take the checkpoint files away from the trainer; "
                "use 'copy' (default), 'reflink' or 'link'"
            )
        self._options = options
        self._uri: str | None = None
        self._provider_kwargs = dict(provider_kwargs or {})
        self._given: Uploader | None = None
        self._fresh_provider: Provider | None = None
        if isinstance(store, Uploader):
            if provider_kwargs or uploader_options:
                raise ConfigError(
                    f"{owner}: provider_kwargs and uploader_options only apply when the store "
                    "is a URI or a provider, not an existing Uploader"
                )
            self._given = store
        elif isinstance(store, str):
            # Built now so a malformed URI, unknown option or missing extra fails here, not at
            # the first checkpoint hours into training. Nothing connects until open().
            self._fresh_provider = make_provider(store, self._provider_kwargs)
            self._uri = store
        else:
            self._fresh_provider = make_provider(store)
        self._uploader: Uploader | None = self._given
        self.publisher: CheckpointPublisher | None = None
        if commit:
            if self._uri is None:
                raise ConfigError(
                    f"{owner}: commit=True needs the store as a URI (the checkpoint root), "
                    f"not a {type(store).__name__}"
                )
            retry = options.get("retry")
            self.publisher = CheckpointPublisher(
                Store(
                    self._uri,
                    self._provider_kwargs,
                    retry if isinstance(retry, RetryPolicy) else None,
                ),
                keep_last=keep_last,
                owner=owner,
            )
        elif keep_last is not None:
            raise ConfigError(f"{owner}: keep_last applies only with commit=True")

    @property
    def uploader(self) -> Uploader | None:
        """The uploader in use, or None before the first use on the main process."""
        return self._uploader

    def open(self) -> Uploader:
        """Return the uploader, creating (and, by default, verifying the store) on first use.

        Raises:
            ConfigError: A provider instance was given and is already used up.
            StoreNotFoundError, PermissionDeniedError: The store is unreachable.
        """
        if self._uploader is not None:
            return self._uploader
        if self._fresh_provider is not None:
            # The provider built (and checked) at construction; provider_kwargs are in it.
            provider, self._fresh_provider = self._fresh_provider, None
            self._uploader = Uploader(provider, **self._options)
        elif self._uri is not None:
            # A later training run with the same callback: a new provider from the URI.
            self._uploader = Uploader(
                self._uri, provider_kwargs=self._provider_kwargs, **self._options
            )
        else:
            raise ConfigError(
                f"{self.owner}: the provider instance it was given was closed at the end of the "
                "previous training run; pass a store URI or an Uploader to train again"
            )
        return self._uploader

    def submit(self, path: Path, name: str) -> concurrent.futures.Future[UploadResult]:
        """Stage ``path`` (blocking) and upload it as ``name`` in the background."""
        future = self.open().submit(path, name, overwrite=self.overwrite)
        future.add_done_callback(self._log_failure(name))
        return future

    def publish(self, files: Sequence[tuple[str, Path]], step: int) -> None:
        """Stage ``files`` (name inside the checkpoint, local path) and commit them as one
        checkpoint of ``step`` in the background (needs ``commit=True``)."""
        assert self.publisher is not None
        self.publisher.publish(self.open(), files, step)

    def submit_bytes(self, data: bytes, name: str) -> concurrent.futures.Future[UploadResult]:
        """Upload generated content (e.g. the trainer's state) as ``name``."""
        future = submit_bytes(self.open(), data, name, overwrite=self.overwrite)
        future.add_done_callback(self._log_failure(name))
        return future

    def _log_failure(self, name: str) -> Callable[[concurrent.futures.Future[UploadResult]], None]:
        owner = self.owner

        def done(future: concurrent.futures.Future[UploadResult]) -> None:
            # Runs on the uploader's loop thread: only log. The failure itself is reported by
            # flush()/close() with its kept staged copy.
            exc = None if future.cancelled() else future.exception()
            if exc is not None:
                log.error("%s: upload of %r failed: %s", owner, name, exc)

        return done

    def after_save(self) -> None:
        """Called once a checkpoint's files are staged: wait for them (and their commit) if
        ``wait_on_save``."""
        if self.wait_on_save and self._uploader is not None:
            self._report(
                self._uploader.flush, None if self.publisher is None else self.publisher.wait
            )

    def finish(self) -> None:
        """Wait for every upload; close the uploader if this sink made it.

        Raises:
            UploadFailedError: Uploads failed (unless ``raise_on_failure`` is False: logged).
        """
        uploader = self._uploader
        if uploader is None:
            return
        commits = None if self.publisher is None else self.publisher.close
        if uploader is self._given:
            self._report(uploader.flush, commits)
            return
        self._uploader = None
        self._report(uploader.close, commits)

    def abort(self) -> None:
        """Training crashed: close an uploader this sink made, logging (never raising) failures."""
        uploader = self._uploader
        if uploader is None or uploader is self._given:
            return
        self._uploader = None
        try:
            uploader.close()
        except UploadFailedError as exc:
            log.error("%s: %s", self.owner, exc)
        finally:
            # Files that uploaded before the crash make whole checkpoints: commit those.
            for failure in self.publisher.close() if self.publisher is not None else ():
                log.error("%s: %s", self.owner, failure)

    def _report(
        self,
        call: Callable[[], None],
        commits: Callable[[], list[BaseException]] | None = None,
    ) -> None:
        """Run ``call`` (flush or close), then wait for ``commits``; raise or log failures.

        An upload failure comes first (it names the objects); a commit that failed only
        because of it is logged, not raised again.
        """
        try:
            call()
        except UploadFailedError as exc:
            if self.raise_on_failure:
                raise
            log.error("%s: %s", self.owner, exc)
        finally:
            failures = own_failures(commits()) if commits is not None else []
        for failure in failures:
            if self.raise_on_failure:
                raise failure
            log.error("%s: %s", self.owner, failure)
