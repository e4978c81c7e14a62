"""GCS answers and failures onto the library's error tree, through one table.

Every error and its cause chain pass through the provider's :class:`Redactor`, which knows the
current access token (and blanks the Authorization header aiohttp keeps in ``request_info``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final

import aiohttp

from .._errors import (
    IntegrityError,
    ObjectExistsError,
    ObjectNotFoundError,
    PermissionDeniedError,
    ProviderError,
    StoreNotFoundError,
)
from ._gcs_config import GCSPaths
from ._kit import REDIRECTS, RETRYABLE_STATUS, classify, parse_retry_after, rule
from ._redact import Redactor

# Connection-level failures that a new attempt may get past.
TRANSIENT_EXCEPTIONS: Final = (
    aiohttp.ClientConnectionError,
    aiohttp.ClientPayloadError,
    ConnectionError,
    TimeoutError,
)

# Flags: "conditional" (overwrite=False), "reading" (head / get / list / delete), "bucket" (a
# bucket-level request), "session" (a resumable session URL).
TABLE: Final = (
    rule(ProviderError, "redirect", status=REDIRECTS),
    rule(ObjectExistsError, "exists", status=412, when={"conditional"}),
    rule(PermissionDeniedError, "credentials", status=401),
    rule(PermissionDeniedError, "denied", status=403),
    # A read's 404 names the bucket only when the bucket is what is missing.
    rule(
        StoreNotFoundError,
        "no_bucket",
        status=404,
        when={"reading"},
        unless={"bucket"},
        message=r"^(?!.*object).*bucket",
    ),
    rule(ObjectNotFoundError, "no_object", status=404, when={"reading"}, unless={"bucket"}),
    # Object-level 404s do not happen on uploads: the bucket is missing.
    rule(StoreNotFoundError, "no_bucket", status=404, when={"bucket"}),
    rule(StoreNotFoundError, "no_bucket", status=404, unless={"session"}),
    # A resumable session that expired or vanished: a new attempt opens a new one.
    rule(ProviderError, "session_gone", status=(404, 410), transient=True),
    rule(
        IntegrityError, "rejected", status=400, message="crc32c|md5|checksum|hash", transient=True
    ),
    rule(ProviderError, "failed", status=RETRYABLE_STATUS, transient=True),
    rule(ProviderError, "failed"),
)


# Failures without an answer, first match wins: (exception types, message, transient).
_FAILURES: Final[tuple[tuple[type[Exception] | tuple[type[Exception], ...], str, bool], ...]] = (
    (TimeoutError, "GCS request for {what} timed out", True),
    (TRANSIENT_EXCEPTIONS, "GCS request for {what} failed: {kind}: {exc}", True),
    # An unparseable response body (a proxy's HTML error page...).
    (ValueError, "GCS returned an unreadable response for {what}: {kind}", True),
    # Reading the staged file failed.
    (OSError, "cannot read the file to upload as {what}: {exc}", False),
    (Exception, "GCS request for {what} failed: {kind}: {exc}", False),
)


class RedirectRefused(Exception):
    """A server answered a redirect; raised from aiohttp's redirect hook so it is never followed."""

    def __init__(self, status: int, location: str) -> None:
        super().__init__(f"redirect {status} to {location!r}")
        self.status = status
        self.location = location


async def refuse_redirect(session: Any, context: Any, params: Any) -> None:
    """aiohttp trace hook (``on_request_redirect``): refuse a redirect before it is followed.

    Raising here stops aiohttp from sending the request (body and Authorization header
    included) to the new location.
    """
    response = params.response
    location = str(response.headers.get("Location", ""))
    response.close()
    raise RedirectRefused(response.status, location)


def refuse_redirect_answer(resp: aiohttp.ClientResponse) -> None:
    """Raise for a redirect answered to a request sent with ``allow_redirects=False``."""
    if resp.status in REDIRECTS:
        raise RedirectRefused(resp.status, str(resp.headers.get("Location", "")))


async def raise_for_status(resp: aiohttp.ClientResponse) -> None:
    """Like the library: raise ClientResponseError with the (small) error body as its message."""
    if resp.status >= 400:
        body = await resp.text(errors="replace")
        raise aiohttp.ClientResponseError(
            resp.request_info,
            resp.history,
            status=resp.status,
            message=f"{resp.reason}: {body[:2000]}",
            headers=resp.headers,
        )


def changed(uri: str, name: str) -> ProviderError:
    """The object read is no longer the generation the read started with."""
    return ProviderError(
        f"GCS object {uri!r} changed while it was being read (generation no longer matches)",
        name=name,
        uri=uri,
        status=412,
    )


def auth_error(exc: Exception, source: str) -> ProviderError:
    """A failure to obtain an access token (the token endpoint's body is never quoted)."""
    status = getattr(exc, "status", None)
    if isinstance(status, int) and (status in (408, 429) or status >= 500):
        return ProviderError(
            f"could not obtain a GCS access token ({status})", status=status, transient=True
        )
    if isinstance(exc, TRANSIENT_EXCEPTIONS):
        return ProviderError(
            f"could not obtain a GCS access token: {type(exc).__name__}", transient=True
        )
    return PermissionDeniedError(
        f"could not obtain a GCS access token: {type(exc).__name__}"
        + (f" ({status})" if status else "")
        + f"; the credentials were refused or unusable: check the {source}",
        status=status if isinstance(status, int) else None,
    )


@dataclass(slots=True)
class ErrorMap:
    """Maps what one provider's requests raise (see :meth:`map`).

    Attributes:
        paths: The bucket and prefix, for names in messages.
        redactor: The provider's one redaction path.
        credential_source: Where the credential came from (what to check on a refusal).
        root: The API root requests go to ("" before open); an error from any other URL came
            from a token endpoint.
    """

    paths: GCSPaths
    redactor: Redactor
    credential_source: str
    root: str = ""

    def map(
        self,
        exc: Exception,
        name: str | None,
        *,
        overwrite: bool = True,
        bucket_op: bool = False,
        reading: bool = False,
    ) -> ProviderError:
        """Turn a library / aiohttp / local I/O exception into the library's error tree.

        ``exc`` and its whole chain are scrubbed of the access token in place first (it becomes
        the ``__cause__`` of what is raised), and so is the returned error.
        """
        self.redactor.scrub_exception(exc)
        error = self._unscrubbed(
            exc, name, overwrite=overwrite, bucket_op=bucket_op, reading=reading
        )
        self.redactor.scrub_exception(error)
        return error

    def is_storage_url(self, exc: aiohttp.ClientResponseError) -> bool:
        """False when the failed request went to a token endpoint, not to the storage API."""
        try:
            url = str(exc.request_info.real_url)
        except AttributeError:
            return True
        return not self.root or url.startswith(self.root)

    def _unscrubbed(
        self, exc: Exception, name: str | None, *, overwrite: bool, bucket_op: bool, reading: bool
    ) -> ProviderError:
        uri = self.paths.uri(name) if name is not None else f"gs://{self.paths.bucket}"
        what = f"{uri!r}" if name is not None else f"bucket {self.paths.bucket!r}"
        if isinstance(exc, ProviderError):
            return exc
        if isinstance(exc, RedirectRefused):
            return _redirect_error(exc.status, exc.location, what, name=name, uri=uri)
        if isinstance(exc, aiohttp.ClientResponseError):
            if not self.is_storage_url(exc):
                return auth_error(exc, self.credential_source)
            return self._answer(exc, name, uri, what, overwrite, bucket_op, reading)
        for kinds, text, transient in _FAILURES:
            if isinstance(exc, kinds):
                message = text.format(what=what, kind=type(exc).__name__, exc=exc)
                return ProviderError(message, name=name, uri=uri, transient=transient)
        raise AssertionError("unreachable: the last row covers every Exception")

    def _answer(
        self,
        exc: aiohttp.ClientResponseError,
        name: str | None,
        uri: str,
        what: str,
        overwrite: bool,
        bucket_op: bool,
        reading: bool,
    ) -> ProviderError:
        """An error answer from the storage API, through :data:`TABLE`."""
        status = exc.status
        detail = _error_detail(exc.message)
        flags = {"reading"} if reading else set()
        if bucket_op:
            flags.add("bucket")
        if "upload_id=" in str(getattr(exc.request_info, "real_url", "")):
            flags.add("session")
        row = classify(TABLE, status, conditional=not overwrite, flags=flags, message=detail)
        kw: dict[str, Any] = {"name": name, "uri": uri, "status": status}
        bucket = self.paths.bucket
        if row.label == "redirect":
            location = exc.headers.get("Location", "") if exc.headers else ""
            return _redirect_error(status, location, what, name=name, uri=uri)
        if row.label == "failed":
            kw["retry_after"] = parse_retry_after(exc.headers)
        texts = {
            "exists": f"object {uri!r} already exists",
            "credentials": (
                f"GCS refused the credentials for {what} (401 Unauthorized: not a valid, "
                f"current credential): check the {self.credential_source}. Server said: {detail}"
            ),
            "denied": (
                f"GCS refused access to {what} with the credentials given (403 Forbidden): "
                f"check the {self.credential_source} is the intended account and has the "
                f"Storage permissions (storage.objects.create / get / list / delete) on bucket "
                f"{bucket!r}. Server said: {detail}"
            ),
            "no_bucket": f"GCS bucket {bucket!r} does not exist",
            "no_object": f"GCS object {uri!r} does not exist",
            "session_gone": f"GCS upload session for {what} is gone ({status}): {detail}",
            "rejected": f"GCS rejected the body of {what}: {detail}",
            "failed": f"GCS request for {what} failed ({status}): {detail}",
        }
        return row.build(texts[row.label], **kw)


def _redirect_error(
    status: int, location: str, what: str, *, name: str | None, uri: str | None
) -> ProviderError:
    """A redirect answer: permanent, naming where it pointed (the request was not resent)."""
    where = location[:300] if location else "no Location given"
    return ProviderError(
        f"GCS answered {status} for {what}, redirecting to {where!r}: redirects are not "
        "followed (nothing was sent there); check api_root / STORAGE_EMULATOR_HOST",
        name=name,
        uri=uri,
        status=status,
    )


def _error_detail(message: str) -> str:
    """The ``error.message`` of Google's JSON error body, else the raw text, shortened."""
    _, _, body = message.partition(": ")
    try:
        parsed = json.loads(body)
        detail = parsed["error"]["message"]
        if isinstance(detail, str) and detail:
            return detail[:300]
    except (ValueError, KeyError, TypeError):
        pass
    return (message or "no detail")[:300]
