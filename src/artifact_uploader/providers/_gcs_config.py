"""GCS settings: the checked constructor arguments, the seed's options, credentials' names.

Nothing here does I/O on the event loop or imports gcloud-aio: a bad option is refused at the
call that received it, before anything is opened.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol
from urllib.parse import urlsplit

from .._errors import ConfigError, InvalidObjectNameError
from ._kit import (
    MAX_NAME_BYTES,
    SEED_OPTIONS,
    MiB,
    check_common_name,
    check_plain_http,
    join_key,
    pop_seed_endpoint,
    split_store_uri,
)

DEFAULT_API_ROOT: Final = "https://storage.googleapis.com"
DEFAULT_RESUMABLE_THRESHOLD: Final = 8 * MiB
DEFAULT_TIMEOUT: Final = 60.0
DEFAULT_MIN_THROUGHPUT: Final = float(MiB)
_ACME_PREFIX: Final = ".well-known/acme-challenge/"
# Bucket names: 3-63 characters (up to 222 with dots), lowercase letters, digits, '-', '_', '.'.
_BUCKET_RE: Final = re.compile(r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$")
_KNOWN_OPTIONS: Final = SEED_OPTIONS | {
    "service_file",
    "token",
    "api_root",
    "endpoint_url",
    "resumable_threshold",
    "timeout",
    "min_throughput",
    "allow_http",
}


class TokenSource(Protocol):
    """What the provider needs from a credential: gcloud-aio-auth's ``Token`` satisfies it."""

    async def get(self) -> str | None:
        """Return a current OAuth2 access token."""
        ...


class StaticToken:
    """A raw access token string, held out of every repr."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def __repr__(self) -> str:
        return "StaticToken(<redacted>)"

    @property
    def secret(self) -> str:
        """The token itself (for the redactor; never printed)."""
        return self._value

    async def get(self) -> str | None:
        """The token (it is never refreshed)."""
        return self._value

    async def close(self) -> None:
        """Nothing to close."""
        return None


@dataclass(frozen=True, slots=True)
class GCSPaths:
    """Where objects go: a bucket and a prefix, and the names GCS allows there."""

    bucket: str
    prefix: str

    def key(self, name: str) -> str:
        """The object's full name in the bucket."""
        return join_key(self.prefix, name)

    def uri(self, name: str) -> str:
        """``gs://bucket/prefix/name``."""
        return f"gs://{self.bucket}/{self.key(name)}"

    def check_name(self, name: str) -> None:
        """Raise :class:`InvalidObjectNameError` for a name GCS refuses (see
        :meth:`GCSProvider.check_name <artifact_uploader.providers.gcs.GCSProvider.check_name>`).
        """
        budget = MAX_NAME_BYTES - (len(self.prefix.encode()) + 1 if self.prefix else 0)
        check_common_name(name, max_bytes=budget)
        if "\r" in name or "\n" in name:
            raise InvalidObjectNameError(name, "GCS object names cannot contain CR or LF")
        key = self.key(name)
        if key in (".", ".."):
            raise InvalidObjectNameError(name, "GCS object names cannot be '.' or '..'")
        if key.startswith(_ACME_PREFIX):
            raise InvalidObjectNameError(
                name, f"GCS object names cannot start with {_ACME_PREFIX!r}"
            )


def check_bucket(bucket: object) -> str:
    """The bucket name, if GCS would take it.

    Raises:
        ConfigError: Naming the value and the rule.
    """
    if not isinstance(bucket, str) or not _BUCKET_RE.match(bucket) or ".." in bucket:
        raise ConfigError(
            f"invalid GCS bucket name {bucket!r}: 3-222 characters of lowercase letters, "
            "digits, '-', '_' and '.', starting and ending with a letter or digit"
        )
    return bucket


def check_token(token: object) -> TokenSource | None:
    """A token source from the ``token`` argument: a str becomes a :class:`StaticToken`.

    Raises:
        ConfigError: An empty string, or something without an async ``get()``.
    """
    if isinstance(token, str):
        if not token:
            raise ConfigError("GCS option 'token' must not be empty")
        return StaticToken(token)
    if token is not None and not callable(getattr(token, "get", None)):
        raise ConfigError(
            "GCS option 'token' must be a str or a gcloud-aio-auth Token "
            f"(something with an async get()), not {type(token).__name__}"
        )
    return token  # type: ignore[return-value]  # duck-typed: anything with get()


def check_api_root(api_root: str | None, allow_http: object) -> str | None:
    """``api_root`` without a trailing slash, checked (and ``allow_http`` with it).

    Raises:
        ConfigError: Not an http(s) URL, ``allow_http`` not a bool, or plain HTTP to a host
            that is not this machine without ``allow_http``.
    """
    if api_root is not None:
        api_root = api_root.rstrip("/")
        parts = urlsplit(api_root)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(
                f"GCS api_root must look like http(s)://host[:port], got {api_root!r}"
            )
    if not isinstance(allow_http, bool):
        raise ConfigError(f"GCS option 'allow_http' must be a bool, got {allow_http!r}")
    if api_root is not None:
        check_plain_http(api_root, label="GCS", allow_http=allow_http, what="api_root")
    return api_root


def check_sizes(
    resumable_threshold: object, timeout: object, min_throughput: object
) -> tuple[int, float, float]:
    """The threshold (an int >= 0) and the positive timeout and throughput, checked.

    Raises:
        ConfigError: Naming the option and the value.
    """
    if isinstance(resumable_threshold, bool) or not isinstance(resumable_threshold, int):
        raise ConfigError(f"resumable_threshold must be an int, got {resumable_threshold!r}")
    if resumable_threshold < 0:
        raise ConfigError(f"resumable_threshold must be >= 0, got {resumable_threshold}")
    for label, value in (("timeout", timeout), ("min_throughput", min_throughput)):
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or value <= 0
        ):
            raise ConfigError(f"GCS option {label!r} must be a positive number, got {value!r}")
    return resumable_threshold, float(timeout), float(min_throughput)  # type: ignore[arg-type]


def from_uri_arguments(
    uri: str, options: Mapping[str, object] | None
) -> tuple[str, str, dict[str, Any]]:
    """The bucket, prefix and keyword arguments of a provider for ``uri`` and ``options``.

    Raises:
        ConfigError: A malformed URI, an unknown option or a bad option value.
    """
    parts = split_store_uri(uri, "gs", "GCS")
    opts = dict(options or {})
    unknown = sorted(set(opts) - _KNOWN_OPTIONS)
    if unknown:
        raise ConfigError(
            f"unknown option(s) for the GCS store: {unknown}; known: {sorted(_KNOWN_OPTIONS)}"
        )
    # A bucket's location is fixed when it is created and the JSON API has a single version
    # (v1): the seed's region / api_version have nothing to select here.
    opts.pop("region", None)
    opts.pop("api_version", None)

    kwargs: dict[str, Any] = {}
    for name in ("resumable_threshold", "timeout", "min_throughput", "allow_http"):
        if opts.get(name) is not None:
            kwargs[name] = opts.pop(name)
    token = opts.pop("token", None)
    if token is not None:
        kwargs["token"] = token
    service_file = _service_file_option(opts)
    if service_file is not None:
        kwargs["service_file"] = service_file
    api_root = _api_root_option(opts)
    if api_root is not None:
        kwargs["api_root"] = api_root
    return parts.netloc, parts.path, kwargs


def _service_file_option(opts: dict[str, object]) -> str | None:
    """The key file named by ``service_file``, or by the seed's ``key`` / ``secret``."""
    service_file = opts.pop("service_file", None)
    key = opts.pop("key", None)
    secret = opts.pop("secret", None)
    if service_file is not None and not isinstance(service_file, str | os.PathLike):
        raise ConfigError("GCS option 'service_file' must be a path")
    candidates: list[str] = []
    if isinstance(key, str | os.PathLike) and os.path.isfile(key):
        candidates.append(os.fspath(key))
    if isinstance(secret, str | os.PathLike) and os.path.isfile(secret):
        # libcloud's GCS driver takes key=<service account email>, secret=<key file path>.
        candidates.append(os.fspath(secret))
    elif secret is not None and not candidates:
        # The values are never echoed: they may be secrets.
        raise ConfigError(
            "GCS option 'secret' must be the path of a service-account JSON key file (with "
            "'key' the account's email); HMAC keys are not supported by the JSON API: pass "
            "service_file=<path> or token=<access token> instead"
        )
    if key is not None and not candidates:
        raise ConfigError(
            "GCS option 'key' must be the path of an existing service-account JSON key file; "
            "HMAC keys and client ids are not supported: pass service_file=<path> or "
            "token=<access token> instead"
        )
    if len(candidates) > 1:
        raise ConfigError("GCS options 'key' and 'secret' both name a key file; pass just one")
    if candidates:
        if service_file is not None:
            raise ConfigError("GCS option 'service_file' conflicts with the key file in 'key'")
        return candidates[0]
    return None if service_file is None else os.fspath(service_file)


def _api_root_option(opts: dict[str, object]) -> str | None:
    """``api_root`` / ``endpoint_url``, or one made of the seed's ``host``, ``port``, ``secure``."""
    api_root = opts.pop("api_root", None)
    endpoint_url = opts.pop("endpoint_url", None)
    seed = pop_seed_endpoint(opts, "GCS")
    given = [n for n, v in (("api_root", api_root), ("endpoint_url", endpoint_url)) if v]
    if len(given) > 1 or (given and seed.host is not None):
        raise ConfigError("give the GCS endpoint once: api_root, endpoint_url or host/port")
    if seed.host is None:
        if seed.port is not None:
            raise ConfigError("GCS option 'port' needs 'host'")
        if seed.secure is False:
            raise ConfigError("GCS only serves HTTPS: secure=False needs 'host' (an emulator)")
        root = api_root or endpoint_url
        if root is not None and not isinstance(root, str):
            raise ConfigError("GCS option 'api_root' must be a str URL")
        return root
    return seed.url()


def check_service_file(path: str) -> None:
    """Refuse a key file that is not a JSON credential, naming the file, never its contents
    (blocking: run it in a worker thread).

    Raises:
        ConfigError: The file is unreadable, not JSON, or not a credential.
    """
    try:
        with open(path, "rb") as f:
            parsed = json.load(f)
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"GCS service_file {path!r} is not a readable JSON key file ({type(exc).__name__})"
        ) from None
    if not isinstance(parsed, dict) or not isinstance(parsed.get("type"), str):
        raise ConfigError(
            f"GCS service_file {path!r} is not a credential file (no 'type' field); expected a "
            "service-account or authorized-user JSON key"
        )


def credential_source(token: TokenSource | None, service_file: str | None) -> str:
    """Where the credential came from, for an error message that says what to check."""
    if isinstance(token, StaticToken):
        return "access token passed as 'token' (expired, revoked or for another project?)"
    if token is not None:
        return "token source passed as 'token'"
    if service_file is not None:
        return f"service account key file {service_file!r}"
    return (
        "default Google credentials (GOOGLE_APPLICATION_CREDENTIALS, `gcloud auth "
        "application-default login`, or the VM's service account)"
    )
