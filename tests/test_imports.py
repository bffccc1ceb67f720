"""The import graph: no cycles in handler/ and training/, and handler/ never imports training/
(bench/, tools/ and testkit/ never importing tests/: tests/test_testkit_boundary.py).

Built with ``ast`` from the source (every import, also those inside functions), so a cycle
is found even where a function-level import hides it at start-up. Importing ``a.b.c`` from
outside ``a.b`` also runs ``a/__init__`` and ``a/b/__init__``: those edges count, because a
package ``__init__`` that re-exports its modules is where real cycles close.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("handler", "training", "bench", "tests")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    return {
        _module_name(p): p
        for top in PACKAGES
        for p in sorted((REPO / top).rglob("*.py"))
        if ".venv" not in p.parts
    }


def _parents(name: str) -> Iterator[str]:
    parts = name.split(".")
    for i in range(1, len(parts)):
        yield ".".join(parts[:i])


def _imported(tree: ast.AST, modules: dict[str, Path]) -> set[str]:
    """Project modules named by the imports of one module (``from m import x``: m.x if it is
    a module, else m)."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules
                     else node.module for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def import_graph() -> dict[str, set[str]]:
    """module -> project modules whose code runs when it is imported (or its functions run)."""
    modules = project_modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges: set[str] = set()
        for target in _imported(ast.parse(path.read_text(), str(path)), modules):
            edges.add(target)
            own = set(_parents(name)) | {name}
            edges |= {p for p in _parents(target) if p not in own and p in modules}
        edges.discard(name)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def _within(graph: dict[str, set[str]], *tops: str) -> dict[str, set[str]]:
    keep = {m for m in graph if m.split(".")[0] in tops}
    return {m: graph[m] & keep for m in keep}


def test_cycle_finder_finds_a_cycle_through_a_package_init() -> None:
    graph = {"a": {"a.x"}, "a.x": {"b.y"}, "b": set(), "b.y": {"a"}}
    assert cycles(graph) == [["a", "a.x", "b.y"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_in_handler_and_training() -> None:
    assert cycles(_within(import_graph(), "handler", "training")) == []


def test_handler_never_imports_training() -> None:
    graph = import_graph()
    bad = {m: sorted(t for t in graph[m] if t.startswith("training"))
           for m in graph if m.startswith("handler")}
    assert {m: t for m, t in bad.items() if t} == {}

