"""Adaptive selection (paper step 5): which pseudo-labels a policy keeps.

Pure functions over arrays (no database, no model). Human decisions override the policy's
mask afterwards (`decisions.apply_decisions`).

Policies (entropy in nats, lower = more confident):
- `percentile`: keep entropy <= the theta-th percentile over all finite entropies
  (paper v2: theta = 50 over all pseudo-responses).
- `per_class`: the same percentile within each pseudo-label's group (keeps class balance).
- `agreement_only`: keep exactly the items where every collaborator agreed.
- `absolute`: keep entropy <= a fixed threshold (for one tuned on calibration evidence).
- `teach`: keep what the student can still learn. The entropy policies keep what the warm-up
  model is surest of, which is what it already answers (99.3 % of fpb's selection): nothing
  to learn. `teach` keeps the items where the reference (every collaborator but the student,
  so the demonstration-augmented ones) agrees on the pseudo-label and the student finds it
  less likely than the reference does: a positive reducible loss (RHO-LOSS, Mindermann et
  al., ICML 2022: learnable, since the reference gets it; not yet learnt, since the student
  does not), the largest theta percent of them.
A nan entropy (nothing to score) is never kept, except by `agreement_only`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from semievol.config import SELECTION_POLICIES


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
    class_floor: float = 0.0,
    reducible: np.ndarray | None = None,
    reference_agrees: np.ndarray | None = None,
) -> np.ndarray:
    """Boolean mask (n,) of the pseudo-labels that `policy` keeps.

    `entropy` (n,) floats, `labels` (n,) pseudo-labels (used by `per_class` and the floor),
    `agreed` (n,) whether all collaborators agreed. `theta` is a percentile in [0, 100];
    `threshold` is required by `absolute` only. `class_floor` (0..1): whatever the policy
    (but agreement_only), each class keeps at least this share of its items, its most
    confident ones (at least one), so no class present is dropped to zero.
    `teach` needs `reducible` (n,) (`reducible_loss`) and `reference_agrees` (n,) bools; its
    floor adds the items the reference agrees on, largest reducible loss first.
    """
    if policy == "teach":
        if reducible is None or reference_agrees is None:
            raise ValueError("the 'teach' policy needs reducible and reference_agrees")
        rl = np.asarray(reducible, dtype=float).ravel()
        agrees = np.asarray(reference_agrees, dtype=bool).ravel()
        if not (rl.size == agrees.size == len(labels)):
            raise ValueError(f"reducible ({rl.size}), reference_agrees ({agrees.size}) and "
                             f"labels ({len(labels)}) must have the same length")
        keep = teach_mask(rl, agrees, theta=theta)
        # The floor's "most confident first" becomes "most teachable first".
        rank = np.where(agrees, -rl, np.nan)
    else:
        keep = _policy_mask(entropy, labels, agreed, policy=policy, theta=theta,
                            threshold=threshold)
        rank = entropy
    if class_floor and policy != "agreement_only":
        keep = with_class_floor(keep, rank, labels, class_floor)
    return keep


def reducible_loss(student: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per item, the student's loss on the pseudo-label minus the reference's: -log s - (-log
    r) for their probabilities s and r of it. Positive where the reference is surer than the
    student; nan where either probability is missing, and +inf for a student that gives it
    no chance at all."""
    s = np.asarray(student, dtype=float).ravel()
    r = np.asarray(reference, dtype=float).ravel()
    if s.size != r.size:
        raise ValueError(f"student ({s.size}) and reference ({r.size}) differ in length")
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.log(r) - np.log(s)
    # log 0 - log 0 (neither gives it a chance) says nothing: nan, never kept.
    return np.where(np.isfinite(s) & np.isfinite(r) & (r > 0), out, np.nan)


def teach_mask(reducible: np.ndarray, reference_agrees: np.ndarray, *,
               theta: float) -> np.ndarray:
    """The teachable items (the reference agrees, reducible loss > 0), and of those the theta
    percent with the largest reducible loss (ties at the bound all kept)."""
    _check_theta(theta)
    rl = np.asarray(reducible, dtype=float).ravel()
    with np.errstate(invalid="ignore"):
        teachable = np.asarray(reference_agrees, dtype=bool).ravel() & ~np.isnan(rl) & (rl > 0)
    if not teachable.any() or theta == 0:
        return np.zeros(rl.size, dtype=bool)
    values = rl[teachable]
    finite = values[np.isfinite(values)]
    # +inf (the student gives the label no chance) is the most teachable of all; a bound
    # taken over the finite values keeps them whenever anything is kept.
    bound = float(np.percentile(finite, 100.0 - theta)) if finite.size else np.inf
    return teachable & (rl >= bound)


def with_class_floor(keep: np.ndarray, entropy: np.ndarray, labels: Sequence[str],
                     floor: float) -> np.ndarray:
    """`keep` plus, per class, its most confident items up to ceil(floor x class size)
    (items without an entropy are never added)."""
    import math

    if not 0 <= floor <= 1:
        raise ValueError(f"class_floor is a share within [0, 1], got {floor}")
    keep = np.asarray(keep, dtype=bool).copy()
    e = np.asarray(entropy, dtype=float).ravel()
    groups = np.asarray(labels, dtype=object)
    for label in dict.fromkeys(labels):
        members = np.flatnonzero((groups == label) & np.isfinite(e))
        need = math.ceil(floor * members.size) - int(keep[members].sum())
        if need > 0:
            candidates = members[~keep[members]]
            keep[candidates[np.argsort(e[candidates], kind="stable")[:need]]] = True
    return keep


def _policy_mask(entropy, labels, agreed, *, policy, theta, threshold) -> np.ndarray:
    if policy not in SELECTION_POLICIES:
        raise ValueError(f"unknown selection policy {policy!r}; choose one of "
                         f"{', '.join(SELECTION_POLICIES)}")
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
