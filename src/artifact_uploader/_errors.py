"""Every exception the library raises, under one root.

::

    UploadError
     ├── ConfigError (ValueError)             bad argument, template, URI, name or missing extra
     │    ├── InvalidObjectNameError          a name the store refuses (empty, NUL, `..`, too long)
     │    └── MissingDependencyError (ImportError)  the provider's extra is not installed
     ├── SourceFileError (OSError)            the file to upload is missing, a directory, unreadable
     ├── StagingError (OSError)               could not stage (unwritable folder, disk full)
     ├── StagingTimeoutError (TimeoutError)   the staging budget stayed full past the timeout
     ├── ProviderError                        a backend request failed (`transient`: retry may help)
     │    ├── ObjectExistsError (FileExistsError)   overwrite=False and the object exists
     │    ├── PermissionDeniedError (PermissionError) credentials refused
     │    ├── StoreNotFoundError               bucket / container / root does not exist
     │    ├── IntegrityError                   the store's checksum does not match ours
     │    └── StallTimeoutError (TimeoutError) a request made no progress for stall_timeout
     ├── UploadFailedError                    one or more uploads failed; lists each `FailedUpload`
     └── UploaderClosedError (RuntimeError)   used after close(), or in a forked child

Providers map backend errors onto this tree with ``raise ... from exc`` so callers never catch SDK
exceptions; a transient failure is a :class:`ProviderError` with ``transient=True``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


class UploadError(Exception):
    """Root of every exception raised by artifact_uploader."""


class ConfigError(UploadError, ValueError):
    """An argument, URI, template or option is invalid. Raised at the call that received it."""


class InvalidObjectNameError(ConfigError):
    """An object name the store cannot hold (empty, contains NUL, escapes the root, too long)."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"invalid object name {name!r}: {reason}")
        self.name = name
        self.reason = reason


class MissingDependencyError(ConfigError, ImportError):
    """The optional dependency a provider needs is not installed."""

    def __init__(self, provider: str, extra: str, cause: str = "") -> None:
        hint = f"pip install 'artifact-uploader[{extra}]'"
        msg = f"provider {provider!r} needs the {extra!r} extra: {hint}"
        if cause:
            msg += f" ({cause})"
        super().__init__(msg)
        self.provider = provider
        self.extra = extra


class SourceFileError(UploadError, OSError):
    """The local file handed to ``submit`` cannot be uploaded (missing, a directory, unreadable)."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"cannot upload {str(path)!r}: {reason}")
        self.path = str(path)
        self.reason = reason

    def __str__(self) -> str:
        return str(self.args[0])


class StagingError(UploadError, OSError):
    """The file could not be staged (staging folder unwritable or out of space).

    The source is untouched and no partial staged file remains.
    """

    def __init__(self, message: str, *, path: str | Path | None = None) -> None:
        super().__init__(message)
        self.path = None if path is None else str(path)

    def __str__(self) -> str:
        return str(self.args[0])


class StagingTimeoutError(UploadError, TimeoutError):
    """The staging byte budget stayed full for longer than the caller's timeout."""


class ProviderError(UploadError):
    """A request to the object store failed.

    Attributes:
        name: The object name involved, if any.
        uri: The object's URI, if any.
        transient: True when retrying the same request may succeed (throttling, 5xx, timeouts,
            connection resets). The engine retries only transient errors.
        retry_after: Seconds the server asked us to wait before retrying, if it said.
        status: The HTTP status, where there was one.
        attempts: How many attempts were made before giving up (set by the engine).
    """

    def __init__(
        self,
        message: str,
        *,
        name: str | None = None,
        uri: str | None = None,
        transient: bool = False,
        retry_after: float | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.name = name
        self.uri = uri
        self.transient = transient
        self.retry_after = retry_after
        self.status = status
        self.attempts = 1


class ObjectExistsError(ProviderError, FileExistsError):
    """``overwrite=False`` was asked and the object already exists."""

    def __str__(self) -> str:
        return str(self.args[0])


class PermissionDeniedError(ProviderError, PermissionError):
    """The store refused the credentials or the operation."""

    def __str__(self) -> str:
        return str(self.args[0])


class StoreNotFoundError(ProviderError):
    """The bucket, container or root folder does not exist."""


class ObjectNotFoundError(ProviderError, FileNotFoundError):
    """The object asked for (download, head) does not exist in the store."""

    def __str__(self) -> str:
        return str(self.args[0])


class IntegrityError(ProviderError):
    """The checksum the store reports differs from the one computed locally."""


class StallTimeoutError(ProviderError, TimeoutError):
    """A request made no progress for ``RetryPolicy.stall_timeout`` seconds and was aborted.

    Always transient: the engine retries it like any other transient failure.

    Attributes:
        seconds: The stall timeout that expired.
    """

    def __init__(
        self, message: str, *, seconds: float, name: str | None = None, uri: str | None = None
    ) -> None:
        super().__init__(message, name=name, uri=uri, transient=True)
        self.seconds = seconds

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True, slots=True)
class FailedUpload:
    """One upload that did not complete.

    Attributes:
        name: The object name.
        staged_path: Where the staged copy is kept (None if it was never staged or is gone).
        cause: The exception that ended it.
    """

    name: str
    staged_path: str | None
    cause: BaseException

    def describe(self) -> str:
        kept = f" (staged copy kept at {self.staged_path})" if self.staged_path else ""
        return f"{self.name}: {type(self.cause).__name__}: {self.cause}{kept}"


class UploadFailedError(UploadError):
    """One or more uploads failed. ``failures`` lists each with its kept staged copy and cause."""

    def __init__(self, failures: Sequence[FailedUpload], *, context: str = "") -> None:
        self.failures = list(failures)
        head = f"{len(self.failures)} upload(s) failed"
        if context:
            head += f" {context}"
        lines = [head + ":"] + ["  - " + f.describe() for f in self.failures]
        super().__init__("\n".join(lines))


class UploaderClosedError(UploadError, RuntimeError):
    """The uploader was closed (or belongs to the parent of a forked process)."""


def is_transient(exc: BaseException) -> bool:
    """Return True when ``exc`` is marked as worth retrying."""
    return isinstance(exc, ProviderError) and exc.transient
