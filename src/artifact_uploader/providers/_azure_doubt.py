"""Lost answers: is the blob a conditional write met our own earlier send?

A write with ``If-None-Match: *`` whose answer never arrived (a dropped connection, a transient
error) may have been stored all the same; the engine's retry then meets "already exists".
:class:`~artifact_uploader.providers._kit.InDoubt` decides when to ask; :func:`landed` answers
for a blob.
"""

from __future__ import annotations

from typing import Any

import anyio.to_thread

from .._types import FileSlice, PutResult
from . import _azure_blocks as blocks
from ._kit import b64


async def landed(
    blob: Any, *, data: FileSlice | None = None, block_ids: list[str] | None = None
) -> PutResult | None:
    """The result of an earlier send whose answer was lost, if the stored blob is it: the
    size and Content-MD5 of ``data``, or exactly our committed ``block_ids`` (their ids
    carry this upload's random prefix). None on any mismatch.

    Raises:
        Exception: Whatever reading the blob's properties or block list raised (InDoubt takes
            it as "cannot tell").
    """
    md5: bytes | None = None
    props = await blob.get_blob_properties()
    if data is not None and props.size != data.length:
        return None
    if block_ids is not None:
        committed, _ = await blob.get_block_list("committed")
        if [b.id for b in committed] != block_ids:
            return None
    elif data is not None:
        stored = props.content_settings.content_md5
        ours = await anyio.to_thread.run_sync(blocks.md5_of, data)
        if not stored or bytes(stored) != ours:
            return None
        # Put Blob's Content-MD5 is the service's own computation: a confirmation. A
        # large put's is the value we sent with the block list: not one.
        md5 = ours if data.length <= blocks.SINGLE_PUT_MAX else None
    return PutResult(
        etag=props.etag,
        version=getattr(props, "version_id", None),
        checksum_algorithm=None if md5 is None else "md5",
        checksum=None if md5 is None else b64(md5),
    )
