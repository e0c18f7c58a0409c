"""The curated training set as files other tools read: chat JSONL (the texts exactly) and
CSV (the flat view, under the column names of the user's own files).

The calibration items are labeled items too: the round held them out to measure its
pseudo-labels, so they are written after the training rows with source "calibration" (a
user training elsewhere on their labels wants all of them, and knows which were held out).

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
from semievol.workspace.items import external_ids, options_of
from semievol.workspace.store import Workspace

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(value) -> str:
    """A CSV cell a spreadsheet shows as text: a leading apostrophe before a formula start."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(FORMULA_START) else text


def user_columns(ws: Workspace) -> dict[str, str]:
    """{field: the column name the user's files gave it} (question, answer, options, id),
    from the latest labeled import's mapping; our names where none was imported."""
    names = {"id": "id", "question": "question", "options": "options", "answer": "answer"}
    row = ws.query("SELECT mapping FROM imports ORDER BY split != 'labeled', id DESC LIMIT 1")
    if row:
        names.update({k: v for k, v in json.loads(row[0]["mapping"]).items()
                      if k in names and v})
    if len(set(names.values())) < len(names):  # one column mapped twice: ours, unambiguous
        return {k: k for k in names}
    return names


def calibration_items(ws: Workspace) -> list[dict]:
    """The labeled items held out for calibration, with their gold answers."""
    task = ws.require_task()
    return [{"item_id": r["id"], "question": r["question"], "options": options_of(r, task),
             "answer": r["answer"], "source": "calibration"}
            for r in ws.query("SELECT id, question, options, answer FROM items "
                              "WHERE split='calibration' ORDER BY id")]


def export_dataset(ws: Workspace, round_number: int,
                   out_dir: str | Path | None = None) -> dict:
    """The set round `round_number` trains on (its frozen rows once trained): labeled +
    human labels + selected pseudo-labels.

    JSONL rows are {"messages": [...]} in the chat format most trainers read (system, user,
    assistant), plus the item id and where its label came from; the CSV is the flat view.
    Both end with the calibration items (source "calibration", not trained on). Returns
    {jsonl, csv (the paths), trained, calibration (how many rows of each)}.
    """
    get_round(ws, round_number)  # an unknown round is an error, before anything is written
    task = ws.require_task()
    trained, held_out = training_items(ws, round_number), calibration_items(ws)
    items = trained + held_out
    columns = user_columns(ws)
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
        writer.writerow([columns["id"], columns["question"], columns["options"],
                         columns["answer"], "source"])
        for it in items:
            writer.writerow([spreadsheet_safe(v) for v in (
                external[it["item_id"]], it["question"],
                json.dumps(it["options"]) if it["options"] else "", it["answer"],
                it["source"])])
    return {"jsonl": jsonl, "csv": table, "trained": len(trained), "calibration": len(held_out)}
