"""Count accesses to another module's private members in ``src/``.

A private member is an attribute whose name starts with one underscore
(``obj._name``; dunders are public protocol).  A module may touch the private
members it defines itself: attributes set on ``self`` in its classes, names in
its class bodies, and its module-level names.  Everything else is a reach
through another module's wall, and is counted.

The one exception is ``_vendor.py`` (see ``ALLOWED``): the single module where
the project reads third-party libraries' internals, each guarded by a test that
fails loudly when the library changes.

Usage: ``python tools/check_private.py [src/artifact_uploader]``.  Prints each
access and the count, and exits 1 when the count is not 0.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

#: Modules allowed to read private members they do not define (by file name).
ALLOWED = frozenset({"_vendor.py"})

#: Underscore names that are public API by convention (namedtuple, enum).
PUBLIC_BY_CONVENTION = frozenset(
    {
        "_exit",
        "_replace",
        "_asdict",
        "_fields",
        "_make",
        "_field_defaults",
        "_value_",
        "_name_",
        "_missing_",
        "_generate_next_value_",
    }
)


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__") and name not in PUBLIC_BY_CONVENTION


def _owned(tree: ast.Module) -> set[str]:
    """Private names this module defines."""
    owned: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    owned.add(item.name)
                elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    owned.add(item.target.id)
                elif isinstance(item, ast.Assign):
                    owned.update(t.id for t in item.targets if isinstance(t, ast.Name))
            # __slots__ entries
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                for sub in ast.walk(target):
                    if (
                        isinstance(sub, ast.Attribute)
                        and isinstance(sub.value, ast.Name)
                        and sub.value.id in {"self", "cls"}
                    ):
                        owned.add(sub.attr)
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            owned.add(node.name)
    return owned


def _class_names(cls: ast.ClassDef) -> set[str]:
    """Names a class defines: its body, and attributes its methods set on ``self``."""
    names: set[str] = set()
    for item in cls.body:
        if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(item.name)
        elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
            names.add(item.target.id)
        elif isinstance(item, ast.Assign):
            names.update(t.id for t in item.targets if isinstance(t, ast.Name))
    for sub in ast.walk(cls):
        if (
            isinstance(sub, ast.Attribute)
            and isinstance(sub.value, ast.Name)
            and sub.value.id in {"self", "cls"}
        ):
            if isinstance(sub.ctx, ast.Store):
                names.add(sub.attr)
    return names


def _foreign_base(cls: ast.ClassDef, local: dict[str, ast.ClassDef]) -> bool:
    """Whether ``cls`` derives, directly or through local classes, from a foreign class."""
    for base in cls.bases:
        if isinstance(base, ast.Name) and base.id in local:
            if _foreign_base(local[base.id], local):
                return True
        elif not (
            isinstance(base, ast.Name) and base.id in {"object", "Protocol", "Generic", "Exception"}
        ):
            if not (isinstance(base, ast.Subscript)):
                return True
    return False


def _lineage(cls: ast.ClassDef, local: dict[str, ast.ClassDef]) -> set[str]:
    names = _class_names(cls)
    for base in cls.bases:
        if isinstance(base, ast.Name) and base.id in local and local[base.id] is not cls:
            names |= _lineage(local[base.id], local)
    return names


class _Visitor(ast.NodeVisitor):
    def __init__(self, path: Path, tree: ast.Module) -> None:
        self.path = path
        self.owned = _owned(tree)
        self.local = {n.name: n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)}
        self.stack: list[ast.ClassDef] = []
        self.found: list[str] = []

    def _hit(self, node: ast.AST, name: str) -> None:
        self.found.append(f"{self.path}:{getattr(node, 'lineno', 0)}: .{name}")

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        if _foreign_base(node, self.local):
            # Overriding a private hook of a class defined elsewhere reaches through its wall too.
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and _is_private(
                    item.name
                ):
                    if item.name in self._inherited_private(node):
                        self._hit(item, item.name)
        self.stack.append(node)
        self.generic_visit(node)
        self.stack.pop()

    def _inherited_private(self, node: ast.ClassDef) -> set[str]:
        # A private method of a class with a foreign base overrides a hook of that base when it
        # calls super() for it; those calls are what this finds.
        names: set[str] = set()
        for sub in ast.walk(node):
            if (
                isinstance(sub, ast.Attribute)
                and isinstance(sub.value, ast.Call)
                and isinstance(sub.value.func, ast.Name)
                and sub.value.func.id == "super"
                and _is_private(sub.attr)
            ):
                names.add(sub.attr)
        return names

    def visit_Attribute(self, node: ast.Attribute) -> None:
        name = node.attr
        if _is_private(name):
            value = node.value
            if isinstance(value, ast.Name) and value.id in {"self", "cls"} and self.stack:
                cls = self.stack[-1]
                if name not in _lineage(cls, self.local):
                    self._hit(node, name)
            elif (
                isinstance(value, ast.Call)
                and isinstance(value.func, ast.Name)
                and value.func.id == "super"
            ):
                if self.stack and _foreign_base(self.stack[-1], self.local):
                    if name not in _lineage(self.stack[-1], self.local) - _class_names(
                        self.stack[-1]
                    ):
                        self._hit(node, name)
            elif name not in self.owned:
                self._hit(node, name)
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        # getattr(obj, "_private") / setattr / hasattr spell the same reach with a string.
        if (
            isinstance(node.func, ast.Name)
            and node.func.id in {"getattr", "setattr", "hasattr", "delattr"}
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
            and _is_private(node.args[1].value)
            and node.args[1].value not in self.owned
        ):
            self._hit(node, node.args[1].value)
        self.generic_visit(node)


def check(root: Path) -> list[str]:
    """Return one line per foreign private access under ``root``."""
    found: list[str] = []
    for path in sorted(root.rglob("*.py")):
        if path.name in ALLOWED:
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        visitor = _Visitor(path, tree)
        visitor.visit(tree)
        found.extend(visitor.found)
    return found


def main(argv: list[str]) -> int:
    root = Path(argv[1] if len(argv) > 1 else "src/artifact_uploader")
    found = check(root)
    for line in found:
        print(line)
    print(f"foreign private accesses: {len(found)}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
