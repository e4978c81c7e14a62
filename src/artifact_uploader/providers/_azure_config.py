"""Azure provider options and blob names: checked once, before any request.

Turns the constructor's arguments (or ``from_uri``'s options, including the seed's libcloud keys)
into :class:`AzureSettings`: one way to authenticate, one endpoint, and plain HTTP refused off
this machine unless allowed.
"""

from __future__ import annotations

import importlib.util
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import quote, unquote, urlsplit

from .._errors import ConfigError, InvalidObjectNameError
from ._kit import (
    SEED_OPTIONS,
    SeedEndpoint,
    check_common_name,
    check_plain_http,
    join_key,
    pop_seed_endpoint,
    split_store_uri,
)

_DEFAULT_SUFFIX = "blob.core.windows.net"
# Hosts under these suffixes address the account by subdomain; any other host (Azurite, IoT Edge)
# puts the account name first in the path, as libcloud (the seed's backend) does.
_CLOUD_SUFFIXES = (
    "blob.core.windows.net",
    "blob.core.chinacloudapi.cn",
    "blob.core.usgovcloudapi.net",
    "blob.core.cloudapi.de",
)
# A container name: 3-63 lowercase letters, digits and single hyphens; "$root"/"$web" are special.
_CONTAINER_RE = re.compile(r"^(?=.{3,63}$)[a-z0-9](?:-?[a-z0-9])*$")
_SPECIAL_CONTAINERS = frozenset({"$root", "$web", "$logs"})
_MAX_NAME_CHARS = 1024
_MAX_SEGMENTS = 254

# The seed's (libcloud) provider_kwargs are SEED_OPTIONS: key, secret, host, port, secure, ...
OPTION_NAMES: Final = SEED_OPTIONS | {
    "connection_string",
    "account_name",
    "account_key",
    "account_url",
    "sas_token",
    "credential",
    "connection_timeout",
    "read_timeout",
    "allow_http",
}


@dataclass(frozen=True)
class AzureSettings:
    """How to reach and authenticate to one account; the secrets are left out of the repr."""

    account_name: str | None
    account_url: str | None
    api_version: str | None
    allow_http: bool
    timeouts: dict[str, float]
    account_key: str | None = field(repr=False)
    connection_string: str | None = field(repr=False)
    sas_token: str | None = field(repr=False)
    credential: Any = field(repr=False)

    def credential_source(self) -> str:
        """What to check when the service refuses the credentials."""
        if self.connection_string is not None:
            return "connection string (its AccountName / AccountKey or SharedAccessSignature)"
        if self.account_key is not None:
            return f"account key for account {self.account_name!r}"
        if self.sas_token is not None:
            return (
                "SAS token (not expired, signed for this account and container, with the "
                "read / write / list / delete permissions needed)"
            )
        return (
            "token credential (its identity needs a Storage Blob Data role on the container, "
            "e.g. Storage Blob Data Contributor)"
        )


def resolve_settings(
    container: str,
    *,
    account_name: str | None,
    account_key: str | None,
    account_url: str | None,
    connection_string: str | None,
    sas_token: str | None,
    credential: Any,
    api_version: str | None,
    connection_timeout: float | None,
    read_timeout: float | None,
    allow_http: bool,
) -> AzureSettings:
    """Check the constructor's arguments and settle the account, endpoint and credential.

    Raises:
        ConfigError: A bad container name, conflicting or missing options.
    """
    _check_container(container)
    if not isinstance(allow_http, bool):
        raise ConfigError(f"Azure: option 'allow_http' must be a bool, got {allow_http!r}")
    given = [
        label
        for label, value in (
            ("connection_string", connection_string),
            ("account_key", account_key),
            ("sas_token", sas_token),
            ("credential", credential),
        )
        if value is not None
    ]
    if len(given) > 1:
        raise ConfigError(f"Azure: give one way to authenticate, not {' and '.join(given)}")
    if connection_string is None and not given:
        # The SDK's tools and samples read this variable; honour it when nothing else is given.
        connection_string = os.environ.get("AZURE_STORAGE_CONNECTION_STRING") or None
    if connection_string is not None and account_url is not None:
        raise ConfigError("Azure: a connection string names its own endpoint; drop account_url")
    if connection_string is not None:
        parsed_name = _connection_string_account(connection_string)
        if account_name is not None and parsed_name and account_name != parsed_name:
            raise ConfigError(
                f"Azure: account_name {account_name!r} differs from the connection string's"
            )
        account_name = account_name or parsed_name
    elif account_url is None:
        if not account_name:
            raise ConfigError(
                "Azure: no account given: pass account_name, account_url or connection_string"
            )
        account_url = f"https://{account_name}.{_DEFAULT_SUFFIX}"
    else:
        account_url = account_url.rstrip("/")
        parts = urlsplit(account_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(f"Azure: account_url must be an http(s) URL, got {account_url!r}")
        if parts.query:
            raise ConfigError("Azure: pass the SAS token as sas_token, not in account_url")
        account_name = account_name or _url_account(account_url)
    if account_key is not None and not account_name:
        raise ConfigError("Azure: account_key needs account_name")
    if (
        connection_string is None
        and account_key is None
        and sas_token is None
        and credential is None
        and importlib.util.find_spec("azure.identity") is None
    ):
        raise ConfigError(
            "Azure: no credentials given and azure-identity is not installed for "
            "DefaultAzureCredential: pass connection_string, account_key or sas_token, "
            "or `pip install azure-identity`"
        )
    endpoint = (
        _connection_string_endpoint(connection_string)
        if connection_string is not None
        else account_url
    )
    if endpoint is not None:
        check_plain_http(endpoint, label="Azure", allow_http=allow_http, what="blob endpoint")
    return AzureSettings(
        account_name=account_name,
        account_url=account_url,
        api_version=api_version,
        allow_http=allow_http,
        timeouts={
            k: v
            for k, v in (("connection_timeout", connection_timeout), ("read_timeout", read_timeout))
            if v is not None
        },
        account_key=account_key,
        connection_string=connection_string,
        sas_token=sas_token.lstrip("?") if sas_token else None,
        credential=credential,
    )


def parse_store_uri(uri: str, options: Mapping[str, Any] | None) -> tuple[str, str, dict[str, Any]]:
    """``az://container/prefix`` and ``from_uri``'s options as (container, prefix, keyword
    arguments of the constructor); the seed's ``key``/``secret``/``host``/``port``/``secure``
    become ``account_name``/``account_key``/``account_url``.

    Raises:
        ConfigError: Malformed URI, unknown or conflicting options.
    """
    parts = split_store_uri(uri, "az", "Azure")
    container = unquote(parts.netloc)
    prefix = unquote(parts.path).strip("/")
    opts = dict(options or {})
    unknown = sorted(set(opts) - OPTION_NAMES)
    if unknown:
        raise ConfigError(
            f"unknown option(s) for the Azure store: {unknown}; known: {sorted(OPTION_NAMES)}"
        )
    account_name = _merge(opts, "account_name", "key")
    account_key = _merge(opts, "account_key", "secret")
    # Azure accounts live in one region, which the endpoint already names.
    opts.pop("region", None)
    if opts.get("host") == "":
        # An empty seed host has always meant Azure's default endpoint here (the kit refuses "").
        opts["host"] = _DEFAULT_SUFFIX
    seed = pop_seed_endpoint(opts, "Azure:")
    account_url = opts.pop("account_url", None)
    if seed.given:
        if account_url is not None:
            raise ConfigError("Azure: give account_url or host/port/secure, not both")
        if opts.get("connection_string") is not None:
            raise ConfigError("Azure: a connection string names its own endpoint; drop host")
        account_url = _url_from_seed(account_name, seed)
    kwargs = {
        "account_name": account_name,
        "account_key": account_key,
        "account_url": account_url,
        "connection_string": opts.pop("connection_string", None),
        "sas_token": opts.pop("sas_token", None),
        "credential": opts.pop("credential", None),
        "api_version": opts.pop("api_version", None),
        "connection_timeout": opts.pop("connection_timeout", None),
        "read_timeout": opts.pop("read_timeout", None),
        "allow_http": opts.pop("allow_http", False),
    }
    return container, prefix, kwargs


def _connection_string_endpoint(conn: str) -> str | None:
    """The blob endpoint a connection string names (explicit, development, or derived)."""
    fields: dict[str, str] = {}
    for item in conn.split(";"):
        key, sep, value = item.partition("=")
        if sep:
            fields[key.strip().lower()] = value.strip()
    if fields.get("blobendpoint"):
        return fields["blobendpoint"]
    if fields.get("usedevelopmentstorage", "").lower() == "true":
        return "http://127.0.0.1:10000"
    account = fields.get("accountname")
    if not account:
        return None
    protocol = fields.get("defaultendpointsprotocol", "https").lower()
    suffix = fields.get("endpointsuffix", "core.windows.net")
    return f"{protocol}://{account}.blob.{suffix}"


def _merge(opts: dict[str, Any], name: str, seed_name: str) -> Any:
    value, seed_value = opts.pop(name, None), opts.pop(seed_name, None)
    if value is not None and seed_value is not None and value != seed_value:
        raise ConfigError(f"Azure: options {name!r} and {seed_name!r} disagree; give one")
    return value if value is not None else seed_value


def _url_from_seed(account: str | None, seed: SeedEndpoint) -> str:
    """The account URL the seed's host/port/secure name (libcloud's addressing)."""
    if not account:
        raise ConfigError("Azure: host/port need the account name (option 'key' or 'account_name')")
    secure = seed.secure is not False
    scheme = "https" if secure else "http"
    host, port = seed.host or _DEFAULT_SUFFIX, seed.port
    # The account goes into the URL beside the host: a scheme, port or path in it cannot.
    if "/" in host or ":" in host:
        raise ConfigError(f"Azure: option 'host' must be a bare host name, got {host!r}")
    netloc_port = "" if port in (None, 443 if secure else 80) else f":{port}"
    for suffix in _CLOUD_SUFFIXES:
        if host == suffix or host.endswith("." + suffix):
            return f"{scheme}://{account}.{suffix}{netloc_port}"
    # Azurite and IoT Edge: the account is the first path segment.
    return f"{scheme}://{host}{netloc_port}/{quote(account)}"


def _url_account(account_url: str) -> str | None:
    parts = urlsplit(account_url)
    host = parts.hostname or ""
    for suffix in _CLOUD_SUFFIXES:
        if host.endswith("." + suffix):
            return host[: -len(suffix) - 1]
    segment = parts.path.strip("/").split("/", 1)[0]
    return unquote(segment) or None


def _connection_string_account(conn: str) -> str | None:
    for item in conn.split(";"):
        key, _, value = item.partition("=")
        if key.strip().lower() == "accountname":
            return value.strip() or None
        if key.strip().lower() == "usedevelopmentstorage" and value.strip().lower() == "true":
            return "devstoreaccount1"
    return None


def _check_container(container: str) -> None:
    if not isinstance(container, str) or not container:
        raise ConfigError(f"Azure: a container name is required, got {container!r}")
    if container not in _SPECIAL_CONTAINERS and not _CONTAINER_RE.match(container):
        raise ConfigError(
            f"Azure: invalid container name {container!r}: 3-63 lowercase letters, digits and "
            "single hyphens, starting and ending with a letter or digit"
        )


def check_blob_name(prefix: str, name: str) -> None:
    """Refuse names Azure cannot hold or would alter (``prefix`` is the store's folder).

    Raises:
        InvalidObjectNameError: Empty, NUL, over 1024 characters or 254 segments (with the
            prefix), ending in a dot or slash, or with ``.``/``..`` segments that URL
            normalisation would fold away.
    """
    # Azure counts characters, not bytes; a character is at most 4 bytes of UTF-8.
    check_common_name(name, max_bytes=4 * _MAX_NAME_CHARS)
    key = join_key(prefix, name)
    if len(key) > _MAX_NAME_CHARS:
        raise InvalidObjectNameError(
            name[:64] + "...",
            f"{len(key)} characters with the prefix, Azure's limit is {_MAX_NAME_CHARS}",
        )
    if key.count("/") + 1 > _MAX_SEGMENTS:
        raise InvalidObjectNameError(name, f"more than {_MAX_SEGMENTS} path segments")
    if name.endswith((".", "/")):
        raise InvalidObjectNameError(name, "Azure blob names must not end with '.' or '/'")
    if any(s in (".", "..") for s in name.split("/")):
        raise InvalidObjectNameError(
            name, "'.' and '..' segments are folded away by URL normalisation"
        )
