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

from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

import aiohttp
from azure.core import exceptions as azure_exc
from azure.storage.blob.aio import BlobServiceClient

from .._errors import ConfigError, InvalidObjectNameError, ProviderError
from .._types import FileSlice, PartResult, PutResult
from . import _azure_blocks as blocks
from ._azure_config import parse_store_uri, resolve_settings
from ._azure_doubt import landed
from ._azure_errors import AzureErrors, error_code
from ._azure_read import check_range, list_infos, object_info, read_range
from ._body import Body
from ._kit import InDoubt, MiB, check_common_name, count_conditional_send, join_key
from ._protocol import ObjectInfo, PartLimits
from ._redact import Redactor, install_log_filter
from ._vendor import azure_transport

_MAX_NAME_CHARS = 1024
_MAX_SEGMENTS = 254


def _wrap_data(data: Any) -> Any:
    """Request data as aiohttp should send it: in-memory bodies over 1 MiB as :class:`Body`.

    The SDK hands aiohttp blocks as plain bytes; aiohttp warns (ResourceWarning) for every body
    over 1 MiB and writes it in one piece. Ours were read off the loop already, so Body sends
    them in slices without the warning, ticking the stall watchdog as each slice leaves.
    """
    if isinstance(data, bytes | bytearray | memoryview) and len(data) > MiB:
        return Body(memoryview(data))
    return data


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
        settings = resolve_settings(
            container,
            account_name=account_name,
            account_key=account_key,
            account_url=account_url,
            connection_string=connection_string,
            sas_token=sas_token,
            credential=credential,
            api_version=api_version,
            connection_timeout=connection_timeout,
            read_timeout=read_timeout,
            allow_http=allow_http,
        )
        self.allow_http = allow_http
        self.container = container
        self.prefix = prefix.strip("/")
        self.account_name = settings.account_name
        self.account_url = settings.account_url
        self.api_version = api_version
        self._settings = settings
        self._owned_credential: Any = None
        self._service: Any = None
        self._container: Any = None
        # Uploads sent whose outcome is unknown (no answer, or a transient error): if the
        # engine's retry of one meets "already exists", the first send may have landed.
        self._in_doubt = InDoubt()
        # The one redaction path: the key, SAS and connection string, anything shaped like a
        # SAS signature, an account key or a bearer token.
        self._redactor = Redactor(
            (settings.account_key, settings.sas_token, settings.connection_string)
        )
        self._errors = AzureErrors(
            self.uri, container, self.account_name, settings.credential_source(), self._redactor
        )
        self._writer = blocks.BlobWriter(self.uri, self._errors)
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
        container, prefix, kwargs = parse_store_uri(uri, options)
        return cls(container, prefix, **kwargs)

    @property
    def part_limits(self) -> PartLimits:
        """Azure's block limits (a block may be 1 byte; smaller than 1 MiB only wastes requests)."""
        return PartLimits(
            min_part_size=1 * MiB, max_part_size=blocks.MAX_BLOCK_SIZE, max_parts=blocks.MAX_BLOCKS
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
        settings = self._settings
        kwargs: dict[str, Any] = {
            # The engine retries; see the module docstring.
            "retry_total": 0,
            # A redirect could send the request (and a SAS in its URL) elsewhere: never follow.
            "permit_redirects": False,
            # upload_blob splits bodies above this into blocks; keep every put one request.
            "max_single_put_size": blocks.SINGLE_PUT_MAX,
            # Likewise a ranged read: one get_range is one GET (the engine sizes the ranges).
            "max_single_get_size": blocks.SINGLE_PUT_MAX,
            **settings.timeouts,
        }
        if self.api_version is not None:
            kwargs["api_version"] = self.api_version
        # The SDK's own session settings, plus a trace that counts conditional sends.
        trace = aiohttp.TraceConfig()
        trace.on_request_headers_sent.append(count_conditional_send)
        session = aiohttp.ClientSession(
            trust_env=True,
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            trace_configs=[trace],
        )
        kwargs["transport"] = azure_transport(session, _wrap_data, **settings.timeouts)
        try:
            if settings.connection_string is not None:
                service = BlobServiceClient.from_connection_string(
                    settings.connection_string, **kwargs
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
                error = self._errors.map(exc, None, "opening")
                await self.aclose()
                raise error from exc

    def _make_credential(self) -> Any:
        settings = self._settings
        if settings.account_key is not None:
            return {"account_name": self.account_name, "account_key": settings.account_key}
        if settings.sas_token is not None:
            return settings.sas_token
        if settings.credential is not None:
            return settings.credential
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
        return await self._in_doubt.run(
            ("put", name, str(data.path), data.offset, data.length),
            lambda: self._writer.put(name, self._blob(name), data, overwrite=overwrite),
            lambda: landed(self._blob(name), data=data),
            what=self.uri(name),
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
            await self._writer.check_absent(name, blob)
        return blocks.new_upload_id()

    async def put_part(
        self, name: str, upload_id: str, part_number: int, data: FileSlice
    ) -> PartResult:
        """Stage block ``part_number`` (Put Block, with Content-MD5).

        Raises:
            IntegrityError: The MD5 the service computed differs from ours.
            ProviderError: A malformed upload id or part number, or the request failed.
        """
        return await self._writer.put_part(name, self._blob(name), upload_id, part_number, data)

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
        block_ids = self._writer.block_ids(name, upload_id, ordered)
        metadata = self._writer.composite_md5(upload_id, ordered)
        # An earlier commit of this upload may have succeeded with its answer lost.
        result = await self._in_doubt.run(
            ("complete", upload_id),
            lambda: self._writer.commit(
                name, blob, block_ids, overwrite=overwrite, md5=None, metadata=metadata
            ),
            lambda: landed(self._blob(name), block_ids=block_ids),
            what=self.uri(name),
        )
        self._writer.forget(upload_id)
        return result

    async def abort_multipart(self, name: str, upload_id: str) -> None:
        """Nothing to send: uncommitted blocks are dropped by the next commit or expire in 7 days.

        Deleting them would mean deleting the blob, which may hold an older committed version.
        """
        self._writer.forget(upload_id)
        return None

    # -- the read side ------------------------------------------------------------------------

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
            raise self._errors.map(exc, name, "reading", reading=True) from exc
        return object_info(name, props, self.uri)

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
        check_range(offset, length)
        blob = self._blob(name)
        return await read_range(
            blob, name, offset, length, etag, uri=self.uri(name), errors=self._errors
        )

    async def list(self, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        """Every blob whose name (relative to the store's prefix) starts with ``prefix``, in
        name order."""
        if self._container is None:
            raise ProviderError(f"{self!r} is not open (call open() first, or it was closed)")
        base = f"{self.prefix}/" if self.prefix else ""
        found = await list_infos(self._container, base, prefix, uri=self.uri, errors=self._errors)
        for info in found:
            yield info

    async def delete(self, name: str) -> None:
        """Delete blob ``name`` (and its snapshots); a missing blob is not an error."""
        blob = self._blob(name)
        try:
            await blob.delete_blob(delete_snapshots="include")
        except azure_exc.ResourceNotFoundError as exc:
            if error_code(exc) == "ContainerNotFound":
                raise self._errors.map(exc, name, "deleting") from exc
        except Exception as exc:
            raise self._errors.map(exc, name, "deleting") from exc
