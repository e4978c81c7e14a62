"""Azure's errors, translated into the library's error tree in one place, and scrubbed.

Every SDK or transport exception the provider meets goes through :meth:`AzureErrors.map`: the
result names the blob or container and what to check, ``transient`` says whether the engine's
retry may help, and the exception, its cause chain and the response text azure-core prints with
it are scrubbed of the key, SAS and connection string.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Final

import aiohttp
from azure.core import exceptions as azure_exc

from .._errors import (
    IntegrityError,
    ObjectExistsError,
    ObjectNotFoundError,
    PermissionDeniedError,
    ProviderError,
    StoreNotFoundError,
)
from ._kit import REDIRECTS, classify, parse_retry_after, rule
from ._redact import Redactor

# 403 codes that mean "authenticated, but not allowed this": every other 401/403 is a refusal of
# the credentials themselves (a wrong key's signature, an expired or malformed SAS...).
_PERMISSION_CODES = frozenset(
    {
        "AuthorizationPermissionMismatch",
        "AuthorizationResourceTypeMismatch",
        "AuthorizationServiceMismatch",
        "AuthorizationSourceIPMismatch",
        "AuthorizationProtocolMismatch",
        "InsufficientAccountPermissions",
    }
)
# Azure's answers, first match wins (see kit.classify). Flags: "conditional" (If-None-Match: *),
# "reading" (a read, where 404 is a missing blob), "object" (the request names a blob). The
# label chooses the message (AzureErrors._message).
ERROR_TABLE: Final = (
    rule(ProviderError, "redirect", status=REDIRECTS),
    # "" is no code: a 412 to a conditional request may come without one.
    rule(
        ObjectExistsError,
        "exists",
        status=(409, 412),
        code=("BlobAlreadyExists", "ConditionNotMet", ""),
        when=["conditional"],
    ),
    rule(PermissionDeniedError, "not allowed", status=(401, 403), code=_PERMISSION_CODES),
    rule(PermissionDeniedError, "refused", status=(401, 403)),
    rule(StoreNotFoundError, "no container", code="ContainerNotFound"),
    rule(ObjectNotFoundError, "no blob", status=404, when=["reading", "object"]),
    rule(StoreNotFoundError, "no container", status=404, unless=["object"]),
    # The body changed on the wire; sending it again may well succeed.
    rule(IntegrityError, "md5", code="Md5Mismatch", transient=True),
    # Azurite 3.35 answers a Content-MD5 mismatch with the generic code and the check's message.
    rule(
        IntegrityError,
        "md5",
        status=400,
        code="InvalidOperation",
        message=r"(?=.*md5)(?=.*match)",
        transient=True,
    ),
    rule(ProviderError, "failed", status=(408, 429, 500, 502, 503, 504), transient=True),
    rule(
        ProviderError,
        "failed",
        code=("ServerBusy", "OperationTimedOut", "InternalError"),
        transient=True,
    ),
    rule(ProviderError, "failed"),
)


class AzureErrors:
    """Maps exceptions for one container of one account.

    Args:
        uri: The ``az://`` URI of a blob name.
        container: The container's name.
        account_name: The account's name (for messages).
        credential_source: What to check when the credentials are refused.
        redactor: The provider's one redaction path.
    """

    def __init__(
        self,
        uri: Callable[[str], str],
        container: str,
        account_name: str | None,
        credential_source: str,
        redactor: Redactor,
    ) -> None:
        self._uri = uri
        self._container = container
        self._account_name = account_name
        self._credential_source = credential_source
        self._redactor = redactor

    def exists(self, name: str) -> ObjectExistsError:
        """The error for a conditional write that met an existing blob."""
        uri = self._uri(name)
        return ObjectExistsError(f"Azure: blob {uri!r} already exists", name=name, uri=uri)

    def map(
        self,
        exc: BaseException,
        name: str | None,
        doing: str,
        *,
        conditional: bool = False,
        reading: bool = False,
    ) -> ProviderError:
        """Turn an SDK or transport exception into the library's error tree.

        ``exc`` and its whole chain (it becomes the ``__cause__`` of what is raised) are
        scrubbed of the key, SAS and connection string in place, and so is the result; the
        response text azure-core prints with an error is put behind the redactor too.
        """
        error = self._classify(exc, name, doing, conditional=conditional, reading=reading)
        self._redactor.scrub_exception(exc)
        self._redactor.scrub_exception(error)
        return error

    def _classify(
        self,
        exc: BaseException,
        name: str | None,
        doing: str,
        *,
        conditional: bool,
        reading: bool,
    ) -> ProviderError:
        if isinstance(exc, ProviderError):
            return exc
        where = (
            f"blob {self._uri(name)!r}"
            if name is not None
            else f"container {self._container!r} of account {self._account_name!r}"
        )
        uri = None if name is None else self._uri(name)
        if isinstance(exc, azure_exc.IncompleteReadError):
            # The body ended early (a dropped connection): reading again may well succeed.
            return ProviderError(
                f"Azure: {doing} {where}: the answer ended early (IncompleteReadError)",
                name=name,
                uri=uri,
                transient=True,
            )
        if isinstance(exc, azure_exc.HttpResponseError) and exc.status_code is not None:
            return self._classify_status(exc, name, uri, doing, where, conditional, reading)
        if isinstance(
            exc,
            azure_exc.ServiceRequestError
            | azure_exc.ServiceResponseError
            | TimeoutError
            | ConnectionError,
        ) or _is_aiohttp_error(exc):
            reason = self._redactor.scrub(
                str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            )
            return ProviderError(
                f"Azure: {doing} {where}: connection failed: {reason}",
                name=name,
                uri=uri,
                transient=True,
            )
        return ProviderError(
            f"Azure: {doing} {where} failed: {type(exc).__name__}",
            name=name,
            uri=uri,
        )

    def _classify_status(
        self,
        exc: azure_exc.HttpResponseError,
        name: str | None,
        uri: str | None,
        doing: str,
        where: str,
        conditional: bool,
        reading: bool,
    ) -> ProviderError:
        status = int(exc.status_code or 0)
        code = error_code(exc)
        row = classify(
            ERROR_TABLE,
            status,
            code,
            conditional=conditional,
            flags=[flag for flag, on in (("reading", reading), ("object", name is not None)) if on],
            message=str(getattr(exc, "message", "") or ""),
        )
        if row.label == "exists":
            return self.exists(name or "")
        headers = getattr(getattr(exc, "response", None), "headers", None) or {}
        detail = f"HTTP {status}" + (f" {code}" if code else "")
        extra = {"retry_after": parse_retry_after(headers)} if row.label == "failed" else {}
        text = self._message(row.label, status, detail, doing, where, headers)
        return row.build(text, name=name, uri=uri, status=status, **extra)

    def _message(
        self, label: str, status: int, detail: str, doing: str, where: str, headers: Any
    ) -> str:
        """The text of the error a row of :data:`ERROR_TABLE` maps to."""
        match label:
            case "redirect":
                location = str(headers.get("Location") or headers.get("location") or "")
                return (
                    f"Azure: {doing} {where}: the service answered {status}, redirecting to "
                    f"{(location[:300] or 'no Location given')!r}: redirects are not followed "
                    "(nothing was sent there); check the account URL / connection string"
                )
            case "refused":
                return (
                    f"Azure: {doing} {where}: the credentials were refused ({detail}): check "
                    f"the {self._credential_source}, and that the account URL names the "
                    "right account"
                )
            case "not allowed":
                return (
                    f"Azure: {doing} {where}: the credentials were accepted but not allowed "
                    f"this operation ({detail}): check the {self._credential_source}"
                )
            case "no blob":
                return f"Azure: {where} does not exist ({detail})"
            case "no container":
                return (
                    f"Azure: container {self._container!r} does not exist in account "
                    f"{self._account_name!r} ({detail})"
                )
            case "md5":
                return (
                    f"Azure: {doing} {where}: the service's MD5 of the body differs from ours "
                    f"({detail})"
                )
        return f"Azure: {doing} {where} failed: {detail}"


def error_code(exc: BaseException) -> str:
    """The service's error code (``x-ms-error-code``) of an SDK exception, or ""."""
    code = getattr(exc, "error_code", None)
    if code is None:
        return ""
    return str(getattr(code, "value", code))


def _is_aiohttp_error(exc: BaseException) -> bool:
    # aiohttp is the SDK's async transport; its errors normally arrive wrapped, but not always.
    return isinstance(exc, aiohttp.ClientError | asyncio.TimeoutError)
