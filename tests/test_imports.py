"""The rooms of the package import one way: no module imports (at the top or inside a function) a module that
imports it back, directly or through others (docs/architecture.md, "Rooms")."""
import ast
from pathlib import Path

import ddbench

ROOT = Path(ddbench.__file__).resolve().parent.parent
PACKAGES = {"ddbench": ROOT / "ddbench", "ddbench.methods": ROOT / "methods", "ddbench.protocols": ROOT / "protocols"}


def modules() -> dict[str, Path]:
    """Dotted name -> file, for every module of the installed layout (methods/ and protocols/ map into ddbench)."""
    out = {}
    for pkg, folder in PACKAGES.items():
        for file in folder.rglob("*.py"):
            parts = list(file.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join([pkg, *parts])] = file
    return out


def imported(name: str, file: Path, known: dict) -> set[str]:
    """The package's modules that `file` imports anywhere in its body (relative imports resolved)."""
    here = name.split(".") if file.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(file.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = here[:len(here) - node.level + 1] if node.level else []
            target = ".".join(base + [node.module] if node.module else base)
            found.update(f"{target}.{a.name}" if f"{target}.{a.name}" in known else target for a in node.names)
    return {m for m in found if m in known and m != name}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while not comp or comp[-1] != v:
                comp.append(stack.pop())
                on_stack.discard(comp[-1])
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_module_imports_a_module_that_imports_it_back():
    known = modules()
    graph = {name: imported(name, file, known) for name, file in known.items()}
    assert "ddbench.cli.entry" in graph and "ddbench.sweep.expand" in graph  # the rooms exist
    assert "ddbench.cli.run" in graph["ddbench.cli.entry"]  # `from . import run` resolves to the module
    assert "ddbench.runner" in graph["ddbench.sweep.grid"]  # `from ..runner import` resolves across rooms
    assert cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
