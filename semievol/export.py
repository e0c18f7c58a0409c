"""Export: the curated training set (chat JSONL and CSV), the adapter, the merged model."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

from semievol.items import external_ids
from semievol.training_set import training_items
from semievol.errors import SemiEvolError
from semievol.store import Workspace
from semievol.tasks import Example, build_messages


def export_dataset(ws: Workspace, round_number: int, out_dir: str | Path) -> dict[str, Path]:
    """The set round `round_number` trains on: labeled + human labels + selected pseudo-labels.

    JSONL rows are {"messages": [...]} in the chat format most trainers read (system, user,
    assistant), plus the item id and where its label came from; the CSV is the flat view.
    """
    task = ws.require_task()
    items = training_items(ws, round_number)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    jsonl, table = out_dir / f"curated_round{round_number}.jsonl", \
        out_dir / f"curated_round{round_number}.csv"
    external = external_ids(ws)
    with jsonl.open("w", encoding="utf-8") as f:
        for it in items:
            messages = build_messages(task, Example(it["question"], it["options"], it["answer"]),
                                      with_answer=True)
            f.write(json.dumps({"messages": messages, "id": external[it["item_id"]],
                                "source": it["source"]}, ensure_ascii=False) + "\n")
    with table.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "question", "options", "answer", "source"])
        for it in items:
            writer.writerow([external[it["item_id"]], it["question"],
                             json.dumps(it["options"]) if it["options"] else "", it["answer"],
                             it["source"]])
    return {"jsonl": jsonl, "csv": table}


def _final_adapter(ws: Workspace, round_number: int) -> Path:
    from semievol.rounds import get_round

    rnd = get_round(ws, round_number)
    if not rnd.final_adapter or not Path(rnd.final_adapter, "adapter_config.json").exists():
        raise SemiEvolError(f"Round {round_number} has no trained adapter to export; run "
                            "`semievol train WORKSPACE` first.")
    return Path(rnd.final_adapter)


def export_adapter(ws: Workspace, round_number: int, out_dir: str | Path) -> Path:
    target = Path(out_dir) / f"adapter_round{round_number}"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(_final_adapter(ws, round_number), target,
                    ignore=shutil.ignore_patterns("checkpoint*"))
    return target


def export_merged(ws: Workspace, round_number: int, out_dir: str | Path) -> Path:
    """Base model with the round's adapter merged in, saved with its tokenizer (float32)."""
    import torch

    from semievol.models import load_model
    from semievol.rounds import get_round

    config = get_round(ws, round_number).config.model
    model, tokenizer = load_model(config, adapter=_final_adapter(ws, round_number),
                                  dtype=torch.float32)
    target = Path(out_dir) / f"merged_round{round_number}"
    shutil.rmtree(target, ignore_errors=True)
    model.save_pretrained(target)
    tokenizer.padding_side = "right"
    tokenizer.save_pretrained(target)
    return target
