"""A real S3 server for the tests: moto's ``moto_server`` on a loopback port it picks itself.

Fixtures:
    moto_server: session-scoped :class:`MotoServer` (``.endpoint_url``, ``.reset()``...).
    moto_s3: session-scoped boto3 S3 client against it, to set up and inspect state directly.
    s3_bucket: a fresh, uniquely named bucket per test; the server is reset afterwards.
    moto_iam_credentials: credentials of an IAM user with no permissions, with moto's request
        authentication switched on for the duration of the test (moto accepts any credentials
        otherwise).

Dummy credentials are passed explicitly (``MOTO_OPTIONS``); ``os.environ`` is never changed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

from tests.servers._common import kill_group, start_on_port_zero

MOTO_REGION = "us-east-1"
MOTO_KEY = "testing"
MOTO_SECRET = "testing"
# Options for S3Provider.from_uri / AsyncUploader(provider_kwargs=...), endpoint added per server.
MOTO_OPTIONS: dict[str, object] = {"key": MOTO_KEY, "secret": MOTO_SECRET, "region": MOTO_REGION}


@dataclass
class MotoServer:
    """A running moto server.

    Attributes:
        endpoint_url: ``http://127.0.0.1:<port>``.
        log_path: Where the server's stdout/stderr go.
        process: The server process (leader of its own process group).
    """

    endpoint_url: str
    log_path: Path
    process: subprocess.Popen[bytes]

    def _post(self, path: str, body: bytes = b"") -> dict[str, Any]:
        # Not form-encoded: werkzeug would parse a form body away and moto would see b"".
        req = urllib.request.Request(
            self.endpoint_url + path,
            data=body,
            method="POST",
            headers={"Content-Type": "text/plain"},
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            assert resp.status == 200, f"{path} answered {resp.status}"
            result: dict[str, Any] = json.loads(resp.read() or b"{}")
            return result

    def reset(self) -> None:
        """Forget every bucket, object, upload and IAM entity."""
        self._post("/moto-api/reset")

    def set_auth(self, enabled: bool) -> None:
        """Switch moto's request authentication (signatures, access keys, IAM policies) on or off.

        moto authenticates requests once ``INITIAL_NO_AUTH_ACTION_COUNT`` requests have been
        served; ``/moto-api/reset-auth`` sets that count and restarts the counter.
        """
        self._post("/moto-api/reset-auth", b"0" if enabled else b"inf")

    def options(self, **extra: object) -> dict[str, object]:
        """Provider options for this server: dummy credentials, region and endpoint."""
        return {**MOTO_OPTIONS, "endpoint_url": self.endpoint_url, **extra}

    def client(self, service: str = "s3", **kwargs: Any) -> Any:
        """A boto3 client for ``service`` against this server with the dummy credentials."""
        return boto3.client(
            service,
            endpoint_url=self.endpoint_url,
            region_name=MOTO_REGION,
            aws_access_key_id=kwargs.pop("aws_access_key_id", MOTO_KEY),
            aws_secret_access_key=kwargs.pop("aws_secret_access_key", MOTO_SECRET),
            config=Config(retries={"max_attempts": 1}, s3={"addressing_style": "path"}),
            **kwargs,
        )


def start_server(
    argv: list[str], ready_path: str, log_dir: Path, label: str, port_pattern: bytes
) -> tuple[str, Path, subprocess.Popen[bytes]]:
    """Start ``argv`` (a server told to bind port 0); return once ``ready_path`` answers.

    The server picks its port itself and logs it (``port_pattern``'s first group), so no other
    process can take the port in between and be mistaken for it.

    Returns:
        (endpoint URL, log path, process). The process leads its own process group.

    Raises:
        RuntimeError: The server died before it was ready (with its log tail) or timed out.
    """
    log_path = log_dir / f"{label}.log"
    port, proc = start_on_port_zero(argv, log_path, port_pattern, ready_path, what=label)
    return f"http://127.0.0.1:{port}", log_path, proc


def start_moto_server(log_dir: Path) -> MotoServer:
    """Start moto's server on a port of its choosing and wait until it answers.

    It runs through ``_moto_main.py``, which makes two of moto's answers as S3 gives them (the
    composite CRC32C of multipart objects, the start times of multipart uploads).
    """
    endpoint, log_path, proc = start_server(
        [
            sys.executable,
            str(Path(__file__).with_name("_moto_main.py")),
            "-H",
            "127.0.0.1",
            "-p",
            "0",
        ],
        "/moto-api/",
        log_dir,
        "moto_server",
        # werkzeug reports the port it actually bound.
        rb"Running on http://127\.0\.0\.1:(\d+)",
    )
    return MotoServer(endpoint, log_path, proc)


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    """A moto S3 server for the whole test session."""
    server = start_moto_server(tmp_path_factory.mktemp("moto"))
    try:
        yield server
    finally:
        kill_group(server.process)


@pytest.fixture(scope="session")
def moto_s3(moto_server: MotoServer) -> Any:
    """A boto3 S3 client against the moto server (for setup and inspection)."""
    return moto_server.client("s3")


@pytest.fixture
def s3_bucket(moto_server: MotoServer, moto_s3: Any) -> Iterator[str]:
    """A new empty bucket; the server is reset afterwards so objects do not pile up."""
    name = f"test-{uuid.uuid4().hex[:16]}"
    moto_s3.create_bucket(Bucket=name)
    try:
        yield name
    finally:
        moto_server.reset()


@pytest.fixture
def moto_iam_credentials(moto_server: MotoServer, s3_bucket: str) -> Iterator[dict[str, str]]:
    """``{"key", "secret"}`` of an IAM user without any policy, with moto's auth switched on.

    Requests signed with these credentials are authenticated but denied (403 AccessDenied);
    unknown keys get 403 InvalidAccessKeyId, wrong secrets 403 SignatureDoesNotMatch.
    Depends on ``s3_bucket`` so the bucket exists before authentication starts.
    """
    iam = moto_server.client("iam")
    user = f"nobody-{uuid.uuid4().hex[:8]}"
    iam.create_user(UserName=user)
    key = iam.create_access_key(UserName=user)["AccessKey"]
    moto_server.set_auth(True)
    try:
        yield {"key": key["AccessKeyId"], "secret": key["SecretAccessKey"]}
    finally:
        moto_server.set_auth(False)


def list_multipart_uploads(client: Any, bucket: str) -> list[dict[str, Any]]:
    """The bucket's unfinished multipart uploads (Key, UploadId...)."""
    uploads: list[dict[str, Any]] = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    return uploads


def read_s3_object(client: Any, bucket: str, key: str) -> bytes:
    """The bytes of ``bucket/key`` read straight from the server.

    Raises:
        FileNotFoundError: There is no such object (the conformance suite's not-found error).
    """
    try:
        body: bytes = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    except client.exceptions.NoSuchKey as exc:
        raise FileNotFoundError(f"s3://{bucket}/{key} does not exist") from exc
    return body


def list_s3_keys(client: Any, bucket: str, prefix: str = "") -> list[str]:
    """Every key under ``prefix`` (first 1000)."""
    resp = client.list_objects_v2(Bucket=bucket, Prefix=prefix)
    return [o["Key"] for o in resp.get("Contents", [])]
