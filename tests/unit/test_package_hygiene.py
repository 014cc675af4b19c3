"""The package logs; it never prints (issue 2). Reports are returned and printed by the thin ``jobs/`` CLIs."""

from __future__ import annotations

import ast
from pathlib import Path

import dad_ray

PACKAGE = Path(dad_ray.__file__).parent


def _print_calls(path: Path) -> list[int]:
    tree = ast.parse(path.read_text(), filename=str(path))
    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print"
    ]


def test_no_print_in_the_package():
    found = {str(p.relative_to(PACKAGE)): lines for p in sorted(PACKAGE.rglob("*.py")) if (lines := _print_calls(p))}
    assert found == {}, f"print() in the package (use logging, or return the text to the job): {found}"


def test_the_check_sees_a_print(tmp_path):
    sample = tmp_path / "m.py"
    sample.write_text("import logging\nlogging.info('x')\nif True:\n    print('y')\n")
    assert _print_calls(sample) == [4]


# The floors of DESIGN.md, lowest first: a module may import its own floor and those below, never one above.
FLOORS = {
    "logging_utils": 0,
    "lazy": 0,
    "runtime": 0,
    "viz": 0,
    "config": 0,
    "data": 1,
    "models": 2,
    "losses": 2,
    "metrics": 3,
    "inference": 4,
    "train": 4,
    "tune": 5,
    "cluster": 6,
    "bench": 6,
}
MAX_FUNCTION_LINES = 80


def _subpackage(path: Path) -> str:
    return path.relative_to(PACKAGE).with_suffix("").parts[0]


def _imports(path: Path) -> set[str]:
    """The dad_ray subpackages (or top-level modules) a file imports, itself excluded."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        names = []
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "dad_ray" and len(parts) > 1 and parts[1] in FLOORS:
                found.add(parts[1])
    return found - {_subpackage(path)}


def test_every_subpackage_has_a_floor():
    names = {_subpackage(p) for p in PACKAGE.rglob("*.py") if p.parent != PACKAGE or p.name != "__init__.py"}
    assert names <= set(FLOORS), f"add these to FLOORS (and to DESIGN.md's floors): {sorted(names - set(FLOORS))}"


def test_no_floor_imports_a_higher_one():
    upward = [
        f"{p.relative_to(PACKAGE)} imports dad_ray.{dst}"
        for p in sorted(PACKAGE.rglob("*.py"))
        if p.parent != PACKAGE or p.name != "__init__.py"
        for dst in sorted(_imports(p))
        if FLOORS[dst] > FLOORS[_subpackage(p)]
    ]
    assert upward == []


def test_no_import_circle_between_subpackages():
    edges: dict[str, set[str]] = {}
    for p in PACKAGE.rglob("*.py"):
        if p.parent != PACKAGE or p.name != "__init__.py":
            edges.setdefault(_subpackage(p), set()).update(_imports(p))
    circles = sorted({tuple(sorted((a, b))) for a in edges for b in edges[a] if a in edges.get(b, set())})
    assert circles == []


def test_no_long_function():
    long = [
        f"{p.relative_to(PACKAGE)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for p in sorted(PACKAGE.rglob("*.py"))
        for node in ast.walk(ast.parse(p.read_text()))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert long == [], f"split these (a reader should see a function in one screen): {long}"
