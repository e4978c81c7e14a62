"""Security promises of the S3 provider (issue 11), each against real loopback servers.

Every test here failed on the code before the fix it guards: moto behind the fault proxy
(corrupting, redirecting, echoing, losing answers) or a :class:`Sink` posing as another host.
"""

from __future__ import annotations

import traceback
from pathlib import Path
from typing import Any

import pytest

from artifact_uploader import (
    PermissionDeniedError,
    ProviderError,
)
from artifact_uploader._types import FileSlice
from artifact_uploader.providers._redact import Redactor
from artifact_uploader.providers.s3 import S3Provider
from tests.servers.fault_proxy import Fault, FaultProxy
from tests.servers.moto import MotoServer

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
        fault_proxy.script(Fault("echo"))
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
