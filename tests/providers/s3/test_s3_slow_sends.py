"""The stall watchdog against slow S3 request bodies: moving bytes keep a request alive.

The fault proxy reads the request body at a slow, steady pace ("trickle"), so sending it takes
several times ``stall_timeout``; the direct request path reports progress after every slice it
hands to the socket, so the request is not cut off. A body that stops moving mid-way still is:
``engine/test_faults.py::test_part_stalled_mid_body_is_aborted_and_retried`` (the slices written
before the stall tick, then the send blocks and the watchdog fires).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from artifact_uploader import (
    AsyncUploader,
    EventKind,
    PartPolicy,
    RetryPolicy,
    UploadEvent,
)
from tests.servers.fault_proxy import Fault, FaultProxy
from tests.servers.moto import MotoServer, read_s3_object

MiB = 1024 * 1024


def uploader(
    moto_server: MotoServer, proxy: FaultProxy, bucket: str, events: list[UploadEvent]
) -> AsyncUploader:
    return AsyncUploader(
        f"s3://{bucket}/run",
        provider_kwargs=moto_server.options(endpoint_url=proxy.endpoint_url),
        retry=RetryPolicy(attempts=2, base_delay=0.0, max_delay=0.0, stall_timeout=1.0),
        # One PutObject for the whole file.
        parts=PartPolicy(threshold=64 * MiB),
        on_event=events.append,
    )


@pytest.mark.asyncio
async def test_slow_steady_body_outlives_the_stall_timeout(
    moto_server: MotoServer, moto_s3: Any, s3_bucket: str, fault_proxy: FaultProxy, tmp_path: Path
) -> None:
    # The first 8 MiB of 16 at 4 MiB/s: two seconds or more in which the client hands the
    # socket a 1 MiB slice about every quarter second, against a stall_timeout of one second.
    # The rest goes at full speed, so what kernel buffers hold (a few MiB) once the client has
    # written its last slice drains at once: no silent tail.
    data = os.urandom(16 * MiB)
    path = tmp_path / "slow.bin"
    path.write_bytes(data)
    events: list[UploadEvent] = []
    async with uploader(moto_server, fault_proxy, s3_bucket, events) as up:
        fault_proxy.script(
            Fault("trickle", rate=4 * MiB, body_fraction=0.5), match="slow.bin", method="PUT"
        )
        await (await up.submit(path, "slow.bin"))
    assert fault_proxy.counts["trickle"] == 1
    assert [e for e in events if e.kind is EventKind.RETRY] == []
    assert read_s3_object(moto_s3, s3_bucket, "run/slow.bin") == data
