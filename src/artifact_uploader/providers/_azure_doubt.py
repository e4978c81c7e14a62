"""Conditional writes whose answer was lost: "already exists" may be our own first send.

A write with ``If-None-Match: *`` whose answer never arrived (a dropped connection, a transient
error) may have been stored all the same; the engine's retry then meets "already exists". Such a
request stays "in doubt" until it is settled, and an "exists" answer to a resend is checked
against what is stored before it is reported as a conflict.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import anyio.to_thread

from .._errors import ObjectExistsError, ProviderError
from .._types import FileSlice, PutResult
from . import _azure_blocks as blocks

log = logging.getLogger("artifact_uploader")

# Conditional (If-None-Match) sends of the request in flight in this task. aiohttp resends an
# idempotent request (PUT) once by itself when its connection drops, invisibly to the SDK; a
# count of 2 means the answer is to a resend, so "already exists" may be our own first send.
_CONDITIONAL_SENDS: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar(
    "artifact_uploader_azure_conditional_sends", default=None
)


async def count_conditional_send(session: Any, context: Any, params: Any) -> None:
    """aiohttp trace hook (``on_request_headers_sent``): counts this task's conditional sends."""
    sends = _CONDITIONAL_SENDS.get()
    if sends is not None and "If-None-Match" in params.headers:
        sends[0] += 1


class InDoubt:
    """The conditional writes sent whose outcome is unknown, across the engine's retries."""

    def __init__(self) -> None:
        self._tokens: set[tuple[object, ...]] = set()

    def clear(self) -> None:
        """Forget every request in doubt (the provider closed)."""
        self._tokens.clear()

    async def guard(
        self,
        token: tuple[Any, ...],
        send: Callable[[], Awaitable[PutResult]],
        landed: Callable[[], Awaitable[PutResult | None]],
    ) -> PutResult:
        """Run a conditional write; an "exists" answer to a resend is checked with ``landed``.

        ``token`` identifies the request across the engine's retries: a request whose outcome
        was unknown (no answer, a transient error) stays "in doubt" until it is settled.
        """
        resent = token in self._tokens
        self._tokens.add(token)
        sends = [0]
        counting = _CONDITIONAL_SENDS.set(sends)
        try:
            result = await send()
        except ProviderError as exc:
            if (resent or sends[0] > 1) and isinstance(exc, ObjectExistsError):
                found = await landed()
                if found is not None:
                    self._tokens.discard(token)
                    return found
            if not exc.transient:
                self._tokens.discard(token)
            raise
        finally:
            _CONDITIONAL_SENDS.reset(counting)
        self._tokens.discard(token)
        return result


async def landed(
    blob: Any,
    name: str,
    uri: str,
    *,
    data: FileSlice | None = None,
    block_ids: list[str] | None = None,
) -> PutResult | None:
    """The result of an earlier send whose answer was lost, if the stored blob is it: the
    size and Content-MD5 of ``data``, or exactly our committed ``block_ids`` (their ids
    carry this upload's random prefix). None on any mismatch or doubt."""
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
            ours = await anyio.to_thread.run_sync(blocks.md5_of, data)
            if not stored or bytes(stored) != ours:
                return None
            # Put Blob's Content-MD5 is the service's own computation: a confirmation. A
            # large put's is the value we sent with the block list: not one.
            md5 = ours if data.length <= blocks.SINGLE_PUT_MAX else None
    except Exception as exc:
        log.debug("could not check whether %r landed: %s", name, type(exc).__name__)
        return None
    log.info("%s: an earlier attempt had stored it (its answer was lost)", uri)
    return PutResult(
        etag=props.etag,
        version=getattr(props, "version_id", None),
        checksum_algorithm=None if md5 is None else "md5",
        checksum=None if md5 is None else blocks.b64(md5),
    )
