"""The S3 provider's options: checked where they are given, named in every refusal.

:func:`options_from_seed` turns ``from_uri``'s options (the library's names, botocore's and the
seed's ``host`` / ``port`` / ``secure``) into constructor arguments; :func:`check_options` checks
the constructor's. A secret value is never echoed in a message.
"""

from __future__ import annotations

from typing import Any, Final
from urllib.parse import urlsplit

import botocore.httpchecksum

from .._errors import ConfigError, MissingDependencyError
from ._kit import is_loopback_host, pop_seed_endpoint

_OPTION_ALIASES: Final = {
    "aws_access_key_id": "key",
    "aws_secret_access_key": "secret",
    "aws_session_token": "token",
    "session_token": "token",
    "region_name": "region",
}
CHECKSUM_MODES: Final = ("when_supported", "when_required")


def check_bucket(bucket: object) -> None:
    """Refuse what can never be a bucket name.

    Raises:
        ConfigError: Naming the value and the rule it breaks.
    """
    if not isinstance(bucket, str) or not bucket:
        raise ConfigError(f"S3 bucket name must be a non-empty str, got {bucket!r}")
    # Legacy buckets may hold capitals and underscores, so only reject what can never be a bucket.
    if not 3 <= len(bucket) <= 255 or not all(c.isalnum() or c in ".-_" for c in bucket):
        raise ConfigError(
            f"invalid S3 bucket name {bucket!r}: 3-255 letters, digits, '.', '-' or '_'"
        )
    if not bucket.isascii():
        raise ConfigError(f"invalid S3 bucket name {bucket!r}: must be ASCII")


def check_options(
    *,
    endpoint_url: str | None,
    key: str | None,
    secret: str | None,
    token: str | None,
    checksum: str | None,
    checksum_mode: str,
    verify: bool | str | None,
    max_pool_connections: int,
    connect_timeout: float,
    read_timeout: float,
    allow_http: bool,
    check_etag: bool | None,
) -> None:
    """Check the constructor's arguments (``endpoint_url`` without its trailing slash,
    ``checksum`` lower-cased).

    Raises:
        ConfigError: The first bad value, named.
        MissingDependencyError: ``checksum="crc32c"`` without botocore[crt].
    """
    if endpoint_url is not None:
        parts = urlsplit(endpoint_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(
                f"endpoint_url must look like http(s)://host[:port], got {endpoint_url!r}"
            )
    if (key is None) != (secret is None):
        raise ConfigError("S3 credentials need both 'key' and 'secret' (or neither)")
    if token is not None and key is None:
        raise ConfigError("S3 option 'token' needs 'key' and 'secret' as well")
    if checksum is not None:
        if checksum != "crc32c":
            raise ConfigError(f"S3 option checksum must be 'crc32c' or None, got {checksum!r}")
        if not botocore.httpchecksum.HAS_CRT:
            raise MissingDependencyError("s3", "s3", "CRC32C checksums need botocore[crt]")
    if checksum_mode not in CHECKSUM_MODES:
        raise ConfigError(
            f"S3 option checksum_mode must be one of {CHECKSUM_MODES}, got {checksum_mode!r}"
        )
    if verify is False:
        host = urlsplit(endpoint_url).hostname if endpoint_url else None
        if not is_loopback_host(host):
            raise ConfigError(
                "S3 option verify=False (no TLS certificate check) is only allowed for "
                f"loopback endpoints, not {endpoint_url or 'AWS'!r}"
            )
    if max_pool_connections < 1:
        raise ConfigError(f"max_pool_connections must be >= 1, got {max_pool_connections}")
    if connect_timeout <= 0 or read_timeout <= 0:
        raise ConfigError("S3 connect_timeout and read_timeout must be positive")
    if not isinstance(allow_http, bool):
        raise ConfigError(f"S3 option allow_http must be a bool, got {allow_http!r}")
    if check_etag is not None and not isinstance(check_etag, bool):
        raise ConfigError(f"S3 option check_etag must be a bool or None, got {check_etag!r}")


def options_from_seed(options: dict[str, object] | None) -> dict[str, Any]:
    """The constructor's keyword arguments for ``from_uri``'s options (see its docstring).

    Raises:
        ConfigError: An unknown option, one given twice, or a value of the wrong type.
    """
    opts: dict[str, object] = {}
    for name, value in (options or {}).items():
        canonical = _OPTION_ALIASES.get(name, name)
        if canonical in opts:
            raise ConfigError(f"S3 option {canonical!r} given twice (as {name!r})")
        opts[canonical] = value

    kwargs: dict[str, Any] = {}
    for name in ("key", "secret", "token", "region"):
        value = opts.pop(name, None)
        if value is not None:
            # The value itself is never echoed: it may be a secret.
            if not isinstance(value, str) or not value:
                raise ConfigError(f"S3 option {name!r} must be a non-empty str")
            kwargs[name] = value

    # The seed's host / port / secure describe the endpoint piecewise.
    # api_version selects a libcloud driver's API version; S3 has a single one (2006-03-01),
    # so it is accepted for compatibility and ignored.
    opts.pop("api_version", None)
    endpoint = opts.pop("endpoint_url", None)
    seed = pop_seed_endpoint(opts, "S3")
    if endpoint is not None:
        if seed.host is not None or seed.port is not None:
            raise ConfigError("give either S3 option 'endpoint_url' or 'host'/'port', not both")
        if not isinstance(endpoint, str):
            raise ConfigError(f"S3 option 'endpoint_url' must be a str, got {endpoint!r}")
        kwargs["endpoint_url"] = endpoint
    elif seed.host is not None:
        kwargs["endpoint_url"] = seed.url()
    elif seed.port is not None:
        raise ConfigError("S3 option 'port' needs 'host' as well")
    elif seed.secure is not None:
        kwargs["use_ssl"] = seed.secure
    for name in ("allow_http", "check_etag"):
        if name in opts:
            value = opts.pop(name)
            if not isinstance(value, bool) and not (name == "check_etag" and value is None):
                raise ConfigError(f"S3 option {name!r} must be a bool, got {value!r}")
            kwargs[name] = value

    if "checksum" in opts:
        value = opts.pop("checksum")
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"S3 option 'checksum' must be 'crc32c' or None, got {value!r}")
        kwargs["checksum"] = value
    if "checksum_mode" in opts:
        value = opts.pop("checksum_mode")
        if not isinstance(value, str):
            raise ConfigError(f"S3 option 'checksum_mode' must be a str, got {value!r}")
        kwargs["checksum_mode"] = value
    if "verify" in opts:
        value = opts.pop("verify")
        if not isinstance(value, bool | str):
            raise ConfigError(
                f"S3 option 'verify' must be a bool or a CA bundle path, got {value!r}"
            )
        kwargs["verify"] = value
    if "max_pool_connections" in opts:
        value = opts.pop("max_pool_connections")
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"S3 option 'max_pool_connections' must be an int, got {value!r}")
        kwargs["max_pool_connections"] = value
    for name in ("connect_timeout", "read_timeout"):
        if name in opts:
            value = opts.pop(name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"S3 option {name!r} must be a number, got {value!r}")
            kwargs[name] = float(value)
    if opts:
        raise ConfigError(
            f"unknown option(s) for the S3 store: {', '.join(sorted(opts))}; known: "
            "key, secret, token, region, endpoint_url, host, port, secure, api_version, "
            "checksum, checksum_mode, verify, max_pool_connections, connect_timeout, "
            "read_timeout, allow_http, check_etag"
        )
    return kwargs
