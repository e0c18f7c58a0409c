"""Items as the engine sees them: the `Item` type, loading items with their retrieved
demonstrations, and the one rule for an item's options (its own, else the task's labels).

Every module that turns a stored row into options (collaborators, evaluation, decisions,
the training set, the review detail) goes through `options_of`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from semievol.config import TaskConfig
from semievol.store import Workspace
from semievol.tasks import Example


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


# -- browsing (the Workspace page's preview and statistics) ------------------------------
PREVIEW_PAGE_SIZE = 50


def _search_clause(search: str) -> tuple[str, tuple]:
    if not search:
        return "", ()
    pattern = "%" + re.sub(r"([\\%_])", r"\\\1", search) + "%"
    return (" AND (question LIKE ? ESCAPE '\\' OR external_id LIKE ? ESCAPE '\\')",
            (pattern, pattern))


def count_split(ws: Workspace, split: str, search: str = "") -> int:
    """Items of a split whose question or external id contains `search`."""
    clause, params = _search_clause(search)
    return ws.scalar(f"SELECT COUNT(*) FROM items WHERE split=?{clause}", (split, *params))


def preview_rows(ws: Workspace, split: str, page: int = 1, *, search: str = "",
                 page_size: int = PREVIEW_PAGE_SIZE) -> list[dict]:
    """One page (1-based) of a split's items in import order: id (external), question,
    answer, options (as stored), neighbours (how many are retrieved)."""
    clause, params = _search_clause(search)
    rows = ws.query(
        "SELECT external_id AS id, question, answer, options, "
        "(SELECT COUNT(*) FROM neighbours n WHERE n.item_id = items.id) AS neighbours "
        f"FROM items WHERE split=?{clause} ORDER BY id LIMIT ? OFFSET ?",
        (split, *params, page_size, (max(page, 1) - 1) * page_size))
    return [dict(r) for r in rows]


def label_counts(ws: Workspace, splits: tuple[str, ...] = ("labeled", "test")) -> list[dict]:
    """[{split, label, items}] of the gold answers in `splits`."""
    marks = ",".join("?" * len(splits))
    rows = ws.query(f"SELECT split, answer, COUNT(*) FROM items WHERE split IN ({marks}) "
                    "AND answer IS NOT NULL GROUP BY split, answer ORDER BY split, answer",
                    splits)
    return [{"split": r[0], "label": r[1], "items": r[2]} for r in rows]


def question_lengths(ws: Workspace) -> list[dict]:
    """Question length in characters per split: [{split, items, min, mean, max}]."""
    rows = ws.query("SELECT split, COUNT(*), MIN(LENGTH(question)), AVG(LENGTH(question)), "
                    "MAX(LENGTH(question)) FROM items GROUP BY split")
    return [{"split": r[0], "items": r[1], "min": r[2], "mean": r[3], "max": r[4]} for r in rows]
