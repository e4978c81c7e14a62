"""A toy training loop that logs checkpoints through ObjectStoreLogger into a local store.

Run: python examples/train_loop.py [STORE_DIR]
It prints each object uploaded and how long each `file_artifact` call blocked the loop.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

from artifact_uploader import LogLevel, ObjectStoreLogger


def main() -> None:
    store = Path(sys.argv[1] if len(sys.argv) > 1 else ".example-store").absolute()
    with tempfile.TemporaryDirectory(prefix="train-") as work_dir:
        train(store, Path(work_dir))


def train(store: Path, work: Path) -> None:
    """Three "epochs", each logging a checkpoint, a log file and the latest symlink."""
    logger = ObjectStoreLogger(
        provider="file",
        container=str(store),
        object_name="{run_name}/rank_{rank}/{artifact_name}",
        num_concurrent_uploads=4,
        run_name="example-run",
    )
    futures = []
    for epoch in range(3):
        # "Train", then write a 32 MiB checkpoint and a small log.
        ckpt = work / f"ep{epoch}.pt"
        ckpt.write_bytes(os.urandom(32 * 1024 * 1024))
        log = work / "train.log"
        log.write_text(f"epoch {epoch}: loss={1.0 / (epoch + 1):.3f}\n")
        for name, path in ((f"checkpoints/ep{epoch}.pt", ckpt), ("train.log", log)):
            start = time.perf_counter()
            fut = logger.file_artifact(LogLevel.EPOCH, name, path, overwrite=True)
            blocked = (time.perf_counter() - start) * 1000
            print(f"epoch {epoch}: {name:<22} staged, loop blocked {blocked:7.2f} ms")
            futures.append(fut)
        logger.symlink_artifact(
            LogLevel.EPOCH, f"checkpoints/ep{epoch}.pt", "latest.pt", overwrite=True
        )
    logger.close()
    print("\nuploaded:")
    for fut in futures:
        result = fut.result()
        print(
            f"  {result.uri}  ({result.size} bytes, {result.checksum_algorithm}={result.checksum})"
        )
    print(f"  {logger.get_uri_for_artifact('latest.pt')}.symlink")


if __name__ == "__main__":
    main()
