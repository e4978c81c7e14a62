"""The bucket one S3 provider talks to: its names, its open client, its error mapping.

Shared by the provider's write, upload and read sides, so each of them asks one object for the
client (botocore's, and the direct request path when it is in use), an object's key and URI, and
the translation of a failure.
"""

from __future__ import annotations

from typing import Any

from .._errors import ProviderError
from ._kit import join_key
from ._redact import Redactor
from ._s3_direct import DirectS3
from ._s3_errors import map_error


class S3Target:
    """A bucket and key prefix, the client open on them, and how their failures read.

    Attributes:
        bucket: The bucket's name.
        prefix: The key prefix (no leading or trailing slash).
        redactor: The provider's secrets, scrubbed from every message.
        label: The provider's repr, to name it in "not open".
        client: The aiobotocore client while the provider is open, else None.
        direct: The direct PutObject / UploadPart path, when it is in use (else None).
    """

    __slots__ = ("bucket", "client", "direct", "label", "prefix", "redactor")

    def __init__(self, bucket: str, prefix: str, redactor: Redactor, *, label: str) -> None:
        self.bucket = bucket
        self.label = label
        self.prefix = prefix
        self.redactor = redactor
        self.client: Any = None
        self.direct: DirectS3 | None = None

    def __repr__(self) -> str:
        return f"S3Target(bucket={self.bucket!r}, prefix={self.prefix!r})"

    def key(self, name: str) -> str:
        """The S3 key of object ``name`` (the prefix joined with the name)."""
        return join_key(self.prefix, name)

    def uri(self, name: str) -> str:
        """``s3://bucket/key`` of object ``name``."""
        return f"s3://{self.bucket}/{self.key(name)}"

    def live(self) -> Any:
        """The open client.

        Raises:
            ProviderError: The provider is not open.
        """
        if self.client is None:
            raise ProviderError(f"{self.label} is not open (call open() first, or it was closed)")
        return self.client

    def error(self, name: str, text: str, *, transient: bool = False) -> ProviderError:
        """A :class:`ProviderError` about object ``name`` (its name and URI attached)."""
        return ProviderError(text, name=name, uri=self.uri(name), transient=transient)

    def scrub(self, text: str) -> str:
        """``text`` without the provider's secrets."""
        return self.redactor.scrub(text)

    def map(
        self,
        exc: BaseException,
        op: str,
        name: str | None,
        *,
        conditional: bool = False,
        missing: bool = False,
    ) -> ProviderError:
        """:func:`map_error` for this bucket (``name`` None: a bucket-level request)."""
        return map_error(
            exc,
            op,
            bucket=self.bucket,
            name=name,
            uri=self.uri(name) if name is not None else f"s3://{self.bucket}",
            redactor=self.redactor,
            conditional=conditional,
            missing=missing,
        )
