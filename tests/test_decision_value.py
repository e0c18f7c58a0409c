"""What the next decisions of a queue are worth (semievol.views.decision_value): the pure
parts on constructed numbers, then the estimate over a constructed workspace (pseudo-labels,
responses and evaluations written with SQL; no model)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from conftest import add_pseudo, ids_of

from semievol.config import CalibrationConfig
from semievol.curation.calibration import hold_out
from semievol.curation.decisions import record_decisions
from semievol.curation.selection_state import apply_selection, selection_in_force
from semievol.method.evaluate import store_evaluation
from semievol.views.decision_value import (curve_slope, effective_examples, gain_points,
                                           learning_curve, next_decisions_value, queue_error)


# -- the pure parts -----------------------------------------------------------------------
def test_effective_examples_counts_what_each_decision_adds():
    assert effective_examples(10, 0.0, 0.0) == 10      # right, left out: accept adds each
    assert effective_examples(10, 0.0, 1.0) == 0       # right and kept: nothing changes
    assert effective_examples(10, 1.0, 1.0) == 20      # wrong and kept: -wrong +right
    assert effective_examples(10, 1.0, 0.0) == 10      # wrong, left out: +right
    assert effective_examples(10, 0.5, 0.5) == pytest.approx(10 * (0.25 + 0.75))


def test_gain_follows_the_log_of_the_training_set():
    assert gain_points(0.1, 99, 0) == 0
    assert gain_points(0.1, 99, 100) == pytest.approx(100 * 0.1 * math.log(2))
    # the same 25 examples are worth less on a larger training set
    assert gain_points(0.1, 500, 25) < gain_points(0.1, 50, 25)


def test_curve_slope_through_chance_and_its_error():
    chance = 1 / 3
    one = [{"n": 50, "accuracy": 0.8, "measured_on": 400}]
    b, se = curve_slope(one, chance)
    assert b == pytest.approx((0.8 - chance) / math.log(51))
    assert se == pytest.approx(math.sqrt(0.8 * 0.2 / 400) / math.log(51))
    # more items measured: a smaller error; a point that trained on nothing is left out
    b2, se2 = curve_slope([{"n": 50, "accuracy": 0.8, "measured_on": 1600},
                           {"n": 0, "accuracy": 0.2, "measured_on": 400}], chance)
    assert b2 == pytest.approx(b) and se2 == pytest.approx(se / 2)
    assert curve_slope([], chance) is None
    # a perfect score has no binomial variance: it is clipped, not a division by zero
    assert math.isfinite(curve_slope([{"n": 9, "accuracy": 1.0, "measured_on": 10}], 0.5)[1])
    # more data that hurt gives a negative slope: the estimate says so
    assert curve_slope([{"n": 50, "accuracy": 0.2, "measured_on": 100}], chance)[0] < 0


# -- over a workspace ----------------------------------------------------------------------
@pytest.fixture
def reviewed(pool):
    """The pool with calibration items pseudo-labeled (half of them wrong), every item with
    collaborator distributions (the pool's first four unsure, the rest sure), and round 1's
    warm-up evaluated on the test split."""
    ws, rid, items = pool
    hold_out(ws, CalibrationConfig(fraction=0.5, min_per_class=1))
    calibration = ids_of(ws, "calibration")
    gold = dict(ws.query("SELECT id, answer FROM items WHERE split='calibration'"))
    other = {"billing": "outage", "outage": "billing", "equipment": "billing"}
    add_pseudo(ws, rid, [(i, gold[i] if k % 2 else other[gold[i]], "agreed", 0.5, 0.5)
                         for k, i in enumerate(calibration)])
    rows = []
    for k, i in enumerate(items[:8] + calibration):
        p = [0.5, 0.4, 0.1] if (k < 4 or (k >= 8 and k % 2 == 0)) else [0.9, 0.05, 0.05]
        rows.append((rid, i, 0, f"v{i}", "billing", json.dumps(p)))
    with ws.transaction() as conn:
        conn.executemany("INSERT INTO responses(round_id, item_id, collaborator, cache_key, "
                         "answer, option_probs) VALUES(?,?,?,?,?,?)", rows)
    store_evaluation(ws, {"model": "warmup", "split": "test", "accuracy": 0.8, "n": 400},
                     round_id=rid)
    return ws, rid, items, calibration


def test_learning_curve_reads_the_evaluated_models(reviewed):
    ws, rid, _, _ = reviewed
    curve = learning_curve(ws)
    labeled = len(ids_of(ws, "labeled"))
    assert curve["split"] == "test" and curve["chance"] == pytest.approx(1 / 3)
    assert curve["points"] == [{"n": labeled, "accuracy": 0.8, "measured_on": 400,
                                "model": "warmup", "round": 1}]


def test_queue_error_reads_known_items_as_sure_as_the_next(reviewed, monkeypatch):
    import semievol.views.decision_value as value

    ws, rid, items, calibration = reviewed
    n_unsure = (len(calibration) + 1) // 2
    # Too few known items as unsure as these: widened to the MIN_EVIDENCE nearest.
    assert len(calibration) < value.MIN_EVIDENCE
    widened = queue_error(ws, rid, items[:4])
    assert widened["n"] == len(calibration) and widened["wrong"] == n_unsure
    monkeypatch.setattr(value, "MIN_EVIDENCE", 1)
    # The unsure calibration items (even positions) are the wrong ones.
    unsure = queue_error(ws, rid, items[:4])
    assert unsure["wrong"] == unsure["n"] == n_unsure and unsure["share"] == 1.0
    sure = queue_error(ws, rid, items[4:8])
    assert sure["wrong"] == 0 and sure["n"] == len(calibration) - n_unsure
    # decided pool items count as known truth (a relabel to another label: it was wrong)
    record_decisions(ws, [items[6]], "relabel", reviewer="r", label="billing")
    assert queue_error(ws, rid, items[4:6])["wrong"] == 1


def test_next_decisions_value_in_words_with_its_range(reviewed):
    ws, rid, items, _ = reviewed
    value = next_decisions_value(ws, rid, "least_confident", n=4)
    assert value["n"] == 4 and value["low"] < value["estimate"] < value["high"]
    assert value["message"].startswith("the next 4 decisions in this queue: about +")
    assert value["stop"] == (value["low"] <= 0)
    more = next_decisions_value(ws, rid, "least_confident", n=8)
    assert more["estimate"] > value["estimate"]
    # once a selection is applied, what it stored is read (the same as computed before)
    apply_selection(ws, rid, selection_in_force(ws, rid)[0])
    after = next_decisions_value(ws, rid, "least_confident", n=8)
    assert after["selected_share"] == more["selected_share"] > 0
    assert after["estimate"] == pytest.approx(more["estimate"])


def test_next_decisions_value_says_what_evidence_is_missing(pool):
    ws, rid, _ = pool
    value = next_decisions_value(ws, rid, "least_confident")
    assert value["estimate"] is None and "No evaluated model" in value["message"]
    store_evaluation(ws, {"model": "warmup", "split": "test", "accuracy": 0.8, "n": 400},
                     round_id=rid)
    value = next_decisions_value(ws, rid, "least_confident")
    assert value["estimate"] is None and "known truth" in value["message"]
    with pytest.raises(ValueError):
        next_decisions_value(ws, rid, "margin", n=0)


def test_a_wide_range_gives_the_stopping_hint(reviewed):
    ws, rid, items, _ = reviewed
    with ws.transaction() as conn:  # a warm-up measured on 12 items: the noise swamps it
        conn.execute("UPDATE evaluations SET report=? WHERE model='warmup'",
                     (json.dumps({"model": "warmup", "accuracy": 0.8, "n": 12}),))
    value = next_decisions_value(ws, rid, "least_confident", n=2)
    assert value["stop"] and value["low"] <= 0 and "consider training now" in value["message"]
    assert np.isfinite(value["high"])


def test_the_cli_prints_the_value_of_a_queues_next_decisions(reviewed):
    from test_engine_cli import semievol

    ws, rid, _, _ = reviewed
    out = semievol("review", ws.path, "--order", "least_confident", "--value", "4").stdout
    assert out.splitlines()[-1] == next_decisions_value(ws, rid, "least_confident", 4)["message"]
    listed = json.loads(semievol("review", ws.path, "--order", "margin", "--json").stdout)
    assert listed["value"]["n"] == 9 and listed["value"]["order"] == "margin"  # 25 asked, 9 left
    for bad, why in ((("--value", "3"), "give the queue with --order"),
                     (("--order", "margin", "--value", "0"), "1 or more")):
        run = semievol("review", ws.path, *bad, check=False)
        assert run.returncode != 0 and why in run.stderr and "Traceback" not in run.stderr
