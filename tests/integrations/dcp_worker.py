"""A torchrun worker for test_dcp.py (gloo, CPU) and a helper process for its kill tests.

Usage (each rank): ``python -m torch.distributed.run ... dcp_worker.py <spec.json>``.
The spec lists steps run in order on every rank:

- ``{"op": "save", "step": N, "seed": S, "async": bool, "kill_rank": r | null}``: save the state
  dict of ``seed``; with ``kill_rank``, that rank SIGKILLs itself as soon as the first request
  of this save's shard upload finished (so a multipart upload is left open).
- ``{"op": "load", "seed": S}``: load the latest checkpoint on every rank and compare with the
  state dict of ``seed``.

Rank 0 writes what it committed to ``<out>`` (one JSON line per save). ``prune`` mode (no
torchrun): ``python dcp_worker.py prune <root> <options.json> <keep_last> <kill_after>``
prunes and SIGKILLs itself after ``kill_after`` deletions.
"""

from __future__ import annotations

import io
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp

from artifact_uploader import PartPolicy, prune_checkpoints
from artifact_uploader._dcp import CheckpointReader, CheckpointWriter
from artifact_uploader._events import EventKind, UploadEvent

MiB = 1024 * 1024
# Sharded across ranks (DTensor Shard(0)): 12 MiB per rank with two ranks.
SHARDED_ROWS = 96
ROW = 32 * 1024  # float32 -> 128 KiB a row


def full_state(seed: int) -> dict[str, Any]:
    """The whole state dict of ``seed`` as plain tensors (what a one-rank load should see)."""
    g = torch.Generator().manual_seed(seed)
    return {
        "sharded": torch.randn(SHARDED_ROWS, ROW, generator=g),
        "replicated": torch.randn(1000, generator=g),
        "ints": torch.arange(seed, seed + 77, dtype=torch.int64),
        "extra": io.BytesIO(f"seed={seed}".encode() * 100),
    }


def rank_state(seed: int, mesh: Any) -> dict[str, Any]:
    from torch.distributed.tensor import Shard, distribute_tensor

    state = full_state(seed)
    state["sharded"] = distribute_tensor(state["sharded"], mesh, [Shard(0)])
    return state


def empty_like_state(state: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in state.items():
        if isinstance(v, io.BytesIO):
            out[k] = io.BytesIO()
        elif hasattr(v, "to_local"):
            from torch.distributed.tensor import distribute_tensor

            out[k] = distribute_tensor(
                torch.zeros(v.shape, dtype=v.dtype), v.device_mesh, v.placements
            )
        else:
            out[k] = torch.zeros_like(v)
    return out


def same(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Keys whose values differ (tensors byte for byte; BytesIO by content)."""
    bad = []
    for k, v in a.items():
        w = b[k]
        if isinstance(v, io.BytesIO):
            if v.getvalue() != w.getvalue():
                bad.append(k)
            continue
        if hasattr(v, "to_local"):
            v, w = v.to_local(), w.to_local()
        if v.dtype != w.dtype or v.shape != w.shape or not torch.equal(v, w):
            bad.append(k)
    return bad


def run(spec: dict[str, Any]) -> None:
    from torch.distributed.device_mesh import init_device_mesh

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    armed = {"kill": False}

    def on_event(event: UploadEvent) -> None:
        if armed["kill"] and event.kind == EventKind.BYTES_SENT:
            os.kill(os.getpid(), signal.SIGKILL)

    options: dict[str, Any] = {
        "on_event": on_event,
        "max_concurrency": 1,
        "parts": PartPolicy(threshold=6 * MiB, part_size=5 * MiB),
    }
    writer = CheckpointWriter(
        spec["root"],
        provider_kwargs=spec.get("options"),
        staging_dir=spec["staging"],
        commit_timeout=120,
        uploader_options=options,
    )
    out = Path(spec["out"])
    for step in spec["steps"]:
        if step["op"] == "save":
            state = rank_state(step["seed"], mesh)
            writer.set_step(step["step"])
            armed["kill"] = step.get("kill_rank") == rank
            if step.get("async"):
                dcp.async_save(state, storage_writer=writer).result()
            else:
                dcp.save(state, storage_writer=writer)
            committed = writer.wait_durable(120)
            if rank == 0:
                assert committed is not None
                with out.open("a") as f:
                    f.write(json.dumps({"step": committed.step, "save_id": committed.save_id}))
                    f.write("\n")
        elif step["op"] == "load":
            expected = rank_state(step["seed"], mesh)
            loaded = empty_like_state(expected)
            dcp.load(
                loaded,
                storage_reader=CheckpointReader(spec["root"], provider_kwargs=spec.get("options")),
            )
            bad = same(expected, loaded)
            assert not bad, f"rank {rank}: loaded values differ for {bad}"
            dist.barrier()
            if rank == 0:
                with out.open("a") as f:
                    f.write(json.dumps({"loaded": step["seed"]}) + "\n")
    writer.close(120)
    dist.destroy_process_group()


def prune(root: str, options_path: str, keep_last: str, kill_after: str) -> None:
    options = json.loads(Path(options_path).read_text())
    count = {"n": 0}

    def on_delete(name: str) -> None:
        count["n"] += 1
        print(f"deleted {name}", flush=True)
        if count["n"] >= int(kill_after):
            os.kill(os.getpid(), signal.SIGKILL)

    prune_checkpoints(root, keep_last=int(keep_last), provider_kwargs=options, _on_delete=on_delete)


if __name__ == "__main__":
    if sys.argv[1] == "prune":
        prune(*sys.argv[2:6])
    else:
        run(json.loads(Path(sys.argv[1]).read_text()))
