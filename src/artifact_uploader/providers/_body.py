"""Request bodies read from staged files and sent without per-byte Python work.

Shared by the S3 direct path and the Azure provider: both hand aiohttp a body already in memory.
"""

from __future__ import annotations

from typing import Any, Final

import aiohttp
import aiohttp.payload

from .._retry import note_progress
from .._types import FileSlice, MiB

# Bodies up to this size go out in one write; larger ones in slices (see Body).
_WHOLE_WRITE: Final = MiB // 4
_FIRST_WRITE: Final = 16 * 1024
_SLICE: Final = MiB
# Bodies from this size are read into a buffer allocated on the loop thread (see read_body).
_MAPPED_READ: Final = MiB


class Body(aiohttp.payload.BytesPayload):
    """A request body already read into memory, written to the socket in one call.

    aiohttp's BytesPayload warns above 1 MiB because reading big bodies on the event loop
    would block it; ours were read in a worker thread (``FileSlice.read``), so only the
    warning is left out.
    """

    def __init__(self, value: bytes | memoryview) -> None:
        aiohttp.payload.Payload.__init__(self, value, content_type="application/octet-stream")
        # Our own reference: the base class's copy (and its size field) are its business.
        self._view = memoryview(value)
        # How often the body went out: aiohttp resends an idempotent request (PUT) once by
        # itself when the connection drops, so 2 means the answer is to a second send.
        self.sends = 0

    @property
    def size(self) -> int:
        """The body's length in bytes (sent as Content-Length)."""
        return len(self._view)

    async def write(self, writer: Any) -> None:
        await self.write_with_length(writer, None)

    async def write_with_length(self, writer: Any, content_length: int | None) -> None:
        self.sends += 1
        view = self._view
        if content_length is not None:
            view = view[:content_length]
        if len(view) <= _WHOLE_WRITE:
            await writer.write(view)
            note_progress()
            return
        # aiohttp joins the buffered headers with the first chunk into a new buffer (on Python
        # before 3.12.9), and the transport copies whatever the socket does not take at once:
        # a small first piece and 1 MiB slices after it keep a part from being copied whole.
        await writer.write(view[:_FIRST_WRITE])
        note_progress()
        for start in range(_FIRST_WRITE, len(view), _SLICE):
            # write() returns once the socket has taken most of the slice (flow control), so
            # each tick tells the stall watchdog that bytes are still leaving.
            await writer.write(view[start : start + _SLICE])
            note_progress()


async def read_body(data: FileSlice) -> bytes | memoryview:
    """The bytes of ``data``; a large range into a buffer allocated on the calling thread.

    A part read with ``f.read()`` in a worker thread is allocated in that thread's malloc arena
    and freed on the loop thread; with parts spread over a dozen worker threads' arenas,
    memory freed in one arena is not reused by the next part in another, and peak RSS crept
    to 400 MiB for a 1 GiB file at concurrency 32 (8 MiB parts, 256 MiB in flight). Allocating
    every buffer on the loop thread keeps them in one arena, where freed parts are reused:
    memory stays near part size x concurrency. (A private memory mapping per part bounds it
    too, but faulting fresh pages in costs three times the CPU of the read.)
    """
    if data.length < _MAPPED_READ:
        return await data.read()
    import anyio.to_thread

    buf = bytearray(data.length)
    view = memoryview(buf)
    await anyio.to_thread.run_sync(_read_into, data, view)
    return view


def _read_into(data: FileSlice, view: memoryview) -> None:
    got = 0
    with open(data.path, "rb", buffering=0) as f:
        f.seek(data.offset)
        while got < data.length:
            n = f.readinto(view[got:])
            if not n:
                break
            got += n
    if got != data.length:
        raise OSError(f"{data.path}: expected {data.length} bytes at {data.offset}, got {got}")
