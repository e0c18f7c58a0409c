"""What the next decisions of a review queue are worth, from the workspace's own evidence:
"the next 25 decisions in this queue: about +X points, range Y to Z".

The estimate has two parts, each read from what the workspace has measured.

1. How much training signal N decisions add (`effective_examples`). A decision on a right
   pseudo-label the selection leaves out adds one example (accept); on a right one it keeps,
   nothing. A wrong one it leaves out becomes one right example (relabel); a wrong one it
   keeps is worth two: a wrong example removed and a right one added. How many of the next
   N are wrong is estimated from the items whose truth is known, calibration pseudo-labels
   (held-out labeled items, pseudo-labeled as if unlabeled) and the pool items reviewers
   already decided, taking those whose collaborators were about as sure as they are of the
   next N (`queue_error`): the queue's own error rate, whatever orders it.
2. What an example is worth here (`learning_curve`). Accuracy grows about with the log of the
   training-set size; the curve runs from chance with no example through every model the
   workspace evaluated (round 1's warm-up on the labeled set, each trained round on its
   frozen rows), weighted by how many items measured each. Its slope turns N effective
   examples into points at the current training-set size.

The range is 80 % (z = 1.28): the error rate's Wilson interval and the slope's standard
error, combined with the noise of the accuracy measurement itself (two evaluations on the
same items, binomial), since what a reviewer sees next is a measured accuracy. When the
range reaches 0 or below, the evidence cannot tell the next decisions from none: the hint
says so (train now, or review in another queue).

Pure reading: no model call. `semievol review --order O` prints it; Review shows it.
"""

from __future__ import annotations

import json
import math

import numpy as np

from semievol.curation.decisions import current_decisions
from semievol.curation.selection_state import (applied_selection, compute_selection,
                                               selection_in_force)
from semievol.curation.training_set import live_training_items
from semievol.method.queues import margins
from semievol.method.scoring import wilson_interval
from semievol.task.answers import is_correct
from semievol.views.focus import collaborator_votes, focus_queue
from semievol.workspace.store import Workspace

RANGE_Z = 1.2816
"""The range is the central 80 % (a one-sided 10 % on each end)."""
MIN_EVIDENCE = 8
"""Known-truth items the error rate is read from at least (the nearest in confidence)."""
DEFAULT_DECISIONS = 25


def chance_accuracy(ws: Workspace) -> float:
    """What guessing scores: 1 / options for a choice task, 0 for an open one."""
    task = ws.require_task()
    if task.kind != "choice":
        return 0.0
    if task.labels:
        return 1.0 / len(task.labels)
    counts = [len(json.loads(r[0])) for r in ws.query(
        "SELECT options FROM items WHERE options IS NOT NULL LIMIT 200")]
    return 1.0 / float(np.mean(counts)) if counts else 0.25


def learning_curve(ws: Workspace) -> dict:
    """{points: [{n, accuracy, measured_on, model, round}], split, chance}: the evaluated
    models with the size of what each trained on, on the test split when any model was
    measured there, else the calibration slice. Round 1's warm-up trained on the labeled
    set; a trained round on its frozen training rows; later warm-ups are earlier rounds'
    models (their reports are copies) and are left out."""
    rows = ws.query(
        "SELECT e.model, e.split, e.accuracy, e.report, r.number, r.id AS rid FROM evaluations e "
        "JOIN rounds r ON r.id = e.round_id WHERE e.id IN (SELECT MAX(id) FROM evaluations "
        "WHERE round_id IS NOT NULL GROUP BY round_id, model, split) ORDER BY r.number")
    splits = {r["split"] for r in rows}
    split = "test" if "test" in splits else ("calibration" if "calibration" in splits else None)
    labeled = ws.scalar("SELECT COUNT(*) FROM items WHERE split='labeled'")
    points = []
    for r in rows:
        if r["split"] != split:
            continue
        if r["model"] == "warmup" and r["number"] == 1:
            n = labeled
        elif r["model"] == "round":
            n = ws.scalar("SELECT COUNT(*) FROM training_rows WHERE round_id=?", (r["rid"],))
        else:
            continue
        measured_on = int(json.loads(r["report"]).get("n") or 0) or _split_size(ws, split)
        points.append({"n": int(n), "accuracy": float(r["accuracy"]),
                       "measured_on": measured_on, "model": r["model"], "round": r["number"]})
    return {"points": points, "split": split, "chance": chance_accuracy(ws)}


def _split_size(ws: Workspace, split: str) -> int:
    return ws.scalar("SELECT COUNT(*) FROM items WHERE split=?", (split,))


def curve_slope(points: list[dict], chance: float) -> tuple[float, float] | None:
    """(b, its standard error) of accuracy = chance + b ln(1 + n), weighted least squares
    over the points (each weighted by 1 / its binomial variance); None without a point of
    a model that trained on something."""
    x, y, var = [], [], []
    for p in points:
        if p["n"] <= 0 or p["measured_on"] <= 0:
            continue
        a = min(max(p["accuracy"], 0.5 / p["measured_on"]), 1 - 0.5 / p["measured_on"])
        x.append(math.log1p(p["n"]))
        y.append(p["accuracy"] - chance)
        var.append(a * (1 - a) / p["measured_on"])
    if not x:
        return None
    x, y, w = np.array(x), np.array(y), 1.0 / np.array(var)
    sxx = float((w * x * x).sum())
    return float((w * x * y).sum() / sxx), float(math.sqrt(1.0 / sxx))


def gain_points(slope: float, n: int, added: float) -> float:
    """Points of accuracy that `added` effective examples give at training-set size n."""
    return 100.0 * slope * math.log((1 + n + added) / (1 + n))


def effective_examples(n: int, error: float, selected_share: float) -> float:
    """Examples' worth of training signal n decisions add (module docstring): right and
    left out +1, right and kept 0, wrong and left out +1, wrong and kept +2."""
    return n * ((1 - error) * (1 - selected_share) + error * (1 + selected_share))


def queue_error(ws: Workspace, round_id: int, next_ids: list[int]) -> dict:
    """{wrong, n, share, interval, margin}: how many of the known-truth items (calibration
    pseudo-labels, decided pool items) as sure as the next items are wrong. "As sure":
    the collaborators' margin (top-1 minus top-2 of their mean distribution) within the
    next items' range, widened to the MIN_EVIDENCE nearest to their median."""
    task = ws.require_task()
    decisions = current_decisions(ws)
    upcoming = set(next_ids)
    known = []  # (item id, wrong)
    for r in ws.query("SELECT p.item_id, p.label, i.split, i.answer FROM pseudo_labels p "
                      "JOIN items i ON i.id = p.item_id WHERE p.round_id=? AND "
                      "i.split IN ('calibration', 'unlabeled')", (round_id,)):
        if r["split"] == "calibration":
            known.append((r["item_id"], not is_correct(task, r["label"], r["answer"])))
        elif r["item_id"] in decisions and r["item_id"] not in upcoming:
            d = decisions[r["item_id"]]
            if d["action"] == "accept":
                known.append((r["item_id"], False))
            elif d["action"] == "relabel":
                known.append((r["item_id"], not is_correct(task, r["label"], d["label"])))
            elif d["action"] == "reject":
                known.append((r["item_id"], True))
    if not known or not next_ids:
        return {"wrong": 0, "n": 0, "share": None, "interval": (0.0, 1.0), "margin": None}
    ids = [i for i, _ in known] + list(next_ids)
    m = margins(collaborator_votes(ws, round_id, ids)[0])
    m = np.where(np.isnan(m), 0.0, m)  # no scores: as unsure as can be
    evidence, target = m[:len(known)], m[len(known):]
    low, high, centre = float(target.min()), float(target.max()), float(np.median(target))
    inside = np.flatnonzero((evidence >= low) & (evidence <= high))
    if inside.size < MIN_EVIDENCE:
        inside = np.argsort(np.abs(evidence - centre), kind="stable")[:MIN_EVIDENCE]
    wrong = int(sum(known[k][1] for k in inside))
    return {"wrong": wrong, "n": int(inside.size), "share": wrong / inside.size,
            "interval": wilson_interval(wrong, int(inside.size), z=RANGE_Z), "margin": centre}


def _selection_now(ws: Workspace, round_id: int, number: int,
                   ids: list[int]) -> tuple[set[int], int]:
    """(which of these undecided items the round's selection keeps, how many items the
    round would train on now). Once a selection is applied, what it stored (indexed reads:
    focus mode asks on every decision); before, what the round config's policy would keep
    over the stored scores, counted into the training set as applying it would."""
    live = {it["item_id"] for it in live_training_items(ws, number)}
    if applied_selection(ws, round_id) is not None:
        kept = {r[0] for r in ws.query_in(
            f"SELECT item_id FROM pseudo_labels WHERE round_id={int(round_id)} AND selected=1 "
            "AND item_id IN ({})", ids)}
        return kept, len(live)
    config, _ = selection_in_force(ws, round_id)
    result = compute_selection(ws, round_id, config)
    kept = {i for i, keep, split in zip(result.item_ids, result.selected, result.splits)
            if keep and split == "unlabeled"}
    return kept & set(ids), len(live | kept)


def next_decisions_value(ws: Workspace, round_id: int, order: str,
                         n: int = DEFAULT_DECISIONS, *, queue: list[int] | None = None) -> dict:
    """The estimate for the next `n` undecided items of the queue `order`:
    {n, estimate, low, high (points), stop (the range reaches 0), error (queue_error),
    selected_share, effective, training_size, slope, split, message}; estimate None with a
    message saying what evidence is missing. `queue`: the queue when the caller has read
    it already."""
    if n <= 0:
        raise ValueError(f"the number of decisions must be positive, got {n}")
    decided = set(current_decisions(ws))
    queue = focus_queue(ws, round_id, order) if queue is None else queue
    next_ids = [i for i in queue if i not in decided][:n]
    out = {"n": len(next_ids), "order": order, "estimate": None, "low": None, "high": None,
           "stop": False}
    if not next_ids:
        return {**out, "message": "Every item of this queue is decided."}
    curve = learning_curve(ws)
    fit = curve_slope(curve["points"], curve["chance"])
    if fit is None:
        return {**out, "message": "No evaluated model yet to say what an example is worth: "
                                  "the estimate appears once the warm-up is evaluated."}
    error = queue_error(ws, round_id, next_ids)
    if not error["n"]:
        return {**out, "message": "No item of known truth yet (calibration slice or "
                                  "decided items) to estimate this queue's error rate."}
    number = ws.scalar("SELECT number FROM rounds WHERE id=?", (round_id,))
    kept, size = _selection_now(ws, round_id, number, next_ids)
    share = len(kept) / len(next_ids)
    slope, se = fit
    k = len(next_ids)

    def gain(e, b):
        return gain_points(b, size, effective_examples(k, e, share))

    estimate = gain(error["share"], slope)
    corners = [gain(e, b) for e in error["interval"]
               for b in (slope - RANGE_Z * se, slope + RANGE_Z * se)]
    last = curve["points"][-1]
    a = last["accuracy"]
    noise = 100.0 * RANGE_Z * math.sqrt(2 * a * (1 - a) / max(last["measured_on"], 1))
    low = estimate - math.hypot(estimate - min(corners), noise)
    high = estimate + math.hypot(max(corners) - estimate, noise)
    stop = low <= 0
    message = (f"the next {k} decisions in this queue: about {estimate:+.1f} points, "
               f"range {low:+.1f} to {high:+.1f}")
    if stop:
        message += (" (the range reaches 0: the evidence cannot tell these decisions from "
                    "none; consider training now, or a queue with more wrong pseudo-labels)")
    return {**out, "estimate": estimate, "low": low, "high": high, "stop": stop,
            "error": error, "selected_share": share,
            "effective": effective_examples(k, error["share"], share),
            "training_size": size, "slope": slope, "split": curve["split"],
            "message": message}
