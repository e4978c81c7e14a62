"""How long ``Uploader.submit`` blocks the caller in each staging mode, against shutil.copyfile.

    .venv/bin/python benchmarks/bench_staging.py [--quick]

For each file size, each staging mode ("copy", "reflink", "link", "move", "auto") is timed as one
``Uploader.submit`` (validate, stage, hand off: everything the caller waits for) into the
uploader's default staging folder, and ``shutil.copyfile`` of the same file into that same
folder is timed as the baseline. The upload itself (to a local ``file://`` store) runs after
the timed region and is waited for before the next measurement; dirty pages are flushed
(``os.sync``) before each one so writeback from the previous copy does not land in it. The
process is not pinned to one CPU here (the S3 cells are).
Methods are interleaved within each repetition and the median per method is reported.
bench_s3.py runs this too and puts the table in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _harness as h

MODES = ("copy", "reflink", "link", "move", "auto")
_FICLONE = 0x40049409


def reflink_supported(folder: Path) -> bool:
    """Whether ``folder``'s filesystem can clone files (FICLONE: btrfs, xfs, bcachefs...)."""
    src, dst = folder / ".reflink-probe-src", folder / ".reflink-probe-dst"
    src.write_bytes(b"x" * 4096)
    try:
        with open(src, "rb") as fs, open(dst, "wb") as fd:
            fcntl.ioctl(fd.fileno(), _FICLONE, fs.fileno())
        return True
    except OSError:
        return False
    finally:
        src.unlink(missing_ok=True)
        dst.unlink(missing_ok=True)


def file_create_cost_us(folder: Path, n: int = 200) -> float:
    """CPU microseconds to create and delete one empty file in ``folder`` (a filesystem fact
    that every staging copy, and shutil.copyfile, pays)."""
    c0 = time.process_time()
    for i in range(n):
        p = folder / f".create-probe-{i}"
        os.close(os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        os.unlink(p)
    return (time.process_time() - c0) / n * 1e6


def run_staging(sizes: list[int], reps: int, scratch: Path) -> dict[str, Any]:
    """Measure every mode at every size; return a JSON-able dict."""
    from artifact_uploader import Uploader

    # Not pinned: the uploader's loop thread may take the other CPU, as it would on a training
    # machine's spare cores; pinned to one CPU, the thread it wakes at hand-off competes with
    # the caller for it and the caller's blocking time would measure the scheduler.
    if h.can_pin():
        os.sched_setaffinity(0, range(os.cpu_count() or 1))
    store = scratch / "staging-store"
    store.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    with Uploader(f"file://{store}", max_concurrency=1) as up:
        folder = Path(up.staging_folder)
        supported = reflink_supported(folder)
        create_us = file_create_cost_us(folder)
        for size in sizes:
            src = scratch / f"staging-src-{size}.bin"
            h.make_files(scratch / "tmp-src", 1, size)[0].rename(src)
            times: dict[str, list[float]] = {m: [] for m in ("shutil.copyfile", *MODES)}
            # Each repetition writes the file several times over (copies, uploads): fewer
            # repetitions for the largest files keep the run short.
            for rep in range(reps if size <= 64 * h.MiB else min(reps, 3)):
                for method in times:
                    os.sync()
                    if method == "shutil.copyfile":
                        dest = folder / f"baseline-{rep}"
                        t0 = time.perf_counter()
                        shutil.copyfile(src, dest)
                        times[method].append(time.perf_counter() - t0)
                        dest.unlink()
                        continue
                    # move consumes its source: give it its own name for the same inode.
                    source = src
                    if method == "move":
                        source = scratch / f"staging-move-{rep}.bin"
                        os.link(src, source)
                    t0 = time.perf_counter()
                    future = up.submit(source, f"s{size}-{method}-{rep}", staging=method)
                    times[method].append(time.perf_counter() - t0)
                    result = future.result()
                    Path(result.uri.removeprefix("file://")).unlink()
            src.unlink()
            base = h.median(times["shutil.copyfile"])
            for method, ts in times.items():
                med = h.median(ts)
                rows.append(
                    {
                        "size": size,
                        "method": method,
                        "median_ms": med * 1e3,
                        "min_ms": min(ts) * 1e3,
                        "vs_copyfile": med / base if base > 0 else None,
                        "runs": len(ts),
                    }
                )
    return {
        "reflink_supported": supported,
        "file_create_us": create_us,
        "filesystem_note": _fs_note(scratch),
        "rows": rows,
    }


def _fs_note(folder: Path) -> str:
    """The filesystem type of ``folder`` (from /proc/mounts), for the report."""
    best, fstype = "", "unknown"
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            _, mnt, typ, *_ = line.split()
            if str(folder.resolve()).startswith(mnt) and len(mnt) > len(best):
                best, fstype = mnt, typ
    except OSError:
        pass
    return fstype


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1 MiB and 64 MiB only, fewer runs")
    args = ap.parse_args()
    sizes = [h.MiB, 64 * h.MiB] if args.quick else [h.MiB, 64 * h.MiB, h.GiB]
    with tempfile.TemporaryDirectory(prefix="bench_staging_") as tmp:
        res = run_staging(sizes, 3 if args.quick else 5, Path(tmp))
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
