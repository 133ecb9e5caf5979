"""The module structure of bench/ and methods/: no import cycles, no private module or name shared
across modules (issue 15)."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT

PACKAGES = ("bench", "methods")
KNOWN_EDGES: set[tuple[str, str]] = set()  # edges allowed to close a cycle: none


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The project module ``name`` refers to (``bench.suites.Row`` -> ``bench.suites``), or None."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def _imports(path: Path, module: str, modules: dict[str, Path]) -> set[tuple[str, str]]:
    """(imported module, imported name or '') for every import of the file, at module level or
    inside a function: an import moved into a function to dodge a cycle is still a cycle of the design."""
    tree = ast.parse(path.read_text())
    found: set[tuple[str, str]] = set()
    is_pkg = path.name == "__init__.py"
    for n in ast.walk(tree):
        if isinstance(n, ast.Import):
            found |= {(a.name, "") for a in n.names}
        elif isinstance(n, ast.ImportFrom):
            base = n.module or ""
            if n.level:
                pkg = module if is_pkg else module.rpartition(".")[0]
                for _ in range(n.level - 1):
                    pkg = pkg.rpartition(".")[0]
                base = f"{pkg}.{base}" if base else pkg
            for a in n.names:
                sub = f"{base}.{a.name}"
                found.add((sub, "") if sub in modules else (base, a.name))
    return found


def _graph() -> tuple[dict[str, set[str]], list[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    private: list[str] = []
    for mod, path in modules.items():
        for target, name in _imports(path, mod, modules):
            dep = _resolve(target, modules)
            if dep is None or dep == mod:
                continue
            graph[mod].add(dep)
            # A private module serves its own package only (bench.benchmarks._rows: the loaders beside it);
            # a private name serves its own module only.
            parts = dep.split(".")
            owner = next((".".join(parts[:i]) for i, p in enumerate(parts) if p.startswith("_")), None)
            if (owner is not None and not mod.startswith(owner + ".")) or name.startswith("_"):
                private.append(f"{mod} imports {target}{'.' + name if name else ''}")
    return graph, private


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph[m]):
            if (m, d) in KNOWN_EDGES:
                continue
            if state.get(d) == 1:
                return stack[stack.index(d):] + [d]
            if d not in state:
                found = visit(d)
                if found:
                    return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def test_no_import_cycle_among_project_modules():
    graph, _ = _graph()
    assert "bench.suites.knowledge" in graph and "methods.mrp" in graph  # the walk found the modules
    cycle = _cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_private_module_or_name_imported_across_modules():
    _, private = _graph()
    assert not private, private


def test_cycle_detection_itself():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
