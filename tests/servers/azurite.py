"""Azurite (the Azure Storage emulator) as a session fixture, and a fresh container per test.

Azurite comes from npm (``package.json`` at the repo root pins it; ``npm ci`` installs it into
``node_modules``). The blob service is started straight from ``node_modules/.bin/azurite-blob`` —
not through ``npx``, whose wrapper process leaves node orphaned when it is sent SIGTERM — in its own
process group, on a port the OS picks (``--blobPort 0``) and that Azurite prints once it listens.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from tests.servers._common import log_tail, start_logged

REPO_ROOT = Path(__file__).resolve().parents[2]
AZURITE_BIN = REPO_ROOT / "node_modules" / ".bin" / "azurite-blob"
ACCOUNT_NAME = "devstoreaccount1"
# Azurite's published development key (the same in every Azurite); not a secret.
ACCOUNT_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
START_DEADLINE = 30.0
_LISTENING = re.compile(rb"successfully listens on http://127\.0\.0\.1:(\d+)")


@dataclass(frozen=True)
class AzuriteServer:
    """A running Azurite blob service.

    Attributes:
        host: Always 127.0.0.1.
        port: The blob service's port.
        log_path: Azurite's output.
        account_name: Azurite's account, ``devstoreaccount1``.
        account_key: Azurite's well-known key.
    """

    host: str
    port: int
    log_path: Path
    account_name: str = ACCOUNT_NAME
    account_key: str = ACCOUNT_KEY

    @property
    def account_url(self) -> str:
        """``http://127.0.0.1:PORT/devstoreaccount1``."""
        return f"http://{self.host}:{self.port}/{self.account_name}"

    @property
    def connection_string(self) -> str:
        """A connection string for this server."""
        return (
            f"DefaultEndpointsProtocol=http;AccountName={self.account_name};"
            f"AccountKey={self.account_key};BlobEndpoint={self.account_url};"
        )

    def seed_kwargs(self) -> dict[str, Any]:
        """The seed's provider_kwargs (libcloud-style) that reach this server."""
        return {
            "key": self.account_name,
            "secret": self.account_key,
            "host": self.host,
            "port": self.port,
            "secure": False,
        }


def _wait_listening(proc: subprocess.Popen[bytes], log_path: Path) -> int:
    deadline = time.monotonic() + START_DEADLINE
    while True:
        match = _LISTENING.search(log_path.read_bytes())
        if match:
            port = int(match.group(1))
            break
        if proc.poll() is not None:
            pytest.fail(
                f"azurite-blob exited with {proc.returncode} before listening; log tail:\n"
                + log_tail(log_path)
            )
        if time.monotonic() > deadline:
            pytest.fail(
                f"azurite-blob did not listen within {START_DEADLINE}s; log tail:\n"
                + log_tail(log_path)
            )
        time.sleep(0.05)
    # It printed its port; also wait until an HTTP request gets an answer (any status will do).
    while True:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{port}/{ACCOUNT_NAME}?comp=list", timeout=2
            ):
                return port
        except urllib.error.HTTPError:
            return port
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(
                    f"azurite-blob on port {port} does not answer (exit code {proc.returncode});"
                    " log tail:\n" + log_tail(log_path)
                )
            time.sleep(0.05)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture(scope="session")
def azurite_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AzuriteServer]:
    """Start Azurite's blob service for the session; fail (not skip) when it is not installed."""
    if not os.access(AZURITE_BIN, os.X_OK):
        pytest.fail(
            f"{AZURITE_BIN} is missing: run `npm ci` in {REPO_ROOT} to install Azurite "
            "(pinned in package.json)"
        )
    workdir = tmp_path_factory.mktemp("azurite")
    log_path = workdir / "azurite.log"
    # Own process group, log file, and killed with pytest if pytest is killed.
    proc = start_logged(
        [
            str(AZURITE_BIN),
            "--inMemoryPersistence",
            "--skipApiVersionCheck",
            "--disableTelemetry",
            "--silent",
            "--blobHost",
            "127.0.0.1",
            "--blobPort",
            "0",
        ],
        log_path,
        cwd=workdir,
    )
    try:
        port = _wait_listening(proc, log_path)
        yield AzuriteServer(host="127.0.0.1", port=port, log_path=log_path)
    finally:
        _stop(proc)


@dataclass
class AzureContainer:
    """A fresh container on Azurite, with helpers that read it through the SDK.

    Attributes:
        name: The container's name.
        server: The Azurite server.
    """

    name: str
    server: AzuriteServer
    _client: Any

    async def read(self, blob: str) -> bytes:
        """The blob's bytes.

        Raises:
            FileNotFoundError: There is no such (committed) blob: the conformance suite's
                not-found error.
        """
        from azure.core.exceptions import ResourceNotFoundError

        try:
            downloader = await self._client.get_blob_client(blob).download_blob()
        except ResourceNotFoundError as exc:
            raise FileNotFoundError(f"blob {blob!r} does not exist in {self.name}") from exc
        data: bytes = await downloader.readall()
        return data

    async def exists(self, blob: str) -> bool:
        """Whether the blob exists (committed)."""
        result: bool = await self._client.get_blob_client(blob).exists()
        return result

    async def properties(self, blob: str) -> Any:
        """The blob's properties (size, content_settings.content_md5, etag...)."""
        return await self._client.get_blob_client(blob).get_blob_properties()

    async def list(self, prefix: str | None = None) -> list[str]:
        """Committed blob names, sorted."""
        return sorted([b.name async for b in self._client.list_blobs(name_starts_with=prefix)])

    async def uncommitted_blocks(self, blob: str) -> int:
        """How many uncommitted blocks the blob has."""
        _, uncommitted = await self._client.get_blob_client(blob).get_block_list("uncommitted")
        return len(uncommitted)


@pytest_asyncio.fixture
async def azure_container(azurite_server: AzuriteServer) -> AsyncIterator[AzureContainer]:
    """Create a new, empty container for one test and delete it afterwards."""
    from azure.storage.blob.aio import BlobServiceClient

    name = f"t{uuid.uuid4().hex[:20]}"
    service = BlobServiceClient(
        azurite_server.account_url,
        credential={
            "account_name": azurite_server.account_name,
            "account_key": azurite_server.account_key,
        },
        retry_total=0,
    )
    async with service:
        client = service.get_container_client(name)
        await client.create_container()
        try:
            yield AzureContainer(name, azurite_server, client)
        finally:
            # Azurite keeps everything in memory: give it back.
            await client.delete_container()
