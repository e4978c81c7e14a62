"""The docs can't rot: their marked examples run, and the site builds with ``--strict``.

Convention: a fenced ``python`` block in ``docs/**/*.md`` or ``README.md`` whose fence line comes
right after a marker line is executed by :func:`test_marked_example_runs`:

- ``<!-- run -->``: needs no server (``file://`` stores, a ``MemoryProvider``, or no store).
  Every ``/tmp/example-<word>`` path in it points into the test's temporary directory instead.
- ``<!-- run: moto -->``, ``<!-- run: fake-gcs -->``, ``<!-- run: azurite -->``: runs against
  the tests' real local server. The example's ``http://127.0.0.1:5000`` (moto) or
  ``http://127.0.0.1:4443`` (fake-gcs-server) becomes the server's address and ``my-bucket`` a
  fresh bucket; for Azurite, ``AZURE_STORAGE_CONNECTION_STRING`` is set to the server's and
  ``my-container`` is a fresh container. The example must leave at least one object there.

Each block runs as ``__main__`` in a fresh working directory holding a few small input files
(:data:`INPUT_FILES`, and the folder ``checkpoint-2/``, as a trainer would have saved them).
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.servers.moto import list_s3_keys

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

INPUT_FILES = {
    "ckpt.pt": 64 * 1024,
    "ep1.pt": 32 * 1024,
    "ep2.pt": 32 * 1024,
    "trace.json": 4 * 1024,
    "checkpoint-2/model.safetensors": 16 * 1024,
    "checkpoint-2/optimizer.pt": 8 * 1024,
    "checkpoint-2/trainer_state.json": 512,
}
SERVERS = ("moto", "fake-gcs", "azurite")
_MARKER = re.compile(r"^<!-- run(?:: ([\w-]+))? -->$")
_FENCE = re.compile(r"^(`{3,}|~{3,})\s*(\w*)")
_EXAMPLE_PATH = re.compile(r"/tmp/example-(\w+)")


@dataclass(frozen=True)
class Block:
    where: str  # file:line of the opening fence
    server: str | None
    code: str


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]


def marked_blocks() -> list[Block]:
    blocks = []
    for path in doc_files():
        lines = path.read_text(encoding="utf-8").splitlines()
        rel = path.relative_to(ROOT).as_posix()
        for i, line in enumerate(lines):
            marker = _MARKER.match(line.strip())
            if marker is None:
                continue
            server = marker.group(1)
            if server is not None and server not in SERVERS:
                raise AssertionError(f"{rel}:{i + 1}: unknown server {server!r}; use {SERVERS}")
            fence = _FENCE.match(lines[i + 1]) if i + 1 < len(lines) else None
            if fence is None or fence.group(2) != "python":
                raise AssertionError(f"{rel}:{i + 1}: a run marker must precede a ```python block")
            end = next(
                (j for j in range(i + 2, len(lines)) if lines[j].strip() == fence.group(1)), None
            )
            if end is None:
                raise AssertionError(f"{rel}:{i + 2}: unterminated code block")
            blocks.append(Block(f"{rel}:{i + 2}", server, "\n".join(lines[i + 2 : end]) + "\n"))
    return blocks


BLOCKS = marked_blocks()


def test_marker_convention_finds_the_examples() -> None:
    # A broken parser would make every example test vanish silently.
    assert len(BLOCKS) >= 15
    pages = {b.where.split(":")[0] for b in BLOCKS}
    assert {"docs/index.md", "docs/staging.md", "docs/errors.md", "docs/events.md"} <= pages
    assert {b.server for b in BLOCKS} >= set(SERVERS)


async def _azure(server: Any, container: str, action: str) -> list[str]:
    from azure.storage.blob.aio import BlobServiceClient

    async with BlobServiceClient.from_connection_string(
        server.connection_string, retry_total=0
    ) as service:
        client = service.get_container_client(container)
        if action == "create":
            await client.create_container()
        elif action == "delete":
            await client.delete_container()
        else:
            return [b.name async for b in client.list_blobs()]
    return []


def _point_at_server(
    server: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> tuple[dict[str, str], Callable[[], list[str]]]:
    """Replacements that aim an example at the test server, and a lister of what it stored."""
    if server == "moto":
        moto, bucket = request.getfixturevalue("moto_server"), request.getfixturevalue("s3_bucket")
        client = request.getfixturevalue("moto_s3")
        return (
            {"http://127.0.0.1:5000": moto.endpoint_url, "my-bucket": bucket},
            lambda: list_s3_keys(client, bucket),
        )
    if server == "fake-gcs":
        gcs, bucket = (
            request.getfixturevalue("fake_gcs_server"),
            request.getfixturevalue("gcs_bucket"),
        )
        return (
            {"http://127.0.0.1:4443": gcs.api_root, "my-bucket": bucket},
            lambda: gcs.list_objects(bucket),
        )
    azurite = request.getfixturevalue("azurite_server")
    container = f"docs{uuid.uuid4().hex[:20]}"
    asyncio.run(_azure(azurite, container, "create"))
    request.addfinalizer(lambda: asyncio.run(_azure(azurite, container, "delete")))
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string)
    return {"my-container": container}, lambda: asyncio.run(_azure(azurite, container, "list"))


@pytest.mark.parametrize("block", BLOCKS, ids=[b.where for b in BLOCKS])
def test_marked_example_runs(
    block: Block,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    request: pytest.FixtureRequest,
) -> None:
    for name, size in INPUT_FILES.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(size))
    code = _EXAMPLE_PATH.sub(lambda m: str(tmp_path / f"example-{m.group(1)}"), block.code)
    stored: Callable[[], list[str]] | None = None
    if block.server is not None:
        replacements, stored = _point_at_server(block.server, request, monkeypatch)
        for old, new in replacements.items():
            assert old in code, f"{block.where}: the example must use {old!r}"
            code = code.replace(old, new)
    monkeypatch.chdir(tmp_path)
    # Temporary staging folders (kept when an example shows a failure) stay in tmp_path too.
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))

    exec(compile(code, block.where, "exec"), {"__name__": "__main__"})

    printed = capsys.readouterr().out
    if stored is not None:
        assert stored(), f"{block.where} stored nothing on the {block.server} server"
    else:
        # An example that neither printed nor stored anything did nothing checkable.
        store = tmp_path / "example-store"
        wrote = store.is_dir() and any(p.is_file() for p in store.rglob("*"))
        assert wrote or printed.strip()


def test_mkdocs_build_strict(tmp_path: Path) -> None:
    site = tmp_path / "site"
    mkdocs = Path(sys.executable).with_name("mkdocs")
    proc = subprocess.run(
        [str(mkdocs), "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]

    # The benchmark page shows the measured table and the plot next to it.
    bench = (site / "benchmarks" / "index.html").read_text(encoding="utf-8")
    assert "<table>" in bench
    assert re.search(r"""<img [^>]*src="\.\./benchmarks\.png\"""", bench)
    assert (site / "benchmarks.png").stat().st_size > 0

    # The API reference is built from the docstrings of every public name.
    import artifact_uploader

    ref = (site / "reference" / "index.html").read_text(encoding="utf-8")
    for name in artifact_uploader.__all__:
        if not name.startswith("_"):
            assert f'id="artifact_uploader.{name}"' in ref, name
    for module, cls in (("s3", "S3Provider"), ("gcs", "GCSProvider"), ("azure", "AzureProvider")):
        assert f'id="artifact_uploader.providers.{module}.{cls}.from_uri"' in ref, cls
