"""tools/check_private.py finds each reach into another module's private members, and only those."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))

import check_private  # noqa: E402


def _check(tmp_path: Path, files: dict[str, str]) -> list[str]:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    return [line.split(": ", 1)[1] for line in check_private.check(tmp_path)]


OWNER = """
class Engine:
    def __init__(self):
        self._state = "new"
        self.public = 1

    def _hook(self):
        return self._state
"""


def test_own_private_members_are_allowed(tmp_path: Path) -> None:
    same = (
        OWNER + "\n\ndef friend(engine):\n    engine._state = 'closed'\n    return engine._hook()\n"
    )
    assert _check(tmp_path, {"a.py": same}) == []


@pytest.mark.parametrize(
    ("code", "found"),
    [
        ("def f(engine):\n    return engine._state\n", ["._state"]),
        ("def f(engine):\n    return getattr(engine, '_state')\n", ["._state"]),
        (
            "def f(client):\n    return client._request_signer._credentials\n",
            ["._request_signer", "._credentials"],
        ),
        (
            "from a import Engine\nclass Child(Engine):\n    def _hook(self):\n"
            "        return super()._hook() + self._state\n",
            ["._hook", "._hook", "._state"],
        ),
    ],
    ids=["attribute", "getattr", "third-party-chain", "subclass-override"],
)
def test_foreign_private_members_are_counted(tmp_path: Path, code: str, found: list[str]) -> None:
    got = _check(tmp_path, {"a.py": OWNER, "b.py": code})
    assert sorted(got) == sorted(found)


def test_public_by_convention_and_dunders_are_not_counted(tmp_path: Path) -> None:
    code = (
        "import os\ndef f(point, obj):\n    os._exit(0)\n"
        "    return point._replace(x=1), obj.__dict__\n"
    )
    assert _check(tmp_path, {"b.py": code}) == []


def test_the_vendor_module_is_exempt(tmp_path: Path) -> None:
    assert _check(tmp_path, {"_vendor.py": "def f(client):\n    return client._endpoint\n"}) == []


def test_script_prints_the_count_and_fails_when_not_zero(tmp_path: Path) -> None:
    (tmp_path / "b.py").write_text("def f(engine):\n    return engine._state\n")
    script = ROOT / "tools" / "check_private.py"
    run = subprocess.run(
        [sys.executable, str(script), str(tmp_path)], capture_output=True, text=True
    )
    assert run.returncode == 1
    assert run.stdout.strip().splitlines()[-1] == "foreign private accesses: 1"
    (tmp_path / "b.py").write_text("def f(engine):\n    return engine.state\n")
    run = subprocess.run(
        [sys.executable, str(script), str(tmp_path)], capture_output=True, text=True
    )
    assert (run.returncode, run.stdout.strip()) == (0, "foreign private accesses: 0")
