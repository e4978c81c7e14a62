"""artifact-uploader: get checkpoints, logs and traces into object storage without slowing down.

The engine is :class:`AsyncUploader` (asyncio); :class:`Uploader` is its synchronous twin for
training loops, and :class:`ObjectStoreLogger` is the Composer-compatible logger destination.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._checkpoints import download_checkpoint as download_checkpoint
from ._checkpoints import latest_checkpoint as latest_checkpoint
from ._checkpoints import list_checkpoints as list_checkpoints
from ._checkpoints import prune_checkpoints as prune_checkpoints
from ._checkpoints import resume_checkpoints as resume_checkpoints
from ._commit import CheckpointError as CheckpointError
from ._commit import CheckpointNotCommittedError as CheckpointNotCommittedError
from ._commit import CommittedCheckpoint as CommittedCheckpoint
from ._config import PartPolicy as PartPolicy
from ._config import RetryPolicy as RetryPolicy
from ._download import DestinationExistsError as DestinationExistsError
from ._download import SymlinkError as SymlinkError
from ._errors import ConfigError as ConfigError
from ._errors import FailedUpload as FailedUpload
from ._errors import IntegrityError as IntegrityError
from ._errors import InvalidObjectNameError as InvalidObjectNameError
from ._errors import MissingDependencyError as MissingDependencyError
from ._errors import ObjectExistsError as ObjectExistsError
from ._errors import ObjectNotFoundError as ObjectNotFoundError
from ._errors import PermissionDeniedError as PermissionDeniedError
from ._errors import ProviderError as ProviderError
from ._errors import SourceFileError as SourceFileError
from ._errors import StagingError as StagingError
from ._errors import StagingTimeoutError as StagingTimeoutError
from ._errors import StallTimeoutError as StallTimeoutError
from ._errors import StoreNotFoundError as StoreNotFoundError
from ._errors import UploaderClosedError as UploaderClosedError
from ._errors import UploadError as UploadError
from ._errors import UploadFailedError as UploadFailedError
from ._errors import is_transient as is_transient
from ._events import EventKind as EventKind
from ._events import ProgressTotals as ProgressTotals
from ._events import UploadEvent as UploadEvent
from ._logger import LogLevel as LogLevel
from ._logger import ObjectStoreLogger as ObjectStoreLogger
from ._sync import Uploader as Uploader
from ._types import DownloadResult as DownloadResult
from ._types import FileSlice as FileSlice
from ._types import PartResult as PartResult
from ._types import PutResult as PutResult
from ._types import UploadResult as UploadResult
from ._uploader import AsyncUploader as AsyncUploader
from ._uploader import DependencyFailedError as DependencyFailedError
from ._uploader import ResumeReport as ResumeReport
from ._uploader import UploadHandle as UploadHandle
from .providers._protocol import Checksum as Checksum
from .providers._protocol import MultipartProvider as MultipartProvider
from .providers._protocol import ObjectInfo as ObjectInfo
from .providers._protocol import PartLimits as PartLimits
from .providers._protocol import Provider as Provider
from .providers._protocol import ReadableProvider as ReadableProvider
from .providers.local import LocalProvider as LocalProvider
from .providers.memory import MemoryProvider as MemoryProvider

if TYPE_CHECKING:
    from ._dcp import CheckpointReader as CheckpointReader
    from ._dcp import CheckpointWriter as CheckpointWriter
    from ._hf import HFUploadCallback as HFUploadCallback
    from ._lightning import LightningUploadCallback as LightningUploadCallback
    from .providers.azure import AzureProvider as AzureProvider
    from .providers.gcs import GCSProvider as GCSProvider
    from .providers.s3 import S3Provider as S3Provider

__version__ = "0.1.0"

# Providers whose SDK is an optional extra are imported on first use. They stay out of __all__
# so that `from artifact_uploader import *` works without every extra installed.
_LAZY = {"S3Provider": "s3", "GCSProvider": "gs", "AzureProvider": "az"}
# Trainer integrations, likewise: their module raises MissingDependencyError naming the extra.
_LAZY_INTEGRATIONS = {
    "HFUploadCallback": "._hf",
    "LightningUploadCallback": "._lightning",
    "CheckpointReader": "._dcp",
    "CheckpointWriter": "._dcp",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from ._registry import provider_class

        return provider_class(_LAZY[name])
    if name in _LAZY_INTEGRATIONS:
        import importlib

        return getattr(importlib.import_module(_LAZY_INTEGRATIONS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AsyncUploader",
    "CheckpointError",
    "CheckpointNotCommittedError",
    "Checksum",
    "CommittedCheckpoint",
    "ConfigError",
    "DependencyFailedError",
    "DestinationExistsError",
    "DownloadResult",
    "EventKind",
    "FailedUpload",
    "FileSlice",
    "IntegrityError",
    "InvalidObjectNameError",
    "LocalProvider",
    "LogLevel",
    "MemoryProvider",
    "MissingDependencyError",
    "MultipartProvider",
    "ObjectExistsError",
    "ObjectInfo",
    "ObjectNotFoundError",
    "ObjectStoreLogger",
    "PartLimits",
    "PartPolicy",
    "PartResult",
    "PermissionDeniedError",
    "ProgressTotals",
    "Provider",
    "ProviderError",
    "PutResult",
    "ReadableProvider",
    "ResumeReport",
    "RetryPolicy",
    "SourceFileError",
    "StagingError",
    "StagingTimeoutError",
    "StallTimeoutError",
    "StoreNotFoundError",
    "SymlinkError",
    "UploadError",
    "UploadEvent",
    "UploadFailedError",
    "UploadHandle",
    "UploadResult",
    "Uploader",
    "UploaderClosedError",
    "__version__",
    "download_checkpoint",
    "is_transient",
    "latest_checkpoint",
    "list_checkpoints",
    "prune_checkpoints",
    "resume_checkpoints",
]
