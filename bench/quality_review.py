"""The quality bench's simulated reviewer: a person who knows the hidden answers works
through the Review page's queues (or labels random pool items) through the library's
decision functions, as they would in the app."""

from __future__ import annotations

from semievol.views.focus import FOCUS_ORDERS

REVIEW_ORDERS = {**FOCUS_ORDERS, "audit": "audit queue", "random": "random items"}
"""Which items a simulated reviewer takes: the Review page's focus queues (semievol.views.focus;
the audit queue keeps the name earlier results carry), or random pool items (plain labeling
of unlabeled items, no queue)."""
REVIEWER = "simulated reviewer"


def review_name(order: str, n: int) -> str:
    return (f"SemiEvol r1 + {n} random gold labels" if order == "random" else
            f"SemiEvol r1 + {n} reviewed ({REVIEW_ORDERS[order]})")


def random_pool_items(ws, n: int, seed: int) -> list[int]:
    """n unlabeled items drawn with the seed: the same items for every variant of a seed
    that labels n random items (SFT + n gold labels, SemiEvol + n random gold labels)."""
    import random

    ids = [r[0] for r in ws.query("SELECT id FROM items WHERE split='unlabeled' ORDER BY id")]
    return sorted(random.Random(1000 * seed + n).sample(ids, min(n, len(ids))))


def give_gold_labels(ws, item_ids: list[int], hidden: dict) -> int:
    """Relabel each item with its hidden true answer through semievol.curation.decisions, as a
    person labeling those items in the app would; returns how many."""
    external = {r["id"]: r["external_id"] for r in ws.query_in(
        "SELECT id, external_id FROM items WHERE id IN ({})", item_ids)}
    by_label: dict[str, list[int]] = {}
    for i in item_ids:
        by_label.setdefault(hidden[external[i]], []).append(i)
    for label, ids in by_label.items():
        _decide(ws, ids, "relabel", label=label)
    return len(item_ids)


def _decide(ws, ids: list[int], action: str, label: str | None = None) -> int:
    from semievol.curation.decisions import record_decisions

    return record_decisions(ws, ids, action, reviewer=REVIEWER, label=label)


def simulate_review(ws, rnd, hidden: dict, order: str, n: int, seed: int) -> dict:
    """A reviewer who knows the hidden answers works through the first n items of a queue
    as they would in the app: accept a right pseudo-label, relabel a wrong one with the
    true answer. `random`: n random pool items given their true answer (gold labels for
    SemiEvol, no review)."""
    from semievol.views.decision_value import next_decisions_value
    from semievol.views.focus import focus_queue

    if order == "random":
        return {"order": order, "n": give_gold_labels(ws, random_pool_items(ws, n, seed),
                                                      hidden)}
    # What Review would have told this reviewer before they started (checked against the
    # measured gain in the report).
    value = next_decisions_value(ws, rnd.id, order, n)
    estimate = {k: value[k] for k in ("estimate", "low", "high", "stop")}
    queue = focus_queue(ws, rnd.id, order)[:n]
    rows = {r["item_id"]: r for r in ws.query_in(
        "SELECT p.item_id, p.label, p.selected, i.external_id FROM pseudo_labels p "
        "JOIN items i ON i.id = p.item_id WHERE p.round_id=%d AND p.item_id IN ({})"
        % rnd.id, queue)}
    right = [i for i in queue if rows[i]["label"] == hidden[rows[i]["external_id"]]]
    wrong = [i for i in queue if i not in set(right)]
    if right:
        _decide(ws, right, "accept")
    give_gold_labels(ws, wrong, hidden)
    return {"order": order, "n": len(queue), "accepted": len(right), "relabeled": len(wrong),
            "wrong_among_selected": sum(bool(rows[i]["selected"]) for i in wrong),
            "accepted_outside_selection": sum(not rows[i]["selected"] for i in right),
            "estimate": estimate}
