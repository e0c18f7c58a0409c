"""The library's import graph, read from the source (ast; nothing is imported or run).

    python tests/import_graph.py            # the longest import chain and the counts
    python tests/import_graph.py --json     # the same as JSON

Prints the depth of the graph (the number of modules on its longest chain of imports,
counting imports inside functions, as an import there still ties the two modules), that
chain, and how many import statements of the project's own modules sit at module top and
inside functions. tests/test_architecture.py enforces the import rule over the same graph.
"""

from __future__ import annotations

import argparse
import ast
import functools
import json
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "semievol"


@dataclass(frozen=True)
class Import:
    module: str          # the project module imported (a package's __init__ is the package)
    names: tuple         # the names imported from it ('' for the module itself)
    at_top: bool         # a module-top statement (else inside a function or class)
    line: int


def module_name(path: Path, root: Path) -> str:
    """semievol/rounds/steps.py -> semievol.rounds.steps; a package's __init__ is the package."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def library_modules(package: Path = PACKAGE) -> dict[str, Path]:
    """{dotted name: file} of every module and package in the library."""
    return {module_name(p, package.parent): p for p in sorted(package.rglob("*.py"))}


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"))


def project_imports(path: Path, known: set[str]) -> list[Import]:
    """Every import of the project's own modules in `path`, wherever it stands. `from
    semievol.rounds import steps` imports the module semievol.rounds.steps; `from
    semievol.rounds.steps import STEPS` imports the name STEPS of it."""
    tree = _tree(path)
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        at_top = id(node) in top
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
                and node.module.split(".")[0] == "semievol":
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                if child in known:
                    found.append(Import(child, ("",), at_top, node.lineno))
                else:
                    found.append(Import(node.module, (alias.name,), at_top, node.lineno))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "semievol":
                    found.append(Import(alias.name, ("",), at_top, node.lineno))
    return found


def third_party_at_top(path: Path) -> set[str]:
    """The top-level names of the libraries `path` imports at module top (not semievol's)."""
    out = set()
    for node in _tree(path).body:
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module.split(".")[0])
    return out - {"semievol", "__future__"}


def library_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """{module: the project modules it imports} (top level and inside functions)."""
    modules = library_modules(package)
    known = set(modules)
    return {name: {i.module for i in project_imports(path, known) if i.module != name}
            for name, path in modules.items()}


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as a path of module names, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
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


def longest_chain(graph: dict[str, set[str]]) -> list[str]:
    """The longest chain of imports (module -> a module it imports -> ...) of an acyclic
    graph."""
    @functools.lru_cache(maxsize=None)
    def from_(node: str) -> tuple[str, ...]:
        best: tuple[str, ...] = ()
        for nxt in sorted(graph.get(node, ())):
            chain = from_(nxt)
            if len(chain) > len(best):
                best = chain
        return (node, *best)

    return list(max((from_(n) for n in sorted(graph)), key=len, default=()))


def import_counts(package: Path = PACKAGE) -> dict[str, int]:
    """Import statements of the project's own modules at module top and inside functions."""
    counts = {"top": 0, "inside_functions": 0}
    for path in library_modules(package).values():
        tree = _tree(path)
        top = {id(node) for node in tree.body}
        for node in ast.walk(tree):
            own = (isinstance(node, ast.ImportFrom) and node.level == 0 and node.module
                   and node.module.split(".")[0] == "semievol") or (
                isinstance(node, ast.Import)
                and any(a.name.split(".")[0] == "semievol" for a in node.names))
            if own:
                counts["top" if id(node) in top else "inside_functions"] += 1
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    graph = library_graph()
    chain = longest_chain(graph)
    result = {"modules": len(graph), "depth": len(chain), "longest_chain": chain,
              "imports": import_counts()}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{result['modules']} modules; import depth {result['depth']} (modules on the "
          "longest chain):")
    print("  " + "\n  -> ".join(chain))
    counts = result["imports"]
    print(f"project imports: {counts['top']} at module top, {counts['inside_functions']} "
          "inside functions")


if __name__ == "__main__":
    main()
