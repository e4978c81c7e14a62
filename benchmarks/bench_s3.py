"""The bundled benchmark: artifact_uploader against boto3's transfer manager and obstore on S3.

Run from the repository root (after the README's set-up)::

    .venv/bin/python benchmarks/bench_s3.py --quick   # < 2 min on 2 idle cores; a temp folder
    .venv/bin/python benchmarks/bench_s3.py           # the full run; writes docs/benchmarks.*

It starts its own moto server on a free loopback port, and a latency proxy in front of it for
the "small @ N ms" workload (``--latency-ms``, default 20; 0 skips it). On a machine with two or
more CPUs the server side (moto, proxy) is pinned to CPU 0 and every measured client process
to CPU 1. Each (workload, concurrency, tool) cell runs in a fresh process (benchmarks/_cells.py)
so that its CPU time and peak RSS are its own; it repeats ``--repeat`` times there (a new
uploader or client each time, peak RSS reset) and the run with the median wall time is
kept. Then the staging modes (benchmarks/bench_staging.py) and progress events on/off are
measured. A short probe before and after (a spin loop pinned to each CPU: how much of it
does it get?) records whether other work was competing for the CPUs; the report warns about a
shared, noisy machine only when it was. Output: a table on stdout, and benchmarks.json,
benchmarks.md and benchmarks.png in ``--out`` (default docs/ for the full run, a temp folder
for ``--quick``).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _harness as h
import _report
from bench_staging import run_staging

CELLS = h.BENCH / "_cells.py"
TOOLS = ("ours", "ours-procs", "boto3", "obstore")


def _procs_supported(scratch: Path) -> tuple[bool, str]:
    """Whether ``Uploader(..., use_procs=True)`` exists in this checkout."""
    from artifact_uploader import ConfigError, Uploader

    store = scratch / "procs-probe"
    store.mkdir(parents=True, exist_ok=True)
    try:
        up = Uploader(f"file://{store}", use_procs=True, verify=False)
    except ConfigError as exc:
        return False, str(exc).split(";")[0]
    except Exception as exc:
        return False, f"{type(exc).__name__}: {exc}"
    up.close()
    return True, ""


def _obstore_installed() -> bool:
    try:
        import obstore  # noqa: F401
    except ImportError:
        return False
    return True


def _create_cost(parent: Path) -> float:
    """CPU us to create + delete an empty file in a fresh folder under ``parent``."""
    from bench_staging import file_create_cost_us

    folder = Path(tempfile.mkdtemp(prefix="create-probe-", dir=parent))
    try:
        return file_create_cost_us(folder)
    finally:
        folder.rmdir()


def _count_objects(server: Any, bucket: str, prefix: str) -> tuple[int, int]:
    s3 = server.client("s3")
    n = total = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for o in page.get("Contents", []):
            n += 1
            total += o["Size"]
    return n, total


def run_cell(
    tool: str,
    workload: dict[str, Any],
    conc: int,
    server: Any,
    bucket: str,
    endpoint: str,
    *,
    interference: bool,
    spin_seconds: float,
    repeat: int = 1,
    events: bool = False,
) -> list[dict[str, Any]]:
    """Run one cell (``repeat`` repetitions in one fresh process); one dict per repetition."""
    slug = workload["name"].replace(" ", "").replace("@", "-")
    prefix = f"{tool}-{slug}-c{conc}-{uuid.uuid4().hex[:6]}"
    spec = {
        "label": f"{tool} {workload['name']} c={conc}",
        "tool": tool,
        "concurrency": conc,
        "data_dir": str(workload["dir"]),
        "bucket": bucket,
        "prefix": prefix,
        "provider_kwargs": server.options(endpoint_url=endpoint),
        "interference": interference,
        "spin_seconds": spin_seconds,
        "repeat": repeat,
        "events": events,
    }
    if workload["size"] >= 16 * h.MiB:
        # Write back the previous cell's dirty pages (staged copies, moto's spooled parts)
        # now, not during this cell.
        os.sync()
    runs: list[dict[str, Any]] = h.run_child(CELLS, spec)["runs"]
    n, size = workload["count"], workload["size"]
    total = n * size
    tags = [r["tag"] for r in runs] + (["b"] if interference else [])
    # The objects really landed (count and bytes): a silent no-op cannot look fast.
    for tag in tags:
        got = _count_objects(server, bucket, f"{prefix}/{tag}/")
        if got != (n, total):
            raise RuntimeError(f"{spec['label']}: {got[0]}/{n} objects landed under {tag}/")
    for res in runs:
        res.update(
            tool=tool,
            workload=workload["name"],
            concurrency=conc,
            objects=n,
            bytes=total,
            mb_per_s=total / 1e6 / res["wall"],
            objects_per_s=n / res["wall"],
            cpu_per_object_ms=res["cpu"] / n * 1e3,
            cpu_per_gib_s=res["cpu"] / (total / h.GiB),
        )
    return runs


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    runs = sorted(runs, key=lambda r: r["wall"])
    best = dict(runs[len(runs) // 2])
    best["walls"] = [r["wall"] for r in runs]
    best["cpus"] = [r["cpu"] for r in runs]
    # Interference is measured in the first repetition only (it doubles a cell's time).
    for r in runs:
        if r.get("interference") is not None:
            for k in ("interference", "spin_alone_per_s", "spin_busy_per_s", "spin_wall"):
                best[k] = r.get(k)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--quick",
        action="store_true",
        help="smaller workloads, concurrency 1 and 16 only (< 2 min on 2 idle cores)",
    )
    ap.add_argument("--repeat", type=int, help="runs per cell, median kept (default 3; quick 1)")
    ap.add_argument("--latency-ms", type=float, default=20.0, help="proxy delay; 0 skips it")
    ap.add_argument("--out", type=Path, help="output folder (default docs/, quick: a temp dir)")
    ap.add_argument("--skip-huge", action="store_true", help="skip the 1 GiB file")
    ap.add_argument(
        "--scratch",
        type=Path,
        help="folder for the test files and the uploaders' staging folders (default: the "
        "system temp folder); staging cost depends on its filesystem",
    )
    ap.add_argument(
        "--staging-scratch",
        type=Path,
        help="folder for the staging-modes measurement (default: the system temp folder)",
    )
    ap.add_argument("--tools", default=",".join(TOOLS), help="comma-separated subset of tools")
    ap.add_argument(
        "--only",
        help="comma-separated subset of: small, large, huge, latency, events, staging",
    )
    ap.add_argument("--levels", help="comma-separated concurrency levels (default 1,2,4,8,16,32)")
    args = ap.parse_args()
    # Stopped with SIGTERM: still stop the servers it started (the finally blocks below).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    quick = args.quick
    repeat = args.repeat or (1 if quick else 3)
    # --quick: the two ends of the range; every level costs a fresh process per tool.
    conc_levels = [1, 16] if quick else [1, 2, 4, 8, 16, 32]
    if args.levels:
        conc_levels = [int(x) for x in args.levels.split(",")]
    parts = {"small", "large", "huge", "latency", "events", "staging"}
    only = set(args.only.split(",")) if args.only else parts
    if only - parts:
        ap.error(f"unknown --only parts {sorted(only - parts)}; known: {', '.join(sorted(parts))}")
    spin_seconds = 0.25 if quick else 0.5
    started = time.perf_counter()
    # Before anything of ours runs: is something else competing for the CPUs?
    probe_start = h.busy_probe()
    out = args.out or (Path(tempfile.gettempdir()) / "artifact-uploader-bench" if quick else h.DOCS)
    out.mkdir(parents=True, exist_ok=True)
    tools = [t for t in args.tools.split(",") if t]
    unknown = set(tools) - set(TOOLS)
    if unknown:
        ap.error(f"unknown tools {sorted(unknown)}; known: {', '.join(TOOLS)}")

    small_wl = {"name": "small", "count": 100 if quick else 500, "size": 64 * h.KiB}
    workloads: list[dict[str, Any]] = []
    if "small" in only:
        workloads.append(small_wl)
    if "large" in only:
        workloads.append(
            {"name": "large", "count": 2 if quick else 4, "size": (32 if quick else 64) * h.MiB}
        )
    if not quick and not args.skip_huge and "huge" in only:
        workloads.append({"name": "1 GiB", "count": 1, "size": h.GiB})
    if args.latency_ms > 0 and "latency" in only:
        workloads.append(
            {
                "name": f"small @ {args.latency_ms:g} ms",
                "count": 100 if quick else 500,
                "size": 64 * h.KiB,
                "latency": True,
                "levels": [1, 16] if quick and not args.levels else conc_levels,
            }
        )

    h.pin(h.CLIENT_CPU)
    notes: dict[str, str] = {}
    results: list[dict[str, Any]] = []
    events_rows: list[dict[str, Any]] = []
    if args.scratch is not None:
        args.scratch.mkdir(parents=True, exist_ok=True)
    system_tmp = Path(tempfile.gettempdir())
    with tempfile.TemporaryDirectory(prefix="bench_s3_", dir=args.scratch) as tmp:
        scratch = Path(tmp)
        # Staging folders (the uploaders' default temporary ones) go under the scratch folder,
        # in this process and in the cell processes.
        staging_tmp = scratch / "tmp"
        staging_tmp.mkdir()
        os.environ["TMPDIR"] = str(staging_tmp)
        tempfile.tempdir = str(staging_tmp)
        fs_probe = {
            "scratch": str(args.scratch or system_tmp),
            "scratch_create_us": _create_cost(staging_tmp),
            "system_tmp": str(system_tmp),
            "system_tmp_create_us": _create_cost(system_tmp),
        }
        if "ours-procs" in tools:
            ok, why = _procs_supported(scratch)
            if not ok:
                tools.remove("ours-procs")
                notes["ours-procs"] = why or "use_procs=True is not available"
        if "obstore" in tools and not _obstore_installed():
            tools.remove("obstore")
            notes["obstore"] = "obstore is not installed (pip install obstore)"
        small_wl["dir"] = scratch / "data" / "small"
        if "small" in only or "latency" in only or "events" in only:
            h.make_files(small_wl["dir"], small_wl["count"], small_wl["size"])
        for wl in workloads:
            if wl.get("latency"):
                wl["dir"] = small_wl["dir"]  # the same files, through the proxy
            elif wl is not small_wl:
                wl["dir"] = scratch / "data" / wl["name"].replace(" ", "")
                h.make_files(wl["dir"], wl["count"], wl["size"])
        server = h.start_moto(scratch)
        proxy = None
        try:
            bucket = f"bench-{uuid.uuid4().hex[:12]}"
            server.client("s3").create_bucket(Bucket=bucket)
            endpoint = proxy_url = server.endpoint_url
            for wl in workloads:
                levels = wl.get("levels", conc_levels)
                huge = wl["size"] >= h.GiB
                if wl.get("latency") and proxy is None:
                    proxy_url, proxy = h.start_proxy(
                        endpoint.removeprefix("http://"), args.latency_ms, scratch
                    )
                for li, conc in enumerate(levels):
                    # Rotate who goes first at each level, so that no tool always meets the
                    # server right after a reset (or right after the heaviest neighbour).
                    for tool in tools[li % len(tools) :] + tools[: li % len(tools)]:
                        if huge:
                            # moto slows down as it accumulates gigabyte objects, even across
                            # resets: every 1 GiB cell gets a server of its own.
                            h.stop(server.process)
                            server = h.start_moto(scratch)
                            server.client("s3").create_bucket(Bucket=bucket)
                            endpoint = server.endpoint_url
                        try:
                            runs = run_cell(
                                tool,
                                wl,
                                conc,
                                server,
                                bucket,
                                proxy_url if wl.get("latency") else endpoint,
                                interference=not huge and not wl.get("latency"),
                                spin_seconds=spin_seconds,
                                repeat=1 if huge or wl.get("latency") else repeat,
                            )
                        except RuntimeError as exc:
                            # One failed cell must not cost the whole run: record it, go on.
                            label = f"{tool} / {wl['name']} / concurrency {conc}"
                            notes[label] = f"failed: {str(exc).splitlines()[0]}"
                            print(f"  {label}: {exc}", file=sys.stderr)
                            continue
                        r = _median_run(runs)
                        results.append(r)
                        print(
                            f"  {wl['name']:>14} c={conc:<2} {tool:10} {r['wall']:6.2f}s "
                            f"{r['mb_per_s']:7.1f} MB/s {r['cpu_per_object_ms']:8.2f} ms CPU/obj",
                            file=sys.stderr,
                        )
                    # Free moto's memory between levels (every object was checked).
                    server.reset()
                    server.client("s3").create_bucket(Bucket=bucket)
            # Progress events: the same small workload with an on_event callback and without.
            small = small_wl
            for conc in ([4] if quick else [4, 16]) if "events" in only else []:
                for events in [False, True] * (2 if quick else 4):
                    try:
                        (r,) = run_cell(
                            "ours",
                            small,
                            conc,
                            server,
                            bucket,
                            endpoint,
                            interference=False,
                            spin_seconds=spin_seconds,
                            events=events,
                        )
                    except RuntimeError as exc:
                        # As above: a failed cell is recorded, the run goes on.
                        label = f"events {'on' if events else 'off'} / concurrency {conc}"
                        notes[label] = f"failed: {str(exc).splitlines()[0]}"
                        print(f"  {label}: {exc}", file=sys.stderr)
                        continue
                    r["events"] = events
                    events_rows.append(r)
                server.reset()
                server.client("s3").create_bucket(Bucket=bucket)
        finally:
            if proxy is not None:
                h.stop(proxy)
            h.stop(server.process)
        staging: dict[str, Any] = {"rows": [], "reflink_supported": False}
        if "staging" in only:
            print("  staging modes...", file=sys.stderr)
            # In the system temp folder (or --staging-scratch), not in --scratch: the S3 cells
            # may run on tmpfs, while staging modes are worth measuring on a disk filesystem.
            with tempfile.TemporaryDirectory(
                prefix="bench_staging_", dir=args.staging_scratch or system_tmp
            ) as st_tmp:
                tempfile.tempdir = st_tmp
                try:
                    staging = run_staging(
                        [h.MiB, 64 * h.MiB] if quick else [h.MiB, 64 * h.MiB, h.GiB],
                        3 if quick else 7,
                        Path(st_tmp),
                    )
                finally:
                    tempfile.tempdir = str(staging_tmp)
            staging["folder"] = str(args.staging_scratch or system_tmp)

    probe_end = h.busy_probe()  # every server and cell of ours has stopped
    order = {wl["name"]: i for i, wl in enumerate(workloads)}
    results.sort(key=lambda r: (order[r["workload"]], r["concurrency"], TOOLS.index(r["tool"])))
    doc = {
        "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(["benchmarks/bench_s3.py", *sys.argv[1:]]),
        "machine": {
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "pinned": h.can_pin(),
            "busy_probe": {"start": probe_start, "end": probe_end},
            "busy": probe_start["busy"] or probe_end["busy"],
        },
        "params": {
            "quick": quick,
            "repeat": repeat,
            "concurrency": conc_levels,
            "latency_ms": args.latency_ms,
            "threshold_mib": 16,
            "part_mib": 8,
            "workloads": [{k: v for k, v in wl.items() if k != "dir"} for wl in workloads],
            "tools": tools,
        },
        "notes": notes,
        "filesystem": fs_probe,
        "results": results,
        "events": events_rows,
        "staging": staging,
        "duration_s": time.perf_counter() - started,
    }
    doc["summary"] = _report.summarize(doc)
    print(_report.stdout_table(doc))
    (out / "benchmarks.json").write_text(json.dumps(doc, indent=2) + "\n")
    try:
        _report.plot(doc, out / "benchmarks.png")
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)", file=sys.stderr)
    (out / "benchmarks.md").write_text(_report.markdown(doc))
    print(
        f"\nwrote {out / 'benchmarks.md'}, benchmarks.json, benchmarks.png "
        f"in {doc['duration_s']:.0f} s"
    )


if __name__ == "__main__":
    main()
