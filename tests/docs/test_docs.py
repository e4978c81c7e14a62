"""The docs can't rot: their examples run, their output is real, and the site builds ``--strict``.

Markers, on the line right before a fenced block in ``docs/**/*.md`` or ``README.md``:

- ``<!-- run -->`` before a ``python`` block: executed as ``__main__``. It must need no server
  (``file://`` stores, a ``MemoryProvider``, or no store). Before a ``bash`` block: run with
  ``bash -euo pipefail``, the venv's scripts first on ``PATH``; it must exit 0.
- ``<!-- run: moto -->``, ``<!-- run: fake-gcs -->``, ``<!-- run: azurite -->`` before a
  ``python`` block: executed against the tests' real local server. The example's
  ``http://127.0.0.1:5000`` (moto) or ``http://127.0.0.1:4443`` (fake-gcs-server) becomes the
  server's address and ``my-bucket`` a fresh bucket; for Azurite,
  ``AZURE_STORAGE_CONNECTION_STRING`` is set to the server's and ``my-container`` is a fresh
  container. The example must leave at least one object there. An example that names no
  endpoint (as the README's, which are what a user types against the real cloud) gets the
  server from the environment instead, as a user would point it at one: ``AWS_ENDPOINT_URL``
  with test credentials and region for moto, ``STORAGE_EMULATOR_HOST`` for fake-gcs-server.
- ``<!-- output: COMMAND -->`` before a ``text`` block: the block is exactly what ``COMMAND``
  (one of the venv's scripts) prints on a 100-column terminal.

Every example runs in a fresh working directory holding a few small input files
(:data:`INPUT_FILES`, including the folder ``checkpoint-2/`` as a trainer would have saved it),
with every ``/tmp/example-<word>`` path in it pointing into that directory instead. An example
that imports ``composer`` gets tests/_composer_shim.py's torchvision workaround first.

Every ``python`` block of ``README.md`` must be marked ``run``. Unmarked ``python`` blocks of
the docs are still checked: they must compile, and every keyword argument they pass to a class or
function imported from ``artifact_uploader`` must exist.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import os
import re
import shlex
import subprocess
import sys
import tempfile
import textwrap
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import artifact_uploader
from tests.servers._common import kill_group
from tests.servers.moto import MotoServer, list_s3_keys, start_moto_server

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
BIN = Path(sys.executable).parent

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
_MARKER = re.compile(r"^<!-- (run|output)(?:: (.+?))? -->$")
_FENCE = re.compile(r"^(`{3,}|~{3,})\s*(\w*)")
_EXAMPLE_PATH = re.compile(r"/tmp/example-(\w+)")


@dataclass(frozen=True)
class Block:
    where: str  # file:line of the opening fence
    lang: str
    marker: str | None  # "run" or "output"
    arg: str | None  # the server ("run") or the command ("output")
    code: str


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]


def fenced_blocks() -> list[Block]:
    """Every top-level fenced block of the docs, with the marker line before it, if any."""
    blocks = []
    for path in doc_files():
        lines = path.read_text(encoding="utf-8").splitlines()
        rel = path.relative_to(ROOT).as_posix()
        i = 0
        while i < len(lines):
            fence = _FENCE.match(lines[i])
            if fence is None:
                marker = _MARKER.match(lines[i].strip())
                if marker is not None and (i + 1 == len(lines) or not _FENCE.match(lines[i + 1])):
                    raise AssertionError(f"{rel}:{i + 1}: a marker must precede a fenced block")
                i += 1
                continue
            end = next((j for j in range(i + 1, len(lines)) if lines[j] == fence.group(1)), None)
            if end is None:
                raise AssertionError(f"{rel}:{i + 1}: unterminated code block")
            marker = _MARKER.match(lines[i - 1].strip()) if i > 0 else None
            blocks.append(
                Block(
                    where=f"{rel}:{i + 1}",
                    lang=fence.group(2),
                    marker=marker.group(1) if marker else None,
                    arg=marker.group(2) if marker else None,
                    code="\n".join(lines[i + 1 : end]) + "\n",
                )
            )
            i = end + 1
    return blocks


BLOCKS = fenced_blocks()
RUN = [b for b in BLOCKS if b.marker == "run"]
OUTPUT = [b for b in BLOCKS if b.marker == "output"]
PYTHON = [b for b in BLOCKS if b.lang == "python"]


def test_markers_are_well_formed_and_found() -> None:
    # A broken parser would make every example test vanish silently.
    for b in RUN:
        assert b.lang == "bash" or b.lang == "python", f"{b.where}: run needs python or bash"
        assert b.arg is None or (b.lang == "python" and b.arg in SERVERS), b.where
    for b in OUTPUT:
        assert b.lang == "text" and b.arg, f"{b.where}: output needs a text block and a command"
    assert len([b for b in RUN if b.lang == "python"]) >= 15
    assert len([b for b in RUN if b.lang == "bash"]) >= 2
    assert len(OUTPUT) >= 2
    pages = {b.where.split(":")[0] for b in RUN}
    assert {"docs/index.md", "docs/staging.md", "docs/errors.md", "docs/events.md"} <= pages
    assert {"README.md", "docs/troubleshooting.md"} <= pages
    assert {b.arg for b in RUN} >= set(SERVERS)


def test_every_readme_python_block_runs() -> None:
    # The README is what a new user copies first: none of its snippets may be read-only.
    readme = [b for b in PYTHON if b.where.startswith("README.md:")]
    assert len(readme) >= 3
    for b in readme:
        assert b.marker == "run", f"{b.where}: mark it <!-- run --> (or run: moto / fake-gcs)"


# -- examples that run --------------------------------------------------------------------------


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
    server: str, code: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> tuple[dict[str, str], Callable[[], list[str]]]:
    """Replacements that aim an example at the test server, and a lister of what it stored."""
    if server == "moto":
        moto = request.getfixturevalue("moto_server")
        bucket = request.getfixturevalue("s3_bucket")
        client = request.getfixturevalue("moto_s3")
        if "http://127.0.0.1:5000" not in code:
            for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
                monkeypatch.delenv(name, raising=False)
            monkeypatch.setenv("AWS_ENDPOINT_URL", moto.endpoint_url)
            monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
            monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
            monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
            return {"my-bucket": bucket}, lambda: list_s3_keys(client, bucket)
        return (
            {"http://127.0.0.1:5000": moto.endpoint_url, "my-bucket": bucket},
            lambda: list_s3_keys(client, bucket),
        )
    if server == "fake-gcs":
        gcs = request.getfixturevalue("fake_gcs_server")
        bucket = request.getfixturevalue("gcs_bucket")
        if "http://127.0.0.1:4443" not in code:
            monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs.api_root)
            return {"my-bucket": bucket}, lambda: gcs.list_objects(bucket)
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


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory with the example input files; temp folders are made inside it."""
    for name, size in INPUT_FILES.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(size))
    monkeypatch.chdir(tmp_path)
    # Temporary staging folders (kept when an example shows a failure) stay in tmp_path too.
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    return tmp_path


def _stored_locally(workdir: Path) -> bool:
    store = workdir / "example-store"
    return store.is_dir() and any(p.is_file() for p in store.rglob("*"))


@pytest.mark.parametrize("block", RUN, ids=[b.where for b in RUN])
def test_marked_example_runs(
    block: Block,
    workdir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    request: pytest.FixtureRequest,
) -> None:
    code = _EXAMPLE_PATH.sub(lambda m: str(workdir / f"example-{m.group(1)}"), block.code)
    if block.lang == "bash":
        env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
        proc = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", code],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, f"{block.where}:\n{proc.stdout}\n{proc.stderr}"
        assert _stored_locally(workdir), f"{block.where} stored nothing"
        return

    stored: Callable[[], list[str]] | None = None
    if block.arg is not None:
        replacements, stored = _point_at_server(block.arg, code, request, monkeypatch)
        for old, new in replacements.items():
            assert old in code, f"{block.where}: the example must use {old!r}"
            code = code.replace(old, new)

    if re.search(r"^(from|import) composer\b", code, re.MULTILINE):
        # Composer's import needs the test suite's torchvision workaround first.
        from tests._composer_shim import import_composer

        import_composer()
    exec(compile(code, block.where, "exec"), {"__name__": "__main__"})

    printed = capsys.readouterr().out
    if stored is not None:
        assert stored(), f"{block.where} stored nothing on the {block.arg} server"
    else:
        # An example that neither printed nor stored anything did nothing checkable.
        assert _stored_locally(workdir) or printed.strip(), f"{block.where} did nothing"


def test_readme_logger_quickstart_second_run_fails_and_is_announced_as_it_says(
    workdir: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The README says: a second run fails with ObjectExistsError (overwrite=False by default),
    # the staged copies stay journalled, the next start warns, and Uploader.resume clears them.
    (block,) = [
        b for b in RUN if b.where.startswith("README.md:") and "ObjectStoreLogger(" in b.code
    ]
    code = _EXAMPLE_PATH.sub(lambda m: str(workdir / f"example-{m.group(1)}"), block.code)
    assert block.arg == "moto"
    replacements, stored = _point_at_server(block.arg, code, request, monkeypatch)
    for old, new in replacements.items():
        code = code.replace(old, new)
    compiled = compile(code, block.where, "exec")
    exec(compiled, {"__name__": "__main__"})
    assert sorted(stored()) == ["rank_0/ep1.pt", "rank_0/latest.pt.symlink"]

    with pytest.raises(artifact_uploader.UploadFailedError) as failed:
        exec(compiled, {"__name__": "__main__"})
    bucket = replacements["my-bucket"]
    shown = {bucket: "my-bucket", str(workdir / "example-staging"): "/tmp/example-staging"}
    assert_documented("object-exists", _as_documented(str(failed.value), shown))
    causes = {f.name: f.cause for f in failed.value.failures}
    assert isinstance(causes["rank_0/ep1.pt"], artifact_uploader.ObjectExistsError)
    assert isinstance(causes["rank_0/latest.pt.symlink"], artifact_uploader.DependencyFailedError)
    staging = workdir / "example-staging"
    for f in failed.value.failures:
        assert f.staged_path is not None and Path(f.staged_path).is_relative_to(staging)
        assert Path(f.staged_path).is_file()

    caplog.set_level("WARNING", logger="artifact_uploader")
    with artifact_uploader.Uploader(f"s3://{bucket}", staging_dir=staging):
        pass
    warned = [r.getMessage() for r in caplog.records if "left unfinished" in r.getMessage()]
    assert len(warned) == 1
    assert_documented("unfinished-uploads", _as_documented(warned[0], shown))
    report = artifact_uploader.Uploader.resume(staging, f"s3://{bucket}")
    assert sorted(report.already_present) == ["rank_0/ep1.pt", "rank_0/latest.pt.symlink"]
    assert not list((staging / "staged").iterdir())


# -- the troubleshooting page's messages are the library's --------------------------------------

TROUBLESHOOTING = DOCS / "troubleshooting.md"
_DOCUMENTED = re.compile(r"^<!-- message: ([\w-]+) -->\n```text\n(.*?)\n```$", re.S | re.M)


def documented_message(key: str) -> str:
    """The text block marked ``<!-- message: key -->`` on the troubleshooting page."""
    return dict(_DOCUMENTED.findall(TROUBLESHOOTING.read_text(encoding="utf-8")))[key]


def assert_documented(key: str, printed: str) -> None:
    """The page shows ``printed`` under ``key``; if not, the failure gives the text to paste."""
    assert printed == documented_message(key), (
        f"docs/troubleshooting.md, <!-- message: {key} -->: the library now prints\n{printed}"
    )


def _as_documented(text: str, shown: dict[str, str]) -> str:
    """``text`` with the test's real names replaced by the page's, and random ids as ``<id>``."""
    for real, doc in shown.items():
        text = text.replace(real, doc)
    return re.sub(r"\b[0-9a-f]{32}\b", "<id>", text)


def test_troubleshooting_shows_five_messages() -> None:
    found = _DOCUMENTED.findall(TROUBLESHOOTING.read_text(encoding="utf-8"))
    assert [key for key, _ in found] == [
        "object-exists",
        "store-not-found",
        "permission-denied",
        "missing-dependency",
        "unfinished-uploads",
    ]


def test_troubleshooting_store_not_found_message(moto_server: MotoServer) -> None:
    bucket = f"missing-{uuid.uuid4().hex[:12]}"
    with pytest.raises(artifact_uploader.StoreNotFoundError) as raised:
        artifact_uploader.Uploader(f"s3://{bucket}/run-42", provider_kwargs=moto_server.options())
    assert_documented("store-not-found", _as_documented(str(raised.value), {bucket: "my-bucket"}))


def test_troubleshooting_permission_denied_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A moto server that checks credentials (it knows none, so every key is refused).
    monkeypatch.setenv("INITIAL_NO_AUTH_ACTION_COUNT", "0")
    server = start_moto_server(tmp_path)
    try:
        with pytest.raises(artifact_uploader.PermissionDeniedError) as raised:
            artifact_uploader.Uploader(
                "s3://my-bucket/run-42", provider_kwargs=server.options(key="AKIAWRONGKEY")
            )
    finally:
        kill_group(server.process)
    assert_documented("permission-denied", str(raised.value))
    assert "AKIAWRONGKEY" not in str(raised.value)


def test_troubleshooting_missing_dependency_message() -> None:
    # A fresh interpreter in which aiobotocore cannot be imported, as without the s3 extra.
    code = textwrap.dedent(
        """
        import importlib.abc, sys

        class Missing(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "aiobotocore":
                    raise ModuleNotFoundError(f"No module named {name!r}", name=name)
                return None

        sys.meta_path.insert(0, Missing())
        from artifact_uploader import MissingDependencyError, Uploader
        try:
            Uploader("s3://my-bucket/run-42")
        except MissingDependencyError as exc:
            print(exc)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr
    assert_documented("missing-dependency", proc.stdout.strip())


@pytest.mark.parametrize("block", OUTPUT, ids=[b.where for b in OUTPUT])
def test_documented_output_is_real(block: Block) -> None:
    assert block.arg is not None
    argv = shlex.split(block.arg)
    argv[0] = str(BIN / argv[0])
    proc = subprocess.run(
        argv,
        env={**os.environ, "COLUMNS": "100"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr

    def lines(text: str) -> list[str]:
        return [line.rstrip() for line in text.strip("\n").splitlines()]

    assert lines(block.code) == lines(proc.stdout), f"{block.where}: regenerate with {block.arg}"


# -- examples that are only read --------------------------------------------------------------


def _public(name: str) -> Any:
    return getattr(artifact_uploader, name)


@pytest.mark.parametrize("block", PYTHON, ids=[b.where for b in PYTHON])
def test_python_block_uses_real_parameters(block: Block) -> None:
    tree = ast.parse(block.code, block.where)  # it must compile, marked or not
    imported = {
        alias.asname or alias.name: alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module == "artifact_uploader"
        for alias in node.names
    }
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not node.keywords:
            continue
        func = node.func
        if isinstance(func, ast.Name) and func.id in imported:
            target, label = _public(imported[func.id]), imported[func.id]
        elif (
            isinstance(func, ast.Attribute)
            and isinstance(func.value, ast.Name)
            and func.value.id in imported
        ):
            owner = _public(imported[func.value.id])
            target, label = getattr(owner, func.attr), f"{imported[func.value.id]}.{func.attr}"
        else:
            continue
        params = inspect.signature(target).parameters
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            continue
        for kw in node.keywords:
            if kw.arg is not None:
                assert kw.arg in params, f"{block.where}: {label}() has no parameter {kw.arg!r}"


def test_errors_page_draws_the_real_exception_tree() -> None:
    doc = (DOCS / "errors.md").read_text(encoding="utf-8")
    drawn = doc.split("```text\n", 1)[1].split("```", 1)[0]
    module_doc = artifact_uploader._errors.__doc__ or ""
    # The tree is the literal block after "::" in the module docstring.
    real = textwrap.dedent(module_doc.split("::\n", 1)[1].strip("\n").split("\n\n")[0])
    assert drawn.strip() == real.strip()


# -- the site -----------------------------------------------------------------------------------


def test_mkdocs_build_strict(tmp_path: Path) -> None:
    site = tmp_path / "site"
    proc = subprocess.run(
        [str(BIN / "mkdocs"), "build", "--strict", "--site-dir", str(site)],
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
    ref = (site / "reference" / "index.html").read_text(encoding="utf-8")
    for name in artifact_uploader.__all__:
        if not name.startswith("_"):
            assert f'id="artifact_uploader.{name}"' in ref, name
    for qualname in (
        "providers.s3.S3Provider.from_uri",
        "providers.gcs.GCSProvider.from_uri",
        "providers.azure.AzureProvider.from_uri",
        "_hf.HFUploadCallback.upload_folder",
        "_lightning.LightningUploadCallback.upload_checkpoint",
    ):
        assert f'id="artifact_uploader.{qualname}"' in ref, qualname


def regenerate_outputs() -> None:
    """Rewrite every ``<!-- output: COMMAND -->`` block from the command's real output."""
    for path in sorted(DOCS.rglob("*.md")):
        lines = path.read_text(encoding="utf-8").split("\n")
        for block in reversed(
            [b for b in OUTPUT if b.where.startswith(f"{path.relative_to(ROOT)}:")]
        ):
            assert block.arg is not None
            start = int(block.where.rsplit(":", 1)[1])  # 1-based line of the opening fence
            end = start + len(block.code.splitlines())
            argv = shlex.split(block.arg)
            argv[0] = str(BIN / argv[0])
            out = subprocess.run(
                argv,
                env={**os.environ, "COLUMNS": "100"},
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            lines[start:end] = [line.rstrip() for line in out.strip("\n").splitlines()]
        path.write_text("\n".join(lines), encoding="utf-8")


if __name__ == "__main__":
    # python -m tests.test_docs: refresh the documented command output after changing the CLI.
    regenerate_outputs()
