"""moto's S3 server, with two of its answers made as S3 gives them (run as a script by moto.py).

- Composite CRC32C: moto computes S3's composite checksum of a multipart upload with the
  optional ``crc32c`` package and silently falls back to zlib's CRC32 without it, so the checksum
  it reports for a multipart object would be wrong. It gets that module, backed by google-crc32c
  (a dependency of the library).
- ``Initiated`` in ListMultipartUploads: moto answers a fixed date from 2010 for every upload;
  S3 answers when the upload was created, which the S3 provider relies on to tell an upload
  orphaned by a lost CreateMultipartUpload answer from someone else's.

Arguments are moto_server's (``-H 127.0.0.1 -p 0``).
"""

from __future__ import annotations

import datetime as dt
import importlib.machinery
import re
import sys
import types
from pathlib import Path
from typing import Any

# Run as a script, this folder is first on sys.path, where moto.py would shadow moto itself.
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import google_crc32c  # noqa: E402

crc32c = types.ModuleType("crc32c")
crc32c.__spec__ = importlib.machinery.ModuleSpec("crc32c", None)
crc32c.crc32c = lambda data, value=0: google_crc32c.extend(value, bytes(data))  # type: ignore[attr-defined]
sys.modules.setdefault("crc32c", crc32c)

from moto.s3 import models, responses  # noqa: E402
from moto.server import main  # noqa: E402

_STARTED: dict[str, str] = {}
_init = models.FakeMultipart.__init__


def _remember_start(self: Any, *args: Any, **kwargs: Any) -> None:
    _init(self, *args, **kwargs)
    now = dt.datetime.now(dt.UTC)
    _STARTED[self.id] = now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


_list = responses.S3Response.list_multipart_uploads
_UPLOAD = re.compile(rb"<Upload>.*?</Upload>", re.DOTALL)


def _with_start_times(self: Any) -> Any:
    answer = _list(self)
    status, headers, body = answer

    def fix(match: re.Match[bytes]) -> bytes:
        upload = match.group(0)
        found = re.search(rb"<UploadId>([^<]+)</UploadId>", upload)
        started = _STARTED.get(found.group(1).decode()) if found else None
        if started is None:
            return upload
        return re.sub(
            rb"<Initiated>[^<]*</Initiated>", f"<Initiated>{started}</Initiated>".encode(), upload
        )

    if isinstance(body, str):
        body = body.encode()
    return status, headers, _UPLOAD.sub(fix, body)


models.FakeMultipart.__init__ = _remember_start  # type: ignore[method-assign]
responses.S3Response.list_multipart_uploads = _with_start_times  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.argv[0] = "moto_server"
    main()
