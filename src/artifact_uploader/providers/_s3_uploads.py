"""S3 multipart uploads as objects of their own: create, list, abort.

A CreateMultipartUpload whose answer is lost may still have started an upload nobody holds the
id of. :class:`S3Uploads` remembers since when such a Create's outcome is in doubt and, once a
retry succeeds, names (:meth:`S3Uploads.lost`) the uploads of that key the store started in that
window, and only those: an upload started earlier is someone else's. The engine aborts them, each
look and abort a request of its own, so a failure of one is never retried as the Create's (which
would orphan one more upload with every retry).
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import botocore.exceptions

from ._s3_errors import error_code
from ._s3_target import S3Target

log = logging.getLogger("artifact_uploader")

# Pages of ListMultipartUploads read for one key at most (1,000 uploads each).
MAX_UPLOAD_PAGES: Final = 10
# Seconds added to the window in which an orphaned upload may have started (clock resolution,
# time between send and the store's stamp).
_ORPHAN_MARGIN: Final = 1.0
# Start times further than this from our clock are not trusted (a store that reports none).
_CLOCK_TRUST: Final = 3600.0


class S3Uploads:
    """CreateMultipartUpload, ListMultipartUploads and AbortMultipartUpload on one target."""

    __slots__ = ("_create_doubt", "_target", "checksum")

    def __init__(self, target: S3Target, *, checksum: bool) -> None:
        self._target = target
        self.checksum = checksum
        # Keys whose CreateMultipartUpload went unanswered, and since when (monotonic clock).
        self._create_doubt: dict[str, float] = {}

    def __repr__(self) -> str:
        return f"S3Uploads({self._target!r})"

    def clear(self) -> None:
        """Forget every Create in doubt (the provider closed)."""
        self._create_doubt.clear()

    async def create(self, name: str) -> str:
        """CreateMultipartUpload; see :meth:`S3Provider.create_multipart`."""
        t = self._target
        client = t.live()
        key = t.key(name)
        params: dict[str, Any] = {"Bucket": t.bucket, "Key": key}
        if self.checksum:
            params["ChecksumAlgorithm"] = "CRC32C"
        # A Create whose answer is lost may still have started an upload that nobody holds the
        # id of: remember since when (monotonic clock) the outcome is in doubt; the engine asks
        # for those uploads (lost()) once a Create succeeds, as a request of its own.
        started = time.monotonic()
        try:
            resp = await client.create_multipart_upload(**params)
            upload_id = resp.get("UploadId")
            if not isinstance(upload_id, str) or not upload_id:
                what = f"S3 CreateMultipartUpload for {t.uri(name)!r} returned no UploadId"
                raise t.error(name, what, transient=True)
        except Exception as exc:
            error = t.map(exc, "CreateMultipartUpload", name)
            if error.transient:
                self._create_doubt.setdefault(key, started)
            raise error from exc
        return upload_id

    async def ids(self, name: str) -> list[str]:
        """Ids of the unfinished uploads of exactly ``name``; see
        :meth:`S3Provider.list_multipart_uploads`."""
        try:
            return [uid for uid, _ in await self._uploads_of(name)]
        except Exception as exc:
            raise self._target.map(exc, "ListMultipartUploads", name) from exc

    async def abort(self, name: str, upload_id: str) -> None:
        """AbortMultipartUpload; an upload that is already gone is not an error."""
        t = self._target
        client = t.live()
        try:
            await client.abort_multipart_upload(
                Bucket=t.bucket, Key=t.key(name), UploadId=upload_id
            )
        except botocore.exceptions.ClientError as exc:
            if error_code(exc) in ("NoSuchUpload", "404"):
                return
            raise t.map(exc, "AbortMultipartUpload", name) from exc
        except Exception as exc:
            raise t.map(exc, "AbortMultipartUpload", name) from exc

    async def _uploads_of(self, name: str) -> list[tuple[str, object]]:
        """(upload id, initiated) of every unfinished upload of exactly ``name``'s key, at most
        :data:`MAX_UPLOAD_PAGES` pages; SDK errors propagate unmapped."""
        t = self._target
        client = t.live()
        key = t.key(name)
        uploads: list[tuple[str, object]] = []
        params: dict[str, Any] = {"Bucket": t.bucket, "Prefix": key}
        for _ in range(MAX_UPLOAD_PAGES):
            page = await client.list_multipart_uploads(**params)
            # The answer is input: only this exact key (the prefix also matches longer keys),
            # only string ids.
            for upload in page.get("Uploads") or ():
                uid = upload.get("UploadId")
                if upload.get("Key") == key and isinstance(uid, str) and uid:
                    uploads.append((uid, upload.get("Initiated")))
            key_marker, id_marker = page.get("NextKeyMarker"), page.get("NextUploadIdMarker")
            if not page.get("IsTruncated") or not isinstance(key_marker, str):
                break
            params["KeyMarker"] = key_marker
            if isinstance(id_marker, str):
                params["UploadIdMarker"] = id_marker
        return uploads

    def in_doubt(self, name: str) -> bool:
        """Whether a Create of ``name`` went unanswered since the last :meth:`lost`."""
        return self._target.key(name) in self._create_doubt

    async def lost(self, name: str, ours: str) -> list[str]:
        """Ids of the uploads of ``name`` that Creates whose answers were lost started; see
        :meth:`S3Provider.lost_creates`. No request when no Create of ``name`` is in doubt.

        The orphans: in progress for exactly this key and initiated, by the store's clock, since
        the first lost Create (plus a margin) and no later than ``ours``. Uploads started earlier
        (someone else's) are left alone, and so is every upload when the store's start times
        cannot be trusted.

        Raises:
            ProviderError: The listing failed; when ``transient``, the doubt stays for a retry.
        """
        t = self._target
        key = t.key(name)
        doubt = self._create_doubt.get(key)
        if doubt is None:
            return []
        window = time.monotonic() - doubt
        try:
            uploads = await self._uploads_of(name)
        except Exception as exc:
            error = t.map(exc, "ListMultipartUploads", name)
            if not error.transient:
                self._create_doubt.pop(key, None)
            raise error from exc
        self._create_doubt.pop(key, None)
        found: list[tuple[str, datetime]] = []
        mine: datetime | None = None
        for uid, when in uploads:
            if not isinstance(when, datetime) or when.tzinfo is None:
                continue
            if uid == ours:
                mine = when
            else:
                found.append((uid, when))
        if mine is None or abs((datetime.now(UTC) - mine).total_seconds()) > _CLOCK_TRUST:
            # The store does not report when uploads started (or its clock is far off): an
            # orphan cannot be told from someone else's upload, so none is named.
            log.warning(
                "%s: cannot tell an upload orphaned by a lost answer from others (the store's "
                "upload start times are missing or implausible); none aborted",
                t.uri(name),
            )
            return []
        margin = timedelta(seconds=_ORPHAN_MARGIN)
        earliest = mine - timedelta(seconds=window) - margin
        return [uid for uid, when in found if earliest <= when <= mine + margin]
