"""One open connection to the GCS JSON API: aiohttp session, gcloud-aio ``Storage``, token.

Made by :func:`open_client` on the engine's loop and closed by :meth:`GCSClient.close`.
Requests made inside gcloud-aio-storage follow redirects (aiohttp's default): a trace hook
refuses every one before it is followed; our own requests use ``allow_redirects=False``.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import quote

import aiohttp
import anyio.to_thread
from gcloud.aio.storage import Storage

from .._errors import ConfigError, PermissionDeniedError, ProviderError
from ._gcs_config import DEFAULT_API_ROOT, StaticToken, TokenSource, check_service_file
from ._gcs_errors import (
    ErrorMap,
    auth_error,
    raise_for_status,
    refuse_redirect,
    refuse_redirect_answer,
)
from ._kit import check_plain_http
from ._vendor import cancel_token_refresh, gcloud_access_token


@dataclass(slots=True, repr=False, eq=False)
class GCSClient:
    """The session, the library's ``Storage`` and what requests need (see the module).

    Attributes:
        session: Our aiohttp session (no pool limit: the engine's semaphore bounds requests).
        storage: gcloud-aio-storage's client on that session.
        root: The API root, e.g. ``https://storage.googleapis.com``.
        anonymous: Requests go without a token (an emulator, no explicit credential).
        errors: The provider's error map.
        timeout: Base per-request timeout in seconds.
        min_throughput: Slowest upload rate tolerated, in bytes per second.
    """

    session: aiohttp.ClientSession
    storage: Storage
    root: str
    anonymous: bool
    errors: ErrorMap
    timeout: float
    min_throughput: float

    def __repr__(self) -> str:
        return f"GCSClient(root={self.root!r}, anonymous={self.anonymous})"

    @property
    def bucket(self) -> str:
        """The bucket name."""
        return self.errors.paths.bucket

    def object_url(self, key: str, *, media: bool = False) -> str:
        """The JSON API URL of object ``key`` (its media when ``media``)."""
        path = f"/b/{quote(self.bucket, safe='')}/o/{quote(key, safe='')}"
        return f"{self.root}/{'download/' if media else ''}storage/v1{path}"

    def objects_url(self, *, upload: bool = False) -> str:
        """The bucket's object collection (its upload endpoint when ``upload``)."""
        return (
            f"{self.root}/{'upload/' if upload else ''}storage/v1/b/{quote(self.bucket, safe='')}/o"
        )

    def request_timeout(self, size: int) -> float:
        """Seconds allowed for a request sending ``size`` bytes: ``timeout + size /
        min_throughput``."""
        return self.timeout + max(0, size) / self.min_throughput

    def timeout_for(self, seconds: float) -> aiohttp.ClientTimeout:
        """A request timeout of ``seconds`` in all, connecting within the base timeout."""
        return aiohttp.ClientTimeout(total=seconds, sock_connect=self.timeout)

    async def auth_headers(self) -> dict[str, str]:
        """The Authorization header (none when anonymous).

        Raises:
            PermissionDeniedError: No token could be obtained with the credentials.
            ProviderError: The token endpoint could not be reached (transient).
        """
        if self.anonymous:
            return {}
        try:
            token = await self.storage.token.get()
        except Exception as exc:
            raise auth_error(exc, self.errors.credential_source) from exc
        if not token:
            raise PermissionDeniedError("no GCS access token could be obtained")
        return {"Authorization": f"Bearer {token}"}

    async def get_json(
        self, url: str, params: Mapping[str, str], name: str | None
    ) -> dict[str, Any]:
        """GET a JSON resource (redirects refused, errors mapped for a read)."""
        try:
            headers = await self.auth_headers()
            async with self.session.get(
                url,
                params=params,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                allow_redirects=False,
            ) as resp:
                refuse_redirect_answer(resp)
                await raise_for_status(resp)
                text = await resp.text()
            parsed = json.loads(text)
        except ProviderError:
            raise
        except Exception as exc:
            raise self.errors.map(exc, name, reading=True) from exc
        if not isinstance(parsed, dict):
            where = self.errors.paths.uri(name) if name else self.bucket
            raise ProviderError(
                f"GCS answered something other than a JSON object for {where!r}",
                name=name,
                transient=True,
            )
        return parsed

    async def metadata(self, key: str) -> dict[str, Any]:
        """The object resource of ``key``, through the library (raises on 404)."""
        meta: dict[str, Any] = await self.storage.download_metadata(
            self.bucket,
            key,
            timeout=self.timeout,  # type: ignore[arg-type]  # passed on to aiohttp as is
        )
        return meta

    async def close(self) -> None:
        """Stop the library's token refresh and close the session."""
        # A background token refresh the library may have started would outlive the session.
        cancel_token_refresh(self.storage.token)
        await self.session.close()


def token_values(token: TokenSource | None, client: GCSClient | None) -> list[object]:
    """The access tokens held now (read at every scrub: refreshed tokens change)."""
    values: list[object] = []
    sources: list[object] = [token]
    if client is not None:
        sources.append(client.storage.token)
    for source in sources:
        if isinstance(source, StaticToken):
            values.append(source.secret)
        elif source is not None:
            values.append(gcloud_access_token(source) or getattr(source, "access_token", None))
    return values


async def open_client(
    *,
    errors: ErrorMap,
    token: TokenSource | None,
    service_file: str | None,
    api_root: str | None,
    allow_http: bool,
    timeout: float,
    min_throughput: float,
) -> GCSClient:
    """Create the session and the library's client on the running loop.

    The root is ``api_root``, else ``STORAGE_EMULATOR_HOST``, else Google's. Against an
    emulator with no explicit credential, requests go without a token.

    Raises:
        ConfigError: Plain HTTP to another host without ``allow_http``, or credentials that
            cannot be loaded (the key file is named, never quoted).
    """
    env_root = os.environ.get("STORAGE_EMULATOR_HOST")
    if api_root is not None:
        root, emulator = api_root, True
    elif env_root:
        root = env_root if env_root.startswith("http") else f"http://{env_root}"
        root, emulator = root.rstrip("/"), True
    else:
        root, emulator = DEFAULT_API_ROOT, False
    check_plain_http(
        root,
        label="GCS",
        allow_http=allow_http,
        what="api_root" if api_root is not None else "STORAGE_EMULATOR_HOST",
    )
    # An emulator takes unauthenticated requests; with explicit credentials we send them
    # anyway (a private endpoint may want them).
    anonymous = emulator and token is None and service_file is None
    if service_file is not None:
        await anyio.to_thread.run_sync(check_service_file, service_file)
    # Our own session: the engine's concurrency limit, not a small pool, bounds what is in
    # flight, and every request passes its own size-scaled timeout.
    trace = aiohttp.TraceConfig()
    trace.on_request_redirect.append(refuse_redirect)
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=timeout),
        trace_configs=[trace],
    )
    make_storage = functools.partial(
        Storage,
        service_file=service_file,
        # Duck-typed: the library only calls the token's get().
        token=cast(Any, token),
        # The library's annotation names requests' Session (its sync twin shares the code).
        session=cast(Any, session),
        api_root=root,
        api_is_dev=anonymous,
    )
    try:
        # Storage() builds its Token, which reads key files and the gcloud SDK config: keep
        # that file I/O off the loop (nothing in it is bound to the loop).
        storage = await anyio.to_thread.run_sync(make_storage)
    except Exception as exc:
        await session.close()
        errors.redactor.scrub_exception(exc)
        # The library's message may quote the key file; name the file only.
        raise ConfigError(
            f"cannot load GCS credentials from {service_file!r}: {type(exc).__name__}"
        ) from exc
    errors.root = root
    return GCSClient(
        session=session,
        storage=storage,
        root=root,
        anonymous=anonymous,
        errors=errors,
        timeout=timeout,
        min_throughput=min_throughput,
    )
