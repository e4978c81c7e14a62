"""Secrets never leak, staged files are private, TLS verification stays on.

Every credential a store accepts is given a recognisable value containing ``SECRET``, and each
upload is made to fail against the real local servers (moto with authentication on,
fake-gcs-server with no such bucket and a token endpoint that refuses, Azurite with a wrong key
or signature) so that the error paths run. Then everything a user or a log collector could see
is searched for ``SECRET``:

- ``repr()`` and ``str()`` of the provider, :class:`Uploader`, :class:`AsyncUploader` and
  :class:`ObjectStoreLogger`;
- every log record emitted at DEBUG level (the library's and the SDKs' own), with tracebacks;
- every exception raised, rendered with its whole ``__cause__`` / ``__context__`` chain, and
  the failures an :class:`UploadFailedError` carries, and the errors in progress events;
- the benchmark's output (``benchmarks/bench_s3.py``): a measured cell run with secret
  credentials, a failing cell, and the table / Markdown / JSON it writes.

Provider-specific secret tests live next to each provider (``tests/providers/*/``); this
file is the cross-cutting sweep. Staged files being 0600 in a 0700 folder is
``engine/test_journal.py::test_staged_files_are_private`` (persistent folder); here it is checked
for the temporary folder too.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
import sys
import traceback
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from artifact_uploader import (
    AsyncUploader,
    ConfigError,
    LogLevel,
    MemoryProvider,
    ObjectStoreLogger,
    RetryPolicy,
    Uploader,
    UploadEvent,
)
from artifact_uploader._registry import make_provider
from tests.conftest import resumed
from tests.servers.azurite import AzuriteServer
from tests.servers.fake_gcs import FakeGCSServer
from tests.servers.moto import MotoServer

MARK = "SECRET"
# One retry, without waiting: the retry path runs (and logs) but the test stays fast.
RETRY = RetryPolicy(attempts=2, base_delay=0.0, max_delay=0.0)
KEY_ID = "AKIASECRETkeyid0123XYZ"
SK = "SECRETabc123XYZsecretkey0123456789abcdef"
TOKEN = "SECRETtoken123XYZ" + "x" * 40
GCS_TOKEN = "ya29.SECRETgcstoken123XYZ"
AZURE_KEY = "SECRETazurekey123XYZ" + "A" * 24 + "=="  # valid base64, as Azure keys are
SAS = "sv=2021-08-06&ss=b&srt=sco&sp=rwdlac&se=2030-01-01T00:00:00Z&sig=SECRETsig123XYZ%3D"


def render(exc: BaseException) -> str:
    """Everything an exception shows: str, repr, the chain, and any failures it carries."""
    parts = ["".join(traceback.format_exception(exc))]
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        parts += [str(e), repr(e), repr(getattr(e, "args", ()))]
        stack += [e.__cause__, e.__context__]
        for failure in getattr(e, "failures", []):
            parts.append(failure.describe())
            stack.append(failure.cause)
        if isinstance(e, BaseExceptionGroup):
            stack += list(e.exceptions)
    return "\n".join(parts)


class Sweep:
    """Collects every text that must not contain a secret."""

    def __init__(self, caplog: pytest.LogCaptureFixture) -> None:
        self.caplog = caplog
        self.texts: dict[str, str] = {}
        self.events: list[UploadEvent] = []

    def add(self, label: str, text: str) -> None:
        self.texts[f"{label}#{len(self.texts)}"] = text

    def objects(self, *objs: object) -> None:
        for obj in objs:
            self.add(f"repr {type(obj).__name__}", repr(obj))
            self.add(f"str {type(obj).__name__}", str(obj))

    def raises(self, label: str, call: Callable[[], object]) -> BaseException:
        try:
            call()
        except Exception as exc:
            self.add(label, render(exc))
            return exc
        raise AssertionError(f"{label}: expected the call to fail")

    def on_event(self, event: UploadEvent) -> None:
        self.events.append(event)

    def check(self, *, min_records: int = 1) -> None:
        for event in self.events:
            self.add("event", repr(event) + (render(event.error) if event.error else ""))
        records = self.caplog.records
        assert len(records) >= min_records, "DEBUG logging was not captured"
        formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
        for record in records:
            self.add(f"log {record.name}", formatter.format(record))
        leaks = {label: text for label, text in self.texts.items() if MARK in text}
        assert not leaks, "secret leaked in: " + "; ".join(
            f"{label}: ...{text[max(0, text.index(MARK) - 200) : text.index(MARK) + 60]}..."
            for label, text in leaks.items()
        )


@pytest.fixture
def sweep(caplog: pytest.LogCaptureFixture) -> Iterator[Sweep]:
    caplog.set_level(logging.DEBUG)
    yield Sweep(caplog)


def _src(tmp_path: Path) -> Path:
    path = tmp_path / "weights.pt"
    path.write_bytes(os.urandom(2000))
    return path


def _try_upload(sweep: Sweep, store: str, options: dict[str, Any], src: Path, label: str) -> None:
    """Open with verify (fails at open), then without (fails at the upload), sweeping both."""
    sweep.raises(f"{label} open", lambda: Uploader(store, provider_kwargs=options, retry=RETRY))
    up = Uploader(
        store, provider_kwargs=options, verify=False, on_event=sweep.on_event, retry=RETRY
    )
    sweep.objects(up, up.provider, up._intake)
    up.submit(src, "ckpt/weights.pt")
    sweep.raises(f"{label} flush", up.flush)
    up.submit(src, "ckpt/again.pt")
    sweep.raises(f"{label} close", up.close)
    sweep.objects(up, up.provider)


# -- S3 against moto with authentication on --------------------------------------------------


def test_s3_secrets_never_leak(
    sweep: Sweep,
    moto_server: MotoServer,
    s3_bucket: str,
    moto_iam_credentials: dict[str, str],
    tmp_path: Path,
) -> None:
    src = _src(tmp_path)
    store = f"s3://{s3_bucket}/run"
    # Unknown key with a session token: 403 InvalidAccessKeyId.
    _try_upload(
        sweep,
        store,
        moto_server.options(key=KEY_ID, secret=SK, token=TOKEN),
        src,
        "unknown key",
    )
    # A real key id with the wrong secret: 403 SignatureDoesNotMatch, whose body quotes what was
    # signed. The key id here is moto's, so only the secret and token are marked.
    # (moto checks a session token before the signature, so none is sent here.)
    wrong = moto_server.options(key=moto_iam_credentials["key"], secret=SK)
    _try_upload(sweep, store, wrong, src, "wrong secret")
    # The seed's spelling of the same options, through the logger.
    seed = {
        "key": KEY_ID,
        "secret": SK,
        "host": "127.0.0.1",
        "port": int(moto_server.endpoint_url.rsplit(":", 1)[1]),
        "secure": False,
        "region": "us-east-1",
    }
    sweep.raises("logger open", lambda: ObjectStoreLogger("s3", s3_bucket, provider_kwargs=seed))
    logger = ObjectStoreLogger("s3", s3_bucket, provider_kwargs=seed, verify=False)
    sweep.objects(logger, logger.uploader)
    logger.file_artifact(LogLevel.EPOCH, "w.pt", src)
    sweep.raises("logger flush", logger.flush)
    logger.close()
    # Configuration errors that involve the credentials.
    for bad in (
        {"key": KEY_ID},
        {"secret": SK},
        {"token": TOKEN},
        {"key": KEY_ID, "secret": SK, "token": TOKEN, "bogus": 1},
        {"key": KEY_ID, "secret": SK, "verify": False, "endpoint_url": "https://s3.x"},
    ):
        sweep.raises("config", lambda bad=bad: make_provider(store, bad))
    sweep.raises("uri creds", lambda: make_provider(f"s3://{KEY_ID}:{SK}@{s3_bucket}"))
    assert any("SignatureDoesNotMatch" in t for t in sweep.texts.values())
    sweep.check()


def test_s3_credentials_from_the_environment_never_leak(
    sweep: Sweep,
    moto_server: MotoServer,
    s3_bucket: str,
    moto_iam_credentials: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # No explicit credentials: botocore's default chain finds these in the environment.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SK)
    monkeypatch.setenv("AWS_SESSION_TOKEN", TOKEN)
    options = {k: v for k, v in moto_server.options().items() if k not in ("key", "secret")}
    _try_upload(sweep, f"s3://{s3_bucket}/env", options, _src(tmp_path), "environment")
    sweep.check()


async def test_async_uploader_repr_and_errors(
    sweep: Sweep, moto_server: MotoServer, s3_bucket: str, moto_iam_credentials: dict[str, str]
) -> None:
    options = moto_server.options(key=KEY_ID, secret=SK, token=TOKEN)
    up = AsyncUploader(f"s3://{s3_bucket}/a", provider_kwargs=options)
    sweep.objects(up, up.provider)
    try:
        await up.open()
    except Exception as exc:
        sweep.add("async open", render(exc))
    else:
        raise AssertionError("open with unknown credentials succeeded")
    sweep.objects(up)
    sweep.check()


test_async_uploader_repr_and_errors = pytest.mark.asyncio(test_async_uploader_repr_and_errors)


# -- GCS against fake-gcs-server ---------------------------------------------------------------


def test_gcs_secrets_never_leak(
    sweep: Sweep,
    fake_gcs_server: FakeGCSServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    refused_port: int,
) -> None:
    # gcloud-aio-auth retries a failed token request 5 times with random exponential waits
    # (about 7 s on average); the same requests without the waits keep the test fast.
    import tenacity
    from gcloud.aio.auth.token import BaseToken

    monkeypatch.setattr(BaseToken.acquire_access_token.retry, "wait", tenacity.wait_none())
    src = _src(tmp_path)
    missing = f"gs://missing-{uuid.uuid4().hex[:10]}/run"
    _try_upload(sweep, missing, fake_gcs_server.options(token=GCS_TOKEN), src, "token")
    # A service-account file whose token endpoint refuses: its private key, key id and e-mail
    # must never be quoted.
    dead = f"http://127.0.0.1:{refused_port}/token"
    key_file = tmp_path / "sa.json"
    key_file.write_text(
        json.dumps(
            {
                "type": "service_account",
                "project_id": "p",
                "private_key_id": "SECRETkeyid123XYZ",
                "private_key": "-----BEGIN PRIVATE KEY-----\nSECRETpem123XYZ\n-----END-----",
                "client_email": "SECRETsa123XYZ@p.iam.gserviceaccount.com",
                "client_id": "1",
                "token_uri": dead,
            }
        )
    )
    key_file.chmod(0o600)
    _try_upload(
        sweep, missing, fake_gcs_server.options(service_file=str(key_file)), src, "service file"
    )
    sweep.check()


# -- Azure against Azurite ------------------------------------------------------------------------


def test_azure_secrets_never_leak(
    sweep: Sweep, azurite_server: AzuriteServer, tmp_path: Path
) -> None:
    src = _src(tmp_path)
    account = azurite_server.account_name
    url = azurite_server.account_url
    container = f"c{uuid.uuid4().hex[:12]}"
    store = f"az://{container}/run"
    _try_upload(
        sweep,
        store,
        {"account_url": url, "account_name": account, "account_key": AZURE_KEY},
        src,
        "key",
    )
    conn = (
        f"DefaultEndpointsProtocol=http;AccountName={account};AccountKey={AZURE_KEY};"
        f"BlobEndpoint={url};"
    )
    _try_upload(sweep, store, {"connection_string": conn}, src, "connection string")
    _try_upload(sweep, store, {"account_url": url, "sas_token": SAS}, src, "sas")
    sweep.check()


# -- the benchmark's output --------------------------------------------------------------------


def _run_cell(spec: dict[str, Any]) -> tuple[int, str]:
    """One benchmark cell the way bench_s3.py runs it: ``benchmarks/_cells.py < spec.json``."""
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        [sys.executable, str(root / "benchmarks" / "_cells.py")],
        input=json.dumps(spec),
        capture_output=True,
        text=True,
        cwd=root,
        timeout=120,
        check=False,
    )
    return proc.returncode, proc.stdout + proc.stderr


def test_benchmark_output_has_no_secrets(
    sweep: Sweep,
    moto_server: MotoServer,
    s3_bucket: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The benchmark's measured cells, run with secret credentials (moto without
    authentication accepts any) and secrets in the environment they inherit, print none of
    them: neither their result line nor, when a cell fails, the error output the benchmark
    quotes. (The full ``--quick`` run takes about a minute: too slow for the suite.)"""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SK)
    monkeypatch.setenv("AWS_SESSION_TOKEN", TOKEN)
    data = tmp_path / "data"
    data.mkdir()
    for i in range(3):
        (data / f"f{i}.bin").write_bytes(os.urandom(4096))
    options = moto_server.options(key=KEY_ID, secret=SK)
    for tool in ("ours", "boto3"):
        for bucket in (s3_bucket, "no-such-bucket-here"):
            spec = {
                "label": f"{tool} small c=2",
                "tool": tool,
                "concurrency": 2,
                "data_dir": str(data),
                "bucket": bucket,
                "prefix": f"{tool}-{uuid.uuid4().hex[:6]}",
                "provider_kwargs": options,
                "interference": False,
                "spin_seconds": 0.01,
                "events": True,
            }
            code, output = _run_cell(spec)
            assert (code == 0) == (bucket == s3_bucket), output[-2000:]
            sweep.add(f"bench {tool} {bucket}", output)
    sweep.check(min_records=0)


# -- files and TLS ----------------------------------------------------------------------------


def test_staged_files_private_in_temporary_folder(tmp_path: Path) -> None:
    src = tmp_path / "s.bin"
    src.write_bytes(b"weights")
    src.chmod(0o644)
    memory = MemoryProvider("m")
    memory.pause()
    with Uploader(memory) as up:
        # resumed(): a failing assertion must not leave close() waiting on the held request.
        with resumed(memory):
            fut = up.submit(src, "s")
            folder = Path(up.staging_folder)
            (staged,) = (folder / "staged").iterdir()
            assert stat.S_IMODE(staged.stat().st_mode) == 0o600
            assert stat.S_IMODE(folder.stat().st_mode) == 0o700
            assert stat.S_IMODE((folder / "staged").stat().st_mode) == 0o700
        fut.result(timeout=10)


def test_journal_is_private(tmp_path: Path) -> None:
    with Uploader(MemoryProvider("m"), staging_dir=tmp_path / "staging") as up:
        up.upload(_src(tmp_path), "x")
        journal = tmp_path / "staging" / "journal.jsonl"
        assert stat.S_IMODE(journal.stat().st_mode) == 0o600
        assert stat.S_IMODE((tmp_path / "staging").stat().st_mode) == 0o700


@pytest.mark.parametrize(
    ("endpoint", "allowed"),
    [
        ("http://127.0.0.1:9000", True),
        ("https://localhost:9000", True),
        ("https://[::1]:9000", True),
        ("https://s3.example.com", False),
        ("https://10.0.0.5:9000", False),
        (None, False),  # AWS itself
    ],
)
def test_s3_tls_verification_off_only_for_loopback(endpoint: str | None, allowed: bool) -> None:
    options: dict[str, object] = {"verify": False}
    if endpoint is not None:
        options["endpoint_url"] = endpoint
    if allowed:
        assert make_provider("s3://bucket", options).verify is False  # type: ignore[attr-defined]
    else:
        with pytest.raises(ConfigError, match="verify=False"):
            make_provider("s3://bucket", options)
    # Left alone, verification is on, with the CA bundle botocore's configuration names
    # (tests/providers/s3/test_s3_transport.py shows an untrusted certificate refused).
    default = {} if endpoint is None else {"endpoint_url": endpoint}
    assert make_provider("s3://bucket", default).verify is None  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("store", "options"),
    [
        ("gs://bucket", {"verify": False}),
        ("gs://bucket", {"ssl": False}),
        ("az://container", {"account_url": "https://a.blob.core.windows.net", "verify": False}),
        (
            "az://container",
            {"account_url": "https://a.blob.core.windows.net", "connection_verify": False},
        ),
    ],
)
def test_gcs_and_azure_have_no_way_to_turn_tls_verification_off(
    store: str, options: dict[str, object]
) -> None:
    # Neither provider takes an option that disables certificate checks: asking is an error.
    with pytest.raises(ConfigError):
        make_provider(store, options)


def test_redactor_blanks_the_authorization_header_aiohttp_keeps() -> None:
    """A ClientResponseError holds the request's headers in request_info (not text): the one
    redaction path replaces the header whole, in the attribute and in args."""
    import aiohttp
    from multidict import CIMultiDict, CIMultiDictProxy
    from yarl import URL

    from artifact_uploader.providers._redact import Redactor

    token = "ya29.opaque-token-value-0123456789"
    info = aiohttp.RequestInfo(
        URL("https://storage.example/o"),
        "GET",
        CIMultiDictProxy(CIMultiDict({"Authorization": f"Bearer {token}", "X-Other": "kept"})),
    )
    cause = aiohttp.ClientResponseError(info, (), status=403, message="Forbidden")
    outer = RuntimeError("wrapped")
    outer.__cause__ = cause
    Redactor().scrub_exception(outer)
    assert cause.request_info.headers["Authorization"] == "<redacted>"
    assert cause.request_info.headers["X-Other"] == "kept"
    printed = "".join(traceback.format_exception(outer)) + repr(cause) + repr(cause.args)
    assert token not in printed


def test_redactor_scrubs_the_response_text_an_error_prints() -> None:
    """azure-core's HttpResponseError prints response.text() each time: the text an error
    server echoed (a SAS signature in a URL) passes through the redactor."""
    from azure.core.exceptions import HttpResponseError

    from artifact_uploader.providers._redact import Redactor

    class Response:
        status_code = 403
        reason = "Forbidden"

        def text(self, encoding: str | None = None) -> str:
            return "<Error>https://acct.blob.example/c/b?sv=2024&sig=SeCrEtSiGnAtUrE%3D</Error>"

    exc = HttpResponseError(message="denied", response=Response())
    Redactor().scrub_exception(exc)
    printed = str(exc) + repr(exc.response) + exc.response.text()
    assert "SeCrEtSiGnAtUrE" not in printed
    assert exc.response.status_code == 403  # everything else is the response's own
