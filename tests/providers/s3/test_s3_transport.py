"""How the S3 provider reaches the store: region, TLS trust, payload signing, log scrubbing.

Against real servers: moto (which hosts buckets in several regions and reports a bucket's
region on HeadBucket) and the scripted fault server (to see which path sent a request).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import ssl
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import botocore.credentials
import botocore.session
import pytest
import pytest_asyncio

from artifact_uploader._errors import ProviderError
from artifact_uploader._types import FileSlice
from artifact_uploader.providers.s3 import S3Provider
from tests.servers.moto import MotoServer, read_s3_object
from tests.servers.s3_faults import FaultServer, s3_error

# botocore stamps every request it sends with this header; the direct path does not.
BOTOCORE_MARK = "amz-sdk-invocation-id"


def sent_by_botocore(request: dict[str, Any]) -> bool:
    return BOTOCORE_MARK in {k.lower() for k in request["headers"]}


@pytest.fixture
def eu_bucket(moto_server: MotoServer, moto_s3: Any) -> Iterator[str]:
    name = f"eu-{uuid.uuid4().hex[:16]}"
    moto_s3.create_bucket(
        Bucket=name, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"}
    )
    try:
        yield name
    finally:
        moto_server.reset()


# -- region --------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_bucket_in_another_region_leaves_the_direct_path_off(
    moto_server: MotoServer, moto_s3: Any, eu_bucket: str, tmp_path: Path
) -> None:
    src = tmp_path / "f.bin"
    src.write_bytes(b"elsewhere")
    # Opened for us-east-1 (the moto options' region); HeadBucket says eu-west-1.
    provider = S3Provider.from_uri(f"s3://{eu_bucket}/p", moto_server.options())
    await provider.open()
    try:
        assert provider.direct_region is None
        await provider.put("f.bin", FileSlice(src, 0, 9), overwrite=True)
    finally:
        await provider.aclose()
    assert read_s3_object(moto_s3, eu_bucket, "p/f.bin") == b"elsewhere"


@pytest.mark.asyncio
async def test_bucket_in_the_signing_region_keeps_the_direct_path(
    moto_server: MotoServer, eu_bucket: str
) -> None:
    provider = S3Provider.from_uri(f"s3://{eu_bucket}/p", moto_server.options(region="eu-west-1"))
    await provider.open()
    try:
        assert provider.direct_region == "eu-west-1"
    finally:
        await provider.aclose()


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("status", "code"), [(400, "AuthorizationHeaderMalformed"), (301, "PermanentRedirect")]
)
async def test_wrong_region_answer_without_the_header_hands_over_to_botocore(
    s3_faults: FaultServer, tmp_path: Path, status: int, code: str
) -> None:
    src = tmp_path / "f.bin"
    src.write_bytes(b"payload")
    provider = S3Provider.from_uri(
        "s3://bkt/pre",
        {
            "key": "AKIAEXAMPLEKEY",
            "secret": "transport-secret-0123456789",
            "endpoint_url": s3_faults.endpoint_url,
            "region": "us-east-1",
        },
    )
    await provider.open(verify=False)
    try:
        assert provider.direct_region is not None
        s3_faults.script(s3_error(status, code))
        await provider.put("a.bin", FileSlice(src, 0, 7), overwrite=True)
    finally:
        await provider.aclose()
    direct, again = s3_faults.requests()
    assert not sent_by_botocore(direct)
    assert sent_by_botocore(again) and again["path"] == "/bkt/pre/a.bin"


# -- TLS trust -----------------------------------------------------------------------------


def _self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 / localhost (its own CA) and its key, as PEM files."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest_asyncio.fixture
async def tls_moto(moto_server: MotoServer, tmp_path: Path) -> AsyncIterator[tuple[str, Path]]:
    """``(https endpoint, CA bundle)``: a TLS front (on this loop) relaying to moto."""
    cert, key = _self_signed(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    upstream = urlsplit(moto_server.endpoint_url)
    assert upstream.hostname is not None and upstream.port is not None

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while chunk := await reader.read(1 << 16):
                writer.write(chunk)
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    handlers: set[asyncio.Task[Any]] = set()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        try:
            up_r, up_w = await asyncio.open_connection(upstream.hostname, upstream.port)
            await asyncio.gather(pipe(reader, up_w), pipe(up_r, writer))
        finally:
            handlers.discard(task)
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=context)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"https://127.0.0.1:{port}", cert
    finally:
        server.close()
        for task in list(handlers):
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        await server.wait_closed()


@pytest.mark.asyncio
async def test_aws_ca_bundle_is_honoured_on_both_paths(
    tls_moto: tuple[str, Path],
    moto_server: MotoServer,
    moto_s3: Any,
    s3_bucket: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    endpoint, bundle = tls_moto
    src = tmp_path / "f.bin"
    src.write_bytes(b"trusted")
    monkeypatch.setenv("AWS_CA_BUNDLE", str(bundle))
    provider = S3Provider.from_uri(
        f"s3://{s3_bucket}/p", moto_server.options(endpoint_url=endpoint)
    )
    await provider.open()  # HeadBucket: botocore over TLS
    try:
        assert provider.direct_region is not None
        await provider.put("f.bin", FileSlice(src, 0, 7), overwrite=True)  # the direct path
        upload_id = await provider.create_multipart("m.bin", overwrite=True)  # botocore
        await provider.abort_multipart("m.bin", upload_id)
    finally:
        await provider.aclose()
    assert read_s3_object(moto_s3, s3_bucket, "p/f.bin") == b"trusted"


@pytest.mark.asyncio
async def test_untrusted_certificate_is_refused_by_default(
    tls_moto: tuple[str, Path],
    moto_server: MotoServer,
    s3_bucket: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    endpoint, _ = tls_moto
    src = tmp_path / "f.bin"
    src.write_bytes(b"refused")
    monkeypatch.delenv("AWS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    provider = S3Provider.from_uri(
        f"s3://{s3_bucket}/p", moto_server.options(endpoint_url=endpoint)
    )
    with pytest.raises(ProviderError, match=r"(?i)certificate"):
        await provider.open()
    await provider.open(verify=False)  # no HeadBucket; the direct path must refuse as well
    try:
        assert provider.direct_region is not None
        with pytest.raises(ProviderError, match=r"(?i)certificate"):
            await provider.put("f.bin", FileSlice(src, 0, 7), overwrite=True)
    finally:
        await provider.aclose()


# -- payload signing -----------------------------------------------------------------------

CREDS = {"key": "AKIAEXAMPLEKEY", "secret": "transport-secret-0123456789", "region": "us-east-1"}


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("endpoint", "direct"),
    [
        ("http://s3.example.test:9000", False),
        ("https://s3.example.test:9000", True),
        ("http://127.0.0.1:9000", True),
    ],
)
async def test_direct_path_only_over_tls_or_loopback(endpoint: str, direct: bool) -> None:
    provider = S3Provider.from_uri(
        "s3://bkt", {**CREDS, "endpoint_url": endpoint, "allow_http": True}
    )
    await provider.open(verify=False)  # no request is sent
    try:
        assert (provider.direct_region is not None) is direct
    finally:
        await provider.aclose()


@pytest.mark.asyncio
async def test_payload_is_signed_over_plain_http_to_a_remote_host(
    s3_faults: FaultServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The fault server stands in for the remote host as an HTTP proxy, and records headers.
    for name in ("NO_PROXY", "no_proxy", "HTTP_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("http_proxy", s3_faults.endpoint_url)
    src = tmp_path / "f.bin"
    src.write_bytes(b"signed body")
    provider = S3Provider.from_uri(
        "s3://bkt/pre",
        {**CREDS, "endpoint_url": "http://s3.example.test:9000", "allow_http": True},
    )
    await provider.open(verify=False)
    try:
        s3_faults.script()
        await provider.put("a.bin", FileSlice(src, 0, 11), overwrite=True)
    finally:
        await provider.aclose()
    (put,) = s3_faults.requests()
    headers = {k.lower(): v for k, v in put["headers"].items()}
    assert headers["x-amz-content-sha256"] == hashlib.sha256(b"signed body").hexdigest()
    assert "x-amz-content-sha256" in headers["authorization"]
    assert headers["x-amz-checksum-crc32c"]  # our CRC32C still goes along


# -- log scrubbing -------------------------------------------------------------------------

LIVE_SECRET = "refreshable-secret-value-0123456789abcdef"
LIVE_TOKEN = "refreshable-session-token-abcdefghijklmnop"


@pytest.mark.asyncio
async def test_refreshable_chain_credentials_are_scrubbed_from_sdk_logs(
    moto_server: MotoServer,
    moto_s3: Any,
    s3_bucket: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A profile whose credential_process returns expiring (so refreshable) credentials.
    script = tmp_path / "creds.py"
    script.write_text(
        "import json\n"
        "print(json.dumps({'Version': 1, 'AccessKeyId': 'AKIAREFRESHABLE00001', "
        f"'SecretAccessKey': {LIVE_SECRET!r}, 'SessionToken': {LIVE_TOKEN!r}, "
        "'Expiration': '2999-01-01T00:00:00Z'}))\n"
    )
    config = tmp_path / "config"
    config.write_text(f"[profile live]\ncredential_process = {sys.executable} {script}\n")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_PROFILE", "live")
    caplog.set_level(logging.DEBUG)
    src = tmp_path / "f.bin"
    src.write_bytes(b"scrubbed")
    options = {k: v for k, v in moto_server.options().items() if k not in ("key", "secret")}
    provider = S3Provider.from_uri(f"s3://{s3_bucket}/p", options)
    # The default chain finds refreshable credentials here (what the provider must cover).
    found = botocore.session.Session().get_credentials()
    assert isinstance(found, botocore.credentials.RefreshableCredentials)
    await provider.open()
    try:
        await provider.put("f.bin", FileSlice(src, 0, 8), overwrite=True)
        upload_id = await provider.create_multipart("m.bin", overwrite=True)
        await provider.abort_multipart("m.bin", upload_id)
    finally:
        await provider.aclose()
    assert read_s3_object(moto_s3, s3_bucket, "p/f.bin") == b"scrubbed"
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "<redacted>" in text  # botocore logged the token header, scrubbed
    assert LIVE_SECRET not in text and LIVE_TOKEN not in text
