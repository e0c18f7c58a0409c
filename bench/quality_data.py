"""The quality bench's data side: a task's splits, the subsampled import files (unlabeled
answers hidden), the workspaces built from them through the library, and round configs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from common import load_split, progress_printer, true_option

# -- data --------------------------------------------------------------------------------
TASKS = Path(__file__).resolve().parent / "tasks.json"


def task_description(task_dir: Path) -> dict:
    """The task's instruction (and answer formats): from task.json beside its CSVs when
    there is one, else from bench/tasks.json by the folder's name; a task with neither is
    refused rather than run with another task's instruction."""
    own = task_dir / "task.json"
    if own.exists():
        return json.loads(own.read_text())
    known = json.loads(TASKS.read_text())
    name = task_dir.resolve().name
    if name not in known:
        raise SystemExit(f"{task_dir} has no task.json and bench/tasks.json does not describe "
                         f"{name!r}: write its instruction in either (or pass --instruction).")
    return known[name]


def load_task(task_dir: Path) -> dict:
    """The three splits, the option list(s), whether the task has one fixed label set, and
    its description (task_description)."""
    frames = {s: load_split(task_dir, s) for s in ("labeled", "unlabeled", "test")}
    if "options" not in frames["labeled"].columns:
        raise SystemExit(f"{task_dir}: the bench expects an `options` column (JSON list).")
    distinct = {o for f in frames.values() for o in f["options"]}
    fixed = [json.loads(o) for o in distinct][0] if len(distinct) == 1 else None
    return {"frames": frames, "labels": fixed, "name": task_dir.resolve().name,
            "description": task_description(task_dir)}


def subsample(frame, n: int | None, seed: int):
    if not n or n >= len(frame):
        return frame
    return frame.sample(n=n, random_state=seed).sort_index()


def write_split_files(task: dict, sizes: dict, seed: int, folder: Path) -> tuple[dict, dict]:
    """Subsampled CSVs for import (unlabeled: no answer column) and the hidden answers
    {external id: option text} of the unlabeled items."""
    import pandas as pd

    folder.mkdir(parents=True, exist_ok=True)
    files, hidden = {}, {}
    for split in ("labeled", "unlabeled", "test"):
        # The test subsample is drawn with seed 0 whatever --seeds says: seeds then differ in
        # their training data only, and their test numbers are comparable.
        frame = subsample(task["frames"][split], sizes[split], 0 if split == "test" else seed)
        rows = []
        for index, row in frame.iterrows():
            options = json.loads(row["options"])
            out = {"id": f"{split}:{index}", "question": row["question"]}
            if task["labels"] is None:
                out["options"] = row["options"]
            if split == "unlabeled":
                hidden[out["id"]] = true_option(row, options)
            else:  # the option's text: the dataset's letters name options in its own order
                out["answer"] = true_option(row, options)
            rows.append(out)
        path = folder / f"{split}.csv"
        pd.DataFrame(rows).to_csv(path, index=False)
        files[split] = path
    return files, hidden


def build_workspace(path: Path, files: dict, task_config, embedder, calibration, k: int):
    from semievol.curation.calibration import hold_out
    from semievol.method.retrieval import index_workspace
    from semievol.workspace.imports import ColumnMapping, import_file
    from semievol.workspace.store import Workspace

    ws = Workspace(path, create=True)
    for split, file in files.items():
        mapping = ColumnMapping(question="question", id="id",
                                answer=None if split == "unlabeled" else "answer",
                                options=None if task_config.labels or task_config.kind == "open"
                                else "options")
        import_file(ws, file, split, mapping=mapping, task=task_config)
    held = hold_out(ws, calibration)  # before indexing: calibration items leave the pool
    index_workspace(ws, embedder, k=k, progress=progress_printer("index"))
    return ws, held


def fork(ws, dest: Path):
    """A copy of a workspace (database, Chroma, adapters) to branch an experiment from."""
    from semievol.workspace.store import Workspace

    ws.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    shutil.copytree(ws.path, dest)
    return Workspace(dest)


# -- configs -----------------------------------------------------------------------------
def round_config(args, seed: int, balance: str, collaborators=None):
    from semievol.config import (CalibrationConfig, LoraConfig, ModelConfig, RetrievalConfig,
                                 RoundConfig, ServedConfig, TrainConfig,
                                 default_collaborators)

    lora = LoraConfig() if args.lora_dropout is None else LoraConfig(dropout=args.lora_dropout)
    servers, served = [], ServedConfig()
    if getattr(args, "teacher_url", None) and collaborators is None:
        from teacher_server import teacher_config

        teacher, server = teacher_config(args.teacher_url)
        collaborators, servers = default_collaborators() + [teacher], [server]
        if getattr(args, "teacher_reflects", False):
            served = ServedConfig(reflection=server.name, reflection_model="base")
    return RoundConfig(
        servers=servers, served=served,
        model=ModelConfig(name_or_path=args.model, dtype=args.dtype),
        lora=lora,
        train=TrainConfig(class_balance=balance, seed=seed, epochs=args.epochs,
                          learning_rate=args.lr, max_steps=args.max_steps,
                          batch_size=args.batch_size),
        retrieval=RetrievalConfig(k=args.k),
        calibration=CalibrationConfig(fraction=args.calibration, seed=seed),
        collaborators=collaborators or default_collaborators())
