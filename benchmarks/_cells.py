"""One measured benchmark cell, run in a fresh process: ``python benchmarks/_cells.py < spec.json``.

The parent (bench_s3.py) writes the spec on stdin (it holds the local server's dummy keys, which
must not appear on a command line) and reads one JSON line from stdout.

Each repetition (``repeat``) gets a new uploader or client. Phase 1 (always): submit every
file, wait for all. Measures wall time, client CPU (this process
and any child it started, e.g. ``use_procs=True``), peak RSS growth, and how long each submit
blocked the caller. Phase 2 (``interference``): time a pure-Python loop alone, then submit the
same files again under other names and run the loop in the main thread until the uploads end;
the ratio of the two loop rates is the interference ratio (1.0: uploads cost the loop nothing).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _harness as h

# Same multipart shape for every tool: the engine's PartPolicy defaults (16 MiB threshold,
# 8 MiB parts); boto3's own default threshold is 8 MiB, which would make it send more requests.
THRESHOLD = 16 * h.MiB
PART = 8 * h.MiB


class _Countdown:
    """Set ``event`` once ``n`` completions were counted (thread-safe)."""

    def __init__(self, n: int) -> None:
        self.left = n
        self.event = threading.Event()
        self._lock = threading.Lock()
        if n == 0:
            self.event.set()

    def done_one(self, *_: Any) -> None:
        with self._lock:
            self.left -= 1
            if self.left <= 0:
                self.event.set()


class _Tool:
    """submit(path, name, countdown) -> blocking call; wait(); close()."""

    submit: Callable[[Path, str, _Countdown], None]

    def wait(self, countdown: _Countdown) -> None:
        countdown.event.wait()

    def close(self) -> None:
        pass


class _Ours(_Tool):
    def __init__(self, spec: dict[str, Any], procs: bool) -> None:
        from artifact_uploader import Uploader

        self.events_seen = 0
        kwargs: dict[str, Any] = {
            "max_concurrency": spec["concurrency"],
            "provider_kwargs": spec["provider_kwargs"],
        }
        if procs:
            kwargs["use_procs"] = True
        if spec.get("events"):
            kwargs["on_event"] = self._on_event
        self.up = Uploader(f"s3://{spec['bucket']}/{spec['prefix']}", **kwargs)

    def _on_event(self, event: Any) -> None:
        self.events_seen += 1

    def submit(self, path: Path, name: str, countdown: _Countdown) -> None:
        self.up.submit(path, name).add_done_callback(countdown.done_one)

    def wait(self, countdown: _Countdown) -> None:
        self.up.flush()  # raises every failure
        countdown.event.wait()

    def close(self) -> None:
        self.up.close()


class _Boto3(_Tool):
    def __init__(self, spec: dict[str, Any]) -> None:
        import boto3
        from boto3.s3.transfer import TransferConfig, create_transfer_manager
        from botocore.config import Config
        from s3transfer.subscribers import BaseSubscriber

        c = spec["concurrency"]
        kw = spec["provider_kwargs"]
        self.client = boto3.session.Session().client(
            "s3",
            endpoint_url=kw["endpoint_url"],
            region_name=kw["region"],
            aws_access_key_id=kw["key"],
            aws_secret_access_key=kw["secret"],
            # The default pool (10) would cap concurrency 16 and 32.
            config=Config(max_pool_connections=max(10, c), s3={"addressing_style": "path"}),
        )
        self.client.head_bucket(Bucket=spec["bucket"])  # warm, as verify=True does for ours
        config = TransferConfig(
            max_concurrency=c,
            use_threads=True,
            multipart_threshold=THRESHOLD,
            multipart_chunksize=PART,
        )
        self.tm = create_transfer_manager(self.client, config)
        self.bucket, self.prefix = spec["bucket"], spec["prefix"]
        self.futures: list[Any] = []

        class Done(BaseSubscriber):  # type: ignore[misc]
            def __init__(self, countdown: _Countdown) -> None:
                self.countdown = countdown

            def on_done(self, future: Any, **kwargs: Any) -> None:
                self.countdown.done_one()

        self._done = Done

    def submit(self, path: Path, name: str, countdown: _Countdown) -> None:
        self.futures.append(
            self.tm.upload(
                str(path),
                self.bucket,
                f"{self.prefix}/{name}",
                subscribers=[self._done(countdown)],
            )
        )

    def wait(self, countdown: _Countdown) -> None:
        countdown.event.wait()
        for f in self.futures:
            f.result()  # raises failures
        self.futures.clear()

    def close(self) -> None:
        self.tm.shutdown()


class _Obstore(_Tool):
    """obstore's Rust core driven from an asyncio loop in a background thread."""

    def __init__(self, spec: dict[str, Any], sizes: list[int]) -> None:
        import obstore
        from obstore.store import S3Store

        kw = spec["provider_kwargs"]
        c = spec["concurrency"]
        self.obstore = obstore
        self.store = S3Store(
            spec["bucket"],
            prefix=spec["prefix"],
            endpoint=kw["endpoint_url"],
            access_key_id=kw["key"],
            secret_access_key=kw["secret"],
            region=kw["region"],
            virtual_hosted_style_request=False,
            client_options={"allow_http": True},
        )
        # Concurrency c in total: multipart files share it between files and parts.
        multipart = [s for s in sizes if s >= THRESHOLD]
        self.outer = min(c, len(multipart)) if multipart else c
        self.inner = max(1, c // self.outer) if multipart else 1
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.sem = asyncio.run_coroutine_threadsafe(self._make_sem(), self.loop).result()
        self.futures: list[Any] = []
        self.obstore.put(self.store, "warm", b"")

    async def _make_sem(self) -> asyncio.Semaphore:
        return asyncio.Semaphore(self.outer)

    async def _put(self, path: Path, name: str, size: int) -> None:
        async with self.sem:
            await self.obstore.put_async(
                self.store,
                name,
                path,
                use_multipart=size >= THRESHOLD,
                chunk_size=PART,
                max_concurrency=self.inner,
            )

    def submit(self, path: Path, name: str, countdown: _Countdown) -> None:
        size = path.stat().st_size
        fut = asyncio.run_coroutine_threadsafe(self._put(path, name, size), self.loop)
        fut.add_done_callback(countdown.done_one)
        self.futures.append(fut)

    def wait(self, countdown: _Countdown) -> None:
        countdown.event.wait()
        for f in self.futures:
            f.result()
        self.futures.clear()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()


def _make_tool(spec: dict[str, Any], files: list[Path]) -> _Tool:
    tool = spec["tool"]
    if tool in ("ours", "ours-procs"):
        return _Ours(spec, procs=tool == "ours-procs")
    if tool == "boto3":
        return _Boto3(spec)
    if tool == "obstore":
        return _Obstore(spec, [f.stat().st_size for f in files])
    raise ValueError(f"unknown tool {tool!r}")


def _upload_all(tool: _Tool, files: list[Path], tag: str) -> tuple[list[float], _Countdown]:
    countdown = _Countdown(len(files))
    blocked = []
    for i, f in enumerate(files):
        s = time.perf_counter()
        tool.submit(f, f"{tag}/obj-{i:05d}", countdown)
        blocked.append(time.perf_counter() - s)
    return blocked, countdown


def _measure(
    spec: dict[str, Any], files: list[Path], tag: str, interference: bool
) -> dict[str, Any]:
    """One repetition with a tool of its own: phase 1, and phase 2 if ``interference``."""
    tool = _make_tool(spec, files)
    try:
        pids = h.descendants(os.getpid())
        others = [p for p in pids if p != os.getpid()]
        rss_base = h.reset_peak_rss(pids)
        cpu0, others0, t0 = time.process_time(), h.cpu_seconds(others), time.perf_counter()
        blocked, countdown = _upload_all(tool, files, tag)
        tool.wait(countdown)
        wall = time.perf_counter() - t0
        cpu = time.process_time() - cpu0 + h.cpu_seconds(others) - others0
        growth = h.peak_rss_growth_mib(rss_base)
        out: dict[str, Any] = {
            "tag": tag,
            "wall": wall,
            "cpu": cpu,
            "rss_growth_mib": growth,
            "submit_blocked_median_ms": h.median(blocked) * 1e3,
            "submit_blocked_p99_ms": h.percentile(blocked, 0.99) * 1e3,
            "helper_processes": len(others),
        }
        if interference:
            before = h.spin_rate(spec.get("spin_seconds", 0.5))
            _, countdown = _upload_all(tool, files, "b")
            chunks, spin_wall, _ = h.spin_until(countdown.event.is_set)
            tool.wait(countdown)
            # The loop alone, before and after: the machine's speed drifts (other load, clocks).
            alone = (before + h.spin_rate(spec.get("spin_seconds", 0.5))) / 2
            out["spin_alone_per_s"] = alone
            out["spin_busy_per_s"] = chunks / spin_wall if spin_wall > 0 else None
            out["spin_wall"] = spin_wall
            out["interference"] = (chunks / spin_wall) / alone if spin_wall > 0.05 else None
        if isinstance(tool, _Ours):
            out["events_seen"] = tool.events_seen
        return out
    finally:
        tool.close()


def run(spec: dict[str, Any]) -> dict[str, Any]:
    """Every repetition of a cell in this one process (each with a new uploader or client,
    peak RSS reset before each): process start-up is paid once per cell."""
    h.pin(h.CLIENT_CPU)
    files = sorted(Path(spec["data_dir"]).iterdir())
    runs = [
        _measure(spec, files, f"a{i}", interference=bool(spec.get("interference")) and i == 0)
        for i in range(int(spec.get("repeat", 1)))
    ]
    return {"runs": runs}


if __name__ == "__main__":
    print(json.dumps(run(json.loads(sys.stdin.read()))))
