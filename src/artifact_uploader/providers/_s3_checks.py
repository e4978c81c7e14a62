"""What S3's answers are checked against: our CRC32C, the MD5 in an ETag, version ids.

Pure functions over bytes and answer dictionaries (no requests): the CRC32C we send and the
composite S3 builds from the parts', the MD5 an ETag should be (of a body, or of the parts'
MD5s), and the comparisons that turn a mismatch into a transient :class:`IntegrityError`.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
from collections.abc import Sequence
from typing import Any, Final

import botocore.httpchecksum

from .._errors import IntegrityError
from .._types import PartResult
from ._kit import INLINE_LIMIT

# An ETag that is an MD5: of the body, or of the parts' MD5s with the part count.
MD5_ETAG: Final = re.compile(r"[0-9a-fA-F]{32}(-[0-9]{1,5})?")


def crc32c_b64(data: bytes | memoryview) -> str:
    """Base64 of the CRC32C of ``data``, as S3 writes it."""
    # botocore's wrapper over awscrt's native CRC32C (the botocore[crt] extra).
    crc = botocore.httpchecksum.CrtCrc32cChecksum()
    crc.update(data)
    return base64.b64encode(crc.digest()).decode("ascii")


def composite_crc32c(part_checksums: Sequence[str]) -> str:
    """S3's COMPOSITE checksum of a multipart upload: CRC32C of the parts' raw CRC32Cs, ``-N``."""
    raw = b"".join(base64.b64decode(c) for c in part_checksums)
    return f"{crc32c_b64(raw)}-{len(part_checksums)}"


def strip_etag(etag: object) -> str | None:
    """An ETag without its quotes; None when the answer had no string ETag."""
    return etag.strip('"') if isinstance(etag, str) else None


def version(value: object) -> str | None:
    """S3's version id; None for an unversioned bucket, which S3 reports as the string "null"."""
    if not isinstance(value, str) or not value or value == "null":
        return None
    return value


def etag_parts(etag: str | None) -> int | None:
    """The part count of a multipart ETag (``"hex-N"``); None for a single-part one."""
    if etag is None:
        return None
    _, dash, count = etag.strip('"').rpartition("-")
    if not dash or not count.isdigit() or not 1 <= int(count) <= 10_000:
        return None
    return int(count)


def etag_is_md5(resp: dict[str, Any]) -> bool:
    """Whether the ETag in a HeadObject answer is the MD5 of the data (of the parts' MD5s for a
    multipart object): not with SSE-KMS (aws:kms, aws:kms:dsse) or SSE-C."""
    sse = resp.get("ServerSideEncryption")
    if isinstance(sse, str) and sse.startswith("aws:kms"):
        return False
    return not resp.get("SSECustomerAlgorithm")


def is_b64_digest(value: str, size: int) -> bool:
    """Whether ``value`` is base64 of exactly ``size`` bytes."""
    try:
        return len(base64.b64decode(value, validate=True)) == size
    except (ValueError, TypeError):
        return False


class Md5:
    """The MD5 of a request body, computed while the request is in flight."""

    __slots__ = ("_done", "_future")

    def __init__(self, body: bytes | memoryview) -> None:
        self._done: str | None = None
        self._future: asyncio.Future[str] | None = None
        # Up to the kit's inline limit right away; larger bodies in a worker thread (hashlib
        # releases the GIL), alongside the request.
        if len(body) <= INLINE_LIMIT:
            self._done = md5_hex(body)
        else:
            self._future = asyncio.ensure_future(asyncio.to_thread(md5_hex, body))

    async def hexdigest(self) -> str:
        """The hex MD5 (waits for the worker thread if it is still hashing)."""
        if self._done is None:
            assert self._future is not None
            self._done = await asyncio.shield(self._future)
        return self._done


def md5_hex(body: bytes | memoryview) -> str:
    """Hex MD5 of ``body`` (an integrity check, not security)."""
    return hashlib.md5(body, usedforsecurity=False).hexdigest()


def multipart_etag(parts: Sequence[PartResult]) -> str | None:
    """S3's ETag of a completed multipart upload: MD5 of the parts' binary MD5s, ``-N``
    (None when a part's ETag is not an MD5, as with SSE-KMS)."""
    try:
        raw = b"".join(bytes.fromhex(strip_etag(p.etag) or "") for p in parts)
    except ValueError:
        return None
    if not parts or len(raw) != 16 * len(parts):
        return None
    return f"{md5_hex(raw)}-{len(parts)}"


def check_md5(
    uri: str, name: str, op: str, resp: dict[str, Any], etag: str | None, ours: str
) -> None:
    """Compare an answer's ETag with our MD5 where it is one (not with SSE-KMS / SSE-C).

    Raises:
        IntegrityError: (transient) the store holds other bytes than we sent.
    """
    if not etag or not etag_is_md5(resp) or not MD5_ETAG.fullmatch(etag):
        # Not an MD5 (some S3-compatible stores use other entity tags): nothing to compare.
        return
    if etag.lower() != ours.lower():
        raise IntegrityError(
            f"S3 {op} of {uri!r}: the store's ETag {etag} is not the MD5 of "
            f"what we sent ({ours}): the body was changed on the way",
            name=name,
            uri=uri,
            transient=True,
        )


def checked(
    uri: str, name: str, op: str, enabled: bool, ours: str | None, theirs: object
) -> dict[str, str | None]:
    """The checksum fields of a result, after comparing the store's value with ours.

    Only a value the store returned is reported: a server that ignores the header (some
    S3-compatible ones, or checksum=None, which is ``enabled`` False) has verified nothing.

    Raises:
        IntegrityError: (transient) the store reports another CRC32C than ours.
    """
    if not enabled or not isinstance(theirs, str) or not theirs:
        return {"checksum_algorithm": None, "checksum": None}
    if ours is not None and theirs != ours:
        raise IntegrityError(
            f"S3 {op} of {uri!r}: the store reports CRC32C {theirs}, we sent {ours}",
            name=name,
            uri=uri,
            transient=True,
        )
    return {"checksum_algorithm": "crc32c", "checksum": theirs}
