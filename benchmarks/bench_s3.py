"""Concurrency benchmark: artifact_uploader's AsyncUploader vs boto3's transfer manager on moto.

Run from the repository root::

    .venv/bin/python benchmarks/bench_s3.py [--quick]

It starts its own ``moto_server`` on a free loopback port (via ``tests.servers.moto``), pins the
server to CPU 0 and the client to CPU 1 when there are two or more CPUs, and uploads two
workloads ("small": many 64 KiB files; "large": 32 MiB files, multipart for both tools) at
several concurrency levels with each tool. Every (tool, workload, concurrency) cell runs in a
fresh child process so that peak RSS (``ru_maxrss``, which never goes down) and CPU time belong
to that cell alone. Results go to stdout, docs/benchmarks.json, docs/benchmarks.md and
docs/benchmarks.png.

moto is an in-process Python server that saturates about one core, so absolute throughput says
more about moto than about either client; client CPU per object / per GiB is the number to
compare.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as _dt
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
# Same multipart shape for both tools: the engine's PartPolicy defaults (16 MiB threshold, 8 MiB
# parts); boto3's own default threshold is 8 MiB, which would make it send more requests.
THRESHOLD = 16 * MiB
PART = 8 * MiB


def _pin(cpu: int) -> None:
    """Pin this process to ``cpu`` when the machine has at least two CPUs."""
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(0, {cpu})


def _maxrss_mib() -> float:
    """Peak resident set size of this process since its exec, in MiB."""
    # Linux carries ru_maxrss across fork+exec, so a child would report the (larger) parent's
    # peak; VmHWM belongs to the post-exec address space only.
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    # ru_maxrss is KiB on Linux (bytes on macOS; this benchmark targets Linux).
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------- child: one measured cell


def _run_ours(spec: dict[str, Any], files: list[Path]) -> dict[str, Any]:
    import artifact_uploader

    async def main() -> dict[str, Any]:
        opts = dict(spec["provider_kwargs"])
        store = f"s3://{spec['bucket']}/{spec['prefix']}"
        blocked: list[float] = []
        async with artifact_uploader.AsyncUploader(
            store, max_concurrency=spec["concurrency"], provider_kwargs=opts, verify=True
        ) as up:
            # Opening (client creation, reachability check) is outside the timed region, as the
            # boto3 client creation is for the other tool.
            cpu0, t0 = time.process_time(), time.perf_counter()
            for i, f in enumerate(files):
                s = time.perf_counter()
                await up.submit(f, f"obj-{i:05d}")
                blocked.append(time.perf_counter() - s)
            await up.flush()
            wall = time.perf_counter() - t0
            cpu = time.process_time() - cpu0
        return {"wall": wall, "cpu": cpu, "submit_blocked_mean": sum(blocked) / len(blocked)}

    return asyncio.run(main())


def _run_boto3(spec: dict[str, Any], files: list[Path]) -> dict[str, Any]:
    import boto3
    from boto3.s3.transfer import TransferConfig, create_transfer_manager
    from botocore.config import Config

    c = spec["concurrency"]
    kw = spec["provider_kwargs"]
    client = boto3.session.Session().client(
        "s3",
        endpoint_url=kw["endpoint_url"],
        region_name=kw["region"],
        aws_access_key_id=kw["key"],
        aws_secret_access_key=kw["secret"],
        # The default pool (10) would cap concurrency 16; ours defaults to 64.
        config=Config(max_pool_connections=max(10, c), s3={"addressing_style": "path"}),
    )
    client.head_bucket(Bucket=spec["bucket"])  # warm the connection, as verify=True does for ours
    config = TransferConfig(
        max_concurrency=c, use_threads=True, multipart_threshold=THRESHOLD, multipart_chunksize=PART
    )
    cpu0, t0 = time.process_time(), time.perf_counter()
    with create_transfer_manager(client, config) as tm:
        futures = [
            tm.upload(str(f), spec["bucket"], f"{spec['prefix']}/obj-{i:05d}")
            for i, f in enumerate(files)
        ]
        for fut in futures:
            fut.result()
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    return {"wall": wall, "cpu": cpu, "submit_blocked_mean": None}


def child(spec_json: str) -> None:
    """Measure one cell and print its result as one JSON line."""
    _pin(1)
    spec = json.loads(spec_json)
    files = sorted(Path(spec["data_dir"]).iterdir())
    # Import this tool's SDK stack before the RSS baseline so the growth is the transfer's own.
    if spec["tool"] == "artifact_uploader":
        import artifact_uploader.providers.s3  # noqa: F401
    else:
        import boto3.s3.transfer  # noqa: F401
    rss_base = _maxrss_mib()
    run = _run_ours if spec["tool"] == "artifact_uploader" else _run_boto3
    res = run(spec, files)
    res.update(rss_base_mib=rss_base, rss_peak_mib=_maxrss_mib())
    print(json.dumps(res))


# ---------------------------------------------------------------- parent: orchestration


def _make_files(folder: Path, count: int, size: int) -> Path:
    folder.mkdir(parents=True)
    for i in range(count):
        # Random bytes: nothing in the path may profit from compressible data.
        (folder / f"f{i:05d}.bin").write_bytes(os.urandom(size))
    return folder


def run_cell(
    tool: str, workload: str, conc: int, data_dir: Path, server: Any, bucket: str
) -> dict[str, Any]:
    prefix = f"{tool}-{workload}-c{conc}-{uuid.uuid4().hex[:6]}"
    spec = {
        "tool": tool,
        "concurrency": conc,
        "data_dir": str(data_dir),
        "bucket": bucket,
        "prefix": prefix,
        "provider_kwargs": server.options(),
    }
    proc = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(spec)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + str(ROOT)},
        check=False,
    )
    if proc.returncode != 0:
        # stderr may quote the spec; the only secrets in it are moto's dummy ones, but don't echo.
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        raise RuntimeError(f"{tool} {workload} c={conc} failed:\n{tail}")
    res: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    files = list(data_dir.iterdir())
    n = len(files)
    total = sum(f.stat().st_size for f in files)
    # Check the objects really landed (count and bytes), so a silent no-op cannot look fast.
    s3 = server.client("s3")
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=prefix + "/").get("Contents", [])
    if len(listed) != n or sum(o["Size"] for o in listed) != total:
        raise RuntimeError(f"{tool} {workload} c={conc}: {len(listed)}/{n} objects in the bucket")
    res.update(
        tool=tool,
        workload=workload,
        concurrency=conc,
        objects=n,
        bytes=total,
        mb_per_s=total / 1e6 / res["wall"],
        objects_per_s=n / res["wall"],
        cpu_per_object_ms=res["cpu"] / n * 1e3,
        cpu_per_gib_s=res["cpu"] / (total / GiB),
    )
    return res


def _fmt(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


COLUMNS = [
    ("workload", "workload", "s"),
    ("conc", "concurrency", "d"),
    ("tool", "tool", "s"),
    ("wall s", "wall", ".2f"),
    ("MB/s", "mb_per_s", ".1f"),
    ("obj/s", "objects_per_s", ".1f"),
    ("CPU ms/obj", "cpu_per_object_ms", ".2f"),
    ("CPU s/GiB", "cpu_per_gib_s", ".1f"),
    ("peak RSS MiB", "rss_peak_mib", ".0f"),
    ("RSS growth MiB", "rss_growth_mib", ".0f"),
    ("submit blocked ms", "submit_blocked_ms", ".2f"),
]


def table_rows(results: list[dict[str, Any]]) -> list[list[str]]:
    return [[_fmt(r.get(key), spec) for _, key, spec in COLUMNS] for r in results]


def ratios(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    by = {(r["tool"], r["workload"], r["concurrency"]): r for r in results}
    for (tool, wl, c), ours in by.items():
        if tool != "artifact_uploader" or ("boto3", wl, c) not in by:
            continue
        theirs = by[("boto3", wl, c)]
        out.append(
            {
                "workload": wl,
                "concurrency": c,
                "cpu_per_object": ours["cpu_per_object_ms"] / theirs["cpu_per_object_ms"],
                "throughput": ours["mb_per_s"] / theirs["mb_per_s"],
            }
        )
    return out


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workloads = sorted({r["workload"] for r in results}, key=["small", "large"].index)
    fig, axes = plt.subplots(2, len(workloads), figsize=(5 * len(workloads), 7), squeeze=False)
    for col, wl in enumerate(workloads):
        for tool, marker in (("artifact_uploader", "o-"), ("boto3", "s--")):
            rows = sorted(
                (r for r in results if r["workload"] == wl and r["tool"] == tool),
                key=lambda r: r["concurrency"],
            )
            xs = [r["concurrency"] for r in rows]
            axes[0][col].plot(xs, [r["mb_per_s"] for r in rows], marker, label=tool)
            axes[1][col].plot(xs, [r["cpu_per_object_ms"] for r in rows], marker, label=tool)
        axes[0][col].set_title(f"{wl}: throughput")
        axes[0][col].set_ylabel("MB/s")
        axes[1][col].set_title(f"{wl}: client CPU per object")
        axes[1][col].set_ylabel("CPU ms / object")
        for ax in (axes[0][col], axes[1][col]):
            ax.set_xscale("log", base=2)
            ax.set_xlabel("concurrency")
            ax.set_xticks(xs, [str(x) for x in xs])
            ax.set_ylim(bottom=0)
            ax.grid(alpha=0.3)
            ax.legend()
    fig.suptitle("artifact_uploader vs boto3 transfer manager, moto_server on loopback")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_markdown(doc: dict[str, Any], path: Path) -> None:
    m = doc["machine"]
    p = doc["params"]
    head = [c[0] for c in COLUMNS]
    lines = [
        "# Benchmarks: S3 concurrency (moto)",
        "",
        f"Generated by `benchmarks/bench_s3.py{' --quick' if p['quick'] else ''}` on "
        f"{doc['date']}. Machine: {m['cpu_count']} CPUs, Python {m['python']} "
        f"({m['platform']}); server pinned to CPU 0 and client to CPU 1: {m['pinned']}.",
        "",
        "**Read this first.** The server is moto, a pure-Python S3 emulator that tops out at "
        "roughly one core; past a few concurrent requests the wall time and MB/s measure moto, "
        "not the client. The client-side numbers (CPU per object / per GiB, RSS, submit "
        f"blocking) are the meaningful comparison. Each cell ran {p['repeat']} times, each in a "
        "fresh process; the run with the median wall time is shown (all wall times are in "
        "benchmarks.json). Runs are sub-second in quick mode: treat differences under ~20 % "
        "as noise.",
        "",
        "Workloads: "
        f"*small* = {p['small_count']} x {p['small_size'] // KiB} KiB files; "
        f"*large* = {p['large_count']} x {p['large_size'] // MiB} MiB files "
        f"(multipart for both tools: threshold {THRESHOLD // MiB} MiB, parts {PART // MiB} MiB). "
        "Random bytes, files already in the page cache. "
        'artifact_uploader: `AsyncUploader(max_concurrency=c)`, default `staging="copy"` '
        "(so its wall time and CPU include copying every file into staging), timed from the "
        "first `submit` to the end of `flush()`. boto3: one `TransferManager` with "
        "`TransferConfig(max_concurrency=c, use_threads=True)`, all files submitted then "
        "awaited, client pool `max_pool_connections=max(10, c)`. Client/uploader creation and a "
        "first request are outside the timed region for both. CPU = `time.process_time()` "
        "delta of the client process (all threads). Peak RSS = the cell process's "
        "peak (`VmHWM`; `ru_maxrss` would include the parent's peak, Linux keeps it across "
        "exec); RSS growth = peak minus peak right after imports. "
        "Submit blocked = mean time one `await up.submit(...)` took (staging).",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" for _ in head) + "|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(doc["results"])]
    lines += [
        "",
        "## Ratios (artifact_uploader / boto3)",
        "",
        "CPU per object below 1 means ours uses less client CPU; throughput above 1 means ours "
        "is faster.",
        "",
        "| workload | conc | CPU per object | throughput |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {r['workload']} | {r['concurrency']} | {r['cpu_per_object']:.2f} | "
        f"{r['throughput']:.2f} |"
        for r in doc["ratios"]
    ]
    lines += ["", "![throughput and CPU per object vs concurrency](benchmarks.png)", ""]
    path.write_text("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer files and concurrency levels")
    ap.add_argument("--repeat", type=int, default=3, help="runs per cell; the median is kept")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child)
        return

    sys.path[:0] = [str(ROOT / "src"), str(ROOT)]
    from tests.servers.moto import kill_group, start_moto_server

    quick = args.quick
    params = {
        "quick": quick,
        "repeat": args.repeat,
        "small_count": 60 if quick else 200,
        "small_size": 64 * KiB,
        "large_count": 1 if quick else 2,
        "large_size": 32 * MiB,
        "concurrency": [1, 4] if quick else [1, 4, 16],
    }
    pinned = hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) >= 2
    DOCS.mkdir(exist_ok=True)
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench_s3_") as tmp:
        tmpdir = Path(tmp)
        data = {
            "small": _make_files(tmpdir / "small", params["small_count"], params["small_size"]),
            "large": _make_files(tmpdir / "large", params["large_count"], params["large_size"]),
        }
        server = start_moto_server(tmpdir)
        try:
            if pinned:
                os.sched_setaffinity(server.process.pid, {0})
            _pin(1)
            bucket = f"bench-{uuid.uuid4().hex[:12]}"
            server.client("s3").create_bucket(Bucket=bucket)
            for workload in ("small", "large"):
                for conc in params["concurrency"]:
                    for tool in ("artifact_uploader", "boto3"):
                        # Each repetition in a fresh process; keep the one with the median
                        # wall time, and every wall time so the spread is visible.
                        reps = sorted(
                            (
                                run_cell(tool, workload, conc, data[workload], server, bucket)
                                for _ in range(args.repeat)
                            ),
                            key=lambda x: x["wall"],
                        )
                        r = reps[len(reps) // 2]
                        r["walls"] = [x["wall"] for x in reps]
                        r["rss_growth_mib"] = r["rss_peak_mib"] - r["rss_base_mib"]
                        sb = r.pop("submit_blocked_mean")
                        r["submit_blocked_ms"] = None if sb is None else sb * 1e3
                        results.append(r)
                        print(
                            f"  done {workload:5} c={conc:<2} {tool:17} {r['wall']:.2f}s",
                            file=sys.stderr,
                        )
                    # Free moto's memory between concurrency levels (objects were checked).
                    server.reset()
                    server.client("s3").create_bucket(Bucket=bucket)
        finally:
            kill_group(server.process)

    doc = {
        "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": {
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "pinned": pinned,
        },
        "params": params,
        "results": results,
        "ratios": ratios(results),
    }
    head = [c[0] for c in COLUMNS]
    rows = table_rows(results)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    print("  ".join(h.rjust(w) for h, w in zip(head, widths, strict=True)))
    for row in rows:
        print("  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)))
    print()
    for r in doc["ratios"]:
        print(
            f"ours/boto3 {r['workload']:5} c={r['concurrency']:<2} "
            f"CPU/object {r['cpu_per_object']:.2f}  throughput {r['throughput']:.2f}"
        )
    (DOCS / "benchmarks.json").write_text(json.dumps(doc, indent=2) + "\n")
    plot(results, DOCS / "benchmarks.png")
    write_markdown(doc, DOCS / "benchmarks.md")
    print(f"\nwrote {DOCS / 'benchmarks.json'}, benchmarks.md, benchmarks.png")


if __name__ == "__main__":
    main()
