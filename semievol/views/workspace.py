"""What the Workspace page reads besides the status (semievol.views.status): a split's items
page by page with a search, the gold labels per class and the question lengths per split.
"""

from __future__ import annotations

import re

from semievol.workspace.store import Workspace

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
