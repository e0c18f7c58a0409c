"""The library's import graph, read from the source (ast; nothing is imported or run).

    python bench/import_graph.py            # the longest import chain and the counts
    python bench/import_graph.py --json     # the same as JSON

Prints the depth of the graph (the number of modules on its longest chain of imports,
counting imports inside functions, as an import there still ties the two modules), that
chain, and how many imports of the project's own modules sit at module top and inside
functions. tests/test_architecture.py reads the same graph (`library_graph`) to enforce the
import rule.
"""

from __future__ import annotations

import argparse
import ast
import functools
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "semievol"


def module_name(path: Path, root: Path = ROOT) -> str:
    """semievol/rounds/steps.py -> semievol.rounds.steps; a package's __init__ is the package."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def library_modules(package: Path = PACKAGE) -> dict[str, Path]:
    """{dotted name: file} of every module and package in the library."""
    return {module_name(p, package.parent): p for p in sorted(package.rglob("*.py"))}


def imports_of(path: Path, known: set[str]) -> list[tuple[str, list[str], bool]]:
    """(imported project module, names imported from it, at module top?) for every import of
    the project's own modules in the file, wherever it stands."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        at_top = id(node) in top
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
                and node.module.split(".")[0] == "semievol":
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                if child in known:   # from semievol.rounds import steps: the module
                    found.append((child, [], at_top))
                elif node.module in known:
                    found.append((node.module, [alias.name], at_top))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "semievol" and alias.name in known:
                    found.append((alias.name, [], at_top))
    return found


def library_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """{module: the project modules it imports} (top level and inside functions)."""
    modules = library_modules(package)
    known = set(modules)
    return {name: {m for m, _, _ in imports_of(path, known) if m != name}
            for name, path in modules.items()}


def longest_chain(graph: dict[str, set[str]]) -> list[str]:
    """The longest chain of imports (module -> a module it imports -> ...); the graph must
    be acyclic (tests/test_architecture.py checks that)."""
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
        tree = ast.parse(path.read_text(encoding="utf-8"))
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
