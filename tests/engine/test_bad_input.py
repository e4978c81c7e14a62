"""The bad-input matrix: every way a caller can hand the library something it cannot use.

Each case asserts four things: the exception is of a type documented in ``_errors.py`` (and
exported), its message names the offending value, it is raised at the call that received the
value, and nothing half-written remains (no object in the store, no staged file, no journal entry,
no leaked temporary staging folder, the source untouched; an uploader that refused a call still
works and closes without reporting a failure).

The matrix (one test or parametrized case each):

===============================  =============================  ==================================
input                            raises                         test
===============================  =============================  ==================================
missing path                     SourceFileError                MATRIX "missing-path"
directory                        SourceFileError                MATRIX "directory"
FIFO (would block a copy)        SourceFileError                MATRIX "fifo"
path of the wrong type           SourceFileError                MATRIX "path-not-a-path"
unreadable file (chmod 000)      SourceFileError                test_unreadable_file
open() refused, os.access yes    SourceFileError                test_unreadable_source_that_...
empty file                       (valid: a 0-byte object)       test_empty_file_is_a_valid_object*
empty object name                InvalidObjectNameError         MATRIX "empty-name"
slash-only name                  InvalidObjectNameError         MATRIX "slash-only-name"
NUL in the name                  InvalidObjectNameError         MATRIX "nul-in-name"
over-long name                   InvalidObjectNameError         MATRIX "over-long-name"
long path segment (local)        InvalidObjectNameError         MATRIX "long-segment-local"
``..`` segment (local)           InvalidObjectNameError         MATRIX "dotdot-*"
absolute name (local)            InvalidObjectNameError         MATRIX "absolute-name-local"
name of the wrong type           InvalidObjectNameError         MATRIX "name-not-a-str"
unknown template field           ConfigError                    MATRIX "unknown-template-field"
positional template field        ConfigError                    MATRIX "positional-template-field"
zero / negative / non-integer    ConfigError                    MATRIX "concurrency-*"
  concurrency (Uploader, logger)
unknown provider                 ConfigError                    MATRIX "unknown-provider"
unknown URI scheme               ConfigError                    MATRIX "unknown-scheme"
malformed URI                    ConfigError                    MATRIX "malformed-uri-*"
unknown provider option          ConfigError                    MATRIX "unknown-option"
no container                     ConfigError                    MATRIX "empty-container"
overwrite not a bool             ConfigError                    MATRIX "overwrite-not-a-bool"
unknown staging mode             ConfigError                    MATRIX "unknown-staging-mode"
submit after close               UploaderClosedError            MATRIX "submit-after-close*"
symlink to a name never logged   ConfigError                    MATRIX "symlink-never-logged"
staging folder under a file      StagingError                   MATRIX "staging-under-a-file"
missing extra                    MissingDependencyError         test_missing_extra
missing bucket                   StoreNotFoundError             test_missing_bucket
refused credentials              PermissionDeniedError          test_refused_credentials
unwritable staging folder        StagingError                   test_unwritable_staging_folder
staging folder on a full disk    StagingError                   test_full_disk_*
===============================  =============================  ==================================

The submit-level refusals are also run through ``AsyncUploader.submit``
(``test_bad_input_async_submit``).

How the permission cases stay honest when the tests run as root (root reads a chmod-000 file and
writes into a 0555 folder, and ``os.access`` says yes): the call runs in a child Python process
started through ``setpriv`` without CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH, the two
capabilities that let root ignore file modes, so the kernel really refuses (the child checks
that ``os.access`` now says no). As a normal user the same child runs unchanged. A
switch to ``nobody`` was not used: the interpreter lives under 0700 ``/root`` here.
The full-disk cases use a real 1 MiB tmpfs mounted in a private mount namespace
(``unshare -m``, or ``unshare -Urm`` as a normal user); where the kernel refuses namespaces that
test is skipped (it fails instead when ``$CI`` is set, unless ``ARTIFACT_UPLOADER_ALLOW_SKIP=1``),
and ``test_enospc_mid_copy_simulated`` / ``test_enospc_on_journal_simulated`` still cover the
same clean-up code with an injected ENOSPC.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import artifact_uploader
from artifact_uploader import (
    AsyncUploader,
    ConfigError,
    InvalidObjectNameError,
    LogLevel,
    MissingDependencyError,
    ObjectStoreLogger,
    PermissionDeniedError,
    SourceFileError,
    StagingError,
    StoreNotFoundError,
    Uploader,
    UploaderClosedError,
    UploadError,
)
from artifact_uploader import _errors as errors_module
from artifact_uploader._journal import JOURNAL_FILE, load
from artifact_uploader._sync import staged_bytes
from tests.conftest import skip_outside_ci
from tests.servers.moto import MotoServer, list_multipart_uploads, list_s3_keys, read_s3_object

PAYLOAD = b"the source bytes, which must never change"


def assert_documented(exc: BaseException) -> None:
    """The exception's type is exported, under UploadError, and drawn in _errors' docstring."""
    cls = type(exc)
    assert isinstance(exc, UploadError), f"{cls.__name__} is not an UploadError"
    assert cls.__name__ in artifact_uploader.__all__, f"{cls.__name__} is not exported"
    assert errors_module.__doc__ is not None and cls.__name__ in errors_module.__doc__


def artifact_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if "artifact-uploader" in t.name and t.is_alive()}


def tree(root: Path) -> set[str]:
    """Every file under ``root`` (relative), excluding empty directories."""
    if not root.exists():
        return set()
    return {str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir()}


@dataclass
class World:
    """A source folder, a local store, a persistent staging folder and a private temp dir."""

    root: Path
    opened: list[Uploader] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.src_dir = self.root / "src"
        self.src_dir.mkdir()
        self.src = self.src_dir / "data.bin"
        self.src.write_bytes(PAYLOAD)
        self.ok = self.src_dir / "ok.bin"
        self.ok.write_bytes(b"a good file")
        os.mkfifo(self.src_dir / "fifo")
        self.store = self.root / "store"
        self.staging = self.root / "staging"
        self.tempdir = self.root / "tmp"
        self.tempdir.mkdir()
        self.snapshot = self.source_state()

    def source_state(self) -> dict[str, tuple[int, str]]:
        state = {}
        for p in sorted(self.src_dir.iterdir()):
            st = p.lstat()
            digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else ""
            state[p.name] = (st.st_mode, digest)
        return state

    def uploader(self, **options: Any) -> Uploader:
        up = Uploader(self.store.as_uri(), staging_dir=self.staging, **options)
        self.opened.append(up)
        return up

    def logger(self, **options: Any) -> ObjectStoreLogger:
        logger = ObjectStoreLogger("file", str(self.store), upload_staging_folder=self.staging)
        self.opened.append(logger.uploader)
        del options
        return logger

    def assert_nothing_half_written(self) -> None:
        expected: set[str] = set()
        for i, up in enumerate(self.opened):
            if up._closed:
                continue
            # The uploader that refused the bad call still works, and has no failure to report.
            name = f"after/{i}.bin"
            assert up.upload(self.ok, name).size == len(b"a good file")
            up.close()
            expected.add(name)
        assert tree(self.store) == expected
        assert tree(self.store / ".artifact-uploader-tmp") == set()
        if self.staging.exists():
            assert tree(self.staging / "staged") == set()
            assert load(self.staging) == ([], [])
        assert self.source_state() == self.snapshot
        assert list(self.tempdir.iterdir()) == [], "a temporary staging folder was left behind"


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    w = World(tmp_path)
    # Temporary staging folders go here, so a leaked one is visible.
    monkeypatch.setattr(tempfile, "tempdir", str(w.tempdir))
    before = artifact_threads()
    yield w
    for up in w.opened:
        up.close()
    assert artifact_threads() <= before, "an uploader thread was left running"


@dataclass(frozen=True)
class Case:
    id: str
    raises: type[UploadError]
    names: Callable[[World], str]
    call: Callable[[World], object]


def _closed(w: World) -> Uploader:
    up = w.uploader()
    up.close()
    return up


def _long(w: World) -> str:
    return "x" * 64


MATRIX: list[Case] = [
    # -- the file to upload --------------------------------------------------------------------
    Case(
        "missing-path",
        SourceFileError,
        lambda w: str(w.src_dir / "nope.pt"),
        lambda w: w.uploader().submit(w.src_dir / "nope.pt", "m"),
    ),
    Case(
        "directory",
        SourceFileError,
        lambda w: str(w.src_dir),
        lambda w: w.uploader().submit(w.src_dir, "d"),
    ),
    Case(
        "fifo",
        SourceFileError,
        lambda w: str(w.src_dir / "fifo"),
        lambda w: w.uploader().submit(w.src_dir / "fifo", "f"),
    ),
    Case(
        "path-not-a-path",
        SourceFileError,
        lambda w: "None",
        lambda w: w.uploader().submit(None, "n"),  # type: ignore[arg-type]
    ),
    # -- object names ----------------------------------------------------------------------------
    Case(
        "empty-name",
        InvalidObjectNameError,
        lambda w: "''",
        lambda w: w.uploader().submit(w.src, ""),
    ),
    Case(
        "slash-only-name",
        InvalidObjectNameError,
        lambda w: "'///'",
        lambda w: w.uploader().submit(w.src, "///"),
    ),
    Case(
        "nul-in-name",
        InvalidObjectNameError,
        lambda w: repr("ckpt\x00.pt"),
        lambda w: w.uploader().submit(w.src, "ckpt\x00.pt"),
    ),
    Case(
        "over-long-name",
        InvalidObjectNameError,
        _long,
        lambda w: w.uploader().submit(w.src, "x" * 1100),
    ),
    Case(
        "long-segment-local",
        InvalidObjectNameError,
        lambda w: "y" * 300,
        lambda w: w.uploader().submit(w.src, "d/" + "y" * 300),
    ),
    Case(
        "dotdot-leading-local",
        InvalidObjectNameError,
        lambda w: "'../escape.bin'",
        lambda w: w.uploader().submit(w.src, "../escape.bin"),
    ),
    Case(
        "dotdot-middle-local",
        InvalidObjectNameError,
        lambda w: "'a/../../escape.bin'",
        lambda w: w.uploader().submit(w.src, "a/../../escape.bin"),
    ),
    Case(
        "absolute-name-local",
        InvalidObjectNameError,
        lambda w: "'/etc/passwd'",
        lambda w: w.uploader().submit(w.src, "/etc/passwd"),
    ),
    Case(
        "name-not-a-str",
        InvalidObjectNameError,
        lambda w: "123",
        lambda w: w.uploader().submit(w.src, 123),  # type: ignore[arg-type]
    ),
    # -- templates, concurrency, providers, URIs, options -------------------------------------
    Case(
        "unknown-template-field",
        ConfigError,
        lambda w: "{epoch}",
        lambda w: ObjectStoreLogger("file", str(w.store), object_name="{epoch}/{artifact_name}"),
    ),
    Case(
        "positional-template-field",
        ConfigError,
        lambda w: "'{0}/{artifact_name}'",
        lambda w: ObjectStoreLogger("file", str(w.store), object_name="{0}/{artifact_name}"),
    ),
    Case(
        "concurrency-zero",
        ConfigError,
        lambda w: "max_concurrency must be >= 1, got 0",
        lambda w: Uploader(w.store.as_uri(), max_concurrency=0),
    ),
    Case(
        "concurrency-negative",
        ConfigError,
        lambda w: "got -3",
        lambda w: Uploader(w.store.as_uri(), max_concurrency=-3),
    ),
    Case(
        "concurrency-float",
        ConfigError,
        lambda w: "got 2.5",
        lambda w: Uploader(w.store.as_uri(), max_concurrency=2.5),  # type: ignore[arg-type]
    ),
    Case(
        "concurrency-str",
        ConfigError,
        lambda w: "got '8'",
        lambda w: Uploader(w.store.as_uri(), max_concurrency="8"),  # type: ignore[arg-type]
    ),
    Case(
        "concurrency-bool",
        ConfigError,
        lambda w: "got True",
        lambda w: Uploader(w.store.as_uri(), max_concurrency=True),
    ),
    Case(
        "concurrency-zero-logger",
        ConfigError,
        lambda w: "num_concurrent_uploads must be >= 1, got 0",
        lambda w: ObjectStoreLogger("file", str(w.store), num_concurrent_uploads=0),
    ),
    Case(
        "unknown-provider",
        ConfigError,
        lambda w: "'dropbox'",
        lambda w: ObjectStoreLogger("dropbox", "bucket"),
    ),
    Case(
        "unknown-scheme",
        ConfigError,
        lambda w: "'ftp'",
        lambda w: Uploader("ftp://host/dir"),
    ),
    Case(
        "malformed-uri-no-scheme",
        ConfigError,
        lambda w: "'my-bucket/run-1'",
        lambda w: Uploader("my-bucket/run-1"),
    ),
    Case(
        "malformed-uri-single-slash",
        ConfigError,
        lambda w: "'s3:/my-bucket'",
        lambda w: Uploader("s3:/my-bucket"),
    ),
    Case(
        "malformed-uri-no-bucket",
        ConfigError,
        lambda w: "'gs://'",
        lambda w: Uploader("gs://"),
    ),
    Case(
        "malformed-uri-file-host",
        ConfigError,
        lambda w: "'otherhost'",
        lambda w: Uploader("file://otherhost/data"),
    ),
    Case(
        "unknown-option",
        ConfigError,
        lambda w: "bogus",
        lambda w: Uploader(w.store.as_uri(), provider_kwargs={"bogus": 1}),
    ),
    Case(
        "empty-container",
        ConfigError,
        lambda w: "got ''",
        lambda w: ObjectStoreLogger("s3", ""),
    ),
    Case(
        "overwrite-not-a-bool",
        ConfigError,
        lambda w: "'yes'",
        lambda w: w.uploader().submit(w.src, "o", overwrite="yes"),  # type: ignore[arg-type]
    ),
    Case(
        "unknown-staging-mode",
        ConfigError,
        lambda w: "'teleport'",
        lambda w: Uploader(w.store.as_uri(), staging="teleport"),
    ),
    # -- lifecycle and the logger ------------------------------------------------------------
    Case(
        "submit-after-close",
        UploaderClosedError,
        lambda w: "'late.bin'",
        lambda w: _closed(w).submit(w.src, "late.bin"),
    ),
    Case(
        "submit-after-close-logger",
        UploaderClosedError,
        lambda w: "'late.pt'",
        lambda w: _closed_logger(w).file_artifact(LogLevel.EPOCH, "late.pt", w.src),
    ),
    Case(
        "symlink-never-logged",
        ConfigError,
        lambda w: "'never.pt'",
        lambda w: w.logger().symlink_artifact(LogLevel.EPOCH, "never.pt", "latest"),
    ),
    # -- the staging folder ------------------------------------------------------------------
    Case(
        "staging-under-a-file",
        StagingError,
        lambda w: str(w.src / "staging"),
        lambda w: Uploader(w.store.as_uri(), staging_dir=w.src / "staging"),
    ),
]


def _closed_logger(w: World) -> ObjectStoreLogger:
    logger = w.logger()
    logger.close()
    return logger


@pytest.mark.parametrize("case", MATRIX, ids=[c.id for c in MATRIX])
def test_bad_input(world: World, case: Case) -> None:
    with pytest.raises(case.raises) as info:
        case.call(world)
    exc = info.value
    assert_documented(exc)
    assert case.names(world) in str(exc), f"message does not name the value: {exc}"
    # Raised by the call itself, not by a later one: the traceback starts in this test's lambda.
    assert info.traceback[1].frame.code.name == "<lambda>"
    world.assert_nothing_half_written()


_ASYNC_SUBMIT_CASES = [
    ("missing-path", SourceFileError, "nope.pt", lambda w: (w.src_dir / "nope.pt", "m")),
    ("directory", SourceFileError, "src", lambda w: (w.src_dir, "d")),
    ("fifo", SourceFileError, "fifo", lambda w: (w.src_dir / "fifo", "f")),
    ("empty-name", InvalidObjectNameError, "''", lambda w: (w.src, "")),
    ("nul-in-name", InvalidObjectNameError, "\\x00", lambda w: (w.src, "a\x00b")),
    ("dotdot-local", InvalidObjectNameError, "'../x'", lambda w: (w.src, "../x")),
    ("absolute-local", InvalidObjectNameError, "'/x'", lambda w: (w.src, "/x")),
]


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("case_id", "raises", "needle", "args"),
    _ASYNC_SUBMIT_CASES,
    ids=[c[0] for c in _ASYNC_SUBMIT_CASES],
)
async def test_bad_input_async_submit(
    world: World,
    case_id: str,
    raises: type[UploadError],
    needle: str,
    args: Callable[[World], tuple[Any, str]],
) -> None:
    """The same refusals through AsyncUploader.submit: raised by the awaited call itself."""
    path, name = args(world)
    async with AsyncUploader(world.store.as_uri(), staging_dir=world.staging) as up:
        with pytest.raises(raises) as info:
            await up.submit(path, name)
        assert_documented(info.value)
        assert needle in str(info.value), str(info.value)
        assert tree(world.staging / "staged") == set()
        await up.upload(world.ok, "after.bin")
    assert tree(world.store) == {"after.bin"}
    assert load(world.staging) == ([], [])
    assert world.source_state() == world.snapshot


def test_matrix_has_at_least_twenty_distinct_inputs() -> None:
    assert len({c.id for c in MATRIX}) == len(MATRIX) >= 20


# -- the empty file: valid -----------------------------------------------------------------------


def test_empty_file_is_a_valid_object_local(world: World) -> None:
    empty = world.root / "empty.bin"
    empty.touch()
    up = world.uploader()
    result = up.upload(empty, "nothing/empty.bin")
    assert result.size == 0
    assert (world.store / "nothing/empty.bin").read_bytes() == b""
    up.close()
    assert tree(world.staging / "staged") == set()


def test_empty_file_is_a_valid_object_s3(
    moto_server: MotoServer, s3_bucket: str, moto_s3: Any, tmp_path: Path
) -> None:
    empty = tmp_path / "empty.bin"
    empty.touch()
    with Uploader(f"s3://{s3_bucket}/p", provider_kwargs=moto_server.options()) as up:
        assert up.upload(empty, "empty.bin").size == 0
    assert read_s3_object(moto_s3, s3_bucket, "p/empty.bin") == b""


# -- stores that refuse: missing bucket, refused credentials, missing extra -------------------


def test_missing_bucket(
    moto_server: MotoServer, moto_s3: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    bucket = f"missing-{uuid.uuid4().hex[:12]}"
    before = artifact_threads()
    with pytest.raises(StoreNotFoundError) as info:
        Uploader(f"s3://{bucket}/run", provider_kwargs=moto_server.options())
    assert_documented(info.value)
    assert bucket in str(info.value)
    assert list(tmp_path.iterdir()) == [], "the temporary staging folder was left behind"
    assert artifact_threads() <= before
    assert bucket not in [b["Name"] for b in moto_s3.list_buckets()["Buckets"]]


def test_refused_credentials(
    moto_server: MotoServer,
    moto_s3: Any,
    s3_bucket: str,
    moto_iam_credentials: dict[str, str],
    tmp_path: Path,
) -> None:
    staging = tmp_path / "staging"
    before = artifact_threads()
    with pytest.raises(PermissionDeniedError) as info:
        Uploader(
            f"s3://{s3_bucket}/run",
            provider_kwargs=moto_server.options(**moto_iam_credentials),
            staging_dir=staging,
        )
    assert_documented(info.value)
    assert s3_bucket in str(info.value)
    assert moto_iam_credentials["secret"] not in str(info.value)
    assert artifact_threads() <= before
    assert tree(staging / "staged") == set() and load(staging) == ([], [])
    moto_server.set_auth(False)
    assert list_s3_keys(moto_s3, s3_bucket) == []
    assert list_multipart_uploads(moto_s3, s3_bucket) == []


_BLOCKER = """
import importlib.abc, json, sys
BLOCKED = {blocked!r}

class Blocker(importlib.abc.MetaPathFinder):
    # Behaves as if the package were not installed at all (ModuleNotFoundError, as pip
    # uninstall would leave it), not as a module that fails half-way through importing.
    def find_spec(self, name, path=None, target=None):
        if name == BLOCKED or name.startswith(BLOCKED + "."):
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None

sys.meta_path.insert(0, Blocker())
import artifact_uploader
from artifact_uploader import ObjectStoreLogger, Uploader
out = {{}}
for label, call in [
    ("uri", lambda: Uploader({uri!r})),
    ("logger", lambda: ObjectStoreLogger({provider!r}, "bucket")),
    ("attribute", lambda: getattr(artifact_uploader, {attribute!r})),
]:
    try:
        call()
        out[label] = None
    except Exception as exc:
        out[label] = {{"mro": [c.__name__ for c in type(exc).__mro__], "message": str(exc)}}
print(json.dumps(out))
"""


@pytest.mark.parametrize(
    ("extra", "blocked", "uri", "provider", "attribute"),
    [
        ("s3", "aiobotocore", "s3://bucket/run", "s3", "S3Provider"),
        ("gcs", "gcloud", "gs://bucket/run", "gs", "GCSProvider"),
        ("azure", "azure", "az://container/run", "azure_blobs", "AzureProvider"),
    ],
)
def test_missing_extra(
    tmp_path: Path, extra: str, blocked: str, uri: str, provider: str, attribute: str
) -> None:
    script = _BLOCKER.format(blocked=blocked, uri=uri, provider=provider, attribute=attribute)
    proc = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        check=False,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    for label in ("uri", "logger", "attribute"):
        err = out[label]
        assert err is not None, f"{label}: no error although {blocked} is not importable"
        assert err["mro"][0] == MissingDependencyError.__name__
        assert {"ConfigError", "ImportError", "UploadError"} <= set(err["mro"])
        assert f"artifact-uploader[{extra}]" in err["message"], err["message"]
        assert blocked in err["message"], err["message"]
    # Nothing was staged: no temporary staging folder was created.
    assert list(tmp_path.iterdir()) == []


# -- permission cases (without DAC-override capabilities when root) -------------------------------

_UNPRIVILEGED_CHILD = r"""
import json, os, sys
from pathlib import Path
from artifact_uploader import Uploader
from artifact_uploader._journal import load

base = Path(sys.argv[1])
case = sys.argv[2]
out = {}

def attempt(call):
    try:
        call()
    except Exception as exc:
        return {"mro": [c.__name__ for c in type(exc).__mro__], "message": str(exc)}
    return None

if case == "unreadable":
    src = base / "src" / "secret.pt"
    out["os_access_says_readable"] = os.access(src, os.R_OK)
    up = Uploader((base / "store").as_uri(), staging_dir=base / "work" / "staging")
    out["error"] = attempt(lambda: up.submit(src, "ckpt/secret.pt"))
    out["staged_after_error"] = sorted(os.listdir(base / "work" / "staging" / "staged"))
    out["pending_after_error"] = [e.name for e in load(base / "work" / "staging")[0]]
    out["ok"] = up.upload(base / "src" / "ok.bin", "ok.bin").size
    up.close()
elif case == "unwritable":
    folder = base / "readonly"
    store = (base / "store").as_uri()
    out["new_inside"] = attempt(lambda: Uploader(store, staging_dir=folder / "s"))
    out["os_access_says_writable"] = os.access(folder, os.W_OK)
    out["itself"] = attempt(lambda: Uploader(store, staging_dir=folder))
    out["left_in_folder"] = sorted(os.listdir(folder))
print(json.dumps(out))
"""


_NO_DAC = [
    "--inh-caps=-dac_override,-dac_read_search",
    "--bounding-set=-dac_override,-dac_read_search",
]


def _run_unprivileged(base: Path, case: str) -> dict[str, Any]:
    """Run the child so that file permissions bind it: as root, without the two capabilities
    (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH) that let root ignore them."""
    prefix: list[str] = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            skip_outside_ci(
                "running as root and setpriv(1) is missing: cannot drop CAP_DAC_OVERRIDE"
            )
        prefix = [setpriv, *_NO_DAC]
    proc = subprocess.run(
        [*prefix, sys.executable, "-c", _UNPRIVILEGED_CHILD, str(base), case],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=base,
        check=False,
        env={**os.environ, "TMPDIR": str(base / "work")},
    )
    assert proc.returncode == 0, proc.stderr
    out: dict[str, Any] = json.loads(proc.stdout)
    return out


def _store_and_work(base: Path) -> None:
    for name in ("store", "work"):
        (base / name).mkdir()


def test_unreadable_file(tmp_path: Path) -> None:
    base = tmp_path
    (base / "src").mkdir()
    src = base / "src" / "secret.pt"
    src.write_bytes(PAYLOAD)
    src.chmod(0o000)
    (base / "src" / "ok.bin").write_bytes(b"ok")
    _store_and_work(base)
    out = _run_unprivileged(base, "unreadable")
    assert out["os_access_says_readable"] is False, "the child could bypass file permissions"
    err = out["error"]
    assert err is not None and err["mro"][0] == "SourceFileError", err
    assert str(src) in err["message"] and "ermission denied" in err["message"]
    assert out["staged_after_error"] == [] and out["pending_after_error"] == []
    assert out["ok"] == 2
    assert tree(base / "store") == {"ok.bin"}
    st = src.stat()
    assert stat.S_IMODE(st.st_mode) == 0o000 and st.st_uid == os.geteuid()
    src.chmod(0o600)
    assert src.read_bytes() == PAYLOAD


def test_unreadable_source_that_os_access_calls_readable(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As root (or with ACLs / root-squashed NFS), os.access may say yes while open() says no:
    # the error must still blame the source, not the staging folder.
    real_open = open

    def refusing_open(file: Any, *args: Any, **kwargs: Any) -> Any:
        if os.fspath(file) == str(world.src):
            raise PermissionError(errno.EACCES, "Permission denied", str(world.src))
        return real_open(file, *args, **kwargs)

    up = world.uploader()
    monkeypatch.setattr("builtins.open", refusing_open)
    with pytest.raises(SourceFileError) as info:
        up.submit(world.src, "refused.bin")
    monkeypatch.undo()
    assert_documented(info.value)
    assert str(world.src) in str(info.value) and "Permission denied" in str(info.value)
    world.assert_nothing_half_written()


def test_unwritable_staging_folder(tmp_path: Path) -> None:
    base = tmp_path
    _store_and_work(base)
    folder = base / "readonly"
    folder.mkdir()
    folder.chmod(0o555)
    out = _run_unprivileged(base, "unwritable")
    assert out["os_access_says_writable"] is False, "the child could bypass file permissions"
    for key, named in (("new_inside", folder / "s"), ("itself", folder)):
        err = out[key]
        assert err is not None and err["mro"][0] == "StagingError", (key, err)
        assert str(named) in err["message"] and "ermission denied" in err["message"], err
    assert out["left_in_folder"] == []
    assert tree(base / "store") == set()


# -- the staging folder on a full disk ------------------------------------------------------------

_FULL_DISK_CHILD = r"""
import json, os, sys
from pathlib import Path
from artifact_uploader import Uploader
from artifact_uploader._journal import load

mnt, outside = Path(sys.argv[1]), Path(sys.argv[2])
staging = mnt / "staging"
out = {}

def free():
    st = os.statvfs(mnt)
    return st.f_bavail * st.f_frsize

def attempt(call):
    try:
        call()
    except Exception as exc:
        return {"mro": [c.__name__ for c in type(exc).__mro__], "message": str(exc),
                "cause": repr(exc.__cause__)}
    return None

up = Uploader((outside / "store").as_uri(), staging_dir=staging)
out["free_before"] = free()
# 1. A file larger than the whole device: the copy runs out of space part-way.
out["big"] = attempt(lambda: up.submit(outside / "big.bin", "big.bin"))
out["big_staged"] = sorted(os.listdir(staging / "staged"))
out["free_after_big"] = free()
# 2. A file that fills the device exactly: staging succeeds, the journal line does not fit.
exact = outside / "exact.bin"
exact.write_bytes(b"e" * free())
out["exact"] = attempt(lambda: up.submit(exact, "exact.bin"))
out["exact_staged"] = sorted(os.listdir(staging / "staged"))
out["free_after_exact"] = free()
out["pending"] = [e.name for e in load(staging)[0]]
out["journal_bytes"] = (staging / "journal.jsonl").stat().st_size
# 3. The uploader still works once there is room.
out["small"] = up.upload(outside / "small.bin", "small.bin").size
up.close()
out["pending_at_end"] = [e.name for e in load(staging)[0]]
print(json.dumps(out))
"""


def _unshare_prefix() -> list[str]:
    unshare = shutil.which("unshare")
    if unshare is None:
        skip_outside_ci("unshare(1) is not installed: no private mount namespace for a small tmpfs")
    return [unshare, "-m"] if os.geteuid() == 0 else [unshare, "-Urm"]


def test_full_disk_real_tmpfs(tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(3 * 1024 * 1024))
    big_digest = hashlib.sha256(big.read_bytes()).hexdigest()
    (tmp_path / "small.bin").write_bytes(b"s" * 100)
    mount = 'mount -t tmpfs -o size=1m tmpfs "$0" && exec "$@"'
    probe = subprocess.run(
        [*_unshare_prefix(), "sh", "-c", mount, str(mnt), "true"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if probe.returncode != 0:
        skip_outside_ci(f"cannot mount a private tmpfs here: {probe.stderr.strip()}")
    child = [sys.executable, "-c", _FULL_DISK_CHILD, str(mnt), str(tmp_path)]
    proc = subprocess.run(
        [*_unshare_prefix(), "sh", "-c", mount, str(mnt), *child],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["free_before"] == 1024 * 1024
    big_err = out["big"]
    assert big_err is not None and big_err["mro"][0] == "StagingError", big_err
    assert str(mnt / "staging") in big_err["message"] and "no space" in big_err["message"]
    assert "No space left on device" in big_err["cause"]
    assert out["big_staged"] == [] and out["free_after_big"] == out["free_before"]
    exact_err = out["exact"]
    assert exact_err is not None and exact_err["mro"][0] == "StagingError", exact_err
    assert "journal" in exact_err["message"] and str(mnt / "staging") in exact_err["message"]
    assert out["exact_staged"] == [] and out["free_after_exact"] == out["free_before"]
    assert out["pending"] == [] and out["journal_bytes"] == 0, "a half-written journal line"
    assert out["small"] == 100 and out["pending_at_end"] == []
    assert tree(tmp_path / "store") == {"small.bin"}
    assert hashlib.sha256(big.read_bytes()).hexdigest() == big_digest


def test_enospc_mid_copy_simulated(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    big = world.root / "big.bin"
    big.write_bytes(os.urandom(256 * 1024))
    up = world.uploader()
    real_copy_file_range = os.copy_file_range
    calls = []

    def copy_then_fill(src: int, dst: int, count: int, *args: Any) -> int:
        calls.append(count)
        if len(calls) == 1:  # the first chunk lands, then the disk is full
            return real_copy_file_range(src, dst, min(count, 4096), *args)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "copy_file_range", copy_then_fill)
    with pytest.raises(StagingError) as info:
        up.submit(big, "big.bin")
    monkeypatch.undo()
    assert len(calls) >= 2, "the copy never reached the injected ENOSPC"
    assert_documented(info.value)
    assert str(world.staging) in str(info.value) and "no space" in str(info.value)
    assert staged_bytes(up) == 0
    world.assert_nothing_half_written()


def test_enospc_on_journal_simulated(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    up = world.uploader()
    journal = world.staging / JOURNAL_FILE
    before = journal.read_bytes()

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(StagingError) as info:
        up.submit(world.src, "j.bin")
    monkeypatch.undo()
    assert_documented(info.value)
    assert str(journal) in str(info.value)
    # The line that was written but not synced was cut off again.
    assert journal.read_bytes() == before
    world.assert_nothing_half_written()
