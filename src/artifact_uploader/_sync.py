"""Uploader: the sync facade. Stages in the caller's thread, uploads on its own loop thread."""

from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import logging
import os
import threading
import warnings
import weakref
from collections.abc import Mapping
from typing import Any

from anyio.from_thread import BlockingPortal, start_blocking_portal

from ._config import PartPolicy, RetryPolicy
from ._errors import ConfigError, UploaderClosedError, UploadError
from ._events import EventCallback, ProgressTotals
from ._types import UploadResult
from ._uploader import AsyncUploader, ResumeReport, _Prepared
from .providers._protocol import Provider

log = logging.getLogger("artifact_uploader")


class Uploader:
    """The synchronous twin of :class:`AsyncUploader`, for training loops.

    ``submit`` blocks only while the file is staged, then returns a
    :class:`concurrent.futures.Future`; the upload runs on an event loop in one background thread
    that this object owns (anyio's blocking portal). Use it as a context manager, or call
    :meth:`close`. An uploader left open at interpreter exit is flushed then, with a warning.

    Args:
        store: A URI (``file:///abs/dir``, ``s3://bucket/prefix``, ...) or a provider instance.
        max_concurrency: Most requests in flight at once. Default 4.
        staging_dir: Persistent, journalled staging folder (resumable). Default: a temp folder.
        provider_kwargs: Options for the provider built from ``store``.
        staging: "copy" (default), "reflink", "link", "move" or "auto".
        max_staged_bytes: Bound on staged bytes; ``submit`` waits when full. Default None.
        retry: Retry policy for transient errors.
        parts: Multipart policy.
        verify: Check the store is reachable at construction. Default True.
        on_event: Progress callback; runs on the loop thread (or the submitting thread for
            "queued" / "staged"), so keep it short.
        use_procs: Run the uploads in a child process. Not available yet: raises ConfigError.

    Raises:
        ConfigError: Invalid option, URI or provider; MissingDependencyError for a missing extra.
        StagingError: The staging folder is not usable.
        StoreNotFoundError, PermissionDeniedError: The store is unreachable (when ``verify``).
    """

    def __init__(
        self,
        store: str | Provider,
        *,
        max_concurrency: int = 4,
        staging_dir: str | os.PathLike[str] | None = None,
        provider_kwargs: Mapping[str, Any] | None = None,
        staging: str = "copy",
        max_staged_bytes: int | None = None,
        retry: RetryPolicy | None = None,
        parts: PartPolicy | None = None,
        verify: bool = True,
        on_event: EventCallback | None = None,
        use_procs: bool = False,
    ) -> None:
        if use_procs:
            raise ConfigError(
                "use_procs=True (uploads in a child process) is not implemented yet; "
                "use use_procs=False (a background thread)"
            )
        self._engine = AsyncUploader(
            store,
            max_concurrency=max_concurrency,
            staging_dir=staging_dir,
            provider_kwargs=provider_kwargs,
            staging=staging,
            max_staged_bytes=max_staged_bytes,
            retry=retry,
            parts=parts,
            verify=verify,
            on_event=on_event,
        )
        self._pid = os.getpid()
        self._closed = False
        self._close_lock = threading.Lock()
        self._portal_cm = start_blocking_portal("asyncio", name="artifact-uploader")
        self._portal: BlockingPortal = self._portal_cm.__enter__()
        try:
            self._loop_thread = self._portal.call(threading.get_ident)
            self._portal.call(self._engine.open)
        except BaseException:
            self._closed = True
            self._portal_cm.__exit__(None, None, None)
            raise
        # A weak reference: the hook must not keep an abandoned uploader alive.
        ref = weakref.ref(self)

        def at_exit() -> None:
            uploader = ref()
            if uploader is not None and not uploader._closed and os.getpid() == uploader._pid:
                warnings.warn(
                    f"{uploader!r} was not closed; flushing it at interpreter exit",
                    ResourceWarning,
                    stacklevel=1,
                )
                try:
                    uploader.close()
                except UploadError as exc:
                    log.error("uploads lost at exit: %s", exc)

        self._at_exit = at_exit
        atexit.register(at_exit)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<Uploader {self._engine.provider!r} {state}>"

    def __enter__(self) -> Uploader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def provider(self) -> Provider:
        """The provider in use."""
        return self._engine.provider

    @property
    def staging_folder(self) -> str:
        """The staging folder in use."""
        return str(self._engine.staging_folder)

    @property
    def totals(self) -> ProgressTotals:
        """Running totals: files and bytes queued, sent, failed, in flight."""
        return self._engine.totals

    def uri(self, name: str) -> str:
        """The URI object ``name`` has (or will have) in the store."""
        return self._engine.provider.uri(name)

    def _check_usable(self, what: str) -> None:
        if os.getpid() != self._pid:
            raise UploaderClosedError(
                f"this Uploader belongs to process {self._pid}, not this forked child "
                f"({os.getpid()}); create a new Uploader in the child"
            )
        if self._closed:
            raise UploaderClosedError(f"the uploader is closed; cannot {what}")
        if threading.get_ident() == self._loop_thread:
            raise RuntimeError(
                f"Uploader.{what.split()[0]}() was called from the uploader's own loop thread "
                "(e.g. a future callback); it would deadlock. Call it from another thread."
            )

    def submit(
        self,
        path: str | os.PathLike[str],
        name: str,
        *,
        overwrite: bool = True,
        timeout: float | None = None,
        staging: str | None = None,
    ) -> concurrent.futures.Future[UploadResult]:
        """Stage ``path`` (blocking) and upload it as ``name`` in the background.

        Args:
            path: Local file to upload.
            name: Object name, relative to the store's prefix.
            overwrite: Replace an existing object; False fails with ObjectExistsError if it exists.
            timeout: Seconds to wait for staging space when ``max_staged_bytes`` is full.
            staging: Override the staging mode for this file.

        Returns:
            A future resolving to the :class:`UploadResult` once the object is durable.

        Raises:
            SourceFileError: ``path`` is missing, a directory or unreadable.
            InvalidObjectNameError: The store cannot hold ``name``.
            StagingError: Staging failed; nothing half-staged remains.
            StagingTimeoutError: The staging budget stayed full past ``timeout``.
            UploaderClosedError: The uploader is closed.
        """
        self._check_usable(f"submit {name!r}")
        prepared = self._engine._prepare(path, name, overwrite, timeout, staging)
        return self._hand_off(prepared)

    def _submit_bytes(
        self,
        data: bytes,
        name: str,
        *,
        overwrite: bool,
        after: concurrent.futures.Future[Any] | None = None,
    ) -> concurrent.futures.Future[UploadResult]:
        self._check_usable(f"submit {name!r}")
        return self._hand_off(self._engine._prepare_bytes(data, name, overwrite), after)

    def _hand_off(
        self, prepared: _Prepared, after: concurrent.futures.Future[Any] | None = None
    ) -> concurrent.futures.Future[UploadResult]:
        future: concurrent.futures.Future[UploadResult] = concurrent.futures.Future()
        try:
            self._portal.call(self._engine._enqueue_threadsafe, prepared, future, after)
        except BaseException:
            # Closed between staging and hand-off: the staged copy must not leak.
            self._engine._stager.release(prepared.staged)
            raise
        return future

    def upload(
        self, path: str | os.PathLike[str], name: str, *, overwrite: bool = True
    ) -> UploadResult:
        """Upload ``path`` as ``name`` and return once it is durable."""
        return self.submit(path, name, overwrite=overwrite).result()

    def flush(self, timeout: float | None = None) -> None:
        """Wait for every upload submitted so far.

        Raises:
            UploadFailedError: Every upload that failed since the last flush, each reported once.
            TimeoutError: ``timeout`` expired first.
        """
        self._check_usable("flush")
        self._portal.call(self._engine.flush, timeout)

    def close(self, timeout: float | None = None) -> None:
        """Drain (up to ``timeout`` seconds), stop the loop and join its thread. Idempotent.

        Raises:
            UploadFailedError: Every upload that failed or did not finish in time, each with its
                kept staged copy (resumable with a persistent staging folder).
        """
        if os.getpid() != self._pid:
            # A forked child must not touch the parent's loop thread (it does not exist here).
            self._closed = True
            return
        with self._close_lock:
            if self._closed:
                return
            if threading.get_ident() == self._loop_thread:
                raise RuntimeError(
                    "Uploader.close() was called from the uploader's own loop thread; "
                    "it would deadlock. Call it from another thread."
                )
            self._closed = True
            atexit.unregister(self._at_exit)
            try:
                self._portal.call(self._engine.aclose, timeout)
            finally:
                with contextlib.suppress(Exception):
                    self._portal_cm.__exit__(None, None, None)

    def resume_pending(self) -> ResumeReport:
        """Upload what a previous run left pending in this uploader's staging folder."""
        self._check_usable("resume")
        return self._portal.call(self._engine.resume)

    @classmethod
    def resume(
        cls,
        staging_folder: str | os.PathLike[str],
        store: str | Provider,
        provider_kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> ResumeReport:
        """Finish what a crashed run left in ``staging_folder``, then close.

        Aborts the orphaned multipart uploads the journal names, uploads every pending staged
        file, and removes completed entries from the journal. Corrupt journal lines are reported
        in the result and skipped.

        Args:
            staging_folder: The persistent staging folder of the crashed run.
            store: Where the crashed run was uploading (URI or provider).
            provider_kwargs: Provider options, as for the constructor.
            **options: Other constructor options (max_concurrency, retry...).

        Raises:
            UploadFailedError: Some entries could not be uploaded (they stay journalled).
        """
        with cls(
            store, staging_dir=staging_folder, provider_kwargs=provider_kwargs, **options
        ) as up:
            return up.resume_pending()
