"""Download benchmark: ``AsyncUploader.download`` against boto3's ``download_file`` and obstore's
``get`` on S3 (a local moto server), in one run, so the ratios compare like with like.

Run from the repository root (after the README's set-up)::

    .venv/bin/python benchmarks/bench_download.py --quick   # ~1-2 min on 2 idle cores
    .venv/bin/python benchmarks/bench_download.py           # full run: docs/downloads.md's table

It starts its own moto server on a free loopback port (pinned to CPU 0 where there are two
CPUs; every measured client process is pinned to CPU 1), uploads the workloads once with
artifact_uploader (so the objects carry the checksums it records: CRC32C, composite for the
multipart ones), then downloads every workload with each tool, each (workload, tool,
concurrency) cell in a fresh process so its CPU time is its own. Measured per cell: wall time,
client CPU time (user + system of the whole process, every thread; the tool's modules are
imported before the clock starts, its client or uploader is created inside the measurement),
throughput, CPU per object and per GiB. Every downloaded file's size is checked, and ours also
verifies its checksum (boto3 and obstore, as called here, do not verify the body against the
store's checksum).

The tools:

- ``ours``: ``AsyncUploader("s3://...").download(name, dest)`` for every object at once under
  ``max_concurrency`` = the cell's concurrency (ranges of 8 MiB at >= 16 MiB).
- ``boto3``: ``client.download_file`` (``S3Transfer``, the transfer manager's ranged, threaded
  download; 8 MiB parts at >= 16 MiB), ``max_concurrency`` = concurrency, objects downloaded by
  as many threads as the concurrency allows, sharing one client.
- ``obstore``: ``obstore.get_async`` streamed to the file, ``concurrency`` objects at once
  (obstore's ``get`` is one GET per object).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as _dt
import json
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _harness as h

TOOLS = ("ours", "boto3", "obstore")
THRESHOLD = 16 * h.MiB
PART = 8 * h.MiB
DOC = h.DOCS / "downloads.md"
START, END = "<!-- bench_download:start -->", "<!-- bench_download:end -->"


# ------------------------------------------------------------------------- one cell (child)


async def _ours(spec: dict[str, Any], names: list[str], out: Path) -> None:
    from artifact_uploader import AsyncUploader, PartPolicy

    async with AsyncUploader(
        f"s3://{spec['bucket']}/{spec['prefix']}",
        provider_kwargs=spec["provider_kwargs"],
        max_concurrency=spec["concurrency"],
        parts=PartPolicy(threshold=THRESHOLD, part_size=PART),
    ) as up:
        results = await asyncio.gather(*(up.download(n, out / n) for n in names))
    unverified = [r.name for r in results if r.checksum_algorithm is None]
    if unverified:
        raise RuntimeError(f"downloaded without a checksum to verify: {unverified[:3]}")


def _boto3(spec: dict[str, Any], names: list[str], out: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    import boto3
    from boto3.s3.transfer import TransferConfig
    from botocore.config import Config

    c = spec["concurrency"]
    kw = spec["provider_kwargs"]
    client = boto3.session.Session().client(
        "s3",
        endpoint_url=kw["endpoint_url"],
        region_name=kw["region"],
        aws_access_key_id=kw["key"],
        aws_secret_access_key=kw["secret"],
        config=Config(max_pool_connections=max(10, c), s3={"addressing_style": "path"}),
    )
    config = TransferConfig(
        max_concurrency=c, multipart_threshold=THRESHOLD, multipart_chunksize=PART
    )

    def one(name: str) -> None:
        key = f"{spec['prefix']}/{name}"
        client.download_file(spec["bucket"], key, str(out / name), Config=config)

    # Large objects: one at a time, each using ``c`` threads; small ones: ``c`` at once.
    workers = 1 if spec["large"] else c
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, names))


async def _obstore(spec: dict[str, Any], names: list[str], out: Path) -> None:
    import obstore
    from obstore.store import S3Store

    kw = spec["provider_kwargs"]
    store = S3Store(
        spec["bucket"],
        prefix=spec["prefix"],
        endpoint=kw["endpoint_url"],
        access_key_id=kw["key"],
        secret_access_key=kw["secret"],
        region=kw["region"],
        virtual_hosted_style_request=False,
        client_options={"allow_http": True},
    )
    sem = asyncio.Semaphore(spec["concurrency"])

    async def one(name: str) -> None:
        async with sem:
            resp = await obstore.get_async(store, name)
            # Plain blocking writes, as a user of obstore's get would write (and as cheap).
            with open(out / name, "wb") as f:  # noqa: ASYNC230
                async for chunk in resp.stream(min_chunk_size=PART):
                    f.write(chunk)

    await asyncio.gather(*(one(n) for n in names))


def _preimport(tool: str) -> None:
    """Import the tool's modules before the clock starts: a long-lived process pays that once.
    Creating the client / uploader (sessions, credential resolution) stays measured."""
    if tool == "ours":
        import aiobotocore.session  # noqa: F401

        import artifact_uploader.providers.s3  # noqa: F401
    elif tool == "boto3":
        import boto3.s3.transfer  # noqa: F401
    else:
        import obstore.store  # noqa: F401


def run_cell(spec: dict[str, Any]) -> dict[str, Any]:
    h.pin(h.CLIENT_CPU)
    _preimport(spec["tool"])
    names: list[str] = spec["names"]
    runs = []
    for _ in range(spec["repeat"]):
        out = Path(tempfile.mkdtemp(prefix="dl-", dir=spec["scratch"]))
        try:
            c0, t0 = time.process_time(), time.perf_counter()
            if spec["tool"] == "ours":
                asyncio.run(_ours(spec, names, out))
            elif spec["tool"] == "boto3":
                _boto3(spec, names, out)
            else:
                asyncio.run(_obstore(spec, names, out))
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            got = sum((out / n).stat().st_size for n in names)
            if got != spec["bytes"]:
                raise RuntimeError(f"{spec['tool']}: {got} of {spec['bytes']} bytes downloaded")
            runs.append({"wall": wall, "cpu": cpu})
        finally:
            shutil.rmtree(out, ignore_errors=True)
    return {"runs": runs}


# ------------------------------------------------------------------------- the run (parent)


async def _populate(server: Any, bucket: str, prefix: str, files: list[Path]) -> None:
    from artifact_uploader import AsyncUploader, PartPolicy

    async with AsyncUploader(
        f"s3://{bucket}/{prefix}",
        provider_kwargs=server.options(),
        max_concurrency=8,
        parts=PartPolicy(threshold=THRESHOLD, part_size=PART),
    ) as up:
        await asyncio.gather(*(up.upload(f, f.name) for f in files))


def _cell(
    tool: str, workload: dict[str, Any], conc: int, server: Any, bucket: str, args: Any
) -> dict[str, Any]:
    spec = {
        "label": f"{tool} {workload['name']} c={conc}",
        "tool": tool,
        "concurrency": conc,
        "bucket": bucket,
        "prefix": workload["prefix"],
        "names": workload["names"],
        "bytes": workload["count"] * workload["size"],
        "large": workload["size"] >= THRESHOLD,
        "provider_kwargs": server.options(),
        "repeat": args.repeat,
        "scratch": str(args.scratch),
    }
    runs = _run_child(spec)["runs"]
    best = sorted(runs, key=lambda r: r["wall"])[len(runs) // 2]
    total, n = spec["bytes"], workload["count"]
    return {
        "tool": tool,
        "workload": workload["name"],
        "concurrency": conc,
        "wall": best["wall"],
        "cpu": best["cpu"],
        "mb_per_s": total / 1e6 / best["wall"],
        "cpu_per_object_ms": best["cpu"] / n * 1e3,
        "cpu_per_gib_s": best["cpu"] / (total / h.GiB),
    }


def _run_child(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one cell in a fresh process (spec on stdin: it holds the server's dummy keys)."""
    import subprocess

    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--cell"],
        input=json.dumps(spec),
        capture_output=True,
        text=True,
        cwd=h.ROOT,
        env=h.child_env(),
        timeout=1800,
        check=False,
    )
    try:
        result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        raise RuntimeError(
            f"{spec['label']} failed (exit status {proc.returncode}):\n{tail}"
        ) from None
    return result


def _table(results: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| workload | conc. | tool | MB/s | CPU ms/object | CPU s/GiB "
        "| CPU vs boto3 | CPU vs obstore | MB/s vs boto3 | MB/s vs obstore |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    index = {(r["workload"], r["concurrency"], r["tool"]): r for r in results}
    for r in results:
        key = (r["workload"], r["concurrency"])
        cells = []
        for other in ("boto3", "obstore"):
            o = index.get((*key, other))
            cells.append(f"{r['cpu'] / o['cpu']:.2f}" if o and o["cpu"] else "")
        for other in ("boto3", "obstore"):
            o = index.get((*key, other))
            cells.append(f"{r['mb_per_s'] / o['mb_per_s']:.2f}" if o else "")
        lines.append(
            f"| {r['workload']} | {r['concurrency']} | {r['tool']} | {r['mb_per_s']:.0f} "
            f"| {r['cpu_per_object_ms']:.2f} | {r['cpu_per_gib_s']:.2f} | "
            + " | ".join(cells)
            + " |"
        )
    return lines


def _write_doc(lines: list[str], meta: dict[str, Any]) -> None:
    text = DOC.read_text()
    if START not in text or END not in text:
        raise RuntimeError(f"{DOC} has no {START} ... {END} section to fill")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    when = meta["when"]
    quick = " --quick" if meta["quick"] else ""
    body = "\n".join(
        [
            START,
            "",
            f"Measured {when} with `benchmarks/bench_download.py{quick}` on {meta['machine']};"
            f" median of {meta['repeat']} run(s) per cell; client pinned to one CPU, moto to the"
            f" other. Machine busy before/after: {meta['busy']}.",
            "",
            *lines,
            "",
            END,
        ]
    )
    DOC.write_text(head + body + tail)


def main() -> None:
    if sys.argv[1:] == ["--cell"]:
        # A cell: the spec (with the local server's dummy keys) arrives on stdin.
        print(json.dumps(run_cell(json.load(sys.stdin))))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller workloads, concurrency 8 only")
    ap.add_argument("--repeat", type=int, help="runs per cell, median kept (default 3; quick 1)")
    ap.add_argument("--levels", help="comma-separated concurrency levels (default 1,4,16)")
    ap.add_argument("--tools", default=",".join(TOOLS), help="comma-separated subset of tools")
    ap.add_argument("--scratch", type=Path, help="folder for test files and downloads")
    ap.add_argument(
        "--no-doc", action="store_true", help="print the table only (never rewrite the docs)"
    )
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    args.repeat = args.repeat or (1 if args.quick else 3)
    levels = (
        [int(x) for x in args.levels.split(",")]
        if args.levels
        else ([8] if args.quick else [1, 4, 16])
    )
    tools = [t for t in args.tools.split(",") if t]
    try:
        import obstore  # noqa: F401
    except ImportError:
        tools = [t for t in tools if t != "obstore"]
        print("obstore is not installed (the bench extra): skipped", file=sys.stderr)
    workloads = [
        {"name": "small 256 KiB", "count": 64 if args.quick else 256, "size": 256 * h.KiB},
        {"name": "large 64 MiB", "count": 2 if args.quick else 6, "size": 64 * h.MiB},
    ]
    owned_scratch = args.scratch is None
    scratch = Path(tempfile.mkdtemp(prefix="bench-download-")) if owned_scratch else args.scratch
    args.scratch = scratch
    scratch.mkdir(parents=True, exist_ok=True)
    h.pin(h.CLIENT_CPU)
    busy_before = h.busy_probe()["busy"]
    server = h.start_moto(scratch)
    results: list[dict[str, Any]] = []
    try:
        bucket = f"bench-dl-{uuid.uuid4().hex[:8]}"
        server.client("s3").create_bucket(Bucket=bucket)
        for w in workloads:
            slug = w["name"].split()[0]
            files = h.make_files(scratch / f"src-{slug}", w["count"], w["size"])
            w["prefix"] = f"dl-{slug}"
            w["names"] = [f.name for f in files]
            asyncio.run(_populate(server, bucket, w["prefix"], files))
            for f in files:
                f.unlink()
        for w in workloads:
            for conc in levels:
                for tool in tools:
                    r = _cell(tool, w, conc, server, bucket, args)
                    results.append(r)
                    print(
                        f"{w['name']:>14} c={conc:<3} {tool:<8} {r['mb_per_s']:8.1f} MB/s "
                        f"{r['cpu_per_object_ms']:8.2f} CPU ms/obj {r['cpu_per_gib_s']:7.2f} "
                        f"CPU s/GiB",
                        flush=True,
                    )
    finally:
        h.stop(server.process)
        if owned_scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    busy_after = h.busy_probe()["busy"]
    lines = _table(results)
    print("\n".join(lines))
    meta = {
        "when": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "quick": args.quick,
        "repeat": args.repeat,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}",
        "busy": f"{busy_before}/{busy_after}",
    }
    if not args.no_doc:
        _write_doc(lines, meta)
        print(f"wrote the table into {DOC}", file=sys.stderr)


if __name__ == "__main__":
    main()
