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
    assistant), plus the item id and where its label came from; the CSV is the flat view,
    and the Parquet file the same flat rows typed (options as a list of strings), for pandas,
    HF `datasets` and Argilla. All end with the calibration items (source "calibration", not
    trained on); the `datasets` folder holds them for `load_from_disk`, with a dataset card.
    Returns {jsonl, csv, parquet, dataset (the paths), trained, calibration (how many rows
    of each)}.
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
    parquet = free_path(out_dir / f"curated_round{round_number}.parquet")
    with staged(parquet) as partial:
        _write_parquet(partial, columns, [
            (external[it["item_id"]], it["question"], it["options"], it["answer"], it["source"])
            for it in items])
    hub = free_path(out_dir / f"curated_round{round_number}_dataset")
    with staged(hub) as partial:
        _write_hf_dataset(partial, parquet, _dataset_card(ws, round_number, columns,
                                                          len(trained), len(held_out)))
    return {"jsonl": jsonl, "csv": table, "parquet": parquet, "dataset": hub,
            "trained": len(trained), "calibration": len(held_out)}


def _write_hf_dataset(folder: Path, parquet: Path, card: str) -> None:
    """The Parquet rows as a Hugging Face `datasets` folder (`Dataset.save_to_disk`, read
    back with `datasets.load_from_disk`), with a dataset card as its README."""
    import pyarrow.parquet as pq
    from datasets import Dataset

    # From the table itself: no builder, so nothing is cached under ~/.cache/huggingface.
    Dataset(pq.read_table(str(parquet))).save_to_disk(str(folder))
    (folder / "README.md").write_text(card, encoding="utf-8")


def _dataset_card(ws: Workspace, round_number: int, columns: dict[str, str], trained: int,
                  held_out: int) -> str:
    """A dataset card: the Hub's YAML header (built with huggingface_hub's card data) and
    what the rows are, where each label came from and what the columns hold."""
    from huggingface_hub import DatasetCardData

    task = ws.require_task()
    data = DatasetCardData(task_categories=["text-classification"] if task.kind == "choice"
                           else ["text-generation"], size_categories=[_size_category(
                               trained + held_out)], tags=["semievol", "curated"])
    labels = ", ".join(task.labels) if task.labels else "each item's own options"
    return (f"---\n{data.to_yaml()}\n---\n\n"
            f"# Curated training set of round {round_number}\n\n"
            f"Exported by SemiEvol Studio: {trained} row(s) round {round_number} trains on "
            f"(source `gold`: the labeled file; `human`: relabeled by a reviewer; `pseudo`: a "
            f"pseudo-label selected by the round's policy or accepted by a reviewer), then "
            f"{held_out} calibration row(s) (source `calibration`: gold labels held out of "
            "training to measure the pseudo-labels).\n\n"
            f"Columns: `{columns['id']}` (the item's id), `{columns['question']}` (the text), "
            f"`{columns['options']}` (the options, if any), `{columns['answer']}` (the label; "
            f"labels: {labels}), `source`.\n\n"
            "```python\nfrom datasets import load_from_disk\n"
            f"rows = load_from_disk(\"curated_round{round_number}_dataset\")\n```\n")


def _size_category(n: int) -> str:
    """The Hub's size category of a dataset of `n` rows."""
    for bound, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K")):
        if n < bound:
            return name
    return "100K<n<1M"


def _write_parquet(path: Path, columns: dict[str, str], rows: list[tuple]) -> None:
    """The flat rows as Parquet, under the user's column names; data stays data (no
    spreadsheet escaping: no spreadsheet reads this file)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = [columns["id"], columns["question"], columns["options"], columns["answer"],
             "source"]
    types = [pa.string(), pa.string(), pa.list_(pa.string()), pa.string(), pa.string()]
    data = [pa.array([r[k] for r in rows], type=t) for k, t in enumerate(types)]
    pq.write_table(pa.Table.from_arrays(data, names=names), path)
