"""Load: 10,000 small files submitted in bursts all arrive byte-identical, and the uploader's
memory does not grow with the number of files it has already uploaded.

Memory is measured after a first burst of 2,000 files has drained and again after a second burst
of 8,000 has drained (10,000 uploaded), as the number of Python memory blocks allocated
(``sys.getallocatedblocks``) and the number of objects the garbage collector tracks: anything
kept per finished upload (results, futures, tasks, events, name chains) would add thousands.
Both are exact and cheap, unlike ``tracemalloc``, which slows a 10,000-file run several-fold.
RSS is also bounded, loosely: it includes allocator slack sized by the largest burst. The
caller keeps no futures, so what remains is the uploader's own. A 1,000-file burst goes to the
moto S3 server as well.
"""

from __future__ import annotations

import gc
import hashlib
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from artifact_uploader import Uploader
from tests.servers.moto import MotoServer

# Each file's content is derived from its index, so it can be checked without keeping a copy.


def _content(i: int) -> bytes:
    return f"file {i:05d} ".encode() * (1 + i % 40)


def _write_sources(folder: Path, start: int, stop: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(start, stop):
        p = folder / f"f{i:05d}.txt"
        p.write_bytes(_content(i))
        paths.append(p)
    return paths


def _burst(up: Uploader, paths: list[Path], start: int) -> None:
    for i, p in enumerate(paths, start):
        # The future is dropped on purpose: memory kept per upload must be the uploader's.
        up.submit(p, f"load/{i // 1000:02d}/f{i:05d}.txt")
    up.flush()


def _memory() -> tuple[int, int, int]:
    """(allocated blocks, objects tracked by the GC, resident bytes) after a full collection."""
    gc.collect()
    with open("/proc/self/statm") as f:
        rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return sys.getallocatedblocks(), len(gc.get_objects()), rss


# `slow` is for selection only (`-m "not slow"` for a quick local run): plain pytest, as CI
# runs it, still runs it.
@pytest.mark.slow
def test_ten_thousand_files_memory_flat(tmp_path: Path) -> None:
    store = tmp_path / "store"
    first = _write_sources(tmp_path / "src", 0, 2_000)
    second = _write_sources(tmp_path / "src", 2_000, 10_000)
    with Uploader(
        store.as_uri(),
        max_concurrency=16,
        # The store's fsync per object measures the disk, not the uploader.
        provider_kwargs={"fsync": False},
    ) as up:
        staging = Path(up.staging_folder)
        _burst(up, first, 0)
        blocks_2k, objects_2k, rss_2k = _memory()
        _burst(up, second, 2_000)
        blocks_10k, objects_10k, rss_10k = _memory()
        totals = up.totals
    # A single object kept per upload would add 8,000 of each.
    assert blocks_10k - blocks_2k < 1_000, (blocks_2k, blocks_10k)
    assert objects_10k - objects_2k < 500, (objects_2k, objects_10k)
    assert rss_10k - rss_2k < 64 * 1024 * 1024, (rss_2k, rss_10k)
    assert totals.files_done == 10_000 and totals.files_failed == 0
    landed = sorted(store.glob("load/*/*.txt"))
    assert len(landed) == 10_000
    for p in landed:
        i = int(p.stem[1:])
        assert p.read_bytes() == _content(i), p
    assert not staging.exists(), "the temporary staging folder was not cleaned up"


def test_one_thousand_files_in_a_burst_to_s3(
    moto_server: MotoServer, moto_s3: Any, s3_bucket: str, tmp_path: Path
) -> None:
    paths = _write_sources(tmp_path / "src", 0, 1_000)
    with Uploader(
        f"s3://{s3_bucket}/run", provider_kwargs=moto_server.options(), max_concurrency=16
    ) as up:
        _burst(up, paths, 0)
    listed: dict[str, str] = {}
    for page in moto_s3.get_paginator("list_objects_v2").paginate(Bucket=s3_bucket, Prefix="run/"):
        for obj in page.get("Contents", []):
            listed[obj["Key"]] = obj["ETag"].strip('"')
    expected = {
        f"run/load/00/f{i:05d}.txt": hashlib.md5(_content(i), usedforsecurity=False).hexdigest()
        for i in range(1_000)
    }
    # moto's ETag of a single PutObject is the MD5 of the bytes it stored.
    assert listed == expected
    assert os.listdir(tmp_path / "src") and len(listed) == 1_000
