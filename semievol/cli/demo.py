"""Create the bundled demo workspace from `data/demo` (see data/README.md)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from semievol.errors import SemiEvolError
from semievol.method.retrieval import Progress, SentenceTransformerEmbedder, index_workspace
from semievol.saved_config import round_config_from_dict, task_config_from_dict, to_dict
from semievol.workspace.imports import ColumnMapping, import_file
from semievol.workspace.store import Workspace


def create_demo_workspace(path: str | Path, data_dir: Path, *, embedder="bundled",
                          progress: Progress | None = None) -> bool:
    """Import the demo splits and index them; False when the workspace already exists.

    Built in a sibling `.partial` folder and renamed at the end, so an interrupted set-up
    never leaves a half-imported demo that later runs would mistake for a finished one.
    """
    path = Path(path)
    if (path / "workspace.db").exists():
        return False
    spec_file = data_dir / "task.json"
    if not spec_file.exists():
        raise SemiEvolError(f"{spec_file} is missing: the demo data folder must hold task.json "
                            "and the split files it names.")
    spec = json.loads(spec_file.read_text())
    task = task_config_from_dict(spec["task"])
    mapping = ColumnMapping(**spec["mapping"])
    partial = path.with_name(path.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    ws = Workspace(partial, create=True)
    for split, name in spec["files"].items():
        split_mapping = ColumnMapping(question=mapping.question, id=mapping.id,
                                      options=mapping.options,
                                      answer=None if split == "unlabeled" else mapping.answer)
        import_file(ws, data_dir / name, split, mapping=split_mapping, task=task)
    if isinstance(embedder, str):
        embedder = SentenceTransformerEmbedder(embedder)
    index_workspace(ws, embedder, k=spec.get("k", 3), progress=progress)
    if "round" in spec:  # validated now, used by the first round opened without a config
        ws.set_setting("default_round_config", to_dict(round_config_from_dict(spec["round"])))
    ws.close()
    path.parent.mkdir(parents=True, exist_ok=True)
    partial.rename(path)
    return True
