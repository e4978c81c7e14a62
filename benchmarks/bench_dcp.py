"""DCP section of the benchmark: CheckpointWriter against the other ways to put DCP on S3.

Run from the repository root (after the README's set-up, which installs the ``bench-dcp``
extra: torch, s3torchconnector, s3fs)::

    .venv/bin/python benchmarks/bench_dcp.py --quick    # 8 x 8 MiB, one run each, ~3 min
    .venv/bin/python benchmarks/bench_dcp.py            # 8 x 64 MiB float32 + small items

It starts its own moto server on a free loopback port and, for each way and world size (1 and
2, ``torchrun`` with gloo on the CPU), runs one save in fresh processes and measures, per rank:

- caller blocked: how long ``dcp.save`` (or ``dcp.async_save``) held the caller;
- durable after: until every rank's bytes are in the store (for this library: committed);
- client CPU: user + system CPU seconds of the rank's process from before the save to durable;
- peak RSS growth: the process's peak resident size during the save above its size before it.

Each value is the worst rank's (the max over ranks). The ways:

- ``ours`` / ``ours-async``: :class:`artifact_uploader.CheckpointWriter` (``dcp.save`` returns
  once shards are staged; durable = the coordinator's commit).
- ``fs-staging``: plain ``FileSystemWriter`` into the same scratch folder (the target for our
  caller blocking: <= 1.2x of this).
- ``s3torch`` / ``s3torch-async``: s3torchconnector's ``S3StorageWriter`` (Rust CRT client).
- ``fsspec`` / ``fsspec-async``: DCP's ``FsspecWriter`` with s3fs.
- ``fs+boto3``: ``FileSystemWriter`` to the scratch folder, then boto3's ``upload_file`` per file
  (threads), all inside the caller's time.

Ways whose package is missing are reported as skipped. Results: a table on stdout and, with
``--out``, a JSON file. Moto is reset after every run so its memory does not grow.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
MiB = 1024 * 1024
WAYS = (
    "fs-staging",
    "ours",
    "ours-async",
    "s3torch",
    "s3torch-async",
    "fsspec",
    "fsspec-async",
    "fs+boto3",
)
KEY, SECRET, REGION = "testing", "testing", "us-east-1"


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak_rss() -> None:
    """Reset the kernel's peak RSS (VmHWM) so the measured save's peak is its own."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def peak_rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def state_dict(tensor_mib: int, count: int) -> dict[str, Any]:
    import torch

    g = torch.Generator().manual_seed(0)
    n = tensor_mib * MiB // 4
    sd: dict[str, Any] = {f"layer{i}.weight": torch.randn(n, generator=g) for i in range(count)}
    sd["step"] = 1234
    sd["lr"] = torch.tensor(3e-4)
    sd["rng"] = io.BytesIO(os.urandom(4096))
    sd["config"] = {"name": "bench", "layers": count}
    return sd


# -- one rank (run under torchrun) -------------------------------------------------------------


def worker(args: argparse.Namespace) -> None:
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    sd = state_dict(args.tensor_mib, args.tensors)
    bucket, prefix = args.bucket, args.prefix  # the same on every rank
    scratch = Path(args.scratch) / f"{prefix}-rank{rank}"
    scratch.mkdir(parents=True)
    options = {"key": KEY, "secret": SECRET, "region": REGION, "endpoint_url": args.endpoint}
    way = args.way
    is_async = way.endswith("-async")
    finish = None
    # One warm-up save with the same writer first: a training loop saves again and again, so
    # client start-up (SDK clients, thread pools) is not what a save costs. Every way gets it.
    writer = writer_for(args, way, bucket, prefix, scratch, options)
    if way.startswith("ours"):
        writer.set_step(0)
        dcp.save(sd, storage_writer=writer)
        writer.wait_durable(600)
        writer.set_step(1)
        finish = writer.wait_durable
        target = None
    elif way in ("fs-staging", "fs+boto3"):
        dcp.save(sd, storage_writer=writer, checkpoint_id=str(scratch / "warmup"))
        if way == "fs+boto3":
            upload_folder(scratch / "warmup", bucket, f"warmup-{prefix}", args.endpoint, rank)
        target = str(scratch / "ckpt")
    else:
        dcp.save(sd, storage_writer=writer, checkpoint_id=f"s3://{bucket}/warmup-{prefix}")
        target = f"s3://{bucket}/{prefix}"
    dist.barrier()
    reset_peak_rss()
    base_rss = rss_bytes()
    cpu0 = os.times()
    t0 = time.perf_counter()
    if is_async:
        fut = dcp.async_save(sd, storage_writer=writer, checkpoint_id=target)
        blocked = time.perf_counter() - t0
        fut.result()
    else:
        dcp.save(sd, storage_writer=writer, checkpoint_id=target)
        blocked = time.perf_counter() - t0
    if way == "fs+boto3":
        upload_folder(scratch / "ckpt", bucket, prefix, args.endpoint, rank)
        blocked = time.perf_counter() - t0
    if finish is not None:
        finish(600)
    durable = time.perf_counter() - t0
    cpu1 = os.times()
    peak = peak_rss_bytes()
    # ours: the coordinator's commit needs every rank's shards; wait_durable on rank 0 covers it.
    result = {
        "blocked": blocked,
        "durable": durable,
        "cpu": (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system),
        "rss_growth": max(0, peak - base_rss),
    }
    if way.startswith("ours"):
        writer.close(600)
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, result)
    if rank == 0:
        Path(args.result).write_text(json.dumps(gathered))
    dist.destroy_process_group()


def writer_for(
    args: argparse.Namespace,
    way: str,
    bucket: str,
    prefix: str,
    scratch: Path,
    options: dict[str, Any],
) -> Any:
    """The storage writer of ``way`` for one save to ``prefix``."""
    scratch.mkdir(parents=True, exist_ok=True)
    if way.startswith("ours"):
        from artifact_uploader import CheckpointWriter

        return CheckpointWriter(
            f"s3://{bucket}/{prefix}",
            provider_kwargs=options,
            staging_dir=scratch / "staging",
            uploader_options={"max_concurrency": 8},
        )
    if way in ("fs-staging", "fs+boto3"):
        from torch.distributed.checkpoint import FileSystemWriter

        return FileSystemWriter(str(scratch / "ckpt"))
    if way.startswith("s3torch"):
        from s3torchconnector import S3ClientConfig
        from s3torchconnector._s3client import S3Client
        from s3torchconnector.dcp import S3StorageWriter
        from s3torchconnector.dcp.s3_file_system import S3FileSystem

        writer = S3StorageWriter(REGION, f"s3://{bucket}/{prefix}")
        # Its file system builds a client without an endpoint; point one at the local server.
        client = S3Client(
            REGION, endpoint=args.endpoint, s3client_config=S3ClientConfig(force_path_style=True)
        )
        writer.fs = S3FileSystem(REGION, s3_client=client)
        return writer
    if way.startswith("fsspec"):
        from torch.distributed.checkpoint._fsspec_filesystem import FsspecWriter

        return FsspecWriter(
            f"s3://{bucket}/{prefix}",
            key=KEY,
            secret=SECRET,
            client_kwargs={"endpoint_url": args.endpoint, "region_name": REGION},
        )
    raise SystemExit(f"unknown way {way}")


def upload_folder(folder: Path, bucket: str, prefix: str, endpoint: str, rank: int) -> None:
    """The peer "FileSystemWriter + boto3": upload what this rank wrote (rank 0: .metadata too)."""
    import concurrent.futures

    import boto3
    from boto3.s3.transfer import TransferConfig

    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id=KEY,
        aws_secret_access_key=SECRET,
    )
    mine = [p for p in folder.iterdir() if p.name.startswith(f"__{rank}_")]
    if rank == 0:
        mine.append(folder / ".metadata")
    config = TransferConfig(max_concurrency=8)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        for f in [
            pool.submit(s3.upload_file, str(p), bucket, f"{prefix}/{p.name}", Config=config)
            for p in mine
        ]:
            f.result()


# -- the driver ----------------------------------------------------------------------------------


def available(way: str) -> str | None:
    """None if the way can run, else why not."""
    import importlib.util

    need = {"s3torch": "s3torchconnector", "fsspec": "s3fs", "fs+boto3": "boto3"}
    for key, module in need.items():
        if way.startswith(key) and importlib.util.find_spec(module) is None:
            return f"{module} is not installed (pip install '.[bench-dcp]')"
    return None


def run_one(
    way: str, world: int, args: argparse.Namespace, endpoint: str, bucket: str, scratch: Path
) -> dict[str, float]:
    result = scratch / f"result-{uuid.uuid4().hex}.json"
    with tempfile.TemporaryDirectory(dir=scratch) as run_dir:
        env = {
            **os.environ,
            "TMPDIR": run_dir,
            "AWS_ACCESS_KEY_ID": KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET,
            "AWS_REGION": REGION,
            # For writers that build their client again from a path (FsspecWriter.reset).
            "AWS_ENDPOINT_URL": endpoint,
            "OMP_NUM_THREADS": "1",
        }
        argv = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes",
            "1",
            "--nproc_per_node",
            str(world),
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(free_port()),
            str(Path(__file__).resolve()),
            "--worker",
            "--way",
            way,
            "--bucket",
            bucket,
            "--endpoint",
            endpoint,
            "--scratch",
            run_dir,
            "--result",
            str(result),
            "--prefix",
            f"{way}-{uuid.uuid4().hex[:8]}",
            "--tensor-mib",
            str(args.tensor_mib),
            "--tensors",
            str(args.tensors),
        ]
        proc = subprocess.run(
            argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=1800, check=False
        )
    if proc.returncode != 0:
        raise RuntimeError(f"{way} (world {world}) failed:\n{proc.stderr[-3000:]}")
    ranks = json.loads(result.read_text())
    result.unlink()
    return {k: max(r[k] for r in ranks) for k in ranks[0]}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--way", help=argparse.SUPPRESS)
    parser.add_argument("--bucket", help=argparse.SUPPRESS)
    parser.add_argument("--endpoint", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--prefix", help=argparse.SUPPRESS)
    parser.add_argument("--scratch", default=None, help="scratch/staging folder (default /dev/shm)")
    parser.add_argument("--quick", action="store_true", help="8 x 8 MiB, one run each")
    parser.add_argument("--tensor-mib", type=int, default=64)
    parser.add_argument("--tensors", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=1, help="runs per cell (median kept)")
    parser.add_argument("--worlds", default="1,2")
    parser.add_argument("--ways", default=",".join(WAYS))
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    if args.quick:
        args.tensor_mib, args.repeat = 8, 1
    sys.path.insert(0, str(REPO))
    from tests.servers._common import kill_group
    from tests.servers.moto import MOTO_OPTIONS, MotoServer, start_moto_server

    base = Path(
        args.scratch or ("/dev/shm" if Path("/dev/shm").is_dir() else tempfile.gettempdir())
    )
    scratch = Path(tempfile.mkdtemp(prefix="bench-dcp-", dir=base))
    server: MotoServer = start_moto_server(scratch)
    assert MOTO_OPTIONS["key"] == KEY
    s3 = server.client("s3")
    results: dict[str, dict[str, Any]] = {}
    started = time.time()
    try:
        for world in [int(w) for w in args.worlds.split(",")]:
            for way in args.ways.split(","):
                why = available(way)
                cell = f"{way}@{world}"
                if why:
                    results[cell] = {"skipped": why}
                    print(f"{cell:20s} skipped: {why}", flush=True)
                    continue
                runs = []
                for _ in range(args.repeat):
                    bucket = f"bench-{uuid.uuid4().hex[:12]}"
                    s3.create_bucket(Bucket=bucket)
                    try:
                        runs.append(run_one(way, world, args, server.endpoint_url, bucket, scratch))
                    except RuntimeError as exc:
                        results[cell] = {"error": str(exc)[-2000:]}
                        print(f"{cell:20s} FAILED: {str(exc)[-500:]}", flush=True)
                        break
                    finally:
                        server.reset()
                if not runs:
                    continue
                runs.sort(key=lambda r: r["durable"])
                median = runs[len(runs) // 2]
                results[cell] = {**median, "runs": len(runs)}
                print(
                    f"{cell:20s} blocked {median['blocked']:7.2f}s  durable "
                    f"{median['durable']:7.2f}s  cpu {median['cpu']:6.2f}s  rss +"
                    f"{median['rss_growth'] / MiB:6.0f} MiB",
                    flush=True,
                )
    finally:
        kill_group(server.process)
        shutil.rmtree(scratch, ignore_errors=True)
    report = summarize(results, args)
    print(report)
    if args.out:
        Path(args.out).write_text(
            json.dumps(
                {
                    "tensor_mib": args.tensor_mib,
                    "tensors": args.tensors,
                    "repeat": args.repeat,
                    "cells": results,
                    "seconds": time.time() - started,
                    "report": report,
                },
                indent=1,
            )
        )


def summarize(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> str:
    """The targets as ratios, per world size."""
    lines = []
    for world in [int(w) for w in args.worlds.split(",")]:

        def get(way: str, key: str, world: int = world) -> float | None:
            cell = results.get(f"{way}@{world}", {})
            value = cell.get(key)
            return float(value) if value is not None else None

        lines.append(f"world size {world}:")

        def ratio(label: str, ours: float | None, ref: float | None, target: str) -> None:
            if ours is None or ref is None or ref == 0:
                lines.append(f"  {label}: n/a")
                return
            lines.append(f"  {label}: {ours / ref:.2f}x (target {target})")

        ratio(
            "blocked, ours / fs-staging",
            get("ours", "blocked"),
            get("fs-staging", "blocked"),
            "<= 1.2",
        )
        peers = ("s3torch", "s3torch-async", "fsspec", "fsspec-async", "fs+boto3")
        durable = [(get(p, "durable"), p) for p in peers if get(p, "durable") is not None]
        if durable:
            fastest, name = min(durable)  # type: ignore[type-var]
            ratio(
                f"durable, ours / fastest peer ({name})", get("ours", "durable"), fastest, "<= 1.0"
            )
            ratio(
                f"durable, ours-async / fastest peer ({name})",
                get("ours-async", "durable"),
                fastest,
                "<= 1.0",
            )
        ratio("client CPU, ours / s3torch", get("ours", "cpu"), get("s3torch", "cpu"), "<= 0.8")
        ratio(
            "peak RSS growth, ours / s3torch (sync)",
            get("ours", "rss_growth"),
            get("s3torch", "rss_growth"),
            "<= 1.0",
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
