"""S3's error table: botocore's own ClientError answers (as botocore parses them) through
``_s3_errors.map_error``, row by row. The same mapping meets real answers from moto and the
scripted fault server in test_provider_s3.py and test_security_s3.py; these pin the rows those
servers do not send (408, a bare 404 on a bucket-level call, a 301 without a Location...).
"""

from __future__ import annotations

from typing import Any

import botocore.exceptions
import pytest

from artifact_uploader._errors import (
    IntegrityError,
    ObjectExistsError,
    ObjectNotFoundError,
    PermissionDeniedError,
    ProviderError,
    StoreNotFoundError,
)
from artifact_uploader.providers._redact import Redactor
from artifact_uploader.providers._s3_errors import map_error

SECRET = "s3-error-table-secret-0123456789"


def answer(status: int, code: str, message: str = "", **headers: str) -> Exception:
    response: Any = {
        "Error": {"Code": code, "Message": message},
        "ResponseMetadata": {"HTTPStatusCode": status, "HTTPHeaders": headers},
    }
    return botocore.exceptions.ClientError(response, "PutObject")


def mapped(exc: BaseException, *, name: str | None = "a.bin", **flags: bool) -> ProviderError:
    uri = "s3://bkt/pre/a.bin" if name is not None else "s3://bkt"
    return map_error(
        exc, "PutObject", bucket="bkt", name=name, uri=uri, redactor=Redactor((SECRET,)), **flags
    )


@pytest.mark.parametrize(
    ("status", "code", "flags", "kind", "transient"),
    [
        (412, "PreconditionFailed", {"conditional": True}, ObjectExistsError, False),
        # Without If-None-Match a 412 is no conflict, and nothing a retry would change.
        (412, "PreconditionFailed", {}, ProviderError, False),
        (403, "SignatureDoesNotMatch", {}, PermissionDeniedError, False),
        (403, "SomethingNew", {}, PermissionDeniedError, False),
        (404, "NoSuchBucket", {}, StoreNotFoundError, False),
        (404, "NoSuchKey", {"missing": True}, ObjectNotFoundError, False),
        # A 404 on a write is not "no such object": the write cannot create it either.
        (404, "NoSuchKey", {}, ProviderError, False),
        (400, "BadDigest", {}, IntegrityError, True),
        (503, "SlowDown", {}, ProviderError, True),
        (500, "Unknown", {}, ProviderError, True),
        (429, "Unknown", {}, ProviderError, True),
        # Not a status S3 throttles with: as before, permanent unless its code says otherwise.
        (408, "Unknown", {}, ProviderError, False),
        (400, "RequestTimeout", {}, ProviderError, True),
        (400, "InvalidArgument", {}, ProviderError, False),
    ],
)
def test_table_rows(
    status: int, code: str, flags: dict[str, bool], kind: type[ProviderError], transient: bool
) -> None:
    error = mapped(answer(status, code), **flags)
    assert type(error) is kind
    assert error.transient is transient
    assert error.status == status and error.uri == "s3://bkt/pre/a.bin"


def test_bucket_level_404_is_a_missing_bucket() -> None:
    error = mapped(answer(404, "404"), name=None)
    assert type(error) is StoreNotFoundError and "bkt" in str(error)


def test_throttling_carries_retry_after() -> None:
    error = mapped(answer(503, "SlowDown", **{"Retry-After": "7"}))
    assert error.transient and error.retry_after == 7.0


def test_redirect_with_a_location_is_refused_and_named() -> None:
    error = mapped(answer(307, "TemporaryRedirect", location="https://elsewhere.example/x"))
    assert type(error) is ProviderError and not error.transient
    assert "never followed" in str(error) and "elsewhere.example" in str(error)


def test_wrong_region_names_the_region() -> None:
    error = mapped(answer(301, "PermanentRedirect", **{"x-amz-bucket-region": "eu-west-1"}))
    assert not error.transient and "eu-west-1" in str(error)


def test_secrets_in_the_answer_are_scrubbed() -> None:
    exc = answer(403, "AccessDenied", f"denied for {SECRET}")
    error = mapped(exc)
    assert SECRET not in str(error) and SECRET not in str(exc)


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (botocore.exceptions.EndpointConnectionError(endpoint_url="http://127.0.0.1:1"), True),
        (ConnectionResetError("reset"), True),
        (OSError("staged file gone"), False),
        (RuntimeError("unexpected"), False),
    ],
)
def test_transport_failures(exc: BaseException, transient: bool) -> None:
    error = mapped(exc)
    assert type(error) is ProviderError and error.transient is transient
