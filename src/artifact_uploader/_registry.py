"""Store URIs and the seed's provider names -> provider instances, importing SDKs lazily.

Each provider module exposes a class with ``from_uri(uri, options) -> Provider``. A module that
fails to import because its SDK is missing becomes a :class:`MissingDependencyError` naming the
extra to install.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ._errors import ConfigError, MissingDependencyError
from .providers._protocol import Provider

# scheme -> (module, class, extra that installs its SDK)
_SCHEMES: dict[str, tuple[str, str, str | None]] = {
    "file": ("artifact_uploader.providers.local", "LocalProvider", None),
    "s3": ("artifact_uploader.providers.s3", "S3Provider", "s3"),
    "gs": ("artifact_uploader.providers.gcs", "GCSProvider", "gcs"),
    "az": ("artifact_uploader.providers.azure", "AzureProvider", "azure"),
}

# The seed's provider names (and friendly aliases) -> scheme.
_PROVIDER_NAMES: dict[str, str] = {
    "file": "file",
    "local": "file",
    "s3": "s3",
    "gs": "gs",
    "gcs": "gs",
    "google_storage": "gs",
    "az": "az",
    "azure": "az",
    "azure_blobs": "az",
}


def provider_class(scheme: str) -> type[Any]:
    """Import and return the provider class for ``scheme``."""
    try:
        module_name, class_name, extra = _SCHEMES[scheme]
    except KeyError:
        raise ConfigError(
            f"unknown store scheme {scheme!r}; known: {', '.join(sorted(_SCHEMES))}"
        ) from None
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise MissingDependencyError(scheme, extra or scheme, str(exc)) from exc
    cls: type[Any] = getattr(module, class_name)
    return cls


def make_provider(store: str | Provider, options: Mapping[str, Any] | None = None) -> Provider:
    """Return ``store`` if it is a provider, else build one from its URI.

    Raises:
        ConfigError: Malformed URI, unknown scheme or option.
        MissingDependencyError: The scheme's extra is not installed.
    """
    if not isinstance(store, str):
        if not isinstance(store, Provider):
            raise ConfigError(
                f"store must be a URI string or a Provider, not {type(store).__name__}"
            )
        if options:
            raise ConfigError("provider_kwargs only apply when the store is given as a URI")
        return store
    if not store or "\x00" in store:
        raise ConfigError(f"malformed store URI {store!r}")
    if store.startswith("/"):
        store = Path(store).as_uri()
    parts = urlsplit(store)
    if not parts.scheme or "://" not in store:
        raise ConfigError(
            f"malformed store URI {store!r}: expected scheme://bucket/prefix "
            "(s3://, gs://, az://) or file:///absolute/dir"
        )
    cls = provider_class(parts.scheme.lower())
    provider: Provider = cls.from_uri(store, dict(options or {}))
    return provider


def provider_from_seed(
    provider: str, container: str, provider_kwargs: Mapping[str, Any] | None = None
) -> Provider:
    """Build a provider from the seed logger's ``(provider, container, provider_kwargs)``."""
    if not isinstance(provider, str):
        raise ConfigError(f"provider must be a str, not {type(provider).__name__}")
    scheme = _PROVIDER_NAMES.get(provider.lower())
    if scheme is None:
        raise ConfigError(
            f"unknown provider {provider!r}; valid options: {', '.join(sorted(_PROVIDER_NAMES))}"
        )
    if not isinstance(container, str) or not container.strip("/"):
        raise ConfigError(
            f"container must name a bucket (or a directory for 'file'), got {container!r}"
        )
    if scheme == "file":
        options = dict(provider_kwargs or {})
        # libcloud's local driver (the seed's "local" provider) takes its base folder from
        # `key`, and the container is a folder inside it.
        base = options.pop("key", None)
        if base is not None and not isinstance(base, str | os.PathLike):
            raise ConfigError(
                f"provider_kwargs['key'] for a local store must be a folder path, got {base!r}"
            )
        folder = Path(base or ".").expanduser() / container
        return make_provider(folder.absolute().as_uri(), options)
    return make_provider(f"{scheme}://{container.strip('/')}", provider_kwargs)
