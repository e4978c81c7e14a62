"""The read side of the Azure provider: properties, ranged reads and listings.

Everything read back from the service is untrusted: sizes, Content-MD5 and the composite MD5 in
the metadata are checked before they become an :class:`ObjectInfo`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from azure.core import MatchConditions

from .._errors import ConfigError, ProviderError
from ._azure_blocks import COMPOSITE_MD5_KEY, MAX_BLOCKS
from ._azure_errors import AzureErrors
from ._kit import b64, b64_length
from ._protocol import Checksum, ObjectInfo


def object_info(name: str, props: Any, uri: Callable[[str], str]) -> ObjectInfo:
    """A blob's properties (from the service: untrusted) as an :class:`ObjectInfo`.

    Raises:
        ProviderError: No valid size, or a malformed Content-MD5.
    """
    size = getattr(props, "size", None)
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ProviderError(
            f"Azure: the service reported no valid size for {uri(name)!r}",
            name=name,
            uri=uri(name),
        )
    checksums: list[Checksum] = []
    settings = getattr(props, "content_settings", None)
    md5 = getattr(settings, "content_md5", None)
    if md5:
        digest = bytes(md5)
        if len(digest) != 16:
            raise ProviderError(
                f"Azure: the service reported a malformed Content-MD5 for {uri(name)!r}",
                name=name,
                uri=uri(name),
            )
        checksums.append(Checksum("md5", b64(digest)))
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


async def read_range(
    blob: Any,
    name: str,
    offset: int,
    length: int,
    etag: str | None,
    *,
    uri: str,
    errors: AzureErrors,
) -> bytes:
    """One ranged GET of ``blob`` (``If-Match: etag`` when given), exactly ``length`` bytes.

    Raises:
        ProviderError: Fewer bytes than asked (transient), or the mapped failure.
    """
    kwargs: dict[str, Any] = {"offset": offset, "length": length, "max_concurrency": 1}
    if etag is not None:
        kwargs.update(etag=etag, match_condition=MatchConditions.IfNotModified)
    try:
        downloader = await blob.download_blob(**kwargs)
        data: bytes = await downloader.readall()
    except Exception as exc:
        raise errors.map(exc, name, "reading", reading=True) from exc
    if len(data) != length:
        raise ProviderError(
            f"Azure: got {len(data)} of the {length} bytes asked of {uri!r} at offset {offset}",
            name=name,
            uri=uri,
            transient=len(data) < length,
        )
    return data


def check_range(offset: int, length: int) -> None:
    """Refuse a range ``get_range`` cannot ask for.

    Raises:
        ConfigError: ``offset`` is not an int >= 0 or ``length`` not an int >= 1.
    """
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise ConfigError(f"get_range offset must be an int >= 0, got {offset!r}")
    if isinstance(length, bool) or not isinstance(length, int) or length < 1:
        raise ConfigError(f"get_range length must be an int >= 1, got {length!r}")


async def list_infos(
    container: Any, base: str, prefix: str, *, uri: Callable[[str], str], errors: AzureErrors
) -> list[ObjectInfo]:
    """Every blob under ``base + prefix`` (names relative to ``base``), sorted by name."""
    found: list[ObjectInfo] = []
    try:
        async for props in container.list_blobs(
            name_starts_with=base + prefix, include=["metadata"]
        ):
            full = getattr(props, "name", None)
            if isinstance(full, str) and full.startswith(base + prefix) and full != base:
                found.append(object_info(full[len(base) :], props, uri))
    except ProviderError:
        raise
    except Exception as exc:
        raise errors.map(exc, None, "listing", reading=True) from exc
    found.sort(key=lambda info: info.name)
    return found


def _parse_composite(metadata: Any, size: int) -> Checksum | None:
    """The composite MD5 this library records on a multipart upload, if well formed and
    consistent with the blob's size (metadata is read back from the service: untrusted)."""
    if not isinstance(metadata, Mapping):
        return None
    raw = metadata.get(COMPOSITE_MD5_KEY)
    if not isinstance(raw, str) or raw.count(":") != 2:
        return None
    value, part_size_text, parts_text = raw.split(":")
    if not (part_size_text.isdigit() and parts_text.isdigit()):
        return None
    part_size, parts = int(part_size_text), int(parts_text)
    if b64_length(value) != 16 or part_size < 1 or not 1 <= parts <= MAX_BLOCKS:
        return None
    if not (parts - 1) * part_size < size <= parts * part_size and not (size == 0 == parts - 1):
        return None
    # In the notation of S3's multipart checksums, "<base64>-N", which downloads verify.
    return Checksum("md5", f"{value}-{parts}", part_size=part_size, parts=parts)
