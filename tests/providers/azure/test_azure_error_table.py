"""Azure's error table: each (status, code, request) lands on the row the provider meant.

The rows are data (``_azure_errors.ERROR_TABLE``) read by the kit's classifier; the
real-server tests (test_provider_azure.py, test_security_gcs_azure.py) reach most rows through
Azurite; these pin the order of the rows, which Azurite cannot produce every case of.
"""

from __future__ import annotations

import pytest

from artifact_uploader import (
    IntegrityError,
    ObjectExistsError,
    ObjectNotFoundError,
    PermissionDeniedError,
    ProviderError,
    StoreNotFoundError,
)
from artifact_uploader.providers._azure_errors import ERROR_TABLE
from artifact_uploader.providers._kit import classify


@pytest.mark.parametrize(
    ("status", "code", "flags", "message", "error", "label", "transient"),
    [
        (307, "", (), "", ProviderError, "redirect", False),
        (412, "ConditionNotMet", ("conditional",), "", ObjectExistsError, "exists", False),
        (409, "BlobAlreadyExists", ("conditional",), "", ObjectExistsError, "exists", False),
        (412, "", ("conditional",), "", ObjectExistsError, "exists", False),
        # Without If-None-Match a 412 is not "exists" (e.g. a changed blob under If-Match).
        (412, "ConditionNotMet", ("reading", "object"), "", ProviderError, "failed", False),
        (409, "LeaseIdMissing", ("conditional",), "", ProviderError, "failed", False),
        (403, "AuthenticationFailed", (), "", PermissionDeniedError, "refused", False),
        (401, "", (), "", PermissionDeniedError, "refused", False),
        (
            403,
            "AuthorizationPermissionMismatch",
            (),
            "",
            PermissionDeniedError,
            "not allowed",
            False,
        ),
        # A refusal wins over what the request was about.
        (403, "ContainerNotFound", ("object",), "", PermissionDeniedError, "refused", False),
        (
            404,
            "ContainerNotFound",
            ("reading", "object"),
            "",
            StoreNotFoundError,
            "no container",
            False,
        ),
        (404, "BlobNotFound", ("reading", "object"), "", ObjectNotFoundError, "no blob", False),
        (404, "", ("reading",), "", StoreNotFoundError, "no container", False),
        # A 404 to a write names no missing blob the caller could act on: a plain failure.
        (404, "BlobNotFound", ("object",), "", ProviderError, "failed", False),
        (400, "Md5Mismatch", ("object",), "", IntegrityError, "md5", True),
        # Azurite 3.35: the generic code with the MD5 check's message, in either word order.
        (
            400,
            "InvalidOperation",
            ("object",),
            "Provided contentMD5 doesn't match.",
            IntegrityError,
            "md5",
            True,
        ),
        (
            400,
            "InvalidOperation",
            ("object",),
            "does not match the MD5",
            IntegrityError,
            "md5",
            True,
        ),
        (
            400,
            "InvalidOperation",
            ("object",),
            "Invalid operation.",
            ProviderError,
            "failed",
            False,
        ),
        (503, "ServerBusy", (), "", ProviderError, "failed", True),
        (500, "", (), "", ProviderError, "failed", True),
        (429, "", (), "", ProviderError, "failed", True),
        # Azure's own set: 501 and 505 are not worth another attempt.
        (501, "", (), "", ProviderError, "failed", False),
        (400, "OperationTimedOut", (), "", ProviderError, "failed", True),
        (400, "InvalidHeaderValue", (), "", ProviderError, "failed", False),
    ],
)
def test_each_answer_maps_to_its_row(
    status: int,
    code: str,
    flags: tuple[str, ...],
    message: str,
    error: type[ProviderError],
    label: str,
    transient: bool,
) -> None:
    row = classify(
        ERROR_TABLE,
        status,
        code,
        conditional="conditional" in flags,
        flags=[f for f in flags if f != "conditional"],
        message=message,
    )
    assert (row.error, row.label, row.transient) == (error, label, transient)
