"""The provider kit's shared decisions: seed endpoints, the error table, lost answers, hashing."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from types import SimpleNamespace

import pytest

from artifact_uploader import (
    ConfigError,
    IntegrityError,
    ObjectExistsError,
    PermissionDeniedError,
    ProviderError,
)
from artifact_uploader._types import FileSlice
from artifact_uploader.providers._kit import (
    INLINE_LIMIT,
    InDoubt,
    b64,
    classify,
    count_conditional_send,
    hash_slice,
    md5,
    note_send,
    pop_seed_endpoint,
    read_hashed,
    rule,
)

TABLE = (
    rule(ObjectExistsError, "exists", status=(409, 412), when={"conditional"}),
    rule(PermissionDeniedError, "denied", status=403),
    rule(
        IntegrityError,
        "md5",
        status=400,
        code="InvalidOperation",
        message=r"md5.*match",
        transient=True,
    ),
    rule(ProviderError, "busy", status=(429, 503), transient=True),
    rule(ProviderError, "failed"),
)


def test_classify_takes_the_first_matching_row() -> None:
    assert classify(TABLE, 412, conditional=True).label == "exists"
    # Without the precondition a 412 is no conflict: the catch-all row.
    assert classify(TABLE, 412).label == "failed"
    assert classify(TABLE, 403, "AuthFailed").error is PermissionDeniedError
    row = classify(TABLE, 400, "InvalidOperation", message="Provided contentMD5 doesn't match.")
    assert (row.label, row.transient) == ("md5", True)
    assert classify(TABLE, 400, "InvalidOperation", message="bad block id").label == "failed"
    assert classify(TABLE, 503).transient


def test_a_row_builds_its_error_with_its_transience() -> None:
    error = classify(TABLE, 400, "InvalidOperation", message="contentmd5 does not match").build(
        "the body changed", name="a", status=400
    )
    assert isinstance(error, IntegrityError)
    assert (error.transient, error.name, error.status) == (True, "a", 400)


def test_classify_without_a_catch_all_row_says_so() -> None:
    with pytest.raises(LookupError, match="418"):
        classify(TABLE[:1], 418)


def test_seed_endpoint_checks_and_builds_a_url() -> None:
    opts: dict[str, object] = {"host": "::1", "port": "4443", "secure": False, "other": 1}
    seed = pop_seed_endpoint(opts, "GCS")
    assert opts == {"other": 1}
    assert seed.given
    assert seed.url() == "http://[::1]:4443"
    assert pop_seed_endpoint({"host": "minio.internal"}, "S3").url() == "https://minio.internal"
    assert not pop_seed_endpoint({}, "S3").given
    for bad, what in (
        ({"port": "44x"}, "'port' must be an int"),
        ({"port": True}, "'port' must be an int"),
        ({"port": 70000}, "'port' out of range"),
        ({"secure": "no"}, "'secure' must be a bool"),
        ({"host": ""}, "'host' must be a non-empty str"),
    ):
        with pytest.raises(ConfigError, match=what):
            pop_seed_endpoint(dict(bad), "S3")


@pytest.mark.asyncio
async def test_in_doubt_checks_a_conflict_only_on_a_resend() -> None:
    doubt = InDoubt()
    checked: list[str] = []

    async def lost() -> str:
        raise ProviderError("no answer", transient=True)

    async def exists() -> str:
        raise ObjectExistsError("exists")

    async def ours() -> str | None:
        checked.append("landed")
        return "stored by the first send"

    # A first send's conflict is a real conflict: nothing is checked.
    with pytest.raises(ObjectExistsError):
        await doubt.run("k1", exists, ours, what="gs://b/k1")
    assert checked == []
    # A send whose answer was lost stays in doubt; its resend's conflict is checked.
    with pytest.raises(ProviderError):
        await doubt.run("k2", lost, ours, what="gs://b/k2")
    assert await doubt.run("k2", exists, ours, what="gs://b/k2") == "stored by the first send"
    assert checked == ["landed"]
    # Settled: the next conflict on the same key is real again.
    with pytest.raises(ObjectExistsError):
        await doubt.run("k2", exists, ours, what="gs://b/k2")
    assert checked == ["landed"]


@pytest.mark.asyncio
async def test_in_doubt_counts_transport_resends_and_keeps_the_conflict_when_unsure() -> None:
    doubt = InDoubt()

    async def sent_twice() -> str:
        note_send()
        note_send()
        raise ObjectExistsError("exists")

    async def cannot_tell() -> str | None:
        raise ConnectionError("head failed")

    async def not_ours() -> str | None:
        return None

    with pytest.raises(ObjectExistsError):
        await doubt.run("k", sent_twice, cannot_tell, what="gs://b/k")
    with pytest.raises(ObjectExistsError):
        await doubt.run("k", sent_twice, not_ours, what="gs://b/k")

    async def landed() -> str | None:
        return "ours"

    assert await doubt.run("k", sent_twice, landed, what="gs://b/k") == "ours"
    # note_send outside run is a no-op.
    note_send()


@pytest.mark.asyncio
async def test_read_and_hash_agree_with_hashlib(tmp_path: Path) -> None:
    path = tmp_path / "f"
    blob = bytes(range(256)) * (INLINE_LIMIT // 128)
    path.write_bytes(blob)
    for length in (10, INLINE_LIMIT + 7):
        data = FileSlice(path, 3, length)
        expected = hashlib.md5(blob[3 : 3 + length]).digest()
        h = md5()
        assert await read_hashed(data, h) == blob[3 : 3 + length]
        assert h.digest() == expected
        h2 = md5()
        await asyncio.to_thread(hash_slice, data, h2)
        assert b64(h2.digest()) == b64(expected)
    with pytest.raises(OSError, match="shorter"):
        hash_slice(FileSlice(path, len(blob) - 1, 5), md5())


@pytest.mark.asyncio
async def test_the_trace_hook_counts_only_conditional_sends_inside_run() -> None:
    """count_conditional_send (aiohttp's on_request_headers_sent) feeds the one resend counter
    with the sends that carry If-None-Match; other requests in the same run do not count."""
    doubt = InDoubt()
    conditional = SimpleNamespace(headers={"If-None-Match": "*"})
    plain = SimpleNamespace(headers={"Content-Type": "x"})

    async def send(*sent: SimpleNamespace) -> str:
        for params in sent:
            await count_conditional_send(None, None, params)
        raise ObjectExistsError("exists")

    async def landed() -> str | None:
        return "ours"

    with pytest.raises(ObjectExistsError):
        await doubt.run("a", lambda: send(conditional, plain, plain), landed, what="az://c/a")
    assert await doubt.run("b", lambda: send(conditional, conditional), landed, what="az://c/b")


@pytest.mark.asyncio
async def test_a_custom_conflict_decides_what_may_be_our_own_send() -> None:
    """S3's Complete: "no such upload" on a resend may mean the first Complete made the object."""
    doubt = InDoubt()

    async def lost() -> str:
        raise ProviderError("no answer", transient=True)

    async def gone() -> str:
        raise ProviderError("NoSuchUpload", status=404)

    async def landed() -> str | None:
        return "completed by the first send"

    with pytest.raises(ProviderError):
        await doubt.run("u", lost, landed, what="s3://b/k")
    result = await doubt.run("u", gone, landed, what="s3://b/k", conflict=lambda e: e.status == 404)
    assert result == "completed by the first send"
