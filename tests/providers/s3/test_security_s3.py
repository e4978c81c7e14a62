"""Security promises of the S3 provider (issue 11), each against real loopback servers.

Every test here failed on the code before the fix it guards: moto behind the fault proxy
(corrupting, redirecting, echoing, losing answers) or a :class:`Sink` posing as another host.
"""

from __future__ import annotations

import hashlib
import os
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from artifact_uploader import (
    ConfigError,
    EventKind,
    IntegrityError,
    PermissionDeniedError,
    ProviderError,
    UploadEvent,
    UploadFailedError,
)
from artifact_uploader._types import FileSlice
from artifact_uploader.providers._redact import Redactor
from artifact_uploader.providers.s3 import S3Provider
from tests.conftest import FAST_RETRY, wait_until
from tests.servers.fault_proxy import SMALL_PARTS, Fault, FaultProxy, Sink, proxied_s3_uploader
from tests.servers.moto import MotoServer, list_multipart_uploads, list_s3_keys, read_s3_object
from tests.servers.s3_faults import FaultServer

CREDS_FAULTS = {
    "key": "AKIAEXAMPLEKEY",
    "secret": "faults-secret-0123456789",
    "region": "us-east-1",
}

ENV_TOKEN = "ENVsessiontoken" + "Q" * 60
EXPLICIT_TOKEN = "EXPLICITsessiontoken" + "Z" * 60
EXPLICIT_SECRET = "EXPLICITsecret0123456789abcdefghijklmno"


def render(exc: BaseException) -> str:
    """str, repr and args of every exception in the chain, and the formatted traceback."""
    parts = ["".join(traceback.format_exception(exc))]
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        parts += [str(e), repr(e), repr(e.args), repr(getattr(e, "response", None))]
        stack += [e.__cause__, e.__context__]
    return "\n".join(parts)


# -- the redactor (one path for every provider and the CLI) --------------------------------


def test_redactor_scrubs_known_values_shapes_and_the_whole_chain(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_SESSION_TOKEN", ENV_TOKEN)
    live = {"token": "first-refreshed-token-value"}
    redactor = Redactor(["explicit-secret-value", None, "short"])
    redactor.add_source(lambda: [live["token"]])
    live["token"] = "second-refreshed-token-value"  # refreshed after the source was added
    text = (
        f"explicit-secret-value {ENV_TOKEN} second-refreshed-token-value short "
        "Authorization: Bearer ya29.abc-DEF_123 "
        "https://a.blob.core.windows.net/c/b?sv=2021&sig=abc%2Fdef%3D&se=x "
        "x-amz-security-token: FQoGZXIvYXdzEJr "
        "DefaultEndpointsProtocol=https;AccountName=a;AccountKey=c2VjcmV0a2V5==;"
    )
    clean = redactor.scrub(text)
    for secret in (
        "explicit-secret-value",
        ENV_TOKEN,
        "second-refreshed-token-value",
        "ya29.abc-DEF_123",
        "abc%2Fdef%3D",
        "FQoGZXIvYXdzEJr",
        "c2VjcmV0a2V5==",
    ):
        assert secret not in clean, secret
    assert " short " in clean  # a short dummy value is not treated as a secret

    explicit = "explicit-secret-value"
    try:
        try:
            raise KeyError({"headers": {"x-amz-security-token": ENV_TOKEN}})
        except KeyError as inner:
            raise RuntimeError(f"failed with {explicit}: {inner}") from inner
    except RuntimeError as exc:
        outer = ProviderError("wrapped")
        outer.__cause__ = exc
        assert redactor.scrub_exception(outer) is outer
    text = render(outer)
    assert ENV_TOKEN not in text and "explicit-secret-value" not in text
    assert "<redacted>" in text


def test_redactor_keeps_the_types_of_what_it_scrubs() -> None:
    import collections

    import aiohttp
    import multidict
    import yarl

    token = "ya29.secret-bearer-token-value"
    sas_url = yarl.URL("https://a.blob.core.windows.net/c/b?sv=2021&sig=abc%2Fdef%3D&se=x")
    headers = multidict.CIMultiDictProxy(
        multidict.CIMultiDict({"Authorization": f"Bearer {token}", "Range": "bytes=0-9"})
    )
    info = aiohttp.RequestInfo(sas_url, "GET", headers, sas_url)
    error = aiohttp.ClientResponseError(info, (), status=403, message=f"denied {token}")
    Pair = collections.namedtuple("Pair", "label value")
    opaque = object()
    other = RuntimeError(Pair("key", f"Bearer {token}"), opaque, 7)
    other.__cause__ = error

    assert Redactor([token]).scrub_exception(other) is other
    text = render(other)
    assert token not in text and "abc%2Fdef%3D" not in text
    # Named tuples stay named tuples; URLs stay URLs; headers stay header mappings.
    assert isinstance(error.request_info, aiohttp.RequestInfo)
    assert isinstance(error.request_info.real_url, yarl.URL)
    assert error.request_info.real_url.host == "a.blob.core.windows.net"
    assert error.request_info.real_url.query["sv"] == "2021"
    assert isinstance(error.request_info.headers, multidict.CIMultiDictProxy)
    assert error.request_info.headers["Range"] == "bytes=0-9"
    assert token not in error.request_info.headers["Authorization"]
    assert error.status == 403 and token not in error.message
    pair, kept, number = other.args
    assert type(pair) is Pair and pair.label == "key" and token not in pair.value
    # Objects it does not know are left as they are (same object), as is what holds no secret.
    assert kept is opaque and number == 7
    clean = yarl.URL("https://example.com/x?a=1")
    assert Redactor().scrub_value(clean) is clean
    assert Redactor().scrub_value(Pair("a", "b")) == Pair("a", "b")


# -- finding 6: secrets in errors when a server echoes request headers --------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("where", ["environment", "explicit"])
async def test_s3_session_token_never_in_errors_when_the_server_echoes_headers(
    where: str,
    moto_server: MotoServer,
    s3_bucket: str,
    fault_proxy: FaultProxy,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    options: dict[str, Any] = moto_server.options(endpoint_url=fault_proxy.endpoint_url)
    if where == "environment":
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", str(options.pop("key")))
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", str(options.pop("secret")))
        monkeypatch.setenv("AWS_SESSION_TOKEN", ENV_TOKEN)
        token = ENV_TOKEN
    else:
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
            monkeypatch.delenv(name, raising=False)
        options.update(secret=EXPLICIT_SECRET, token=EXPLICIT_TOKEN)
        token = EXPLICIT_TOKEN
    src = tmp_path / "f.bin"
    src.write_bytes(b"x" * 100)
    provider = S3Provider.from_uri(f"s3://{s3_bucket}/echo", options)
    await provider.open(verify=False)
    try:
        failures: list[BaseException] = []
        fault_proxy.script(Fault("echo"))
        with pytest.raises(PermissionDeniedError) as put_info:
            await provider.put("f.bin", FileSlice(src, 0, 100), overwrite=True)
        failures.append(put_info.value)
        fault_proxy.script(Fault("echo"), method="POST")
        with pytest.raises(PermissionDeniedError) as create_info:
            await provider.create_multipart("m.bin", overwrite=True)
        failures.append(create_info.value)
    finally:
        await provider.aclose()
    assert fault_proxy.counts["echo"] == 2
    for exc in failures:
        text = render(exc)
        # The server did quote the header: the message shows where the value was removed.
        assert "x-amz-security-token" in text.lower()
        assert token not in text
        assert EXPLICIT_SECRET not in text


def _file(tmp_path: Path, data: bytes, name: str = "f.bin") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


# -- finding 3: no redirect is followed, on either request path ---------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("status", [301, 302, 307, 308])
@pytest.mark.parametrize("path", ["fast", "botocore"])
async def test_s3_redirect_is_a_permanent_error_and_nothing_reaches_the_other_host(
    status: int,
    path: str,
    moto_server: MotoServer,
    s3_bucket: str,
    fault_proxy: FaultProxy,
    sink: Sink,
    tmp_path: Path,
) -> None:
    # checksum=None keeps PutObject on botocore's path; the default goes the direct way.
    options = moto_server.options(
        endpoint_url=fault_proxy.endpoint_url,
        token=EXPLICIT_TOKEN,
        checksum="crc32c" if path == "fast" else None,
    )
    provider = S3Provider.from_uri(f"s3://{s3_bucket}/redir", options)
    await provider.open(verify=False)
    try:
        assert (provider.direct_region is not None) is (path == "fast")
        data = b"secret body " * 100
        # Every request under the prefix is redirected (botocore's region check may resend).
        fault_proxy.script(
            *[Fault("redirect", status=status, location=sink.url)] * 20, match="/redir/"
        )
        with pytest.raises(ProviderError) as put_info:
            await provider.put("r.bin", FileSlice.whole(_file(tmp_path, data)), overwrite=True)
        with pytest.raises(ProviderError) as create_info:
            await provider.create_multipart("m.bin", overwrite=True)
        with pytest.raises(ProviderError) as get_info:
            await provider.get_range("r.bin", 0, 10)
    finally:
        await provider.aclose()
    for info in (put_info, create_info, get_info):
        assert not info.value.transient
        assert f"HTTP {status}" in str(info.value) and sink.url in str(info.value)
        assert "redirect" in str(info.value).lower()
    assert sink.received == []  # not one request, so no body and no token, went there
    assert fault_proxy.counts["redirect"] >= 3


# -- finding 4: payload signing follows the endpoint however it was configured -------------


@pytest.mark.asyncio
@pytest.mark.parametrize("how", ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "config file"])
async def test_s3_payload_signed_over_plain_http_to_a_remote_endpoint_from_env_or_config(
    how: str,
    s3_faults: FaultServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    remote = "http://s3.example.test:9000"
    for name in ("NO_PROXY", "no_proxy", "HTTP_PROXY", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    if how == "config file":
        config = tmp_path / "config"
        config.write_text(f"[default]\nendpoint_url = {remote}\n")
        monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
        monkeypatch.delenv("AWS_PROFILE", raising=False)
    else:
        monkeypatch.setenv(how, remote)
    # The fault server stands in for the remote host, as the HTTP proxy to it, and records.
    monkeypatch.setenv("http_proxy", s3_faults.endpoint_url)
    creds = {
        "key": "AKIAEXAMPLEKEY",
        "secret": "transport-secret-0123456789",
        "region": "us-east-1",
    }
    # Without allow_http the remote plain-HTTP endpoint is refused at open (finding 8).
    refused = S3Provider.from_uri("s3://bkt/pre", creds)
    with pytest.raises(ConfigError, match="allow_http"):
        await refused.open(verify=False)
    provider = S3Provider.from_uri("s3://bkt/pre", {**creds, "allow_http": True})
    await provider.open(verify=False)
    data = b"signed body"
    try:
        assert provider.direct_region is None
        s3_faults.script()
        await provider.put("a.bin", FileSlice.whole(_file(tmp_path, data)), overwrite=True)
    finally:
        await provider.aclose()
    (put,) = s3_faults.requests()
    headers = {k.lower(): v for k, v in put["headers"].items()}
    assert put["path"].startswith("http://s3.example.test:9000/bkt/pre/a.bin")
    assert headers["x-amz-content-sha256"] == hashlib.sha256(data).hexdigest()


# -- finding 8: plain HTTP to a non-loopback host needs allow_http -------------------------


@pytest.mark.parametrize(
    ("options", "refused"),
    [
        ({"endpoint_url": "http://minio.internal:9000"}, True),
        ({"host": "minio.internal", "port": 9000, "secure": False}, True),
        ({"secure": False}, True),
        ({"endpoint_url": "http://minio.internal:9000", "allow_http": True}, False),
        ({"endpoint_url": "https://minio.internal:9000"}, False),
        ({"endpoint_url": "http://127.0.0.1:9000"}, False),
        ({"endpoint_url": "http://[::1]:9000"}, False),
        ({"endpoint_url": "http://localhost:9000"}, False),
    ],
)
def test_s3_plain_http_to_a_remote_host_needs_allow_http(
    options: dict[str, object], refused: bool
) -> None:
    if refused:
        with pytest.raises(ConfigError, match="allow_http=True"):
            S3Provider.from_uri("s3://bkt", options)
    else:
        assert S3Provider.from_uri("s3://bkt", options).bucket == "bkt"


# -- finding 5: integrity is checked on the answer -----------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("checksum", ["crc32c", None])
async def test_s3_body_corrupted_in_transit_is_caught_retried_then_fails(
    checksum: str | None,
    moto_server: MotoServer,
    moto_s3: Any,
    s3_bucket: str,
    fault_proxy: FaultProxy,
    tmp_path: Path,
) -> None:
    data = os.urandom(300 * 1024)
    src = _file(tmp_path, data, "c.bin")
    events: list[UploadEvent] = []
    up = proxied_s3_uploader(
        moto_server, fault_proxy, s3_bucket, FAST_RETRY, events, {"checksum": checksum}
    )
    with pytest.raises(UploadFailedError):  # the close reports the failed upload again
        async with up:
            # One damaged send, then a clean one: the retry stores the right bytes.
            fault_proxy.script(Fault("corrupt-request"), match="c.bin", method="PUT")
            result = await (await up.submit(src, "c.bin", overwrite=False))
            assert read_s3_object(moto_s3, s3_bucket, "run/c.bin") == data
            assert result.etag == hashlib.md5(data).hexdigest()
            assert any(e.kind is EventKind.RETRY for e in events)
            # Every send damaged: IntegrityError, and no damaged object left behind.
            fault_proxy.script(
                *[Fault("corrupt-request")] * FAST_RETRY.attempts, match="d.bin", method="PUT"
            )
            with pytest.raises(IntegrityError):
                await (await up.submit(src, "d.bin", overwrite=True))
    assert fault_proxy.counts["corrupt-request"] == 1 + FAST_RETRY.attempts
    assert list_s3_keys(moto_s3, s3_bucket, "run/d.bin") == []


@pytest.mark.asyncio
async def test_s3_part_corrupted_in_transit_is_retried(
    moto_server: MotoServer,
    moto_s3: Any,
    s3_bucket: str,
    fault_proxy: FaultProxy,
    tmp_path: Path,
) -> None:
    data = os.urandom(5 * 1024 * 1024 + 4096)
    src = _file(tmp_path, data, "p.bin")
    events: list[UploadEvent] = []
    # Parts are hashed only when asked for (check_etag=True): see the option's docstring.
    async with proxied_s3_uploader(
        moto_server,
        fault_proxy,
        s3_bucket,
        FAST_RETRY,
        events,
        {"check_etag": True},
        parts=SMALL_PARTS,
    ) as up:
        fault_proxy.script(Fault("corrupt-request"), match="partNumber=2", method="PUT")
        result = await (await up.submit(src, "p.bin"))
    assert fault_proxy.counts["corrupt-request"] == 1
    assert read_s3_object(moto_s3, s3_bucket, "run/p.bin") == data
    assert result.etag is not None and result.etag.endswith("-2")
    assert result.checksum_algorithm == "crc32c"  # composite, confirmed by the store


@pytest.mark.asyncio
async def test_s3_result_claims_no_checksum_the_store_did_not_confirm(
    s3_faults: FaultServer, tmp_path: Path
) -> None:
    provider = S3Provider.from_uri(
        "s3://bkt/pre", {**CREDS_FAULTS, "endpoint_url": s3_faults.endpoint_url}
    )
    await provider.open(verify=False)
    try:
        s3_faults.script()  # 200 with the MD5 ETag, no x-amz-checksum-crc32c echoed
        result = await provider.put(
            "a.bin", FileSlice.whole(_file(tmp_path, b"abc")), overwrite=True
        )
    finally:
        await provider.aclose()
    assert result.etag == hashlib.md5(b"abc").hexdigest()
    assert result.checksum_algorithm is None and result.checksum is None


# -- finding 9: an upload orphaned by a lost Create answer is aborted ----------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("list_fails", [False, True], ids=["listed", "list-retried"])
async def test_s3_upload_orphaned_by_a_lost_create_answer_is_aborted(
    list_fails: bool,
    moto_server: MotoServer,
    moto_s3: Any,
    s3_bucket: str,
    fault_proxy: FaultProxy,
    tmp_path: Path,
) -> None:
    # Another upload of the same key, started earlier by someone else, is left alone.
    theirs = moto_s3.create_multipart_upload(Bucket=s3_bucket, Key="run/o.bin")["UploadId"]
    data = os.urandom(5 * 1024 * 1024 + 100)
    src = _file(tmp_path, data, "o.bin")
    events: list[UploadEvent] = []
    async with proxied_s3_uploader(
        moto_server, fault_proxy, s3_bucket, FAST_RETRY, events, parts=SMALL_PARTS
    ) as up:
        fault_proxy.script(Fault("lost"), match="o.bin?uploads", method="POST")
        if list_fails:
            # The look for orphans fails once: retried as a request of its own (never as the
            # Create's, which would orphan one more upload with each retry).
            fault_proxy.script(Fault("503"), match="?uploads&prefix", method="GET")
        # Uploads are told apart by when the store started them: the other one must be clearly
        # older than the margin (polled on the server's answers, with a deadline).
        wait_until(lambda: _age(moto_s3, s3_bucket, theirs) > 2.5, timeout=30, what="age")
        await (await up.submit(src, "o.bin"))
    assert fault_proxy.counts["lost"] == 1
    assert fault_proxy.counts["503"] == (1 if list_fails else 0)
    # Two Creates (the lost one and its retry) however the look fared: a failed look is not
    # retried as a Create.
    creates = [s for s in fault_proxy.seen("o.bin?uploads") if s.method == "POST"]
    assert len(creates) == 2, creates
    assert len([e for e in events if e.kind is EventKind.RETRY]) == (2 if list_fails else 1)
    assert read_s3_object(moto_s3, s3_bucket, "run/o.bin") == data
    left = [u["UploadId"] for u in list_multipart_uploads(moto_s3, s3_bucket)]
    assert left == [theirs]  # the orphan is gone, the other writer's upload is not
    moto_s3.abort_multipart_upload(Bucket=s3_bucket, Key="run/o.bin", UploadId=theirs)


def _age(client: Any, bucket: str, upload_id: str) -> float:
    """Seconds since the server started ``upload_id`` (the test server shares our clock)."""
    listed = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    (upload,) = [u for u in listed if u["UploadId"] == upload_id]
    return (datetime.now(UTC) - upload["Initiated"]).total_seconds()


# -- issue 14: a refused credential says so ------------------------------------------------


@pytest.mark.asyncio
async def test_s3_wrong_credentials_say_the_credentials_were_refused(
    moto_server: MotoServer,
    s3_bucket: str,
    moto_iam_credentials: dict[str, str],
    tmp_path: Path,
) -> None:
    cases = {
        "InvalidAccessKeyId": moto_server.options(key="AKIANOSUCHKEY0000000", secret="x" * 40),
        "SignatureDoesNotMatch": moto_server.options(
            key=moto_iam_credentials["key"], secret="y" * 40
        ),
    }
    for code, options in cases.items():
        provider = S3Provider.from_uri(f"s3://{s3_bucket}/cred", options)
        # HeadBucket's 403 has no body (no error code) but must still name the credentials.
        with pytest.raises(PermissionDeniedError) as at_open:
            await provider.open()
        assert "credentials were refused" in str(at_open.value)
        await provider.open(verify=False)
        try:
            src = FileSlice.whole(_file(tmp_path, b"abc"))
            with pytest.raises(PermissionDeniedError) as at_put:
                await provider.put("a.bin", src, overwrite=True)
        finally:
            await provider.aclose()
        text = str(at_put.value)
        assert code in text and "the credentials were refused" in text
        assert "AWS_ACCESS_KEY_ID" in text and "expired" in text  # what to check
