"""The write side of the Azure provider: Put Blob, blocks and block lists, each with its MD5.

A small put is one Put Blob carrying its Content-MD5. A put over :data:`SINGLE_PUT_MAX` streams
the file as blocks and commits them in one Put Block List. An engine multipart upload has no
session at Azure: its id is a random block-id prefix, each part is a block, and the commit
records the composite MD5 (MD5 of the blocks' MD5s, S3's rule) in the blob's metadata.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Callable, Sequence
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import ResourceNotFoundError
from azure.storage.blob import BlobBlock, ContentSettings

from .._errors import IntegrityError, ProviderError
from .._retry import note_progress
from .._types import FileSlice, PartResult, PutResult
from . import _kit as kit
from ._azure_errors import AzureErrors, error_code
from ._kit import MiB, b64

# Azure's limits for block blobs (service versions 2019-12-12 and later).
MAX_BLOCK_SIZE = 4000 * MiB
MAX_BLOCKS = 50_000
# Up to this size a plain put is one Put Blob request (the service takes up to 5000 MiB, but the
# SDK needs the body in memory); above it, put streams the file as blocks inside the one call.
SINGLE_PUT_MAX = 256 * MiB
PUT_BLOCK_SIZE = 64 * MiB

# Block ids must all have the same length within one blob: a fixed-width prefix and part number.
_UPLOAD_ID_RE = re.compile(r"^[0-9a-f]{16}$")
_PART_DIGITS = 5
# Blob metadata holding the composite MD5 of a multipart upload: "<base64>:<part size>:<parts>".
COMPOSITE_MD5_KEY = "artifact_uploader_md5_parts"


class BlobWriter:
    """Sends puts, blocks and block lists for one provider.

    Args:
        uri: The ``az://`` URI of a blob name.
        errors: The provider's error mapper.
    """

    def __init__(self, uri: Callable[[str], str], errors: AzureErrors) -> None:
        self._uri = uri
        self._errors = errors
        # Block sizes of engine multipart uploads in progress, for the composite MD5 recorded
        # at commit: {upload id: {part number: (size, md5)}}.
        self._parts: dict[str, dict[int, tuple[int, bytes]]] = {}

    def forget(self, upload_id: str) -> None:
        """Drop what was recorded of an upload's parts (it was committed or aborted)."""
        self._parts.pop(upload_id, None)

    async def put(self, name: str, blob: Any, data: FileSlice, *, overwrite: bool) -> PutResult:
        """One Put Blob with its Content-MD5, or blocks and a block list when large."""
        if data.length > SINGLE_PUT_MAX:
            return await self._put_blocks(name, blob, data, overwrite=overwrite)
        body, md5 = await read_and_hash(data)
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
            raise self._errors.map(exc, name, "uploading", conditional=not overwrite) from exc
        confirmed = await self._check_md5(
            name, md5, resp.get("content_md5"), blob=blob, etag=resp.get("etag")
        )
        return PutResult(
            etag=resp.get("etag"),
            version=resp.get("version_id"),
            checksum_algorithm="md5" if confirmed else None,
            checksum=b64(md5) if confirmed else None,
        )

    async def _put_blocks(
        self, name: str, blob: Any, data: FileSlice, *, overwrite: bool
    ) -> PutResult:
        upload_id = new_upload_id()
        whole = kit.md5()
        block_ids = []
        every_block_confirmed = True
        offset, end, part = data.offset, data.offset + data.length, 1
        while offset < end:
            piece = FileSlice(data.path, offset, min(PUT_BLOCK_SIZE, end - offset))
            body, md5 = await read_and_hash(piece, whole)
            block_id, confirmed = await self._stage(name, blob, upload_id, part, body, md5)
            block_ids.append(block_id)
            every_block_confirmed &= confirmed
            note_progress()
            offset += piece.length
            part += 1
        # The whole MD5 is recorded either way (downloads verify against it); the result
        # claims it only when the service confirmed every block's MD5.
        return await self.commit(
            name,
            blob,
            block_ids,
            overwrite=overwrite,
            md5=whole.digest(),
            claim=every_block_confirmed,
        )

    async def check_absent(self, name: str, blob: Any) -> None:
        """One request to make sure ``name`` does not exist yet.

        Raises:
            ObjectExistsError: It does.
        """
        try:
            await blob.get_blob_properties()
        except ResourceNotFoundError as exc:
            if error_code(exc) != "BlobNotFound":
                raise self._errors.map(exc, name, "checking") from exc
        except Exception as exc:
            raise self._errors.map(exc, name, "checking") from exc
        else:
            raise self._errors.exists(name)

    async def put_part(
        self, name: str, blob: Any, upload_id: str, part_number: int, data: FileSlice
    ) -> PartResult:
        """Stage block ``part_number`` of upload ``upload_id`` (Put Block, with Content-MD5)."""
        if not _UPLOAD_ID_RE.match(upload_id):
            raise ProviderError(
                f"not an Azure upload id: {upload_id!r}", name=name, uri=self._uri(name)
            )
        if not 1 <= part_number <= MAX_BLOCKS:
            raise ProviderError(
                f"part number {part_number} outside 1..{MAX_BLOCKS}", name=name, uri=self._uri(name)
            )
        body, md5 = await read_and_hash(data)
        block_id, _ = await self._stage(name, blob, upload_id, part_number, body, md5)
        # Sizes and digests for the composite MD5 recorded at commit.
        self._parts.setdefault(upload_id, {})[part_number] = (len(body), md5)
        return PartResult(part_number, block_id, b64(md5))

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
            raise self._errors.map(exc, name, f"uploading block {part_number} of") from exc
        # An uncommitted block needs no clean-up: the next commit or 7 days drop it.
        return block_id, await self._check_md5(name, md5, resp.get("content_md5"))

    def block_ids(self, name: str, upload_id: str, parts: Sequence[PartResult]) -> list[str]:
        """The block ids of ``parts`` (sorted by part number) in commit order.

        Raises:
            ProviderError: A part from another upload, or a repeated part.
        """
        block_ids = []
        for i, p in enumerate(parts):
            if i and p.part_number == parts[i - 1].part_number:
                raise ProviderError(
                    f"part {p.part_number} listed twice", name=name, uri=self._uri(name)
                )
            if p.etag != f"{upload_id}-{p.part_number:0{_PART_DIGITS}d}":
                raise ProviderError(
                    f"part {p.part_number} does not belong to upload {upload_id!r}",
                    name=name,
                    uri=self._uri(name),
                )
            block_ids.append(p.etag)
        return block_ids

    def composite_md5(self, upload_id: str, parts: Sequence[PartResult]) -> dict[str, str]:
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
            if p.checksum != b64(md5):
                return {}
            sizes.append(size)
            digests += md5
        if not sizes or any(size != sizes[0] for size in sizes[:-1]) or sizes[-1] > sizes[0]:
            return {}
        value = b64(hashlib.md5(digests, usedforsecurity=False).digest())
        return {COMPOSITE_MD5_KEY: f"{value}:{sizes[0]}:{len(sizes)}"}

    async def commit(
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
        """Put Block List: the blob appears whole; ``md5`` (if given) becomes its Content-MD5,
        claimed in the result only with ``claim``."""
        kwargs: dict[str, Any] = {}
        if not overwrite:
            kwargs["if_none_match"] = "*"
        if metadata:
            kwargs["metadata"] = metadata
        if md5 is not None:
            # Stored as the blob's Content-MD5 so readers can check what they download.
            kwargs["content_settings"] = ContentSettings(content_md5=bytearray(md5))
        try:
            resp = await blob.commit_block_list(
                [BlobBlock(block_id=b) for b in block_ids], **kwargs
            )
        except Exception as exc:
            raise self._errors.map(exc, name, "committing", conditional=not overwrite) from exc
        claimed = md5 is not None and claim
        return PutResult(
            etag=resp.get("etag"),
            version=resp.get("version_id"),
            checksum_algorithm="md5" if claimed else None,
            checksum=b64(md5) if claimed and md5 is not None else None,
        )

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
            try:
                await blob.delete_blob(etag=etag, match_condition=MatchConditions.IfNotModified)
            except Exception as exc:
                kept = f" (could not delete it: {type(exc).__name__})"
        raise IntegrityError(
            f"Azure: MD5 of {self._uri(name)!r} is {b64(reported)} at the service, "
            f"{b64(ours)} here{kept}",
            name=name,
            uri=self._uri(name),
            transient=True,
        )


def new_upload_id() -> str:
    """A random block-id prefix: the id of one upload."""
    return secrets.token_hex(8)


def md5_of(data: FileSlice) -> bytes:
    """MD5 of a slice, read from disk (blocking: run it in a worker thread).

    Raises:
        OSError: The file is shorter than the slice, or cannot be read.
    """
    digest = kit.md5()
    kit.hash_slice(data, digest)
    return digest.digest()


async def read_and_hash(data: FileSlice, *running: kit.Hasher) -> tuple[bytes, bytes]:
    """Read the slice and its MD5 (also fed to ``running``), off the loop when large."""
    digest = kit.md5()
    body = await kit.read_hashed(data, digest, *running)
    return body, digest.digest()
