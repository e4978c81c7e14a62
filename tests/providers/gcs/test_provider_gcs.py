"""GCSProvider against real HTTP servers.

- fake-gcs-server (session fixture in tests/servers/fake_gcs.py) for everything a GCS server
  does: round trips, preconditions, missing buckets, the engine end to end, the conformance suite.
- A small scripted aiohttp server (in this module) for the answers fake-gcs-server never gives:
  429 / 5xx with Retry-After, 401/403, 400, an empty 200 body (gcloud-aio-storage then returns
  None), a 308 on the resumable PUT, and a server that never answers (timeouts).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio.to_thread
import google_crc32c
import pytest
import pytest_asyncio
from aiohttp import web

from artifact_uploader import AsyncUploader, PartPolicy, RetryPolicy, Uploader
from artifact_uploader._errors import (
    ConfigError,
    IntegrityError,
    InvalidObjectNameError,
    ObjectExistsError,
    ObjectNotFoundError,
    PermissionDeniedError,
    ProviderError,
    StoreNotFoundError,
)
from artifact_uploader._registry import make_provider, provider_from_seed
from artifact_uploader._types import FileSlice
from artifact_uploader.providers import _gcs_read
from artifact_uploader.providers.gcs import GCSProvider
from artifact_uploader.testing import ProviderConformance, ReadConformance, ReadObject
from tests.servers.fake_gcs import FakeGCSServer
from tests.servers.fault_proxy import Fault, FaultProxy

MiB = 1024 * 1024
SECRET_TOKEN = "ya29.super-secret-token-value"


def _write(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / f"src-{uuid.uuid4().hex[:8]}.bin"
    path.write_bytes(data)
    return path


def _flip_byte(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


def _crc32c_b64(data: bytes) -> str:
    return base64.b64encode(google_crc32c.Checksum(data).digest()).decode()  # type: ignore[no-untyped-call]


@pytest_asyncio.fixture
async def gcs(fake_gcs_server: FakeGCSServer, gcs_bucket: str) -> AsyncIterator[GCSProvider]:
    """An opened provider on a fresh bucket, with a small resumable threshold (1 MiB)."""
    p = GCSProvider(gcs_bucket, "run-1", api_root=fake_gcs_server.api_root, resumable_threshold=MiB)
    await p.open()
    try:
        yield p
    finally:
        await p.aclose()


# -- round trips on fake-gcs-server ----------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "size",
    [0, 1, 100_000, MiB, MiB + 1, 3 * MiB + 12345],
    ids=["empty", "one-byte", "small", "at-threshold", "resumable-min", "resumable"],
)
async def test_round_trip_identical_bytes(
    gcs: GCSProvider, fake_gcs_server: FakeGCSServer, tmp_path: Path, size: int
) -> None:
    data = os.urandom(size)
    result = await gcs.put("ckpt/ep1.pt", FileSlice.whole(_write(tmp_path, data)), overwrite=True)
    assert fake_gcs_server.read_object(gcs.bucket, "run-1/ckpt/ep1.pt") == data
    meta = fake_gcs_server.object_metadata(gcs.bucket, "run-1/ckpt/ep1.pt")
    assert result.version == meta["generation"]
    assert result.checksum_algorithm == "crc32c"
    assert result.checksum == _crc32c_b64(data) == meta["crc32c"]
    assert int(meta["size"]) == size


@pytest.mark.asyncio
async def test_put_uploads_only_the_slice(
    gcs: GCSProvider, fake_gcs_server: FakeGCSServer, tmp_path: Path
) -> None:
    data = os.urandom(3 * MiB)
    path = _write(tmp_path, data)
    # One small slice (multipart upload) and one big slice (resumable), both mid-file.
    await gcs.put("small", FileSlice(path, 1000, 5000), overwrite=True)
    await gcs.put("big", FileSlice(path, 100, 2 * MiB), overwrite=True)
    assert fake_gcs_server.read_object(gcs.bucket, "run-1/small") == data[1000:6000]
    assert fake_gcs_server.read_object(gcs.bucket, "run-1/big") == data[100 : 100 + 2 * MiB]


@pytest.mark.asyncio
async def test_content_type_guessed_from_the_name(
    gcs: GCSProvider, fake_gcs_server: FakeGCSServer, tmp_path: Path
) -> None:
    path = _write(tmp_path, b'{"loss": 1.0}')
    await gcs.put("metrics.json", FileSlice.whole(path), overwrite=True)
    await gcs.put("model.pt", FileSlice.whole(path), overwrite=True)
    assert fake_gcs_server.object_metadata(gcs.bucket, "run-1/metrics.json")["contentType"] == (
        "application/json"
    )
    assert fake_gcs_server.object_metadata(gcs.bucket, "run-1/model.pt")["contentType"] == (
        "application/octet-stream"
    )


@pytest.mark.asyncio
@pytest.mark.parametrize("size", [10, 2 * MiB], ids=["multipart", "resumable"])
async def test_overwrite_false_refuses_existing(
    gcs: GCSProvider, fake_gcs_server: FakeGCSServer, tmp_path: Path, size: int
) -> None:
    first, second = os.urandom(size), os.urandom(size)
    result = await gcs.put("x.bin", FileSlice.whole(_write(tmp_path, first)), overwrite=False)
    assert result.version is not None
    with pytest.raises(ObjectExistsError) as info:
        await gcs.put("x.bin", FileSlice.whole(_write(tmp_path, second)), overwrite=False)
    assert info.value.uri == f"gs://{gcs.bucket}/run-1/x.bin"
    assert "x.bin" in str(info.value) and gcs.bucket in str(info.value)
    assert not info.value.transient
    assert fake_gcs_server.read_object(gcs.bucket, "run-1/x.bin") == first
    # overwrite=True still replaces it.
    await gcs.put("x.bin", FileSlice.whole(_write(tmp_path, second)), overwrite=True)
    assert fake_gcs_server.read_object(gcs.bucket, "run-1/x.bin") == second


@pytest.mark.asyncio
async def test_overwrite_false_is_atomic_for_small_objects(
    gcs: GCSProvider, fake_gcs_server: FakeGCSServer, tmp_path: Path
) -> None:
    """Racing writers: exactly one wins (the precondition is enforced by the server)."""
    paths = [_write(tmp_path, f"writer {i}".encode()) for i in range(8)]
    results = await asyncio.gather(
        *(gcs.put("race.txt", FileSlice.whole(p), overwrite=False) for p in paths),
        return_exceptions=True,
    )
    winners = [r for r in results if not isinstance(r, BaseException)]
    losers = [r for r in results if isinstance(r, BaseException)]
    assert len(winners) == 1
    assert all(isinstance(e, ObjectExistsError) for e in losers)
    stored = fake_gcs_server.read_object(gcs.bucket, "run-1/race.txt")
    assert stored in {p.read_bytes() for p in paths}


@pytest.mark.asyncio
async def test_corruption_between_hashing_and_sending_is_an_integrity_error(
    fake_gcs_server: FakeGCSServer, gcs_bucket: str, tmp_path: Path
) -> None:
    """The server reports the CRC32C of what it stored; it must match the file we hashed."""

    class FlippingProvider(GCSProvider):
        async def _upload_resumable(
            self, key: str, data: FileSlice, crc: str, md5: str, *, overwrite: bool
        ) -> dict[str, Any] | None:
            # The staged file changes after hashing (bit rot, a writer that did not stop).
            _flip_byte(data.path, data.offset + 7)
            return await super()._upload_resumable(key, data, crc, md5, overwrite=overwrite)

    p = FlippingProvider(gcs_bucket, api_root=fake_gcs_server.api_root, resumable_threshold=1024)
    await p.open()
    try:
        with pytest.raises(IntegrityError) as info:
            await p.put(
                "rot.bin", FileSlice.whole(_write(tmp_path, os.urandom(4096))), overwrite=True
            )
    finally:
        await p.aclose()
    assert "crc32c" in str(info.value) and "rot.bin" in str(info.value)
    assert info.value.transient  # overwrite=True: a new attempt re-reads and rewrites


@pytest.mark.asyncio
async def test_missing_bucket_is_store_not_found_at_open(fake_gcs_server: FakeGCSServer) -> None:
    p = GCSProvider("no-such-bucket-here", api_root=fake_gcs_server.api_root)
    with pytest.raises(StoreNotFoundError) as info:
        await p.open()
    assert "no-such-bucket-here" in str(info.value)
    assert not info.value.transient
    await p.aclose()  # idempotent after a failed open
    assert "no-such-bucket-here" not in fake_gcs_server.request("GET", "/storage/v1/b").decode()


@pytest.mark.asyncio
async def test_missing_bucket_at_put_when_not_verified(
    fake_gcs_server: FakeGCSServer, tmp_path: Path
) -> None:
    p = GCSProvider("gone-bucket", api_root=fake_gcs_server.api_root, resumable_threshold=10)
    await p.open(verify=False)
    try:
        for size in (5, 100):  # multipart, then resumable
            with pytest.raises(StoreNotFoundError) as info:
                await p.put("a.txt", FileSlice.whole(_write(tmp_path, b"x" * size)), overwrite=True)
            assert "gone-bucket" in str(info.value)
    finally:
        await p.aclose()


@pytest.mark.asyncio
async def test_open_leaves_no_object_behind(
    fake_gcs_server: FakeGCSServer, gcs_bucket: str
) -> None:
    p = GCSProvider(gcs_bucket, "pfx", api_root=fake_gcs_server.api_root)
    await p.open(verify=True)
    await p.aclose()
    await p.aclose()
    assert fake_gcs_server.list_objects(gcs_bucket) == []


@pytest.mark.asyncio
async def test_put_after_close_is_refused(gcs: GCSProvider, tmp_path: Path) -> None:
    await gcs.aclose()
    with pytest.raises(ProviderError, match="before open"):
        await gcs.put("a", FileSlice.whole(_write(tmp_path, b"a")), overwrite=True)


@pytest.mark.asyncio
async def test_storage_emulator_host_is_honoured(
    fake_gcs_server: FakeGCSServer,
    gcs_bucket: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", fake_gcs_server.api_root.removeprefix("http://"))
    p = GCSProvider(gcs_bucket)
    await p.open()
    try:
        await p.put("env.txt", FileSlice.whole(_write(tmp_path, b"env")), overwrite=True)
    finally:
        await p.aclose()
    assert fake_gcs_server.read_object(gcs_bucket, "env.txt") == b"env"


@pytest.mark.asyncio
async def test_explicit_token_is_sent_and_works_with_the_emulator(
    fake_gcs_server: FakeGCSServer, gcs_bucket: str, tmp_path: Path
) -> None:
    p = GCSProvider(
        gcs_bucket, api_root=fake_gcs_server.api_root, token=SECRET_TOKEN, resumable_threshold=10
    )
    assert SECRET_TOKEN not in repr(p)
    await p.open()
    try:
        await p.put("t1", FileSlice.whole(_write(tmp_path, b"12345")), overwrite=True)
        await p.put("t2", FileSlice.whole(_write(tmp_path, b"x" * 100)), overwrite=True)
    finally:
        await p.aclose()
    assert fake_gcs_server.read_object(gcs_bucket, "t2") == b"x" * 100


# -- names, URIs, options ------------------------------------------------------------------------


def test_uri_and_prefix() -> None:
    assert GCSProvider("bkt").uri("a/b.txt") == "gs://bkt/a/b.txt"
    assert GCSProvider("bkt", "/runs/7/").uri("a.txt") == "gs://bkt/runs/7/a.txt"
    p = GCSProvider.from_uri("gs://bkt/some/prefix", {})
    assert (p.bucket, p.prefix) == ("bkt", "some/prefix")
    assert p.uri("x") == "gs://bkt/some/prefix/x"
    assert p.scheme == "gs"


@pytest.mark.parametrize(
    "name",
    [
        "",
        "/",
        "a\x00b",
        "a\rb",
        "line\nbreak",
        ".",
        "..",
        ".well-known/acme-challenge/token",
        "é" * 513,
    ],
)
def test_invalid_names(name: str) -> None:
    with pytest.raises(InvalidObjectNameError):
        GCSProvider("bkt").check_name(name)


def test_name_length_counts_the_prefix() -> None:
    GCSProvider("bkt").check_name("x" * 1024)
    with pytest.raises(InvalidObjectNameError, match="1020"):
        GCSProvider("bkt", "abc").check_name("x" * 1021)
    GCSProvider("bkt", "abc").check_name("x" * 1020)
    # Names that merely look like the forbidden ones are fine.
    for ok in ("a/./b", "..x", ".well-known/other", "ünï/©ødé 模型.pt"):
        GCSProvider("bkt").check_name(ok)


@pytest.mark.parametrize("seed_name", ["gs", "gcs", "google_storage", "GCS"])
def test_seed_provider_names_reach_gcs(seed_name: str) -> None:
    p = provider_from_seed(seed_name, "my-bucket", {"api_root": "http://127.0.0.1:1"})
    assert isinstance(p, GCSProvider)
    assert (p.bucket, p.prefix, p.api_root) == ("my-bucket", "", "http://127.0.0.1:1")


def test_seed_host_port_secure_make_the_api_root() -> None:
    p = provider_from_seed(
        "gcs",
        "b-1",
        {"host": "127.0.0.1", "port": 4443, "secure": False, "region": "eu", "api_version": "v1"},
    )
    assert isinstance(p, GCSProvider)
    assert p.api_root == "http://127.0.0.1:4443"
    q = make_provider("gs://b-1/p", {"host": "storage.example.com"})
    assert isinstance(q, GCSProvider) and q.api_root == "https://storage.example.com"
    # An IPv6 address is bracketed in the URL; a port that is not a number is refused here,
    # naming the option, not at the first request.
    v6 = make_provider("gs://b-1", {"host": "::1", "port": "4443", "secure": False})
    assert isinstance(v6, GCSProvider) and v6.api_root == "http://[::1]:4443"
    with pytest.raises(ConfigError, match="'port'"):
        make_provider("gs://b-1", {"host": "127.0.0.1", "port": "44x3"})


def test_seed_key_as_service_file(tmp_path: Path) -> None:
    key_file = tmp_path / "sa.json"
    key_file.write_text(json.dumps({"type": "service_account", "client_email": "x@y"}))
    p = GCSProvider.from_uri("gs://bkt", {"key": str(key_file)})
    assert p.service_file == str(key_file)
    # libcloud's convention: key = account email, secret = key file path.
    q = GCSProvider.from_uri("gs://bkt", {"key": "x@y.iam", "secret": str(key_file)})
    assert q.service_file == str(key_file)
    assert str(key_file) not in repr(q)


@pytest.mark.parametrize(
    "options",
    [
        {"key": "GOOGHMACKEYID123", "secret": "hmac-secret-value-xyz"},
        {"key": "GOOGHMACKEYID123"},
        {"secret": "hmac-secret-value-xyz"},
    ],
)
def test_seed_hmac_keys_refused_without_echo(options: dict[str, object]) -> None:
    with pytest.raises(ConfigError) as info:
        GCSProvider.from_uri("gs://bkt", options)
    message = str(info.value)
    assert "service_file" in message
    assert "GOOGHMACKEYID123" not in message and "hmac-secret-value-xyz" not in message


def test_unknown_options_are_named() -> None:
    with pytest.raises(ConfigError) as info:
        GCSProvider.from_uri("gs://bkt", {"api_root": "http://x:1", "endpoint": 1, "zzz": 2})
    assert "'endpoint'" in str(info.value) and "'zzz'" in str(info.value)


@pytest.mark.parametrize(
    ("uri", "options"),
    [
        ("s3://bkt", {}),
        ("gs://", {}),
        ("gs://Upper_Case", {}),
        ("gs://bkt?x=1", {}),
        ("gs://bkt", {"timeout": 0}),
        ("gs://bkt", {"min_throughput": -1}),
        ("gs://bkt", {"resumable_threshold": 1.5}),
        ("gs://bkt", {"api_root": "ftp://x"}),
        ("gs://bkt", {"port": 80}),
        ("gs://bkt", {"secure": False}),
        ("gs://bkt", {"service_file": "/definitely/not/here.json"}),
        ("gs://bkt", {"token": 12345}),
    ],
)
def test_bad_uris_and_options(uri: str, options: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        GCSProvider.from_uri(uri, options)


def test_user_info_in_uri_is_refused_without_echo() -> None:
    with pytest.raises(ConfigError) as info:
        GCSProvider.from_uri("gs://user:pa55word@bkt/x", {})
    assert "pa55word" not in str(info.value)


def test_secrets_not_in_repr() -> None:
    p = GCSProvider.from_uri("gs://bkt/pfx", {"token": SECRET_TOKEN})
    assert SECRET_TOKEN not in repr(p)
    assert "bkt" in repr(p)
    assert SECRET_TOKEN not in repr(vars(p))


@pytest.mark.asyncio
async def test_bad_service_file_is_a_config_error_at_open(tmp_path: Path) -> None:
    bad = tmp_path / "sa.json"
    bad.write_text("not json, private_key=SEKRIT")
    p = GCSProvider("bkt", service_file=bad)
    with pytest.raises(ConfigError) as info:
        await p.open(verify=False)
    assert str(bad) in str(info.value) and "SEKRIT" not in str(info.value)
    await p.aclose()


def test_timeouts_scale_with_size() -> None:
    p = GCSProvider("bkt")
    assert p.request_timeout(0) == 60.0
    assert p.request_timeout(MiB) == 61.0
    # A 10 GiB checkpoint gets hours, not the library's 30 s.
    assert p.request_timeout(10 * 1024 * MiB) == 60.0 + 10 * 1024
    q = GCSProvider("bkt", timeout=5, min_throughput=10 * MiB)
    assert q.request_timeout(100 * MiB) == 15.0


# -- a scripted server for the answers fake-gcs-server never gives --------------------------------


@dataclass
class Reply:
    status: int = 200
    body: bytes | dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    hang: bool = False


@dataclass
class Script:
    """Replies per HTTP method, in order; the last one repeats."""

    root: str = ""
    replies: dict[str, deque[Reply]] = field(default_factory=dict)
    seen: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    def on(self, method: str, *replies: Reply) -> None:
        self.replies[method] = deque(replies)


def _object(name: str, data: bytes) -> dict[str, Any]:
    return {
        "name": name,
        "bucket": "bkt",
        "generation": "42",
        "size": str(len(data)),
        "crc32c": _crc32c_b64(data),
        "md5Hash": base64.b64encode(hashlib.md5(data).digest()).decode(),
        "etag": "CAE=",
    }


@pytest_asyncio.fixture
async def script() -> AsyncIterator[Script]:
    s = Script()

    async def handle(request: web.Request) -> web.StreamResponse:
        await request.read()
        s.seen.append((request.method, str(request.rel_url), dict(request.headers)))
        queue = s.replies.get(request.method) or deque([Reply(404)])
        reply = queue.popleft() if len(queue) > 1 else queue[0]
        if reply.hang:
            await s.release.wait()
        body = reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body).encode()
        headers = {k: v.replace("{root}", s.root) for k, v in reply.headers.items()}
        return web.Response(status=reply.status, body=body, headers=headers)

    app = web.Application(client_max_size=64 * MiB)
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    sockets = site._server.sockets if site._server else []  # type: ignore[union-attr]
    s.root = f"http://127.0.0.1:{sockets[0].getsockname()[1]}"
    try:
        yield s
    finally:
        s.release.set()
        await runner.cleanup()


async def _scripted_provider(script: Script, **kw: Any) -> GCSProvider:
    p = GCSProvider("bkt", api_root=script.root, **kw)
    await p.open(verify=False)
    return p


def _google_error(status: int, message: str) -> dict[str, Any]:
    return {"error": {"code": status, "message": message, "errors": []}}


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("status", "expected", "transient"),
    [
        (404, StoreNotFoundError, False),
        (403, PermissionDeniedError, False),
        (401, PermissionDeniedError, False),
        (503, ProviderError, True),
        (429, ProviderError, True),
    ],
)
async def test_open_maps_bucket_errors(
    script: Script, status: int, expected: type[ProviderError], transient: bool
) -> None:
    script.on("GET", Reply(status, _google_error(status, "nope")))
    p = GCSProvider("bkt", api_root=script.root)
    with pytest.raises(expected) as info:
        await p.open()
    assert type(info.value) is expected
    assert info.value.transient is transient
    assert info.value.status == status
    assert "bkt" in str(info.value)
    await p.aclose()


@pytest.mark.asyncio
@pytest.mark.parametrize("size", [10, 5000], ids=["multipart", "resumable"])
@pytest.mark.parametrize(
    ("reply", "expected", "transient", "retry_after"),
    [
        (Reply(503, _google_error(503, "Backend"), {"Retry-After": "7"}), ProviderError, True, 7.0),
        (Reply(429, _google_error(429, "rate limit")), ProviderError, True, None),
        (Reply(500, b"<html>oops</html>"), ProviderError, True, None),
        (Reply(403, _google_error(403, "no objects.create")), PermissionDeniedError, False, None),
        (Reply(400, _google_error(400, "Invalid object name")), ProviderError, False, None),
        (Reply(400, _google_error(400, "CRC32C does not match")), IntegrityError, True, None),
        (Reply(412, _google_error(412, "Precondition Failed")), ObjectExistsError, False, None),
        (Reply(404, _google_error(404, "Not Found")), StoreNotFoundError, False, None),
    ],
    ids=["503", "429", "500-html", "403", "400", "400-crc", "412", "404"],
)
async def test_put_maps_http_errors(
    script: Script,
    tmp_path: Path,
    size: int,
    reply: Reply,
    expected: type[ProviderError],
    transient: bool,
    retry_after: float | None,
) -> None:
    # overwrite=False: the resumable path's existence check sees a 404 (absent) first.
    script.on("GET", Reply(404, _google_error(404, "No such object")))
    script.on("POST", reply)
    p = await _scripted_provider(script, resumable_threshold=1000, token=SECRET_TOKEN)
    try:
        with pytest.raises(expected) as info:
            await p.put(
                "dir/obj.bin", FileSlice.whole(_write(tmp_path, b"z" * size)), overwrite=False
            )
    finally:
        await p.aclose()
    err = info.value
    assert type(err) is expected
    assert err.transient is transient
    assert err.retry_after == retry_after
    assert err.status == reply.status
    assert err.name == "dir/obj.bin" and err.uri == "gs://bkt/dir/obj.bin"
    assert "bkt" in str(err)
    if expected is not StoreNotFoundError:
        assert "dir/obj.bin" in str(err)
    assert SECRET_TOKEN not in str(err) and SECRET_TOKEN not in repr(err)
    # The explicit token was sent as a bearer token.
    assert any(h.get("Authorization") == f"Bearer {SECRET_TOKEN}" for _, _, h in script.seen)


@pytest.mark.asyncio
async def test_library_returning_none_is_a_transient_failure(
    script: Script, tmp_path: Path
) -> None:
    """gcloud-aio-storage returns None (no exception) when a 2xx answer has no body."""
    script.on("POST", Reply(200, b""))
    p = await _scripted_provider(script)
    try:
        with pytest.raises(ProviderError) as info:
            await p.put("n.txt", FileSlice.whole(_write(tmp_path, b"abc")), overwrite=True)
    finally:
        await p.aclose()
    assert info.value.transient
    assert "no object metadata" in str(info.value) and "n.txt" in str(info.value)


@pytest.mark.asyncio
async def test_none_from_upload_seam_is_a_transient_failure(
    fake_gcs_server: FakeGCSServer, gcs_bucket: str, tmp_path: Path
) -> None:
    """Same, through a subclass: the object was written but the answer was lost."""

    class LostAnswer(GCSProvider):
        async def _upload_small(
            self, key: str, body: bytes, crc: str, md5: str, *, overwrite: bool
        ) -> dict[str, Any] | None:
            await super()._upload_small(key, body, crc, md5, overwrite=overwrite)
            return None

    p = LostAnswer(gcs_bucket, api_root=fake_gcs_server.api_root)
    await p.open()
    try:
        with pytest.raises(ProviderError) as info:
            await p.put("lost.txt", FileSlice.whole(_write(tmp_path, b"abc")), overwrite=True)
    finally:
        await p.aclose()
    assert info.value.transient


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("put_reply", "match"),
    [
        (Reply(308, b"", {"Range": "bytes=0-99"}), "incomplete"),
        (Reply(404, _google_error(404, "No such upload")), "session"),
        (Reply(410, _google_error(410, "Gone")), "session"),
        (Reply(502, b"bad gateway"), "502"),
    ],
    ids=["308", "404-session", "410", "502"],
)
async def test_resumable_put_failures_are_transient(
    script: Script, tmp_path: Path, put_reply: Reply, match: str
) -> None:
    location = "{root}/upload/storage/v1/b/bkt/o?uploadType=resumable&upload_id=abc%2Fdef"
    script.on("POST", Reply(200, b"", {"Location": location}))
    script.on("PUT", put_reply)
    p = await _scripted_provider(script, resumable_threshold=10)
    try:
        with pytest.raises(ProviderError) as info:
            await p.put("r.bin", FileSlice.whole(_write(tmp_path, b"r" * 500)), overwrite=True)
    finally:
        await p.aclose()
    assert type(info.value) is ProviderError
    assert info.value.transient
    assert match in str(info.value) and "r.bin" in str(info.value)
    methods = [m for m, _, _ in script.seen]
    assert methods == ["POST", "PUT"]  # one attempt each: no library-internal retries
    # The session URL was used verbatim (not re-encoded).
    assert script.seen[1][1].endswith("upload_id=abc%2Fdef")


@pytest.mark.asyncio
async def test_resumable_sends_checksums_and_precondition(script: Script, tmp_path: Path) -> None:
    data = os.urandom(3000)
    location = "{root}/upload/storage/v1/b/bkt/o?uploadType=resumable&upload_id=u1"
    script.on("GET", Reply(404, _google_error(404, "No such object")))
    script.on("POST", Reply(200, b"", {"Location": location}))
    script.on("PUT", Reply(200, _object("p/x.bin", data)))
    p = await _scripted_provider(script, resumable_threshold=10)
    try:
        result = await p.put("p/x.bin", FileSlice.whole(_write(tmp_path, data)), overwrite=False)
    finally:
        await p.aclose()
    assert result.version == "42" and result.etag == "CAE="
    assert result.checksum == _crc32c_b64(data)
    get, post, put = script.seen
    assert get[0] == "GET" and post[0] == "POST" and put[0] == "PUT"
    assert "ifGenerationMatch=0" in post[1] and "uploadType=resumable" in post[1]
    assert put[2]["Content-Length"] == "3000"
    assert "Authorization" not in post[2]  # an emulator without credentials: anonymous


@pytest.mark.asyncio
async def test_server_reporting_other_checksum_is_an_integrity_error(
    script: Script, tmp_path: Path
) -> None:
    script.on("POST", Reply(200, _object("x", b"something else")))
    script.on("DELETE", Reply(204, b""))
    p = await _scripted_provider(script)
    try:
        with pytest.raises(IntegrityError) as info:
            await p.put("x", FileSlice.whole(_write(tmp_path, b"ours")), overwrite=False)
    finally:
        await p.aclose()
    # Transient even with overwrite=False: the unverified generation was deleted (only that
    # generation), so the engine's retry writes the object again instead of meeting "exists".
    assert info.value.transient
    deletes = [target for method, target, _ in script.seen if method == "DELETE"]
    assert deletes == ["/storage/v1/b/bkt/o/x?ifGenerationMatch=42"]


@pytest.mark.asyncio
async def test_connection_refused_is_transient(tmp_path: Path, refused_port: int) -> None:
    # Bound for the whole test, never listening: every connection is refused.
    p = GCSProvider("bkt", api_root=f"http://127.0.0.1:{refused_port}")
    with pytest.raises(ProviderError) as info:
        await p.open()
    assert info.value.transient
    await p.open(verify=False)
    try:
        with pytest.raises(ProviderError) as info:
            await p.put("c", FileSlice.whole(_write(tmp_path, b"c")), overwrite=True)
    finally:
        await p.aclose()
    assert info.value.transient and "'gs://bkt/c'" in str(info.value)


@pytest.mark.asyncio
@pytest.mark.parametrize("size", [0, 256 * 1024], ids=["empty", "256KiB"])
async def test_timeout_is_transient_and_scales_with_size(
    script: Script, tmp_path: Path, size: int
) -> None:
    script.on("POST", Reply(hang=True))
    p = await _scripted_provider(script, timeout=0.1, min_throughput=512 * 1024)
    expected = p.request_timeout(size)
    assert expected == pytest.approx(0.1 + size / (512 * 1024))
    start = time.monotonic()
    try:
        with pytest.raises(ProviderError) as info:
            await p.put("slow.bin", FileSlice.whole(_write(tmp_path, b"s" * size)), overwrite=True)
    finally:
        await p.aclose()
    elapsed = time.monotonic() - start
    assert info.value.transient and "timed out" in str(info.value)
    # The timeout can fire late on a busy machine, never early.
    assert elapsed >= expected * 0.9


@pytest.mark.asyncio
@pytest.mark.parametrize("size", [1, 100], ids=["multipart", "resumable"])
async def test_token_failure_is_permission_denied_without_secrets(
    script: Script, tmp_path: Path, size: int
) -> None:
    class Refused:
        async def get(self) -> str | None:
            raise RuntimeError(f"invalid_grant for {SECRET_TOKEN}")

    script.on("POST", Reply(200, _object("k", b"k")))
    p = GCSProvider("bkt", api_root=script.root, token=Refused(), resumable_threshold=10)
    await p.open(verify=False)
    try:
        with pytest.raises(PermissionDeniedError) as info:
            await p.put("k", FileSlice.whole(_write(tmp_path, b"k" * size)), overwrite=True)
    finally:
        await p.aclose()
    assert "access token" in str(info.value)
    assert "credentials were refused" in str(info.value)
    assert "check the token source passed as 'token'" in str(info.value)
    assert SECRET_TOKEN not in str(info.value)
    assert script.seen == []  # nothing reached the storage API


# -- the engine, end to end ----------------------------------------------------------------------


@pytest.mark.asyncio
async def test_async_uploader_end_to_end(
    fake_gcs_server: FakeGCSServer, gcs_bucket: str, tmp_path: Path
) -> None:
    files = {
        f"rank_{i}/ckpt.pt": _write(tmp_path, os.urandom(size))
        for i, size in enumerate([0, 10, 300_000, 2 * MiB + 3, 9 * MiB])
    }
    async with AsyncUploader(
        f"gs://{gcs_bucket}/exp-1",
        provider_kwargs={"api_root": fake_gcs_server.api_root, "resumable_threshold": MiB},
        max_concurrency=3,
        retry=RetryPolicy(attempts=2, base_delay=0.0, max_delay=0.0),
    ) as up:
        handles = [await up.submit(path, name) for name, path in files.items()]
        await up.flush()
        results = [await h for h in handles]
    for (name, path), result in zip(files.items(), results, strict=True):
        data = path.read_bytes()
        assert result.uri == f"gs://{gcs_bucket}/exp-1/{name}"
        assert result.size == len(data)
        assert result.checksum == _crc32c_b64(data)
        assert fake_gcs_server.read_object(gcs_bucket, f"exp-1/{name}") == data


@pytest.mark.asyncio
async def test_async_uploader_seed_style_kwargs(
    fake_gcs_server: FakeGCSServer, gcs_bucket: str, tmp_path: Path
) -> None:
    port = int(fake_gcs_server.api_root.rsplit(":", 1)[1])
    kwargs = {"host": "127.0.0.1", "port": port, "secure": False, "region": "us-central1"}
    p = provider_from_seed("google_storage", gcs_bucket, kwargs)
    async with AsyncUploader(p) as up:
        result = await up.upload(_write(tmp_path, b"seed"), "s.txt", overwrite=False)
        with pytest.raises(ObjectExistsError):
            await up.upload(_write(tmp_path, b"again"), "s.txt", overwrite=False)
        up._take_failures()
    assert result.uri == f"gs://{gcs_bucket}/s.txt"
    assert fake_gcs_server.read_object(gcs_bucket, "s.txt") == b"seed"


# -- the project's conformance suite -------------------------------------------------------------


class TestGCSConformance(ProviderConformance):
    @pytest_asyncio.fixture
    async def provider(
        self, fake_gcs_server: FakeGCSServer, gcs_bucket: str
    ) -> AsyncIterator[GCSProvider]:
        p = GCSProvider(gcs_bucket, f"t-{uuid.uuid4().hex[:8]}", api_root=fake_gcs_server.api_root)
        await p.open()
        yield p
        await p.aclose()

    @pytest.fixture
    def read_object(self, provider: GCSProvider, fake_gcs_server: FakeGCSServer) -> ReadObject:
        async def read(name: str) -> bytes:
            key = f"{provider.prefix}/{name}"
            return await anyio.to_thread.run_sync(fake_gcs_server.read_object, provider.bucket, key)

        return read

    @pytest.fixture
    def missing_store(self, fake_gcs_server: FakeGCSServer) -> GCSProvider:
        return GCSProvider(f"missing-{uuid.uuid4().hex[:8]}", api_root=fake_gcs_server.api_root)


class TestGCSReadConformance(ReadConformance):
    @pytest_asyncio.fixture
    async def provider(
        self, fake_gcs_server: FakeGCSServer, gcs_bucket: str
    ) -> AsyncIterator[GCSProvider]:
        p = GCSProvider(gcs_bucket, f"t-{uuid.uuid4().hex[:8]}", api_root=fake_gcs_server.api_root)
        await p.open()
        yield p
        await p.aclose()

    @pytest_asyncio.fixture
    async def corrupting_provider(
        self, provider: GCSProvider, fake_gcs_server: FakeGCSServer
    ) -> AsyncIterator[GCSProvider]:
        """The same objects, read through the fault proxy flipping a byte of every media GET
        answer (metadata answers pass untouched)."""
        proxy = FaultProxy(fake_gcs_server.api_root)
        proxy.start()
        proxy.script(*[Fault("corrupt-response")] * 50, match="/download/", method="GET")
        p = GCSProvider(provider.bucket, provider.prefix, api_root=proxy.endpoint_url)
        await p.open()
        try:
            yield p
        finally:
            await p.aclose()
            assert proxy.counts["corrupt-response"] >= 1
            proxy.stop()


@pytest.mark.asyncio
async def test_default_threshold_sends_a_few_mib_without_warnings(
    fake_gcs_server: FakeGCSServer, gcs_bucket: str, tmp_path: Path
) -> None:
    # With the default resumable threshold (8 MiB), bodies of a few MiB go in one request: they
    # must go out without aiohttp's "large body" ResourceWarning (an error in these tests).
    data = os.urandom(3 * MiB + 5)
    path = tmp_path / "mid.bin"
    path.write_bytes(data)
    p = GCSProvider(gcs_bucket, "defaults", api_root=fake_gcs_server.api_root)
    await p.open()
    try:
        await p.put("mid.bin", FileSlice.whole(path), overwrite=True)
    finally:
        await p.aclose()
    assert fake_gcs_server.read_object(gcs_bucket, "defaults/mid.bin") == data


# -- the read side -------------------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("size", [0, 5000, 2 * MiB + 1], ids=["empty", "simple", "resumable"])
async def test_head_reports_what_the_server_recorded(
    gcs: GCSProvider, fake_gcs_server: FakeGCSServer, tmp_path: Path, size: int
) -> None:
    data = os.urandom(size)
    result = await gcs.put("h/obj.bin", FileSlice.whole(_write(tmp_path, data)), overwrite=True)
    info = await gcs.head("h/obj.bin")
    meta = fake_gcs_server.object_metadata(gcs.bucket, "run-1/h/obj.bin")
    assert (info.name, info.size) == ("h/obj.bin", size)
    assert info.version == meta["generation"] == result.version
    assert info.etag == meta["etag"]
    assert info.last_modified is not None
    by_algorithm = {c.algorithm: c for c in info.checksums}
    assert by_algorithm["crc32c"].value == _crc32c_b64(data) == meta["crc32c"]
    assert by_algorithm["md5"].value == base64.b64encode(hashlib.md5(data).digest()).decode()
    assert all(c.part_size is None for c in info.checksums)


@pytest.mark.asyncio
async def test_head_of_a_composed_object_has_crc32c_only(script: Script) -> None:
    resource = _object("c", b"composed")
    del resource["md5Hash"]  # GCS keeps no MD5 for composed objects
    script.on("GET", Reply(200, resource))
    p = await _scripted_provider(script)
    try:
        info = await p.head("c")
    finally:
        await p.aclose()
    assert [c.algorithm for c in info.checksums] == ["crc32c"]
    assert info.size == len(b"composed") and info.version == "42"


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "resource",
    [{"size": "-1"}, {"size": "ten"}, {"crc32c": "not base64!"}, {"md5Hash": "AAAA"}],
    ids=["negative-size", "text-size", "bad-crc", "short-md5"],
)
async def test_head_refuses_a_malformed_answer(script: Script, resource: dict[str, str]) -> None:
    script.on("GET", Reply(200, {**_object("m", b"m"), **resource}))
    p = await _scripted_provider(script)
    try:
        with pytest.raises(ProviderError) as info:
            await p.head("m")
    finally:
        await p.aclose()
    assert "'gs://bkt/m'" in str(info.value) and not info.value.transient


@pytest.mark.asyncio
async def test_get_range_reads_the_bytes_of_one_generation(
    gcs: GCSProvider, tmp_path: Path
) -> None:
    data = os.urandom(300_000)
    await gcs.put("r.bin", FileSlice.whole(_write(tmp_path, data)), overwrite=True)
    info = await gcs.head("r.bin")
    assert await gcs.get_range("r.bin", 0, len(data)) == data
    assert await gcs.get_range("r.bin", 1000, 5, etag=info.etag) == data[1000:1005]
    assert await gcs.get_range("r.bin", len(data) - 1, 1, etag=info.etag) == data[-1:]
    # Replaced: a read conditional on the old etag refuses to mix generations.
    await gcs.put("r.bin", FileSlice.whole(_write(tmp_path, os.urandom(300_000))), overwrite=True)
    with pytest.raises(ProviderError) as changed:
        await gcs.get_range("r.bin", 0, 10, etag=info.etag)
    assert changed.value.status == 412 and not changed.value.transient
    # A fresh provider (no cached generation) learns it from a metadata read.
    fresh = GCSProvider(gcs.bucket, gcs.prefix, api_root=gcs.api_root)
    await fresh.open()
    try:
        with pytest.raises(ProviderError) as again:
            await fresh.get_range("r.bin", 0, 10, etag=info.etag)
        new = await fresh.head("r.bin")
        assert len(await fresh.get_range("r.bin", 5, 10, etag=new.etag)) == 10
    finally:
        await fresh.aclose()
    assert again.value.status == 412


@pytest.mark.asyncio
async def test_get_range_and_head_of_a_missing_object(gcs: GCSProvider) -> None:
    with pytest.raises(ObjectNotFoundError) as head_info:
        await gcs.head("nope")
    with pytest.raises(ObjectNotFoundError) as get_info:
        await gcs.get_range("nope", 0, 1)
    for err in (head_info.value, get_info.value):
        assert isinstance(err, FileNotFoundError) and err.uri == f"gs://{gcs.bucket}/run-1/nope"


@pytest.mark.asyncio
async def test_get_range_bad_arguments(gcs: GCSProvider) -> None:
    with pytest.raises(ConfigError, match="offset"):
        await gcs.get_range("x", -1, 1)
    with pytest.raises(ConfigError, match="length"):
        await gcs.get_range("x", 0, 0)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("reply", "transient", "match"),
    [
        (Reply(206, b"abc"), True, "3 of the 10 bytes"),
        (Reply(206, b"x" * 11), False, "more than the 10 bytes"),
        (Reply(200, b"x" * 10), False, "ignored the byte range"),
        (Reply(416, _google_error(416, "Requested range not satisfiable")), False, "416"),
        (Reply(503, _google_error(503, "Backend")), True, "503"),
    ],
    ids=["short", "long", "range-ignored", "416", "503"],
)
async def test_get_range_bad_answers(
    script: Script, reply: Reply, transient: bool, match: str
) -> None:
    script.on("GET", reply)
    p = await _scripted_provider(script, token=SECRET_TOKEN)
    try:
        with pytest.raises(ProviderError) as info:
            await p.get_range("o", 5, 10)
    finally:
        await p.aclose()
    assert info.value.transient is transient
    assert match in str(info.value)
    _, target, headers = script.seen[-1]
    assert headers["Range"] == "bytes=5-14" and "alt=media" in target


@pytest.mark.asyncio
async def test_list_is_sorted_relative_and_paged(
    gcs: GCSProvider,
    fake_gcs_server: FakeGCSServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    names = ["b/2.pt", "a.txt", "b/1.pt", "b/10.pt", "ü.bin", "c"]
    for name in names:
        await gcs.put(name, FileSlice.whole(_write(tmp_path, name.encode())), overwrite=True)
    # A sibling prefix ("run-10" beside "run-1") is not part of this store.
    sibling = GCSProvider(gcs.bucket, "run-10", api_root=gcs.api_root)
    await sibling.open()
    try:
        await sibling.put("a.txt", FileSlice.whole(_write(tmp_path, b"other")), overwrite=True)
    finally:
        await sibling.aclose()
    monkeypatch.setattr(_gcs_read, "LIST_PAGE", 2)
    listed = [info async for info in gcs.list()]
    assert [i.name for i in listed] == sorted(names)
    assert {i.name: i.size for i in listed}["b/10.pt"] == len(b"b/10.pt")
    assert all(i.checksums and i.version for i in listed)
    assert [i.name async for i in gcs.list("b/")] == ["b/1.pt", "b/10.pt", "b/2.pt"]
    assert [i.name async for i in gcs.list("b/1")] == ["b/1.pt", "b/10.pt"]
    assert [i.name async for i in gcs.list("zzz")] == []


@pytest.mark.asyncio
async def test_list_refuses_a_repeated_page_token(script: Script) -> None:
    page = {"items": [_object("x", b"x")], "nextPageToken": "same"}
    script.on("GET", Reply(200, page))
    p = await _scripted_provider(script)
    try:
        with pytest.raises(ProviderError, match="repeats a page token"):
            _ = [i async for i in p.list()]
    finally:
        await p.aclose()


@pytest.mark.asyncio
async def test_delete_and_delete_of_a_missing_object(
    gcs: GCSProvider, fake_gcs_server: FakeGCSServer, tmp_path: Path
) -> None:
    await gcs.put("d.bin", FileSlice.whole(_write(tmp_path, b"d")), overwrite=True)
    await gcs.delete("d.bin")
    assert not fake_gcs_server.object_exists(gcs.bucket, "run-1/d.bin")
    await gcs.delete("d.bin")  # already gone: not an error
    with pytest.raises(ObjectNotFoundError):
        await gcs.head("d.bin")


@pytest.mark.parametrize("use_procs", [False, True], ids=["thread", "process"])
def test_sync_uploader_reads_back_from_gcs(
    fake_gcs_server: FakeGCSServer, gcs_bucket: str, tmp_path: Path, use_procs: bool
) -> None:
    data = os.urandom(3 * MiB + 1)
    src = _write(tmp_path, data)
    link = _write(tmp_path, b"ckpt/ep1.pt")
    options = {"api_root": fake_gcs_server.api_root, "resumable_threshold": MiB}
    parts = PartPolicy(threshold=MiB, part_size=MiB)
    with Uploader(
        f"gs://{gcs_bucket}/exp", provider_kwargs=options, parts=parts, use_procs=use_procs
    ) as up:
        up.upload(src, "ckpt/ep1.pt")
        up.upload(link, "latest.pt.symlink")
        (tmp_path / "out").mkdir()
        result = up.download("latest.pt", tmp_path / "out" / "ep1.pt")
        assert [i.name for i in up.list()] == ["ckpt/ep1.pt", "latest.pt.symlink"]
        assert up.exists("ckpt/ep1.pt") and not up.exists("nope")
    assert result.name == "ckpt/ep1.pt" and result.checksum_algorithm == "crc32c"
    assert (tmp_path / "out" / "ep1.pt").read_bytes() == data
