"""Human decisions: what is refused (and then nothing is written), the decision in force per
item (the `current_decisions` view: the one definition both the Python readers and the
review queue's SQL use), the history, and the pure override rule."""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest
from conftest import ids_of

from semievol.config import TaskConfig
from semievol.curation.decisions import (apply_decisions, current_decision, current_decisions,
                                         decision_history, last_decision, record_decisions)
from semievol.errors import SemiEvolError
from semievol.views.review import ReviewFilter, count_items


def decision_count(ws) -> int:
    return ws.scalar("SELECT COUNT(*) FROM decisions")


@pytest.mark.parametrize("case, message", [
    ("unknown", "No item with id 999999"),
    ("labeled", "unlabeled pool only"),
    ("bad_label", "not an option"),
    ("no_label", "needs the new label"),
    ("no_reviewer", "reviewer"),
    ("blank_reviewer", "reviewer"),
    ("bad_action", "action must be one of"),
    ("label_with_accept", "accept takes no label"),
    ("label_with_clear", "clear takes no label"),
    ("accept_without_pseudo_label", "no pseudo-label yet"),
    ("reject_without_pseudo_label", "no pseudo-label yet"),
])
def test_invalid_decisions_raise_and_write_nothing(pool, case, message):
    ws, _, items = pool
    good = items[:3]
    bare = ids_of(ws, "unlabeled")[15:17]  # no round has pseudo-labeled these
    calls = {
        "unknown": lambda: record_decisions(ws, good + [999999], "accept", reviewer="ann"),
        "labeled": lambda: record_decisions(ws, good + ids_of(ws, "labeled")[:1], "reject",
                                            reviewer="ann"),
        "bad_label": lambda: record_decisions(ws, good, "relabel", label="cats", reviewer="ann"),
        "no_label": lambda: record_decisions(ws, good, "relabel", reviewer="ann"),
        "no_reviewer": lambda: record_decisions(ws, good, "accept", reviewer=""),
        "blank_reviewer": lambda: record_decisions(ws, good, "accept", reviewer="   "),
        "bad_action": lambda: record_decisions(ws, good, "approve", reviewer="ann"),
        "label_with_accept": lambda: record_decisions(ws, good, "accept", label="outage",
                                                      reviewer="ann"),
        "label_with_clear": lambda: record_decisions(ws, good, "clear", label="outage",
                                                     reviewer="ann"),
        "accept_without_pseudo_label": lambda: record_decisions(ws, good + bare, "accept",
                                                                reviewer="ann"),
        "reject_without_pseudo_label": lambda: record_decisions(ws, bare, "reject",
                                                                reviewer="ann"),
    }
    with pytest.raises(SemiEvolError, match=message):
        calls[case]()
    assert decision_count(ws) == 0


def test_relabel_and_clear_need_no_pseudo_label(pool):
    ws, _, _ = pool
    bare = ids_of(ws, "unlabeled")[15]
    assert record_decisions(ws, [bare], "relabel", label="outage", reviewer="ann") == 1
    assert record_decisions(ws, [bare], "clear", reviewer="ann") == 1
    assert current_decision(ws, bare) is None


def test_relabel_checks_each_items_own_options(workspace):
    task = TaskConfig(kind="choice", labels=None)
    workspace.set_task(task)
    with workspace.transaction() as conn:
        for n, options in enumerate((["red", "blue"], ["green", "blue"])):
            conn.execute("INSERT INTO items(external_id, split, question, options) "
                         "VALUES(?,?,?,?)", (f"u{n}", "unlabeled", f"q{n}", json.dumps(options)))
    ids = ids_of(workspace, "unlabeled")
    assert record_decisions(workspace, ids, "relabel", label="blue", reviewer="ann") == 2
    with pytest.raises(SemiEvolError, match="not an option of item"):
        record_decisions(workspace, ids, "relabel", label="red", reviewer="ann")
    assert decision_count(workspace) == 2


def test_bulk_decisions_write_one_row_each_in_one_transaction(pool):
    ws, rid, items = pool
    items = items[:5]
    statements = []
    ws.conn.set_trace_callback(statements.append)
    try:
        assert record_decisions(ws, items, "accept", reviewer="  ann ", note="looks right",
                                round_id=rid) == 5
    finally:
        ws.conn.set_trace_callback(None)
    assert sum(s.startswith("BEGIN") for s in statements) == 1
    assert sum(s.startswith("COMMIT") for s in statements) == 1
    rows = ws.query("SELECT item_id, action, label, reviewer, note, round_id FROM decisions "
                    "ORDER BY id")
    assert [r["item_id"] for r in rows] == items
    assert {(r["action"], r["label"], r["reviewer"], r["note"], r["round_id"]) for r in rows} \
        == {("accept", None, "ann", "looks right", rid)}
    assert record_decisions(ws, [], "reject", reviewer="ann") == 0
    assert decision_count(ws) == 5


def test_decisions_are_append_only(pool):
    ws, _, items = pool
    record_decisions(ws, [items[0]], "relabel", label="outage", reviewer="ann")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        ws.conn.execute("UPDATE decisions SET label='billing'")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        ws.conn.execute("DELETE FROM decisions")
    assert [tuple(r) for r in ws.query("SELECT action, label FROM decisions")] == \
        [("relabel", "outage")]


def test_the_latest_decision_is_in_force_and_clear_removes_it(pool):
    ws, rid, items = pool
    a, b, c, d = items[:4]
    record_decisions(ws, [a, b], "accept", reviewer="ann")
    record_decisions(ws, [a], "relabel", label="outage", reviewer="bob")
    record_decisions(ws, [b, c], "reject", reviewer="bob")
    record_decisions(ws, [b], "clear", reviewer="ann")
    record_decisions(ws, [d], "clear", reviewer="ann")  # clearing nothing is harmless
    current = current_decisions(ws)
    assert set(current) == {a, c}
    assert (current[a]["action"], current[a]["label"], current[a]["reviewer"]) == \
        ("relabel", "outage", "bob")
    assert current[c]["action"] == "reject"
    assert current_decision(ws, a) == current[a] and current_decision(ws, b) is None
    assert [h["action"] for h in decision_history(ws, b)] == ["accept", "reject", "clear"]
    assert [h["action"] for h in decision_history(ws, a)] == ["accept", "relabel"]
    assert last_decision(ws)["item_id"] == d
    assert last_decision(ws, reviewer="bob")["item_id"] in (b, c)
    # The review queue's SQL reads the same view: the same items count as decided.
    assert count_items(ws, ReviewFilter(rid, decision="any")) == 2
    assert count_items(ws, ReviewFilter(rid, decision="none")) == len(items) - 2
    assert count_items(ws, ReviewFilter(rid, decision="reject")) == 1


# -- the override rule (pure) --------------------------------------------------------------
def _row(item_id, action, label=None):
    return {"item_id": item_id, "action": action, "label": label}


def test_apply_decisions_each_action():
    ids = [10, 11, 12, 13, 14]
    selected = np.array([False, True, True, False, True])
    labels = ["a", "a", "b", "b", "a"]
    decisions = {
        10: _row(10, "accept"),
        11: _row(11, "reject"),
        13: _row(13, "relabel", "c"),
        99: _row(99, "reject"),  # not in this batch: ignored
    }
    final, final_labels, source = apply_decisions(ids, selected, labels, decisions)
    assert final.tolist() == [True, False, True, True, True]
    assert final_labels == ["a", "a", "b", "c", "a"]
    assert source == ["accepted", "rejected", "policy", "relabeled", "policy"]
    assert selected.tolist() == [False, True, True, False, True]  # input untouched
    assert labels[3] == "b"


def test_apply_decisions_relabel_without_label_and_unknown_action_fail():
    with pytest.raises(ValueError):
        apply_decisions([1], np.array([True]), ["x"], {1: _row(1, "relabel", None)})
    with pytest.raises(ValueError):
        apply_decisions([1], np.array([True]), ["x"], {1: _row(1, "approve")})
    with pytest.raises(ValueError, match="same length"):
        apply_decisions([1, 2], np.array([True]), ["x"], {})
