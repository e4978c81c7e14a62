"""torch.distributed.checkpoint on the engine: round trips, resharding, kills, retention.

The distributed tests start ``torchrun --nproc_per_node 2`` (gloo, CPU) on dcp_worker.py;
they are few because each start costs seconds on a 2-core machine. The rest run in this process
(one rank, no process group) against ``file://`` and moto.
"""

from __future__ import annotations

import io
import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import skip_outside_ci
from tests.servers.moto import MotoServer, list_multipart_uploads, list_s3_keys

try:
    import torch
    import torch.distributed.checkpoint as dcp
except ImportError:  # pragma: no cover - the dcp extra is part of dev
    skip_outside_ci("torch is not installed (the dcp extra)")

from artifact_uploader import (
    CheckpointError,
    CheckpointNotCommittedError,
    ConfigError,
    latest_checkpoint,
    list_checkpoints,
    prune_checkpoints,
    resume_checkpoints,
)
from artifact_uploader._commit import choose_retained
from artifact_uploader._dcp import CheckpointReader, CheckpointWriter
from tests.integrations import dcp_worker

pytestmark = [
    pytest.mark.timeout(600),
    pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning"),
]

WORKER = Path(__file__).with_name("dcp_worker.py")
REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def torchrun(
    spec: dict[str, Any], tmp_path: Path, timeout: float = 400
) -> subprocess.CompletedProcess[str]:
    spec_path = tmp_path / f"spec-{free_port()}.json"
    spec_path.write_text(json.dumps(spec))
    argv = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        "1",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        str(WORKER),
        str(spec_path),
    ]
    return subprocess.run(
        argv, cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False
    )


def out_lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def load_full(root: str, options: dict[str, Any] | None, **kw: Any) -> dict[str, Any]:
    """Load into one rank's plain tensors (resharding a 2-rank DTensor checkpoint)."""
    loaded = {
        k: io.BytesIO() if isinstance(v, io.BytesIO) else torch.zeros_like(v)
        for k, v in dcp_worker.full_state(0).items()
    }
    reader = CheckpointReader(root, provider_kwargs=options, **kw)
    reader.resolve()  # a typed error here; dcp.load would wrap it in its own
    dcp.load(loaded, storage_reader=reader)
    return loaded


def save_one(
    root: str, step: int, seed: int, options: dict[str, Any] | None = None, **kw: Any
) -> Any:
    with CheckpointWriter(root, provider_kwargs=options, **kw) as writer:
        writer.set_step(step)
        dcp.save(dcp_worker.full_state(seed), storage_writer=writer)
        return writer.wait_durable(120)


# -- torchrun: two ranks ------------------------------------------------------------------------


def round_trip(root: str, options: dict[str, Any] | None, tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    spec = {
        "root": root,
        "options": options,
        "staging": str(tmp_path / "staging"),
        "out": str(out),
        "steps": [
            {"op": "save", "step": 1, "seed": 1},
            {"op": "save", "step": 2, "seed": 2, "async": True},
            {"op": "load", "seed": 2},
            # Saving step 2 again publishes a new generation; the load sees it whole.
            {"op": "save", "step": 2, "seed": 3},
            {"op": "load", "seed": 3},
        ],
    }
    proc = torchrun(spec, tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = out_lines(out)
    assert [line.get("loaded") for line in lines if "loaded" in line] == [2, 3]
    saves = [line for line in lines if "save_id" in line]
    assert [s["step"] for s in saves] == [1, 2, 2]
    latest = latest_checkpoint(root, provider_kwargs=options)
    assert latest is not None
    assert (latest.step, latest.generation, latest.save_id) == (2, 2, saves[2]["save_id"])
    assert latest.world_size == 2
    # Resharding: the 2-rank DTensor checkpoint loads into one process's plain tensors.
    assert dcp_worker.same(dcp_worker.full_state(3), load_full(root, options)) == []
    older = load_full(root, options, step=1)
    assert dcp_worker.same(dcp_worker.full_state(1), older) == []
    # The earlier save of step 2 is still committed (no retention) and loads whole.
    gen1 = load_full(root, options, step=2, save_id=saves[1]["save_id"])
    assert dcp_worker.same(dcp_worker.full_state(2), gen1) == []


def test_torchrun_round_trip_file(tmp_path: Path) -> None:
    round_trip((tmp_path / "store").as_uri(), None, tmp_path)


def test_torchrun_round_trip_s3(tmp_path: Path, moto_server: MotoServer, s3_bucket: str) -> None:
    round_trip(f"s3://{s3_bucket}/run-7", moto_server.options(), tmp_path)


def test_torchrun_sigkill_mid_save_keeps_previous(
    tmp_path: Path, moto_server: MotoServer, s3_bucket: str, moto_s3: Any
) -> None:
    root, options = f"s3://{s3_bucket}/run-9", moto_server.options()
    out = tmp_path / "out.jsonl"
    staging = tmp_path / "staging"
    spec = {
        "root": root,
        "options": options,
        "staging": str(staging),
        "out": str(out),
        "steps": [
            {"op": "save", "step": 5, "seed": 1},
            # The same step again: rank 1 dies after its first shard request.
            {"op": "save", "step": 5, "seed": 2, "kill_rank": 1},
        ],
    }
    proc = torchrun(spec, tmp_path)
    assert proc.returncode != 0
    saves = out_lines(out)
    assert len(saves) == 1, saves
    first = saves[0]["save_id"]

    latest = latest_checkpoint(root, provider_kwargs=options)
    assert latest is not None and (latest.step, latest.save_id) == (5, first)
    # Never a mixture: every value is the first save's.
    assert dcp_worker.same(dcp_worker.full_state(1), load_full(root, options)) == []

    # Rank 1 was killed between parts of its shard: a multipart upload is open, in the
    # partial save's location.
    # (Rank 0's may be open there too, when torchrun stopped it mid-upload.)
    open_uploads = list_multipart_uploads(moto_s3, s3_bucket)
    assert open_uploads, open_uploads
    locations = {u["Key"].split("/")[2] for u in open_uploads}
    assert len(locations) == 1, open_uploads
    partial_id = locations.pop()
    assert partial_id != first
    # Whether rank 0's shard landed before torchrun stopped it depends on the machine's load:
    # the partial location holds at most that one shard, never a commit record or .metadata.
    keys = list_s3_keys(moto_s3, s3_bucket, "run-9/step-0000000005/")
    assert {k.split("/")[2] for k in keys} <= {first, partial_id}, keys
    in_partial = [k for k in keys if k.split("/")[2] == partial_id]
    assert all(k.endswith(".distcp") for k in in_partial), in_partial
    with pytest.raises(CheckpointNotCommittedError, match=partial_id) as info:
        CheckpointReader(root, step=5, save_id=partial_id, provider_kwargs=options).resolve()
    assert "commit record" in str(info.value) and ".metadata" in str(info.value)
    # What the killed ranks were serializing or had staged is left beside / in their staging.
    assert list(staging.glob("scratch-*")) != []

    deleted = resume_checkpoints(root, staging, provider_kwargs=options)
    assert deleted == ([f"step-0000000005/{partial_id}"] if in_partial else []), deleted
    assert list(staging.glob("scratch-*")) == []
    assert list_multipart_uploads(moto_s3, s3_bucket) == []
    assert {k.split("/")[2] for k in list_s3_keys(moto_s3, s3_bucket, "run-9/step-")} == {first}
    assert dcp_worker.same(dcp_worker.full_state(1), load_full(root, options)) == []


# -- one process ----------------------------------------------------------------------------


def test_kill_during_retention_never_exposes_torn(
    tmp_path: Path, moto_server: MotoServer, s3_bucket: str
) -> None:
    root, options = f"s3://{s3_bucket}/keep", moto_server.options()
    for step in (1, 2, 3):
        save_one(root, step, step, options)
    options_path = tmp_path / "options.json"
    options_path.write_text(json.dumps(options))
    # keep_last=1 deletes steps 2 and 1; killed after the second deletion (step 2's commit
    # record, then its .metadata), before its shard is gone.
    proc = subprocess.run(
        [sys.executable, str(WORKER), "prune", root, str(options_path), "1", "2"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == -9, proc.stderr[-3000:]
    assert proc.stdout.count("deleted ") == 2
    remaining = list_checkpoints(root, provider_kwargs=options)
    assert sorted(c.step for c in remaining) == [1, 3]
    for ckpt in remaining:  # every commit still visible is whole and loads
        loaded = load_full(root, options, step=ckpt.step)
        assert dcp_worker.same(dcp_worker.full_state(ckpt.step), loaded) == []
    with pytest.raises(CheckpointNotCommittedError, match="step 2"):
        load_full(root, options, step=2)
    deleted = prune_checkpoints(root, keep_last=1, provider_kwargs=options)
    assert [c.step for c in deleted] == [1]
    assert [c.step for c in list_checkpoints(root, provider_kwargs=options)] == [3]
    # The half-deleted step 2 is an uncommitted location; resume's clean-up removes it.
    assert resume_checkpoints(root, tmp_path / "none", provider_kwargs=options) != []
    assert latest_checkpoint(root, provider_kwargs=options).step == 3  # type: ignore[union-attr]


def test_writer_retention_keeps_last_and_best(tmp_path: Path) -> None:
    root = (tmp_path / "store").as_uri()
    metrics = {1: 0.9, 2: 0.1, 3: 0.5, 4: 0.4, 5: 0.3}
    with CheckpointWriter(root, keep_last=2, keep_best=1, best="max") as writer:
        for step, metric in metrics.items():
            writer.set_step(step, metric=metric)
            dcp.save(dcp_worker.full_state(step), storage_writer=writer)
            writer.wait_durable(60)
    assert sorted(c.step for c in list_checkpoints(root)) == [1, 4, 5]
    # The data of the others is gone too (the local store may keep empty folders).
    with_files = {p.parts[-3] for p in (tmp_path / "store").glob("step-*/*/*") if p.is_file()}
    assert with_files == {"step-0000000001", "step-0000000004", "step-0000000005"}


def test_choose_retained_superseded_generations() -> None:
    from artifact_uploader import CommittedCheckpoint

    def c(step: int, gen: int, metric: float | None = None) -> CommittedCheckpoint:
        return CommittedCheckpoint("r", step, gen, "0" * 32, "l", {}, metric, 1, f"{step}-{gen}")

    commits = [c(3, 2), c(3, 1), c(2, 1, 0.5), c(1, 1, 0.7)]
    kept, deleted = choose_retained(commits, keep_last=1, keep_best=1, best="min")
    assert [(k.step, k.generation) for k in kept] == [(3, 2), (2, 1)]
    assert sorted((d.step, d.generation) for d in deleted) == [(1, 1), (3, 1)]


def test_reader_refuses_torn_and_missing(tmp_path: Path) -> None:
    root = (tmp_path / "store").as_uri()
    with pytest.raises(CheckpointNotCommittedError, match="no committed checkpoint under"):
        load_full(root, None)
    assert latest_checkpoint(root) is None
    ckpt = save_one(root, 7, 7)
    shard = tmp_path / "store" / ckpt.location / "__0_0.distcp"
    shard.unlink()
    with pytest.raises(CheckpointError, match=r"torn.*__0_0\.distcp") as info:
        load_full(root, None)
    assert info.value.missing == ("__0_0.distcp",)
    with pytest.raises(CheckpointError, match="torn"):
        latest_checkpoint(root)
    # dcp.load alone raises too, DCP's own error carrying the same message.
    with pytest.raises(BaseException) as wrapped:  # DCP's CheckpointException
        dcp.load(dcp_worker.full_state(0), storage_reader=CheckpointReader(root))
    text = str(wrapped.value) + repr(getattr(wrapped.value, "failures", ""))
    assert "is torn" in text and "__0_0.distcp" in text
    record = tmp_path / "store" / ckpt.record
    record.write_text('{"format": "something else"}')
    with pytest.raises(CheckpointError, match="malformed"):
        latest_checkpoint(root)


def test_bad_input_raises_at_the_call(tmp_path: Path) -> None:
    root = (tmp_path / "store").as_uri()
    with pytest.raises(ConfigError, match="malformed store URI"):
        CheckpointWriter("no-scheme")
    with pytest.raises(ConfigError, match="keep_last"):
        CheckpointWriter(root, keep_last=0)
    with pytest.raises(ConfigError, match="step must be"):
        CheckpointReader(root, step=-1)
    with CheckpointWriter(root) as writer:
        with pytest.raises(ConfigError, match="step must be"):
            writer.set_step("3")  # type: ignore[arg-type]
        with pytest.raises(ConfigError, match="metric"):
            writer.set_step(3, metric="high")  # type: ignore[arg-type]
        # DCP runs the writer inside its collectives and wraps what it raises.
        with pytest.raises(BaseException) as wrapped:
            dcp.save(dcp_worker.full_state(1), storage_writer=writer)
        assert "set_step(step) before saving" in str(wrapped.value)
    with pytest.raises(ConfigError, match="keep_last"):
        prune_checkpoints(root, keep_last=0)
    assert not (tmp_path / "store" / "_commits").exists()
