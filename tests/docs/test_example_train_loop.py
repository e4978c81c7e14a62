"""examples/train_loop.py, the README's main job, run as the README runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(store: Path, tmp: Path) -> str:
    env = {**os.environ, "TMPDIR": str(tmp)}
    proc = subprocess.run(
        [sys.executable, "examples/train_loop.py", str(store)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_train_loop_uploads_what_it_prints_and_runs_again(tmp_path: Path) -> None:
    store, tmp = tmp_path / "store", tmp_path / "tmp"
    tmp.mkdir()
    for _ in range(2):  # every artifact is logged with overwrite=True: a second run works too
        out = _run(store, tmp)
        assert out.count("staged, loop blocked") == 6
        run = store / "example-run" / "rank_0"
        for epoch in range(3):
            ckpt = run / "checkpoints" / f"ep{epoch}.pt"
            assert ckpt.stat().st_size == 32 * 1024 * 1024
            assert ckpt.as_uri() in out
        assert (run / "train.log").read_text() == "epoch 2: loss=0.333\n"
        # The symlink's text is the stored object name of the last checkpoint.
        link = run / "latest.pt.symlink"
        assert link.read_text() == "example-run/rank_0/checkpoints/ep2.pt"
        assert link.as_uri() in out
        # The loop's scratch checkpoints and the staging copies are gone.
        assert list(tmp.iterdir()) == []
