"""How rounds compare: the regression guard (a round that scores below what it started
from) and the adapter the next round starts from (the best so far, by default).

Scores are the stored evaluations on the workspace's evaluation split (the test set, else
the calibration slice; `evaluate.evaluation_split`). Pure reading: no model runs here.
"""

from __future__ import annotations

from semievol.method.evaluate import evaluation_split
from semievol.rounds.record import Round, get_round
from semievol.workspace.store import Workspace

ADAPTER_MODELS = {"warmup": "warmup_adapter", "round": "final_adapter"}
"""Evaluated variants that are an adapter of a round (base ones are not)."""


def adapter_scores(ws: Workspace, *, before_round: int | None = None,
                   split: str | None = None) -> list[dict]:
    """Every evaluated adapter of the rounds (numbered below `before_round` if given), oldest
    first: round, round_id, model (warmup | round), adapter (as stored), accuracy, split.
    `split`: the evaluation split (`evaluate.evaluation_split`), when the caller has it."""
    split = split or evaluation_split(ws)
    if split is None:
        return []
    rows = ws.query(
        "SELECT r.number, r.id, e.model, e.accuracy, r.warmup_adapter, r.final_adapter "
        "FROM evaluations e JOIN rounds r ON r.id = e.round_id "
        "WHERE e.split=? AND e.model IN ('warmup', 'round') AND e.id IN "
        "(SELECT MAX(id) FROM evaluations GROUP BY round_id, model, split) "
        "ORDER BY r.number, e.model DESC", (split,))
    out = []
    for r in rows:
        if before_round is not None and r["number"] >= before_round:
            continue
        adapter = r[ADAPTER_MODELS[r["model"]]]
        if adapter:
            out.append({"round": r["number"], "round_id": r["id"], "model": r["model"],
                        "adapter": adapter, "accuracy": r["accuracy"], "split": split})
    return out


def accuracy_on(accuracy: float, split: str) -> str:
    """"83.1% on test": a score and the split it was measured on, as every page says it."""
    return f"{accuracy:.1%} on {split}"


def describe(score: dict) -> str:
    """"round 1's warm-up adapter (83.1 % on test)"."""
    what = "warm-up adapter" if score["model"] == "warmup" else "trained adapter"
    return f"round {score['round']}'s {what} ({accuracy_on(score['accuracy'], score['split'])})"


def start_adapter(ws: Workspace, number: int, start_from: str = "best", *,
                  scores: list[dict] | None = None, previous: Round | None = None) -> dict:
    """The adapter round `number` (> 1) starts from, and why: {adapter (path), round,
    model, accuracy, split, reason, summary}. With `start_from` `best` (RoundConfig), the
    best-scoring evaluated adapter of the earlier rounds (ties: the latest); otherwise, or
    when nothing was evaluated, the previous round's trained adapter. The next round of a
    finished round `rnd` starts from `start_adapter(ws, rnd.number + 1,
    rnd.config.start_from)`: the same rule, asked before that round opens. `scores` (every
    round's `adapter_scores`) and `previous` (round number - 1), when the caller has read
    them."""
    previous = previous or get_round(ws, number - 1)
    fallback = {"adapter": previous.final_adapter, "round": previous.number, "model": "round",
                "accuracy": None, "split": None,
                "reason": f"round {previous.number}'s trained adapter (the previous round)",
                "summary": f"round {previous.number}'s trained adapter (start from: previous)"}
    if start_from != "best":
        return fallback
    scores = [s for s in (adapter_scores(ws) if scores is None else scores)
              if s["round"] < number]
    if not scores:
        return {**fallback, "reason": fallback["reason"] + "; no adapter is evaluated yet",
                "summary": f"round {previous.number}'s trained adapter (nothing evaluated yet)"}
    best = max(reversed(scores), key=lambda s: s["accuracy"])  # max keeps the first: latest
    return {**best, "adapter": str(ws.path / best["adapter"]),
            "reason": f"the best so far: {describe(best)}",
            "summary": f"{describe(best)}, the best so far"}


def best_trained(scores: list[dict], *, up_to: int | None = None) -> dict | None:
    """The best-scoring trained round (an `adapter_scores` entry of model "round", of rounds
    up to `up_to`), ties to the latest; None when none is evaluated. The round to export."""
    trained = [s for s in scores if s["model"] == "round" and (up_to is None or
                                                              s["round"] <= up_to)]
    return max(reversed(trained), key=lambda s: s["accuracy"]) if trained else None


def regression(ws: Workspace, rnd: Round, *, scores: list[dict] | None = None) -> dict | None:
    """Whether the round's trained adapter scores below what it started from: its warm-up,
    or the previous round's trained adapter. None until it is evaluated; else {accuracy,
    split, below: [{what, accuracy}], message (empty when it is not worse), best (the best
    trained round so far, `best_trained`)}."""
    listed = adapter_scores(ws) if scores is None else scores
    best = best_trained(listed, up_to=rnd.number)
    scores = {(s["round"], s["model"]): s for s in listed}
    own = scores.get((rnd.number, "round"))
    if own is None:
        return None
    below = []
    warmup = scores.get((rnd.number, "warmup"))
    if warmup is not None and own["accuracy"] < warmup["accuracy"]:
        below.append({"what": "its warm-up", "accuracy": warmup["accuracy"]})
    previous = scores.get((rnd.number - 1, "round"))
    if previous is not None and own["accuracy"] < previous["accuracy"]:
        below.append({"what": f"round {rnd.number - 1}", "accuracy": previous["accuracy"]})
    message = ""
    if below:
        worse = "; ".join(f"{b['what']} {b['accuracy']:.1%}" for b in below)
        message = (f"Round {rnd.number} scores {accuracy_on(own['accuracy'], own['split'])}, below "
                   f"{worse}. Its adapter is not used as the start of the next round unless "
                   "it is the best; review its pseudo-labels and training settings.")
    return {"accuracy": own["accuracy"], "split": own["split"], "below": below,
            "message": message, "best": best}
