"""Adaptive selection (paper step 5) and the human decisions that override it.

Pure functions over arrays: which pseudo-labels a policy keeps, what each reviewer's
decision history currently says, and the final (selected, label) pairs that training uses.

Policies (entropy in nats, lower = more confident):
- `percentile`: keep entropy <= the theta-th percentile over all finite entropies
  (paper v2: theta = 50 over all pseudo-responses).
- `per_class`: the same percentile within each pseudo-label's group (keeps class balance).
- `agreement_only`: keep exactly the items where every collaborator agreed.
- `absolute`: keep entropy <= a fixed threshold (for one tuned on calibration evidence).
A nan entropy (nothing to score) is never kept, except by `agreement_only`.
"""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import numpy as np

POLICIES = ("percentile", "per_class", "agreement_only", "absolute")
ACTIONS = ("accept", "reject", "relabel", "clear")
SOURCES = ("policy", "accepted", "rejected", "relabeled")


def threshold_for(entropy: np.ndarray, *, theta: float) -> float:
    """The theta-th percentile of the finite entropies (nan if there are none)."""
    _check_theta(theta)
    e = np.asarray(entropy, dtype=float).ravel()
    finite = e[np.isfinite(e)]
    return float(np.percentile(finite, theta)) if finite.size else float("nan")


def select(
    entropy: np.ndarray,
    labels: Sequence[str],
    agreed: np.ndarray,
    *,
    policy: str = "percentile",
    theta: float = 50.0,
    threshold: float | None = None,
) -> np.ndarray:
    """Boolean mask (n,) of the pseudo-labels that `policy` keeps.

    `entropy` (n,) floats, `labels` (n,) pseudo-labels (used by `per_class`), `agreed` (n,)
    whether all collaborators agreed. `theta` is a percentile in [0, 100]; `threshold` is
    required by `absolute` only.
    """
    if policy not in POLICIES:
        raise ValueError(f"unknown selection policy {policy!r}; choose one of {', '.join(POLICIES)}")
    e = np.asarray(entropy, dtype=float).ravel()
    agreed = np.asarray(agreed, dtype=bool).ravel()
    if not (len(labels) == agreed.size == e.size):
        raise ValueError(
            f"entropy ({e.size}), labels ({len(labels)}) and agreed ({agreed.size}) "
            "must have the same length"
        )
    if policy == "agreement_only":
        return agreed.copy()
    if policy == "absolute":
        if threshold is None:
            raise ValueError("the 'absolute' policy needs a threshold")
        return _at_or_below(e, float(threshold))
    if policy == "percentile":
        return _at_or_below(e, threshold_for(e, theta=theta))

    # per_class: one percentile per pseudo-label group
    _check_theta(theta)
    keep = np.zeros(e.size, dtype=bool)
    groups = np.asarray(labels, dtype=object)
    for label in dict.fromkeys(labels):  # first-appearance order; result does not depend on it
        in_group = groups == label
        keep[in_group] = _at_or_below(e[in_group], threshold_for(e[in_group], theta=theta))
    return keep


def current_decisions(history: Iterable[Mapping]) -> dict[int, dict]:
    """The decision now in force per item: the last row of its history, in the order given
    (oldest first); a `clear` row removes the item's decision.

    Rows carry item_id, action (accept | reject | relabel | clear), label, reviewer,
    created_at; the returned values are plain dict copies of the deciding rows.
    """
    current: dict[int, dict] = {}
    for row in history:
        action = row["action"]
        if action not in ACTIONS:
            raise ValueError(f"unknown decision action {action!r}; expected one of {ACTIONS}")
        item_id = int(row["item_id"])
        if action == "clear":
            current.pop(item_id, None)
        else:
            current[item_id] = dict(row)
    return current


def apply_decisions(
    item_ids: Sequence[int],
    selected: np.ndarray,
    labels: Sequence[str],
    decisions: Mapping[int, Mapping],
) -> tuple[np.ndarray, list[str], list[str]]:
    """Let human decisions override the policy's mask.

    accept -> kept with its pseudo-label; reject -> dropped; relabel -> kept with the
    decision's label. Returns (final_selected, final_labels, source) where source[i] is
    one of "policy", "accepted", "rejected", "relabeled". Decisions for items not in
    `item_ids` are ignored.
    """
    final = np.asarray(selected, dtype=bool).ravel().copy()
    if not (len(item_ids) == final.size == len(labels)):
        raise ValueError(
            f"item_ids ({len(item_ids)}), selected ({final.size}) and labels ({len(labels)}) "
            "must have the same length"
        )
    final_labels = list(labels)
    source = ["policy"] * final.size
    for i, item_id in enumerate(item_ids):
        decision = decisions.get(int(item_id))
        if decision is None:
            continue
        action = decision["action"]
        if action == "accept":
            final[i], source[i] = True, "accepted"
        elif action == "reject":
            final[i], source[i] = False, "rejected"
        elif action == "relabel":
            new_label = decision.get("label")
            if new_label is None or new_label == "":
                raise ValueError(f"relabel decision for item {item_id} has no label")
            final[i], final_labels[i], source[i] = True, new_label, "relabeled"
        else:
            raise ValueError(f"unknown decision action {action!r} for item {item_id}")
    return final, final_labels, source


def class_counts(labels: Sequence[str], mask: np.ndarray) -> dict[str, int]:
    """How many items of each label `mask` keeps; every label in `labels` appears (0 if
    none kept), in first-appearance order."""
    m = np.asarray(mask, dtype=bool).ravel()
    if m.size != len(labels):
        raise ValueError(f"{len(labels)} labels but a mask of {m.size}")
    counts = dict.fromkeys(labels, 0)
    for label, keep in zip(labels, m):
        counts[label] += int(keep)
    return counts


def _at_or_below(e: np.ndarray, threshold: float) -> np.ndarray:
    """e <= threshold, with nan (in e or the threshold) never kept."""
    with np.errstate(invalid="ignore"):
        return ~np.isnan(e) & (e <= threshold)


def _check_theta(theta: float) -> None:
    if not 0 <= theta <= 100:
        raise ValueError(f"theta is a percentile and must be within [0, 100], got {theta}")
