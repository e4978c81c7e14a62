"""The two GCS upload paths, the check of what the server stored, and the lost-answer probe.

Small bodies go in one multipart request through ``Storage.upload``; larger ones through a
resumable session we speak ourselves (one POST, one streamed PUT): see
:mod:`artifact_uploader.providers.gcs` for why.
"""

from __future__ import annotations

import functools
import json
import logging
import mimetypes
import os
from collections.abc import AsyncIterator
from typing import Any, BinaryIO, Final
from urllib.parse import urlsplit

import aiohttp
import anyio.to_thread
import google_crc32c as _google_crc32c
from yarl import URL

from .._errors import IntegrityError, ProviderError
from .._retry import note_progress
from .._types import FileSlice, PutResult
from ._gcs_client import GCSClient
from ._gcs_errors import raise_for_status, refuse_redirect_answer
from ._kit import MiB, b64, hash_slice, md5, read_hashed

log = logging.getLogger("artifact_uploader")
# google-crc32c ships no type information.
google_crc32c: Any = _google_crc32c
_CHUNK: Final = MiB


async def read_and_hash(data: FileSlice) -> tuple[bytes, str, str]:
    """The slice's bytes with their CRC32C and MD5 (base64), off the loop when large."""
    crc, digest = google_crc32c.Checksum(), md5()
    body = await read_hashed(data, crc, digest)
    return body, b64(crc.digest()), b64(digest.digest())


async def hash_file(data: FileSlice) -> tuple[str, str]:
    """CRC32C and MD5 (base64) of a slice read from disk in a worker thread."""
    crc, digest = google_crc32c.Checksum(), md5()
    await anyio.to_thread.run_sync(hash_slice, data, crc, digest)
    return b64(crc.digest()), b64(digest.digest())


async def upload_small(
    client: GCSClient, key: str, body: bytes, crc: str, md5_b64: str, *, overwrite: bool
) -> dict[str, Any] | None:
    """One multipart upload through the library. Returns the object resource it parsed."""
    params = {} if overwrite else {"ifGenerationMatch": "0"}
    # The library turns 'a-b' into 'aB' (and lowercases 'md5Hash'): spell keys its way.
    metadata = {"crc32c": crc, "md5-hash": md5_b64}
    resp: dict[str, Any] | None = await client.storage.upload(
        client.bucket,
        key,
        body,
        content_type=content_type(key),
        parameters=params,
        metadata=metadata,
        # Metadata makes this a multipart upload; never let the library pick resumable.
        force_resumable_upload=False,
        timeout=client.request_timeout(len(body)),  # type: ignore[arg-type]
    )
    return resp


async def exists(client: GCSClient, key: str) -> bool:
    """Whether ``key`` exists (object metadata GET; 404 means no)."""
    try:
        await client.metadata(key)
    except aiohttp.ClientResponseError as exc:
        if exc.status == 404 and client.errors.is_storage_url(exc):
            return False
        raise
    return True


async def upload_resumable(
    client: GCSClient, key: str, data: FileSlice, crc: str, md5_b64: str, *, overwrite: bool
) -> dict[str, Any] | None:
    """Open a resumable session, then stream the whole slice in one PUT."""
    headers = await client.auth_headers()
    kind = content_type(key)
    params = {"uploadType": "resumable", "name": key}
    if not overwrite:
        params["ifGenerationMatch"] = "0"
    meta = json.dumps({"name": key, "contentType": kind, "crc32c": crc, "md5Hash": md5_b64})
    async with client.session.post(
        client.objects_url(upload=True),
        params=params,
        data=meta.encode(),
        headers={
            **headers,
            "Content-Type": "application/json; charset=UTF-8",
            "X-Upload-Content-Type": kind,
            "X-Upload-Content-Length": str(data.length),
        },
        timeout=client.timeout_for(client.timeout),
        allow_redirects=False,
    ) as resp:
        refuse_redirect_answer(resp)
        await raise_for_status(resp)
        location = resp.headers.get("Location")
    note_progress()
    where = f"gs://{client.bucket}/{key}"
    if not location:
        raise ProviderError(
            f"GCS did not return a resumable session URL for {where}", transient=True
        )
    if _origin(location) != _origin(client.root):
        # The session URL gets the whole body and the token: only ever the API's own host.
        raise ProviderError(
            f"GCS returned a resumable session URL on another host ({_origin(location)!r}, "
            f"not {_origin(client.root)!r}) for {where}: refused, nothing was sent there",
        )
    async with client.session.put(
        # The session URL is already encoded: yarl must not encode it again.
        URL(location, encoded=True),
        data=_iter_slice(data),
        headers={**headers, "Content-Type": kind, "Content-Length": str(data.length)},
        timeout=client.timeout_for(client.request_timeout(data.length)),
        # 308 is GCS's "Resume Incomplete", not a redirect to follow.
        allow_redirects=False,
    ) as resp:
        if resp.status != 308 or "Location" in resp.headers:
            # A 308 with a Location is a redirect, not "Resume Incomplete".
            refuse_redirect_answer(resp)
        await raise_for_status(resp)
        if resp.status == 308:
            # "Resume Incomplete": the server kept fewer bytes than we sent. The library
            # returns None here; a new attempt starts a fresh session.
            raise ProviderError(
                f"GCS resumable upload of {where} ended incomplete "
                f"(308, server has {resp.headers.get('Range', 'no bytes')})",
                status=308,
                transient=True,
            )
        text = await resp.text()
    parsed: dict[str, Any] | None = json.loads(text) if text.strip() else None
    return parsed


async def checked_result(
    client: GCSClient,
    name: str,
    data: FileSlice,
    resp: dict[str, Any] | None,
    crc: str,
    md5_b64: str,
) -> PutResult:
    """The upload's result, checked against the object resource the server answered.

    The server's ``size``, ``crc32c`` and ``md5Hash`` must match what we hashed. On a
    mismatch the generation we just wrote is deleted (only that generation: a newer write
    by someone else stays) and the error is transient, so the engine's retry writes the
    object again, whatever ``overwrite`` is. The result claims a checksum only when the
    server reported that same value.
    """
    paths = client.errors.paths
    uri = paths.uri(name)
    if not isinstance(resp, dict) or not resp:
        # gcloud-aio-storage returns None (no exception) when the server answered without
        # a body; the object may or may not exist, so a retry decides.
        raise ProviderError(
            f"GCS upload of {uri!r} returned no object metadata",
            name=name,
            uri=uri,
            transient=True,
        )
    generation = _generation(resp)
    for field, ours in (("crc32c", crc), ("md5Hash", md5_b64), ("size", str(data.length))):
        theirs = resp.get(field)
        if theirs is not None and str(theirs) != ours:
            await _discard(client, paths.key(name), generation)
            raise IntegrityError(
                client.errors.redactor.scrub(
                    f"GCS stored {uri!r} with {field} {str(theirs)[:64]!r}, local file has "
                    f"{ours!r}" + ("" if generation else " (no generation reported: not deleted)")
                ),
                name=name,
                uri=uri,
                transient=True,
            )
    algorithm: str | None = None
    checksum: str | None = None
    if resp.get("crc32c") == crc:
        algorithm, checksum = "crc32c", crc
    elif resp.get("md5Hash") == md5_b64:
        algorithm, checksum = "md5", md5_b64
    # else nothing was confirmed by the server: claim nothing.
    return PutResult(
        etag=_etag(resp), version=generation, checksum_algorithm=algorithm, checksum=checksum
    )


async def landed(client: GCSClient, key: str, data: FileSlice) -> PutResult | None:
    """The result of an earlier send whose answer was lost, if the stored object is it: same
    size, CRC32C and MD5 as ``data``. None on a mismatch (an exception: cannot tell)."""
    meta = await client.metadata(key)
    crc, md5_b64 = await hash_file(data)
    stored = (str(meta.get("size")), meta.get("crc32c"), meta.get("md5Hash"))
    if stored != (str(data.length), crc, md5_b64):
        return None
    return PutResult(
        etag=_etag(meta), version=_generation(meta), checksum_algorithm="crc32c", checksum=crc
    )


async def _discard(client: GCSClient, key: str, generation: str | None) -> None:
    """Delete generation ``generation`` of ``key``, a write that failed its check (best
    effort: a failure is logged)."""
    if generation is None:
        return
    failure = ""
    try:
        async with client.session.delete(
            client.object_url(key),
            params={"ifGenerationMatch": generation},
            headers=await client.auth_headers(),
            timeout=client.timeout_for(client.timeout),
            allow_redirects=False,
        ) as resp:
            await resp.read()
            if resp.status >= 300 and resp.status not in (404, 412):
                failure = str(resp.status)
    except Exception as exc:
        failure = type(exc).__name__
    if failure:
        log.warning(
            "could not delete the unverified upload gs://%s/%s (generation %s): %s",
            client.bucket,
            key,
            generation,
            failure,
        )


def _generation(resource: dict[str, Any]) -> str | None:
    generation = resource.get("generation")
    return str(generation) if isinstance(generation, str | int) else None


def _etag(resource: dict[str, Any]) -> str | None:
    etag = resource.get("etag")
    return etag if isinstance(etag, str) else None


def _origin(url: str) -> str:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        # Unparseable: equal to no real origin.
        return f"<invalid {url[:40]!r}>"
    return f"{parts.scheme.lower()}://{(parts.hostname or '').lower()}" + (
        f":{port}" if port else ""
    )


@functools.cache
def _mime_table() -> mimetypes.MimeTypes:
    # Python's built-in table only: the system's /etc/mime.types maps ".pt" (PyTorch checkpoints)
    # to "application/vnd.snesdev-page-table", and differs from machine to machine.
    return mimetypes.MimeTypes(filenames=())


def content_type(key: str) -> str:
    """The MIME type GCS records for ``key`` (by its extension, else octet-stream)."""
    return _mime_table().guess_type(key)[0] or "application/octet-stream"


def _open_binary(path: str | os.PathLike[str]) -> BinaryIO:
    return open(path, "rb")


async def _iter_slice(data: FileSlice) -> AsyncIterator[bytes]:
    """Yield the slice in 1 MiB chunks, each read in a worker thread."""
    f = await anyio.to_thread.run_sync(_open_binary, data.path)
    try:
        await anyio.to_thread.run_sync(f.seek, data.offset)
        left = data.length
        while left:
            # Back here once the HTTP client has taken the previous chunk: bytes are moving.
            note_progress()
            chunk: bytes = await anyio.to_thread.run_sync(f.read, min(_CHUNK, left))
            if not chunk:
                raise OSError(f"{data.path} shrank while it was being uploaded")
            left -= len(chunk)
            yield chunk
    finally:
        f.close()
