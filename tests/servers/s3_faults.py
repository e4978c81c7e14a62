"""A tiny S3-shaped HTTP server that answers scripted responses: throttling, 5xx, odd checksums.

moto cannot be made to throttle, fail with 5xx or report a wrong checksum, so the S3 provider's
error mapping is exercised against this real HTTP server instead (no mocks in-process).

Run as a script (``python s3_faults.py [PORT]``, default 0: the kernel picks and the server prints
``listening on http://127.0.0.1:N``); the ``s3_faults`` fixture does so. Control API:

- ``GET /__faults__``: readiness probe.
- ``POST /__faults__`` with a JSON list of ``{"status", "headers", "body"}``: the next requests
  get these responses in order; once the list is used up every request gets 200 with the
  body's MD5 as ETag.
- ``GET /__faults__/requests``: JSON list of ``{"method", "path", "headers"}`` seen so far
  (cleared by each ``POST /__faults__``).
"""

from __future__ import annotations

import hashlib
import json
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

_CONTROL = "/__faults__"


class _State:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.queue: list[dict[str, Any]] = []
        self.requests: list[dict[str, Any]] = []


_STATE = _State()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _reply(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        payload = self.rfile.read(length) if length else b""
        if self.path == _CONTROL:
            if self.command == "POST":
                with _STATE.lock:
                    _STATE.queue = list(json.loads(payload))
                    _STATE.requests.clear()
            self._reply(200, {"Content-Type": "text/plain"}, b"ok")
            return
        if self.path == _CONTROL + "/requests":
            with _STATE.lock:
                body = json.dumps(_STATE.requests).encode()
            self._reply(200, {"Content-Type": "application/json"}, body)
            return
        with _STATE.lock:
            _STATE.requests.append(
                {"method": self.command, "path": self.path, "headers": dict(self.headers.items())}
            )
            canned = _STATE.queue.pop(0) if _STATE.queue else None
        if canned is None:
            # As S3 answers a PUT: the ETag is the MD5 of the body it received.
            etag = hashlib.md5(payload, usedforsecurity=False).hexdigest()
            self._reply(200, {"ETag": f'"{etag}"'}, b"")
            return
        body = str(canned.get("body", "")).encode()
        headers = dict(canned.get("headers", {}))
        if body:
            headers.setdefault("Content-Type", "application/xml")
        self._reply(int(canned["status"]), headers, body)

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle

    def log_message(self, format: str, *args: Any) -> None:
        sys.stdout.write(f"{self.address_string()} {format % args}\n")
        sys.stdout.flush()


def s3_error(status: int, code: str, message: str = "scripted", **headers: str) -> dict[str, Any]:
    """A scripted S3 error response."""
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message>"
        f"<RequestId>{uuid.uuid4().hex}</RequestId></Error>"
    )
    return {"status": status, "headers": headers, "body": body}


@dataclass
class FaultServer:
    """A running fault server: script responses, read back the requests it saw."""

    endpoint_url: str
    log_path: Path
    process: Any

    def script(self, *responses: dict[str, Any]) -> None:
        """Answer the next requests with ``responses``, in order."""
        import urllib.request

        req = urllib.request.Request(
            self.endpoint_url + _CONTROL, data=json.dumps(list(responses)).encode(), method="POST"
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.status == 200

    def requests(self) -> list[dict[str, Any]]:
        """The requests seen since the last :meth:`script`."""
        import urllib.request

        with urllib.request.urlopen(self.endpoint_url + _CONTROL + "/requests", timeout=10) as r:
            seen: list[dict[str, Any]] = json.loads(r.read())
            return seen


@pytest.fixture(scope="session")
def s3_faults_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultServer]:
    """The fault server for the whole session (use ``s3_faults`` in tests)."""
    from .moto import kill_group, start_server

    endpoint, log_path, proc = start_server(
        [sys.executable, str(Path(__file__).resolve()), "0"],
        _CONTROL,
        tmp_path_factory.mktemp("s3_faults"),
        "s3_faults",
        rb"listening on http://127\.0\.0\.1:(\d+)",
    )
    try:
        yield FaultServer(endpoint, log_path, proc)
    finally:
        kill_group(proc)


@pytest.fixture
def s3_faults(s3_faults_server: FaultServer) -> Iterator[FaultServer]:
    """The session's fault server, with no scripted responses left over before or after a test."""
    s3_faults_server.script()
    try:
        yield s3_faults_server
    finally:
        s3_faults_server.script()


def main() -> None:
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    server = ThreadingHTTPServer(("127.0.0.1", port), _Handler)
    server.daemon_threads = True
    print(f"s3_faults listening on http://127.0.0.1:{server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
