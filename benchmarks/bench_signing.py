"""CPU cost of signing one S3 PutObject with SigV4: hand-written, awscrt, botocore.

Run from the repository root::

    .venv/bin/python benchmarks/bench_signing.py            # ~10 s
    .venv/bin/python benchmarks/bench_signing.py --rounds 31 --requests 5000

The direct request path (providers/_s3_direct.py) signs every PutObject / UploadPart itself.
This measures, in one process and one run, what one signature costs with:

- ``hand-written``: the stdlib-HMAC signer the direct path used before (kept here, verbatim in
  substance, as the reference; the signing key cached per day);
- ``awscrt``: :class:`artifact_uploader.providers._s3_direct.S3Signer`, awscrt's native signer
  (what the direct path uses now);
- ``botocore``: botocore's pure-Python ``S3SigV4Auth`` on an ``AWSRequest`` (its public signer);
- ``botocore-crt``: botocore's ``CrtS3SigV4Auth`` (awscrt behind botocore's request object).

Each round signs ``--requests`` identical-shaped requests with each signer in turn (the order
rotates), timing process CPU; the table gives the median and fastest round per signer, the
spread between rounds, the ratio to hand-written, and the extra CPU per object as a share of
the direct path's ~600 us of client CPU per small object. Every signer is first checked to
produce the same Authorization header for the same request and instant.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import hmac
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import botocore.auth
import botocore.crt.auth
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import ReadOnlyCredentials
from botocore.crt.auth import CrtS3SigV4Auth

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from artifact_uploader.providers._s3_direct import S3Signer

PER_OBJECT_US = 600.0  # client CPU of the direct path per small (64 KiB) object
NOISE = 0.05  # what the S3 benchmark treats as "not measurably slower"
REGION = "us-east-1"
HOST = "127.0.0.1:9000"
PATH = "/bkt/checkpoints/run-7/step-000123/shard-0042.bin"
HEADERS = {
    "host": HOST,
    "x-amz-checksum-crc32c": "yZRlqg==",
    "x-amz-sdk-checksum-algorithm": "CRC32C",
    "if-none-match": "*",
}
CREDS = ReadOnlyCredentials(
    "AKIABENCHMARKKEY0001", "bench/secret+key/0123456789abcdefghijklmn", None
)
UNSIGNED = "UNSIGNED-PAYLOAD"


class HandWritten:
    """The direct path's former signer: stdlib HMAC, the signing key cached per day."""

    def __init__(self, region: str) -> None:
        self._region = region
        self._scope_tail = f"/{region}/s3/aws4_request"
        self._key_cache: tuple[str, str, bytes] = ("", "", b"")

    def sign(self, path: str, query: str, headers: dict[str, str], amz_date: str) -> str:
        headers["x-amz-content-sha256"] = UNSIGNED
        if CREDS.token:
            headers["x-amz-security-token"] = CREDS.token
        date = amz_date[:8]
        headers["x-amz-date"] = amz_date
        names = sorted(headers)
        signed = ";".join(names)
        canonical = "\n".join(
            (
                "PUT",
                path,
                query,
                "".join(f"{n}:{' '.join(headers[n].split())}\n" for n in names),
                signed,
                UNSIGNED,
            )
        )
        scope = date + self._scope_tail
        to_sign = "\n".join(
            (
                "AWS4-HMAC-SHA256",
                amz_date,
                scope,
                hashlib.sha256(canonical.encode("utf-8")).hexdigest(),
            )
        )
        cached_date, cached_secret, key = self._key_cache
        if cached_date != date or cached_secret != CREDS.secret_key:
            key = _hmac(("AWS4" + CREDS.secret_key).encode("utf-8"), date)
            for part in (self._region, "s3", "aws4_request"):
                key = _hmac(key, part)
            self._key_cache = (date, CREDS.secret_key, key)
        signature = hmac.new(key, to_sign.encode("utf-8"), hashlib.sha256).hexdigest()
        headers["authorization"] = (
            f"AWS4-HMAC-SHA256 Credential={CREDS.access_key}/{scope}, "
            f"SignedHeaders={signed}, Signature={signature}"
        )
        return headers["authorization"]


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode("utf-8"), hashlib.sha256).digest()


def _signers() -> dict[str, Callable[[datetime.datetime], str]]:
    """One call per signer: sign the benchmark request at an instant, return Authorization."""
    hand = HandWritten(REGION)
    crt = S3Signer(REGION)
    config = Config(s3={"payload_signing_enabled": False})
    url = f"https://{HOST}{PATH}"

    def hand_written(now: datetime.datetime) -> str:
        return hand.sign(PATH, "", dict(HEADERS), now.strftime("%Y%m%dT%H%M%SZ"))

    def awscrt_signer(now: datetime.datetime) -> str:
        signed = crt.sign("PUT", PATH, "", HEADERS, CREDS, now=now)
        return next(v for k, v in signed.items() if k.lower() == "authorization")

    def botocore_signer(kind: type[S3SigV4Auth] | type[CrtS3SigV4Auth]) -> Callable[..., str]:
        def sign(now: datetime.datetime) -> str:
            request = AWSRequest(method="PUT", url=url, headers=dict(HEADERS), data=b"")
            request.context["client_config"] = config
            kind(CREDS, "s3", REGION).add_auth(request)
            return str(request.headers["Authorization"])

        return sign

    return {
        "hand-written": hand_written,
        "awscrt": awscrt_signer,
        "botocore": botocore_signer(S3SigV4Auth),
        "botocore-crt": botocore_signer(CrtS3SigV4Auth),
    }


def _check_same(signers: dict[str, Callable[[datetime.datetime], str]]) -> None:
    """All signers give the same Authorization for the same request and instant."""
    now = datetime.datetime(2026, 12, 6, 5, 30, 0, tzinfo=datetime.UTC)
    # botocore's signers read the clock themselves: give them the instant for this check.
    clock = botocore.auth.get_current_datetime
    botocore.auth.get_current_datetime = lambda *a, **k: now.replace(tzinfo=None)
    crt_clock = botocore.crt.auth.get_current_datetime
    botocore.crt.auth.get_current_datetime = lambda *a, **k: now
    try:
        answers = {name: sign(now) for name, sign in signers.items()}
    finally:
        botocore.auth.get_current_datetime = clock
        botocore.crt.auth.get_current_datetime = crt_clock
    if len(set(answers.values())) != 1:
        raise SystemExit(f"the signers disagree: {answers}")


def _round(sign: Callable[[datetime.datetime], str], requests: int) -> float:
    """CPU microseconds per signature over one round (the clock read included, as in use)."""
    now = datetime.datetime.now
    utc = datetime.UTC
    start = time.process_time()
    for _ in range(requests):
        sign(now(utc))
    return (time.process_time() - start) / requests * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--requests", type=int, default=2000, help="signatures per round")
    args = parser.parse_args()
    signers = _signers()
    _check_same(signers)
    names = list(signers)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for name in names:  # warm-up
        _round(signers[name], max(1, args.requests // 10))
    for r in range(args.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            samples[name].append(_round(signers[name], args.requests))
    base = statistics.median(samples["hand-written"])
    print(
        f"SigV4 signing of one S3 PutObject, CPU per request ({args.rounds} rounds x "
        f"{args.requests} requests, Python {sys.version.split()[0]})"
    )
    print(
        f"{'signer':<14}{'median us':>10}{'fastest us':>11}{'spread':>8}{'x hand':>8}"
        f"{'extra us':>10}{'of 600us':>10}"
    )
    for name in names:
        values = samples[name]
        median = statistics.median(values)
        spread = (max(values) - min(values)) / median
        extra = median - base
        print(
            f"{name:<14}{median:>10.1f}{min(values):>11.1f}{spread:>8.0%}{median / base:>8.2f}"
            f"{extra:>+10.1f}{extra / PER_OBJECT_US:>+10.1%}"
        )
    extra = statistics.median(samples["awscrt"]) - base
    share = extra / PER_OBJECT_US
    verdict = "within" if share <= NOISE else "outside"
    print(
        f"awscrt vs hand-written: {extra:+.1f} us per request = {share:+.1%} of "
        f"~{PER_OBJECT_US:.0f} us client CPU per small object: {verdict} the {NOISE:.0%} noise "
        "of per-object CPU"
    )


if __name__ == "__main__":
    main()
