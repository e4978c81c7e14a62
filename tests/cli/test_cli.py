"""The ``artifact-uploader`` command line, run as the real console script.

Progress-bar tests run the script in a pseudo-terminal (so rich sees a terminal) and read its
output with a deadline; the rest use pipes, where stdout and stderr stay apart.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import select
import shlex
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from artifact_uploader import __version__
from artifact_uploader._cli import build_parser, find_bench_script
from artifact_uploader._cli_options import parse_provider_kwargs, resume_command
from artifact_uploader._cli_put import collect
from artifact_uploader._journal import load
from tests.conftest import reaped, wait_until
from tests.servers.fault_proxy import Fault, FaultProxy
from tests.servers.moto import (
    MOTO_KEY,
    MOTO_REGION,
    MOTO_SECRET,
    MotoServer,
    list_s3_keys,
    read_s3_object,
)

SCRIPT = Path(sys.executable).with_name("artifact-uploader")
DEADLINE = 60.0
# What the store root holds besides the objects (the local store's temp folder).
LOCAL_TMP = ".artifact-uploader-tmp"


@pytest.fixture(scope="module", autouse=True)
def _script_installed() -> None:
    assert SCRIPT.exists(), (
        f"{SCRIPT} is missing: install the package (`pip install -e .`) to get the console script"
    )


def _env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("NO_COLOR", "FORCE_COLOR", "TTY_INTERACTIVE", "TTY_COMPATIBLE", "COLUMNS")
        and not k.startswith("AWS_")
    }
    # A terminal rich can redraw; credentials for moto come from the standard variables.
    env.update(
        TERM="xterm-256color",
        AWS_ACCESS_KEY_ID=MOTO_KEY,
        AWS_SECRET_ACCESS_KEY=MOTO_SECRET,
        AWS_DEFAULT_REGION=MOTO_REGION,
        AWS_EC2_METADATA_DISABLED="true",
    )
    env.update(extra)
    return env


def run_in_pty(
    args: list[str],
    cwd: Path,
    env: dict[str, str] | None = None,
    poke: Callable[[subprocess.Popen[bytes]], None] | None = None,
) -> tuple[int, str]:
    """Run the console script with a pseudo-terminal as stdin/stdout/stderr.

    ``poke(proc)``, if given, is called while it runs (at least every 50 ms), e.g. to send a
    signal once a condition holds.

    Returns:
        (exit code, everything it wrote to the terminal).
    """
    master, slave = os.openpty()
    # 120 columns x 40 rows, so the bar has room and rich does not fall back to 80.
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen(
        [str(SCRIPT), *args],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        cwd=cwd,
        env=env or _env(),
        close_fds=True,
    )
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + DEADLINE
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                proc.kill()
                raise AssertionError(
                    f"{args} still running after {DEADLINE}s; output so far:\n"
                    + b"".join(chunks).decode(errors="replace")
                )
            if poke is not None:
                poke(proc)
            ready, _, _ = select.select([master], [], [], min(remaining, 0.05 if poke else 1.0))
            if not ready:
                continue
            try:
                data = os.read(master, 65536)
            except OSError as exc:
                # EIO: every process holding the terminal's other end has exited.
                if exc.errno != errno.EIO:
                    raise
                break
            if not data:
                break
            chunks.append(data)
        code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return code, b"".join(chunks).decode(errors="replace")


def run(
    args: list[str], cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the console script with pipes (not a terminal)."""
    return subprocess.run(
        [str(SCRIPT), *args],
        cwd=cwd,
        env=env or _env(),
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        stdin=subprocess.DEVNULL,
    )


def make_tree(root: Path) -> dict[str, bytes]:
    """A small directory (nested, an empty file, a 300 kB file); returns name -> bytes."""
    files = {
        "a.bin": os.urandom(300_000),
        "sub/b.txt": b"hello\n",
        "sub/deeper/c.json": b'{"step": 1}',
        "empty": b"",
    }
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return files


def local_objects(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and LOCAL_TMP not in p.parts
    }


def assert_progress_bar(output: str, files: str | None = None, complete: bool = True) -> None:
    """rich drew a live bar: its label, a redraw in place (erase line), percentage, files."""
    assert "\x1b[2K" in output, output
    output = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", output)  # colours and cursor moves
    assert re.search(r"(Uploading|Resuming) ━+ +\d+%", output), output
    assert re.search(r"\d+/\d+ files", output), output
    assert re.search(r"[\d.]+ [kMG]?B/s", output), output
    if complete:
        assert "100%" in output, output
    if files is not None:
        assert f"{files} files" in output, output


# -- put in a terminal -------------------------------------------------------------------------


def test_put_dir_to_file_store_shows_progress_in_a_terminal(tmp_path: Path) -> None:
    expected = make_tree(tmp_path / "ckpt")
    store = tmp_path / "store"
    code, out = run_in_pty(["put", "./ckpt", "--to", store.as_uri()], cwd=tmp_path)
    assert code == 0, out
    assert_progress_bar(out, files="4/4")
    # The summary table.
    assert "uploaded" in out and "rate" in out, out
    # Names are relative to the directory: its own name is not part of them.
    assert local_objects(store) == expected


def test_put_dir_to_s3_shows_progress_in_a_terminal(
    tmp_path: Path, moto_server: MotoServer, moto_s3: Any, s3_bucket: str
) -> None:
    expected = make_tree(tmp_path / "ckpt")
    code, out = run_in_pty(
        [
            "put",
            "ckpt",
            "--to",
            f"s3://{s3_bucket}/run-1",
            "--provider-kwarg",
            f"endpoint_url={moto_server.endpoint_url}",
            "--concurrency",
            "4",
        ],
        cwd=tmp_path,
    )
    assert code == 0, out
    assert_progress_bar(out, files="4/4")
    assert sorted(list_s3_keys(moto_s3, s3_bucket)) == sorted(f"run-1/{n}" for n in expected)
    for name, data in expected.items():
        assert read_s3_object(moto_s3, s3_bucket, f"run-1/{name}") == data


def test_no_progress_bar_without_a_terminal(tmp_path: Path) -> None:
    make_tree(tmp_path / "ckpt")
    result = run(["put", "ckpt", "--to", str(tmp_path / "store")], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "━" not in result.stderr and "%" not in result.stderr
    # The summary still goes to stdout.
    assert "uploaded" in result.stdout
    quiet = run(["put", "ckpt", "--to", str(tmp_path / "store2"), "-q"], cwd=tmp_path)
    assert quiet.returncode == 0 and quiet.stdout == "" and quiet.stderr == ""
    assert len(local_objects(tmp_path / "store2")) == 4


# -- --json ------------------------------------------------------------------------------------


def test_json_output_lists_the_objects(
    tmp_path: Path, moto_server: MotoServer, moto_s3: Any, s3_bucket: str
) -> None:
    expected = make_tree(tmp_path / "ckpt")
    (tmp_path / "model.pt").write_bytes(b"weights")
    result = run(
        [
            "put",
            "ckpt",
            "model.pt",
            "--to",
            f"s3://{s3_bucket}",
            "--provider-kwarg",
            f"endpoint_url={moto_server.endpoint_url}",
            "--json",
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)  # the whole of stdout is one JSON document
    assert doc["ok"] is True and doc["exit_code"] == 0 and doc["failed"] == []
    names = {o["name"]: o for o in doc["uploaded"]}
    assert set(names) == {*expected, "model.pt"}
    assert names["model.pt"]["uri"] == f"s3://{s3_bucket}/model.pt"
    assert names["a.bin"]["size"] == 300_000
    assert names["sub/b.txt"]["source"] == "ckpt/sub/b.txt"
    assert doc["files"] == 5 and doc["bytes"] == sum(map(len, expected.values())) + 7
    assert read_s3_object(moto_s3, s3_bucket, "model.pt") == b"weights"
    # A terminal too: still no progress bar, still only JSON on stdout.
    code, out = run_in_pty(
        ["put", "model.pt", "--to", str(tmp_path / "store"), "--json"], cwd=tmp_path
    )
    assert code == 0, out
    assert "━" not in out
    assert json.loads(out)["uploaded"][0]["name"] == "model.pt"


def test_json_types_for_a_small_and_a_multipart_object(
    tmp_path: Path, moto_server: MotoServer, moto_s3: Any, s3_bucket: str
) -> None:
    import base64

    import google_crc32c

    small = os.urandom(1000)
    big = os.urandom(17 * 1024 * 1024)  # over the default 16 MiB threshold: two parts
    (tmp_path / "small.bin").write_bytes(small)
    (tmp_path / "big.bin").write_bytes(big)
    result = run(
        [
            "put",
            "small.bin",
            "big.bin",
            "--to",
            f"s3://{s3_bucket}/j",
            "--provider-kwarg",
            f"endpoint_url={moto_server.endpoint_url}",
            "--json",
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    objects = {o["name"]: o for o in json.loads(result.stdout)["uploaded"]}
    for name, data in (("small.bin", small), ("big.bin", big)):
        obj = objects[name]
        assert read_s3_object(moto_s3, s3_bucket, f"j/{name}") == data
        assert obj["size"] == len(data) and isinstance(obj["size"], int)
        # No versioning on the bucket: JSON null, not the string "null".
        assert obj["version"] is None, obj
        assert isinstance(obj["etag"], str) and obj["etag"], obj
        # Both carry the store's CRC32C (the multipart one: its composite), as the store
        # itself reports it.
        assert obj["checksum_algorithm"] == "crc32c", obj
        stored = moto_s3.head_object(Bucket=s3_bucket, Key=f"j/{name}", ChecksumMode="ENABLED")
        assert obj["checksum"] == stored["ChecksumCRC32C"], (obj, stored)
    whole = base64.b64encode(google_crc32c.Checksum(small).digest()).decode()
    assert objects["small.bin"]["checksum"] == whole
    assert isinstance(objects["big.bin"]["checksum"], str)


# -- failures ----------------------------------------------------------------------------------


def test_no_overwrite_onto_an_existing_object_fails_and_names_it(tmp_path: Path) -> None:
    make_tree(tmp_path / "ckpt")
    store = tmp_path / "store"
    (store / "sub").mkdir(parents=True)
    (store / "sub" / "b.txt").write_bytes(b"already here")
    result = run(["put", "ckpt", "--to", store.as_uri(), "--no-overwrite", "--json"], cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert "failed to upload sub/b.txt" in result.stderr
    assert "ObjectExistsError" in result.stderr
    doc = json.loads(result.stdout)
    assert doc["ok"] is False and doc["exit_code"] == 1
    assert [f["name"] for f in doc["failed"]] == ["sub/b.txt"]
    assert {o["name"] for o in doc["uploaded"]} == {"a.bin", "sub/deeper/c.json", "empty"}
    # The existing object is untouched, and a private staging folder is not left behind.
    assert (store / "sub" / "b.txt").read_bytes() == b"already here"
    assert doc["staging_dir"] is None and doc["failed"][0]["staged_path"] is None


def test_failed_upload_in_a_terminal_exits_non_zero_and_names_it(tmp_path: Path) -> None:
    make_tree(tmp_path / "ckpt")
    store = tmp_path / "store"
    store.mkdir()
    (store / "empty").write_bytes(b"x")
    code, out = run_in_pty(["put", "ckpt", "--to", str(store), "--no-overwrite"], cwd=tmp_path)
    assert code == 1, out
    assert "failed to upload empty" in out
    assert_progress_bar(out, files="3/4 (1 failed)")


def test_missing_bucket_exits_3_and_names_the_store(
    tmp_path: Path, moto_server: MotoServer
) -> None:
    make_tree(tmp_path / "ckpt")
    args = [
        "put",
        "ckpt",
        "--to",
        "s3://no-such-bucket-here/x",
        "--provider-kwarg",
        f"endpoint_url={moto_server.endpoint_url}",
    ]
    result = run(args, cwd=tmp_path)
    assert result.returncode == 3, result.stderr
    assert "s3://no-such-bucket-here/x" in result.stderr
    assert "nothing was uploaded (4 file(s))" in result.stderr
    assert result.stdout == ""
    as_json = run([*args, "--json"], cwd=tmp_path)
    assert as_json.returncode == 3
    doc = json.loads(as_json.stdout)
    assert doc["ok"] is False and "no-such-bucket-here" in doc["error"]
    assert len(doc["not_started"]) == 4 and doc["uploaded"] == []


def test_a_file_refused_at_submit_is_named_and_the_rest_uploads(tmp_path: Path) -> None:
    expected = make_tree(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "dangling").symlink_to(tmp_path / "gone")
    store = tmp_path / "store"
    result = run(["put", "ckpt", "--to", str(store)], cwd=tmp_path)
    assert result.returncode == 1
    assert "failed to upload dangling" in result.stderr and "no such file" in result.stderr
    assert local_objects(store) == expected


def test_secrets_are_never_echoed(tmp_path: Path, moto_server: MotoServer) -> None:
    (tmp_path / "f.txt").write_bytes(b"x")
    secret = "TOPSECRET-9f8e7d6c5b4a"
    base = ["put", "f.txt", "--to", "s3://no-such-bucket-here"]
    endpoint = f"endpoint_url={moto_server.endpoint_url}"
    cases = [
        # An unknown option holding a secret (config error, exit 2).
        [*base, "--provider-kwarg", f"bogus={secret}", "--json"],
        # A credential reaching the store, which fails (exit 3), with --json.
        [*base, "--provider-kwarg", endpoint, "--provider-kwarg", f"secret={secret}", "--json"],
        # A secret typed without its key.
        [*base, "--provider-kwarg", secret],
    ]
    for args in cases:
        result = run(args, cwd=tmp_path)
        assert result.returncode in (2, 3), result.stderr
        assert secret not in result.stdout + result.stderr, args
        assert result.stderr.strip(), args


@pytest.mark.parametrize("wrong", ["secret", "key"])
def test_wrong_credentials_say_so(
    tmp_path: Path,
    moto_server: MotoServer,
    s3_bucket: str,
    moto_iam_credentials: dict[str, str],
    wrong: str,
) -> None:
    """A 403 from a store that checks signatures: the message is about the credentials."""
    (tmp_path / "f.txt").write_bytes(b"x")
    creds = dict(moto_iam_credentials)
    creds[wrong] = "WRONG" + creds[wrong][5:] if wrong == "secret" else "AKIAWRONGWRONGWRONG1"
    env = _env(AWS_ACCESS_KEY_ID=creds["key"], AWS_SECRET_ACCESS_KEY=creds["secret"])
    result = run(
        ["put", "f.txt", "--to", f"s3://{s3_bucket}", *_s3_args(moto_server)], cwd=tmp_path, env=env
    )
    # The store could not be opened (exit 3), and the message says why.
    assert result.returncode == 3, result.stderr
    assert "credentials were refused" in result.stderr, result.stderr
    assert "nothing was uploaded" in result.stderr
    assert creds["secret"] not in result.stderr + result.stdout
    # get, the same store and credentials.
    got = run(
        ["get", f"s3://{s3_bucket}/f.txt", "f.out", *_s3_args(moto_server)], cwd=tmp_path, env=env
    )
    assert got.returncode == 3, got.stderr
    assert "credentials were refused" in got.stderr, got.stderr
    assert not (tmp_path / "f.out").exists()


# -- usage -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["put", "missing.txt", "--to", "file:///tmp/x"], "no such file or directory"),
        (["put", "f.txt"], "the following arguments are required: --to"),
        (["put", "f.txt", "--to", "nope://x"], "unknown store scheme 'nope'"),
        (["put", "f.txt", "--to", "/tmp/x", "--concurrency", "0"], "positive integer"),
        (["put", "f.txt", "--to", "/tmp/x", "--staging", "teleport"], "invalid choice"),
        (["put", "f.txt", "--to", "/tmp/x", "--provider-kwarg", "fsync"], "KEY=VALUE"),
        (["frobnicate"], "invalid choice"),
        (["resume", ".", "--to", "/tmp/x"], "holds no crash journal"),
    ],
)
def test_bad_usage_exits_2_with_a_clear_message(
    tmp_path: Path, args: list[str], message: str
) -> None:
    (tmp_path / "f.txt").write_bytes(b"x")
    result = run(args, cwd=tmp_path)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert message in result.stderr


@pytest.mark.parametrize(
    ("to", "suggestion"),
    [
        ("s3:/my-bucket", "did you mean s3://my-bucket?"),
        ("s3:bucket", "did you mean s3://bucket?"),
        ("gs:/b", "did you mean gs://b?"),
        ("az:container", "did you mean az://container?"),
        ("S3:/my-bucket/pre", "did you mean s3://my-bucket/pre?"),
        ("s3//my-bucket", "did you mean s3://my-bucket?"),
        ("file:/tmp/x", "did you mean file:///tmp/x?"),
        ("gcs:/b", "schemes: az, file, gs, s3"),
    ],
)
@pytest.mark.parametrize("command", ["put", "resume"])
def test_a_mistyped_store_uri_is_refused_not_written_locally(
    tmp_path: Path, to: str, suggestion: str, command: str
) -> None:
    (tmp_path / "f.txt").write_bytes(b"x")
    staging = tmp_path / "staging"
    if command == "resume":
        # A real journal to resume, so only the URI can be what is refused.
        first = run(
            ["put", "f.txt", "--to", str(tmp_path / "s"), "--staging-dir", str(staging)],
            cwd=tmp_path,
        )
        assert first.returncode == 0, first.stderr
        args = ["resume", str(staging), "--to", to]
    else:
        args = ["put", "f.txt", "--to", to]
    before = sorted(p.name for p in tmp_path.iterdir())
    result = run(args, cwd=tmp_path)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert f"--to {to!r} looks like a store URI but is not a well-formed one" in result.stderr
    assert suggestion in result.stderr
    # Nothing written where the mistyped URI would have made a local folder.
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_two_sources_with_one_name_are_refused_before_uploading(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.txt").write_bytes(b"1")
    (tmp_path / "x.txt").write_bytes(b"2")
    store = tmp_path / "store"
    result = run(["put", "a", "x.txt", "--to", str(store)], cwd=tmp_path)
    assert result.returncode == 2
    assert "would both be uploaded as 'x.txt'" in result.stderr
    assert not store.exists()


def test_help_mentions_every_subcommand_and_examples(tmp_path: Path) -> None:
    result = run(["--help"], cwd=tmp_path)
    assert result.returncode == 0
    for word in (
        "put",
        "resume",
        "get",
        "bench",
        "file://",
        "s3://",
        "gs://",
        "az://",
        "endpoint_url",
    ):
        assert word in result.stdout, word
    put_help = run(["put", "--help"], cwd=tmp_path)
    assert put_help.returncode == 0
    assert "NOT part of the object names" in put_help.stdout
    assert "--no-overwrite" in put_help.stdout and "--staging" in put_help.stdout
    version = run(["--version"], cwd=tmp_path)
    assert version.returncode == 0 and __version__ in version.stdout


def test_python_dash_m_runs_the_same_cli(tmp_path: Path) -> None:
    (tmp_path / "f.txt").write_bytes(b"via -m")
    result = subprocess.run(
        [sys.executable, "-m", "artifact_uploader", "put", "f.txt", "--to", "store", "--json"],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=DEADLINE,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["uploaded"][0]["uri"] == (tmp_path / "store/f.txt").as_uri()
    assert (tmp_path / "store" / "f.txt").read_bytes() == b"via -m"


# -- interrupt and resume ----------------------------------------------------------------------


class _HangingS3:
    """A loopback HTTP server that answers HEAD (the bucket check) and never answers a PUT."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.puts: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_HEAD(self) -> None:
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_PUT(self) -> None:
                outer.puts.append(self.path)
                outer.release.wait(DEADLINE)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


@pytest.fixture
def hanging_s3() -> Iterator[_HangingS3]:
    server = _HangingS3()
    try:
        yield server
    finally:
        server.close()


# Starts a command with SIGINT ignored, as a shell does for `cmd &` without job control (CI
# runners, scripts, `nohup`-style launchers): the ignored disposition survives exec.
SIGINT_IGNORED = [
    sys.executable,
    "-c",
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); "
    "os.execv(sys.argv[1], sys.argv[1:])",
]


def _start_put_that_hangs(
    tmp_path: Path,
    server: _HangingS3,
    staging: Path,
    *extra: str,
    sigint_ignored: bool = False,
) -> tuple[subprocess.Popen[str], dict[str, bytes]]:
    files = {"one.bin": os.urandom(1000), "two/three.bin": os.urandom(2000)}
    for name, data in files.items():
        (tmp_path / "src" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "src" / name).write_bytes(data)
    proc = subprocess.Popen(
        [
            *(SIGINT_IGNORED if sigint_ignored else []),
            str(SCRIPT),
            "put",
            "src",
            "--to",
            "s3://bucket/pre",
            "--provider-kwarg",
            f"endpoint_url={server.endpoint}",
            "--provider-kwarg",
            "read_timeout=60",
            "--staging-dir",
            str(staging),
            *extra,
        ],
        cwd=tmp_path,
        env=_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # Readiness: both uploads are in flight, so the command is past start-up (its SIGINT
        # handler installed) and blocked waiting on them; no guess at how long that takes.
        wait_until(lambda: len(server.puts) == 2, timeout=DEADLINE, what="both PUTs to arrive")
    except BaseException:
        # A put that never gets there is killed and collected, not left running.
        with reaped(proc):
            raise
    return proc, files


@pytest.mark.parametrize(
    "sigint_ignored", [False, True], ids=["plain", "started-with-sigint-ignored"]
)
def test_ctrl_c_reports_what_was_not_uploaded_then_resume_finishes_it(
    tmp_path: Path, hanging_s3: _HangingS3, sigint_ignored: bool
) -> None:
    # With SIGINT ignored by whoever started it (a background job of a script, as under a CI
    # runner), the command used to carry on through the Ctrl-C until it was killed.
    staging = tmp_path / "staging"
    proc, files = _start_put_that_hangs(
        tmp_path, hanging_s3, staging, sigint_ignored=sigint_ignored
    )
    with reaped(proc):  # killed and collected even if it ignores the SIGINT
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=DEADLINE)
    assert proc.returncode == 130, err
    assert "uploaded" in out  # the summary table
    # Each file once, as interrupted: the uploader's cancellation is not a timeout.
    for name in files:
        assert err.count(f"not uploaded (interrupted): {name} ") == 1, err
    assert "TimeoutError" not in err and "failed" not in err.replace("failed │", ""), err
    assert "staged copy kept at " + str(staging) in err
    # The hint carries the options given, so it targets the same store.
    assert (
        f"resume {staging} --to s3://bucket/pre --provider-kwarg "
        f"endpoint_url={hanging_s3.endpoint} --provider-kwarg read_timeout=60\n" in err
    ), err
    pending, _ = load(staging)
    assert sorted(e.name for e in pending) == sorted(files)
    # The journal does not bind the store: finish into a local folder.
    store = tmp_path / "store"
    result = run(["resume", str(staging), "--to", str(store), "--json"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert sorted(o["name"] for o in doc["uploaded"]) == sorted(files)
    assert local_objects(store) == files
    assert load(staging) == ([], [])


def _printed_resume_command(err: str) -> list[str]:
    """The resume command the CLI printed (on the line after its lead), as argv for SCRIPT."""
    lines = err.splitlines()
    found = [line.strip() for line in lines if line.strip().startswith("artifact-uploader resume ")]
    assert len(found) == 1, err
    argv = shlex.split(found[0])
    return [str(SCRIPT), *argv[1:]]


def _start_put_through_stalling_proxy(
    tmp_path: Path, proxy: FaultProxy, bucket: str, *extra: str
) -> tuple[subprocess.Popen[str], dict[str, bytes]]:
    """A put to moto (credentials from the environment) whose two PUTs the proxy holds."""
    files = {"one.bin": os.urandom(1000), "two/three.bin": os.urandom(2000)}
    for name, data in files.items():
        (tmp_path / "src" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "src" / name).write_bytes(data)
    proxy.script(Fault("stall", body_fraction=1.0), Fault("stall", body_fraction=1.0), method="PUT")
    proc = subprocess.Popen(
        [
            str(SCRIPT),
            "put",
            "src",
            "--to",
            f"s3://{bucket}/run 1",
            "--provider-kwarg",
            f"endpoint_url={proxy.endpoint_url}",
            "--provider-kwarg",
            f"region={MOTO_REGION}",
            "--provider-kwarg",
            "read_timeout=60",
            *extra,
        ],
        cwd=tmp_path,
        env=_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # Readiness: both PUTs are held by the proxy (the command is blocked waiting on them).
        wait_until(lambda: proxy.counts["stall"] == 2, timeout=DEADLINE, what="two held PUTs")
    except BaseException:
        with reaped(proc):
            raise
    return proc, files


def _finish_with_printed_command(
    tmp_path: Path, err: str, proxy: FaultProxy, moto_s3: Any, bucket: str, files: dict[str, bytes]
) -> Path:
    """Run the printed resume command as printed; the objects land in the same store."""
    argv = _printed_resume_command(err)
    staging = Path(argv[2])
    assert staging.is_dir() and sorted(e.name for e in load(staging)[0]) == sorted(files)
    proxy.reset()  # the proxy forwards from now on
    done = subprocess.run(
        argv, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=DEADLINE
    )
    assert done.returncode == 0, done.stderr
    for name, data in files.items():
        assert read_s3_object(moto_s3, bucket, f"run 1/{name}") == data
    assert load(staging) == ([], [])
    return staging


def test_ctrl_c_resume_hint_copied_as_printed_finishes_into_the_same_store(
    tmp_path: Path, fault_proxy: FaultProxy, moto_s3: Any, s3_bucket: str
) -> None:
    # No --staging-dir: the private staging folder under $TMPDIR is kept and named.
    proc, files = _start_put_through_stalling_proxy(tmp_path, fault_proxy, s3_bucket, "--json")
    with reaped(proc):
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=DEADLINE)
    assert proc.returncode == 130, err
    doc = json.loads(out)
    assert doc["interrupted"] is True and doc["uploaded"] == []
    assert {f["name"]: f["error"] for f in doc["failed"]} == dict.fromkeys(
        files, "interrupted before it finished"
    )
    assert "TimeoutError" not in err
    assert "endpoint_url=" + fault_proxy.endpoint_url in err
    staging = _finish_with_printed_command(tmp_path, err, fault_proxy, moto_s3, s3_bucket, files)
    assert Path(doc["staging_dir"]) == staging


def test_second_ctrl_c_stops_at_once_and_prints_a_resume_command_that_works(
    tmp_path: Path, fault_proxy: FaultProxy, moto_s3: Any, s3_bucket: str
) -> None:
    proc, files = _start_put_through_stalling_proxy(tmp_path, fault_proxy, s3_bucket)
    with reaped(proc):
        assert proc.stderr is not None
        proc.send_signal(signal.SIGINT)
        lines: list[str] = []
        # The first Ctrl-C's note, then the second Ctrl-C lands while uploads are still held.
        for line in proc.stderr:
            lines.append(line)
            if "Ctrl-C again to stop now" in line:
                break
        proc.send_signal(signal.SIGINT)
        _, rest = proc.communicate(timeout=DEADLINE)
    err = "".join(lines) + rest
    assert proc.returncode == 130, err
    assert "interrupted again: stopped now" in err
    assert "Traceback" not in err
    staging = _finish_with_printed_command(tmp_path, err, fault_proxy, moto_s3, s3_bucket, files)
    # It said where the kept copies are, and that the folder may be deleted instead.
    assert f"staged copies in {staging}" in err and f"rm -r {staging}" in err


def test_ctrl_c_while_the_store_is_being_opened_stops_and_leaves_nothing(
    tmp_path: Path, fault_proxy: FaultProxy, s3_bucket: str
) -> None:
    (tmp_path / "f.txt").write_bytes(b"x")
    (tmp_path / "tmp").mkdir()
    fault_proxy.script(Fault("stall"), method="HEAD")  # the bucket check never answers
    proc = subprocess.Popen(
        [
            str(SCRIPT),
            "put",
            "f.txt",
            "--to",
            f"s3://{s3_bucket}",
            "--provider-kwarg",
            f"endpoint_url={fault_proxy.endpoint_url}",
            "--provider-kwarg",
            "read_timeout=60",
        ],
        cwd=tmp_path,
        env=_env(TMPDIR=str(tmp_path / "tmp")),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    with reaped(proc):
        wait_until(lambda: fault_proxy.counts["stall"] == 1, timeout=DEADLINE, what="held HEAD")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=DEADLINE)
    assert proc.returncode == 130, err
    assert "interrupted while opening the store" in err and "nothing was uploaded" in err, err
    # The private staging folder made for the run is gone.
    assert list((tmp_path / "tmp").iterdir()) == []


def test_ctrl_c_in_a_terminal_names_each_file_once(
    tmp_path: Path, fault_proxy: FaultProxy, s3_bucket: str
) -> None:
    files = {"one.bin": os.urandom(1000), "two/three.bin": os.urandom(2000)}
    for name, data in files.items():
        (tmp_path / "src" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "src" / name).write_bytes(data)
    fault_proxy.script(
        Fault("stall", body_fraction=1.0), Fault("stall", body_fraction=1.0), method="PUT"
    )
    sent: list[bool] = []

    def interrupt_when_held(proc: subprocess.Popen[bytes]) -> None:
        if not sent and fault_proxy.counts["stall"] == 2:
            proc.send_signal(signal.SIGINT)
            sent.append(True)

    code, out = run_in_pty(
        [
            "put",
            "src",
            "--to",
            f"s3://{s3_bucket}",
            "--provider-kwarg",
            f"endpoint_url={fault_proxy.endpoint_url}",
            "--provider-kwarg",
            "read_timeout=60",
        ],
        cwd=tmp_path,
        poke=interrupt_when_held,
    )
    assert sent and code == 130, out
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out)
    for name in files:
        # Not once above the bar as a failure and again in the report: once, as interrupted.
        assert plain.count(f"not uploaded (interrupted): {name} ") == 1, plain
        assert f"{name}:" not in plain, plain
    assert "TimeoutError" not in plain and "failed:" not in plain


def test_resume_command_keeps_public_options_and_hides_secrets() -> None:
    args = build_parser().parse_args(
        [
            "put",
            "x",
            "--to",
            "s3://b/p q",
            "--provider-kwarg",
            "endpoint_url=http://127.0.0.1:9000",
            "--provider-kwarg",
            "secret=TOPSECRET-1234",
            "--provider-kwarg",
            "key=AKIAEXAMPLE",
            "--concurrency",
            "3",
        ]
    )
    args.store = args.to
    command, hidden = resume_command(args, "/var/tmp/stage dir")
    assert "TOPSECRET" not in command and "AKIAEXAMPLE" not in command
    assert hidden == ["secret", "key"]
    words = shlex.split(command)
    # The program as the user ran it (under pytest, `python -m ...`), then the command.
    assert words[: words.index("resume")] in (
        ["artifact-uploader"],
        ["python", "-m", "artifact_uploader"],
    )
    assert words[words.index("resume") :] == [
        "resume",
        "/var/tmp/stage dir",
        "--to",
        "s3://b/p q",
        "--provider-kwarg",
        "endpoint_url=http://127.0.0.1:9000",
        "--provider-kwarg",
        "secret=<secret>",
        "--provider-kwarg",
        "key=<key>",
        "--concurrency",
        "3",
    ]


def test_resume_a_journal_left_by_a_killed_process_in_a_terminal(
    tmp_path: Path, hanging_s3: _HangingS3
) -> None:
    staging = tmp_path / "staging"
    proc, files = _start_put_that_hangs(tmp_path, hanging_s3, staging)
    with reaped(proc):
        proc.kill()
    # A truncated line, as a crash mid-append leaves: reported, skipped.
    with open(staging / "journal.jsonl", "a") as f:
        f.write('{"op": "pending", "id": "trunc')
    store = tmp_path / "store"
    code, out = run_in_pty(["resume", str(staging), "--to", store.as_uri()], cwd=tmp_path)
    assert code == 0, out
    assert_progress_bar(out, files="2/2")
    for name in files:
        assert f"uploaded {(store / name).as_uri()}" in out
    assert "skipped" in out and "corrupt journal line" in out
    assert local_objects(store) == files


def test_ctrl_c_during_resume_reports_and_prints_its_own_command(
    tmp_path: Path,
    hanging_s3: _HangingS3,
    fault_proxy: FaultProxy,
    moto_s3: Any,
    s3_bucket: str,
) -> None:
    staging = tmp_path / "staging"
    proc, files = _start_put_that_hangs(tmp_path, hanging_s3, staging)
    with reaped(proc):
        proc.kill()
    fault_proxy.script(*[Fault("stall", body_fraction=1.0)] * 2, method="PUT")
    resume = subprocess.Popen(
        [
            str(SCRIPT),
            "resume",
            str(staging),
            "--to",
            f"s3://{s3_bucket}/run 1",
            "--provider-kwarg",
            f"endpoint_url={fault_proxy.endpoint_url}",
            "--provider-kwarg",
            "read_timeout=60",
        ],
        cwd=tmp_path,
        env=_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    with reaped(resume):
        wait_until(lambda: fault_proxy.counts["stall"] == 2, timeout=DEADLINE, what="held PUTs")
        resume.send_signal(signal.SIGINT)
        _, err = resume.communicate(timeout=DEADLINE)
    assert resume.returncode == 130, err
    for name in files:
        assert err.count(f"not uploaded (interrupted): {name} ") == 1, err
    assert "TimeoutError" not in err
    _finish_with_printed_command(tmp_path, err, fault_proxy, moto_s3, s3_bucket, files)


def test_resume_reports_objects_already_in_the_store(
    tmp_path: Path, hanging_s3: _HangingS3
) -> None:
    staging = tmp_path / "staging"
    proc, files = _start_put_that_hangs(tmp_path, hanging_s3, staging, "--no-overwrite")
    with reaped(proc):
        proc.kill()
    # One object landed before the kill (its "done" line never written).
    store = tmp_path / "store"
    store.mkdir()
    (store / "one.bin").write_bytes(files["one.bin"])
    result = run(["resume", str(staging), "--to", str(store), "--json"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["already_present"] == ["one.bin"]
    assert [o["name"] for o in doc["uploaded"]] == ["two/three.bin"]
    assert local_objects(store) == files
    assert load(staging) == ([], [])


def test_put_announces_what_an_earlier_run_left_in_its_staging_folder(
    tmp_path: Path, hanging_s3: _HangingS3
) -> None:
    staging = tmp_path / "staging"
    proc, files = _start_put_that_hangs(tmp_path, hanging_s3, staging)
    with reaped(proc):
        proc.kill()
    (tmp_path / "new.txt").write_bytes(b"new")
    store = tmp_path / "store"
    result = run(
        ["put", "new.txt", "--to", str(store), "--staging-dir", str(staging)], cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    # Once (the library's generic warning is not printed beside it), with the count...
    assert result.stderr.count("an earlier run left unfinished") == 1, result.stderr
    assert f"staging folder {staging} holds 2 upload(s)" in result.stderr
    # ...and the exact command, which finishes them as printed.
    argv = _printed_resume_command(result.stderr)
    assert argv[1:] == ["resume", str(staging), "--to", store.as_uri()]
    assert local_objects(store) == {"new.txt": b"new"}  # this run did not upload them
    done = subprocess.run(
        argv, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=DEADLINE
    )
    assert done.returncode == 0, done.stderr
    # resume itself does not tell the user to resume.
    assert "earlier run" not in done.stderr
    assert local_objects(store) == {"new.txt": b"new", **files}


def test_resume_failure_exits_1_and_names_the_object(tmp_path: Path) -> None:
    staging = tmp_path / "staging"
    store = tmp_path / "store"
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.txt").write_bytes(b"new")
    store.mkdir()
    (store / "a.txt").write_bytes(b"old")
    first = run(
        ["put", "src", "--to", str(store), "--no-overwrite", "--staging-dir", str(staging)],
        cwd=tmp_path,
    )
    assert first.returncode == 1
    # A user-given staging folder keeps the failed upload, resumable.
    assert f"resume {staging}" in first.stderr
    again = run(["resume", str(staging), "--to", str(store)], cwd=tmp_path)
    assert again.returncode == 1
    assert "failed to upload a.txt" in again.stderr
    (store / "a.txt").unlink()
    done = run(["resume", str(staging), "--to", str(store)], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (store / "a.txt").read_bytes() == b"new"


# -- get ---------------------------------------------------------------------------------------


def _s3_args(moto_server: MotoServer, *more: str) -> list[str]:
    return ["--provider-kwarg", f"endpoint_url={moto_server.endpoint_url}", *more]


def test_get_from_s3_in_a_terminal_shows_progress_and_writes_the_verified_object(
    tmp_path: Path, moto_server: MotoServer, s3_bucket: str
) -> None:
    data = os.urandom(10 * 1024 * 1024)  # enough bytes for the bar to show progress
    (tmp_path / "model.bin").write_bytes(data)
    put = run(
        ["put", "model.bin", "--to", f"s3://{s3_bucket}/run", *_s3_args(moto_server)], cwd=tmp_path
    )
    assert put.returncode == 0, put.stderr
    (tmp_path / "out").mkdir()
    code, out = run_in_pty(
        ["get", f"s3://{s3_bucket}/run/model.bin", "out", *_s3_args(moto_server)], cwd=tmp_path
    )
    assert code == 0, out
    assert "\x1b[2K" in out and "Downloading" in out, out  # a live bar, redrawn
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out)
    assert "100%" in plain and "crc32c verified" in plain, plain
    # DEST an existing directory: the object's base name inside it.
    assert (tmp_path / "out" / "model.bin").read_bytes() == data
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["model.bin"]


def test_get_from_a_file_store_json_quiet_and_overwrite(tmp_path: Path) -> None:
    files = make_tree(tmp_path / "ckpt")
    store = tmp_path / "store"
    assert run(["put", "ckpt", "--to", str(store)], cwd=tmp_path).returncode == 0
    uri = (store / "sub" / "b.txt").as_uri()
    result = run(["get", uri, "b.txt", "--json"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["ok"] is True and doc["exit_code"] == 0 and doc["error"] is None
    assert doc["name"] == "b.txt" and doc["path"] == str(tmp_path / "b.txt")
    assert doc["size"] == len(files["sub/b.txt"]) and isinstance(doc["size"], int)
    assert (tmp_path / "b.txt").read_bytes() == files["sub/b.txt"]
    # An existing DEST is refused (exit 1, as put's --no-overwrite) and left as it is...
    (tmp_path / "b.txt").write_bytes(b"mine")
    refused = run(["get", uri, "b.txt"], cwd=tmp_path)
    assert refused.returncode == 1
    assert "exists; pass --overwrite" in refused.stderr
    assert (tmp_path / "b.txt").read_bytes() == b"mine"
    # ...and replaced with --overwrite; -q prints nothing.
    quiet = run(["get", uri, "b.txt", "--overwrite", "-q"], cwd=tmp_path)
    assert quiet.returncode == 0 and quiet.stdout == "" and quiet.stderr == ""
    assert (tmp_path / "b.txt").read_bytes() == files["sub/b.txt"]
    # A plain text summary on stdout otherwise.
    again = run(["get", str(store / "a.bin"), "a.bin"], cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert f"downloaded {(store / 'a.bin').as_uri()} -> {tmp_path / 'a.bin'}" in again.stdout


def test_get_follows_a_symlink_object(
    tmp_path: Path, moto_server: MotoServer, moto_s3: Any, s3_bucket: str
) -> None:
    moto_s3.put_object(Bucket=s3_bucket, Key="run/ep1.pt", Body=b"epoch one")
    moto_s3.put_object(Bucket=s3_bucket, Key="run/latest.pt.symlink", Body=b"ep1.pt\n")
    result = run(
        [
            "get",
            f"s3://{s3_bucket}/run/latest.pt",
            "latest.pt",
            "--store",
            f"s3://{s3_bucket}/run",
            "--json",
            *_s3_args(moto_server),
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "latest.pt").read_bytes() == b"epoch one"
    assert json.loads(result.stdout)["name"] == "ep1.pt"  # the object actually read
    # file://: the object's folder is the store, so a symlink beside it resolves as is.
    store = tmp_path / "store"
    store.mkdir()
    (store / "ep2.pt").write_bytes(b"epoch two")
    (store / "latest.pt.symlink").write_text("ep2.pt")
    local = run(["get", (store / "latest.pt").as_uri(), "l2.pt"], cwd=tmp_path)
    assert local.returncode == 0, local.stderr
    assert (tmp_path / "l2.pt").read_bytes() == b"epoch two"


def test_get_failures_and_their_exit_codes(
    tmp_path: Path, moto_server: MotoServer, moto_s3: Any, s3_bucket: str, fault_proxy: FaultProxy
) -> None:
    missing = run(
        ["get", f"s3://{s3_bucket}/nope.bin", "x", "--json", *_s3_args(moto_server)], cwd=tmp_path
    )
    assert missing.returncode == 1, missing.stderr
    assert f"no such object: s3://{s3_bucket}/nope.bin" in missing.stderr
    assert json.loads(missing.stdout)["ok"] is False
    no_bucket = run(
        ["get", "s3://no-such-bucket-here/a", "x", *_s3_args(moto_server)], cwd=tmp_path
    )
    assert no_bucket.returncode == 3, no_bucket.stderr
    assert "no-such-bucket-here" in no_bucket.stderr
    for bad in (["get", "s3:/b/x", "x"], ["get", f"s3://{s3_bucket}", "x"], ["get", "s3://b/x"]):
        usage = run(bad, cwd=tmp_path)
        assert usage.returncode == 2, (bad, usage.stderr)
    # A body damaged on the way, every time: it does not verify, and nothing is left at DEST.
    data = os.urandom(100_000)
    (tmp_path / "d.bin").write_bytes(data)
    assert (
        run(
            ["put", "d.bin", "--to", f"s3://{s3_bucket}", *_s3_args(moto_server)], cwd=tmp_path
        ).returncode
        == 0
    )
    fault_proxy.script(*[Fault("corrupt-response")] * 20, method="GET")
    damaged = run(
        [
            "get",
            f"s3://{s3_bucket}/d.bin",
            "out.bin",
            "--provider-kwarg",
            f"endpoint_url={fault_proxy.endpoint_url}",
        ],
        cwd=tmp_path,
    )
    assert damaged.returncode == 1, damaged.stderr
    assert "IntegrityError" in damaged.stderr and "out.bin was not written" in damaged.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.bin"]
    assert fault_proxy.counts["corrupt-response"] >= 1


def test_ctrl_c_during_get_leaves_nothing_at_dest(
    tmp_path: Path, moto_s3: Any, s3_bucket: str, fault_proxy: FaultProxy
) -> None:
    moto_s3.put_object(Bucket=s3_bucket, Key="w.bin", Body=os.urandom(100_000))
    fault_proxy.script(Fault("stall"), method="GET")
    proc = subprocess.Popen(
        [
            str(SCRIPT),
            "get",
            f"s3://{s3_bucket}/w.bin",
            "out.bin",
            "--provider-kwarg",
            f"endpoint_url={fault_proxy.endpoint_url}",
            "--provider-kwarg",
            "read_timeout=60",
        ],
        cwd=tmp_path,
        env=_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    with reaped(proc):
        # Readiness: the GET is held by the proxy.
        wait_until(lambda: fault_proxy.counts["stall"] == 1, timeout=DEADLINE, what="a held GET")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=DEADLINE)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "out.bin was not written" in err, err
    assert "Traceback" not in err
    fault_proxy.reset()
    # Neither the file nor a temporary one beside it.
    assert list(tmp_path.iterdir()) == []


# -- bench -------------------------------------------------------------------------------------


def test_bench_passes_its_arguments_to_the_bundled_benchmark(tmp_path: Path) -> None:
    result = run(["bench", "--help"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "--quick" in result.stdout  # the benchmark's own help, not ours


def test_bench_passes_arguments_and_exit_code_through(tmp_path: Path) -> None:
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "bench_s3.py").write_text(
        "import json, sys\nprint(json.dumps(sys.argv[1:]))\nsys.exit(7)\n"
    )
    (tmp_path / "sub").mkdir()
    # Found by searching upward from the working directory.
    result = run(["bench", "--quick", "--repeat", "1"], cwd=tmp_path / "sub")
    assert result.returncode == 7
    assert json.loads(result.stdout) == ["--quick", "--repeat", "1"]


def test_bench_script_lookup(tmp_path: Path) -> None:
    assert find_bench_script([tmp_path]) is None
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "bench_s3.py").write_text("")
    nested = tmp_path / "a" / "b"
    nested.mkdir(parents=True)
    assert find_bench_script([nested]) == tmp_path / "benchmarks" / "bench_s3.py"


# -- pieces ------------------------------------------------------------------------------------


def test_provider_kwargs_types_and_secrets() -> None:
    options, scrub = parse_provider_kwargs(
        ["secure=false", "port=9000", "read_timeout=2.5", "key=1234567", "region=eu-west-1"]
    )
    assert options == {
        "secure": False,
        "port": 9000,
        "read_timeout": 2.5,
        "key": "1234567",  # credentials stay strings, even when they look like numbers
        "region": "eu-west-1",
    }
    assert scrub("key 1234567 in eu-west-1") == "key *** in eu-west-1"


def test_collect_names_relative_to_each_directory(tmp_path: Path) -> None:
    make_tree(tmp_path / "d")
    (tmp_path / "top.txt").write_bytes(b"t")
    items = collect([str(tmp_path / "d"), str(tmp_path / "top.txt")])
    assert [i.name for i in items] == [
        "a.bin",
        "empty",
        "sub/b.txt",
        "sub/deeper/c.json",
        "top.txt",
    ]
