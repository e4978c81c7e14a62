"""A fault-injecting HTTP reverse proxy in front of the moto server.

Requests reach moto for real, except those the proxy chooses to fail. It can answer:

- ``"500"``: 500 InternalError, ``"503"``: 503 SlowDown (S3 XML error bodies),
- ``"429"``: 429 with a ``Retry-After`` header,
- ``"reset"``: read part of the request body, then reset the connection (RST),
- ``"stall"``: read part (or all) of the body, then hold the request without answering until
  :meth:`FaultProxy.release_stalls` / :meth:`FaultProxy.reset`,
- ``"403"``: 403 AccessDenied, for every request on a key given to :meth:`FaultProxy.deny`,
- ``"trickle"``: read the first ``body_fraction`` of the request body slowly (``rate`` bytes
  per second), the rest at full speed, then forward it: a slow but healthy upload,
- ``"404-upload"``: 404 NoSuchUpload, as S3 answers for a completed or aborted upload,
- ``"lost"``: forward the request to moto (which carries it out), then reset the connection
  instead of passing the answer on: a response lost on the way back,
- ``"corrupt-request"``: flip one byte (the middle one) of the request body, then forward it: a
  body damaged in transit that the upstream stores as it arrives (moto checks no checksum),
- ``"corrupt-response"``: forward the request, then flip one byte (the middle one) of the
  response body on its way back (a ranged GET read through a damaging link),
- ``"redirect"``: answer ``Fault.status`` (301, 302, 307 or 308; default 307) with
  ``Location: Fault.location + <request target>`` without forwarding anything: an endpoint that
  points the client at another host (tests pass the URL of a :class:`Sink`),
- ``"echo"``: answer 403 AccessDenied whose message quotes every request header, as some servers
  and proxies do: secrets the client sent in headers come back in the error body.

The proxy is a generic HTTP/1.1 reverse proxy: GCS and Azure tests may put their own instance
(``FaultProxy(upstream_url)``, :meth:`FaultProxy.start` / :meth:`FaultProxy.stop`) in front of
fake-gcs-server or Azurite. :class:`Sink` is a loopback server that records every request it
gets (method, target, headers, body) and answers 200 with the body's MD5 as ETag: a redirect
target that would happily take an upload.

Faults are chosen by, in this order: a permanent denial of the key, the next scripted fault
whose ``match`` occurs in the request line, then a seeded random draw at ``rate``. The proxy
counts every outcome (``"forwarded"`` included) and records each request, so tests can assert
what was injected and that, e.g., a denied key was requested exactly once.

It runs in-process: an asyncio server on its own thread, bound to 127.0.0.1 on a port the kernel
picks. Every forwarded request uses a fresh ``Connection: close`` connection to moto; the
``Host`` header is passed through unchanged, so SigV4 signatures stay valid.

Fixtures:
    fault_proxy_server: session-scoped :class:`FaultProxy` in front of ``moto_server``.
    fault_proxy: the same proxy, with faults, stalls and counts cleared before and after a test.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
import threading
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest

from artifact_uploader import AsyncUploader, PartPolicy, RetryPolicy, UploadEvent
from tests.servers.moto import MotoServer

TRANSIENT_KINDS: tuple[str, ...] = ("500", "503", "429", "reset")
_KINDS = frozenset(
    {
        *TRANSIENT_KINDS,
        "stall",
        "403",
        "404-upload",
        "lost",
        "trickle",
        "corrupt-request",
        "corrupt-response",
        "redirect",
        "echo",
    }
)
_REDIRECTS = {
    301: "Moved Permanently",
    302: "Found",
    307: "Temporary Redirect",
    308: "Permanent Redirect",
}
_ERRORS = {
    "500": (500, "Internal Server Error", "InternalError", "We encountered an internal error."),
    "503": (503, "Slow Down", "SlowDown", "Please reduce your request rate."),
    "429": (429, "Too Many Requests", "TooManyRequests", "Please retry later."),
    "403": (403, "Forbidden", "AccessDenied", "Access Denied"),
    "404-upload": (404, "Not Found", "NoSuchUpload", "The specified upload does not exist."),
}
# Hop-by-hop (or re-framed) headers the proxy sets itself.
_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "content-length", "te"}
)
_HEAD_LIMIT = 64 * 1024
_START_TIMEOUT = 10.0


@dataclass(frozen=True)
class Fault:
    """One fault to inject.

    Attributes:
        kind: "500", "503", "429", "reset", "stall", "403", "404-upload", "lost", "trickle",
            "corrupt-request", "corrupt-response", "redirect" or "echo".
        retry_after: The ``Retry-After`` value of a 429 (seconds, as text).
        body_fraction: For "reset" and "stall": how much of the request body to read first;
            for "trickle": how much of it to read slowly.
        rate: For "trickle": request body bytes read per second.
        status: For "redirect": 301, 302, 307 or 308.
        location: For "redirect": the origin (``http://127.0.0.1:N``) the ``Location`` header
            points at; the request target is appended.
    """

    kind: str
    retry_after: str = "0"
    body_fraction: float = 0.5
    rate: float = 1024 * 1024
    status: int = 307
    location: str = ""

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}")
        if self.kind == "redirect" and (self.status not in _REDIRECTS or not self.location):
            raise ValueError("a redirect needs status 301/302/307/308 and a location")


@dataclass(frozen=True)
class Seen:
    """One request the proxy received and what it did with it."""

    method: str
    target: str
    outcome: str


@dataclass
class _Scripted:
    fault: Fault
    match: str | None
    method: str | None


class _Request:
    __slots__ = ("headers", "method", "target", "version")

    def __init__(self, method: str, target: str, version: str, headers: list[tuple[str, str]]):
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers

    def header(self, name: str) -> str | None:
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None

    @property
    def decoded(self) -> str:
        """Method and decoded path, for matching (query kept: partNumber, uploadId...)."""
        parts = urlsplit(self.target)
        query = f"?{parts.query}" if parts.query else ""
        return f"{self.method} {unquote(parts.path)}{query}"


class FaultProxy:
    """The proxy. Control methods are thread-safe; call them from the test's thread or loop."""

    def __init__(self, upstream_url: str) -> None:
        up = urlsplit(upstream_url)
        assert up.hostname is not None and up.port is not None, upstream_url
        self._up_host, self._up_port = up.hostname, up.port
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._seen: list[Seen] = []
        self._scripted: list[_Scripted] = []
        self._denied: set[str] = set()
        self._rate = 0.0
        self._kinds: tuple[str, ...] = TRANSIENT_KINDS
        self._retry_after = "0"
        self._rng = random.Random(0)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._release: asyncio.Event | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._thread: threading.Thread | None = None
        self._stopped: asyncio.Event | None = None
        self.endpoint_url = ""

    # -- control ----------------------------------------------------------------------------

    def set_random(
        self,
        rate: float,
        *,
        seed: int = 0,
        kinds: Sequence[str] = TRANSIENT_KINDS,
        retry_after: str = "0",
    ) -> None:
        """Fail each request with probability ``rate``, the kind drawn from ``kinds``."""
        for kind in kinds:
            Fault(kind)
        with self._lock:
            self._rate = rate
            self._kinds = tuple(kinds)
            self._retry_after = retry_after
            self._rng = random.Random(seed)

    def script(self, *faults: Fault, match: str | None = None, method: str | None = None) -> None:
        """Inject ``faults``, in order, into the next requests whose request line contains
        ``match`` (decoded path and query) and whose method is ``method`` (None: any)."""
        with self._lock:
            self._scripted.extend(_Scripted(f, match, method) for f in faults)

    def deny(self, key: str) -> None:
        """Answer 403 AccessDenied to every request whose path contains ``key``, for good."""
        with self._lock:
            self._denied.add(key)

    def release_stalls(self) -> None:
        """Close every held (stalled) request."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._do_release)

    def reset(self) -> None:
        """Drop all faults, release stalls and zero the counts."""
        with self._lock:
            self._scripted.clear()
            self._denied.clear()
            self._rate = 0.0
            self._counts.clear()
            self._seen.clear()
        self.release_stalls()

    @property
    def counts(self) -> Counter[str]:
        """Outcomes so far: "forwarded" and each fault kind."""
        with self._lock:
            return Counter(self._counts)

    @property
    def injected(self) -> int:
        """Requests the proxy failed (every outcome but "forwarded")."""
        counts = self.counts
        return sum(n for kind, n in counts.items() if kind != "forwarded")

    def seen(self, fragment: str = "") -> list[Seen]:
        """Requests whose decoded request line contains ``fragment``."""
        with self._lock:
            return [s for s in self._seen if fragment in s.target]

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            try:
                asyncio.run(self._main(ready))
            except BaseException as exc:
                failure.append(exc)
                ready.set()

        self._thread = threading.Thread(target=run, name="fault-proxy", daemon=True)
        self._thread.start()
        if not ready.wait(_START_TIMEOUT) or failure:
            raise RuntimeError(f"fault proxy did not start: {failure}")

    def stop(self) -> None:
        loop, stopped = self._loop, self._stopped
        if loop is not None and stopped is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stopped.set)
        if self._thread is not None:
            self._thread.join(timeout=10)

    async def _main(self, ready: threading.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self._release = asyncio.Event()
        self._stopped = asyncio.Event()
        server = await asyncio.start_server(self._serve, "127.0.0.1", 0, limit=_HEAD_LIMIT)
        port = server.sockets[0].getsockname()[1]
        self.endpoint_url = f"http://127.0.0.1:{port}"
        ready.set()
        async with server:
            await self._stopped.wait()
            server.close()
            for task in list(self._handlers):
                task.cancel()
            await asyncio.gather(*self._handlers, return_exceptions=True)

    def _do_release(self) -> None:
        if self._release is not None:
            self._release.set()
            # Held handlers keep the old event; later stalls wait on a fresh one.
            self._release = asyncio.Event()

    # -- serving ----------------------------------------------------------------------------

    def _decide(self, req: _Request) -> Fault | None:
        line = req.decoded
        path = unquote(urlsplit(req.target).path)
        with self._lock:
            fault: Fault | None = None
            if any(key in path for key in self._denied):
                fault = Fault("403")
            else:
                for i, s in enumerate(self._scripted):
                    if (s.match is None or s.match in line) and s.method in (None, req.method):
                        fault = self._scripted.pop(i).fault
                        break
                else:
                    if self._rate and self._rng.random() < self._rate:
                        kind = self._rng.choice(self._kinds)
                        fault = Fault(kind, retry_after=self._retry_after)
            outcome = "forwarded" if fault is None else fault.kind
            self._counts[outcome] += 1
            self._seen.append(Seen(req.method, line, outcome))
        return fault

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            while True:
                req = await _read_head(reader)
                if req is None:
                    return
                if not await self._one(req, reader, writer):
                    return
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            return
        finally:
            self._handlers.discard(task)
            writer.close()

    async def _one(
        self, req: _Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Serve one request; False when the connection must end."""
        length = int(req.header("Content-Length") or 0)
        if (req.header("Transfer-Encoding") or "").lower() == "chunked":
            raise ConnectionError("chunked request bodies are not supported by the fault proxy")
        if (req.header("Expect") or "").lower() == "100-continue":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            await writer.drain()
        fault = self._decide(req)
        if fault is not None and fault.kind in ("reset", "stall"):
            await reader.readexactly(int(length * fault.body_fraction))
            if fault.kind == "reset":
                _reset(writer)
                return False
            release = self._release
            assert release is not None
            await release.wait()
            return False
        if fault is not None and fault.kind == "trickle":
            body = await _trickle(reader, int(length * fault.body_fraction), fault.rate)
            body += await reader.readexactly(length - len(body))
            fault = None
        else:
            body = await reader.readexactly(length)
        if fault is not None and fault.kind == "lost":
            await self._forward(req, body, None)
            _reset(writer)
            return False
        if fault is not None and fault.kind == "corrupt-request":
            await self._forward(req, _flip(body), writer)
        elif fault is not None and fault.kind == "corrupt-response":
            await self._forward(req, body, writer, corrupt=True)
        elif fault is not None and fault.kind == "redirect":
            await _send_redirect(writer, req, fault)
        elif fault is not None and fault.kind == "echo":
            await _send_echo(writer, req)
        elif fault is not None:
            await _send_error(writer, req, fault)
        else:
            await self._forward(req, body, writer)
        return (req.header("Connection") or "").lower() != "close"

    async def _forward(
        self,
        req: _Request,
        body: bytes,
        writer: asyncio.StreamWriter | None,
        *,
        corrupt: bool = False,
    ) -> None:
        """Send the request to moto and its answer to ``writer`` (None: drop the answer);
        ``corrupt`` flips one byte of the answer's body."""
        up_r, up_w = await asyncio.open_connection(self._up_host, self._up_port)
        try:
            lines = [f"{req.method} {req.target} HTTP/1.1"]
            lines += [f"{k}: {v}" for k, v in req.headers if k.lower() not in _HOP | {"expect"}]
            if body or req.method in ("PUT", "POST"):
                lines.append(f"Content-Length: {len(body)}")
            lines.append("Connection: close")
            up_w.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
            await up_w.drain()
            head = await up_r.readuntil(b"\r\n\r\n")
            while head.startswith((b"HTTP/1.1 100", b"HTTP/1.0 100")):
                head = await up_r.readuntil(b"\r\n\r\n")
            raw = await up_r.read()
        finally:
            up_w.close()
        if writer is None:
            return
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        headers = [tuple(h.split(":", 1)) for h in header_lines if ":" in h]
        resp = [(k.strip(), v.strip()) for k, v in headers]
        lower = {k.lower(): v for k, v in resp}
        if lower.get("transfer-encoding", "").lower() == "chunked":
            payload = _dechunk(raw)
        elif "content-length" in lower and req.method != "HEAD":
            payload = raw[: int(lower["content-length"])]
        else:
            payload = raw
        out = ["HTTP/1.1 " + status_line.split(" ", 1)[1]]
        out += [f"{k}: {v}" for k, v in resp if k.lower() not in _HOP]
        if req.method == "HEAD":
            out.append(f"Content-Length: {lower.get('content-length', '0')}")
            payload = b""
        else:
            out.append(f"Content-Length: {len(payload)}")
        if corrupt:
            payload = _flip(payload)
        writer.write(("\r\n".join(out) + "\r\n\r\n").encode("latin-1") + payload)
        await writer.drain()


async def _read_head(reader: asyncio.StreamReader) -> _Request | None:
    try:
        raw = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return None
        raise
    request_line, *header_lines = raw.decode("latin-1").split("\r\n")
    method, target, version = request_line.split(" ", 2)
    headers = []
    for h in header_lines:
        if ":" in h:
            k, v = h.split(":", 1)
            headers.append((k.strip(), v.strip()))
    return _Request(method, target, version, headers)


async def _send_error(writer: asyncio.StreamWriter, req: _Request, fault: Fault) -> None:
    status, reason, code, message = _ERRORS[fault.kind]
    request_id = uuid.uuid4().hex
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message>"
        f"<RequestId>{request_id}</RequestId></Error>"
    ).encode()
    headers = [
        f"HTTP/1.1 {status} {reason}",
        "Content-Type: application/xml",
        f"x-amz-request-id: {request_id}",
    ]
    if fault.kind == "429":
        headers.append(f"Retry-After: {fault.retry_after}")
    if req.method == "HEAD":
        body = b""
    headers.append(f"Content-Length: {len(body)}")
    writer.write(("\r\n".join(headers) + "\r\n\r\n").encode("latin-1") + body)
    await writer.drain()


async def _send_redirect(writer: asyncio.StreamWriter, req: _Request, fault: Fault) -> None:
    location = fault.location.rstrip("/") + req.target
    headers = [
        f"HTTP/1.1 {fault.status} {_REDIRECTS[fault.status]}",
        f"Location: {location}",
        "Content-Length: 0",
    ]
    writer.write(("\r\n".join(headers) + "\r\n\r\n").encode("latin-1"))
    await writer.drain()


async def _send_echo(writer: asyncio.StreamWriter, req: _Request) -> None:
    """403 AccessDenied quoting every request header (XML-escaped) in its message."""
    from xml.sax.saxutils import escape

    quoted = "; ".join(f"{k}: {v}" for k, v in req.headers)
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>AccessDenied</Code><Message>Access Denied for request with "
        f"headers {escape(quoted)}</Message><RequestId>{uuid.uuid4().hex}</RequestId></Error>"
    ).encode()
    if req.method == "HEAD":
        body = b""
    head = [
        "HTTP/1.1 403 Forbidden",
        "Content-Type: application/xml",
        f"Content-Length: {len(body)}",
    ]
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
    await writer.drain()


def _flip(data: bytes) -> bytes:
    """``data`` with its middle byte inverted (unchanged when empty)."""
    if not data:
        return data
    i = len(data) // 2
    return data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1 :]


async def _trickle(reader: asyncio.StreamReader, length: int, rate: float) -> bytes:
    """Read ``length`` body bytes at about ``rate`` bytes per second (simulating a slow link:
    the pauses pace the network, they synchronise nothing)."""
    chunk = 32 * 1024
    out = bytearray()
    while len(out) < length:
        out += await reader.readexactly(min(chunk, length - len(out)))
        await asyncio.sleep(chunk / rate)
    return bytes(out)


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST (SO_LINGER 0), as a dropped connection looks to the client."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def _dechunk(raw: bytes) -> bytes:
    out = bytearray()
    pos = 0
    while True:
        end = raw.index(b"\r\n", pos)
        size = int(raw[pos:end].split(b";", 1)[0], 16)
        if size == 0:
            return bytes(out)
        out += raw[end + 2 : end + 2 + size]
        pos = end + 2 + size + 2


@dataclass(frozen=True)
class Received:
    """One request a :class:`Sink` got."""

    method: str
    target: str
    headers: dict[str, str]
    body: bytes


class Sink:
    """A loopback HTTP server that takes anything: records each request and answers 200 with
    ``ETag: "<md5 of the body>"`` (a redirect target posing as a store)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._received: list[Received] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    @property
    def received(self) -> list[Received]:
        with self._lock:
            return list(self._received)

    def start(self) -> None:
        ready = threading.Event()

        def run() -> None:
            asyncio.run(self._main(ready))

        self._thread = threading.Thread(target=run, name="sink", daemon=True)
        self._thread.start()
        if not ready.wait(_START_TIMEOUT):
            raise RuntimeError("sink did not start")

    def stop(self) -> None:
        loop, stopped = self._loop, self._stopped
        if loop is not None and stopped is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stopped.set)
        if self._thread is not None:
            self._thread.join(timeout=10)

    async def _main(self, ready: threading.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        server = await asyncio.start_server(self._serve, "127.0.0.1", 0, limit=_HEAD_LIMIT)
        self.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        ready.set()
        async with server:
            await self._stopped.wait()
            server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        import hashlib

        try:
            while True:
                req = await _read_head(reader)
                if req is None:
                    return
                body = await reader.readexactly(int(req.header("Content-Length") or 0))
                with self._lock:
                    self._received.append(
                        Received(
                            req.method, req.target, {k.lower(): v for k, v in req.headers}, body
                        )
                    )
                etag = hashlib.md5(body, usedforsecurity=False).hexdigest()
                writer.write(
                    f'HTTP/1.1 200 OK\r\nETag: "{etag}"\r\nContent-Length: 0\r\n\r\n'.encode()
                )
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            return
        finally:
            writer.close()


@pytest.fixture
def sink() -> Iterator[Sink]:
    """A fresh :class:`Sink` on a free loopback port."""
    server = Sink()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def fault_proxy_server(moto_server: MotoServer) -> Iterator[FaultProxy]:
    """A fault proxy in front of the session's moto server."""
    proxy = FaultProxy(moto_server.endpoint_url)
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()


@pytest.fixture
def fault_proxy(fault_proxy_server: FaultProxy) -> Iterator[FaultProxy]:
    """The session's fault proxy, with no faults and zero counts; cleaned up afterwards."""
    fault_proxy_server.reset()
    try:
        yield fault_proxy_server
    finally:
        fault_proxy_server.reset()


# S3's smallest non-final part is 5 MiB (moto enforces it): files just over it make two parts.
SMALL_PARTS = PartPolicy(threshold=5 * 1024 * 1024 + 1, part_size=5 * 1024 * 1024)
# The key prefix proxied_s3_uploader writes under.
PREFIX = "run"


def proxied_s3_uploader(
    moto_server: MotoServer,
    proxy: FaultProxy,
    bucket: str,
    retry: RetryPolicy,
    events: list[UploadEvent],
    options: dict[str, object] | None = None,
    **kwargs: Any,
) -> AsyncUploader:
    """An uploader on ``s3://bucket/run`` whose S3 requests all go through ``proxy``."""
    return AsyncUploader(
        f"s3://{bucket}/{PREFIX}",
        provider_kwargs=moto_server.options(endpoint_url=proxy.endpoint_url, **(options or {})),
        retry=retry,
        on_event=events.append,
        **kwargs,
    )
