"""A lean request path for S3's two body-carrying calls, PutObject and UploadPart.

botocore spends about 0.8 ms of CPU per small PutObject on work this library does not need per
request: parameter conversion, an endpoint-ruleset evaluation, a dozen event hooks and a generic
signer. That is more than half the client CPU of a 64 KiB upload. Everything in that work that
varies per request for these two calls is the key, the query and a few headers, so it is done
here once at open (the endpoint comes from botocore's own ruleset, the credentials from the
client's own provider chain, both read through :mod:`._vendor`) and per request only the SigV4
signature is computed, by awscrt's native signer (the library botocore's CRT extension uses),
before the bytes go out through aiohttp.

Used only when it is certainly equivalent: no proxy applies, our own CRC32C protects the body
(so the payload is ``UNSIGNED-PAYLOAD``, as botocore sends it with
``payload_signing_enabled=False``), the resolved auth scheme is plain SigV4 for ``s3``, the
ruleset asks for no extra headers, and the client has credentials. Anything else (proxies,
SigV4a, S3 Express, anonymous access...) stays on botocore.

Errors are raised as botocore ``ClientError`` with the same ``Error`` / ``ResponseMetadata``
shape botocore produces, so the provider maps them exactly as it maps botocore's own.
"""

from __future__ import annotations

import datetime
import inspect
import logging
import ssl
from collections.abc import Mapping
from typing import Any, Final, Protocol
from urllib.parse import quote, urlsplit
from xml.etree import ElementTree

import aiohttp
import aiohttp.payload
import awscrt.auth
import awscrt.http
import botocore.exceptions
import yarl

from ._body import Body as _Body
from ._body import read_body as read_body
from ._vendor import LibraryChanged, client_credentials, http_settings, resolve_endpoint

log = logging.getLogger(__name__)

_SIGV4_AUTH_TYPES: Final = frozenset({"v4", "s3v4"})
# Request parameters (botocore names) this path turns into headers; anything else falls back.
_HEADER_PARAMS: Final = {
    "ChecksumCRC32C": "x-amz-checksum-crc32c",
    "ChecksumAlgorithm": "x-amz-sdk-checksum-algorithm",
    "IfNoneMatch": "if-none-match",
}
# Answers meaning "the bucket is in another region", as botocore's S3RegionRedirectorv2 reads them.
_REGION_CODES: Final = frozenset(
    {"PermanentRedirect", "AuthorizationHeaderMalformed", "IllegalLocationConstraintException"}
)
# Everything these two calls may carry here; a call with any other parameter goes to botocore.
_SUPPORTED: Final = frozenset({"Bucket", "Key", "Body", "UploadId", "PartNumber", *_HEADER_PARAMS})


class FrozenCredentials(Protocol):
    """What botocore's ``get_frozen_credentials`` returns."""

    @property
    def access_key(self) -> str: ...
    @property
    def secret_key(self) -> str: ...
    @property
    def token(self) -> str | None: ...


class S3Signer:
    """SigV4 request signing for S3 through awscrt, with an ``UNSIGNED-PAYLOAD`` body.

    The S3 flavour botocore's ``S3SigV4Auth`` signs with: the path is signed as sent (no
    second encoding, no normalisation), and ``x-amz-content-sha256`` is added and signed.
    """

    __slots__ = ("_provider", "_provider_key", "_region")

    def __init__(self, region: str) -> None:
        self._region = region
        # awscrt takes credentials through a provider; one per credentials seen, made again
        # only when they change (refreshed credentials).
        self._provider: awscrt.auth.AwsCredentialsProvider | None = None
        self._provider_key: tuple[str, str, str | None] = ("", "", None)

    def __repr__(self) -> str:
        return f"S3Signer(region={self._region!r})"

    def sign(
        self,
        method: str,
        path: str,
        query: str,
        headers: Mapping[str, str],
        credentials: FrozenCredentials,
        *,
        now: datetime.datetime | None = None,
    ) -> dict[str, str]:
        """The headers to send: ``headers`` plus the date, payload, token and authorization.

        Args:
            method: The HTTP method.
            path: The request path, percent-encoded exactly as it is sent.
            query: The query string as sent (``a=1&b=2``, encoded), or "".
            headers: The headers to sign, ``host`` included; the signer adds ``x-amz-date``,
                ``x-amz-content-sha256``, ``x-amz-security-token`` (with a session token) and
                ``authorization``.
            credentials: The frozen credentials to sign with.
            now: The signing time (default: the current time).
        """
        key = (credentials.access_key, credentials.secret_key, credentials.token)
        provider = self._provider
        if provider is None or key != self._provider_key:
            provider = awscrt.auth.AwsCredentialsProvider.new_static(*key)
            self._provider, self._provider_key = provider, key
        config = awscrt.auth.AwsSigningConfig(
            algorithm=awscrt.auth.AwsSigningAlgorithm.V4,
            signature_type=awscrt.auth.AwsSignatureType.HTTP_REQUEST_HEADERS,
            credentials_provider=provider,
            region=self._region,
            service="s3",
            date=now or datetime.datetime.now(datetime.UTC),
            use_double_uri_encode=False,
            should_normalize_uri_path=False,
            signed_body_value=awscrt.auth.AwsSignedBodyValue.UNSIGNED_PAYLOAD,
            signed_body_header_type=awscrt.auth.AwsSignedBodyHeaderType.X_AMZ_CONTENT_SHA_256,
        )
        request = awscrt.http.HttpRequest(
            method, path + "?" + query if query else path, awscrt.http.HttpHeaders(headers.items())
        )
        # With static credentials the signing completes in this call (no thread hop).
        awscrt.auth.aws_sign_request(request, config).result()
        return dict(request.headers)


class _RegionMismatch(Exception):
    """The bucket lives in another region than the one resolved at open."""


class DirectS3:
    """PutObject / UploadPart as one signed aiohttp request each (see the module docstring).

    Build it with :meth:`create`, which returns None when the fast path would not be
    equivalent to botocore's. A call with a parameter this path does not send goes to the
    botocore client; so does every call after the store answered that the bucket is in another
    region (botocore follows such redirects and remembers the bucket's region).
    """

    def __init__(
        self,
        *,
        endpoint: str,
        region: str,
        credentials: Any,
        session: aiohttp.ClientSession,
        user_agent: str,
        client: Any,
    ) -> None:
        parts = urlsplit(endpoint)
        self._origin = f"{parts.scheme}://{parts.netloc}"
        self._host = parts.netloc
        self._path_prefix = parts.path.rstrip("/")
        self._region = region
        self._signer = S3Signer(region)
        # The credentials object itself: frozen per request, so refreshed values are used.
        self._credentials = credentials
        self._session, self._client, self._user_agent = session, client, user_agent
        # Set once the store said the bucket is elsewhere: botocore sends from then on.
        self._fallback = False

    def __repr__(self) -> str:
        return f"DirectS3({self._origin!r}, region={self._region!r})"

    @property
    def endpoint(self) -> str:
        """The origin requests go to (scheme, host, port)."""
        return self._origin

    @property
    def region(self) -> str:
        """The region requests are signed for."""
        return self._region

    @classmethod
    async def create(
        cls,
        client: Any,
        bucket: str,
        *,
        verify: bool | str | None,
        connect_timeout: float,
        read_timeout: float,
        max_pool_connections: int,
        user_agent: str,
    ) -> DirectS3 | None:
        """The fast path for ``client`` and ``bucket``, or None where botocore must stay."""
        try:
            credentials = client_credentials(client)
            if credentials is None:
                return None
            resolved = await resolve_endpoint(client, "PutObject", {"Bucket": bucket, "Key": "k"})
            # The proxy botocore would use, and the TLS trust it resolved (the given value, else
            # AWS_CA_BUNDLE, the profile's ca_bundle, REQUESTS_CA_BUNDLE, else its default).
            settings = http_settings(client, resolved.url)
        except LibraryChanged as exc:
            # The fast path is an optimisation: botocore's public path still works.
            log.warning("S3 direct request path off: %s", exc)
            return None
        except botocore.exceptions.BotoCoreError:
            # The ruleset refused this bucket or configuration: botocore's own calls say so.
            return None
        endpoint = resolved.url
        resolved_verify = settings.verify
        region = resolved.signing.get("region")
        if (
            resolved.headers
            # Proxies (and their TLS settings) stay with botocore.
            or settings.proxy
            # Client certificates stay with botocore too.
            or settings.client_cert
            or not isinstance(resolved_verify, bool | str)
            or (verify is not None and resolved_verify != verify)
            or resolved.auth_type not in _SIGV4_AUTH_TYPES
            or resolved.signing.get("signing_name", "s3") != "s3"
            or not isinstance(region, str)
            or not region
            or urlsplit(endpoint).scheme not in ("http", "https")
        ):
            return None
        ssl_arg: ssl.SSLContext | bool = False
        if resolved_verify is not False:
            from botocore.httpsession import get_cert_path

            # The same CA bundle botocore uses (the resolved path, or its default).
            ssl_arg = ssl.create_default_context(cafile=get_cert_path(resolved_verify))
        connector = aiohttp.TCPConnector(
            limit=max_pool_connections, ssl=ssl_arg, enable_cleanup_closed=True
        )
        session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(
                total=None, sock_connect=connect_timeout, sock_read=read_timeout
            ),
            # No proxy applies (checked above). trust_env would also make aiohttp look the
            # environment's proxies and ~/.netrc up again in a worker thread on every request.
            trust_env=False,
            auto_decompress=False,
            # S3 sets no cookies: skip the jar's per-request filtering and updating.
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        return cls(
            endpoint=endpoint,
            region=region,
            credentials=credentials,
            session=session,
            user_agent=user_agent,
            client=client,
        )

    async def aclose(self) -> None:
        await self._session.close()

    async def put_object(self, **params: Any) -> dict[str, Any]:
        """PutObject with botocore's parameter names; returns botocore's response fields."""
        if not self._fallback and params.keys() <= _SUPPORTED:
            try:
                return await self._put("PutObject", dict(params), "")
            except _RegionMismatch:
                self._fallback = True
        result: dict[str, Any] = await self._client.put_object(**_for_botocore(params))
        return result

    async def upload_part(self, **params: Any) -> dict[str, Any]:
        """UploadPart with botocore's parameter names; returns botocore's response fields."""
        if not self._fallback and params.keys() <= _SUPPORTED:
            query = "partNumber={}&uploadId={}".format(
                int(params["PartNumber"]), quote(str(params["UploadId"]), safe="-_.~")
            )
            rest = {k: v for k, v in params.items() if k not in ("PartNumber", "UploadId")}
            try:
                return await self._put("UploadPart", rest, query)
            except _RegionMismatch:
                self._fallback = True
        result: dict[str, Any] = await self._client.upload_part(**_for_botocore(params))
        return result

    async def _put(self, op: str, params: dict[str, Any], query: str) -> dict[str, Any]:
        params.pop("Bucket")
        key: str = params.pop("Key")
        body: bytes | memoryview = params.pop("Body")
        headers = {"host": self._host}
        for name, value in params.items():
            headers[_HEADER_PARAMS[name]] = str(value)
        path = f"{self._path_prefix}/{quote(key, safe='/~')}"
        creds = self._credentials.get_frozen_credentials()
        if inspect.isawaitable(creds):
            creds = await creds  # aiobotocore's (possibly refreshing) credentials
        headers = self._signer.sign("PUT", path, query, headers, creds)
        headers["User-Agent"] = self._user_agent
        url = self._origin + path + ("?" + query if query else "")
        payload = _Body(body)
        async with self._session.put(
            # Already percent-encoded exactly as signed: yarl must not re-encode or normalise.
            yarl.URL(url, encoded=True),
            data=payload,
            headers=headers,
            skip_auto_headers=("Content-Type",),
            # Never: the body and the session token would go wherever Location points.
            allow_redirects=False,
        ) as resp:
            data = await resp.read()
            status = resp.status
            got = resp.headers
            if 300 <= status < 400 and got.get("Location"):
                # An HTTP redirect (not S3's wrong-region answer, which carries no Location):
                # reported as it is, for the provider to refuse.
                raise _client_error(op, status, got, data)
            if status >= 300:
                region = got.get("x-amz-bucket-region")
                if region and region != self._region:
                    raise _RegionMismatch(region)
                error = _client_error(op, status, got, data)
                if status == 301 or _error_code(error) in _REGION_CODES:
                    # A wrong-region answer without the header (botocore's redirector reads
                    # the region from the body or asks HeadBucket): botocore's to follow.
                    raise _RegionMismatch(None)
                # botocore's field for the same fact: the answer is to a resent request.
                error.response["ResponseMetadata"]["RetryAttempts"] = max(0, payload.sends - 1)
                raise error
            return {
                "ETag": got.get("ETag"),
                "VersionId": got.get("x-amz-version-id"),
                "ChecksumCRC32C": got.get("x-amz-checksum-crc32c"),
                # What decides whether the ETag is the body's MD5.
                "ServerSideEncryption": got.get("x-amz-server-side-encryption"),
                "SSECustomerAlgorithm": got.get("x-amz-server-side-encryption-customer-algorithm"),
            }


def _error_code(error: botocore.exceptions.ClientError) -> str:
    return str((error.response.get("Error") or {}).get("Code") or "")


def _for_botocore(params: dict[str, Any]) -> dict[str, Any]:
    body = params.get("Body")
    if isinstance(body, memoryview):
        # botocore wants bytes or a file; a mapped part is copied once on this rare path.
        return {**params, "Body": body.tobytes()}
    return params


def _client_error(
    op: str, status: int, headers: Any, payload: bytes
) -> botocore.exceptions.ClientError:
    """A ClientError shaped like botocore's for an S3 error response."""
    code = message = ""
    if payload:
        try:
            root = ElementTree.fromstring(payload)
        except ElementTree.ParseError:
            root = None
        if root is not None:
            for child in root.iter():
                tag = child.tag.rsplit("}", 1)[-1]
                if tag == "Code" and not code:
                    code = (child.text or "").strip()
                elif tag == "Message" and not message:
                    message = (child.text or "").strip()
    response: dict[str, Any] = {
        "Error": {"Code": code or str(status), "Message": message},
        "ResponseMetadata": {
            "HTTPStatusCode": status,
            "HTTPHeaders": {k.lower(): v for k, v in headers.items()},
        },
    }
    return botocore.exceptions.ClientError(response, op)
