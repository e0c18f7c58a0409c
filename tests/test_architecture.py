"""The library's shape: no import cycle inside semievol/ (counting the imports inside
functions too), no module reaching into another's private names, no streamlit in the
library, and no SQL or settings in the app's pages."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "semievol"


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, imported names) for every `import semievol.x` / `from semievol.x import ...`
    anywhere in the file (top level or inside functions)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "semievol":  # from semievol import jobs, rounds
                found += [(f"semievol.{a.name}", []) for a in node.names]
            elif node.module.startswith("semievol."):
                found.append((node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            found += [(a.name, []) for a in node.names if a.name.startswith("semievol.")]
    return found


def _graph() -> dict[str, set[str]]:
    modules = {f"semievol.{p.stem}" for p in PACKAGE.glob("*.py")}
    graph = {}
    for path in PACKAGE.glob("*.py"):
        name = f"semievol.{path.stem}"
        graph[name] = {m for m, _ in _imports(path) if m in modules and m != name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as a path of module names, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_inside_the_library():
    assert _cycle(_graph()) is None


def test_no_module_imports_another_modules_private_names():
    offenders = [f"{path.name}: {module}.{name}" for path in PACKAGE.glob("*.py")
                 for module, names in _imports(path) for name in names
                 if name.startswith("_") and module != f"semievol.{path.stem}"]
    assert offenders == []


def test_the_library_never_imports_streamlit():
    pattern = re.compile(r"^\s*(import|from)\s+streamlit", re.M)
    assert [p.name for p in PACKAGE.glob("*.py") if pattern.search(p.read_text())] == []


def test_pages_hold_no_sql_and_no_settings():
    pattern = re.compile(r"\.query\(|\.scalar\(|\.execute\(|get_setting|set_setting")
    hits = [f"{p.relative_to(ROOT)}:{n}" for p in (ROOT / "app").rglob("*.py")
            for n, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert hits == []
