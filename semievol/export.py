"""Export: the curated training set (chat JSONL and CSV), the adapter, the merged model, and
the merged model as GGUF with an Ollama Modelfile and a model card (semievol.gguf_export,
semievol.model_card).

Exports never overwrite or delete: a name that is taken gets a numbered sibling (`-2`,
`-3`, ...). CSV cells that a spreadsheet would read as a formula (starting with =, +, -, @,
a tab or a carriage return) are written with a leading apostrophe, so opening the file
cannot run anything; the JSONL holds the texts exactly.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

from semievol.errors import SemiEvolError
from semievol.items import external_ids
from semievol.store import Workspace
from semievol.tasks import Example, build_messages
from semievol.training_set import training_items

EXPORT_KINDS = ("dataset", "adapter", "merged", "gguf")
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _numbered(path: Path, n: int) -> Path:
    if n == 1:
        return path
    stem, suffix = (path.stem, path.suffix) if path.suffix else (path.name, "")
    return path.with_name(f"{stem}-{n}{suffix}")


def versions(path: Path) -> list[Path]:
    """The exports written under `path`'s name, oldest first: path, path-2, path-3, ..."""
    found, n = [], 1
    while _numbered(path, n).exists():
        found.append(_numbered(path, n))
        n += 1
    return found


def free_path(path: Path) -> Path:
    """`path`, or the first of path-2, path-3, ... that does not exist yet."""
    return _numbered(path, len(versions(path)) + 1)


def spreadsheet_safe(value) -> str:
    """A CSV cell a spreadsheet shows as text: a leading apostrophe before a formula start."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(FORMULA_START) else text


def parse_what(what: str) -> list[str]:
    """The export kinds of a comma-separated list, or an error naming the unknown ones."""
    kinds = [w.strip() for w in what.split(",") if w.strip()]
    unknown = [w for w in kinds if w not in EXPORT_KINDS]
    if unknown or not kinds:
        raise SemiEvolError(f"Unknown export {', '.join(map(repr, unknown)) or '(none)'}: "
                            f"choose from {', '.join(EXPORT_KINDS)} (comma-separated).")
    return kinds


def export_dataset(ws: Workspace, round_number: int, out_dir: str | Path) -> dict[str, Path]:
    """The set round `round_number` trains on (its frozen rows once trained): labeled +
    human labels + selected pseudo-labels.

    JSONL rows are {"messages": [...]} in the chat format most trainers read (system, user,
    assistant), plus the item id and where its label came from; the CSV is the flat view.
    """
    from semievol.rounds import get_round

    get_round(ws, round_number)  # an unknown round is an error, before anything is written
    task = ws.require_task()
    items = training_items(ws, round_number)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    jsonl = free_path(out_dir / f"curated_round{round_number}.jsonl")
    table = free_path(out_dir / f"curated_round{round_number}.csv")
    external = external_ids(ws)
    with jsonl.open("x", encoding="utf-8") as f:
        for it in items:
            messages = build_messages(task, Example(it["question"], it["options"], it["answer"]),
                                      with_answer=True)
            f.write(json.dumps({"messages": messages, "id": external[it["item_id"]],
                                "source": it["source"]}, ensure_ascii=False) + "\n")
    with table.open("x", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "question", "options", "answer", "source"])
        for it in items:
            writer.writerow([spreadsheet_safe(v) for v in (
                external[it["item_id"]], it["question"],
                json.dumps(it["options"]) if it["options"] else "", it["answer"],
                it["source"])])
    return {"jsonl": jsonl, "csv": table}


def _final_adapter(ws: Workspace, round_number: int) -> Path:
    from semievol.models import require_adapter
    from semievol.rounds import get_round

    rnd = get_round(ws, round_number)
    if not rnd.final_adapter:
        raise SemiEvolError(f"Round {round_number} has no trained adapter to export; run "
                            "`semievol train WORKSPACE` first.")
    return require_adapter(rnd.final_adapter)


def export_adapter(ws: Workspace, round_number: int, out_dir: str | Path) -> Path:
    source = _final_adapter(ws, round_number)
    target = free_path(Path(out_dir) / f"adapter_round{round_number}")
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("checkpoint*"))
    return target


def _merged_model(ws: Workspace, round_number: int):
    """The base model with the round's adapter merged in (float32), and its tokenizer."""
    import torch

    from semievol.models import load_model
    from semievol.rounds import get_round

    config = get_round(ws, round_number).config.model
    adapter = _final_adapter(ws, round_number)
    return load_model(config, adapter=adapter, dtype=torch.float32)


def export_merged(ws: Workspace, round_number: int, out_dir: str | Path) -> Path:
    """Base model with the round's adapter merged in, saved with its tokenizer (float32)."""
    model, tokenizer = _merged_model(ws, round_number)
    target = free_path(Path(out_dir) / f"merged_round{round_number}")
    model.save_pretrained(target)
    tokenizer.padding_side = "right"
    tokenizer.save_pretrained(target)
    return target


def export_gguf(ws: Workspace, round_number: int, out_dir: str | Path, *,
                gguf_type: str = "f16") -> dict:
    """A folder a deployment loads: model.gguf (the merged model), an Ollama Modelfile and
    README.md, the model card from the workspace's evidence."""
    from semievol.gguf_export import GGUF_TYPES, write_gguf
    from semievol.model_card import model_card, modelfile
    from semievol.models import resolve_model_path
    from semievol.rounds import get_round

    if gguf_type not in GGUF_TYPES:  # before the model loads
        raise SemiEvolError(f"GGUF type must be one of {', '.join(GGUF_TYPES)}; got "
                            f"{gguf_type!r}.")
    rnd = get_round(ws, round_number)
    model, tokenizer = _merged_model(ws, round_number)
    target = free_path(Path(out_dir) / f"gguf_round{round_number}")
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    name = "model.gguf"
    info = write_gguf(model, Path(resolve_model_path(rnd.config.model.name_or_path)),
                      partial / name, name=f"{ws.path.name} round {round_number}",
                      gguf_type=gguf_type)
    (partial / "Modelfile").write_text(modelfile(name, tokenizer), encoding="utf-8")
    (partial / "README.md").write_text(model_card(ws, round_number, model_file=name,
                                                  gguf=info), encoding="utf-8")
    partial.rename(target)  # whole or not at all: a crash leaves only the .partial folder
    return {**info, "path": target / name, "folder": target}
