"""How far reviewers agree: with each other (Cohen's kappa per pair, Krippendorff's alpha
over all, overall and per class), with each collaborator (per class), and how fast and how
accurately each one decides.

A reviewer's rating of an item is what their standing decision says the item's label is:
accept -> the pseudo-label they accepted, relabel -> their label, reject -> `rejected` (a
category of its own: the pseudo-label is wrong, and no label is named). A reviewer's
standing decision is their newest one that no undo took back; a `clear` leaves the item
unrated by them; a lead's adjudication is not a rating (it is the known answer accuracy is
measured against). Per class, each class is scored one against the rest on the items where
any reviewer named it.

The statistics (`cohen_kappa`, `krippendorff_alpha`) are pure functions over ratings and
are checked in the tests against scikit-learn's `cohen_kappa_score` and the `krippendorff`
package. Both are None where they are undefined: fewer than two rated values to compare,
or a single category in all of them (agreement beyond chance cannot be told from chance).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from itertools import combinations
from typing import Hashable, Mapping, Sequence

import numpy as np

from semievol.curation.decisions import is_undo, undone_ids
from semievol.workspace.store import Workspace

REJECTED = "rejected"
BREAK_SECONDS = 600.0
"""A gap between two decisions longer than this is a break, not time spent deciding."""


# -- pure statistics ------------------------------------------------------------------------
def cohen_kappa(a: Sequence[Hashable], b: Sequence[Hashable]) -> float | None:
    """Cohen's kappa of two raters over the same items (aligned lists): (p_o - p_e) /
    (1 - p_e); None when there are no items or chance agreement is 1 (one category)."""
    if len(a) != len(b):
        raise ValueError(f"two raters need the same items: {len(a)} and {len(b)} ratings")
    n = len(a)
    if n == 0:
        return None
    observed = sum(x == y for x, y in zip(a, b)) / n
    ca, cb = Counter(a), Counter(b)
    expected = sum(ca[c] * cb[c] for c in ca) / (n * n)
    if expected >= 1.0:
        return None
    return (observed - expected) / (1.0 - expected)


def krippendorff_alpha(units: Sequence[Mapping[Hashable, Hashable]]) -> float | None:
    """Krippendorff's alpha, nominal, over units rated by any subset of raters (each unit a
    {rater: category}; a missing rating is simply absent). Units with fewer than two
    ratings cannot be paired and are left out. 1 - D_o / D_e from the coincidence matrix;
    None when fewer than two pairable values remain or they hold one category."""
    coincidence: dict[tuple, float] = defaultdict(float)
    for unit in units:
        values = list(unit.values())
        m = len(values)
        if m < 2:
            continue
        counts = Counter(values)
        for c, nc in counts.items():
            for k, nk in counts.items():
                pairs = nc * (nk - 1) if c == k else nc * nk
                if pairs:
                    coincidence[c, k] += pairs / (m - 1)
    totals: dict[Hashable, float] = defaultdict(float)
    for (c, _), v in coincidence.items():
        totals[c] += v
    n = sum(totals.values())
    if n < 2 or len(totals) < 2:
        return None
    observed = sum(v for (c, k), v in coincidence.items() if c != k)
    expected = sum(totals[c] * totals[k] for c in totals for k in totals if c != k) / (n - 1)
    return 1.0 - observed / expected


def one_against_rest(ratings: Sequence[Hashable], label: Hashable) -> list[bool]:
    return [r == label for r in ratings]


# -- what the workspace holds -----------------------------------------------------------------
def reviewer_ratings(ws: Workspace, round_id: int | None = None) -> dict[int, dict[str, str]]:
    """{item id: {reviewer: rating}} from every reviewer's standing decision (of one round's
    decisions, or all)."""
    rows = ws.query("SELECT id, item_id, action, label, reviewer, note, round_id FROM decisions "
                    "WHERE adjudication = 0 ORDER BY id")
    undone = undone_ids(rows)
    standing: dict[tuple[int, str], dict] = {}
    for r in rows:
        if is_undo(r) or r["id"] in undone:
            continue
        if round_id is not None and r["round_id"] not in (round_id, None):
            continue
        standing[r["item_id"], r["reviewer"]] = dict(r)
    pseudo = _pseudo_labels(ws, {item for item, _ in standing})
    ratings: dict[int, dict[str, str]] = defaultdict(dict)
    for (item, reviewer), r in standing.items():
        if r["action"] == "clear":
            continue
        if r["action"] == "relabel":
            rating = r["label"]
        elif r["action"] == "reject":
            rating = REJECTED
        else:
            rating = (pseudo.get((r["round_id"], item)) or pseudo.get((None, item)))
            if rating is None:
                continue
        ratings[item][reviewer] = rating
    return dict(ratings)


def _pseudo_labels(ws: Workspace, items: set[int]) -> dict[tuple, str]:
    """{(round id, item id): pseudo-label}, and {(None, item id): the newest round's}."""
    found: dict[tuple, str] = {}
    for r in ws.query_in("SELECT round_id, item_id, label FROM pseudo_labels WHERE item_id IN "
                         "({}) ORDER BY round_id", sorted(items)):
        found[r["round_id"], r["item_id"]] = found[None, r["item_id"]] = r["label"]
    return found


def _pair_rows(ratings: dict[int, dict[str, str]], a: str, b: str) -> tuple[list, list]:
    both = [item for item, by in sorted(ratings.items()) if a in by and b in by]
    return [ratings[i][a] for i in both], [ratings[i][b] for i in both]


def _classes(ratings: dict[int, dict[str, str]]) -> list[str]:
    return sorted({v for by in ratings.values() for v in by.values()})


def reviewer_agreement(ratings: dict[int, dict[str, str]]) -> dict:
    """Agreement between reviewers: `pairs` (kappa and count per pair of reviewers), `alpha`
    over all of them with its count of items rated by two or more, and `classes` (alpha and
    count per class, one against the rest)."""
    reviewers = sorted({r for by in ratings.values() for r in by})
    pairs = []
    for a, b in combinations(reviewers, 2):
        ra, rb = _pair_rows(ratings, a, b)
        pairs.append({"a": a, "b": b, "items": len(ra), "kappa": cohen_kappa(ra, rb),
                      "agreed": sum(x == y for x, y in zip(ra, rb))})
    units = [by for by in ratings.values() if len(by) >= 2]
    classes = []
    for label in _classes(ratings):
        named = [u for u in units if label in u.values()]
        classes.append({"class": label, "items": len(named), "alpha": krippendorff_alpha(
            [{r: v == label for r, v in u.items()} for u in units])})
    return {"reviewers": reviewers, "pairs": pairs, "items": len(units),
            "alpha": krippendorff_alpha(units), "classes": classes}


def collaborator_answers(ws: Workspace, items: set[int]) -> dict[int, dict[int, str]]:
    """{item id: {collaborator: answer}} of the newest round that answered each item."""
    found: dict[int, dict[int, str]] = {}
    newest: dict[int, int] = {}
    for r in ws.query_in("SELECT round_id, item_id, collaborator, answer FROM responses "
                         "WHERE item_id IN ({}) AND answer IS NOT NULL ORDER BY round_id",
                         sorted(items)):
        if newest.get(r["item_id"]) != r["round_id"]:
            newest[r["item_id"]], found[r["item_id"]] = r["round_id"], {}
        found[r["item_id"]][r["collaborator"]] = r["answer"]
    return found


def collaborator_agreement(ratings: dict[int, dict[str, str]],
                           answers: dict[int, dict[int, str]]) -> list[dict]:
    """For each reviewer and each collaborator: on the items the reviewer labeled (rejects
    name no label and are left out) and the collaborator answered, the share where they
    agree and kappa, overall and per class of the reviewer's label."""
    out = []
    reviewers = sorted({r for by in ratings.values() for r in by})
    collaborators = sorted({c for by in answers.values() for c in by})
    for reviewer in reviewers:
        for collab in collaborators:
            items = [i for i, by in sorted(ratings.items()) if by.get(reviewer, REJECTED)
                     != REJECTED and collab in answers.get(i, {})]
            mine = [ratings[i][reviewer] for i in items]
            theirs = [answers[i][collab] for i in items]
            per_class = []
            for label in sorted(set(mine)):
                pairs = [(m, t) for m, t in zip(mine, theirs) if m == label]
                per_class.append({"class": label, "items": len(pairs),
                                  "agreement": sum(m == t for m, t in pairs) / len(pairs)})
            out.append({"reviewer": reviewer, "collaborator": collab, "items": len(items),
                        "agreement": (sum(m == t for m, t in zip(mine, theirs)) / len(items)
                                      if items else None),
                        "kappa": cohen_kappa(mine, theirs), "classes": per_class})
    return out


def pace(times: Sequence[float]) -> dict:
    """A reviewer's pace from their decision times: decisions, median seconds between two
    decisions and decisions per hour of active time (gaps over BREAK_SECONDS are breaks)."""
    t = np.sort(np.asarray(times, dtype=float))
    gaps = np.diff(t)
    active = gaps[gaps <= BREAK_SECONDS]
    return {"decisions": int(len(t)),
            "median_seconds": float(np.median(active)) if len(active) else None,
            "per_hour": float(len(active) / active.sum() * 3600) if active.sum() > 0 else None}


def reviewer_pace(ws: Workspace) -> dict[str, dict]:
    """{reviewer: pace} over every decision they made as a reviewer (undos included: they
    are work too; adjudications are not reviews)."""
    times: dict[str, list[float]] = defaultdict(list)
    for r in ws.query("SELECT reviewer, created_at FROM decisions WHERE adjudication = 0"):
        times[r["reviewer"]].append(r["created_at"])
    return {who: pace(ts) for who, ts in sorted(times.items())}


def reviewer_accuracy(ratings: dict[int, dict[str, str]],
                      reference: Mapping[int, str]) -> dict[str, dict]:
    """{reviewer: {items, correct, accuracy}} on the items with a reference label (a known
    answer); a reject is right when the reference differs from the pseudo-label, which is
    not known here, so rejects are left out."""
    out: dict[str, dict] = {}
    for item, label in reference.items():
        for reviewer, rating in ratings.get(item, {}).items():
            if rating == REJECTED:
                continue
            row = out.setdefault(reviewer, {"items": 0, "correct": 0})
            row["items"] += 1
            row["correct"] += rating == label
    for row in out.values():
        row["accuracy"] = row["correct"] / row["items"]
    return dict(sorted(out.items()))


def known_answers(ws: Workspace, items: set[int]) -> dict[int, str]:
    """{item id: its known answer} among `items`: a lead's adjudication (the label it
    accepts or gives; a reject names none), else the gold answer where the workspace holds
    one."""
    known = {r["id"]: r["answer"] for r in ws.query_in(
        "SELECT id, answer FROM items WHERE answer IS NOT NULL AND id IN ({})", sorted(items))}
    adjudicated = ws.query_in("SELECT item_id, action, label, round_id FROM adjudications "
                              "WHERE item_id IN ({})", sorted(items))
    pseudo = _pseudo_labels(ws, {r["item_id"] for r in adjudicated})
    for r in adjudicated:
        if r["action"] == "relabel":
            known[r["item_id"]] = r["label"]
        elif r["action"] == "accept":
            label = pseudo.get((r["round_id"], r["item_id"])) or pseudo.get((None, r["item_id"]))
            if label is not None:
                known[r["item_id"]] = label
    return known


def workspace_agreement(ws: Workspace, round_id: int | None = None) -> dict:
    """Everything the Agreement page and `semievol agreement` show: `reviewers`
    (reviewer_agreement), `collaborators` (collaborator_agreement), `pace` and `accuracy`
    per reviewer."""
    ratings = reviewer_ratings(ws, round_id)
    items = set(ratings)
    return {"reviewers": reviewer_agreement(ratings),
            "collaborators": collaborator_agreement(ratings, collaborator_answers(ws, items)),
            "pace": reviewer_pace(ws),
            "accuracy": reviewer_accuracy(ratings, known_answers(ws, items))}
