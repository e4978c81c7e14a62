"""S3's answers and transport failures, translated into the library's error tree.

One function, :func:`map_error`, turns whatever botocore, aiohttp or the direct request path
raised into a :class:`ProviderError` subclass with ``transient`` set when a new attempt may help.
The exception and its whole chain are scrubbed of secrets first (the caller raises the result
``from`` it).
"""

from __future__ import annotations

from typing import Any, Final

import aiohttp
import botocore.exceptions

from .._errors import (
    IntegrityError,
    ObjectExistsError,
    ObjectNotFoundError,
    PermissionDeniedError,
    ProviderError,
    StoreNotFoundError,
)
from ._kit import classify, note_send, parse_retry_after, rule
from ._redact import Redactor

THROTTLE_CODES: Final = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestThrottledException",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "ProvisionedThroughputExceededException",
        "BandwidthLimitExceeded",
        "RequestTimeout",
        "RequestTimeoutException",
        "ServiceUnavailable",
        "InternalError",
        "PriorRequestNotComplete",
        # A concurrent conditional write on the same key: S3 asks the caller to retry.
        "ConditionalRequestConflict",
        "OperationAborted",
    }
)
DENIED_CODES: Final = frozenset(
    {
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "InvalidToken",
        "ExpiredToken",
        "TokenRefreshRequired",
        "AllAccessDisabled",
        "AccountProblem",
        "InvalidClientTokenId",
        "UnrecognizedClientException",
    }
)
# The store received a body that does not match the checksum we sent: corrupted in transit, so a
# new attempt (which re-reads the staged file) may succeed.
DIGEST_CODES: Final = frozenset({"BadDigest", "InvalidDigest", "XAmzContentSHA256Mismatch"})
# "No such object" as GetObject (NoSuchKey) and HeadObject (a bare 404, no body) answer it.
MISSING_CODES: Final = frozenset({"NoSuchKey", "404", "NotFound", "NoSuchVersion"})

# Connection-level failures that a new attempt may get past.
TRANSIENT_EXCEPTIONS: Final = (
    botocore.exceptions.ReadTimeoutError,
    botocore.exceptions.ConnectTimeoutError,
    botocore.exceptions.EndpointConnectionError,
    botocore.exceptions.ConnectionClosedError,
    botocore.exceptions.HTTPClientError,
    aiohttp.ClientConnectionError,
    aiohttp.ClientPayloadError,
    ConnectionError,
    TimeoutError,
)


# S3's answers, most specific first (see _kit.classify). Flags: "conditional" (If-None-Match:
# *), "redirect" (a 3xx naming a Location), "bucket" (a bucket-level request), "missing" (a 404
# means no such object: reads and deletes).
TABLE: Final = (
    # Never followed: the request, its body and credentials would go to that host.
    rule(ProviderError, "redirect", when={"redirect"}),
    rule(ObjectExistsError, "exists", status=412, when={"conditional"}),
    rule(ObjectExistsError, "exists", code="PreconditionFailed", when={"conditional"}),
    rule(ProviderError, "failed", status=412),
    rule(ProviderError, "failed", code="PreconditionFailed"),
    rule(PermissionDeniedError, "denied", code=DENIED_CODES),
    rule(PermissionDeniedError, "denied", status=403),
    rule(StoreNotFoundError, "no bucket", code="NoSuchBucket"),
    rule(StoreNotFoundError, "no bucket", status=404, when={"bucket"}),
    rule(ObjectNotFoundError, "missing", code=MISSING_CODES, when={"missing"}),
    rule(ObjectNotFoundError, "missing", status=404, when={"missing"}),
    rule(IntegrityError, "digest", code=DIGEST_CODES, transient=True),
    rule(ProviderError, "busy", code=THROTTLE_CODES, transient=True),
    rule(ProviderError, "busy", status=(429, *range(500, 600)), transient=True),
    # KeyTooLongError, InvalidArgument, InvalidRequest, NoSuchUpload, InvalidPart,
    # EntityTooSmall/Large, 301 (wrong region)...: retrying the same request cannot help.
    rule(ProviderError, "failed"),
)


def map_error(
    exc: BaseException,
    op: str,
    *,
    bucket: str,
    name: str | None,
    uri: str,
    redactor: Redactor,
    conditional: bool = False,
    missing: bool = False,
) -> ProviderError:
    """Turn an SDK / transport exception into the library's error tree.

    Args:
        exc: What the request raised; it and its whole ``__cause__`` / ``__context__`` chain
            are scrubbed of secrets in place.
        op: The request, for messages ("PutObject", "UploadPart 3"...).
        bucket: The bucket's name.
        name: The object's name, or None for a bucket-level request.
        uri: The object's URI (the bucket's when ``name`` is None).
        redactor: The provider's secrets.
        conditional: The request carried ``If-None-Match: *`` (a 412 means "exists").
        missing: A 404 means "no such object" (reads, deletes).
    """
    redactor.scrub_exception(exc)
    if isinstance(exc, ProviderError):
        return exc
    where = f"{uri!r}" if name is not None else f"bucket {bucket!r}"
    if isinstance(exc, botocore.exceptions.ClientError):
        return _answer(
            exc, op, where, bucket, name, uri, redactor, conditional=conditional, missing=missing
        )
    kw: dict[str, Any] = {"name": name, "uri": uri}
    text = redactor.scrub(f"S3 {op} of {where} failed: {type(exc).__name__}: {exc}")
    if isinstance(
        exc,
        botocore.exceptions.NoCredentialsError | botocore.exceptions.PartialCredentialsError,
    ):
        return PermissionDeniedError(
            f"S3 {op} of {where}: no usable AWS credentials ({type(exc).__name__}); pass "
            "key/secret or configure the default chain (env, profile, instance role)",
            **kw,
        )
    if isinstance(exc, botocore.exceptions.FlexibleChecksumError):
        # botocore checked a response body against the checksum S3 sent with it: the bytes
        # were damaged on the way, so another attempt may read them whole.
        return IntegrityError(redactor.scrub(f"S3 {op} of {where}: {exc}"), transient=True, **kw)
    # Connection-level failures may pass on a new attempt; anything else (an OSError reading
    # the staged file, a socket error aiohttp did not wrap...) would fail again.
    return ProviderError(text, transient=isinstance(exc, TRANSIENT_EXCEPTIONS), **kw)


def _answer(
    exc: botocore.exceptions.ClientError,
    op: str,
    where: str,
    bucket: str,
    name: str | None,
    uri: str,
    redactor: Redactor,
    *,
    conditional: bool,
    missing: bool,
) -> ProviderError:
    """An S3 error answer, through :data:`TABLE`."""
    code = error_code(exc)
    meta = exc.response.get("ResponseMetadata") or {}
    status = meta.get("HTTPStatusCode")
    status = status if isinstance(status, int) else None
    headers = meta.get("HTTPHeaders") or {}
    message = (exc.response.get("Error") or {}).get("Message") or ""
    detail = f"{code} (HTTP {status})" + (f": {message}" if message else "")
    location = headers.get("location") or headers.get("Location")
    flags = {
        "redirect": status is not None and 300 <= status < 400 and bool(location),
        "bucket": name is None,
        "missing": missing and name is not None,
    }
    row = classify(
        TABLE,
        status,
        code,
        conditional=conditional,
        flags=[flag for flag, on in flags.items() if on],
        message=message,
    )
    kw: dict[str, Any] = {"name": name, "uri": uri, "status": status}
    if row.label == "redirect":
        text = (
            f"S3 {op} of {where}: the endpoint answered with a redirect (HTTP {status}) to "
            f"{str(location)[:300]!r}. Redirects are never followed (the request, its body and "
            "credentials would go to that host): configure the endpoint the store really lives at"
        )
    elif row.label == "exists":
        text = f"object {uri!r} already exists (S3 {op}: {code})"
    elif row.label == "denied":
        text = _denied_text(op, where, code, detail)
    elif row.label == "no bucket":
        text = f"S3 bucket {bucket!r} does not exist ({op} of {where}: {code})"
    elif row.label == "missing":
        text = f"object {uri!r} does not exist (S3 {op}: {code})"
    else:
        text = f"S3 {op} of {where} failed: {detail}"
        region = headers.get("x-amz-bucket-region")
        if status == 301 and region:
            text += f" (the bucket is in region {region!r})"
    if row.label == "busy":
        kw["retry_after"] = parse_retry_after(headers)
    return row.build(redactor.scrub(text), **kw)


# What a 403 means, by error code, and what to check.
_CREDENTIALS_REFUSED: Final = {
    "InvalidAccessKeyId": "the access key id is not known to the store",
    "SignatureDoesNotMatch": "the secret access key does not match the access key id",
    "InvalidToken": "the session token is not valid",
    "ExpiredToken": "the session token has expired",
    "TokenRefreshRequired": "the session token must be refreshed",
    "InvalidClientTokenId": "the access key id or session token is not valid",
    "UnrecognizedClientException": "the access key id or session token is not valid",
}


def _denied_text(op: str, where: str, code: str, detail: str) -> str:
    """A 403 that says the credentials were refused (or lack a permission) and what to check."""
    check = (
        "check the access key id, secret key and session token this provider uses (its key / "
        "secret / token options, else AWS_ACCESS_KEY_ID with the matching secret key and "
        "session token in the environment, AWS_PROFILE or the instance role), that they have "
        "not expired, and the region and endpoint"
    )
    reason = _CREDENTIALS_REFUSED.get(code)
    if reason is not None:
        return f"S3 {op} of {where}: the credentials were refused ({reason}; {detail}): {check}"
    if code in ("AccessDenied", "AllAccessDisabled", "AccountProblem"):
        return (
            f"S3 {op} of {where}: access denied ({detail}): the credentials were refused or "
            f"lack the permission for {op}; {check}, and the bucket policy / IAM permissions"
        )
    return (
        f"S3 {op} of {where}: forbidden ({detail}): the credentials were refused or lack the "
        f"permission; {check}, and the bucket policy / IAM permissions"
    )


def note_transport_sends(exc: BaseException) -> None:
    """Tell the kit's resend counter how often the transport sent the request in ``exc``.

    The direct path reports aiohttp's own resend of a PUT whose connection dropped as botocore's
    ``RetryAttempts`` (botocore's own retries are off): ``RetryAttempts + 1`` sends, each noted
    (:func:`note_send`; a no-op outside a conditional write's ``InDoubt.run``).
    """
    if not isinstance(exc, botocore.exceptions.ClientError):
        return
    attempts = (exc.response.get("ResponseMetadata") or {}).get("RetryAttempts")
    if isinstance(attempts, int) and attempts > 0:
        for _ in range(attempts + 1):
            note_send()


def error_code(exc: botocore.exceptions.ClientError) -> str:
    """The S3 error code of a ClientError ("Unknown" when the answer had none)."""
    code = (exc.response.get("Error") or {}).get("Code")
    return str(code) if code else "Unknown"
