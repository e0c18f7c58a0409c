"""The curated training set as files other tools read: chat JSONL (the texts exactly) and
CSV (the flat view).

CSV cells that a spreadsheet would read as a formula (starting with =, +, -, @, a tab or a
carriage return) are written with a leading apostrophe, so opening the file cannot run
anything.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from semievol.curation.training_set import training_items
from semievol.export.paths import export_folder, free_path, staged
from semievol.rounds.record import get_round
from semievol.task.formats import Example, build_messages
from semievol.workspace.items import external_ids
from semievol.workspace.store import Workspace

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(value) -> str:
    """A CSV cell a spreadsheet shows as text: a leading apostrophe before a formula start."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(FORMULA_START) else text


def export_dataset(ws: Workspace, round_number: int,
                   out_dir: str | Path | None = None) -> dict[str, Path]:
    """The set round `round_number` trains on (its frozen rows once trained): labeled +
    human labels + selected pseudo-labels.

    JSONL rows are {"messages": [...]} in the chat format most trainers read (system, user,
    assistant), plus the item id and where its label came from; the CSV is the flat view.
    """
    get_round(ws, round_number)  # an unknown round is an error, before anything is written
    task = ws.require_task()
    items = training_items(ws, round_number)
    out_dir = export_folder(ws, out_dir)
    jsonl = free_path(out_dir / f"curated_round{round_number}.jsonl")
    table = free_path(out_dir / f"curated_round{round_number}.csv")
    external = external_ids(ws)
    with staged(jsonl) as partial, partial.open("x", encoding="utf-8") as f:
        for it in items:
            messages = build_messages(task, Example(it["question"], it["options"], it["answer"]),
                                      with_answer=True)
            f.write(json.dumps({"messages": messages, "id": external[it["item_id"]],
                                "source": it["source"]}, ensure_ascii=False) + "\n")
    with staged(table) as partial, partial.open("x", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "question", "options", "answer", "source"])
        for it in items:
            writer.writerow([spreadsheet_safe(v) for v in (
                external[it["item_id"]], it["question"],
                json.dumps(it["options"]) if it["options"] else "", it["answer"],
                it["source"])])
    return {"jsonl": jsonl, "csv": table}
