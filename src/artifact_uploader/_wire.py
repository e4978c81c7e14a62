"""Every message between ``Uploader(use_procs=True)`` and its upload process.

One frozen dataclass per message, pickled over a :mod:`multiprocessing` connection. The parent
sends a :class:`Spec` first, then :class:`Submit` and call messages (:class:`Flush`,
:class:`Close`, :class:`Resume`, :class:`Read`); the child answers with lists of
:class:`ToParent` messages (one batch per loop iteration), the first ending in :class:`Ready`.
Exceptions cross as :class:`RemoteError` (class path, args, attributes) and are rebuilt with
the same type.

Both ends run the same code (the child is started from the parent's ``sys.path``), so the
messages carry no version.
"""

from __future__ import annotations

import importlib
import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._errors import UploadError
from ._events import EventKind
from ._intake import EngineOptions, Prepared
from ._journal import JournalEntry
from ._staging import StagedFile
from ._types import UploadResult


class _Message:
    """Base of every message: pickled as (class, field values) and rebuilt through the class.

    A slots dataclass's default pickling (a state list, set back field by field) costs several
    times more, and every submit pays it in the training process.
    """

    __slots__ = ()

    def __reduce__(self) -> tuple[type[Any], tuple[Any, ...]]:
        fields: tuple[str, ...] = self.__slots__
        return (type(self), tuple([getattr(self, name) for name in fields]))


# -- exceptions across the process boundary --------------------------------------------------


@dataclass(frozen=True, slots=True)
class RemoteError(_Message):
    """An exception as (class path, args, attributes): rebuilt with the same type in the parent.

    Pickling the exception itself is not enough: classes whose ``__init__`` takes other
    arguments than ``args`` (most of ours) cannot be unpickled, and an attribute may hold an
    unpicklable SDK object (such attributes are dropped). Rebuilding falls back to an
    :class:`UploadError` with the message when the class cannot be imported.
    """

    module: str
    qualname: str
    args: tuple[Any, ...]
    state: dict[str, Any]
    text: str

    @classmethod
    def of(cls, exc: BaseException) -> RemoteError:
        kind = type(exc)
        text = f"{kind.__name__}: {exc}"
        state = {k: v for k, v in getattr(exc, "__dict__", {}).items() if _picklable(v)}
        args = exc.args if _picklable(exc.args) else (str(exc),)
        return cls(kind.__module__, kind.__qualname__, tuple(args), state, text)

    def rebuild(self) -> BaseException:
        try:
            kind: Any = importlib.import_module(self.module)
            for part in self.qualname.split("."):
                kind = getattr(kind, part)
            if not (isinstance(kind, type) and issubclass(kind, BaseException)):
                raise TypeError(self.qualname)
            exc = kind.__new__(kind)
            exc.args = self.args
            if self.state:
                exc.__dict__.update(self.state)
            return exc
        except Exception:
            return UploadError(self.text)


def _picklable(value: object) -> bool:
    try:
        pickle.dumps(value)
    except Exception:
        return False
    return True


def pack(exc: BaseException | None) -> RemoteError | None:
    """``exc`` ready to cross (None stays None)."""
    return None if exc is None else RemoteError.of(exc)


def unpack(err: RemoteError | None) -> BaseException | None:
    """The exception a :func:`pack` sent (None stays None)."""
    return None if err is None else err.rebuild()


# -- parent -> child --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Spec(_Message):
    """What the child needs to build its engine (the first message)."""

    provider: bytes  # the pickled, unopened provider
    options: EngineOptions
    folder: str
    persistent: bool
    forward_events: bool
    parent_pid: int
    log_level: int
    # The folder holds entries awaiting a resume: the child tracks submitted names for it.
    track_names: bool = False


@dataclass(frozen=True, slots=True)
class Submit(_Message):
    """Upload a file the parent staged and journalled; after ``after_id``'s upload if given."""

    staged_id: str
    name: str
    path: str
    size: int
    source: str
    overwrite: bool
    after_id: str | None

    @classmethod
    def of(cls, prepared: Prepared, after_id: str | None) -> Submit:
        staged = prepared.staged
        return cls(
            staged.id,
            prepared.name,
            str(staged.path),
            staged.size,
            staged.source,
            prepared.overwrite,
            after_id,
        )

    def prepared(self) -> Prepared:
        """The staged file as the engine takes it."""
        staged = StagedFile(self.staged_id, Path(self.path), self.size, self.source)
        return Prepared(self.name, staged, self.overwrite)


@dataclass(frozen=True, slots=True)
class Flush(_Message):
    """Wait for every upload sent so far; answered by a :class:`Reply` numbered ``req``."""

    req: int
    timeout: float | None


@dataclass(frozen=True, slots=True)
class Close(_Message):
    """Drain (up to ``timeout``), close the engine, answer, and exit."""

    req: int
    timeout: float | None


@dataclass(frozen=True, slots=True)
class Resume(_Message):
    """Upload what a previous run left journalled (the parent read and vetted the journal)."""

    req: int
    entries: list[JournalEntry]
    skipped_lines: list[str]
    bad_entries: list[str]


@dataclass(frozen=True, slots=True)
class Read(_Message):
    """A read-side call (download, head, exists, list) under the child's semaphore."""

    req: int
    method: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    timeout: float | None


Call = Flush | Close | Resume | Read
ToChild = Submit | Call


# -- child -> parent --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ready(_Message):
    """The child opened its engine (``error`` None) or could not (what opening raised)."""

    error: RemoteError | None


@dataclass(frozen=True, slots=True)
class Count(_Message):
    """Counter deltas for the parent's totals."""

    deltas: Mapping[str, int]


@dataclass(frozen=True, slots=True)
class Event(_Message):
    """A progress event for the parent's ``on_event`` (sent only when there is a listener)."""

    kind: EventKind
    name: str
    size: int
    nbytes: int
    attempt: int
    delay: float
    error: RemoteError | None


@dataclass(frozen=True, slots=True)
class Failure(_Message):
    """A failed upload, kept and reported by the parent alone."""

    name: str
    staged_path: str | None
    error: RemoteError


@dataclass(frozen=True, slots=True)
class End(_Message):
    """The upload of ``staged_id`` ended: resolves its future (after its Failure, if any)."""

    staged_id: str
    result: UploadResult | None
    error: RemoteError | None


@dataclass(frozen=True, slots=True)
class Log(_Message):
    """A log record of the child's ``artifact_uploader`` logger, already formatted."""

    level: int
    text: str


@dataclass(frozen=True, slots=True)
class Reply(_Message):
    """The outcome of call ``req``: its value, or the error it raised."""

    req: int
    value: Any
    error: RemoteError | None


ToParent = Ready | Count | Event | Failure | End | Log | Reply
