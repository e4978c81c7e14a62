"""Import a real Composer in the test suite (test scaffolding; the library never imports this).

Composer 0.32.1 pins ``torch<2.7.1`` yet runs on the project's CPU ``torch==2.13.0``. ``.ci/run``
installs it and every requirement the dev extra does not bring, pinned in
``tests/composer-requirements.txt``, with ``pip install --no-deps --target .composer``: into a
folder of its own, not the venv, because the torchvision it needs breaks other packages' import
of torchvision (transformers imports it when present). Only :func:`import_composer` puts the
folder on ``sys.path``. ``ARTIFACT_UPLOADER_COMPOSER_DIR`` names another folder; a Composer
installed in the venv itself is used as well.

``import composer`` imports ``torchvision``, and the registry's torchvision for torch 2.13 is a
CUDA build whose C extension cannot load here. torchvision then carries on without its ops,
except that ``torchvision/_meta_registrations.py`` registers fake (meta) kernels for
``torchvision::nms`` and ``torchvision::qnms`` unconditionally, which raises "operator
torchvision::nms does not exist". Defining those two op schemas first (no kernels: a call would
raise, and Composer's training loop never calls them) lets the import succeed.

``mosaicml-cli`` (imported by ``composer.loggers``) emits DeprecationWarnings from
``websockets`` at import; the suite turns warnings into errors, so the import runs with
warnings ignored.
"""

from __future__ import annotations

import importlib
import os
import sys
import threading
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

from tests.conftest import skip_outside_ci

# The schemas torchvision's C extension would define (torchvision/csrc/ops/nms.cpp and
# quantized/cpu/qnms_kernel.cpp).
_TORCHVISION_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}

# Where .ci/run installs Composer (see the module docstring).
COMPOSER_DIR = Path(
    os.environ.get("ARTIFACT_UPLOADER_COMPOSER_DIR")
    or Path(__file__).resolve().parent.parent / ".composer"
)

_lock = threading.Lock()
# The torch.library.Library holding the definitions must stay alive for the process: its
# destructor would remove them.
_libraries: list[Any] = []


def _define_missing_torchvision_ops() -> None:
    import importlib.util

    import torch

    with _lock:
        if _libraries:
            return
        spec = importlib.util.find_spec("torchvision")
        if spec is None or not spec.submodule_search_locations:
            return  # no torchvision: composer's import reports it
        # Load the C extension the way torchvision.extension does, without importing
        # torchvision (whose import is what fails). Where it loads, nothing needs defining.
        folder = next(iter(spec.submodule_search_locations))
        extension = [n for n in os.listdir(folder) if n.startswith("_C.") and n.endswith(".so")]
        if extension:
            try:
                torch.ops.load_library(os.path.join(folder, extension[0]))
                return
            except OSError:
                pass
        lib = torch.library.Library("torchvision", "FRAGMENT")
        for schema in _TORCHVISION_SCHEMAS.values():
            lib.define(schema)
        _libraries.append(lib)


def import_composer() -> ModuleType:
    """Import ``composer`` (with the torchvision workaround), or skip — failing under ``$CI``.

    Returns:
        The ``composer`` module.
    """
    try:
        import torch  # noqa: F401
    except ImportError:
        skip_outside_ci("torch is not installed (pip install -e '.[dev]')")
    with _lock:
        folder = str(COMPOSER_DIR)
        if COMPOSER_DIR.is_dir() and folder not in sys.path:
            # First: its pinned packages (graphql-core for gql) win over the venv's.
            sys.path.insert(0, folder)
    try:
        _define_missing_torchvision_ops()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = importlib.import_module("composer")
            # Trainer's own imports (loggers, callbacks) on the same terms.
            importlib.import_module("composer.trainer")
            importlib.import_module("composer.loggers")
    except ImportError as exc:
        skip_outside_ci(
            f"Composer is not importable ({exc}); install it with "
            "`pip install --no-deps --target .composer -r tests/composer-requirements.txt`"
        )
    return module
