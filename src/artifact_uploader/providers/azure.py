"""Azure Blob Storage (``az://container/prefix``) over ``azure.storage.blob.aio``.

Objects are block blobs. A small object is one Put Blob request carrying its Content-MD5, which the
service checks on arrival; the MD5 the service reports back is compared with ours. A multipart
upload maps onto blocks: ``create_multipart`` only chooses a random block-id prefix (Azure has no
upload session), ``put_part`` is Put Block, ``complete_multipart`` is Put Block List, which
publishes the whole blob atomically. ``overwrite=False`` is ``If-None-Match: *`` on the request
that publishes the blob, so two writers racing for one name cannot both win.

The SDK's own retry policy is turned off: the engine retries the errors marked transient, and two
layers of retries would multiply the attempts and hide the delays from the engine.

Integrity: a result claims an MD5 only when the service echoed the same one. An MD5 that differs
deletes the blob just written (if it still has that ETag) and is a transient
:class:`IntegrityError`. Downloads verify against the blob's Content-MD5 (computed by the service
on Put Blob; set from ours on the block-list commit of a large put) or, for an engine multipart
upload, the composite MD5 (MD5 of the blocks' MD5s, S3's rule) recorded in the blob's metadata.

Reading back: ``head`` (properties), ``get_range`` (one ranged GET, ``If-Match`` when an ETag is
given), ``list`` (paged by the SDK, sorted), ``delete`` (snapshots too; a missing blob is fine).

Security: redirects are never followed (``permit_redirects=False``; a 3xx is a permanent error
naming its Location); plain HTTP to a host other than this machine needs ``allow_http=True``;
errors, their cause chains and the response text azure-core prints with them are scrubbed by the
one redaction path (:mod:`~artifact_uploader.providers._redact`).
"""

from __future__ import annotations

import asyncio
import base64
import contextvars
import hashlib
import importlib.util
import logging
import os
import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import aiohttp
import anyio.to_thread
from azure.core import exceptions as azure_exc
from azure.storage.blob import BlobBlock
from azure.storage.blob.aio import BlobServiceClient

from .._errors import (
    ConfigError,
    IntegrityError,
    InvalidObjectNameError,
    ObjectExistsError,
    ObjectNotFoundError,
    PermissionDeniedError,
    ProviderError,
    StoreNotFoundError,
)
from .._retry import note_progress
from .._types import FileSlice, PartResult, PutResult
from ._body import Body
from ._protocol import (
    Checksum,
    MiB,
    ObjectInfo,
    PartLimits,
    check_common_name,
    check_plain_http,
    join_key,
    parse_retry_after,
    split_store_uri,
)
from ._redact import Redactor, install_log_filter

# Azure's limits for block blobs (service versions 2019-12-12 and later).
_MAX_BLOCK_SIZE = 4000 * MiB
_MAX_BLOCKS = 50_000
_MAX_NAME_CHARS = 1024
_MAX_SEGMENTS = 254
# Up to this size a plain put is one Put Blob request (the service takes up to 5000 MiB, but the
# SDK needs the body in memory); above it, put streams the file as blocks inside the one call.
_SINGLE_PUT_MAX = 256 * MiB
_PUT_BLOCK_SIZE = 64 * MiB
# Hashing on the loop costs less than a thread hop for small bodies (same limit as FileSlice).
_INLINE_HASH_LIMIT = 256 * 1024

# Block ids must all have the same length within one blob: a fixed-width prefix and part number.
_UPLOAD_ID_RE = re.compile(r"^[0-9a-f]{16}$")
_PART_DIGITS = 5

_DEFAULT_SUFFIX = "blob.core.windows.net"
# Hosts under these suffixes address the account by subdomain; any other host (Azurite, IoT Edge)
# puts the account name first in the path, as libcloud (the seed's backend) does.
_CLOUD_SUFFIXES = (
    "blob.core.windows.net",
    "blob.core.chinacloudapi.cn",
    "blob.core.usgovcloudapi.net",
    "blob.core.cloudapi.de",
)
# A container name: 3-63 lowercase letters, digits and single hyphens; "$root"/"$web" are special.
_CONTAINER_RE = re.compile(r"^(?=.{3,63}$)[a-z0-9](?:-?[a-z0-9])*$")
_SPECIAL_CONTAINERS = frozenset({"$root", "$web", "$logs"})

_TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_TRANSIENT_CODES = frozenset({"ServerBusy", "OperationTimedOut", "InternalError"})
_EXISTS_CODES = frozenset({"BlobAlreadyExists", "ConditionNotMet"})
log = logging.getLogger("artifact_uploader")
# Conditional (If-None-Match) sends of the request in flight in this task. aiohttp resends an
# idempotent request (PUT) once by itself when its connection drops, invisibly to the SDK; a
# count of 2 means the answer is to a resend, so "already exists" may be our own first send.
_CONDITIONAL_SENDS: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar(
    "artifact_uploader_azure_conditional_sends", default=None
)


async def _count_conditional_send(session: Any, context: Any, params: Any) -> None:
    sends = _CONDITIONAL_SENDS.get()
    if sends is not None and "If-None-Match" in params.headers:
        sends[0] += 1


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
# Blob metadata holding the composite MD5 of a multipart upload: "<base64>:<part size>:<parts>".
_COMPOSITE_MD5_KEY = "artifact_uploader_md5_parts"

_OPTION_NAMES = frozenset(
    {
        "connection_string",
        "account_name",
        "account_key",
        "account_url",
        "sas_token",
        "credential",
        "connection_timeout",
        "read_timeout",
        "allow_http",
        # The seed's (libcloud) provider_kwargs.
        "key",
        "secret",
        "secure",
        "host",
        "port",
        "region",
        "api_version",
    }
)


def _make_transport(
    base: type[Any], session: aiohttp.ClientSession, timeouts: Mapping[str, Any]
) -> Any:
    """The SDK's aiohttp transport, sending in-memory bodies as :class:`Body`.

    The SDK hands aiohttp blocks as plain bytes; aiohttp warns (ResourceWarning) for every body
    over 1 MiB and writes it in one piece. Ours were read off the loop already, so Body sends
    them in slices without the warning, ticking the stall watchdog as each slice leaves.
    """

    class Transport(base):  # type: ignore[misc]
        def _get_request_data(self, request: Any) -> Any:
            data = super()._get_request_data(request)
            if isinstance(data, bytes | bytearray | memoryview) and len(data) > 1024 * 1024:
                return Body(memoryview(data))
            return data

    return Transport(session=session, **timeouts)


class AzureProvider:
    """Writes block blobs into one Azure Storage container.

    Give exactly one way to authenticate: ``connection_string``; ``account_key`` (with
    ``account_name``); ``sas_token``; or ``credential`` (any azure-core async token credential).
    With none of them, ``AZURE_STORAGE_CONNECTION_STRING`` is used when set, else
    ``azure.identity.aio.DefaultAzureCredential`` (needs the ``azure-identity`` package).

    Args:
        container: The container's name.
        prefix: Folder inside the container that object names are relative to. Default "".
        account_name: The storage account. Needed unless a connection string or ``account_url``
            names it.
        account_key: The account's shared key. Secret: never shown.
        account_url: The blob endpoint, e.g. ``https://acct.blob.core.windows.net`` or, for
            Azurite, ``http://127.0.0.1:10000/devstoreaccount1``. Default: derived from
            ``account_name``.
        connection_string: A storage connection string. Secret: never shown.
        sas_token: A shared access signature (account or container scope). Secret: never shown.
        credential: An async token credential object (e.g. from ``azure.identity.aio``).
        api_version: Storage service version to speak. Default: the SDK's newest.
        connection_timeout: Seconds to wait for a connection. Default: the SDK's 20.
        read_timeout: Seconds to wait between bytes of a response. Default: the SDK's 60.
        allow_http: Allow a plain ``http://`` endpoint on a host other than this machine.
            Default False: the shared key's signatures, SAS tokens and data would cross the
            network unencrypted. Loopback (Azurite) needs no flag.

    Redirects are never followed: a 3xx answer is a permanent :class:`ProviderError` naming
    where it pointed, and nothing is sent there.
    """

    scheme = "az"

    def __init__(
        self,
        container: str,
        prefix: str = "",
        *,
        account_name: str | None = None,
        account_key: str | None = None,
        account_url: str | None = None,
        connection_string: str | None = None,
        sas_token: str | None = None,
        credential: Any = None,
        api_version: str | None = None,
        connection_timeout: float | None = None,
        read_timeout: float | None = None,
        allow_http: bool = False,
    ) -> None:
        _check_container(container)
        if not isinstance(allow_http, bool):
            raise ConfigError(f"Azure: option 'allow_http' must be a bool, got {allow_http!r}")
        given = [
            label
            for label, value in (
                ("connection_string", connection_string),
                ("account_key", account_key),
                ("sas_token", sas_token),
                ("credential", credential),
            )
            if value is not None
        ]
        if len(given) > 1:
            raise ConfigError(f"Azure: give one way to authenticate, not {' and '.join(given)}")
        if connection_string is None and not given:
            # The SDK's tools and samples read this variable; honour it when nothing else is given.
            connection_string = os.environ.get("AZURE_STORAGE_CONNECTION_STRING") or None
        if connection_string is not None and account_url is not None:
            raise ConfigError("Azure: a connection string names its own endpoint; drop account_url")
        if connection_string is not None:
            parsed_name = _connection_string_account(connection_string)
            if account_name is not None and parsed_name and account_name != parsed_name:
                raise ConfigError(
                    f"Azure: account_name {account_name!r} differs from the connection string's"
                )
            account_name = account_name or parsed_name
        elif account_url is None:
            if not account_name:
                raise ConfigError(
                    "Azure: no account given: pass account_name, account_url or connection_string"
                )
            account_url = f"https://{account_name}.{_DEFAULT_SUFFIX}"
        else:
            account_url = account_url.rstrip("/")
            parts = urlsplit(account_url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ConfigError(f"Azure: account_url must be an http(s) URL, got {account_url!r}")
            if parts.query:
                raise ConfigError("Azure: pass the SAS token as sas_token, not in account_url")
            account_name = account_name or _url_account(account_url)
        if account_key is not None and not account_name:
            raise ConfigError("Azure: account_key needs account_name")
        if (
            connection_string is None
            and account_key is None
            and sas_token is None
            and credential is None
            and importlib.util.find_spec("azure.identity") is None
        ):
            raise ConfigError(
                "Azure: no credentials given and azure-identity is not installed for "
                "DefaultAzureCredential: pass connection_string, account_key or sas_token, "
                "or `pip install azure-identity`"
            )

        endpoint = (
            _connection_string_endpoint(connection_string)
            if connection_string is not None
            else account_url
        )
        if endpoint is not None:
            check_plain_http(endpoint, label="Azure", allow_http=allow_http, what="blob endpoint")
        self.allow_http = allow_http
        self.container = container
        self.prefix = prefix.strip("/")
        self.account_name = account_name
        self.account_url = account_url
        self.api_version = api_version
        self._account_key = account_key
        self._connection_string = connection_string
        self._sas_token = sas_token.lstrip("?") if sas_token else None
        self._credential = credential
        self._owned_credential: Any = None
        self._timeouts = {
            k: v
            for k, v in (("connection_timeout", connection_timeout), ("read_timeout", read_timeout))
            if v is not None
        }
        self._service: Any = None
        self._container: Any = None
        # Uploads sent whose outcome is unknown (no answer, or a transient error): if the
        # engine's retry of one meets "already exists", the first send may have landed.
        self._in_doubt: set[tuple[object, ...]] = set()
        # Block sizes of engine multipart uploads in progress, for the composite MD5 recorded
        # at commit: {upload id: {part number: (size, md5)}}.
        self._parts: dict[str, dict[int, tuple[int, bytes]]] = {}
        # The one redaction path: the key, SAS and connection string, anything shaped like a
        # SAS signature, an account key or a bearer token.
        self._redactor = Redactor((account_key, self._sas_token, connection_string))
        self._log_filter: Callable[[], None] | None = None

    def __repr__(self) -> str:
        return (
            f"AzureProvider(account={self.account_name!r}, container={self.container!r}, "
            f"prefix={self.prefix!r})"
        )

    @classmethod
    def from_uri(cls, uri: str, options: Mapping[str, Any] | None = None) -> AzureProvider:
        """Build from ``az://container/prefix`` and options.

        Options: ``connection_string``, ``account_name``, ``account_key``, ``account_url``,
        ``sas_token``, ``credential``, ``api_version``, ``connection_timeout``, ``read_timeout``,
        and the seed's keys: ``key`` (account name), ``secret`` (account key), ``host``, ``port``
        and ``secure`` (which together make the account URL) and ``region`` (ignored).

        Raises:
            ConfigError: Malformed URI, unknown or conflicting options.
        """
        parts = split_store_uri(uri, "az", "Azure")
        container = unquote(parts.netloc)
        prefix = unquote(parts.path).strip("/")
        opts = dict(options or {})
        unknown = sorted(set(opts) - _OPTION_NAMES)
        if unknown:
            raise ConfigError(
                f"unknown option(s) for the Azure store: {unknown}; known: {sorted(_OPTION_NAMES)}"
            )
        account_name = _merge(opts, "account_name", "key")
        account_key = _merge(opts, "account_key", "secret")
        # Azure accounts live in one region, which the endpoint already names.
        opts.pop("region", None)
        host = opts.pop("host", None)
        port = opts.pop("port", None)
        secure = opts.pop("secure", None)
        account_url = opts.pop("account_url", None)
        if host is not None or port is not None or secure is not None:
            if account_url is not None:
                raise ConfigError("Azure: give account_url or host/port/secure, not both")
            if opts.get("connection_string") is not None:
                raise ConfigError("Azure: a connection string names its own endpoint; drop host")
            account_url = _url_from_host(account_name, host, port, secure)
        return cls(
            container,
            prefix,
            account_name=account_name,
            account_key=account_key,
            account_url=account_url,
            connection_string=opts.pop("connection_string", None),
            sas_token=opts.pop("sas_token", None),
            credential=opts.pop("credential", None),
            api_version=opts.pop("api_version", None),
            connection_timeout=opts.pop("connection_timeout", None),
            read_timeout=opts.pop("read_timeout", None),
            allow_http=opts.pop("allow_http", False),
        )

    @property
    def part_limits(self) -> PartLimits:
        """Azure's block limits (a block may be 1 byte; smaller than 1 MiB only wastes requests)."""
        return PartLimits(
            min_part_size=1 * MiB, max_part_size=_MAX_BLOCK_SIZE, max_parts=_MAX_BLOCKS
        )

    def uri(self, name: str) -> str:
        """``az://container/prefix/name``."""
        return f"az://{self.container}/{join_key(self.prefix, name)}"

    def check_name(self, name: str) -> None:
        """Refuse names Azure cannot hold or would alter.

        Raises:
            InvalidObjectNameError: Empty, NUL, over 1024 characters or 254 segments (with the
                prefix), ending in a dot or slash, or with ``.``/``..`` segments that URL
                normalisation would fold away.
        """
        # Azure counts characters, not bytes; a character is at most 4 bytes of UTF-8.
        check_common_name(name, max_bytes=4 * _MAX_NAME_CHARS)
        key = join_key(self.prefix, name)
        if len(key) > _MAX_NAME_CHARS:
            raise InvalidObjectNameError(
                name[:64] + "...",
                f"{len(key)} characters with the prefix, Azure's limit is {_MAX_NAME_CHARS}",
            )
        if key.count("/") + 1 > _MAX_SEGMENTS:
            raise InvalidObjectNameError(name, f"more than {_MAX_SEGMENTS} path segments")
        if name.endswith((".", "/")):
            raise InvalidObjectNameError(name, "Azure blob names must not end with '.' or '/'")
        if any(s in (".", "..") for s in name.split("/")):
            raise InvalidObjectNameError(
                name, "'.' and '..' segments are folded away by URL normalisation"
            )

    # -- lifecycle ----------------------------------------------------------------------------

    async def open(self, *, verify: bool = True) -> None:
        """Create the clients on the running loop; when ``verify``, read the container's properties.

        Raises:
            StoreNotFoundError: The container does not exist.
            PermissionDeniedError: The credentials were refused.
            ConfigError: The SDK refused the configuration (e.g. an unknown api_version).
        """
        if self._service is not None:
            return
        kwargs: dict[str, Any] = {
            # The engine retries; see the module docstring.
            "retry_total": 0,
            # A redirect could send the request (and a SAS in its URL) elsewhere: never follow.
            "permit_redirects": False,
            # upload_blob splits bodies above this into blocks; keep every put one request.
            "max_single_put_size": _SINGLE_PUT_MAX,
            # Likewise a ranged read: one get_range is one GET (the engine sizes the ranges).
            "max_single_get_size": _SINGLE_PUT_MAX,
            **self._timeouts,
        }
        if self.api_version is not None:
            kwargs["api_version"] = self.api_version
        from azure.core.pipeline.transport import AioHttpTransport

        # The SDK's own session settings, plus a trace that counts conditional sends.
        trace = aiohttp.TraceConfig()
        trace.on_request_headers_sent.append(_count_conditional_send)
        session = aiohttp.ClientSession(
            trust_env=True,
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            trace_configs=[trace],
        )
        kwargs["transport"] = _make_transport(AioHttpTransport, session, self._timeouts)
        try:
            if self._connection_string is not None:
                service = BlobServiceClient.from_connection_string(
                    self._connection_string, **kwargs
                )
            else:
                # __init__ always sets an account_url when there is no connection string.
                assert self.account_url is not None
                service = BlobServiceClient(
                    self.account_url, credential=self._make_credential(), **kwargs
                )
        except (ValueError, TypeError) as exc:
            await session.close()
            await self._close_credential()
            # The SDK's message may quote the connection string; say only what was wrong.
            message = self._redactor.scrub(str(exc)).splitlines()[0]
            raise ConfigError(f"Azure: {message}") from None
        self._service = service
        # DEBUG logs of the SDK (azure-core logs URLs and headers) are scrubbed too.
        self._log_filter = install_log_filter(self._redactor, ("azure", "aiohttp"))
        self._container = service.get_container_client(self.container)
        if verify:
            try:
                await self._container.get_container_properties()
            except Exception as exc:
                error = self._map(exc, None, "opening")
                await self.aclose()
                raise error from exc

    def _make_credential(self) -> Any:
        if self._account_key is not None:
            return {"account_name": self.account_name, "account_key": self._account_key}
        if self._sas_token is not None:
            return self._sas_token
        if self._credential is not None:
            return self._credential
        try:
            from azure.identity.aio import DefaultAzureCredential
        except ImportError as exc:  # pragma: no cover - checked in __init__
            raise ConfigError(f"Azure: azure-identity cannot be imported ({exc})") from None
        self._owned_credential = DefaultAzureCredential()
        return self._owned_credential

    async def aclose(self) -> None:
        """Close the clients (and a credential this provider created). Idempotent."""
        service, self._service, self._container = self._service, None, None
        self._in_doubt.clear()
        log_filter, self._log_filter = self._log_filter, None
        if log_filter is not None:
            log_filter()
        if service is not None:
            await service.close()
        await self._close_credential()

    async def _close_credential(self) -> None:
        credential, self._owned_credential = self._owned_credential, None
        if credential is not None:
            await credential.close()

    # -- requests -----------------------------------------------------------------------------

    def _blob(self, name: str) -> Any:
        if self._container is None:
            raise ProviderError(
                f"{self!r} is not open (call open() first, or it was closed)",
                name=name,
                uri=self.uri(name),
            )
        return self._container.get_blob_client(join_key(self.prefix, name))

    async def put(self, name: str, data: FileSlice, *, overwrite: bool) -> PutResult:
        """Write ``data`` as blob ``name`` in one Put Blob request with its Content-MD5.

        Bodies over 256 MiB are sent as 64 MiB blocks and committed in one Put Block List, so
        they need not sit in memory whole.

        Raises:
            ObjectExistsError: ``overwrite`` is False and the blob exists.
            IntegrityError: The MD5 the service computed differs from ours.
            ProviderError: Any other failure, ``transient`` set when a retry may help.
        """
        # Our earlier send of this very upload may have been stored with its answer lost: then
        # the blob is ours (same size and Content-MD5), not a conflict.
        return await self._guard_lost_answer(
            ("put", name, str(data.path), data.offset, data.length),
            lambda: self._put_once(name, data, overwrite=overwrite),
            lambda: self._landed(name, data=data),
        )

    async def _guard_lost_answer(
        self,
        token: tuple[Any, ...],
        send: Callable[[], Awaitable[PutResult]],
        landed: Callable[[], Awaitable[PutResult | None]],
    ) -> PutResult:
        """Run a conditional write; an "exists" answer to a resend is checked with ``landed``.

        ``token`` identifies the request across the engine's retries: a request whose outcome
        was unknown (no answer, a transient error) stays "in doubt" until it is settled.
        """
        resent = token in self._in_doubt
        self._in_doubt.add(token)
        sends = [0]
        counting = _CONDITIONAL_SENDS.set(sends)
        try:
            result = await send()
        except ProviderError as exc:
            if (resent or sends[0] > 1) and isinstance(exc, ObjectExistsError):
                found = await landed()
                if found is not None:
                    self._in_doubt.discard(token)
                    return found
            if not exc.transient:
                self._in_doubt.discard(token)
            raise
        finally:
            _CONDITIONAL_SENDS.reset(counting)
        self._in_doubt.discard(token)
        return result

    async def _landed(
        self,
        name: str,
        *,
        data: FileSlice | None = None,
        block_ids: list[str] | None = None,
    ) -> PutResult | None:
        """The result of an earlier send whose answer was lost, if the stored blob is it: the
        size and Content-MD5 of ``data``, or exactly our committed ``block_ids`` (their ids
        carry this upload's random prefix). None on any mismatch or doubt."""
        blob = self._blob(name)
        md5: bytes | None = None
        try:
            props = await blob.get_blob_properties()
            if data is not None and props.size != data.length:
                return None
            if block_ids is not None:
                committed, _ = await blob.get_block_list("committed")
                if [b.id for b in committed] != block_ids:
                    return None
            elif data is not None:
                stored = props.content_settings.content_md5
                ours = await anyio.to_thread.run_sync(_md5_of, data)
                if not stored or bytes(stored) != ours:
                    return None
                # Put Blob's Content-MD5 is the service's own computation: a confirmation. A
                # large put's is the value we sent with the block list: not one.
                md5 = ours if data.length <= _SINGLE_PUT_MAX else None
        except Exception as exc:
            log.debug("could not check whether %r landed: %s", name, type(exc).__name__)
            return None
        log.info("%s: an earlier attempt had stored it (its answer was lost)", self.uri(name))
        return PutResult(
            etag=props.etag,
            version=getattr(props, "version_id", None),
            checksum_algorithm=None if md5 is None else "md5",
            checksum=None if md5 is None else _b64(md5),
        )

    async def _put_once(self, name: str, data: FileSlice, *, overwrite: bool) -> PutResult:
        blob = self._blob(name)
        if data.length > _SINGLE_PUT_MAX:
            return await self._put_blocks(name, blob, data, overwrite=overwrite)
        body, md5 = await _read_and_hash(data)
        try:
            # Put Blob records the MD5 the service computes as the blob's Content-MD5 (what
            # downloads verify against); it is not set from ours, so it stays the service's own.
            resp = await blob.upload_blob(
                body,
                length=len(body),
                overwrite=overwrite,
                max_concurrency=1,
                # Sent as Content-MD5: the service refuses the body if it arrives different.
                transactional_content_md5=md5,
            )
        except Exception as exc:
            raise self._map(exc, name, "uploading", conditional=not overwrite) from exc
        confirmed = await self._check_md5(
            name, md5, resp.get("content_md5"), blob=blob, etag=resp.get("etag")
        )
        return PutResult(
            etag=resp.get("etag"),
            version=resp.get("version_id"),
            checksum_algorithm="md5" if confirmed else None,
            checksum=_b64(md5) if confirmed else None,
        )

    async def _put_blocks(
        self, name: str, blob: Any, data: FileSlice, *, overwrite: bool
    ) -> PutResult:
        upload_id = _new_upload_id()
        whole = hashlib.md5(usedforsecurity=False)
        block_ids = []
        every_block_confirmed = True
        offset, end, part = data.offset, data.offset + data.length, 1
        while offset < end:
            piece = FileSlice(data.path, offset, min(_PUT_BLOCK_SIZE, end - offset))
            body, md5 = await _read_and_hash(piece, whole)
            block_id, confirmed = await self._stage(name, blob, upload_id, part, body, md5)
            block_ids.append(block_id)
            every_block_confirmed &= confirmed
            note_progress()
            offset += piece.length
            part += 1
        # The whole MD5 is recorded either way (downloads verify against it); the result
        # claims it only when the service confirmed every block's MD5.
        return await self._commit(
            name,
            blob,
            block_ids,
            overwrite=overwrite,
            md5=whole.digest(),
            claim=every_block_confirmed,
        )

    async def create_multipart(self, name: str, *, overwrite: bool) -> str:
        """Choose the block-id prefix of a new upload.

        With ``overwrite`` False, one request checks the blob is absent so a large upload fails
        before it starts; the commit is conditional all the same.

        Raises:
            ObjectExistsError: ``overwrite`` is False and the blob already exists.
        """
        blob = self._blob(name)
        if not overwrite:
            try:
                await blob.get_blob_properties()
            except azure_exc.ResourceNotFoundError as exc:
                if _code(exc) != "BlobNotFound":
                    raise self._map(exc, name, "checking") from exc
            except Exception as exc:
                raise self._map(exc, name, "checking") from exc
            else:
                raise self._exists(name)
        return _new_upload_id()

    async def put_part(
        self, name: str, upload_id: str, part_number: int, data: FileSlice
    ) -> PartResult:
        """Stage block ``part_number`` (Put Block, with Content-MD5).

        Raises:
            IntegrityError: The MD5 the service computed differs from ours.
            ProviderError: A malformed upload id or part number, or the request failed.
        """
        blob = self._blob(name)
        if not _UPLOAD_ID_RE.match(upload_id):
            raise ProviderError(
                f"not an Azure upload id: {upload_id!r}", name=name, uri=self.uri(name)
            )
        if not 1 <= part_number <= _MAX_BLOCKS:
            raise ProviderError(
                f"part number {part_number} outside 1..{_MAX_BLOCKS}", name=name, uri=self.uri(name)
            )
        body, md5 = await _read_and_hash(data)
        block_id, _ = await self._stage(name, blob, upload_id, part_number, body, md5)
        # Sizes and digests for the composite MD5 recorded at commit.
        self._parts.setdefault(upload_id, {})[part_number] = (len(body), md5)
        return PartResult(part_number, block_id, _b64(md5))

    async def _stage(
        self, name: str, blob: Any, upload_id: str, part_number: int, body: bytes, md5: bytes
    ) -> tuple[str, bool]:
        """Put Block with its Content-MD5; returns the block id and whether the service echoed
        the same MD5."""
        block_id = f"{upload_id}-{part_number:0{_PART_DIGITS}d}"
        try:
            # The SDK base64-encodes the id; ids of one blob must be equally long, hence the
            # fixed-width prefix and number.
            resp = await blob.stage_block(
                block_id, body, length=len(body), transactional_content_md5=md5
            )
        except Exception as exc:
            raise self._map(exc, name, f"uploading block {part_number} of") from exc
        # An uncommitted block needs no clean-up: the next commit or 7 days drop it.
        return block_id, await self._check_md5(name, md5, resp.get("content_md5"))

    async def complete_multipart(
        self, name: str, upload_id: str, parts: Sequence[PartResult], *, overwrite: bool
    ) -> PutResult:
        """Commit the staged blocks in part order (Put Block List): the blob appears whole.

        Raises:
            ObjectExistsError: ``overwrite`` is False and the blob exists.
            ProviderError: A part from another upload, a repeated part, or the request failed.
        """
        blob = self._blob(name)
        ordered = sorted(parts, key=lambda p: p.part_number)
        block_ids = []
        for i, p in enumerate(ordered):
            if i and p.part_number == ordered[i - 1].part_number:
                raise ProviderError(
                    f"part {p.part_number} listed twice", name=name, uri=self.uri(name)
                )
            if p.etag != f"{upload_id}-{p.part_number:0{_PART_DIGITS}d}":
                raise ProviderError(
                    f"part {p.part_number} does not belong to upload {upload_id!r}",
                    name=name,
                    uri=self.uri(name),
                )
            block_ids.append(p.etag)
        metadata = self._composite_md5(upload_id, ordered)
        # An earlier commit of this upload may have succeeded with its answer lost.
        result = await self._guard_lost_answer(
            ("complete", upload_id),
            lambda: self._commit(
                name, blob, block_ids, overwrite=overwrite, md5=None, metadata=metadata
            ),
            lambda: self._landed(name, block_ids=block_ids),
        )
        self._parts.pop(upload_id, None)
        return result

    def _composite_md5(self, upload_id: str, parts: Sequence[PartResult]) -> dict[str, str]:
        """Blob metadata recording the MD5 of the parts' concatenated MD5s (S3's multipart
        ETag rule), with the part size, so a download can be verified; empty when this
        provider did not stage every part itself or the parts are not equal-sized."""
        staged = self._parts.get(upload_id, {})
        sizes: list[int] = []
        digests = b""
        for p in parts:
            if p.part_number not in staged:
                return {}
            size, md5 = staged[p.part_number]
            if p.checksum != _b64(md5):
                return {}
            sizes.append(size)
            digests += md5
        if not sizes or any(size != sizes[0] for size in sizes[:-1]) or sizes[-1] > sizes[0]:
            return {}
        value = _b64(hashlib.md5(digests, usedforsecurity=False).digest())
        return {_COMPOSITE_MD5_KEY: f"{value}:{sizes[0]}:{len(sizes)}"}

    async def _commit(
        self,
        name: str,
        blob: Any,
        block_ids: list[str],
        *,
        overwrite: bool,
        md5: bytes | None,
        claim: bool = False,
        metadata: dict[str, str] | None = None,
    ) -> PutResult:
        kwargs: dict[str, Any] = {}
        if not overwrite:
            kwargs["if_none_match"] = "*"
        if metadata:
            kwargs["metadata"] = metadata
        if md5 is not None:
            from azure.storage.blob import ContentSettings

            # Stored as the blob's Content-MD5 so readers can check what they download.
            kwargs["content_settings"] = ContentSettings(content_md5=bytearray(md5))
        try:
            resp = await blob.commit_block_list(
                [BlobBlock(block_id=b) for b in block_ids], **kwargs
            )
        except Exception as exc:
            raise self._map(exc, name, "committing", conditional=not overwrite) from exc
        claimed = md5 is not None and claim
        return PutResult(
            etag=resp.get("etag"),
            version=resp.get("version_id"),
            checksum_algorithm="md5" if claimed else None,
            checksum=_b64(md5) if claimed and md5 is not None else None,
        )

    async def abort_multipart(self, name: str, upload_id: str) -> None:
        """Nothing to send: uncommitted blocks are dropped by the next commit or expire in 7 days.

        Deleting them would mean deleting the blob, which may hold an older committed version.
        """
        self._parts.pop(upload_id, None)
        return None

    # -- the read side ------------------------------------------------------------------------

    def _object_info(self, name: str, props: Any) -> ObjectInfo:
        """A blob's properties (from the service: untrusted) as an :class:`ObjectInfo`."""
        size = getattr(props, "size", None)
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ProviderError(
                f"Azure: the service reported no valid size for {self.uri(name)!r}",
                name=name,
                uri=self.uri(name),
            )
        checksums: list[Checksum] = []
        settings = getattr(props, "content_settings", None)
        md5 = getattr(settings, "content_md5", None)
        if md5:
            digest = bytes(md5)
            if len(digest) != 16:
                raise ProviderError(
                    f"Azure: the service reported a malformed Content-MD5 for {self.uri(name)!r}",
                    name=name,
                    uri=self.uri(name),
                )
            checksums.append(Checksum("md5", _b64(digest)))
        else:
            composite = _parse_composite(getattr(props, "metadata", None), size)
            if composite is not None:
                checksums.append(composite)
        etag = getattr(props, "etag", None)
        version = getattr(props, "version_id", None)
        last_modified = getattr(props, "last_modified", None)
        return ObjectInfo(
            name=name,
            size=size,
            etag=etag if isinstance(etag, str) else None,
            version=version if isinstance(version, str) else None,
            last_modified=last_modified if isinstance(last_modified, datetime) else None,
            checksums=tuple(checksums),
        )

    async def head(self, name: str) -> ObjectInfo:
        """What Azure records about ``name``: size, ETag, version id, last modified and its
        Content-MD5 (whole object; set on every blob this library writes in one piece), or for
        a multipart upload, the composite MD5 recorded in its metadata.

        Raises:
            ObjectNotFoundError: No such blob.
            StoreNotFoundError: No such container.
        """
        blob = self._blob(name)
        try:
            props = await blob.get_blob_properties()
        except Exception as exc:
            raise self._map(exc, name, "reading", reading=True) from exc
        return self._object_info(name, props)

    async def get_range(
        self, name: str, offset: int, length: int, *, etag: str | None = None
    ) -> bytes:
        """Bytes ``offset .. offset + length - 1`` of ``name`` (ranged GET; ``If-Match: etag``
        when ``etag`` is given).

        Raises:
            ObjectNotFoundError: No such blob.
            ProviderError: Fewer bytes than asked (transient), the blob changed (status 412,
                not transient), or any other failure.
        """
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise ConfigError(f"get_range offset must be an int >= 0, got {offset!r}")
        if isinstance(length, bool) or not isinstance(length, int) or length < 1:
            raise ConfigError(f"get_range length must be an int >= 1, got {length!r}")
        blob = self._blob(name)
        kwargs: dict[str, Any] = {"offset": offset, "length": length, "max_concurrency": 1}
        if etag is not None:
            from azure.core import MatchConditions

            kwargs.update(etag=etag, match_condition=MatchConditions.IfNotModified)
        try:
            downloader = await blob.download_blob(**kwargs)
            data: bytes = await downloader.readall()
        except Exception as exc:
            raise self._map(exc, name, "reading", reading=True) from exc
        if len(data) != length:
            raise ProviderError(
                f"Azure: got {len(data)} of the {length} bytes asked of {self.uri(name)!r} at "
                f"offset {offset}",
                name=name,
                uri=self.uri(name),
                transient=len(data) < length,
            )
        return data

    async def list(self, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        """Every blob whose name (relative to the store's prefix) starts with ``prefix``, in
        name order."""
        if self._container is None:
            raise ProviderError(f"{self!r} is not open (call open() first, or it was closed)")
        base = f"{self.prefix}/" if self.prefix else ""
        found: list[ObjectInfo] = []
        try:
            async for props in self._container.list_blobs(
                name_starts_with=base + prefix, include=["metadata"]
            ):
                full = getattr(props, "name", None)
                if isinstance(full, str) and full.startswith(base + prefix) and full != base:
                    found.append(self._object_info(full[len(base) :], props))
        except ProviderError:
            raise
        except Exception as exc:
            raise self._map(exc, None, "listing", reading=True) from exc
        found.sort(key=lambda info: info.name)
        for info in found:
            yield info

    async def delete(self, name: str) -> None:
        """Delete blob ``name`` (and its snapshots); a missing blob is not an error."""
        blob = self._blob(name)
        try:
            await blob.delete_blob(delete_snapshots="include")
        except azure_exc.ResourceNotFoundError as exc:
            if _code(exc) == "ContainerNotFound":
                raise self._map(exc, name, "deleting") from exc
        except Exception as exc:
            raise self._map(exc, name, "deleting") from exc

    # -- errors -------------------------------------------------------------------------------

    async def _check_md5(
        self, name: str, ours: bytes, theirs: Any, *, blob: Any = None, etag: Any = None
    ) -> bool:
        """Whether the service confirmed our MD5 (it echoed the same one).

        Some servers (Azurite's Put Block) echo none: then nothing is confirmed, although the
        service checked the Content-MD5 we sent. A different MD5 means the service stored
        other bytes: that blob (only if it still has the ``etag`` just written) is deleted, and
        the error is transient so the engine's retry writes it again.

        Raises:
            IntegrityError: The service reported another MD5 (transient).
        """
        if theirs is None:
            return False
        try:
            reported = bytes(theirs)
        except (TypeError, ValueError):
            reported = b""
        if reported == ours:
            return True
        kept = ""
        if blob is not None and etag:
            from azure.core import MatchConditions

            try:
                await blob.delete_blob(etag=etag, match_condition=MatchConditions.IfNotModified)
            except Exception as exc:
                kept = f" (could not delete it: {type(exc).__name__})"
        raise IntegrityError(
            f"Azure: MD5 of {self.uri(name)!r} is {_b64(reported)} at the service, "
            f"{_b64(ours)} here{kept}",
            name=name,
            uri=self.uri(name),
            transient=True,
        )

    def _exists(self, name: str) -> ObjectExistsError:
        uri = self.uri(name)
        return ObjectExistsError(f"Azure: blob {uri!r} already exists", name=name, uri=uri)

    def _map(
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
        error = self._map_unscrubbed(exc, name, doing, conditional=conditional, reading=reading)
        self._redactor.scrub_exception(exc)
        self._redactor.scrub_exception(error)
        _scrub_responses(exc, self._redactor)
        return error

    def _credential_source(self) -> str:
        if self._connection_string is not None:
            return "connection string (its AccountName / AccountKey or SharedAccessSignature)"
        if self._account_key is not None:
            return f"account key for account {self.account_name!r}"
        if self._sas_token is not None:
            return (
                "SAS token (not expired, signed for this account and container, with the "
                "read / write / list / delete permissions needed)"
            )
        return (
            "token credential (its identity needs a Storage Blob Data role on the container, "
            "e.g. Storage Blob Data Contributor)"
        )

    def _map_unscrubbed(
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
            f"blob {self.uri(name)!r}"
            if name is not None
            else f"container {self.container!r} of account {self.account_name!r}"
        )
        uri = None if name is None else self.uri(name)
        if isinstance(exc, azure_exc.IncompleteReadError):
            # The body ended early (a dropped connection): reading again may well succeed.
            return ProviderError(
                f"Azure: {doing} {where}: the answer ended early (IncompleteReadError)",
                name=name,
                uri=uri,
                transient=True,
            )
        if isinstance(exc, azure_exc.HttpResponseError) and exc.status_code is not None:
            status = int(exc.status_code)
            code = _code(exc)
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
                return self._exists(name or "")
            if status in (401, 403) and code not in _PERMISSION_CODES:
                return PermissionDeniedError(
                    f"Azure: {doing} {where}: the credentials were refused ({detail}): check "
                    f"the {self._credential_source()}, and that the account URL names the "
                    "right account",
                    name=name,
                    uri=uri,
                    status=status,
                )
            if status in (401, 403):
                return PermissionDeniedError(
                    f"Azure: {doing} {where}: the credentials were accepted but not allowed "
                    f"this operation ({detail}): check the {self._credential_source()}",
                    name=name,
                    uri=uri,
                    status=status,
                )
            if reading and status == 404 and code != "ContainerNotFound" and name is not None:
                return ObjectNotFoundError(
                    f"Azure: blob {self.uri(name)!r} does not exist ({detail})",
                    name=name,
                    uri=uri,
                    status=status,
                )
            if code == "ContainerNotFound" or (name is None and status == 404):
                return StoreNotFoundError(
                    f"Azure: container {self.container!r} does not exist in account "
                    f"{self.account_name!r} ({detail})",
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
                retry_after=parse_retry_after(
                    getattr(getattr(exc, "response", None), "headers", None)
                ),
            )
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


# -- helpers ------------------------------------------------------------------------------------


def _parse_composite(metadata: Any, size: int) -> Checksum | None:
    """The composite MD5 this library records on a multipart upload, if well formed and
    consistent with the blob's size (metadata is read back from the service: untrusted)."""
    if not isinstance(metadata, Mapping):
        return None
    raw = metadata.get(_COMPOSITE_MD5_KEY)
    if not isinstance(raw, str) or raw.count(":") != 2:
        return None
    value, part_size_text, parts_text = raw.split(":")
    if not (part_size_text.isdigit() and parts_text.isdigit()):
        return None
    part_size, parts = int(part_size_text), int(parts_text)
    try:
        digest = base64.b64decode(value, validate=True)
    except ValueError:
        return None
    if len(digest) != 16 or part_size < 1 or not 1 <= parts <= _MAX_BLOCKS:
        return None
    if not (parts - 1) * part_size < size <= parts * part_size and not (size == 0 == parts - 1):
        return None
    # In the notation of S3's multipart checksums, "<base64>-N", which downloads verify.
    return Checksum("md5", f"{value}-{parts}", part_size=part_size, parts=parts)


def _connection_string_endpoint(conn: str) -> str | None:
    """The blob endpoint a connection string names (explicit, development, or derived)."""
    fields: dict[str, str] = {}
    for item in conn.split(";"):
        key, sep, value = item.partition("=")
        if sep:
            fields[key.strip().lower()] = value.strip()
    if fields.get("blobendpoint"):
        return fields["blobendpoint"]
    if fields.get("usedevelopmentstorage", "").lower() == "true":
        return "http://127.0.0.1:10000"
    account = fields.get("accountname")
    if not account:
        return None
    protocol = fields.get("defaultendpointsprotocol", "https").lower()
    suffix = fields.get("endpointsuffix", "core.windows.net")
    return f"{protocol}://{account}.blob.{suffix}"


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


def _merge(opts: dict[str, Any], name: str, seed_name: str) -> Any:
    value, seed_value = opts.pop(name, None), opts.pop(seed_name, None)
    if value is not None and seed_value is not None and value != seed_value:
        raise ConfigError(f"Azure: options {name!r} and {seed_name!r} disagree; give one")
    return value if value is not None else seed_value


def _url_from_host(account: str | None, host: Any, port: Any, secure: Any) -> str:
    if not account:
        raise ConfigError("Azure: host/port need the account name (option 'key' or 'account_name')")
    if secure is None:
        secure = True
    if not isinstance(secure, bool):
        raise ConfigError(f"Azure: option 'secure' must be a bool, got {secure!r}")
    scheme = "https" if secure else "http"
    host = host or _DEFAULT_SUFFIX
    if not isinstance(host, str) or "/" in host or ":" in host:
        raise ConfigError(f"Azure: option 'host' must be a bare host name, got {host!r}")
    if port is not None:
        try:
            port = int(port)
        except (TypeError, ValueError):
            raise ConfigError(f"Azure: option 'port' must be an int, got {port!r}") from None
        if not 0 < port < 65536:
            raise ConfigError(f"Azure: option 'port' out of range: {port}")
    netloc_port = "" if port in (None, 443 if secure else 80) else f":{port}"
    for suffix in _CLOUD_SUFFIXES:
        if host == suffix or host.endswith("." + suffix):
            return f"{scheme}://{account}.{suffix}{netloc_port}"
    # Azurite and IoT Edge: the account is the first path segment.
    return f"{scheme}://{host}{netloc_port}/{quote(account)}"


def _url_account(account_url: str) -> str | None:
    parts = urlsplit(account_url)
    host = parts.hostname or ""
    for suffix in _CLOUD_SUFFIXES:
        if host.endswith("." + suffix):
            return host[: -len(suffix) - 1]
    segment = parts.path.strip("/").split("/", 1)[0]
    return unquote(segment) or None


def _connection_string_account(conn: str) -> str | None:
    for item in conn.split(";"):
        key, _, value = item.partition("=")
        if key.strip().lower() == "accountname":
            return value.strip() or None
        if key.strip().lower() == "usedevelopmentstorage" and value.strip().lower() == "true":
            return "devstoreaccount1"
    return None


def _check_container(container: str) -> None:
    if not isinstance(container, str) or not container:
        raise ConfigError(f"Azure: a container name is required, got {container!r}")
    if container not in _SPECIAL_CONTAINERS and not _CONTAINER_RE.match(container):
        raise ConfigError(
            f"Azure: invalid container name {container!r}: 3-63 lowercase letters, digits and "
            "single hyphens, starting and ending with a letter or digit"
        )


def _says_md5_mismatch(status: int, code: str, exc: BaseException) -> bool:
    """A 400 whose code is the generic ``InvalidOperation`` but whose message is the MD5 check's
    (Azurite 3.35 answers a Content-MD5 mismatch so; the service says ``Md5Mismatch``)."""
    if status != 400 or code != "InvalidOperation":
        return False
    message = str(getattr(exc, "message", "") or "").lower()
    return "md5" in message and "match" in message


def _code(exc: BaseException) -> str:
    code = getattr(exc, "error_code", None)
    if code is None:
        return ""
    return str(getattr(code, "value", code))


def _is_aiohttp_error(exc: BaseException) -> bool:
    # aiohttp is the SDK's async transport; its errors normally arrive wrapped, but not always.
    try:
        import aiohttp
    except ImportError:  # pragma: no cover - the azure extra installs it
        return False
    return isinstance(exc, aiohttp.ClientError | asyncio.TimeoutError)


def _new_upload_id() -> str:
    return secrets.token_hex(8)


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


def _md5_of(data: FileSlice) -> bytes:
    """MD5 of a slice, read in 1 MiB chunks (blocking: run it in a worker thread)."""
    h = hashlib.md5(usedforsecurity=False)
    with open(data.path, "rb") as f:
        f.seek(data.offset)
        left = data.length
        while left and (chunk := f.read(min(1 << 20, left))):
            h.update(chunk)
            left -= len(chunk)
    return h.digest()


async def _read_and_hash(data: FileSlice, running: Any = None) -> tuple[bytes, bytes]:
    """Read the slice and its MD5 (also fed to ``running``), off the loop when large."""

    def work() -> tuple[bytes, bytes]:
        body = data.read_sync()
        if running is not None:
            running.update(body)
        return body, hashlib.md5(body, usedforsecurity=False).digest()

    if data.length <= _INLINE_HASH_LIMIT:
        return work()
    return await anyio.to_thread.run_sync(work)
