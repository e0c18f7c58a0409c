"""Scoring: entropies, collaborator agreement, metrics and calibration, as pure numpy.

Nothing here touches a model, a database or the UI: every function takes arrays (or plain
sequences) and returns arrays, tuples or plain dicts, so it is testable in milliseconds.

Conventions: probabilities live on the last axis; entropies are in nats (natural log);
a lower entropy means a more confident pseudo-response (paper eq. 6).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

NONE_KEY = "(none)"  # predicted_distribution key for items with no (parseable) prediction


def softmax(logits: np.ndarray, *, temperature: float = 1.0, axis: int = -1) -> np.ndarray:
    """Softmax of `logits / temperature` along `axis`, stable for large and -inf logits.

    Temperature 0 is the limit: a one-hot vector on the argmax (first one on ties).
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    x = np.asarray(logits, dtype=float)
    if temperature == 0:
        hot = np.argmax(x, axis=axis)
        out = np.zeros_like(x)
        np.put_along_axis(out, np.expand_dims(hot, axis), 1.0, axis=axis)
        return out
    x = x / temperature
    x = x - np.max(x, axis=axis, keepdims=True)  # largest term becomes exp(0) = 1
    e = np.exp(x)
    return e / np.sum(e, axis=axis, keepdims=True)


def entropy(probs: np.ndarray, *, axis: int = -1) -> np.ndarray:
    """Shannon entropy in nats along `axis`, with 0 * log 0 = 0.

    A 1-D distribution gives a 0-d float array; (n, k) gives shape (n,).
    """
    p = np.asarray(probs, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    return np.asarray(-np.sum(terms, axis=axis))


def mean_nll(token_logprobs: Sequence[Sequence[float]]) -> np.ndarray:
    """Mean negative log-likelihood per sequence, shape (n,): the entropy of a
    pseudo-response in paper eq. 6. An empty sequence has no score: nan."""
    out = np.full(len(token_logprobs), np.nan)
    for i, seq in enumerate(token_logprobs):
        lp = np.asarray(seq, dtype=float)
        if lp.size:
            out[i] = -lp.mean()
    return out


def agreement(answers: Sequence[str | None], same=None) -> tuple[str | None, float, bool]:
    """(majority answer, share of all collaborators that gave it, unanimous).

    `same(a, b)` says whether two answers agree (the task's checker: 27 and 27.0, "Paris"
    and "paris."); by default they must be equal. A group is named by its first answer.
    A None answer (nothing parseable) counts as a disagreeing vote: it is in the
    denominator and never unanimous. Ties go to the answer that appears first.
    """
    counts: dict[str, int] = {}  # insertion order = first appearance, used for ties
    for a in answers:
        if a is None:
            continue
        group = a if same is None else next((g for g in counts if same(g, a)), a)
        counts[group] = counts.get(group, 0) + 1
    if not counts:
        return None, 0.0, False
    best = max(counts, key=lambda a: counts[a])  # max keeps the first of equal counts
    n = len(answers)
    return best, counts[best] / n, counts[best] == n


def sample_index(probs: np.ndarray, *, temperature: float, rng: np.random.Generator) -> int:
    """Index of the chosen option: the argmax at temperature 0, else a draw from
    softmax(log(probs) / temperature) (temperature 1 draws from `probs` itself)."""
    p = np.asarray(probs, dtype=float).ravel()
    if p.size == 0:
        raise ValueError("sample_index needs at least one option")
    if temperature == 0:
        return int(np.argmax(p))
    with np.errstate(divide="ignore"):
        q = softmax(np.log(p), temperature=temperature)
    return int(rng.choice(p.size, p=q))


def classification_report(
    gold: Sequence[str], predicted: Sequence[str | None], labels: Sequence[str]
) -> dict:
    """Accuracy, per-class precision/recall/F1, confusion matrix and baselines.

    `confusion[i][j]` counts items with gold `labels[i]` predicted as `labels[j]`; a None or
    unknown prediction is wrong and lands in no column (so a row may sum below its support).
    Precision with no predictions, recall with no support, and their F1 are 0.0; macro-F1
    averages over every label in `labels`. Every gold label must be in `labels`.
    """
    if len(gold) != len(predicted):
        raise ValueError(f"{len(gold)} gold labels but {len(predicted)} predictions")
    index = {lab: i for i, lab in enumerate(labels)}
    unknown_gold = sorted({g for g in gold if g not in index})
    if unknown_gold:
        raise ValueError(f"gold labels not in labels {list(labels)}: {unknown_gold}")

    k, n = len(labels), len(gold)
    confusion = np.zeros((k, k), dtype=int)
    correct = 0
    distribution: dict[str, int] = {lab: 0 for lab in labels}
    for g, p in zip(gold, predicted):
        key = NONE_KEY if p is None else p
        distribution[key] = distribution.get(key, 0) + 1
        correct += int(p == g)
        if p in index:
            confusion[index[g], index[p]] += 1
    if NONE_KEY in distribution:  # keep "(none)" last
        distribution[NONE_KEY] = distribution.pop(NONE_KEY)

    support = np.array([sum(1 for g in gold if g == lab) for lab in labels], dtype=int)
    per_class = {}
    for i, lab in enumerate(labels):
        tp = int(confusion[i, i])
        n_pred = distribution[lab]
        precision = tp / n_pred if n_pred else 0.0
        recall = tp / support[i] if support[i] else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[lab] = {
            "precision": precision,
            "recall": float(recall),
            "f1": f1,
            "support": int(support[i]),
            "predicted": int(n_pred),
        }

    majority = int(np.argmax(support)) if n and k else None
    return {
        "accuracy": correct / n if n else 0.0,
        "macro_f1": float(np.mean([c["f1"] for c in per_class.values()])) if k else 0.0,
        "per_class": per_class,
        "confusion": confusion.tolist(),
        "predicted_distribution": distribution,
        "majority_baseline": float(support[majority] / n) if majority is not None else 0.0,
        "majority_label": labels[majority] if majority is not None else None,
        "n": n,
    }


def precision_coverage(scores: np.ndarray, correct: np.ndarray) -> dict:
    """Precision of the kept items against coverage, for every distinct threshold.

    Keeping the items with score <= t (lower = more confident): coverage is their share of
    all items, precision the share of them that is correct, count how many. Thresholds
    are the distinct finite scores, ascending; a nan score is never kept but still counts
    in the coverage denominator. Returns plain lists (JSON-ready).
    """
    s = np.asarray(scores, dtype=float).ravel()
    c = np.asarray(correct, dtype=bool).ravel()
    if s.shape != c.shape:
        raise ValueError(f"{s.size} scores but {c.size} correctness flags")
    out: dict[str, list] = {"threshold": [], "coverage": [], "precision": [], "count": []}
    finite = np.isfinite(s)
    if not finite.any():
        return out
    order = np.argsort(s[finite], kind="stable")
    s_sorted, c_sorted = s[finite][order], c[finite][order]
    hits = np.cumsum(c_sorted)
    # the last position of each run of equal scores: everything up to it is kept
    last = np.r_[np.nonzero(np.diff(s_sorted))[0], s_sorted.size - 1]
    counts = last + 1
    out["threshold"] = [float(t) for t in s_sorted[last]]
    out["coverage"] = [float(m / s.size) for m in counts]
    out["precision"] = [float(h / m) for h, m in zip(hits[last], counts)]
    out["count"] = [int(m) for m in counts]
    return out


def wilson_interval(successes: int, n: int, *, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion; (0.0, 1.0) when n is 0."""
    if n <= 0:
        return 0.0, 1.0
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be within 0..{n}, got {successes}")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)
