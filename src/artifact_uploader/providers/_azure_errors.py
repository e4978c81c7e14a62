"""Azure's errors, translated into the library's error tree in one place, and scrubbed.

Every SDK or transport exception the provider meets goes through :meth:`AzureErrors.map`: the
result names the blob or container and what to check, ``transient`` says whether the engine's
retry may help, and the exception, its cause chain and the response text azure-core prints with
it are scrubbed of the key, SAS and connection string.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

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
from ._protocol import parse_retry_after
from ._redact import Redactor

_TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_TRANSIENT_CODES = frozenset({"ServerBusy", "OperationTimedOut", "InternalError"})
_EXISTS_CODES = frozenset({"BlobAlreadyExists", "ConditionNotMet"})
_REDIRECTS = frozenset({300, 301, 302, 303, 307, 308})
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
        scrubbed of the key, SAS and connection string in place, and so is the result.
        """
        error = self._classify(exc, name, doing, conditional=conditional, reading=reading)
        self._redactor.scrub_exception(exc)
        self._redactor.scrub_exception(error)
        _scrub_responses(exc, self._redactor)
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
        detail = f"HTTP {status}" + (f" {code}" if code else "")
        if status in _REDIRECTS:
            headers = getattr(getattr(exc, "response", None), "headers", None) or {}
            location = str(headers.get("Location") or headers.get("location") or "")
            return ProviderError(
                f"Azure: {doing} {where}: the service answered {status}, redirecting to "
                f"{(location[:300] or 'no Location given')!r}: redirects are not followed "
                "(nothing was sent there); check the account URL / connection string",
                name=name,
                uri=uri,
                status=status,
            )
        if conditional and (status in (409, 412) and (code in _EXISTS_CODES or not code)):
            return self.exists(name or "")
        if status in (401, 403) and code not in _PERMISSION_CODES:
            return PermissionDeniedError(
                f"Azure: {doing} {where}: the credentials were refused ({detail}): check "
                f"the {self._credential_source}, and that the account URL names the "
                "right account",
                name=name,
                uri=uri,
                status=status,
            )
        if status in (401, 403):
            return PermissionDeniedError(
                f"Azure: {doing} {where}: the credentials were accepted but not allowed "
                f"this operation ({detail}): check the {self._credential_source}",
                name=name,
                uri=uri,
                status=status,
            )
        if reading and status == 404 and code != "ContainerNotFound" and name is not None:
            return ObjectNotFoundError(
                f"Azure: blob {self._uri(name)!r} does not exist ({detail})",
                name=name,
                uri=uri,
                status=status,
            )
        if code == "ContainerNotFound" or (name is None and status == 404):
            return StoreNotFoundError(
                f"Azure: container {self._container!r} does not exist in account "
                f"{self._account_name!r} ({detail})",
                name=name,
                uri=uri,
                status=status,
            )
        if code == "Md5Mismatch" or _says_md5_mismatch(status, code, exc):
            # The body changed on the wire; sending it again may well succeed.
            return IntegrityError(
                f"Azure: {doing} {where}: the service's MD5 of the body differs from ours "
                f"({detail})",
                name=name,
                uri=uri,
                status=status,
                transient=True,
            )
        return ProviderError(
            f"Azure: {doing} {where} failed: {detail}",
            name=name,
            uri=uri,
            status=status,
            transient=status in _TRANSIENT_STATUS or code in _TRANSIENT_CODES,
            retry_after=parse_retry_after(getattr(getattr(exc, "response", None), "headers", None)),
        )


def error_code(exc: BaseException) -> str:
    """The service's error code (``x-ms-error-code``) of an SDK exception, or ""."""
    code = getattr(exc, "error_code", None)
    if code is None:
        return ""
    return str(getattr(code, "value", code))


def _says_md5_mismatch(status: int, code: str, exc: BaseException) -> bool:
    """A 400 whose code is the generic ``InvalidOperation`` but whose message is the MD5 check's
    (Azurite 3.35 answers a Content-MD5 mismatch so; the service says ``Md5Mismatch``)."""
    if status != 400 or code != "InvalidOperation":
        return False
    message = str(getattr(exc, "message", "") or "").lower()
    return "md5" in message and "match" in message


def _is_aiohttp_error(exc: BaseException) -> bool:
    # aiohttp is the SDK's async transport; its errors normally arrive wrapped, but not always.
    return isinstance(exc, aiohttp.ClientError | asyncio.TimeoutError)


class _ScrubbedResponse:
    """An SDK response whose body text is scrubbed of secrets.

    azure-core's ``HttpResponseError.__str__`` appends ``response.text()`` every time it is
    printed; a server (or proxy) that quotes the request URL in its error page would put the
    SAS signature there, out of reach of scrubbing the exception's arguments.
    """

    def __init__(self, inner: Any, redactor: Redactor) -> None:
        self._inner = inner
        self._redactor = redactor

    def text(self, encoding: str | None = None) -> str:
        return str(self._redactor.scrub(self._inner.text(encoding)))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def __repr__(self) -> str:
        return str(self._redactor.scrub(repr(self._inner)))


def _scrub_responses(exc: BaseException, redactor: Redactor) -> None:
    """Wrap the ``response`` of every azure-core error in ``exc``'s chain (in place)."""
    seen: set[int] = set()
    current: list[BaseException | None] = [exc]
    while current and len(seen) < 64:
        e = current.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        response = getattr(e, "response", None)
        if isinstance(e, azure_exc.HttpResponseError) and response is not None:
            if not isinstance(response, _ScrubbedResponse):
                e.response = _ScrubbedResponse(response, redactor)
        current += [e.__cause__, e.__context__]
