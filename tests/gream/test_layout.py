"""The architecture holds: imports run one way (cluster <- indexing <- sft <- rl_system <- gream),
no two files import each other (directly or round a loop), and no file grows past 400 lines."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ORDER = {"cluster": 0, "indexing": 1, "sft": 2, "rl_system": 3, "gream": 4}
MAX_LINES = 400
# A module named in a string (importlib, Ray worker extensions, stage tables) counts as an import.
MODULE_STRING = re.compile(r"^(cluster|indexing|sft|rl_system|gream)(\.\w+)+$")


def source_files() -> list[Path]:
    return sorted(p for pkg in ORDER for p in (REPO / pkg).rglob("*.py"))


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Every module this file names, at module level, inside functions or as a string."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)  # `from pkg import module`
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and MODULE_STRING.match(node.value):
            found.add(node.value)
    return {m for m in found if m.split(".")[0] in ORDER}


def project_graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in source_files()}

    def resolve(name: str) -> str | None:
        while name and name not in modules:  # `pkg.mod.Class` -> `pkg.mod`
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for name, path in modules.items():
        targets = {resolve(m) for m in imported_modules(path)}
        graph[name] = {t for t in targets if t and t != name and not modules[t].name == "__init__.py"}
    return graph


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{src} imports {dst}" for src, dsts in graph.items() for dst in dsts
                  if ORDER[dst.split(".")[0]] > ORDER[src.split(".")[0]])


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_imports_run_one_way():
    assert layer_violations(project_graph()) == []


def test_no_import_cycle_between_files():
    assert cycles(project_graph()) == []


def test_no_file_over_400_lines():
    long = {str(p.relative_to(REPO)): n for p in source_files() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


@pytest.mark.parametrize("graph, expected", [
    ({"cluster.a": {"sft.b"}, "sft.b": set()}, ["cluster.a imports sft.b"]),
    ({"sft.b": {"cluster.a"}, "cluster.a": set()}, []),
])
def test_layer_check_sees_an_upward_import(graph, expected):
    assert layer_violations(graph) == expected


def test_cycle_check_sees_a_loop_through_three_files():
    graph = {"sft.a": {"sft.b"}, "sft.b": {"sft.c"}, "sft.c": {"sft.a"}, "sft.d": {"sft.a"}}
    assert cycles(graph) == [["sft.a", "sft.b", "sft.c"]]


def test_function_level_and_string_imports_count(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from rl_system.train import run\n\nSTAGE = 'gream.launch'\n")
    assert imported_modules(f) == {"rl_system.train", "rl_system.train.run", "gream.launch"}
