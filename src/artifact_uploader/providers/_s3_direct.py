"""A lean request path for S3's two body-carrying calls, PutObject and UploadPart.

botocore spends about 0.8 ms of CPU per small PutObject on work this library does not need per
request: parameter conversion, an endpoint-ruleset evaluation, a dozen event hooks and a generic
signer. That is more than half the client CPU of a 64 KiB upload. Everything in that work that
varies per request for these two calls is the key, the query and a few headers, so it is done
here once at open (the endpoint comes from botocore's own ruleset, the credentials from the
client's own provider chain) and per request only the SigV4 signature is computed (stdlib HMAC;
the signing key is cached per day) before the bytes go out through aiohttp.

Used only when it is certainly equivalent: no proxy applies, our own CRC32C protects the body
(so the payload is ``UNSIGNED-PAYLOAD``, as botocore sends it with
``payload_signing_enabled=False``), the resolved auth scheme is plain SigV4 for ``s3``, the
ruleset asks for no extra headers, and the client has credentials. Anything else (proxies,
SigV4a, S3 Express, anonymous access...) stays on botocore.

Errors are raised as botocore ``ClientError`` with the same ``Error`` / ``ResponseMetadata``
shape botocore produces, so the provider maps them exactly as it maps botocore's own.
"""

from __future__ import annotations

import hashlib
import hmac
import inspect
import ssl
import time
from typing import Any, Final
from urllib.parse import quote, urlsplit
from xml.etree import ElementTree

import aiohttp
import aiohttp.payload
import botocore.exceptions
import yarl

from ._body import Body as _Body
from ._body import read_body as read_body

_UNSIGNED: Final = "UNSIGNED-PAYLOAD"
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


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode("utf-8"), hashlib.sha256).digest()


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
        self._scope_tail = f"/{region}/s3/aws4_request"
        self._credentials = credentials
        self._session = session
        self._user_agent = user_agent
        self._key_cache: tuple[str, str, bytes] = ("", "", b"")
        self._client = client
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
            credentials = client._request_signer._credentials
            if credentials is None:
                return None
            model = client.meta.service_model.operation_model("PutObject")
            context: dict[str, Any] = {
                "client_region": client.meta.region_name,
                "client_config": client.meta.config,
                "has_streaming_input": model.has_streaming_input,
                "auth_type": model.resolved_auth_type,
                "unsigned_payload": model.unsigned_payload,
                "auth_options": client.meta.service_model.metadata.get("auth"),
            }
            endpoint, extra_headers, _ = await client._resolve_endpoint_ruleset(
                model, {"Bucket": bucket, "Key": "k"}, context
            )
            http_session = client._endpoint.http_session
            # The proxy botocore would use (its config, else HTTP(S)_PROXY / NO_PROXY).
            proxy = http_session._proxy_config.proxy_url_for(endpoint)
            # The TLS trust botocore resolved: the given value, else AWS_CA_BUNDLE, the
            # profile's ca_bundle, REQUESTS_CA_BUNDLE, else its default bundle.
            resolved_verify = http_session._verify
            client_cert = getattr(http_session, "_cert_file", None)
        except Exception:
            # Private botocore surface: if it ever changes shape, stay on the public path.
            return None
        signing = context.get("signing") or {}
        region = signing.get("region")
        if (
            extra_headers
            # Proxies (and their TLS settings) stay with botocore.
            or proxy
            # Client certificates stay with botocore too.
            or client_cert
            or not isinstance(resolved_verify, bool | str)
            or (verify is not None and resolved_verify != verify)
            or context.get("auth_type") not in _SIGV4_AUTH_TYPES
            or signing.get("signing_name", "s3") != "s3"
            or not isinstance(region, str)
            or not region
            or not isinstance(endpoint, str)
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
        headers = {"host": self._host, "x-amz-content-sha256": _UNSIGNED}
        for name, value in params.items():
            headers[_HEADER_PARAMS[name]] = str(value)
        path = f"{self._path_prefix}/{quote(key, safe='/~')}"
        await self._sign("PUT", path, query, headers)
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

    async def _sign(self, method: str, path: str, query: str, headers: dict[str, str]) -> None:
        creds = self._credentials.get_frozen_credentials()
        if inspect.isawaitable(creds):
            creds = await creds  # aiobotocore's (possibly refreshing) credentials
        if creds.token:
            headers["x-amz-security-token"] = creds.token
        amz_date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        date = amz_date[:8]
        headers["x-amz-date"] = amz_date
        names = sorted(headers)
        signed = ";".join(names)
        canonical = "\n".join(
            (
                method,
                path,  # S3: the path as sent, not encoded a second time
                query,
                "".join(f"{n}:{' '.join(headers[n].split())}\n" for n in names),
                signed,
                _UNSIGNED,
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
        if cached_date != date or cached_secret != creds.secret_key:
            key = _hmac(("AWS4" + creds.secret_key).encode("utf-8"), date)
            for part in (self._region, "s3", "aws4_request"):
                key = _hmac(key, part)
            self._key_cache = (date, creds.secret_key, key)
        signature = hmac.new(key, to_sign.encode("utf-8"), hashlib.sha256).hexdigest()
        headers["authorization"] = (
            f"AWS4-HMAC-SHA256 Credential={creds.access_key}/{scope}, "
            f"SignedHeaders={signed}, Signature={signature}"
        )


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
