"""``python -m artifact_uploader``: the command line (see :mod:`artifact_uploader._cli`)."""

from __future__ import annotations

import sys

from ._cli import main

if __name__ == "__main__":
    sys.exit(main())
