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

Where each part lives: options and names in ``_azure_config``, the SDK clients in
``_azure_client``, writes in ``_azure_blocks``, reads in ``_azure_read``, the error table in
``_azure_errors``, the lost-answer check in ``_azure_doubt``; what every cloud store decides
alike (in-doubt writes, error rows, hashing, seed endpoints) in ``_kit``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from azure.core import exceptions as azure_exc

from .._errors import ProviderError
from .._types import FileSlice, PartResult, PutResult
from . import _azure_blocks as blocks
from ._azure_client import AzureClients
from ._azure_config import check_blob_name, parse_store_uri, resolve_settings
from ._azure_doubt import landed
from ._azure_errors import AzureErrors, error_code
from ._azure_read import check_range, list_infos, object_info, read_range
from ._kit import InDoubt, MiB, join_key
from ._protocol import ObjectInfo, PartLimits
from ._redact import Redactor


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
        self._clients = AzureClients(settings, container, self._redactor)

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
        check_blob_name(self.prefix, name)

    # -- lifecycle ----------------------------------------------------------------------------

    async def open(self, *, verify: bool = True) -> None:
        """Create the clients on the running loop; when ``verify``, read the container's properties.

        Raises:
            StoreNotFoundError: The container does not exist.
            PermissionDeniedError: The credentials were refused.
            ConfigError: The SDK refused the configuration (e.g. an unknown api_version).
        """
        if self._clients.container is not None:
            return
        container = await self._clients.open()
        if verify:
            try:
                await container.get_container_properties()
            except Exception as exc:
                error = self._errors.map(exc, None, "opening")
                await self.aclose()
                raise error from exc

    async def aclose(self) -> None:
        """Close the clients (and a credential this provider created). Idempotent."""
        self._in_doubt.clear()
        await self._clients.aclose()

    # -- requests -----------------------------------------------------------------------------

    def _blob(self, name: str) -> Any:
        container = self._clients.container
        if container is None:
            raise ProviderError(
                f"{self!r} is not open (call open() first, or it was closed)",
                name=name,
                uri=self.uri(name),
            )
        return container.get_blob_client(join_key(self.prefix, name))

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
        container = self._clients.container
        if container is None:
            raise ProviderError(f"{self!r} is not open (call open() first, or it was closed)")
        base = f"{self.prefix}/" if self.prefix else ""
        found = await list_infos(container, base, prefix, uri=self.uri, errors=self._errors)
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
