"""The regression guard and the adapter the next round starts from, the workspace's next
action, undo and the focus queue: rounds, evaluations and pseudo-labels written with SQL, no
model."""

from __future__ import annotations

import json
import os

import pytest
from conftest import ids_of

from semievol.config import RoundConfig
from semievol.curation.decisions import current_decision, record_decisions, undo_last
from semievol.rounds.record import get_round, open_round, set_status
from semievol.rounds.scores import adapter_scores, regression, start_adapter
from semievol.saved_config import to_json
from semievol.views.focus import FOCUS_ORDERS, focus_queue, next_item, queue_progress
from semievol.views.workflow import round_state
from semievol.workspace.store import now


def add_rounds(ws, accuracies: dict[tuple[int, str], float], *, start_from="best"):
    """Rounds 1.. with adapters and test evaluations {(round, model): accuracy}."""
    numbers = sorted({n for n, _ in accuracies})
    config = to_json(RoundConfig(start_from=start_from))
    with ws.transaction() as conn:
        for n in numbers:
            conn.execute("INSERT INTO rounds(id, number, status, config, warmup_adapter, "
                         "final_adapter, created_at) VALUES(?,?,?,?,?,?,?)",
                         (n, n, "done", config, f"adapters/round{n}/warmup",
                          f"adapters/round{n}/final", now()))
        for (n, model), accuracy in accuracies.items():
            conn.execute("INSERT INTO evaluations(round_id, model, split, accuracy, report, "
                         "created_at) VALUES(?,?,'test',?,?,?)",
                         (n, model, accuracy, json.dumps({"accuracy": accuracy}), now()))


def test_a_round_below_its_warmup_is_flagged_and_not_the_next_start(filled_workspace):
    ws = filled_workspace
    add_rounds(ws, {(1, "warmup"): 0.82, (1, "round"): 0.83, (2, "warmup"): 0.83,
                    (2, "round"): 0.31})
    assert regression(ws, get_round(ws, 1))["message"] == ""
    check = regression(ws, get_round(ws, 2))
    assert [b["what"] for b in check["below"]] == ["its warm-up", "round 1"]
    assert "Round 2 scores 31.0% on test, below its warm-up 83.0%; round 1 83.0%" \
        in check["message"]
    # Round 3 starts from the best adapter so far (ties go to the latest: round 1's final
    # and round 2's warm-up are both 0.83; round 2's warm-up is round 1's final anyway).
    with ws.transaction() as conn:
        conn.execute("INSERT INTO rounds(id, number, status, config, created_at) "
                     "VALUES(3, 3, 'open', ?, ?)", (to_json(RoundConfig()), now()))
    start = start_adapter(ws, 3, get_round(ws, 3).config.start_from)
    assert (start["round"], start["model"], start["accuracy"]) == (2, "warmup", 0.83)
    assert start["adapter"] == str(ws.path / "adapters/round2/warmup")
    assert "best so far" in start["reason"]
    assert [s["round"] for s in adapter_scores(ws, before_round=2)] == [1, 1]


def test_start_from_previous_follows_the_paper(filled_workspace):
    ws = filled_workspace
    add_rounds(ws, {(1, "warmup"): 0.9, (1, "round"): 0.4}, start_from="previous")
    with ws.transaction() as conn:
        conn.execute("INSERT INTO rounds(id, number, status, config, created_at) "
                     "VALUES(2, 2, 'open', ?, ?)",
                     (to_json(RoundConfig(start_from="previous")), now()))
    start = start_adapter(ws, 2, get_round(ws, 2).config.start_from)
    assert start["adapter"] == str(ws.path / "adapters/round1/final")
    assert "previous round" in start["reason"]


def test_the_next_action_follows_the_round(filled_workspace):
    ws = filled_workspace
    assert round_state(ws)["page"] == "setup" and round_state(ws)["round"] is None
    rnd = open_round(ws, RoundConfig())
    assert round_state(ws)["status"] == "open"
    for status, page, words in (("awaiting_review", "review", "awaiting review"),
                                ("training", "runs", "resume"), ("trained", "train", "evaluate"),
                                ("done", "train", "start round 2")):
        set_status(ws, rnd, status)
        state = round_state(ws)
        assert state["page"] == page and words in state["action"], state
    ws.conn.execute("INSERT INTO runs(kind, round_id, status, pid, started_at, heartbeat) "
                    "VALUES('label', ?, 'running', ?, ?, ?)", (rnd.id, os.getpid(), now(), now()))
    assert round_state(ws)["page"] == "runs" and "is working on" in round_state(ws)["action"]


def test_undo_restores_what_was_in_force_and_can_be_repeated(pool):
    ws, rid, items = pool
    a, b = items[:2]
    record_decisions(ws, [a], "reject", reviewer="ann")
    record_decisions(ws, [a], "relabel", label="outage", reviewer="ann")
    record_decisions(ws, [b], "accept", reviewer="ann")
    record_decisions(ws, [b], "reject", reviewer="bob")  # another reviewer's: not undone
    assert undo_last(ws, reviewer="ann")["item_id"] == b   # ann's accept on b
    assert current_decision(ws, b)["action"] == "reject"   # superseded by bob: his stays
    assert undo_last(ws, reviewer="ann")["item_id"] == a   # then the relabel of a
    assert current_decision(ws, a)["action"] == "reject"
    assert undo_last(ws, reviewer="ann")["action"] == "reject"  # then the first reject of a
    assert current_decision(ws, a) is None
    assert undo_last(ws, reviewer="ann") is None  # nothing left to undo
    assert ws.scalar("SELECT COUNT(*) FROM decisions") == 7  # append-only: rows added
    record_decisions(ws, [a], "accept", reviewer="ann")
    undo_last(ws, reviewer="ann")
    assert current_decision(ws, a) is None  # nothing was in force before that accept


def test_focus_queue_orders_and_progress(pool):
    ws, rid, items = pool
    least = focus_queue(ws, rid, "least_confident")
    assert least[0] == items[8]                           # no entropy: looked at first
    assert least[1:] == list(reversed(items[:8]))         # then highest entropy first
    reflected = focus_queue(ws, rid, "reflected")
    paths = {r[0]: r[1] for r in ws.query("SELECT item_id, path FROM pseudo_labels")}
    assert [paths[i] for i in reflected] == sorted((paths[i] for i in reflected),
                                                   key=lambda p: p != "reflected")
    by_class = focus_queue(ws, rid, "class")
    labels = {r[0]: r[1] for r in ws.query("SELECT item_id, label FROM pseudo_labels")}
    assert [labels[i] for i in by_class] == sorted((labels[i] for i in by_class),
                                                   key=["billing", "outage", "equipment"].index)
    for order in FOCUS_ORDERS:
        assert sorted(focus_queue(ws, rid, order)) == sorted(items)
    record_decisions(ws, [least[0], least[2]], "reject", reviewer="ann")
    progress = queue_progress(ws, least)
    assert (progress["reviewed"], progress["total"]) == (2, 9)
    decided = progress["decided"]
    assert next_item(least, None, decided) == least[1]
    assert next_item(least, least[1], decided) == least[3]          # skips the decided one
    assert next_item(least, least[3], decided, step=-1, skip_decided=False) == least[2]
    assert next_item(least, least[-1], decided) is None
    with pytest.raises(Exception, match="Unknown queue order"):
        focus_queue(ws, rid, "random")
    assert ids_of(ws, "unlabeled")[:9] == items
