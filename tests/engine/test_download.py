"""The engine's read side beyond the conformance suite: retries per range, a changed object,
the shared concurrency limit, checksum kinds (whole, composite, read back), cancellation, the
sync facade in thread and process modes, and the local store's promises (no symlink followed
below its root, a read-only folder refused with the library's own error, bit rot detected).

The conformance suite (``ReadConformance`` in ``artifact_uploader.testing``) covers the round
trips on every provider; these tests use the memory and local stores, whose faults are exact.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import artifact_uploader._download as download_mod
from artifact_uploader import (
    AsyncUploader,
    Checksum,
    DestinationExistsError,
    EventKind,
    FileSlice,
    IntegrityError,
    LocalProvider,
    MemoryProvider,
    ObjectInfo,
    ObjectNotFoundError,
    PartPolicy,
    PermissionDeniedError,
    ProviderError,
    RetryPolicy,
    Uploader,
    UploadEvent,
)
from artifact_uploader._checksums import crc32c, crc32c_b64, crc32c_combine
from tests.conftest import poll_until, skip_outside_ci

MiB = 1024 * 1024
FAST = RetryPolicy(attempts=4, base_delay=0.0, max_delay=0.0)
SMALL = PartPolicy(threshold=1 * MiB, part_size=1 * MiB)


def _leftovers(folder: Path, *keep: str) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


def _store(provider: MemoryProvider, name: str, data: bytes) -> None:
    provider.objects[name] = data


@pytest.fixture
def out(tmp_path: Path) -> Path:
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


# -- the engine -------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_transient_range_failures_are_retried_per_range(out: Path) -> None:
    store = MemoryProvider()
    data = os.urandom(5 * MiB + 17)
    _store(store, "m.bin", data)
    store.inject(ProviderError("reset", transient=True), times=3, ops=["get_range"])
    events: list[UploadEvent] = []
    async with AsyncUploader(store, parts=SMALL, retry=FAST, on_event=events.append) as up:
        result = await up.download("m.bin", out / "m.bin")
    assert (out / "m.bin").read_bytes() == data and result.checksum_algorithm == "crc32c"
    assert [e.kind for e in events].count(EventKind.RETRY) == 3
    # 6 ranges, 3 of them tried twice: only the failed ranges were fetched again.
    assert store.count("get_range") == 6 + 3
    assert up.totals.bytes_received == len(data)


class _StallsOnce(MemoryProvider):
    """The first ranged GET never answers (a silent connection); later ones do."""

    def __init__(self) -> None:
        super().__init__()
        self.stalled = 0

    async def get_range(
        self, name: str, offset: int, length: int, *, etag: str | None = None
    ) -> bytes:
        if not self.stalled:
            self.stalled += 1
            await asyncio.Event().wait()  # never set: only the stall watchdog ends this
        return await super().get_range(name, offset, length, etag=etag)


@pytest.mark.asyncio
async def test_a_stalled_range_is_aborted_and_retried(out: Path) -> None:
    store = _StallsOnce()
    data = os.urandom(3 * MiB)
    _store(store, "m.bin", data)
    retry = RetryPolicy(attempts=3, base_delay=0.0, max_delay=0.0, stall_timeout=1.0)
    events: list[UploadEvent] = []
    async with AsyncUploader(store, parts=SMALL, retry=retry, on_event=events.append) as up:
        await asyncio.wait_for(up.download("m.bin", out / "m.bin"), 60)
    assert (out / "m.bin").read_bytes() == data
    retries = [e for e in events if e.kind is EventKind.RETRY]
    assert len(retries) == 1 and type(retries[0].error).__name__ == "StallTimeoutError"


@pytest.mark.asyncio
async def test_permanent_failure_leaves_nothing(out: Path) -> None:
    store = MemoryProvider()
    _store(store, "m.bin", os.urandom(4 * MiB))
    calls = 0

    def third(op: str, name: str) -> BaseException | None:
        nonlocal calls
        calls += 1
        return PermissionError("denied") if calls == 3 else None

    store.inject(third, times=1, ops=["get_range"])
    events: list[UploadEvent] = []
    async with AsyncUploader(store, parts=SMALL, retry=FAST, on_event=events.append) as up:
        with pytest.raises(PermissionError):
            await up.download("m.bin", out / "m.bin")
    assert _leftovers(out) == []
    assert events[-1].kind is EventKind.DOWNLOAD_FAILED


@pytest.mark.asyncio
async def test_object_replaced_mid_download_is_refused(out: Path) -> None:
    store = MemoryProvider()
    _store(store, "m.bin", os.urandom(4 * MiB))

    def replace(op: str, name: str) -> BaseException | None:
        store.objects["m.bin"] = os.urandom(4 * MiB)  # a new version lands meanwhile
        return None

    store.inject(replace, times=None, ops=["get_range"])
    async with AsyncUploader(store, parts=SMALL, retry=FAST) as up:
        with pytest.raises(ProviderError) as info:
            await up.download("m.bin", out / "m.bin")
    assert info.value.status == 412 and not info.value.transient
    assert _leftovers(out) == []


class _Gated(MemoryProvider):
    """Holds every part upload and ranged GET at a gate, counting how many are held."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.held = 0
        self.max_held = 0

    async def _hold(self) -> None:
        self.held += 1
        self.max_held = max(self.max_held, self.held)
        try:
            await self.gate.wait()
        finally:
            self.held -= 1

    async def get_range(
        self, name: str, offset: int, length: int, *, etag: str | None = None
    ) -> bytes:
        await self._hold()
        return await super().get_range(name, offset, length, etag=etag)

    async def put_part(self, name: str, upload_id: str, part_number: int, data: FileSlice) -> Any:
        await self._hold()
        return await super().put_part(name, upload_id, part_number, data)


@pytest.mark.asyncio
async def test_download_shares_the_one_concurrency_limit(out: Path, tmp_path: Path) -> None:
    store = _Gated()
    _store(store, "big.bin", os.urandom(8 * MiB))
    src = tmp_path / "up.bin"
    src.write_bytes(os.urandom(6 * MiB))
    async with AsyncUploader(store, parts=SMALL, max_concurrency=3) as up:
        upload = asyncio.ensure_future(up.upload(src, "up.bin"))
        download = asyncio.ensure_future(up.download("big.bin", out / "big.bin"))
        await poll_until(lambda: store.held >= 3, 30.0, "three requests held")
        for _ in range(50):  # let anything else that could start, start
            await asyncio.sleep(0)
        held = store.held
        store.gate.set()
        await asyncio.gather(upload, download)
    # 6 parts and 8 ranges wanted to run: uploads and downloads together never exceed 3.
    assert held == 3 and store.max_held == 3


@pytest.mark.asyncio
async def test_cancelled_download_leaves_nothing(out: Path) -> None:
    store = _Gated()
    _store(store, "m.bin", os.urandom(4 * MiB))
    async with AsyncUploader(store, parts=SMALL) as up:
        task = asyncio.ensure_future(up.download("m.bin", out / "m.bin"))
        await poll_until(lambda: store.held >= 1, 30.0, "a range in flight")
        assert len(_leftovers(out)) == 1  # the temporary file, in dest's folder
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert _leftovers(out) == []


class _Reporting(MemoryProvider):
    """Reports the checksums a test chooses, as a real store's head would."""

    checksums: tuple[Checksum, ...] = ()

    async def head(self, name: str) -> ObjectInfo:
        info = await super().head(name)
        return ObjectInfo(info.name, info.size, info.etag, checksums=self.checksums)


def _parts(data: bytes, part: int) -> list[bytes]:
    return [data[i : i + part] for i in range(0, len(data), part)]


def _composite(algorithm: str, data: bytes, part: int) -> Checksum:
    if algorithm == "crc32c":
        raw = b"".join(crc32c(p).to_bytes(4, "big") for p in _parts(data, part))
        value = crc32c_b64(crc32c(raw))
    else:
        raw = b"".join(hashlib.md5(p).digest() for p in _parts(data, part))
        value = base64.b64encode(hashlib.md5(raw).digest()).decode()
    count = len(_parts(data, part))
    return Checksum(algorithm, f"{value}-{count}", part_size=part, parts=count)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kind", ["md5-whole", "crc32c-composite", "md5-composite", "crc32c-composite-read-back"]
)
@pytest.mark.asyncio
async def test_checksum_kinds_verify_and_catch_corruption(
    kind: str, out: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = os.urandom(5 * MiB + 123)
    part = 2 * MiB
    if kind == "md5-whole":
        checksum = Checksum("md5", base64.b64encode(hashlib.md5(data).digest()).decode())
    else:
        checksum = _composite(kind.split("-")[0], data, part)
    if kind.endswith("read-back"):
        monkeypatch.setattr(download_mod, "_MAX_RANGE", 1 * MiB)  # parts too big to hold
    store = _Reporting()
    store.checksums = (checksum,)
    _store(store, "m.bin", data)
    async with AsyncUploader(store, parts=SMALL) as up:
        result = await up.download("m.bin", out / "good.bin")
        assert (out / "good.bin").read_bytes() == data
        assert (result.checksum_algorithm, result.checksum) == (checksum.algorithm, checksum.value)
        if kind.endswith("composite"):
            assert store.count("get_range") == 3  # one range per stored part
        store.corrupt_reads(1)
        with pytest.raises(IntegrityError, match=checksum.algorithm):
            await up.download("m.bin", out / "bad.bin")
    assert _leftovers(out) == ["good.bin"]


@pytest.mark.asyncio
async def test_malformed_recorded_checksums_are_ignored(out: Path) -> None:
    store = _Reporting()
    store.checksums = (
        Checksum("crc32c", "not base64!"),
        Checksum("md5", "AAAA"),  # 3 bytes, not 16
        Checksum("crc32c", "AAAAAA==-7", part_size=1 * MiB, parts=7),  # wrong layout
    )
    _store(store, "m.bin", b"x" * (2 * MiB))
    async with AsyncUploader(store, parts=SMALL) as up:
        result = await up.download("m.bin", out / "m.bin")
    assert result.checksum_algorithm is None and (out / "m.bin").stat().st_size == 2 * MiB


def test_crc32c_combine_matches_direct() -> None:
    a, b = os.urandom(1000), os.urandom(3 * MiB + 5)
    assert crc32c_combine(crc32c(a), crc32c(b), len(b)) == crc32c(a + b)


@pytest.mark.asyncio
async def test_destination_checks(tmp_path: Path) -> None:
    store = MemoryProvider()
    _store(store, "m.bin", b"abc")
    async with AsyncUploader(store) as up:
        with pytest.raises(ValueError, match="does not exist"):
            await up.download("m.bin", tmp_path / "missing-folder" / "m.bin")
        with pytest.raises(ValueError, match="is a directory"):
            await up.download("m.bin", tmp_path, overwrite=True)
        assert store.count("head") == 0
        (tmp_path / "keep").write_bytes(b"old")
        os.chmod(tmp_path / "keep", 0o600)
        await up.download("m.bin", tmp_path / "keep", overwrite=True)
    assert (tmp_path / "keep").read_bytes() == b"abc"
    assert (tmp_path / "keep").stat().st_mode & 0o777 == 0o600  # a replaced file keeps its mode


# -- the sync facade --------------------------------------------------------------------------


def test_sync_thread_mode_read_side(tmp_path: Path, out: Path) -> None:
    store = MemoryProvider()
    _store(store, "a/x.bin", os.urandom(3 * MiB))
    _store(store, "latest.symlink", b"a/x.bin")
    with Uploader(store, parts=SMALL) as up:
        result = up.download("latest", out / "x.bin")
        assert result.name == "a/x.bin"
        assert (out / "x.bin").read_bytes() == store.objects["a/x.bin"]
        assert up.head("a/x.bin").size == 3 * MiB
        assert up.exists("a/x.bin") and not up.exists("a/y.bin")
        assert [i.name for i in up.list("a/")] == ["a/x.bin"]
        with pytest.raises(DestinationExistsError):
            up.download("a/x.bin", out / "x.bin")
        store.pause()
        try:
            with pytest.raises(TimeoutError):
                up.download("a/x.bin", out / "late.bin", timeout=0.5)
        finally:
            store.resume()
    assert _leftovers(out, "x.bin") == []


def test_sync_process_mode_read_side(tmp_path: Path, out: Path) -> None:
    root = tmp_path / "store"
    src = tmp_path / "src.bin"
    data = os.urandom(3 * MiB + 1)
    src.write_bytes(data)
    with Uploader(f"file://{root}", parts=SMALL, use_procs=True) as up:
        up.upload(src, "ckpt/ep1.pt")
        (tmp_path / "link").write_text("ckpt/ep1.pt")
        up.upload(tmp_path / "link", "latest.pt.symlink")
        result = up.download("latest.pt", out / "ep1.pt")
        assert result.name == "ckpt/ep1.pt" and result.checksum_algorithm is not None
        assert (out / "ep1.pt").read_bytes() == data
        assert [i.name for i in up.list()] == ["ckpt/ep1.pt", "latest.pt.symlink"]
        with pytest.raises(ObjectNotFoundError, match="nope"):
            up.head("nope")
        assert not up.exists("nope")


# -- the local store --------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_local_bit_rot_is_detected(tmp_path: Path, out: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(3 * MiB))
    async with AsyncUploader(LocalProvider(tmp_path / "store"), parts=SMALL) as up:
        await up.upload(src, "m.bin")
        stored = tmp_path / "store" / "m.bin"
        st = stored.stat()
        body = bytearray(stored.read_bytes())
        body[2 * MiB] ^= 1  # one flipped bit, size and mtime kept (bit rot)
        stored.write_bytes(bytes(body))
        os.utime(stored, ns=(st.st_atime_ns, st.st_mtime_ns))
        with pytest.raises(IntegrityError, match="crc32c"):
            await up.download("m.bin", out / "m.bin")
    assert _leftovers(out) == []


@pytest.mark.asyncio
async def test_local_recorded_checksum_is_untrusted_input(tmp_path: Path) -> None:
    provider = LocalProvider(tmp_path / "store")
    await provider.open()
    (tmp_path / "store" / "x").write_bytes(b"data")
    for garbage in [b"{", b"[]", b'{"algorithm": "crc32c", "value": 5}', b"x" * 4000]:
        os.setxattr(tmp_path / "store" / "x", "user.artifact_uploader.checksum", garbage)
        assert (await provider.head("x")).checksums == ()
    # A record for other content (size or mtime differ) says nothing about this file.
    st = (tmp_path / "store" / "x").stat()
    record = {"algorithm": "crc32c", "value": "AAAAAA==", "size": 4, "mtime_ns": st.st_mtime_ns}
    os.setxattr(
        tmp_path / "store" / "x", "user.artifact_uploader.checksum", json.dumps(record).encode()
    )
    assert (await provider.head("x")).checksums == (Checksum("crc32c", "AAAAAA=="),)
    record["size"] = 5
    os.setxattr(
        tmp_path / "store" / "x", "user.artifact_uploader.checksum", json.dumps(record).encode()
    )
    assert (await provider.head("x")).checksums == ()


@pytest.fixture
def elsewhere(tmp_path: Path) -> Iterator[Path]:
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    yield folder


@pytest.mark.asyncio
async def test_local_store_never_writes_through_a_symlink(tmp_path: Path, elsewhere: Path) -> None:
    """Issue 11, finding 7: ``root/link -> /elsewhere``; ``upload(src, "link/evil.txt")``."""
    root = tmp_path / "root"
    root.mkdir()
    (root / "link").symlink_to(elsewhere)
    (root / "d").mkdir()
    (root / "d" / "deeper").symlink_to(elsewhere)
    (elsewhere / "victim.txt").write_text("keep")
    (root / "file-link").symlink_to(elsewhere / "victim.txt")
    src = tmp_path / "src.txt"
    src.write_text("evil")
    async with AsyncUploader(LocalProvider(root), retry=FAST) as up:
        for name in ["link/evil.txt", "d/deeper/evil.txt", "link/new/dir/evil.txt"]:
            with pytest.raises(ProviderError, match="symbolic link") as info:
                await up.upload(src, name)
            assert not info.value.transient
            assert name in str(info.value)
            up._take_failures()
        # Reads do not follow links either.
        with pytest.raises(ProviderError, match="symbolic link"):
            await up.head("link/victim.txt")
        with pytest.raises(ProviderError, match="symbolic link"):
            await up.download("file-link", tmp_path / "stolen.txt")
        assert [i.name for i in await up.list()] == []
        assert isinstance(up.provider, LocalProvider)
        with pytest.raises(ProviderError, match="symbolic link"):
            await up.provider.delete("link/victim.txt")
        # Overwriting the name of a link replaces the link itself, never its target.
        await up.upload(src, "file-link")
    assert sorted(p.name for p in elsewhere.rglob("*")) == ["victim.txt"]
    assert (elsewhere / "victim.txt").read_text() == "keep"
    assert not (root / "file-link").is_symlink()
    assert (root / "file-link").read_text() == "evil"
    assert not (tmp_path / "stolen.txt").exists()


_READ_ONLY_CHILD = r"""
import json, sys
from artifact_uploader import Uploader, UploadError
out = {}
for label, folder in (("fresh", sys.argv[1] + "/store"), ("existing", sys.argv[1] + "/old")):
    try:
        Uploader(f"file://{folder}").close()
        out[label] = None
    except UploadError as exc:
        out[label] = {"type": type(exc).__name__, "message": str(exc),
                      "mro": [c.__name__ for c in type(exc).__mro__]}
print(json.dumps(out))
"""


def test_local_store_on_read_only_filesystem(tmp_path: Path) -> None:
    """Issue 10: a read-only store folder raises the library's own error naming the folder."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    unshare = shutil.which("unshare")
    if unshare is None:
        skip_outside_ci("unshare(1) is not installed: no private mount namespace")
    prefix = [unshare, "-m"] if os.geteuid() == 0 else [unshare, "-Urm"]
    # A tmpfs holding an existing store (with its temp folder), remounted read-only.
    mount = (
        'mount -t tmpfs -o size=1m tmpfs "$0" && mkdir -p "$0/old/.artifact-uploader-tmp" '
        '&& mount -o remount,ro "$0" && exec "$@"'
    )
    probe = subprocess.run(
        [*prefix, "sh", "-c", mount, str(mnt), "true"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if probe.returncode != 0:
        skip_outside_ci(f"cannot mount a private read-only tmpfs here: {probe.stderr.strip()}")
    proc = subprocess.run(
        [*prefix, "sh", "-c", mount, str(mnt), sys.executable, "-c", _READ_ONLY_CHILD, str(mnt)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    for label, folder in (("fresh", mnt / "store"), ("existing", mnt / "old")):
        err = result[label]
        assert err is not None, f"{label}: a read-only store was accepted"
        assert err["type"] == PermissionDeniedError.__name__, err
        assert str(folder) in err["message"] and "read-only" in err["message"], err
