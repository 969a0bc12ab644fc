"""The layout docs/architecture.md describes, checked on the source: every import of
``src/gensr`` (function-level ones included) runs down the layers, never up or sideways, no
module imports itself back through others, and no file grows past 600 lines."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "gensr"
# bottom first; a package may import any package of a lower layer, never one of its own
# layer or above (the modules of one package import each other freely, without a circle)
LAYERS: list[set[str]] = [
    {"(root)", "errors"},
    {"config", "tensor", "progress", "threads", "metrics", "outputs", "files", "screen"},
    {"data"},
    {"cf"},
    {"models"},
    {"runs"},
    {"retrieve"},
    {"eval"},
    {"train"},
    {"reuse"},
    {"analysis", "compare", "quickstart", "serve"},
    {"cli"},
]
MAX_LINES = 600


def _modules() -> dict[str, Path]:
    mods = {}
    for path in SRC.rglob("*.py"):
        parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    return mods


def import_graph() -> dict[str, set[str]]:
    """module -> the gensr modules it imports anywhere in its text (``from pkg import sub``
    counts as importing ``pkg.sub`` when that is a module)."""
    mods = _modules()
    edges: dict[str, set[str]] = {}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                for alias in node.names:
                    full = f"{target}.{alias.name}"
                    found.add(full if full in mods else target)
        edges[name] = {t for t in found if t in mods and t != name}
    return edges


def layer_of(module: str) -> tuple[int, str]:
    parts = module.split(".")
    package = parts[1] if len(parts) > 1 else "(root)"
    for index, members in enumerate(LAYERS):
        if package in members:
            return index, package
    raise AssertionError(f"{module}: package {package!r} is in no layer of "
                         "tests/test_architecture.py (add it, and to docs/architecture.md)")


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in edges:
        if v not in index:
            visit(v)
    return found


def test_the_checker_sees_circles_and_upward_imports():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    assert layer_of("gensr.data.batching")[0] < layer_of("gensr.models.base")[0]
    with pytest.raises(AssertionError, match="in no layer"):
        layer_of("gensr.nowhere.x")


def test_no_import_circle():
    assert cycles(import_graph()) == []


def test_every_import_runs_down_the_layers():
    wrong = []
    for module, targets in import_graph().items():
        (mine, own) = layer_of(module)
        for target in targets:
            (theirs, other) = layer_of(target)
            if other != own and theirs >= mine:
                wrong.append(f"{module} -> {target}")
    assert wrong == [], "imports that run up or sideways: " + ", ".join(sorted(wrong))


def test_no_source_file_over_600_lines():
    long = {str(p.relative_to(SRC)): n for p in SRC.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert long == {}
