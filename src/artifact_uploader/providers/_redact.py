"""One redaction path for every provider and the SDK loggers.

(The CLI's printed output goes through its own ``Scrubber`` on top: it also replaces the 4- to
7-character values a user passed as ``--provider-kwarg``, which this module leaves alone.)

A :class:`Redactor` knows the secrets of one store: values given explicitly (keys, secrets,
session tokens, SAS strings), values read from the environment, and *sources* -- callables asked
at every scrub for the values they hold now, so credentials that refresh themselves (instance
roles, STS, OAuth tokens) are covered with whatever value they have at the time. On top of the
known values it removes what looks like a secret whatever its value: bearer tokens, SAS
``sig=`` signatures, SigV4 signatures, ``x-amz-security-token`` values and connection-string
account keys.

Servers echo request headers into error bodies and SDKs copy those bodies into exception
messages, and an exception chain (``__cause__`` / ``__context__``) is printed whole by
``traceback``: :meth:`Redactor.scrub_exception` therefore rewrites the message and arguments of
every exception in the chain, in place, before it is raised on to the caller.
"""

from __future__ import annotations

import functools
import logging
import os
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

REDACTED: Final = "<redacted>"
# Known values shorter than this are not replaced: a test dummy like "key" or "secret" would
# mangle ordinary words in every message, and real credentials are 16+ characters.
MIN_SECRET_LENGTH: Final = 8

# Environment variables whose values are secrets for one of the SDKs under this library.
SECRET_ENV_VARS: Final = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AZURE_STORAGE_KEY",
    "AZURE_STORAGE_ACCESS_KEY",
    "AZURE_STORAGE_SAS_TOKEN",
    "AZURE_STORAGE_CONNECTION_STRING",
    "AZURE_CLIENT_SECRET",
    "GOOGLE_OAUTH_ACCESS_TOKEN",
)

# Secrets recognised by their shape, whatever their value: (pattern, replacement).
_PATTERNS: Final = (
    # Authorization: Bearer <token> (GCS / Azure AD), also inside JSON or repr'd dicts.
    (re.compile(r"(?i)(\bbearer\s+)[A-Za-z0-9\-._~+/]+=*"), r"\1" + REDACTED),
    # Azure SAS: the signature is the secret part of the query string.
    (re.compile(r"(?i)(\bsig=)[^&\s\"'<>;,]+"), r"\1" + REDACTED),
    # SigV4 in a query (presigned) or in an Authorization header.
    (re.compile(r"(?i)(\bX-Amz-Signature=)[0-9a-f]+"), r"\1" + REDACTED),
    (re.compile(r"(?i)(\bSignature=)[0-9a-f]{64}"), r"\1" + REDACTED),
    # A session token echoed as a header ("x-amz-security-token: ..." / in a dict repr).
    (
        re.compile(r"(?i)(x-amz-security-token[\"']?\s*[:=]\s*[\"']?)[^\s\"'<>&,;]+"),
        r"\1" + REDACTED,
    ),
    (re.compile(r"(?i)(\bX-Amz-Security-Token=)[^&\s\"'<>]+"), r"\1" + REDACTED),
    # Azure connection strings.
    (re.compile(r"(?i)(\bAccountKey=)[^;\s\"'<>]+"), r"\1" + REDACTED),
    (re.compile(r"(?i)(\bSharedAccessSignature=)[^;\s\"'<>]+"), r"\1" + REDACTED),
    # OAuth fields in JSON token answers and service-account files.
    (
        re.compile(
            r"(?i)([\"']?\b(?:access_token|refresh_token|id_token|client_secret|private_key)"
            r"[\"']?\s*[:=]\s*[\"']?)[^\"'\s,&}]+"
        ),
        r"\1" + REDACTED,
    ),
)

# Exception attributes that hold text a subclass may print instead of ``args``.
_TEXT_ATTRS: Final = ("msg", "message", "reason", "strerror", "text", "body", "detail")
_MAX_DEPTH: Final = 6
_MAX_CHAIN: Final = 64

Source = Callable[[], Iterable[object]]


class Redactor:
    """Knows the secrets of one store and removes them from text and exceptions.

    Args:
        secrets: Known secret values (None and short values are ignored).
        sources: Callables returning the current secret values (refreshable credentials).
        environment: Also treat the values of :data:`SECRET_ENV_VARS` as secrets (read at
            every scrub, so a variable set later is covered too).
    """

    __slots__ = ("_environment", "_secrets", "_sources")

    def __init__(
        self,
        secrets: Iterable[object] = (),
        *,
        sources: Iterable[Source] = (),
        environment: bool = True,
    ) -> None:
        self._secrets: set[str] = set()
        self._sources: list[Source] = list(sources)
        self._environment = environment
        self.add(*secrets)

    def __repr__(self) -> str:
        return f"Redactor(<{len(self._secrets)} secrets, {len(self._sources)} sources>)"

    def add(self, *values: object) -> None:
        """Remember more secret values (None and values under 8 characters are ignored)."""
        for value in values:
            if isinstance(value, str) and len(value) >= MIN_SECRET_LENGTH:
                self._secrets.add(value)

    def add_source(self, source: Source) -> None:
        """Ask ``source`` for the current secret values at every scrub (refreshed credentials).

        A source that raises is skipped: scrubbing must never fail.
        """
        self._sources.append(source)

    def secrets(self) -> list[str]:
        """Every secret value known now, longest first (so a token containing a shorter
        secret is removed whole)."""
        found = set(self._secrets)
        for source in self._sources:
            try:
                values = list(source())
            except Exception:
                continue
            found.update(v for v in values if isinstance(v, str) and len(v) >= MIN_SECRET_LENGTH)
        if self._environment:
            for var in SECRET_ENV_VARS:
                value = os.environ.get(var)
                if value and len(value) >= MIN_SECRET_LENGTH:
                    found.add(value)
        return sorted(found, key=len, reverse=True)

    def scrub(self, text: str) -> str:
        """``text`` with every known secret and every secret-shaped value replaced."""
        if not text:
            return text
        for value in self.secrets():
            if value in text:
                text = text.replace(value, REDACTED)
        for pattern, replacement in _PATTERNS:
            text = pattern.sub(replacement, text)
        return text

    def scrub_value(self, value: Any, _depth: int = 0) -> Any:
        """``value`` with secrets removed from the strings in it, its type kept.

        Handled: str, bytes; plain tuples, lists and dicts; named tuples (rebuilt with
        ``_make``, so aiohttp's ``RequestInfo`` keeps ``.real_url``); ``yarl.URL`` (rebuilt from
        its scrubbed text: a SAS signature in a query); ``multidict`` headers (rebuilt as the
        same type). Returns ``value`` itself when nothing changed, and any other object as it
        is: its text is not known to round-trip, and a wrong type breaks the code that reads it.
        """
        if _depth > _MAX_DEPTH:
            return value
        if isinstance(value, str):
            clean = self.scrub(value)
            return value if clean == value else clean
        if isinstance(value, bytes | bytearray):
            text = bytes(value).decode("utf-8", "replace")
            clean = self.scrub(text)
            return value if clean == text else clean.encode("utf-8")
        kind = type(value)
        if kind in (tuple, list) or _is_namedtuple(value):
            items = [self.scrub_value(v, _depth + 1) for v in value]
            if all(a is b for a, b in zip(items, value, strict=True)):
                return value
            if kind is list:
                return items
            if kind is tuple:
                return tuple(items)
            try:
                return kind._make(items)
            except Exception:
                return value
        if kind is dict:
            scrubbed = {k: self.scrub_value(v, _depth + 1) for k, v in value.items()}
            if all(scrubbed[k] is v for k, v in value.items()):
                return value
            return scrubbed
        rebuild = _rebuilders().get(kind)
        if rebuild is not None:
            return self._rebuilt(value, rebuild, _depth)
        return value

    def _rebuilt(self, value: Any, rebuild: Callable[[Any, Any], Any], depth: int) -> Any:
        """``value`` rebuilt by ``rebuild`` from its scrubbed parts, or ``value`` itself."""
        try:
            if isinstance(value, Mapping):
                items = [(k, self.scrub_value(v, depth + 1)) for k, v in value.items()]
                if all(v is w for (_, v), w in zip(items, value.values(), strict=True)):
                    return value
                return rebuild(value, items)
            text = str(value)
            clean = self.scrub(text)
            return value if clean == text else rebuild(value, clean)
        except Exception:
            return value

    def scrub_exception(self, exc: BaseException) -> BaseException:
        """Scrub ``exc`` and every exception in its ``__cause__`` / ``__context__`` chain, in
        place: ``args``, text attributes (``msg``, ``message``, ``reason``...), dict attributes
        such as botocore's ``response`` and any ``__notes__``. Returns ``exc``."""
        seen: set[int] = set()
        todo: list[BaseException] = [exc]
        while todo and len(seen) < _MAX_CHAIN:
            current = todo.pop()
            if id(current) in seen:
                continue
            seen.add(id(current))
            self._scrub_one(current)
            for linked in (current.__cause__, current.__context__):
                if linked is not None:
                    todo.append(linked)
            # Exception groups hold their members outside the chain.
            members = getattr(current, "exceptions", None)
            if isinstance(members, tuple | list):
                todo.extend(m for m in members if isinstance(m, BaseException))
        return exc

    def _scrub_one(self, exc: BaseException) -> None:
        _blank_authorization(exc)
        self._wrap_response(exc)
        args = self.scrub_value(exc.args)
        if args is not exc.args:
            try:
                exc.args = args
            except Exception:
                pass
        attrs = getattr(exc, "__dict__", None)
        if not isinstance(attrs, dict):
            return
        for name, value in list(attrs.items()):
            if name.startswith("__") and name != "__notes__":
                continue
            if (
                isinstance(value, str | bytes | dict | list | tuple)
                or type(value) in _rebuilders()
                or name in _TEXT_ATTRS
                or name == "__notes__"
            ):
                clean = self.scrub_value(value)
                if clean is not value:
                    try:
                        setattr(exc, name, clean)
                    except Exception:
                        continue

    def _wrap_response(self, exc: BaseException) -> None:
        """Put a response whose ``text()`` an exception prints behind :class:`ScrubbedResponse`.

        azure-core's ``HttpResponseError.__str__`` appends ``response.text()`` every time it is
        printed; a server (or proxy) that quotes the request URL in its error page would put a
        SAS signature there, out of reach of scrubbing the exception's arguments.
        """
        response = getattr(exc, "response", None)
        if isinstance(response, ScrubbedResponse) or not callable(getattr(response, "text", None)):
            return
        try:
            exc.response = ScrubbedResponse(response, self)  # type: ignore[attr-defined]
        except Exception:
            return


class ScrubbedResponse:
    """A response whose ``text()`` and repr pass through a :class:`Redactor`; everything else
    is the wrapped response's."""

    __slots__ = ("_inner", "_redactor")

    def __init__(self, inner: Any, redactor: Redactor) -> None:
        self._inner = inner
        self._redactor = redactor

    def text(self, *args: Any, **kwargs: Any) -> str:
        """The wrapped response's text, scrubbed."""
        return self._redactor.scrub(str(self._inner.text(*args, **kwargs)))

    def __getattr__(self, name: str) -> Any:
        if name in ScrubbedResponse.__slots__ or name.startswith("__"):
            # Our own slots before they are set (copy, unpickling), and protocol lookups:
            # never delegated, so they cannot recurse.
            raise AttributeError(name)
        return getattr(self._inner, name)

    def __repr__(self) -> str:
        return self._redactor.scrub(repr(self._inner))


def _blank_authorization(exc: BaseException) -> None:
    """Blank the Authorization header aiohttp keeps in an error's ``request_info`` (in place).

    A header mapping is not text, so scrubbing values would not reach it; whatever the token
    (a bearer token, a SigV4 signature, a SharedKey), the header is replaced whole.
    """
    info = getattr(exc, "request_info", None)
    headers = getattr(info, "headers", None)
    if info is None or not headers or "Authorization" not in headers:
        return
    try:
        from multidict import CIMultiDict, CIMultiDictProxy

        clean = CIMultiDict(headers)
        clean["Authorization"] = REDACTED
        redacted = info._replace(headers=CIMultiDictProxy(clean))
        exc.request_info = redacted  # type: ignore[attr-defined]
    except (ImportError, AttributeError, TypeError):
        return
    # repr() and the traceback show args, which hold the same request_info.
    exc.args = tuple(redacted if a is info else a for a in exc.args)


def _is_namedtuple(value: object) -> bool:
    return isinstance(value, tuple) and hasattr(type(value), "_make") and hasattr(value, "_fields")


@functools.cache
def _rebuilders() -> dict[type, Callable[[Any, Any], Any]]:
    """Types (other than containers) whose secrets are scrubbed, each with how to rebuild one of
    the same type: yarl's URL from its scrubbed text; multidict's header mappings from their
    scrubbed items. Looked up only if those libraries are installed (the SDKs bring them)."""
    found: dict[type, Callable[[Any, Any], Any]] = {}
    try:
        import yarl

        found[yarl.URL] = lambda _old, text: yarl.URL(text, encoded=True)
    except ImportError:
        pass
    try:
        import multidict as md

        found[md.MultiDict] = lambda _old, items: md.MultiDict(items)
        found[md.CIMultiDict] = lambda _old, items: md.CIMultiDict(items)
        found[md.MultiDictProxy] = lambda _old, items: md.MultiDictProxy(md.MultiDict(items))
        found[md.CIMultiDictProxy] = lambda _old, items: md.CIMultiDictProxy(md.CIMultiDict(items))
    except ImportError:
        pass
    return found


class RedactingFilter(logging.Filter):
    """Removes secrets from log records (message, arguments and formatted traceback).

    botocore logs request headers (the session token, the access key id in Authorization), the
    strings it signs and response bodies at DEBUG; other SDKs log tokens too. A user who turns
    DEBUG on must not get credentials in their logs.
    """

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self._redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:
            return True
        clean = self._redactor.scrub(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = self._redactor.scrub(
                logging.Formatter().formatException(record.exc_info)
            )
        return True


def sdk_loggers(roots: Iterable[str]) -> list[logging.Logger]:
    """The loggers named ``roots`` and every existing child of them (a filter applies to its
    own logger only, not to records its children propagate)."""
    wanted = set(roots)
    names = {n for n in logging.Logger.manager.loggerDict if n.split(".")[0] in wanted}
    return [logging.getLogger(n) for n in sorted(names | wanted)]


def install_log_filter(redactor: Redactor, roots: Iterable[str]) -> Callable[[], None]:
    """Put a :class:`RedactingFilter` on the SDK loggers under ``roots``; returns the call that
    takes it off again (a provider installs it at open and removes it at close)."""
    scrubber = RedactingFilter(redactor)
    loggers = sdk_loggers(roots)
    for logger in loggers:
        logger.addFilter(scrubber)

    def uninstall() -> None:
        for logger in loggers:
            logger.removeFilter(scrubber)

    return uninstall
