"""bench/ and tools/ stand on their own: they share helpers with the tests through testkit/, never tests/."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("folder", ["bench", "testkit", "tools"])
def test_never_imports_the_test_suite(folder: str) -> None:
    files = sorted((REPO / folder).glob("*.py"))
    assert files
    offenders = {f.name: sorted(m for m in imported_modules(f) if m.split(".")[0] == "tests")
                 for f in files}
    assert not {k: v for k, v in offenders.items() if v}


def test_the_archive_never_ships_testkit() -> None:
    for path in sorted((REPO / "handler").glob("*.py")):
        assert not any(m.split(".")[0] in {"testkit", "tests"} for m in imported_modules(path))
