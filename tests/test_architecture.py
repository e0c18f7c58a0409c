"""The library's shape, read from the source (tests/import_graph.py; nothing is run): which
part may import which (RULES, the one place that rule is written), no import cycle, pure
parts, heavy libraries only inside functions, and pages that read through `views`.

A violation names the importing module, the line and the part it may not reach, e.g.
"semievol/workspace/store.py:3 imports semievol.rounds.steps: workspace may import only
task (and the foundation)".
"""

from __future__ import annotations

import ast
import re
import shutil
from pathlib import Path

from import_graph import (PACKAGE, ROOT, cycle, library_graph, library_modules, project_imports,
                          third_party_at_top)

FOUNDATION = ("semievol", "semievol.errors", "semievol.config", "semievol.saved_config",
              "semievol.profiling")
"""What every part shares (the error type, the config dataclasses and their saved form,
stage timing); these import only each other."""

RULES = {
    # part        the parts it may import, besides itself and the foundation
    "task":      (),
    "workspace": ("task",),
    "model":     ("task",),
    "method":    ("task", "workspace", "model"),
    "training":  ("task", "model"),
    "curation":  ("task", "workspace", "model", "method", "training"),
    "rounds":    ("task", "workspace", "model", "method", "training", "curation"),
    "team":      ("task", "workspace", "curation"),
    "runs":      ("task", "workspace", "model", "method", "training", "curation", "rounds"),
    "views":     ("task", "workspace", "model", "method", "training", "curation", "rounds",
                  "runs", "team"),
    "export":    ("task", "workspace", "model", "method", "training", "curation", "rounds",
                  "runs", "views"),
    "cli":       ("task", "workspace", "model", "method", "training", "curation", "rounds",
                  "runs", "views", "export", "team"),
}
"""Who may import whom: the foundation at the bottom, then the task and the workspace, the
model, the method, training and curation, the round and its runs, what pages read, exports,
and the command line on top. Nothing in the library imports the app or streamlit."""

NARROWER = {
    "semievol.method.scoring": (),
    "semievol.method.selection": (),
    "semievol.method.queues": ("semievol.method.scoring",),
    "semievol.runs.jobs": ("semievol.workspace.store", "semievol.runs.progress"),
    "semievol.runs.progress": ("semievol.workspace.store",),
}
"""Modules held to less than their part: scoring and selection are pure (numpy over arrays:
the foundation only), the review queues pure over scoring; the run table and its progress
sit below the runner they execute."""

PURE_LIBRARIES = {"math", "typing", "numpy", "collections", "dataclasses", "functools"}
"""All that the pure modules (scoring, selection, queues) may import besides the foundation."""

HEAVY = {"torch", "transformers", "peft", "accelerate", "chromadb", "sentence_transformers",
         "gguf", "safetensors", "streamlit", "pandas", "pyarrow", "plotly", "httpx", "yaml",
         "huggingface_hub", "datasets", "mlflow"}
"""Libraries imported inside the functions that need them, so `semievol --help` and the
pure parts start fast."""

HEAVY_MODULES = {"semievol.training.lora_dropout": "subclasses torch.nn.Module"}
"""Project modules that must load a heavy library at their top; the only project modules
imported inside functions."""

APP_ACTIONS = {
    "semievol.workspace.store": {"Workspace", "SPLITS"},
    "semievol.workspace.imports": {"IMPORT_SPLITS", "ColumnMapping", "ImportReport",
                                   "guess_mapping", "guess_split", "import_file"},
    "semievol.workspace.readers": {"FILE_TYPES", "read_sample"},
    "semievol.method.retrieval": {"SentenceTransformerEmbedder", "index_workspace"},
    "semievol.curation.decisions": {"ACTIONS", "label_reading", "record_decisions",
                                    "undo_last"},
    "semievol.curation.selection_state": {"apply_selection", "keep_for_next_rounds"},
    "semievol.rounds.backends": {"probe_servers"},
    "semievol.export.dataset": {"export_dataset"},
    "semievol.export.model": {"export_adapter", "export_gguf", "export_merged"},
    "semievol.export.paths": {"export_folder", "exported", "human_size"},
    "semievol.team.handout": {"adjudicate", "claim_next", "release", "set_overlap_share"},
    "semievol.team.accounts": {"LEAD_ONLY", "SESSION_SECONDS", "Account", "SignInRefused",
                               "close_session", "may", "require", "session_account", "sign_in",
                               "sso_sign_in"},
}
"""What the app's pages may import besides the foundation, `semievol.views` and
`semievol.runs`: the workspace they open and the actions they call (import a file, index,
decide, apply a selection, probe servers, export; in team mode sign in and out, check a
role, hand out an item, adjudicate, set the overlap). Everything a page reads comes from
`semievol.views`."""


def part_of(module: str) -> str:
    if module in FOUNDATION:
        return "foundation"
    if module == "semievol.__main__":
        return "cli"
    return module.split(".")[1]


def allowed(importer: str, imported: str) -> bool:
    if imported in FOUNDATION:
        return True
    if importer in NARROWER:
        return imported in NARROWER[importer]
    mine, theirs = part_of(importer), part_of(imported)
    if mine == "foundation":
        return False
    return theirs == mine or theirs in RULES[mine]


def violations(package: Path = PACKAGE) -> list[str]:
    """Every import the rules forbid, as "file:line imports module: why"."""
    modules = library_modules(package)
    out = []
    for name, path in modules.items():
        for found in project_imports(path, set(modules)):
            if found.module == name or allowed(name, found.module):
                continue
            if name in NARROWER:
                why = (f"{name} may import only "
                       f"{', '.join(NARROWER[name]) or 'nothing of the project'} (and the "
                       "foundation)")
            elif part_of(name) == "foundation":
                why = "the foundation imports only itself"
            else:
                reach = ", ".join(RULES[part_of(name)]) or "nothing"
                why = f"{part_of(name)} may import only {reach} (and the foundation)"
            out.append(f"{path.relative_to(package.parent)}:{found.line} imports "
                       f"{found.module}: {why}")
    return out


def test_every_part_imports_only_what_the_rules_allow():
    assert violations() == []


def test_a_planted_forbidden_import_is_named(tmp_path):
    """The rule can fail: an import of the runner planted in the workspace is reported."""
    copy = tmp_path / "semievol"
    shutil.copytree(PACKAGE, copy)
    store = copy / "workspace" / "store.py"
    store.write_text(store.read_text() + "\nfrom semievol.rounds.steps import STEPS  # planted\n")
    found = violations(copy)
    assert len(found) == 1
    assert found[0].startswith("semievol/workspace/store.py:")
    assert found[0].endswith("imports semievol.rounds.steps: workspace may import only task "
                             "(and the foundation)")


def test_the_cycle_finder_finds_a_cycle():
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_inside_the_library():
    assert cycle(library_graph()) is None


def test_no_module_imports_another_modules_private_names():
    modules = library_modules()
    offenders = [f"{path.name}: {i.module}.{n}" for name, path in modules.items()
                 for i in project_imports(path, set(modules)) for n in i.names
                 if n.startswith("_") and i.module != name]
    assert offenders == []


def test_pure_modules_import_only_numpy_and_the_standard_library():
    modules = library_modules()
    for name in ("semievol.method.scoring", "semievol.method.selection",
                 "semievol.method.queues"):
        assert third_party_at_top(modules[name]) <= PURE_LIBRARIES, name


def test_heavy_libraries_load_only_inside_functions():
    top = {name: third_party_at_top(path) & HEAVY for name, path in library_modules().items()}
    assert {name: sorted(found) for name, found in top.items()
            if found and name not in HEAVY_MODULES} == {}


def test_the_projects_own_imports_stand_at_module_top():
    """Inside a function only where the imported module loads a heavy library."""
    modules = library_modules()
    inside = [f"{path.relative_to(ROOT)}:{i.line} {i.module}"
              for path in modules.values() for i in project_imports(path, set(modules))
              if not i.at_top and i.module not in HEAVY_MODULES]
    assert inside == []


def test_the_library_never_imports_streamlit():
    assert [name for name, path in library_modules().items()
            if "streamlit" in third_party_at_top(path)
            or re.search(r"^\s*(import|from)\s+streamlit", path.read_text(), re.M)] == []


def _app_files() -> list[Path]:
    return sorted((ROOT / "app").rglob("*.py"))


def test_pages_import_only_views_runs_and_their_actions():
    modules = set(library_modules())
    found = []
    for path in _app_files():
        for i in project_imports(path, modules):
            part = part_of(i.module)
            if part in ("foundation", "views", "runs"):
                continue
            extra = set(i.names) - APP_ACTIONS.get(i.module, set())
            if extra:
                found.append(f"{path.relative_to(ROOT)}:{i.line} {i.module}: "
                             f"{', '.join(sorted(extra))}")
    assert found == []


def test_pages_hold_no_sql_and_no_settings():
    pattern = re.compile(r"\.query\(|\.scalar\(|\.execute\(|get_setting|set_setting")
    hits = [f"{p.relative_to(ROOT)}:{n}" for p in _app_files()
            for n, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert hits == []


def test_every_part_says_what_it_owns_and_may_import():
    for part in RULES:
        init = PACKAGE / part / "__init__.py"
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and "import" in doc, part


DISTRIBUTIONS = {"yaml": "pyyaml", "sentence_transformers": "sentence-transformers",
                 "huggingface_hub": "huggingface-hub", "mlflow": "mlflow-skinny",
                 "argon2": "argon2-cffi"}
"""Import names whose distribution on PyPI is named otherwise."""


def test_every_library_the_library_imports_is_declared():
    import sys

    import tomllib

    declared = {re.split(r"[<>=!~ ;\[]", d)[0].lower() for d in tomllib.loads(
        (ROOT / "pyproject.toml").read_text())["project"]["dependencies"]}
    imported = set()
    for path in library_modules().values():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                imported.add(node.module.split(".")[0])
    third_party = imported - set(sys.stdlib_module_names) - {"semievol"}
    assert {DISTRIBUTIONS.get(m, m) for m in third_party} - declared == set()
