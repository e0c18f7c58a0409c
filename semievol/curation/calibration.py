"""Calibration: a held-out slice of the labeled set, labeled by the collaborators as if it
were unlabeled, shows how precise the selected pseudo-labels are at each threshold before
anyone trains on them (precision against coverage)."""

from __future__ import annotations

import random

import numpy as np

from semievol.config import CalibrationConfig
from semievol.curation.sufficiency import short_classes
from semievol.method.pseudo_labels import SCORE_COLUMNS
from semievol.method.scoring import precision_coverage, wilson_interval
from semievol.task.answers import is_correct
from semievol.workspace.store import Workspace, stored_weight


def hold_out(ws: Workspace, config: CalibrationConfig) -> int:
    """Move a stratified slice of the labeled items to the `calibration` split, once.

    At least `min_per_class` per class where the class keeps at least as many for training;
    nothing from a class short of labels (curation.sufficiency: its few examples are all
    the warm-up can learn it from). Returns how many items the calibration split holds.
    """
    existing = ws.scalar("SELECT COUNT(*) FROM items WHERE split='calibration'")
    if existing or config.fraction <= 0:
        return existing
    by_class: dict[str, list[int]] = {}
    for r in ws.query("SELECT id, answer FROM items WHERE split='labeled' ORDER BY id"):
        by_class.setdefault(r["answer"], []).append(r["id"])
    short = {c["label"] for c in short_classes({k: len(v) for k, v in by_class.items()})}
    rng = random.Random(config.seed)
    chosen = []
    for label in sorted(by_class):
        ids = by_class[label]
        if label in short:
            continue
        take = max(round(config.fraction * len(ids)), min(config.min_per_class, len(ids) // 2))
        chosen += rng.sample(ids, min(take, len(ids) - 1))  # always leave one to train on
    with ws.transaction() as conn:
        conn.executemany("UPDATE items SET split='calibration' WHERE id=?", [(i,) for i in chosen])
    return len(chosen)


def share_correct(correct: np.ndarray, mask: np.ndarray) -> dict:
    """{n, correct, precision, interval}: how many of the `mask`ed items are correct, with a
    95 % Wilson interval (precision None when the mask is empty)."""
    n = int(mask.sum())
    k = int((correct & mask).sum())
    low, high = wilson_interval(k, n)
    return {"n": n, "correct": k, "precision": k / n if n else None, "interval": [low, high]}


def precision_of(correct: np.ndarray, selected: np.ndarray) -> dict:
    """Precision of all vs selected calibration pseudo-labels and the selection's coverage
    of the slice: {n, all, selected, coverage}."""
    correct = np.asarray(correct, dtype=bool)
    selected = np.asarray(selected, dtype=bool)
    n = int(correct.size)
    return {"n": n, "all": share_correct(correct, np.ones_like(correct)),
            "selected": share_correct(correct, selected),
            "coverage": float(selected.mean()) if n else None}


def weighted_precision(correct: np.ndarray, mask: np.ndarray, weights: np.ndarray) -> dict:
    """{weight, precision}: the share of the `mask`ed items' training weight that is on right
    labels (precision None when they weigh nothing). Under confidence weighting this, not the
    plain count, is how precise what training sees is: a wrong label kept at weight 0.4
    counts for 0.4 of an example."""
    total = float(weights[mask].sum())
    return {"weight": total,
            "precision": float(weights[mask & correct].sum()) / total if total > 0 else None}


def calibration_report(ws: Workspace, round_id: int, *, score: str = "nll") -> dict:
    """Precision of all vs the applied selection's pseudo-labels on the calibration slice,
    by path, the selected ones' precision by training weight (`selected_weighted`), and the
    precision-coverage curve over the entropy threshold."""
    rows = ws.query(
        f"SELECT p.label, p.{SCORE_COLUMNS[score]} AS score, p.selected, p.path, p.weight, "
        "i.answer "
        "FROM pseudo_labels p JOIN items i ON i.id = p.item_id "
        "WHERE p.round_id=? AND i.split='calibration'", (round_id,))
    if not rows:
        return {"n": 0}
    task = ws.require_task()  # open answers are right by the task's checker
    correct = np.array([is_correct(task, r["label"], r["answer"]) for r in rows], dtype=bool)
    selected = np.array([bool(r["selected"]) for r in rows], dtype=bool)
    agreed = np.array([r["path"] == "agreed" for r in rows], dtype=bool)
    scores = np.array([np.nan if r["score"] is None else r["score"] for r in rows], dtype=float)
    weights = np.array([stored_weight(r["weight"]) for r in rows], dtype=float)
    summary = precision_of(correct, selected)
    return {"n": len(rows), "all": summary["all"], "selected": summary["selected"],
            "selected_weighted": weighted_precision(correct, selected, weights),
            "agreed": share_correct(correct, agreed), "reflected": share_correct(correct, ~agreed),
            "coverage_selected": summary["coverage"],
            # nan scores are never kept but count in the coverage, like coverage_selected
            "curve": precision_coverage(scores, correct)}
