"""The focus review queue: one item at a time, in an order that spends a reviewer's minutes
where they matter, with a counter of what is reviewed.

In team mode a reviewer sees their own decisions only (`reviewer_decided`,
`reviewer_decision`: overlap review is blind) and the team's progress (`team_progress`).

Orders: `audit` (the audit queue's stratified sample first, so its error estimate fills
in, then the rest least confident first), `least_confident` (highest eq. 6 entropy first),
`reflected` (items the collaborators disagreed on first), `class` (grouped by pseudo-label,
least confident first within each), and the queues of semievol.method.queues over the
round's stored collaborator distributions, answers and the items' stored embeddings:
`margin`, `entropy`, `disagreement`, `typical` (vote-k) and `hybrid` (typical, then margin).
Pure reading: no model runs.
"""

from __future__ import annotations

import json
import math
from typing import Sequence

import numpy as np

from semievol.curation.audit import audit_queue
from semievol.curation.decisions import current_decisions
from semievol.errors import SemiEvolError
from semievol.method import queues
from semievol.method.retrieval import stored_embeddings
from semievol.team.handout import overlap_share, reviews_needed
from semievol.workspace.store import Workspace

FOCUS_ORDERS = {"audit": "audit queue first", "least_confident": "least confident first",
                "reflected": "reflected first", "class": "by class",
                "margin": "smallest margin first", "entropy": "highest entropy first",
                "disagreement": "most split votes first",
                "typical": "typical and diverse first", "hybrid": "typical, then margin"}
"""Queue orders and what a reviewer reads for each."""
DEFAULT_ORDER = "margin"
"""The queue focus mode opens on, chosen by the quality bench: on the one seed that compares
the queues at 25 decisions (fpb-64, Zen 3 EPYC, bench/results/amd-epyc-25-1/fpb_64_queues_s0)
smallest margin scored 91.2 %, typical then margin 90.3 %, typical 88.1 %, least confident
85.7 %, SFT 90.5 %. Over three seeds (Zen 5, amd-epyc-26-2/fpb_64_margin) its 25 decisions
gain +1.3 ± 2.4 points over the unattended round: training noise is as large as the gain.
The audit sample is not a queue: it estimates the selection's error, one click away."""
EMBEDDING_ORDERS = ("typical", "hybrid")
SCORED_ORDERS = ("margin", "entropy", "disagreement", *EMBEDDING_ORDERS)
"""The queues computed from the collaborators' stored scores and embeddings (cached)."""


def _pool(ws: Workspace, round_id: int) -> list[dict]:
    return [dict(r) for r in ws.query(
        "SELECT p.item_id, p.label, p.path, p.entropy FROM pseudo_labels p "
        "JOIN items i ON i.id = p.item_id WHERE p.round_id=? AND i.split='unlabeled' "
        "ORDER BY p.item_id", (round_id,))]


def focus_queue(ws: Workspace, round_id: int, order: str = DEFAULT_ORDER) -> list[int]:
    """The round's unlabeled pseudo-labeled items, in review order."""
    if order not in FOCUS_ORDERS:
        raise SemiEvolError(f"Unknown queue order {order!r}: choose one of "
                            f"{', '.join(FOCUS_ORDERS)}.")
    if order in SCORED_ORDERS:  # the default's path: one cheap query on every key press
        key = (str(ws.path), round_id, order, _pool_version(ws, round_id))
        if key not in _SCORED_QUEUES:
            if len(_SCORED_QUEUES) >= 8:
                _SCORED_QUEUES.pop(next(iter(_SCORED_QUEUES)))
            ids = [r["item_id"] for r in _pool(ws, round_id)]
            _SCORED_QUEUES[key] = _scored_queue(ws, round_id, order, ids)
        return list(_SCORED_QUEUES[key])
    rows = _pool(ws, round_id)

    def doubt(r):  # higher = less confident; an item without an entropy comes first
        return math.inf if r["entropy"] is None else r["entropy"]

    least_confident = sorted(rows, key=lambda r: (-doubt(r), r["item_id"]))
    if order == "least_confident":
        return [r["item_id"] for r in least_confident]
    if order == "reflected":
        return [r["item_id"] for r in sorted(
            least_confident, key=lambda r: r["path"] != "reflected")]  # stable: keeps doubt
    if order == "class":
        task = ws.task
        rank = {label: k for k, label in enumerate(task.labels or [])} if task else {}
        return [r["item_id"] for r in sorted(
            least_confident, key=lambda r: (rank.get(r["label"], len(rank)), r["label"]))]

    sampled = audit_queue(ws, round_id)  # the audit order: its sample, then the rest
    seen = set(sampled)
    return sampled + [r["item_id"] for r in least_confident if r["item_id"] not in seen]


_SCORED_QUEUES: dict[tuple, tuple] = {}
"""The queues over the collaborators' stored scores (margin, entropy, disagreement) and
embeddings (typical, hybrid), computed once per round and pool: reading every response of a
large pool, or a greedy pass over its neighbour graph, is not for every key press."""


def _scored_queue(ws: Workspace, round_id: int, order: str, ids: list[int]) -> tuple:
    distributions, answers = collaborator_votes(ws, round_id, ids)
    if order == "margin":
        return tuple(ids[i] for i in queues.margin_order(distributions))
    if order == "entropy":
        return tuple(ids[i] for i in queues.entropy_order(distributions))
    if order == "disagreement":
        return tuple(ids[i] for i in queues.disagreement_order(answers, distributions))
    return _embedding_queue(ws, order, ids, distributions)


def collaborator_votes(ws: Workspace, round_id: int, ids: list[int]
                       ) -> tuple[list[list[float] | None], list[list[str | None]]]:
    """For each item (in `ids` order): the collaborators' mean option distribution (None
    when none stored one) and their answers."""
    probs: dict[int, list] = {}
    answers: dict[int, list] = {}
    for r in ws.query("SELECT item_id, answer, option_probs FROM responses WHERE round_id=? "
                      "ORDER BY item_id, collaborator", (round_id,)):
        answers.setdefault(r["item_id"], []).append(r["answer"])
        if r["option_probs"]:
            probs.setdefault(r["item_id"], []).append(json.loads(r["option_probs"]))
    mean = []
    for i in ids:
        rows = [p for p in probs.get(i, []) if p and len(p) == len(probs[i][0])]
        mean.append(np.mean(np.asarray(rows, dtype=float), axis=0).tolist() if rows else None)
    return mean, [answers.get(i, []) for i in ids]


def _pool_version(ws: Workspace, round_id: int) -> tuple:
    """What the scored queues depend on, cheaply: the round's pseudo-labels (written with the
    responses by the label step) and the labeled set (a relabel step or an import changes
    it)."""
    return tuple(ws.query("SELECT COUNT(*), TOTAL(item_id), TOTAL(entropy) FROM pseudo_labels "
                          "WHERE round_id=?", (round_id,))[0]) + (
        ws.scalar("SELECT COUNT(*) FROM items WHERE split='labeled'"),)


def _embedding_queue(ws: Workspace, order: str, ids: list[int], distributions: list) -> tuple:
    """The typical or hybrid queue over the items' stored embeddings."""
    vectors = stored_embeddings(ws, ids)
    if vectors is None:
        raise SemiEvolError("This queue needs the items' embeddings: index the workspace "
                            "first (`semievol index WORKSPACE`).",
                            app="This queue needs the items' embeddings: press \"Index / "
                                "retrieve neighbours\" on the Workspace page first.")
    labeled_ids = [r[0] for r in ws.query("SELECT id FROM items WHERE split='labeled'")]
    labeled = stored_embeddings(ws, labeled_ids) if labeled_ids else None
    if order == "typical":
        positions = queues.typical_order(vectors, labeled=labeled)
    else:
        positions = queues.hybrid_order(vectors, distributions, labeled=labeled)
    return tuple(ids[i] for i in positions)


def queue_progress(ws: Workspace, queue: list[int]) -> dict:
    """{reviewed, total, decided (the set of queue items with a decision in force)}."""
    decided = set(current_decisions(ws)) & set(queue)
    return {"reviewed": len(decided), "total": len(queue), "decided": decided}


def next_item(queue: list[int], current: int | None, decided: set[int], *,
              step: int = 1, skip_decided: bool = True) -> int | None:
    """The item after (`step` 1) or before (-1) `current` in the queue, skipping decided
    items when asked; None at the end. With no `current`, the first undecided item."""
    if not queue:
        return None
    if current not in queue:
        return next((i for i in queue if i not in decided), queue[0]) if step > 0 else queue[-1]
    k = queue.index(current) + step
    while 0 <= k < len(queue):
        if not (skip_decided and queue[k] in decided):
            return queue[k]
        k += step
    return None


# -- team mode: what one reviewer sees of the team's review --------------------------------
def reviewer_decided(ws: Workspace, reviewer: str, queue: Sequence[int]) -> list[int]:
    """The items of `queue` that `reviewer` has a standing decision on, in queue order."""
    mine = {r[0] for r in ws.query("SELECT item_id FROM reviewer_decisions WHERE reviewer=?",
                                   (reviewer,))}
    return [i for i in queue if i in mine]


def reviewer_decision(ws: Workspace, item_id: int, reviewer: str) -> dict | None:
    """One reviewer's standing decision on an item (what they see as theirs: never a
    colleague's, so overlap stays blind)."""
    rows = ws.query("SELECT action, label, reviewer, note, created_at FROM reviewer_decisions "
                    "WHERE item_id=? AND reviewer=?", (item_id, reviewer))
    return dict(rows[0]) if rows else None


def team_progress(ws: Workspace, queue: Sequence[int]) -> dict:
    """{done: items with all the reviews they need, total}. Conflicts are not counted here:
    focus mode calls this on every key press and shows none (the Team page lists them)."""
    share = overlap_share(ws)
    counts: dict[int, int] = {}
    for r in ws.query("SELECT item_id, COUNT(*) FROM reviewer_decisions GROUP BY item_id"):
        counts[r[0]] = r[1]
    done = sum(counts.get(i, 0) >= reviews_needed(i, share) for i in queue)
    return {"done": done, "total": len(queue)}
