"""examples/service.py end to end: real aiohttp HTTP server, real moto S3 server, one uploader.

POST answers 202 once the body is staged; GET follows the upload to durable (the object is read
back from moto) or failed; the uploader opens at start-up and is closed at cleanup. The script
itself is run too, as a user would run it, and stopped with Ctrl-C.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer
from examples.service import HANDLES, SPOOL, UPLOADER, create_app

from artifact_uploader import StoreNotFoundError
from tests.conftest import read_line, reaped
from tests.servers.moto import MotoServer, read_s3_object

ROOT = Path(__file__).resolve().parents[2]
DEADLINE = 60.0


async def _until_settled(client: TestClient, name: str) -> dict[str, Any]:
    """GET ``name`` until it is no longer uploading (polled with a deadline)."""
    deadline = time.monotonic() + DEADLINE
    while True:
        resp = await client.get(f"/artifacts/{name}")
        assert resp.status == 200
        body: dict[str, Any] = await resp.json()
        if body["state"] != "uploading":
            return body
        assert time.monotonic() < deadline, f"{name} still uploading after {DEADLINE} s"
        await asyncio.sleep(0.05)


@pytest_asyncio.fixture
async def service(moto_server: MotoServer, s3_bucket: str) -> AsyncIterator[TestClient]:
    app = create_app(f"s3://{s3_bucket}/svc", provider_kwargs=moto_server.options())
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        yield client


@pytest.mark.asyncio
async def test_post_answers_staged_then_get_answers_durable(
    service: TestClient, moto_s3: Any, s3_bucket: str
) -> None:
    payloads = {f"run-1/ckpt-{i}.pt": os.urandom(300_000 + i) for i in range(3)}
    for name, data in payloads.items():
        resp = await service.post(f"/artifacts/{name}", data=data)
        assert resp.status == 202
        assert await resp.json() == {
            "name": name,
            "state": "staged",
            "uri": f"s3://{s3_bucket}/svc/{name}",
        }
    for name, data in payloads.items():
        body = await _until_settled(service, name)
        assert body["state"] == "durable", body
        assert body["uri"] == f"s3://{s3_bucket}/svc/{name}"
        assert body["size"] == len(data)
        assert body["checksum_algorithm"] and body["checksum"]
        assert read_s3_object(moto_s3, s3_bucket, f"svc/{name}") == data
    # One uploader served every request, and the spooled bodies were moved into staging.
    app = service.server.app
    assert app is not None
    assert set(app[HANDLES]) == set(payloads)
    assert list(app[SPOOL].iterdir()) == []
    assert [f for f in app[UPLOADER].staging_folder.rglob("*") if f.is_file()] == []


@pytest.mark.asyncio
async def test_unknown_name_is_404_and_bad_name_is_400(service: TestClient) -> None:
    resp = await service.get("/artifacts/never-posted.bin")
    assert resp.status == 404
    too_long = "x" * 1100  # S3 keys hold at most 1024 bytes
    resp = await service.post(f"/artifacts/{too_long}", data=b"x")
    assert resp.status == 400
    assert "1024" in await resp.text()
    app = service.server.app
    assert app is not None and too_long not in app[HANDLES]
    assert list(app[SPOOL].iterdir()) == []  # the refused body was not left behind


@pytest.mark.asyncio
async def test_a_failed_upload_is_answered_as_failed(
    moto_server: MotoServer,
    moto_s3: Any,
    s3_bucket: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = create_app(f"s3://{s3_bucket}/svc", provider_kwargs=moto_server.options())
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        # The bucket disappears after start-up: the upload fails for good (not retried).
        moto_s3.delete_bucket(Bucket=s3_bucket)
        resp = await client.post("/artifacts/lost.bin", data=b"lost bytes")
        assert resp.status == 202
        body = await _until_settled(client, "lost.bin")
        assert body["state"] == "failed"
        assert body["error"].startswith("StoreNotFoundError:")
        moto_s3.create_bucket(Bucket=s3_bucket)  # for the fixture's clean-up
    # Cleanup closed the uploader, which reported the failure once more, in the log.
    assert "uploads that failed" in caplog.text and "lost.bin" in caplog.text


@pytest.mark.asyncio
async def test_startup_fails_on_a_missing_bucket(moto_server: MotoServer) -> None:
    app = create_app("s3://no-such-bucket-for-service/svc", provider_kwargs=moto_server.options())
    server = TestServer(app, host="127.0.0.1")
    with pytest.raises(StoreNotFoundError):
        await server.start_server()
    await server.close()


def test_the_script_serves_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    store = tmp_path / "store"
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "examples" / "service.py"), store.as_uri(), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
        start_new_session=True,
    )
    with reaped(proc):
        assert proc.stdout is not None
        line = read_line(proc.stdout, DEADLINE).strip()
        assert line.startswith("listening on http://127.0.0.1:"), line
        url = line.split()[-1]

        async def talk() -> dict[str, Any]:
            async with aiohttp.ClientSession() as http:
                async with http.post(f"{url}/artifacts/trace.json", data=b"{}") as resp:
                    assert resp.status == 202
                deadline = time.monotonic() + DEADLINE
                while True:
                    async with http.get(f"{url}/artifacts/trace.json") as resp:
                        body: dict[str, Any] = await resp.json()
                    if body["state"] != "uploading" or time.monotonic() > deadline:
                        return body
                    await asyncio.sleep(0.05)

        assert asyncio.run(talk())["state"] == "durable"
        os.killpg(proc.pid, signal.SIGINT)
        out, _ = proc.communicate(timeout=DEADLINE)
        assert proc.returncode == 0, out
    assert (store / "trace.json").read_bytes() == b"{}"
