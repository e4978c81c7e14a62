"""The direct path's SigV4 signer (awscrt) against botocore's own S3 signer, on random requests.

For each of 2,500 seeded random requests (keys with any characters, upload ids, header subsets
with awkward values, credentials with and without a session token, regions, hosts and dates),
the headers :class:`S3Signer` produces must equal those botocore's ``S3SigV4Auth`` produces for
the same request with payload signing off, authorization included. moto checks the same
signatures end to end in test_s3_fast_path.py.
"""

from __future__ import annotations

import datetime
import logging
import random
import re
import string
from typing import Any
from urllib.parse import quote

import aiobotocore.session
import botocore.auth
import pytest
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import ReadOnlyCredentials

from artifact_uploader.providers._s3_direct import DirectS3, S3Signer

CASES = 2500
SEED = 20261206
_KEY_CHARS = string.printable + "üé€😀漢字%+=&?#/~ \u00a0"
_REGIONS = ("us-east-1", "eu-west-3", "ap-southeast-2", "us-gov-west-1", "cn-north-1")
# Payload signing off, as the provider's client is configured when the direct path is used.
_UNSIGNED_CONFIG = Config(s3={"payload_signing_enabled": False})


def _text(rnd: random.Random, chars: str, low: int, high: int) -> str:
    return "".join(rnd.choice(chars) for _ in range(rnd.randint(low, high)))


def _case(rnd: random.Random) -> dict[str, Any]:
    host = rnd.choice(
        ["127.0.0.1:9000", "localhost:4566", "bkt.s3.eu-west-3.amazonaws.com", "s3.example.com"]
    )
    prefix = rnd.choice(["", "/bkt", "/bucket-name.with.dots"])
    path = f"{prefix}/{quote(_text(rnd, _KEY_CHARS, 1, 60), safe='/~')}"
    query = ""
    if rnd.random() < 0.5:
        upload_id = _text(rnd, string.ascii_letters + string.digits + "-_.~+/=%", 1, 80)
        query = f"partNumber={rnd.randint(1, 10000)}&uploadId={quote(upload_id, safe='-_.~')}"
    headers = {"host": host}
    if rnd.random() < 0.7:
        headers["x-amz-checksum-crc32c"] = rnd.choice(["yZRlqg==", "AAAAAA==", " a  b ", "x\ty"])
        headers["x-amz-sdk-checksum-algorithm"] = "CRC32C"
    if rnd.random() < 0.5:
        headers["if-none-match"] = "*"
    secret = _text(rnd, string.ascii_letters + string.digits + "+/", 40, 40)
    token = _text(rnd, string.ascii_letters + string.digits + "+/=", 16, 300)
    credentials = ReadOnlyCredentials(
        "AKIA" + _text(rnd, string.ascii_uppercase + string.digits, 16, 16),
        secret,
        token if rnd.random() < 0.5 else None,
    )
    start = datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC)
    when = start + datetime.timedelta(seconds=rnd.randrange(40 * 365 * 86400))
    return {
        "region": rnd.choice(_REGIONS),
        "path": path,
        "query": query,
        "headers": headers,
        "credentials": credentials,
        "when": when,
    }


def _botocore_headers(case: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    # botocore signs "now": make its now the case's instant (naive UTC, as botocore keeps it).
    naive = case["when"].replace(tzinfo=None)
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda *a, **k: naive)
    headers = case["headers"]
    url = f"https://{headers['host']}{case['path']}"
    if case["query"]:
        url += "?" + case["query"]
    request = AWSRequest(method="PUT", url=url, headers=dict(headers), data=b"")
    request.context["client_config"] = _UNSIGNED_CONFIG
    botocore.auth.S3SigV4Auth(case["credentials"], "s3", case["region"]).add_auth(request)
    return _as_sent(request.headers.items())


def _as_sent(headers: Any) -> dict[str, str]:
    # Leading and trailing blanks are not part of an HTTP field value (RFC 9110 5.5): awscrt
    # drops them from the header it stores, botocore keeps them; both sign the trimmed value.
    return {k.lower(): v.strip(" \t") for k, v in headers}


def test_signatures_equal_botocores_on_random_requests(monkeypatch: pytest.MonkeyPatch) -> None:
    rnd = random.Random(SEED)
    signers: dict[str, S3Signer] = {}
    with_token = 0
    for number in range(CASES):
        case = _case(rnd)
        expected = _botocore_headers(case, monkeypatch)
        assert expected["x-amz-date"] == case["when"].strftime("%Y%m%dT%H%M%SZ")
        signer = signers.setdefault(case["region"], S3Signer(case["region"]))
        got = signer.sign(
            "PUT",
            case["path"],
            case["query"],
            case["headers"],
            case["credentials"],
            now=case["when"],
        )
        got = _as_sent(got.items())
        assert got == expected, f"case {number}: {case['path']}?{case['query']}"
        with_token += "x-amz-security-token" in got
    assert expected["x-amz-content-sha256"] == "UNSIGNED-PAYLOAD"
    # Both kinds of credentials were exercised, and the signer followed each change of them.
    assert 0 < with_token < CASES


def test_signer_repr_holds_no_secret() -> None:
    signer = S3Signer("us-east-1")
    creds = ReadOnlyCredentials("AKIAREPRTEST", "repr-secret-value", "repr-token")
    headers = signer.sign("PUT", "/b/k", "", {"host": "h"}, creds)
    assert "repr-secret-value" not in repr(signer)
    assert "repr-secret-value" not in str(headers)
    assert _as_sent(headers.items())["x-amz-security-token"] == "repr-token"


@pytest.mark.asyncio
async def test_a_changed_botocore_keeps_the_direct_path_off_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    options: dict[str, Any] = {
        "verify": None,
        "connect_timeout": 5.0,
        "read_timeout": 5.0,
        "max_pool_connections": 4,
        "user_agent": "test",
    }
    session = aiobotocore.session.AioSession()
    async with session.create_client(
        "s3",
        region_name="eu-west-3",
        aws_access_key_id="AKIACHANGEDTEST",
        aws_secret_access_key="changed-secret-value",
        endpoint_url="http://127.0.0.1:9",
    ) as client:
        direct = await DirectS3.create(client, "bkt", **options)
        assert direct is not None and direct.region == "eu-west-3"
        await direct.aclose()

        class Changed:
            """The client as a botocore without the signer internals would leave it."""

            meta = client.meta

        with caplog.at_level(logging.WARNING, logger="artifact_uploader.providers._s3_direct"):
            assert await DirectS3.create(Changed(), "bkt", **options) is None
    assert re.search(r"direct request path off: botocore \d+\.\d+\.\d+ changed", caplog.text)
    assert "changed-secret-value" not in caplog.text
