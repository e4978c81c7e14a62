"""The Azure SDK's clients for one container: built on the running loop, closed together.

The SDK's own retries are off (the engine retries), redirects are never followed, and requests
go out through one aiohttp session whose trace counts conditional sends (for
:class:`~artifact_uploader.providers._kit.InDoubt`) and whose in-memory bodies are sent as
:class:`~artifact_uploader.providers._body.Body`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import aiohttp
from azure.storage.blob.aio import BlobServiceClient

from .._errors import ConfigError
from . import _azure_blocks as blocks
from ._azure_config import AzureSettings
from ._body import Body
from ._kit import MiB, count_conditional_send
from ._redact import Redactor, install_log_filter
from ._vendor import azure_transport


class AzureClients:
    """The service and container clients, the session under them and an owned credential.

    Args:
        settings: The provider's checked settings.
        container: The container's name.
        redactor: The provider's one redaction path (also installed on the SDK's loggers).
    """

    def __init__(self, settings: AzureSettings, container: str, redactor: Redactor) -> None:
        self._settings = settings
        self._container_name = container
        self._redactor = redactor
        self._service: Any = None
        self._log_filter: Callable[[], None] | None = None
        #: The container client while open, else None.
        self.container: Any = None
        #: A credential these clients created (DefaultAzureCredential), closed with them.
        self.owned_credential: Any = None

    async def open(self) -> Any:
        """Create the clients on the running loop; returns the container client.

        Raises:
            ConfigError: The SDK refused the configuration (e.g. an unknown api_version).
        """
        settings = self._settings
        kwargs: dict[str, Any] = {
            # The engine retries; see the module docstring.
            "retry_total": 0,
            # A redirect could send the request (and a SAS in its URL) elsewhere: never follow.
            "permit_redirects": False,
            # upload_blob splits bodies above this into blocks; keep every put one request.
            "max_single_put_size": blocks.SINGLE_PUT_MAX,
            # Likewise a ranged read: one get_range is one GET (the engine sizes the ranges).
            "max_single_get_size": blocks.SINGLE_PUT_MAX,
            **settings.timeouts,
        }
        if settings.api_version is not None:
            kwargs["api_version"] = settings.api_version
        # The SDK's own session settings, plus a trace that counts conditional sends.
        trace = aiohttp.TraceConfig()
        trace.on_request_headers_sent.append(count_conditional_send)
        session = aiohttp.ClientSession(
            trust_env=True,
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            trace_configs=[trace],
        )
        kwargs["transport"] = azure_transport(session, _wrap_data, **settings.timeouts)
        try:
            if settings.connection_string is not None:
                service = BlobServiceClient.from_connection_string(
                    settings.connection_string, **kwargs
                )
            else:
                # resolve_settings always sets an account_url when there is no connection string.
                assert settings.account_url is not None
                service = BlobServiceClient(
                    settings.account_url, credential=self.make_credential(), **kwargs
                )
        except (ValueError, TypeError) as exc:
            await session.close()
            await self._close_credential()
            # The SDK's message may quote the connection string; say only what was wrong.
            message = self._redactor.scrub(str(exc)).splitlines()[0]
            raise ConfigError(f"Azure: {message}") from None
        self._service = service
        # DEBUG logs of the SDK (azure-core logs URLs and headers) are scrubbed too.
        self._log_filter = install_log_filter(self._redactor, ("azure", "aiohttp"))
        self.container = service.get_container_client(self._container_name)
        return self.container

    def make_credential(self) -> Any:
        """What the service client signs with: the key, the SAS, the given credential, or a
        DefaultAzureCredential these clients own."""
        settings = self._settings
        if settings.account_key is not None:
            return {"account_name": settings.account_name, "account_key": settings.account_key}
        if settings.sas_token is not None:
            return settings.sas_token
        if settings.credential is not None:
            return settings.credential
        try:
            from azure.identity.aio import DefaultAzureCredential
        except ImportError as exc:  # pragma: no cover - checked in resolve_settings
            raise ConfigError(f"Azure: azure-identity cannot be imported ({exc})") from None
        self.owned_credential = DefaultAzureCredential()
        return self.owned_credential

    async def aclose(self) -> None:
        """Close the clients (and a credential they created). Idempotent."""
        service, self._service, self.container = self._service, None, None
        log_filter, self._log_filter = self._log_filter, None
        if log_filter is not None:
            log_filter()
        if service is not None:
            await service.close()
        await self._close_credential()

    async def _close_credential(self) -> None:
        credential, self.owned_credential = self.owned_credential, None
        if credential is not None:
            await credential.close()


def _wrap_data(data: Any) -> Any:
    """Request data as aiohttp should send it: in-memory bodies over 1 MiB as :class:`Body`.

    The SDK hands aiohttp blocks as plain bytes; aiohttp warns (ResourceWarning) for every body
    over 1 MiB and writes it in one piece. Ours were read off the loop already, so Body sends
    them in slices without the warning, ticking the stall watchdog as each slice leaves.
    """
    if isinstance(data, bytes | bytearray | memoryview) and len(data) > MiB:
        return Body(memoryview(data))
    return data
