"""What every cloud provider decides the same way, decided once.

- Sizes: :data:`MiB`, :data:`INLINE_LIMIT` (bodies up to it are read and hashed on the loop).
- Names, URIs and endpoints: :func:`check_common_name`, :func:`join_key`,
  :func:`split_store_uri`, :func:`is_loopback_host`, :func:`check_plain_http`, and
  :func:`pop_seed_endpoint` for the seed's ``host`` / ``port`` / ``secure`` options.
- Answers: :func:`parse_retry_after`; :func:`classify` maps (status, code, conditional?) onto
  the error tree through a table of :class:`Rule` rows each provider keeps as data.
- Lost answers: :class:`InDoubt` runs a conditional write whose earlier send may have landed,
  with one resend counter (:func:`note_send`, :func:`count_conditional_send`).
- Bodies: :func:`md5`, :func:`b64`, :func:`hash_slice`, :func:`read_hashed`.

Nothing here imports an SDK: local and memory stores may use it without the cloud extras.
"""

from __future__ import annotations

import base64
import contextvars
import hashlib
import ipaddress
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, Final, Protocol, TypeVar
from urllib.parse import SplitResult, urlsplit

from .._errors import ConfigError, InvalidObjectNameError, ObjectExistsError, ProviderError
from .._retry import note_progress

# One MiB and one inline threshold (bodies up to it are read and hashed on the loop) for the
# whole library: they live in the lowest layer, _types, and providers take them from here.
from .._types import INLINE_LIMIT as INLINE_LIMIT
from .._types import FileSlice
from .._types import MiB as MiB

MAX_NAME_BYTES: Final = 1024
# The options every store accepts from the seed's provider settings (libcloud's names).
SEED_OPTIONS: Final = frozenset(
    {"key", "secret", "host", "port", "secure", "region", "api_version"}
)
# Redirect statuses: no provider follows one (body and credentials would go to that host).
REDIRECTS: Final = frozenset({300, 301, 302, 303, 307, 308})
# Statuses a new attempt may get past: timeout, throttling, any server error.
RETRYABLE_STATUS: Final = frozenset({408, 429, *range(500, 600)})

log = logging.getLogger("artifact_uploader")
T = TypeVar("T")

# -- names, URIs, endpoints --------------------------------------------------------------------


def check_common_name(name: str, *, max_bytes: int = MAX_NAME_BYTES) -> None:
    """Checks every store shares: non-empty, no NUL, not only slashes, at most ``max_bytes``.

    Raises:
        InvalidObjectNameError: Naming the offending value and why.
    """
    if not isinstance(name, str):
        raise InvalidObjectNameError(repr(name), f"must be a str, not {type(name).__name__}")
    if not name.strip("/"):
        raise InvalidObjectNameError(name, "empty (or only slashes)")
    if "\x00" in name:
        raise InvalidObjectNameError(name, "contains a NUL character")
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidObjectNameError(name, f"not valid UTF-8 ({exc.reason})") from None
    if len(encoded) > max_bytes:
        raise InvalidObjectNameError(
            name[:64] + "...", f"{len(encoded)} bytes long, the limit is {max_bytes}"
        )


def join_key(prefix: str, name: str) -> str:
    """Join a store prefix and an object name with exactly one slash."""
    prefix = prefix.strip("/")
    return f"{prefix}/{name}" if prefix else name


def parse_retry_after(headers: Mapping[str, Any] | None) -> float | None:
    """Seconds a ``Retry-After`` header asks for (delta-seconds or an HTTP date), else None.

    Header lookup is tried as given and in lower case, since SDKs differ in header casing.
    """
    if not headers:
        return None
    value = headers.get("Retry-After") or headers.get("retry-after")
    if value is None:
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        try:
            seconds = parsedate_to_datetime(str(value)).timestamp() - time.time()
        except (TypeError, ValueError, IndexError):
            return None
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def is_loopback_host(host: str | None) -> bool:
    """Whether ``host`` names this machine: ``localhost`` or a loopback IPv4/IPv6 address."""
    if not host:
        return False
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_plain_http(url: str, *, label: str, allow_http: bool, what: str = "endpoint") -> None:
    """Refuse a plain ``http://`` URL to a host other than this machine unless ``allow_http``.

    On plain HTTP anyone on the path can read the credentials sent with each request and change
    a body together with its checksum; a loopback emulator is the one place that is harmless.

    Raises:
        ConfigError: Naming the URL's host and the option that allows it.
    """
    parts = urlsplit(url)
    if parts.scheme.lower() != "http" or is_loopback_host(parts.hostname) or allow_http:
        return
    raise ConfigError(
        f"{label} {what} http://{parts.hostname} is plain HTTP to a host that is not "
        "this machine: credentials and data would travel unencrypted; use https, or pass "
        "allow_http=True if that network is trusted"
    )


def split_store_uri(uri: str, scheme: str, label: str) -> SplitResult:
    """Parse ``scheme://bucket[/prefix]``; refuse other schemes, queries, fragments, userinfo.

    Args:
        uri: The store URI.
        scheme: The scheme expected (``"s3"``, ``"gs"``, ``"az"``).
        label: The store's name in messages ("S3", "GCS", "Azure").

    Raises:
        ConfigError: Naming the URI and what is wrong with it (never echoing embedded
            credentials).
    """
    parts = urlsplit(uri)
    if parts.scheme.lower() != scheme:
        # "an S3", "an Azure", "a GCS": the article follows how the label is spoken.
        article = "an" if label[0] in "AEIOUS" else "a"
        raise ConfigError(
            f"not {article} {label} URI: {uri!r} (expected {scheme}://bucket[/prefix])"
        )
    if parts.username or parts.password:
        # Never echo the URI back: it may hold a secret.
        raise ConfigError(f"{label} URI must not embed credentials; pass them as options")
    if parts.query or parts.fragment:
        raise ConfigError(f"{label} URI {uri!r} must not carry a query or fragment")
    if not parts.netloc:
        raise ConfigError(
            f"{label} URI {uri!r} names no bucket: expected {scheme}://bucket[/prefix]"
        )
    return parts


@dataclass(frozen=True, slots=True)
class SeedEndpoint:
    """The seed's piecewise endpoint options, checked (see :func:`pop_seed_endpoint`).

    Attributes:
        host: A host name or address (IPv6 without brackets is fine), or a whole
            ``scheme://host`` URL; None when not given.
        port: The port, when given.
        secure: HTTPS (True) or plain HTTP (False), when given; the URL defaults to HTTPS.
    """

    host: str | None = None
    port: int | None = None
    secure: bool | None = None

    @property
    def given(self) -> bool:
        """Whether any of ``host`` / ``port`` / ``secure`` was given."""
        return self.host is not None or self.port is not None or self.secure is not None

    def url(self) -> str:
        """``scheme://host[:port]`` (``host`` kept as is when it already has a scheme).

        Raises:
            ConfigError: No ``host`` was given.
        """
        if self.host is None:
            raise ConfigError("an endpoint needs 'host'")
        if "://" in self.host:
            base = self.host.rstrip("/")
        else:
            scheme = "http" if self.secure is False else "https"
            host = self.host
            if ":" in host and not host.startswith("["):
                host = f"[{host}]"
            base = f"{scheme}://{host}"
        return base if self.port is None else f"{base}:{self.port}"


def pop_seed_endpoint(opts: dict[str, Any], label: str) -> SeedEndpoint:
    """Take the seed's ``host`` / ``port`` / ``secure`` out of ``opts`` and check their types.

    ``port`` may be an int or a string of digits (1-65535); ``secure`` a bool; ``host`` a
    non-empty str. Which combinations a store accepts (a port without a host...) is the
    store's to say.

    Raises:
        ConfigError: Naming the option and the value's fault (the store's ``label`` first).
    """
    host = opts.pop("host", None)
    port = opts.pop("port", None)
    secure = opts.pop("secure", None)
    if secure is not None and not isinstance(secure, bool):
        raise ConfigError(f"{label} option 'secure' must be a bool, got {secure!r}")
    if host is not None and (not isinstance(host, str) or not host):
        raise ConfigError(f"{label} option 'host' must be a non-empty str, got {host!r}")
    number: int | None = None
    if port is not None:
        text = str(port).strip() if isinstance(port, int | str) else ""
        if isinstance(port, bool) or not text.isdigit():
            raise ConfigError(f"{label} option 'port' must be an int, got {port!r}")
        number = int(text)
        if not 0 < number < 65536:
            raise ConfigError(f"{label} option 'port' out of range: {number}")
    return SeedEndpoint(host, number, secure)


# -- error classification -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rule:
    """One row of a provider's error table: when it matches, and what it maps to.

    A row matches when every condition it sets holds: ``status`` (one of), ``code`` (one of;
    ``""`` is "no code"), every flag in ``when`` is set and none in ``unless``, and
    ``message`` is found in the server's message. Build rows with :func:`rule`.

    Attributes:
        error: The class from :mod:`artifact_uploader._errors` to raise.
        label: The provider's name for the case, to choose the message text.
        status: The statuses it matches (None: any).
        code: The error codes it matches (None: any).
        when: Flags that must be set (``"conditional"``, ``"reading"``, ``"object"``...).
        unless: Flags that must not be set.
        message: A pattern searched in the server's message (None: any message).
        transient: Whether a new attempt may succeed.
    """

    error: type[ProviderError]
    label: str
    status: frozenset[int] | None = None
    code: frozenset[str] | None = None
    when: frozenset[str] = frozenset()
    unless: frozenset[str] = frozenset()
    message: re.Pattern[str] | None = None
    transient: bool = False

    def matches(self, status: int | None, code: str, flags: frozenset[str], message: str) -> bool:
        """Whether this row covers the answer (see the class)."""
        return (
            (self.status is None or status in self.status)
            and (self.code is None or code in self.code)
            and self.when <= flags
            and not (self.unless & flags)
            and (self.message is None or self.message.search(message) is not None)
        )

    def build(self, text: str, **kwargs: Any) -> ProviderError:
        """The error this row maps to, with ``text`` and the error's keyword arguments."""
        return self.error(text, transient=self.transient, **kwargs)


def rule(
    error: type[ProviderError],
    label: str,
    *,
    status: int | Iterable[int] | None = None,
    code: str | Iterable[str] | None = None,
    when: Iterable[str] = (),
    unless: Iterable[str] = (),
    message: str | None = None,
    transient: bool = False,
) -> Rule:
    """A :class:`Rule`, with single values and iterables alike (``message`` is a regex,
    searched case-insensitively across lines)."""
    return Rule(
        error=error,
        label=label,
        status=None
        if status is None
        else frozenset([status] if isinstance(status, int) else status),
        code=None if code is None else frozenset([code] if isinstance(code, str) else code),
        when=frozenset(when),
        unless=frozenset(unless),
        message=None if message is None else re.compile(message, re.IGNORECASE | re.DOTALL),
        transient=transient,
    )


def classify(
    table: Sequence[Rule],
    status: int | None,
    code: str = "",
    *,
    conditional: bool = False,
    flags: Iterable[str] = (),
    message: str = "",
) -> Rule:
    """The first row of ``table`` that covers an answer.

    Args:
        table: The provider's rows, most specific first, ending with a row that matches
            anything.
        status: The HTTP status, if any.
        code: The service's error code ("" when none).
        conditional: The request carried a create-only precondition (sets flag
            ``"conditional"``).
        flags: Other facts about the request (``"reading"``, ``"object"``, ...).
        message: The server's message, for rows with a ``message`` pattern.

    Raises:
        LookupError: No row matched (a table without a catch-all row).
    """
    facts = frozenset(flags) | ({"conditional"} if conditional else frozenset())
    for row in table:
        if row.matches(status, code, facts, message):
            return row
    raise LookupError(f"no error rule covers status {status} code {code!r}")


# -- lost answers ------------------------------------------------------------------------------

# Sends of the conditional request in flight in this task (see note_send). None outside
# InDoubt.run.
_SENDS: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar(
    "artifact_uploader_conditional_sends", default=None
)


def note_send() -> None:
    """Count one send of the conditional request in flight (a transport hook calls it).

    aiohttp resends an idempotent request (PUT) once by itself when its connection drops,
    invisibly to the SDK above it: a second send inside one :meth:`InDoubt.run` means the answer
    may be to a resend, so "already exists" may be our own first send. Outside ``run`` it does
    nothing.
    """
    sends = _SENDS.get()
    if sends is not None:
        sends[0] += 1


async def count_conditional_send(session: Any, context: Any, params: Any) -> None:
    """aiohttp trace hook (``on_request_headers_sent``): :func:`note_send` for every request
    that carries ``If-None-Match``."""
    if "If-None-Match" in params.headers:
        note_send()


def _is_exists(error: ProviderError) -> bool:
    return isinstance(error, ObjectExistsError)


class InDoubt:
    """Conditional writes whose outcome is unknown, remembered across the engine's retries.

    A request stays "in doubt" from its send until it is settled: a success, or an error that is
    not transient. When a send that is a resend (the key was already in doubt, or the transport
    sent it twice) meets a conflict ("already exists"), the earlier send may have landed with its
    answer lost: ``landed`` then checks whether the stored object is ours.
    """

    __slots__ = ("_keys",)

    def __init__(self) -> None:
        self._keys: set[Hashable] = set()

    def __repr__(self) -> str:
        return f"InDoubt(<{len(self._keys)} in doubt>)"

    def clear(self) -> None:
        """Forget every request (the provider closed)."""
        self._keys.clear()

    async def run(
        self,
        key: Hashable,
        send: Callable[[], Awaitable[T]],
        landed: Callable[[], Awaitable[T | None]],
        *,
        what: str,
        conflict: Callable[[ProviderError], bool] = _is_exists,
    ) -> T:
        """Run ``send``; a conflict on a resend is checked with ``landed``.

        Args:
            key: Identifies the request across retries (e.g. ``("put", key, path, offset,
                length)``).
            send: The request; raises :class:`ProviderError` (already mapped).
            landed: The result of the earlier send if the stored object is it, else None. An
                exception it raises counts as "cannot tell" (logged, the conflict stands).
            what: The object's URI, for the log.
            conflict: Which errors may be our own earlier send (default: ObjectExistsError).

        Raises:
            ProviderError: What ``send`` raised, unless ``landed`` found the object ours.
        """
        resent = key in self._keys
        self._keys.add(key)
        sends = [0]
        counting = _SENDS.set(sends)
        try:
            result = await send()
        except ProviderError as exc:
            if (resent or sends[0] > 1) and conflict(exc):
                found = await _check_landed(landed, what)
                if found is not None:
                    self._keys.discard(key)
                    return found
            if not exc.transient:
                self._keys.discard(key)
            raise
        finally:
            _SENDS.reset(counting)
        self._keys.discard(key)
        return result


async def _check_landed(landed: Callable[[], Awaitable[T | None]], what: str) -> T | None:
    try:
        found = await landed()
    except Exception as exc:
        log.debug("could not check whether %s landed: %s", what, type(exc).__name__)
        return None
    if found is not None:
        log.info("%s: an earlier attempt had stored it (its answer was lost)", what)
    return found


# -- bodies ------------------------------------------------------------------------------------


class Hasher(Protocol):
    """A running digest: hashlib's objects, google-crc32c's ``Checksum``, botocore's CRT ones."""

    def update(self, data: bytes, /) -> Any:
        """Feed bytes."""
        ...

    def digest(self) -> bytes:
        """The digest so far."""
        ...


def md5() -> Hasher:
    """A new MD5 (an integrity check, not security)."""
    return hashlib.md5(usedforsecurity=False)


def b64(digest: bytes) -> str:
    """Base64 of a raw digest, as the stores write checksums."""
    return base64.b64encode(digest).decode("ascii")


def b64_length(value: str) -> int:
    """Decoded length of base64 ``value``, or -1 when it is not valid base64."""
    try:
        return len(base64.b64decode(value, validate=True))
    except ValueError:
        return -1


def hash_slice(data: FileSlice, *hashers: Hasher) -> None:
    """Feed the slice to ``hashers``, read from disk in 1 MiB chunks (blocking: run it in a
    worker thread).

    Raises:
        OSError: The file is shorter than the slice, or cannot be read.
    """
    with open(data.path, "rb") as f:
        f.seek(data.offset)
        left = data.length
        while left:
            chunk = f.read(min(MiB, left))
            if not chunk:
                raise OSError(f"{data.path} is shorter than {data.offset + data.length} bytes")
            for hasher in hashers:
                hasher.update(chunk)
            left -= len(chunk)
            # Hashing a large file is work for this attempt: keep the stall watchdog informed.
            note_progress()


def read_hashed_sync(data: FileSlice, *hashers: Hasher) -> bytes:
    """The slice's bytes, fed to ``hashers`` (blocking)."""
    body = data.read_sync()
    for hasher in hashers:
        hasher.update(body)
    return body


async def read_hashed(data: FileSlice, *hashers: Hasher) -> bytes:
    """The slice's bytes, fed to ``hashers``: on the loop up to :data:`INLINE_LIMIT`, else in
    a worker thread (hashlib and google-crc32c release the GIL)."""
    if data.length <= INLINE_LIMIT:
        return read_hashed_sync(data, *hashers)
    import anyio.to_thread

    return await anyio.to_thread.run_sync(lambda: read_hashed_sync(data, *hashers))
