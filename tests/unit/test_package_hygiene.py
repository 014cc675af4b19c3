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
