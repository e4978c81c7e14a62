"""The docs can't rot: their marked examples run, and the site builds with ``--strict``.

Convention: a fenced ``python`` block in ``docs/**/*.md`` or ``README.md`` whose fence line comes
right after a line ``<!-- run -->`` is executed by :func:`test_marked_example_runs`. Mark only
blocks that need no network: ``file://`` stores, a :class:`MemoryProvider`, or no store at all.
Each block runs as ``__main__`` in a fresh empty working directory holding a few small input
files (:data:`INPUT_FILES`, and the folder ``checkpoint-2/``), with every ``/tmp/example-<word>``
path in it pointing into that directory instead.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
MARKER = "<!-- run -->"

# Files a marked block may read, as a training loop would have written them.
INPUT_FILES = {
    "ckpt.pt": 64 * 1024,
    "ep1.pt": 32 * 1024,
    "ep2.pt": 32 * 1024,
    "trace.json": 4 * 1024,
}
CHECKPOINT_FOLDER = {
    "checkpoint-2/model.safetensors": 16 * 1024,
    "checkpoint-2/optimizer.pt": 8 * 1024,
    "checkpoint-2/trainer_state.json": 512,
}
_EXAMPLE_PATH = re.compile(r"/tmp/example-(\w+)")
_FENCE = re.compile(r"^(`{3,}|~{3,})\s*(\w*)")


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]


def marked_blocks() -> list[tuple[str, int, str]]:
    """(file relative to the repo, line of the opening fence, code) of every marked block."""
    blocks = []
    for path in doc_files():
        lines = path.read_text(encoding="utf-8").splitlines()
        rel = path.relative_to(ROOT).as_posix()
        for i, line in enumerate(lines):
            if line.strip() != MARKER:
                continue
            fence = _FENCE.match(lines[i + 1]) if i + 1 < len(lines) else None
            if fence is None or fence.group(2) != "python":
                raise AssertionError(
                    f"{rel}:{i + 1}: {MARKER} must be followed by a ```python block"
                )
            end = next(
                (j for j in range(i + 2, len(lines)) if lines[j].strip() == fence.group(1)), None
            )
            if end is None:
                raise AssertionError(f"{rel}:{i + 2}: unterminated code block")
            blocks.append((rel, i + 2, "\n".join(lines[i + 2 : end]) + "\n"))
    return blocks


BLOCKS = marked_blocks()


def test_marker_convention_finds_the_examples() -> None:
    # A broken parser would make every example test vanish silently.
    assert len(BLOCKS) >= 12
    pages = {rel for rel, _, _ in BLOCKS}
    assert {"docs/index.md", "docs/staging.md", "docs/errors.md", "docs/events.md"} <= pages


@pytest.mark.parametrize(
    "code", [b[2] for b in BLOCKS], ids=[f"{rel}:{line}" for rel, line, _ in BLOCKS]
)
def test_marked_example_runs(
    code: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, size in {**INPUT_FILES, **CHECKPOINT_FOLDER}.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(size))
    code = _EXAMPLE_PATH.sub(lambda m: str(tmp_path / f"example-{m.group(1)}"), code)
    monkeypatch.chdir(tmp_path)
    # Temporary staging folders (kept when an example shows a failure) stay in tmp_path too.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    exec(compile(code, "<doc example>", "exec"), {"__name__": "__main__"})
    # Every example prints or writes something; an example that silently did nothing is a bug.
    store = tmp_path / "example-store"
    wrote = store.is_dir() and any(p.is_file() for p in store.rglob("*"))
    printed = capsys.readouterr().out
    assert wrote or printed.strip()


def test_mkdocs_build_strict(tmp_path: Path) -> None:
    site = tmp_path / "site"
    mkdocs = Path(sys.executable).with_name("mkdocs")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run(
        [str(mkdocs), "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        env=env,
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

    # The API reference is built from the docstrings of the public names.
    ref = (site / "reference" / "index.html").read_text(encoding="utf-8")
    import artifact_uploader

    for name in artifact_uploader.__all__:
        if not name.startswith("_"):
            assert f'id="artifact_uploader.{name}"' in ref, name
    for module, cls in (("s3", "S3Provider"), ("gcs", "GCSProvider"), ("azure", "AzureProvider")):
        assert f'id="artifact_uploader.providers.{module}.{cls}.from_uri"' in ref, cls
