"""The GCS read side: ``head``, ``get_range``, ``list`` and ``delete``.

``head`` is the object resource (size, etag, generation, ``crc32c``, ``md5Hash`` -- absent for
composed objects); ``get_range`` is one ranged media GET, pinned to one generation with
``ifGenerationMatch`` and checked against the answer's ``x-goog-generation``; ``list`` pages
through the listing; ``delete`` ignores a missing object. Every answer is untrusted input.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from datetime import datetime
from typing import Any, Final, Literal

import aiohttp

from .._errors import ConfigError, ProviderError
from .._retry import note_progress
from ._gcs_client import GCSClient
from ._gcs_errors import changed, raise_for_status, refuse_redirect_answer
from ._kit import MiB, b64_length
from ._protocol import Checksum, ObjectInfo

# Objects asked per listing page (read at every request: a test shrinks it to see paging).
LIST_PAGE = 1000
# Pages and cached etag -> generation pairs: bounds on what an answer can make us hold.
_MAX_PAGES: Final = 1_000_000
_GENERATION_CACHE: Final = 4096
_DIGESTS: Final[tuple[tuple[str, Literal["crc32c", "md5"], int], ...]] = (
    ("crc32c", "crc32c", 4),
    ("md5Hash", "md5", 16),
)


class GCSReader:
    """Reads objects back; remembers the generation of each etag it has seen.

    A ranged read conditional on an etag is sent as ``ifGenerationMatch`` (the JSON API's
    media download has no If-Match), so the etag -> generation pairs of objects seen by
    ``head`` and ``list`` are kept (a bounded number).
    """

    __slots__ = ("_generations",)

    def __init__(self) -> None:
        self._generations: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"GCSReader(<{len(self._generations)} generations>)"

    def object_info(self, client: GCSClient, item: Mapping[str, Any], name: str) -> ObjectInfo:
        """An object resource from the server (untrusted) as an :class:`ObjectInfo`."""
        uri = client.errors.paths.uri(name)
        size = item.get("size")
        if not isinstance(size, str | int) or isinstance(size, bool) or not str(size).isdigit():
            raise ProviderError(
                f"GCS answered an object resource for {uri!r} without a valid size: "
                f"{str(size)[:40]!r}",
                name=name,
                uri=uri,
            )
        checksums: list[Checksum] = []
        for field, algorithm, length in _DIGESTS:
            value = item.get(field)
            if value is None:
                # Composed objects have a CRC32C but no MD5.
                continue
            if not isinstance(value, str) or b64_length(value) != length:
                raise ProviderError(
                    f"GCS answered a malformed {field} for {uri!r}: {str(value)[:40]!r}",
                    name=name,
                    uri=uri,
                )
            checksums.append(Checksum(algorithm, value))
        etag = item.get("etag")
        generation = item.get("generation")
        generation = str(generation) if isinstance(generation, str | int) else None
        if isinstance(etag, str) and generation is not None and generation.isdigit():
            if len(self._generations) >= _GENERATION_CACHE:
                self._generations.pop(next(iter(self._generations)))
            self._generations[etag] = generation
        return ObjectInfo(
            name=name,
            size=int(size),
            etag=etag if isinstance(etag, str) else None,
            version=generation,
            last_modified=_parse_time(item.get("updated")),
            checksums=tuple(checksums),
        )

    async def head(self, client: GCSClient, name: str) -> ObjectInfo:
        """What GCS records about ``name`` (see the module)."""
        key = client.errors.paths.key(name)
        item = await client.get_json(client.object_url(key), {}, name)
        return self.object_info(client, item, name)

    async def get_range(
        self, client: GCSClient, name: str, offset: int, length: int, etag: str | None
    ) -> bytes:
        """Bytes ``offset .. offset + length - 1`` of ``name``, in one ranged GET (see
        :meth:`GCSProvider.get_range <artifact_uploader.providers.gcs.GCSProvider.get_range>`).
        """
        check_range(offset, length)
        key = client.errors.paths.key(name)
        uri = client.errors.paths.uri(name)
        params = {"alt": "media"}
        generation = None
        if etag is not None:
            generation = self._generations.get(etag)
            if generation is None:
                info = await self.head(client, name)
                if info.etag != etag or info.version is None:
                    raise changed(uri, name)
                generation = info.version
            params["ifGenerationMatch"] = generation
        try:
            headers = await client.auth_headers()
            headers["Range"] = f"bytes={offset}-{offset + length - 1}"
            # Accepting gzip stops GCS from decompressing an object stored gzip-encoded (it
            # would then ignore the range, and its checksums describe the stored bytes); with
            # auto_decompress off, the bytes arrive exactly as stored.
            headers["Accept-Encoding"] = "gzip"
            async with client.session.get(
                client.object_url(key, media=True),
                params=params,
                headers=headers,
                timeout=client.timeout_for(client.request_timeout(length)),
                allow_redirects=False,
                auto_decompress=False,
            ) as resp:
                refuse_redirect_answer(resp)
                await raise_for_status(resp)
                served = resp.headers.get("X-Goog-Generation")
                if generation is not None and served is not None and served != generation:
                    raise changed(uri, name)
                if resp.status != 206 and offset != 0:
                    raise ProviderError(
                        f"GCS ignored the byte range asked of {uri!r} ({resp.status})",
                        name=name,
                        uri=uri,
                        status=resp.status,
                    )
                body = await _read_at_most(resp, length, uri, name, offset)
        except ProviderError:
            raise
        except Exception as exc:
            raise client.errors.map(exc, name, reading=True) from exc
        if len(body) < length:
            raise ProviderError(
                f"GCS sent {len(body)} of the {length} bytes asked of {uri!r} at offset {offset}",
                name=name,
                uri=uri,
                transient=True,
            )
        return bytes(body)

    async def list(self, client: GCSClient, prefix: str) -> AsyncIterator[ObjectInfo]:
        """Every object whose name (relative to the store's prefix) starts with ``prefix``,
        in name order."""
        store_prefix = client.errors.paths.prefix
        base = f"{store_prefix}/" if store_prefix else ""
        params = {"prefix": base + prefix, "maxResults": str(LIST_PAGE)}
        found: list[ObjectInfo] = []
        seen_tokens: set[str] = set()
        for _ in range(_MAX_PAGES):
            page = await client.get_json(client.objects_url(), params, None)
            items = page.get("items") or []
            if not isinstance(items, list):
                raise ProviderError(f"GCS answered a malformed listing of bucket {client.bucket!r}")
            for item in items:
                full = item.get("name") if isinstance(item, dict) else None
                if not isinstance(full, str) or not full.startswith(base + prefix):
                    continue
                rel = full[len(base) :]
                if rel:
                    found.append(self.object_info(client, item, rel))
            token = page.get("nextPageToken")
            if not token:
                break
            if not isinstance(token, str) or token in seen_tokens:
                raise ProviderError(
                    f"GCS listing of bucket {client.bucket!r} repeats a page token: stopped"
                )
            seen_tokens.add(token)
            params = {**params, "pageToken": token}
        found.sort(key=lambda info: info.name)
        for info in found:
            yield info


def check_range(offset: object, length: object) -> None:
    """Refuse a range that is not ``offset >= 0``, ``length >= 1`` (ints).

    Raises:
        ConfigError: Naming the bad value.
    """
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise ConfigError(f"get_range offset must be an int >= 0, got {offset!r}")
    if isinstance(length, bool) or not isinstance(length, int) or length < 1:
        raise ConfigError(f"get_range length must be an int >= 1, got {length!r}")


async def delete(client: GCSClient, name: str) -> None:
    """Delete ``name``; a missing object is not an error."""
    key = client.errors.paths.key(name)
    try:
        headers = await client.auth_headers()
        async with client.session.delete(
            client.object_url(key),
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=client.timeout),
            allow_redirects=False,
        ) as resp:
            refuse_redirect_answer(resp)
            if resp.status == 404:
                await resp.read()
                return
            await raise_for_status(resp)
            await resp.read()
    except ProviderError:
        raise
    except Exception as exc:
        raise client.errors.map(exc, name, reading=True) from exc


async def _read_at_most(
    resp: aiohttp.ClientResponse, length: int, uri: str, name: str, offset: int
) -> bytearray:
    """The answer's body, refused as soon as it runs past ``length`` bytes."""
    body = bytearray()
    async for chunk in resp.content.iter_chunked(MiB):
        body += chunk
        note_progress()
        if len(body) > length:
            raise ProviderError(
                f"GCS sent more than the {length} bytes asked of {uri!r} at offset {offset}",
                name=name,
                uri=uri,
                status=resp.status,
            )
    return body


def _parse_time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
