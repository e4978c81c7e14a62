"""Import a real Composer in the test suite (test scaffolding; the library never imports this).

Composer 0.32.1 is installed beside the project's CPU ``torch==2.13.0`` by ``.ci/run`` from
``tests/composer-requirements.txt`` (``pip install --no-deps``: Composer pins ``torch<2.7.1``,
yet runs on 2.13). ``import composer`` imports ``torchvision``, and the registry's torchvision
for torch 2.13 is a CUDA build whose C extension cannot load here. torchvision then carries on
without its ops, except that ``torchvision/_meta_registrations.py`` registers fake (meta)
kernels for ``torchvision::nms`` and ``torchvision::qnms`` unconditionally, which raises
"operator torchvision::nms does not exist". Defining those two op schemas first (no kernels: a
call would raise, and Composer's training loop never calls them) lets the import succeed.

``mosaicml-cli`` (imported by ``composer.loggers``) emits DeprecationWarnings from
``websockets`` at import; the suite turns warnings into errors, so the import runs with
warnings ignored.
"""

from __future__ import annotations

import importlib
import os
import threading
import warnings
from types import ModuleType
from typing import Any

from tests.conftest import skip_outside_ci

# The schemas torchvision's C extension would define (torchvision/csrc/ops/nms.cpp and
# quantized/cpu/qnms_kernel.cpp).
_TORCHVISION_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}

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
            "`pip install --no-deps -r tests/composer-requirements.txt`"
        )
    return module
