"""The audit queue: a stratified sample of the selected pseudo-labels for a reviewer, and
from the reviewer's verdicts an estimate of the selected set's error rate with a 95 %
interval.

Strata are entropy quantile bins (equal-count bins by rank), so confident and borderline
pseudo-labels are both checked; each bin's error rate is weighted by the bin's share of the
selected set. The two pure functions (`audit_sample`, `estimate_error`) take arrays; the
workspace functions (`audit_queue`, `audit_estimate`) read the stored selection and the
reviewers' decisions. No model is touched.

Verdicts come from the decisions table: `accept` means the pseudo-label was right, `reject`
means it was wrong, `relabel` means wrong (unless the new label equals the pseudo-label).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from semievol.curation.decisions import current_decisions
from semievol.curation.selection_state import (applied_selection, leakage_flagged, policy_mask,
                                               selection_rows)
from semievol.method.scoring import wilson_interval
from semievol.workspace.items import load_items
from semievol.workspace.store import Workspace

DEFAULT_BINS = 5
DEFAULT_PER_BIN = 4


# -- pure -------------------------------------------------------------------------------
def entropy_bins(entropies: np.ndarray, *, bins: int = DEFAULT_BINS) -> np.ndarray:
    """Bin index (n,) of every item: 0 (most confident) .. bins-1 by entropy rank, in
    near-equal-count quantile bins (ties broken by position, so every bin is filled even
    when many entropies are equal). A nan entropy (nothing to score) gets its own bin,
    index `bins`."""
    if bins < 1:
        raise ValueError(f"bins must be at least 1, got {bins}")
    e = np.asarray(entropies, dtype=float).ravel()
    out = np.full(e.size, bins, dtype=int)
    finite = np.flatnonzero(~np.isnan(e))
    order = finite[np.argsort(e[finite], kind="stable")]
    for b, chunk in enumerate(np.array_split(order, min(bins, max(order.size, 1)))):
        out[chunk] = b
    return out


def audit_order(entropies: np.ndarray, *, bins: int = DEFAULT_BINS, seed: int = 0
                ) -> list[np.ndarray]:
    """Per bin, its item indices in a seeded random order (a permutation per bin, so taking
    more per bin later keeps the items already drawn)."""
    bin_of = entropy_bins(entropies, bins=bins)
    rng = np.random.default_rng(seed)
    return [rng.permutation(np.flatnonzero(bin_of == b)) for b in range(bins + 1)]


def audit_sample(entropies: np.ndarray, *, bins: int = DEFAULT_BINS,
                 per_bin: int = DEFAULT_PER_BIN, seed: int = 0) -> np.ndarray:
    """Indices to audit: up to `per_bin` drawn at random (seeded) from each entropy quantile
    bin (and from the nan bin, if any), ordered by bin from most to least confident.
    Deterministic for a given seed."""
    if per_bin < 0:
        raise ValueError(f"per_bin must be 0 or more, got {per_bin}")
    picks = [members[:per_bin] for members in audit_order(entropies, bins=bins, seed=seed)]
    return np.concatenate(picks).astype(int) if picks else np.zeros(0, dtype=int)


def estimate_error(selected_bins: Sequence[int], audited_bins: Sequence[int],
                   audited_wrong: Sequence[bool], *, z: float = 1.96) -> dict:
    """Stratified estimate of the selected set's error rate from audited items.

    `selected_bins` (N,): the bin of every item in the selected set (gives the weights
    W_h = N_h / N); `audited_bins` (n,) and `audited_wrong` (n,): the bin and the verdict
    (True = pseudo-label wrong) of every reviewed item.

    Point estimate: sum_h W_h * e_h / n_h over the reviewed bins, renormalised by their
    total weight when some bin has no review yet (`complete` is then False).
    Interval: the weighted sum of per-bin Wilson score intervals, sum_h W_h * [L_h, U_h],
    with [0, 1] for an unreviewed bin. Per-bin Wilson keeps the interval honest at 0 errors
    and for a handful of reviews per bin (where a normal approximation collapses to a
    point), and summing the bounds is conservative: its half-width sum_h W_h * hw_h is at
    least that of the stratified normal interval, sqrt(sum_h W_h^2 * hw_h^2).
    """
    selected_bins = np.asarray(selected_bins, dtype=int).ravel()
    audited_bins = np.asarray(audited_bins, dtype=int).ravel()
    wrong = np.asarray(audited_wrong, dtype=bool).ravel()
    if audited_bins.size != wrong.size:
        raise ValueError(f"{audited_bins.size} audited bins but {wrong.size} verdicts")
    total = selected_bins.size
    out = {"selected": int(total), "reviewed": int(wrong.size), "wrong": int(wrong.sum()),
           "error_rate": None, "interval": [0.0, 1.0], "complete": False, "bins": [],
           "method": "stratified by entropy bin; weighted sum of per-bin Wilson intervals"}
    if total == 0:
        return out
    point = low = high = 0.0
    reviewed_weight = 0.0
    for b in np.unique(selected_bins):
        weight = float((selected_bins == b).sum() / total)
        in_bin = audited_bins == b
        n, k = int(in_bin.sum()), int(wrong[in_bin].sum())
        lo, hi = wilson_interval(k, n, z=z)
        out["bins"].append({"bin": int(b), "selected": int((selected_bins == b).sum()),
                            "weight": weight, "reviewed": n, "wrong": k,
                            "error_rate": k / n if n else None, "interval": [lo, hi]})
        low += weight * lo
        high += weight * hi
        if n:
            point += weight * k / n
            reviewed_weight += weight
    out["interval"] = [max(0.0, low), min(1.0, high)]
    out["complete"] = all(b["reviewed"] for b in out["bins"])
    if reviewed_weight:
        out["error_rate"] = point / reviewed_weight
    return out


# -- over the workspace -----------------------------------------------------------------
def audit_population(ws: Workspace, round_id: int) -> tuple[list[int], np.ndarray, list[str]]:
    """(item ids, entropies, pseudo-labels) of the pseudo-labels the round's applied policy
    keeps in the unlabeled pool (leakage-flagged items left out); empty before a selection
    is applied.

    The policy is recomputed from the applied selection config rather than read from
    `pseudo_labels.selected`, so that rejecting an audited item (which unselects it) does
    not move it out of the population and reshuffle the queue. Items a reviewer accepted
    outside the policy are not audited: a person already checked them.
    """
    config = applied_selection(ws, round_id)
    if config is None:
        return [], np.zeros(0), []
    # Same pool as selection_state.compute_selection: the percentile spans unlabeled +
    # calibration items.
    rows = selection_rows(ws, round_id, config.score)
    kept = policy_mask(rows, config)
    flagged = leakage_flagged(ws, round_id)
    keep = [k for k, r in enumerate(rows) if kept[k] and r["split"] == "unlabeled"
            and r["item_id"] not in flagged]
    return ([rows[k]["item_id"] for k in keep], np.array([rows[k]["score"] for k in keep]),
            [rows[k]["label"] for k in keep])


def audit_queue(ws: Workspace, round_id: int, n_per_bin: int = DEFAULT_PER_BIN, *,
                bins: int = DEFAULT_BINS, seed: int = 0) -> list[int]:
    """Item ids for a reviewer to check: `n_per_bin` from each entropy bin of the round's
    policy-selected pseudo-labels (see `audit_population`), most confident bin first."""
    ids, scores, _ = audit_population(ws, round_id)
    return [ids[k] for k in audit_sample(scores, bins=bins, per_bin=n_per_bin, seed=seed)]


def audit_rows(ws: Workspace, round_id: int, n_per_bin: int = DEFAULT_PER_BIN, *,
               bins: int = DEFAULT_BINS, seed: int = 0) -> list[dict]:
    """The audit queue as plain rows: item_id, id (external), bin (1 = most confident),
    score, pseudo_label, question, decision (the action in force, or None)."""
    ids, scores, labels = audit_population(ws, round_id)
    bin_of = entropy_bins(scores, bins=bins)
    position = {item_id: k for k, item_id in enumerate(ids)}
    queue = [ids[k] for k in audit_sample(scores, bins=bins, per_bin=n_per_bin, seed=seed)]
    decided = current_decisions(ws)
    external = {r[0]: r[1] for r in ws.query_in(
        "SELECT id, external_id FROM items WHERE id IN ({})", queue)}
    questions = {it.id: it.example.question for it in load_items(ws, queue)}
    return [{"item_id": i, "id": external[i], "bin": int(bin_of[position[i]]) + 1,
             "score": float(scores[position[i]]), "pseudo_label": labels[position[i]],
             "question": questions[i],
             "decision": decided[i]["action"] if i in decided else None} for i in queue]


def verdicts(ws: Workspace, round_id: int, item_ids: Sequence[int],
             labels: Sequence[str]) -> dict[int, bool]:
    """{item_id: wrong} for the items whose decision now in force was made in this round (or
    carries no round): accept -> False, reject -> True, relabel -> label differs."""
    decided = current_decisions(ws)
    out = {}
    for item_id, label in zip(item_ids, labels):
        d = decided.get(int(item_id))
        if d is None or d["round_id"] not in (None, round_id):
            continue
        out[int(item_id)] = d["action"] == "reject" or (
            d["action"] == "relabel" and d["label"] != label)
    return out


def audit_estimate(ws: Workspace, round_id: int, n_per_bin: int = DEFAULT_PER_BIN, *,
                   bins: int = DEFAULT_BINS, seed: int = 0) -> dict:
    """The selected set's estimated error rate from the decisions on the audit queue's items
    (`estimate_error`), plus `queue` (its length), `precision` (1 - error) with its
    `precision_interval` (the error interval turned around) and `expected_wrong` (error
    rate x policy-selected items that no reviewer has decided). Decisions on items outside
    the queue are not used: reviewers pick items for a reason, so they are no random
    sample."""
    ids, scores, labels = audit_population(ws, round_id)
    bin_of = entropy_bins(scores, bins=bins)
    queue = audit_sample(scores, bins=bins, per_bin=n_per_bin, seed=seed)
    found = verdicts(ws, round_id, [ids[k] for k in queue], [labels[k] for k in queue])
    reviewed = [k for k in queue if ids[k] in found]
    result = estimate_error(bin_of, bin_of[reviewed], [found[ids[k]] for k in reviewed])
    result["queue"] = int(queue.size)
    rate = result["error_rate"]
    result["precision"] = None if rate is None else 1.0 - rate
    low, high = result["interval"]
    result["precision_interval"] = [1.0 - high, 1.0 - low]
    undecided = len(ids) - len(verdicts(ws, round_id, ids, labels))
    result["expected_wrong"] = None if rate is None else rate * undecided
    return result
