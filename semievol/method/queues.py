"""Review queues as pure functions: which pseudo-labeled item a reviewer should see first,
from scores and embeddings a round has stored (numpy in, an order out; no model call).

Every function returns positions into its inputs (0..n-1), best first; ties go to the lower
position, so an order is reproducible. An item with no scores (a failed or open-answer
scoring: nan, or no distribution) counts as the least certain and comes first in the
uncertainty queues: nothing says it is safe.

- `margin_order`: the smallest gap between the two most likely options first ("breaking
  ties"; Schröder et al., Findings ACL 2022, found it the strongest uncertainty queue for
  text classification).
- `least_confident_order`: the highest score first (the eq. 6 entropy, or 1 - probability).
- `entropy_order`: the highest entropy of the option distribution first.
- `disagreement_order`: the collaborators' answers most split first (vote entropy), ties by
  margin.
- `typical_order`: vote-k (Su et al., ICLR 2023): on the k-nearest-neighbour graph of the
  embeddings, greedily the item that most unlabeled items have among their neighbours,
  each such item counted less the more of its neighbours are labeled or chosen already:
  typical items, spread over the pool. A cold start's queue (Hacohen et al., ICML 2022).
- `hybrid_order`: the first `switch` items of the typical queue, then the rest by margin.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from semievol.method.scoring import entropy

VOTE_K_NEIGHBOURS = 10
VOTE_K_RHO = 10.0
"""vote-k's graph degree and discount (the paper's k and rho)."""
HYBRID_SWITCH = 10
"""Items the hybrid queue takes by typicality before it turns to margin: at a budget of about
ten decisions typical items beat uncertain ones; past it, uncertainty pays."""


def _by_score_descending(scores: np.ndarray) -> list[int]:
    """Positions by score, highest first, nan first of all; ties by position."""
    s = np.asarray(scores, dtype=float).ravel()
    key = np.where(np.isnan(s), np.inf, s)
    return [int(i) for i in np.lexsort((np.arange(s.size), -key))]


def _normalised(d: Sequence[float] | None) -> np.ndarray | None:
    """A stored distribution summed to 1, or None when there is none to read (missing,
    empty, not finite, or all zero): such an item has no score."""
    if d is None or len(d) == 0:
        return None
    p = np.asarray(d, dtype=float)
    if not np.all(np.isfinite(p)) or p.sum() <= 0:
        return None
    return p / p.sum()


def margins(distributions: Sequence[Sequence[float] | None]) -> np.ndarray:
    """Top-1 minus top-2 probability of each distribution (renormalised); nan for none, 1
    for a single option (nothing to choose between)."""
    out = np.full(len(distributions), np.nan)
    for i, d in enumerate(distributions):
        p = _normalised(d)
        if p is not None:
            p = np.sort(p)[::-1]
            out[i] = 1.0 if p.size == 1 else p[0] - p[1]
    return out


def entropies(distributions: Sequence[Sequence[float] | None]) -> np.ndarray:
    """Shannon entropy (nats, scoring.entropy) of each distribution (renormalised); nan for
    none."""
    out = np.full(len(distributions), np.nan)
    for i, d in enumerate(distributions):
        p = _normalised(d)
        if p is not None:
            out[i] = float(entropy(p))
    return out


def margin_order(distributions: Sequence[Sequence[float] | None]) -> list[int]:
    return _by_score_descending(-margins(distributions))


def least_confident_order(scores: Sequence[float | None]) -> list[int]:
    return _by_score_descending(np.asarray([np.nan if s is None else s for s in scores],
                                           dtype=float))


def entropy_order(distributions: Sequence[Sequence[float] | None]) -> list[int]:
    return _by_score_descending(entropies(distributions))


def vote_entropy(answers: Sequence[Sequence[str | None]]) -> np.ndarray:
    """Entropy of each item's collaborator answers (no answer is a vote of its own: a
    collaborator that could not answer disagrees with the rest); nan with no votes."""
    out = np.full(len(answers), np.nan)
    for i, votes in enumerate(answers):
        if not votes:
            continue
        counts: dict = {}
        for v in votes:
            counts[v] = counts.get(v, 0) + 1
        p = np.asarray(list(counts.values()), dtype=float) / len(votes)
        out[i] = float(-(p * np.log(p)).sum())
    return out


def disagreement_order(answers: Sequence[Sequence[str | None]],
                       distributions: Sequence[Sequence[float] | None]) -> list[int]:
    split = vote_entropy(answers)
    split = np.where(np.isnan(split), np.inf, split)
    margin = margins(distributions)
    margin = np.where(np.isnan(margin), -np.inf, margin)
    return [int(i) for i in np.lexsort((np.arange(len(answers)), margin, -split))]


def knn_graph(vectors: np.ndarray, k: int) -> np.ndarray:
    """(n, min(k, n-1)) positions of each row's nearest other rows by cosine similarity."""
    v = np.asarray(vectors, dtype=np.float64)
    n = v.shape[0]
    k = min(k, n - 1)
    if n == 0 or k <= 0:
        return np.zeros((n, 0), dtype=int)
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    v = v / np.where(norms == 0, 1.0, norms)
    sims = v @ v.T
    np.fill_diagonal(sims, -np.inf)
    part = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    order = np.take_along_axis(sims, part, axis=1).argsort(axis=1)[:, ::-1]
    return np.take_along_axis(part, order, axis=1)


def typical_order(vectors: np.ndarray, *, labeled: np.ndarray | None = None,
                  k: int = VOTE_K_NEIGHBOURS, rho: float = VOTE_K_RHO) -> list[int]:
    """vote-k over the pool's embeddings (rows of `vectors`), the labeled items' embeddings
    counted as chosen from the start (they cover their region already). Returns positions
    of the pool's rows."""
    pool = np.asarray(vectors, dtype=np.float64)
    n = pool.shape[0]
    if n == 0:
        return []
    extra = np.zeros((0, pool.shape[1])) if labeled is None or len(labeled) == 0 \
        else np.asarray(labeled, dtype=np.float64)
    allv = np.vstack([pool, extra])
    graph = knn_graph(allv, k)  # graph[v] = the items v points to
    total = allv.shape[0]
    pointed_by: list[list[int]] = [[] for _ in range(total)]
    for v in range(total):
        for u in graph[v]:
            pointed_by[u].append(v)
    chosen = np.zeros(total, dtype=bool)
    chosen[n:] = True
    covered = np.zeros(total)  # how many chosen items each v points to
    for v in range(total):
        covered[v] = chosen[graph[v]].sum() if graph.shape[1] else 0
    weight = rho ** -covered  # s(v)

    def score(u: int) -> float:
        return float(sum(weight[v] for v in pointed_by[u] if not chosen[v]))

    scores = np.array([score(u) for u in range(n)])
    order = []
    for _ in range(n):
        masked = np.where(chosen[:n], -np.inf, scores)
        best = int(np.argmax(masked))  # the first of equal scores: ties by position
        order.append(best)
        chosen[best] = True
        # best no longer counts for the items it points to; the items pointing to best
        # are now covered once more, which lowers what they add to their other targets.
        for u in graph[best]:
            if u < n and not chosen[u]:
                scores[u] -= weight[best]
        for v in pointed_by[best]:
            old = weight[v]
            covered[v] += 1
            weight[v] = rho ** -covered[v]
            if chosen[v]:
                continue
            for u in graph[v]:
                if u < n and not chosen[u]:
                    scores[u] += weight[v] - old
    return order


def hybrid_order(vectors: np.ndarray, distributions: Sequence[Sequence[float] | None], *,
                 labeled: np.ndarray | None = None, switch: int = HYBRID_SWITCH) -> list[int]:
    first = typical_order(vectors, labeled=labeled)[:switch]
    taken = set(first)
    return first + [i for i in margin_order(distributions) if i not in taken]
