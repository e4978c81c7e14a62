"""The checkpoint commit protocol: fresh locations, commit records, resolution and retention.

Layout under a checkpoint root (a store URI such as ``s3://bucket/run-7``)::

    step-0000000010/<save-id>/__0_0.distcp      shard files, one or more per rank
    step-0000000010/<save-id>/.metadata         DCP's metadata, written after every shard
    _commits/0000000010-000001.json             the commit record, written last, conditionally

The trainer integrations publish their checkpoints (an HF ``checkpoint-N`` folder, a Lightning
``.ckpt`` file or folder, a Composer checkpoint) with the same records, of kind ``"files"``:
the location holds the checkpoint's files (relative paths, possibly in sub-folders) and no
``.metadata`` is required.

A save is visible to readers only through its commit record. The record is created with
``overwrite=False`` (If-None-Match), after every object it names is durable; it lists every
object of the save with its size, so a reader can prove the save is whole before reading it.
Saving a step again writes a new location and a commit record with the next generation; the
highest ``(step, generation)`` is the latest. Retention deletes a commit record before the data it
names, so a crash while deleting leaves an uncommitted (invisible) location, never a torn
committed one.

The functions callers use (``latest_checkpoint``, ``download_checkpoint``...) live in
:mod:`artifact_uploader._checkpoints`. Everything is synchronous for callers and runs each
operation on a private event loop that lives for that call (no module-global loop), with the
engine's retry policy around each request.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import os
import re
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TypeVar

from ._config import RetryPolicy
from ._errors import ConfigError, ObjectExistsError, ObjectNotFoundError, UploadError
from ._registry import make_provider
from ._retry import retrying
from ._types import FileSlice
from .providers._protocol import Provider, ReadableProvider

T = TypeVar("T")

COMMITS_DIR = "_commits"
FORMAT = "artifact-uploader-dcp/1"
METADATA_NAME = ".metadata"
# Folders in a writer's staging_dir where shards are serialized before they are staged.
SCRATCH_PREFIX = "scratch-"
_STEP_DIGITS = 10
_GEN_DIGITS = 6
_RECORD_RE = re.compile(rf"^(\d{{{_STEP_DIGITS}}})-(\d{{{_GEN_DIGITS}}})\.json$")
_LOCATION_RE = re.compile(rf"^step-(\d{{{_STEP_DIGITS}}})/([0-9a-f]{{32}})$")
# One path segment of a file in a checkpoint: what trainers name files (``epoch=0-step=1.ckpt``,
# ``model-00001-of-00002.safetensors``, ``.metadata``), never "." / ".." or a separator.
_SEGMENT_RE = re.compile(r"^[A-Za-z0-9_.=+@,\-]{1,255}$")
_MAX_FILE_NAME = 1024
KINDS = ("dcp", "files")
# A commit record is small; anything bigger was not written by us.
_MAX_RECORD_BYTES = 16 * 1024 * 1024
_MAX_STEP = 10**_STEP_DIGITS - 1
_MAX_GENERATION = 10**_GEN_DIGITS - 1


class CheckpointError(UploadError):
    """A checkpoint cannot be read: not committed, torn (objects missing) or malformed.

    Attributes:
        location: The checkpoint's location (``step-N/<save-id>``) under its root, if known.
        missing: Names of the objects that should be there and are not.
    """

    def __init__(
        self, message: str, *, location: str | None = None, missing: tuple[str, ...] = ()
    ) -> None:
        super().__init__(message)
        self.location = location
        self.missing = missing

    def __reduce__(self) -> tuple[Any, ...]:
        # Sent between ranks (broadcast_object_list): keep the keyword-only attributes.
        return (_rebuild_error, (type(self), str(self), self.location, self.missing))


def _rebuild_error(
    cls: type[CheckpointError], message: str, location: str | None, missing: tuple[str, ...]
) -> CheckpointError:
    return cls(message, location=location, missing=missing)


class CheckpointNotCommittedError(CheckpointError):
    """No commit record names the checkpoint asked for: it is partial, in progress or deleted."""


def location_for(step: int, save_id: str) -> str:
    """The location of one save of ``step`` under the root."""
    return f"step-{step:0{_STEP_DIGITS}d}/{save_id}"


def record_name(step: int, generation: int) -> str:
    """The object name of the commit record of ``(step, generation)``."""
    return f"{COMMITS_DIR}/{step:0{_STEP_DIGITS}d}-{generation:0{_GEN_DIGITS}d}.json"


def check_step(step: object) -> int:
    """Validate a step number.

    Raises:
        ConfigError: Not an int in ``0 .. 10**10 - 1``.
    """
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= _MAX_STEP:
        raise ConfigError(f"step must be an int from 0 to {_MAX_STEP}, got {step!r}")
    return step


@dataclass(frozen=True, slots=True)
class CommittedCheckpoint:
    """One committed checkpoint, as its commit record describes it.

    Attributes:
        root: The root URI it lives under.
        step: The training step.
        generation: 1 for the first save of ``step``; higher for later saves of the same step.
        save_id: The save's unique id (a folder under ``step-N/``).
        location: ``step-N/<save-id>``, relative to the root.
        files: Every object of the checkpoint (relative to ``location``) and its size in bytes.
        metric: The metric recorded with the save (for keep-best retention), if any.
        world_size: How many ranks wrote it.
        record: The commit record's object name, relative to the root.
        kind: ``"dcp"`` (a DCP save, with ``.metadata``) or ``"files"`` (a trainer's checkpoint
            folder or file, published by a trainer integration).
    """

    root: str
    step: int
    generation: int
    save_id: str
    location: str
    files: Mapping[str, int]
    metric: float | None
    world_size: int
    record: str
    kind: str = "dcp"

    @property
    def uri(self) -> str:
        """The checkpoint's location as a URI."""
        return f"{self.root.rstrip('/')}/{self.location}"

    def to_json(self, committed_at: str) -> bytes:
        """The commit record's content."""
        body = {
            "format": FORMAT,
            "step": self.step,
            "generation": self.generation,
            "save_id": self.save_id,
            "location": self.location,
            "files": dict(sorted(self.files.items())),
            "metric": self.metric,
            "world_size": self.world_size,
            "kind": self.kind,
            "committed_at": committed_at,
        }
        return json.dumps(body, indent=1).encode()


def parse_record(root: str, name: str, data: bytes) -> CommittedCheckpoint:
    """Parse a commit record read from the store (untrusted input).

    Raises:
        CheckpointError: Naming the record and what is wrong with it.
    """

    def bad(why: str) -> CheckpointError:
        return CheckpointError(f"commit record {root.rstrip('/')}/{name} is malformed: {why}")

    m = _RECORD_RE.match(name.rpartition("/")[2])
    if m is None or not name.startswith(COMMITS_DIR + "/"):
        raise bad("unexpected object name")
    try:
        body = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad(f"not JSON ({exc})") from None
    if not isinstance(body, dict) or body.get("format") != FORMAT:
        raise bad(f"not a {FORMAT} record")
    step, generation = body.get("step"), body.get("generation")
    if (step, generation) != (int(m.group(1)), int(m.group(2))) or type(step) is not int:
        raise bad("step/generation differ from the record's name")
    assert isinstance(generation, int)
    location, save_id = body.get("location"), body.get("save_id")
    lm = _LOCATION_RE.match(location) if isinstance(location, str) else None
    if lm is None or lm.group(2) != save_id or int(lm.group(1)) != step:
        raise bad(f"location {location!r} does not match step {step} and its save id")
    assert isinstance(location, str) and isinstance(save_id, str)
    kind = body.get("kind", "dcp")  # records written before kinds existed are DCP saves
    if kind not in KINDS:
        raise bad(f"unknown kind {kind!r}")
    files = body.get("files")
    if not isinstance(files, dict) or not files or len(files) > 100_000:
        raise bad("no file list")
    if kind == "dcp" and METADATA_NAME not in files:
        raise bad("no file list naming .metadata")
    for fname, size in files.items():
        if not is_file_name(fname) or type(size) is not int or size < 0:
            raise bad(f"file entry {fname!r}: {size!r}")
    metric = body.get("metric")
    if metric is not None and (isinstance(metric, bool) or not isinstance(metric, int | float)):
        raise bad(f"metric {metric!r} is not a number")
    world = body.get("world_size")
    if type(world) is not int or world < 1:
        raise bad(f"world_size {world!r}")
    return CommittedCheckpoint(
        root=root,
        step=step,
        generation=generation,
        save_id=save_id,
        location=location,
        files=dict(files),
        metric=None if metric is None else float(metric),
        world_size=world,
        record=name,
        kind=kind,
    )


def is_file_name(name: object) -> bool:
    """Whether ``name`` may name a file inside a checkpoint location.

    A relative POSIX path of plain segments: no ``.`` / ``..`` segment, no empty one, no
    backslash, so a reader writing ``<folder>/<name>`` never leaves ``<folder>``.
    """
    if not isinstance(name, str) or not 0 < len(name) <= _MAX_FILE_NAME:
        return False
    return all(
        _SEGMENT_RE.match(part) is not None and part not in (".", "..") for part in name.split("/")
    )


def run_sync(coro_fn: Callable[[], Awaitable[T]]) -> T:
    """Run ``coro_fn()`` on a private loop; on a worker thread if this thread already runs one."""

    async def main() -> T:
        return await coro_fn()

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(main())
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="au-dcp") as pool:
        return pool.submit(asyncio.run, main()).result()


class Store:
    """A checkpoint root: the requests the commit protocol makes, with retries.

    Each public method opens a provider, does its work and closes it again: the protocol's
    requests are few and small next to the shard uploads, which go through an
    :class:`~artifact_uploader.Uploader`.

    Args:
        root: The root's URI (also the name used in messages).
        provider_kwargs: Options for the provider built from ``root``.
        retry: The retry policy around each request. Default ``RetryPolicy()``.
        factory: Builds a fresh provider rooted at ``root`` (instead of ``make_provider(root,
            provider_kwargs)``), for callers that name their store otherwise (the seed
            logger's ``provider`` and ``container``).
    """

    def __init__(
        self,
        root: str,
        provider_kwargs: Mapping[str, Any] | None = None,
        retry: RetryPolicy | None = None,
        *,
        factory: Callable[[], Provider] | None = None,
    ) -> None:
        if not isinstance(root, str) or not root:
            raise ConfigError(f"the checkpoint root must be a store URI, got {root!r}")
        self.root = root.rstrip("/") if not root.endswith(":///") else root
        self.provider_kwargs = dict(provider_kwargs or {})
        self.retry = retry or RetryPolicy()
        self._factory = factory
        # Built once here so a bad URI or option fails at construction, in the caller's thread.
        self.new_provider()

    def new_provider(self) -> ReadableProvider:
        """A fresh (unopened) provider for the root.

        Raises:
            ConfigError: A bad URI or option, or a store that cannot be read back.
        """
        if self._factory is not None:
            provider = self._factory()
        else:
            provider = make_provider(self.root, self.provider_kwargs)
        if not isinstance(provider, ReadableProvider):
            raise ConfigError(f"store {self.root!r} cannot be read back (no ReadableProvider)")
        return provider

    def session(self) -> _Session:
        """An async context manager holding one opened provider."""
        return _Session(self)

    def run(self, fn: Callable[[_Session], Awaitable[T]]) -> T:
        """Run ``fn`` with an opened session on a private loop."""

        async def go() -> T:
            async with self.session() as s:
                return await fn(s)

        return run_sync(go)


class StoreRunner:
    """One opened session on a loop thread of its own, for a writer's many commits.

    Opening a provider costs a cloud SDK client each time (tenths of a CPU second for S3); a
    writer that commits every few minutes keeps one. Close it with :meth:`close`.
    """

    def __init__(self, store: Store) -> None:
        from anyio.from_thread import start_blocking_portal

        self._cm = start_blocking_portal("asyncio", name="artifact-uploader-commit")
        self._portal = self._cm.__enter__()
        try:
            self._session = _Session(store)
            self._portal.call(self._session.__aenter__)
        except BaseException:
            self._cm.__exit__(None, None, None)
            raise

    def run(self, fn: Callable[[_Session], Awaitable[T]]) -> T:
        """Run ``fn`` with the open session on the runner's loop; blocks for the result."""
        return self._portal.call(fn, self._session)

    def close(self) -> None:
        """Close the session and stop the loop thread."""
        try:
            self._portal.call(self._session.__aexit__, None, None, None)
        finally:
            self._cm.__exit__(None, None, None)


class _Session:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.root = store.root
        self.provider: ReadableProvider = store.new_provider()

    async def __aenter__(self) -> _Session:
        await self.provider.open(verify=False)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.provider.aclose()

    async def _retry(self, op: Callable[[], Awaitable[T]], what: str) -> T:
        return await retrying(self.store.retry, op, what=what)

    async def head_size(self, name: str) -> int | None:
        """The object's size, or None when it does not exist."""
        try:
            info = await self._retry(lambda: self.provider.head(name), f"head {name}")
        except ObjectNotFoundError:
            return None
        return info.size

    async def list_objects(self, prefix: str) -> list[tuple[str, int]]:
        async def collect() -> list[tuple[str, int]]:
            return [(o.name, o.size) async for o in self.provider.list(prefix)]

        return await self._retry(collect, f"list {prefix}")

    async def read_small(self, name: str) -> bytes | None:
        """The whole of a small object, or None when it does not exist."""
        size = await self.head_size(name)
        if size is None:
            return None
        if size > _MAX_RECORD_BYTES:
            raise CheckpointError(f"{self.root}/{name} is {size} bytes; not a commit record")
        if size == 0:
            return b""
        try:
            return await self._retry(lambda: self.provider.get_range(name, 0, size), f"read {name}")
        except ObjectNotFoundError:
            return None

    async def delete(self, name: str) -> None:
        await self._retry(lambda: self.provider.delete(name), f"delete {name}")

    async def put_new(self, name: str, path: Path) -> None:
        """Create ``name`` from ``path`` only if it does not exist (If-None-Match).

        Raises:
            ObjectExistsError: It exists.
        """
        data = FileSlice.whole(path)
        await self._retry(lambda: self.provider.put(name, data, overwrite=False), f"put {name}")

    # -- commit records --------------------------------------------------------------------

    async def records(self) -> list[tuple[int, int, str]]:
        """``(step, generation, name)`` of every commit record, newest first."""
        found = []
        for name, _ in await self.list_objects(COMMITS_DIR + "/"):
            m = _RECORD_RE.match(name.rpartition("/")[2])
            if m is not None and name.count("/") == 1:
                found.append((int(m.group(1)), int(m.group(2)), name))
        found.sort(reverse=True)
        return found

    async def load_record(self, name: str) -> CommittedCheckpoint | None:
        data = await self.read_small(name)
        return None if data is None else parse_record(self.root, name, data)

    async def missing(self, ckpt: CommittedCheckpoint) -> list[str]:
        """Objects the record names that are absent or of another size."""
        names = list(ckpt.files)
        sizes = await asyncio.gather(*(self.head_size(f"{ckpt.location}/{n}") for n in names))
        return [
            n for n, size in zip(names, sizes, strict=True) if size is None or size != ckpt.files[n]
        ]

    async def committed(self) -> list[CommittedCheckpoint]:
        """Every readable commit record, newest first (records deleted meanwhile skipped)."""
        out = []
        for _, _, name in await self.records():
            ckpt = await self.load_record(name)
            if ckpt is not None:
                out.append(ckpt)
        return out

    async def resolve(self, step: int | None, save_id: str | None) -> CommittedCheckpoint:
        """The newest committed checkpoint (of ``step``, with ``save_id``), proven whole.

        Raises:
            CheckpointNotCommittedError: No commit record matches.
            CheckpointError: The matching record names objects that are missing.
        """
        for rec_step, _, name in await self.records():
            if step is not None and rec_step != step:
                continue
            ckpt = await self.load_record(name)
            if ckpt is None:  # deleted by retention since the listing
                continue
            if save_id is not None and ckpt.save_id != save_id:
                continue
            missing = await self.missing(ckpt)
            if missing:
                if await self.head_size(name) is None:
                    continue  # uncommitted (retention) while we looked: not torn, just gone
                raise CheckpointError(
                    f"checkpoint {ckpt.uri} is committed by {self.root}/{name} but is torn: "
                    f"missing or of the wrong size: {', '.join(sorted(missing))}",
                    location=ckpt.location,
                    missing=tuple(sorted(missing)),
                )
            return ckpt
        raise await self._not_committed(step, save_id)

    async def _not_committed(
        self, step: int | None, save_id: str | None
    ) -> CheckpointNotCommittedError:
        if step is None:
            return CheckpointNotCommittedError(
                f"no committed checkpoint under {self.root}: no commit record in "
                f"{self.root}/{COMMITS_DIR}/"
            )
        if save_id is None:
            return CheckpointNotCommittedError(
                f"step {step} has no committed checkpoint under {self.root}: no commit record "
                f"{self.root}/{COMMITS_DIR}/{step:0{_STEP_DIGITS}d}-*.json"
            )
        location = location_for(step, save_id)
        present = [n.rpartition("/")[2] for n, _ in await self.list_objects(location + "/")]
        missing = ["commit record"]
        if METADATA_NAME not in present and all(n.endswith(".distcp") for n in present):
            missing.append(METADATA_NAME)  # a DCP save (or nothing yet) without its metadata
        return CheckpointNotCommittedError(
            f"checkpoint {self.root}/{location} is not committed: no commit record in "
            f"{self.root}/{COMMITS_DIR}/ names it (missing: {', '.join(missing)}; "
            f"{len(present)} object(s) present there, which readers must not trust)",
            location=location,
            missing=tuple(missing),
        )

    async def publish(self, ckpt: CommittedCheckpoint, scratch: Path) -> CommittedCheckpoint:
        """Create the commit record with the next free generation of its step.

        Retries with the next generation when another writer took one first (a conditional
        create losing the race), so two commits never replace each other.
        """
        existing = [g for s, g, _ in await self.records() if s == ckpt.step]
        generation = max(existing, default=0) + 1
        for _ in range(100):
            if generation > _MAX_GENERATION:
                break
            record = record_name(ckpt.step, generation)
            final = CommittedCheckpoint(
                root=ckpt.root,
                step=ckpt.step,
                generation=generation,
                save_id=ckpt.save_id,
                location=ckpt.location,
                files=ckpt.files,
                metric=ckpt.metric,
                world_size=ckpt.world_size,
                record=record,
                kind=ckpt.kind,
            )
            fd, tmp = tempfile.mkstemp(prefix="commit-", suffix=".json", dir=scratch)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(final.to_json(datetime.now(UTC).isoformat()))
                    f.flush()
                    os.fsync(f.fileno())
                await self.put_new(record, Path(tmp))
                return final
            except ObjectExistsError:
                generation += 1
            finally:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
        raise CheckpointError(f"could not find a free commit generation for step {ckpt.step}")

    async def delete_location(self, location: str) -> None:
        """Delete every object under ``location`` (``.metadata`` first: never partly readable)."""
        names = [n for n, _ in await self.list_objects(location + "/")]
        names.sort(key=lambda n: n.rpartition("/")[2] != METADATA_NAME)
        for name in names:
            await self.delete(name)

    async def uncommitted_locations(self) -> list[str]:
        """Every ``step-N/<save-id>`` location that no commit record names."""
        committed = {c.location for c in await self.committed()}
        locations = set()
        for name, _ in await self.list_objects("step-"):
            parts = name.split("/")
            if len(parts) >= 3 and _LOCATION_RE.match(f"{parts[0]}/{parts[1]}"):
                locations.add(f"{parts[0]}/{parts[1]}")
        return sorted(locations - committed)


def choose_retained(
    commits: list[CommittedCheckpoint],
    keep_last: int,
    keep_best: int = 0,
    best: Literal["max", "min"] = "max",
) -> tuple[list[CommittedCheckpoint], list[CommittedCheckpoint]]:
    """Split ``commits`` (newest first) into (kept, deleted).

    The newest generation of a step is that step's checkpoint; older generations of a step are
    superseded and deleted. Of the steps, the ``keep_last`` newest are kept, and the
    ``keep_best`` best by metric (``best="max"`` or ``"min"``) among those that carry one.
    """
    current: dict[int, CommittedCheckpoint] = {}
    superseded = []
    for c in commits:
        if c.step in current:
            superseded.append(c)
        else:
            current[c.step] = c
    steps = sorted(current, reverse=True)
    keep = set(steps[:keep_last])
    if keep_best:
        with_metric = [current[s] for s in steps if current[s].metric is not None]
        with_metric.sort(key=lambda c: c.metric or 0.0, reverse=best == "max")
        keep.update(c.step for c in with_metric[:keep_best])
    kept = [current[s] for s in steps if s in keep]
    deleted = [current[s] for s in steps if s not in keep] + superseded
    return kept, deleted


def check_retention(keep_last: object, keep_best: object, best: object) -> None:
    """Validate retention options.

    Raises:
        ConfigError: Naming the bad option.
    """
    if isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last < 1:
        raise ConfigError(f"keep_last must be an int >= 1, got {keep_last!r}")
    if isinstance(keep_best, bool) or not isinstance(keep_best, int) or keep_best < 0:
        raise ConfigError(f"keep_best must be an int >= 0, got {keep_best!r}")
    if best not in ("max", "min"):
        raise ConfigError(f"best must be 'max' or 'min', got {best!r}")


async def apply_retention(
    session: _Session,
    keep_last: int,
    keep_best: int = 0,
    best: Literal["max", "min"] = "max",
    on_delete: Callable[[str], None] | None = None,
) -> list[CommittedCheckpoint]:
    """Delete the checkpoints retention does not keep: each commit record first, then its data.

    Returns:
        The checkpoints deleted.
    """
    commits = await session.committed()
    _, deleted = choose_retained(commits, keep_last, keep_best, best)
    for ckpt in deleted:
        await session.delete(ckpt.record)  # uncommit: readers stop seeing it here
        if on_delete is not None:
            on_delete(ckpt.record)
        for name in sorted(
            ckpt.files, key=lambda n: n != METADATA_NAME
        ):  # .metadata first, then shards
            await session.delete(f"{ckpt.location}/{name}")
            if on_delete is not None:
                on_delete(f"{ckpt.location}/{name}")
    return deleted


async def wait_present(
    session: _Session, location: str, files: Mapping[str, int], deadline: float
) -> None:
    """Wait until every object of ``files`` under ``location`` exists with its size.

    Raises:
        CheckpointError: Past ``deadline`` (a monotonic time), naming what is still missing.
    """
    pending = dict(files)
    delay = 0.05
    while True:
        names = list(pending)
        sizes = await asyncio.gather(*(session.head_size(f"{location}/{n}") for n in names))
        for n, size in zip(names, sizes, strict=True):
            if size == pending[n]:
                del pending[n]
        if not pending:
            return
        if time.monotonic() >= deadline:
            raise CheckpointError(
                f"checkpoint {session.root}/{location} was not committed: these shards never "
                f"became durable: {', '.join(sorted(pending))}",
                location=location,
                missing=tuple(sorted(pending)),
            )
        await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        # Capped low: a late poll is latency added to every commit, a HEAD is cheap.
        delay = min(delay * 2, 0.25)
