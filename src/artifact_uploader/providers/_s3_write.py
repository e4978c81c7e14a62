"""S3's writes that carry a body or finish an object: PutObject, UploadPart, Complete.

Each answer is checked (our CRC32C, the MD5 in the ETag where asked for) and a damaged object is
removed. A conditional write whose earlier send may have landed with its answer lost is settled
by comparing the stored object with what we sent (see :meth:`S3Writer.landed`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Final

import botocore.exceptions

from .._errors import IntegrityError, ObjectExistsError, ProviderError
from .._retry import note_progress, self_timed
from .._types import FileSlice, PartResult, PutResult
from ._kit import InDoubt, MiB
from ._s3_checks import (
    Md5,
    check_md5,
    checked,
    composite_crc32c,
    crc32c_b64,
    md5_hex,
    multipart_etag,
    strip_etag,
    version,
)
from ._s3_direct import read_body
from ._s3_errors import error_code, note_transport_sends
from ._s3_target import S3Target

log = logging.getLogger("artifact_uploader")

MAX_PUT_BYTES: Final = 5 * 1024 * MiB
# Where an answer carries the CRC32C the store computed.
_CRC: Final = "ChecksumCRC32C"


class S3Writer:
    """PutObject, UploadPart and CompleteMultipartUpload on one :class:`S3Target`.

    Attributes:
        check_etag: Compare a PutObject answer's ETag (and a Complete's MD5-of-MD5s) with our
            MD5; the provider sets it at open, once the endpoint is known.
        check_part_etags: Compare UploadPart answers' ETags too.
    """

    __slots__ = ("_doubt", "_target", "check_etag", "check_part_etags", "checksum", "mode")

    def __init__(
        self, target: S3Target, *, checksum: bool, mode: str, check_part_etags: bool
    ) -> None:
        self._target = target
        self.checksum = checksum
        self.mode = mode
        self.check_etag = True
        self.check_part_etags = check_part_etags
        # Conditional writes whose outcome is unknown (sent, then no answer or a transient
        # error): a retry that meets "already exists" (or, for Complete, "no such upload")
        # checks whether the first send landed (see landed).
        self._doubt = InDoubt()

    def __repr__(self) -> str:
        return f"S3Writer({self._target!r})"

    def clear(self) -> None:
        """Forget every request in doubt (the provider closed)."""
        self._doubt.clear()

    async def put(self, name: str, data: FileSlice, *, overwrite: bool) -> PutResult:
        """One PutObject; see :meth:`S3Provider.put`."""
        t = self._target
        client = t.live()
        key = t.key(name)
        if data.length > MAX_PUT_BYTES:
            raise t.error(
                name,
                f"{data.length} bytes is over S3's single PutObject limit of 5 GiB for "
                f"{t.uri(name)!r}; use multipart",
            )
        body = await (read_body(data) if t.direct is not None else data.read())
        note_progress()
        params: dict[str, Any] = {"Bucket": t.bucket, "Key": key, "Body": body}
        ours = self.add_checksum(params, body)
        # The MD5 to compare the answer's ETag with, hashed in a worker thread while the body
        # is on its way.
        md5 = Md5(body) if self.check_etag else None
        if not overwrite:
            params["IfNoneMatch"] = "*"
        uri = t.uri(name)

        async def send() -> PutResult:
            try:
                resp = await (t.direct or client).put_object(**params)
            except Exception as exc:
                note_transport_sends(exc)
                raise t.map(exc, "PutObject", name, conditional=not overwrite) from exc
            etag = strip_etag(resp.get("ETag"))
            try:
                if md5 is not None:
                    check_md5(uri, name, "PutObject", resp, etag, await md5.hexdigest())
                sums = checked(uri, name, "PutObject", self.checksum, ours, resp.get(_CRC))
            except IntegrityError:
                # The store holds something else than we sent: do not leave it there as if it
                # were the object (only if it is still the one this request wrote).
                await self.discard(name, resp.get("ETag"))
                raise
            return PutResult(etag=etag, version=version(resp.get("VersionId")), **sums)

        async def landed() -> PutResult | None:
            # Our earlier send of this very request may have been stored with its answer lost:
            # then the object is ours, not a conflict.
            etag = await md5.hexdigest() if md5 else md5_hex(body)
            return await self.landed(name, size=data.length, checksum=ours, etag=etag)

        token = ("put", key, str(data.path), data.offset, data.length)
        return await self._doubt.run(token, send, landed, what=uri)

    async def put_part(
        self, name: str, upload_id: str, part_number: int, data: FileSlice
    ) -> PartResult:
        """One UploadPart; see :meth:`S3Provider.put_part`."""
        t = self._target
        client = t.live()
        body = await (read_body(data) if t.direct is not None else data.read())
        note_progress()
        params: dict[str, Any] = {
            "Bucket": t.bucket,
            "Key": t.key(name),
            "UploadId": upload_id,
            "PartNumber": part_number,
            "Body": body,
        }
        ours = self.add_checksum(params, body)
        md5 = Md5(body) if self.check_part_etags else None
        op = f"UploadPart {part_number}"
        try:
            resp = await (t.direct or client).upload_part(**params)
        except Exception as exc:
            raise t.map(exc, op, name) from exc
        etag = resp.get("ETag")
        if not isinstance(etag, str) or not etag:
            raise t.error(name, f"S3 {op} of {t.uri(name)!r} returned no ETag", transient=True)
        if md5 is not None:
            # A mismatch is transient: the retry uploads the same part number again, which
            # replaces the damaged part.
            check_md5(t.uri(name), name, op, resp, strip_etag(etag), await md5.hexdigest())
        sums = checked(t.uri(name), name, op, self.checksum, ours, resp.get(_CRC))
        # Complete needs every part's checksum once the upload declared CRC32C: fall back to ours
        # when the server does not echo it.
        return PartResult(part_number, etag, sums["checksum"] or ours)

    async def complete(
        self, name: str, upload_id: str, parts: Sequence[PartResult], *, overwrite: bool
    ) -> PutResult:
        """CompleteMultipartUpload; see :meth:`S3Provider.complete_multipart`."""
        t = self._target
        client = t.live()
        ordered = sorted(parts, key=lambda p: p.part_number)
        listed: list[dict[str, Any]] = []
        for p in ordered:
            entry: dict[str, Any] = {"PartNumber": p.part_number, "ETag": p.etag}
            if self.checksum and p.checksum:
                entry["ChecksumCRC32C"] = p.checksum
            listed.append(entry)
        params: dict[str, Any] = {
            "Bucket": t.bucket,
            "Key": t.key(name),
            "UploadId": upload_id,
            "MultipartUpload": {"Parts": listed},
        }
        if not overwrite:
            params["IfNoneMatch"] = "*"
        ours = None
        if self.checksum and ordered and all(p.checksum for p in ordered):
            ours = composite_crc32c([p.checksum for p in ordered if p.checksum])
        uri = t.uri(name)
        op = "CompleteMultipartUpload"

        async def send() -> PutResult:
            try:
                # aiohttp's read timeout (restarted by every byte) guards this small request,
                # and S3 may trickle whitespace for minutes while it assembles a large upload.
                with self_timed():
                    resp = await client.complete_multipart_upload(**params)
            except Exception as exc:
                raise t.map(exc, op, name, conditional=not overwrite) from exc
            return await self._completed(name, resp, ordered, ours)

        async def landed() -> PutResult | None:
            # An earlier Complete of this upload may have succeeded with its answer lost: the
            # upload is then gone (or the object "exists") because it is the object.
            return await self.landed(name, size=None, checksum=ours, etag=multipart_etag(ordered))

        token = ("complete", upload_id)
        return await self._doubt.run(token, send, landed, what=uri, conflict=_complete_conflict)

    async def _completed(
        self, name: str, resp: dict[str, Any], ordered: Sequence[PartResult], ours: str | None
    ) -> PutResult:
        """The result of a CompleteMultipartUpload answer, once checked against our parts.

        Raises:
            IntegrityError: (not transient) the assembled object is not what we sent; removed.
            ProviderError: A transient failure to read the stored checksum.
        """
        uri = self._target.uri(name)
        op = "CompleteMultipartUpload"
        etag = strip_etag(resp.get("ETag"))
        expected = multipart_etag(ordered)
        theirs = resp.get(_CRC)
        checksum_type = resp.get("ChecksumType")
        if self.checksum and ours is not None and not theirs:
            # Some servers (moto among them) leave the checksum out of Complete's answer but
            # report it on HEAD: ask, rather than report a checksum nobody confirmed. A
            # transient failure of that HEAD is retried as Complete's own: the upload stays
            # "in doubt", so the retry finds the object and checks it (see landed).
            theirs, checksum_type = await self.stored_checksum(name)
        try:
            if self.check_etag and expected is not None and etag and "-" in etag:
                check_md5(uri, name, op, resp, etag, expected)
            if isinstance(theirs, str) and ours is not None:
                if checksum_type == "FULL_OBJECT":
                    # Not comparable with the composite of the parts (each of which the store
                    # checked already).
                    ours = None
                else:
                    # S3 writes the composite as "<crc>-N"; some servers leave "-N" out.
                    ours = ours if theirs.endswith(f"-{len(ordered)}") else ours.split("-")[0]
            sums = checked(uri, name, op, self.checksum, ours, theirs)
        except IntegrityError as exc:
            # The parts were checked one by one, so the assembled object is not what we sent:
            # nothing to retry. Remove it rather than leave a damaged object behind.
            exc.transient = False
            await self.discard(name, resp.get("ETag"))
            raise
        return PutResult(etag=etag, version=version(resp.get("VersionId")), **sums)

    async def landed(
        self, name: str, *, size: int | None, checksum: str | None, etag: str | None
    ) -> PutResult | None:
        """The result of an earlier send whose answer was lost, if the stored object is it.

        HeadObject, then: the size (when known) must match, and our CRC32C (full-object, or the
        composite ``-N`` of a multipart upload) where the store reports one, else the MD5 ETag
        (of the body, or recomputed from the part ETags). None on any mismatch or doubt: the
        caller then reports the original error.
        """
        t = self._target
        # A failure to ask is "cannot tell": the kit's InDoubt logs it and keeps the conflict.
        head = await t.live().head_object(Bucket=t.bucket, Key=t.key(name), ChecksumMode="ENABLED")
        if size is not None and head.get("ContentLength") != size:
            return None
        theirs = head.get(_CRC)
        stored_etag = strip_etag(head.get("ETag"))
        # S3 writes a composite checksum as "<crc>-N"; some servers leave "-N" out.
        verified = (
            checksum is not None
            and isinstance(theirs, str)
            and (theirs == checksum or theirs == checksum.split("-")[0])
        )
        # Without a comparable checksum (checksum=None, or a full-object CRC32C for a multipart
        # upload) the ETag decides: the MD5 (of the parts' MD5s) unless SSE-KMS changed it.
        if not verified and (etag is None or stored_etag != etag):
            return None
        return PutResult(
            etag=stored_etag,
            version=version(head.get("VersionId")),
            checksum_algorithm="crc32c" if verified else None,
            checksum=checksum if verified else None,
        )

    async def stored_checksum(self, name: str) -> tuple[str | None, str | None]:
        """The CRC32C (and its type) HeadObject reports for ``name``; (None, None) when the
        store will not say (the result then claims no checksum).

        Raises:
            ProviderError: A transient failure (retried by the engine).
        """
        t = self._target
        try:
            head = await t.live().head_object(
                Bucket=t.bucket, Key=t.key(name), ChecksumMode="ENABLED"
            )
        except Exception as exc:
            error = t.map(exc, "HeadObject", name)
            if error.transient:
                raise error from exc
            log.debug("could not read the checksum of %r: %s", name, type(exc).__name__)
            return None, None
        crc, kind = head.get(_CRC), head.get("ChecksumType")
        return (crc if isinstance(crc, str) else None), (kind if isinstance(kind, str) else None)

    async def discard(self, name: str, etag: object) -> None:
        """Best effort: delete ``name`` if it is still the object with ``etag`` (a damaged
        object this provider just wrote). Failures are logged, never raised."""
        t = self._target
        params: dict[str, Any] = {"Bucket": t.bucket, "Key": t.key(name)}
        if isinstance(etag, str) and etag:
            params["IfMatch"] = etag
        try:
            await t.live().delete_object(**params)
        except Exception as exc:
            log.warning(
                "%s: could not remove the damaged object: %s", t.uri(name), type(exc).__name__
            )

    def add_checksum(self, params: dict[str, Any], body: bytes | memoryview) -> str | None:
        """Put our CRC32C of ``body`` in the request (as a header botocore will not recompute)."""
        if not self.checksum:
            return None
        ours = crc32c_b64(body)
        params["ChecksumCRC32C"] = ours
        if self.mode == "when_supported":
            # x-amz-sdk-checksum-algorithm: S3 ignores it next to an explicit value, but some
            # S3-compatible servers (moto) only record and echo the checksum when it is present.
            params["ChecksumAlgorithm"] = "CRC32C"
        return ours


def _complete_conflict(error: ProviderError) -> bool:
    """Whether a Complete's failure may be an earlier Complete of the same upload that landed:
    the object "exists", or the upload is gone (NoSuchUpload) because it became the object."""
    cause = error.__cause__
    gone = (
        isinstance(cause, botocore.exceptions.ClientError) and error_code(cause) == "NoSuchUpload"
    )
    return gone or isinstance(error, ObjectExistsError)
