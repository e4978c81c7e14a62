"""An aiohttp service whose handlers hand artifacts to one shared AsyncUploader.

Run: python examples/service.py STORE_URI [--port 8080]
(e.g. file:///tmp/service-store, or s3://bucket/prefix with the usual AWS environment).

- ``POST /artifacts/{name}`` with the file as the request body: the body is spooled to disk,
  handed to the uploader, and the answer is ``202 Accepted`` as soon as it is *staged*:
  ``{"name": ..., "state": "staged", "uri": ...}``.
- ``GET /artifacts/{name}``: ``{"state": "uploading"}`` until the upload ends, then
  ``{"state": "durable", "uri", "size", "checksum_algorithm", "checksum"}`` or
  ``{"state": "failed", "error": ...}``; 404 for a name this service was never given.

The uploader is created when the app starts (on the app's own event loop) and closed at
cleanup, which waits for the uploads still running. Handlers never wait for an upload.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

from aiohttp import web

from artifact_uploader import AsyncUploader, ConfigError, UploadError, UploadFailedError

log = logging.getLogger("service")

UPLOADER = web.AppKey("uploader", AsyncUploader)
# Object name -> the latest UploadHandle for it (kept for the service's lifetime: an example).
HANDLES = web.AppKey("handles", dict)
SPOOL = web.AppKey("spool", Path)

CHUNK = 1024 * 1024


def create_app(
    store: str,
    *,
    provider_kwargs: Mapping[str, Any] | None = None,
    max_concurrency: int = 8,
) -> web.Application:
    """The service, uploading to ``store`` (a URI, as for :class:`AsyncUploader`)."""
    app = web.Application()

    async def uploader(app: web.Application) -> AsyncIterator[None]:
        spool = Path(tempfile.mkdtemp(prefix="service-spool-"))
        # One uploader for the whole service: one semaphore bounds every request it makes.
        up = AsyncUploader(store, provider_kwargs=provider_kwargs, max_concurrency=max_concurrency)
        await up.open()  # fails start-up on a missing bucket or refused credentials
        app[UPLOADER], app[HANDLES], app[SPOOL] = up, {}, spool
        try:
            yield
        finally:
            try:
                await up.aclose()  # waits for what is still uploading
            except UploadFailedError as exc:
                # Each failure was also answered to GET; at shutdown it is only logged.
                log.error("uploads that failed: %s", exc)
            finally:
                shutil.rmtree(spool, ignore_errors=True)

    app.cleanup_ctx.append(uploader)
    app.router.add_post("/artifacts/{name:.+}", post_artifact)
    app.router.add_get("/artifacts/{name:.+}", get_artifact)
    return app


async def post_artifact(request: web.Request) -> web.Response:
    """Spool the body, stage it, answer 202 with the staged state."""
    app = request.app
    name = request.match_info["name"]
    spooled = app[SPOOL] / uuid.uuid4().hex
    try:
        with spooled.open("wb") as f:
            async for chunk in request.content.iter_chunked(CHUNK):
                # Disk writes off the loop: other requests keep being served meanwhile.
                await asyncio.to_thread(f.write, chunk)
        # "move": the spool file is ours, so staging renames it instead of copying it.
        handle = await app[UPLOADER].submit(spooled, name, staging="move")
    except ConfigError as exc:  # e.g. an object name the store cannot hold
        raise web.HTTPBadRequest(text=f"{exc}\n") from None
    except UploadError as exc:  # could not stage (disk full...), or shutting down
        raise web.HTTPServiceUnavailable(text=f"{exc}\n") from None
    finally:
        spooled.unlink(missing_ok=True)  # still there only if it was never staged
    app[HANDLES][name] = handle
    body = {"name": name, "state": "staged", "uri": app[UPLOADER].provider.uri(name)}
    return web.json_response(body, status=202)


async def get_artifact(request: web.Request) -> web.Response:
    """Where the upload of ``name`` stands: uploading, durable or failed."""
    name = request.match_info["name"]
    handle = request.app[HANDLES].get(name)
    if handle is None:
        raise web.HTTPNotFound(text=f"no artifact {name!r} was posted here\n")
    if not handle.done():
        return web.json_response({"name": name, "state": "uploading"})
    try:
        result = handle.result()
    except UploadError as exc:
        return web.json_response(
            {"name": name, "state": "failed", "error": f"{type(exc).__name__}: {exc}"}
        )
    return web.json_response(
        {
            "name": name,
            "state": "durable",
            "uri": result.uri,
            "size": result.size,
            "checksum_algorithm": result.checksum_algorithm,
            "checksum": result.checksum,
        }
    )


async def serve(store: str, host: str, port: int) -> None:
    """Serve until cancelled (Ctrl-C), then close the uploader (waiting for its uploads)."""
    runner = web.AppRunner(create_app(store))
    await runner.setup()  # runs the startup hooks: the uploader opens here
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = runner.addresses[0][1]  # the real port, also with --port 0
        print(f"listening on http://{host}:{bound}", flush=True)
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("store", help="where to upload: file:///dir, s3://bucket/prefix, gs://, az://")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8080, help="0: any free port (printed)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.store, args.host, args.port))


if __name__ == "__main__":
    main()
