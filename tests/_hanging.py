"""A store that starts multipart uploads, then never answers: for close(timeout) bounds.

In an importable module (not a test file's ``__main__``) so ``use_procs=True`` can send it to
its child process.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from artifact_uploader import MemoryProvider
from artifact_uploader._types import FileSlice, PartResult


class SilentAfterCreate(MemoryProvider):
    """CreateMultipartUpload answers; parts, aborts and closing hang (a store gone silent).

    ``marker`` is touched when the first part starts, so a test in another process knows the
    multipart upload exists.
    """

    def __init__(self, marker: str) -> None:
        super().__init__("silent")
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        # Rebuilt fresh in the child: MemoryProvider's locks cannot be pickled.
        return (type(self), (self.marker,))

    async def put_part(
        self, name: str, upload_id: str, part_number: int, data: FileSlice
    ) -> PartResult:
        Path(self.marker).touch()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def abort_multipart(self, name: str, upload_id: str) -> None:
        await asyncio.Event().wait()

    async def aclose(self) -> None:
        await asyncio.Event().wait()
