"""Items as the engine sees them: the `Item` type, loading items with their retrieved
demonstrations, and the one rule for an item's options (its own, else the task's labels).

Every module that turns a stored row into options (collaborators, evaluation, decisions,
the training set, the review detail) goes through `options_of`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from semievol.config import TaskConfig
from semievol.task.formats import Example
from semievol.workspace.store import Workspace


@dataclass
class Item:
    id: int
    example: Example               # question, options, gold answer (None when unlabeled)
    demonstrations: list[Example]  # retrieved labeled neighbours, nearest first
    similarities: list[float] | None = None  # of each demonstration, in the same order


def options_of(row, task: TaskConfig | None) -> list[str] | None:
    """The options of an item row (a mapping with an `options` JSON column): its own, else
    the task's label set (None for an open task)."""
    if row["options"]:
        return json.loads(row["options"])
    return list(task.labels) if task is not None and task.labels else None


def load_items(ws: Workspace, item_ids: list[int]) -> list[Item]:
    """Items with their options and stored neighbours, in the order asked (ids not in the
    workspace are left out)."""
    task = ws.require_task()
    rows = {r["id"]: r for r in ws.query_in("SELECT * FROM items WHERE id IN ({})", item_ids)}
    demos: dict[int, list[Example]] = {i: [] for i in item_ids}
    sims: dict[int, list[float]] = {i: [] for i in item_ids}
    for r in ws.query_in("SELECT n.item_id, n.similarity, i.question, i.options, i.answer "
                         "FROM neighbours n JOIN items i ON i.id = n.neighbour_id "
                         "WHERE n.item_id IN ({}) ORDER BY n.item_id, n.rank", item_ids):
        demos[r["item_id"]].append(Example(r["question"], options_of(r, task), r["answer"]))
        sims[r["item_id"]].append(r["similarity"])
    return [Item(i, Example(rows[i]["question"], options_of(rows[i], task), rows[i]["answer"]),
                 demos[i], sims[i]) for i in item_ids if i in rows]


def split_ids(ws: Workspace, split: str) -> list[int]:
    """The ids of a split's items, in import order."""
    return [r[0] for r in ws.query("SELECT id FROM items WHERE split=? ORDER BY id", (split,))]


def with_neighbours(ws: Workspace, split: str = "unlabeled") -> int:
    """How many items of `split` have retrieved neighbours (demonstrations) stored."""
    return ws.scalar("SELECT COUNT(DISTINCT n.item_id) FROM neighbours n JOIN items i "
                     "ON i.id = n.item_id WHERE i.split = ?", (split,)) or 0


def item_row(ws: Workspace, item_id: int) -> dict | None:
    """One item as a plain dict (id, external_id, split, question, options (resolved),
    answer), or None."""
    rows = ws.query("SELECT id, external_id, split, question, options, answer FROM items "
                    "WHERE id=?", (item_id,))
    if not rows:
        return None
    item = dict(rows[0])
    item["options"] = options_of(rows[0], ws.task)
    return item


def item_id_of(ws: Workspace, ref: str, *, external: bool) -> int | None:
    """The item id of an external id (`external`) or of an internal number; None if none."""
    if external:
        return ws.scalar("SELECT id FROM items WHERE external_id=?", (ref,))
    text = str(ref).strip()
    return ws.scalar("SELECT id FROM items WHERE id=?", (int(text),)) if text.isdigit() else None


def resolve_item(ws: Workspace, key: str | int) -> int | None:
    """The item id for an external id, or for a numeric internal id; None if neither."""
    text = str(key).strip()
    if not text:
        return None
    found = item_id_of(ws, text, external=True)
    return found if found is not None else item_id_of(ws, text, external=False)


def external_ids(ws: Workspace) -> dict[int, str]:
    """{item id: external id} of every item."""
    return {r[0]: r[1] for r in ws.query("SELECT id, external_id FROM items")}
