"""The audit queue and estimate (semievol.curation.audit) and lineage
(semievol.views.lineage), on hand-set rows written with SQL: no model anywhere.

`prepare_rounds(ws)` builds the two-round workspace that the page tests reuse.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from semievol.config import RoundConfig
from semievol.curation import audit
from semievol.method.scoring import wilson_interval
from semievol.saved_config import to_json
from semievol.views.lineage import item_lineage, round_summaries
from semievol.workspace.items import resolve_item

# Round 1 pool: U00..U09 with entropy 0.1 .. 1.0; agreed on even positions.
ROUND1 = {f"U{k:02d}": ("billing" if k < 5 else "outage", 0.1 * (k + 1)) for k in range(10)}
# Calibration items (gold billing, outage, equipment): one right, one wrong, one right.
CALIBRATION = {"L03": ("billing", 0.15), "L13": ("billing", 0.55), "L23": ("equipment", 0.95)}
# Percentile 50 over the 13 scores is 0.55: U00..U04, L03 and L13 are kept by the policy;
# the reviewer then rejects U01, so the stored selection is U00, U02, U03, U04 (+ L03, L13).
SELECTED = {"U00", "U02", "U03", "U04", "L03", "L13"}
ROUND2 = {f"U{k:02d}": ("outage" if k < 8 else "equipment", 0.05 * k) for k in range(5, 10)}
COLLABORATOR_ANSWERS = {"U00": ["billing"] * 4, "U01": ["billing", "outage", "billing", "billing"],
                        "U05": ["outage", "outage", "billing", "outage"]}


def ids(ws) -> dict[str, int]:
    return {r[0]: r[1] for r in ws.query("SELECT external_id, id FROM items")}


def prepare_rounds(ws) -> dict:
    """Round 1 (done, trained, percentile 50 applied, 3 decisions, evaluated) and round 2
    (open, pseudo-labeled, nothing applied) over `filled_workspace`. Returns the round ids
    and the final adapter folder (which holds a fake adapter)."""
    item = ids(ws)
    adapter = ws.path / "adapters" / "round1" / "final"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text('{"r": 16}')
    (adapter / "adapter_model.safetensors").write_bytes(b"fake weights")
    with ws.transaction() as conn:
        conn.executemany("UPDATE items SET split='calibration' WHERE id=?",
                         [(item[x],) for x in CALIBRATION])
        conn.execute("INSERT INTO rounds(id, number, status, config, warmup_adapter, "
                     "final_adapter, created_at) VALUES(1, 1, 'done', ?, ?, ?, 1000)",
                     (to_json(RoundConfig()), "adapters/round1/warmup", str(adapter)))
        conn.execute("INSERT INTO rounds(id, number, status, config, warmup_adapter, "
                     "created_at) VALUES(2, 2, 'open', ?, ?, 2000)",
                     (to_json(RoundConfig()), str(adapter)))
        rows = [(1, item[x], label, "agreed" if k % 2 == 0 else "reflected", e, int(x in SELECTED))
                for k, (x, (label, e)) in enumerate({**ROUND1, **CALIBRATION}.items())]
        rows += [(2, item[x], label, "agreed", e, 0) for x, (label, e) in ROUND2.items()]
        conn.executemany("INSERT INTO pseudo_labels(round_id, item_id, label, path, agreement, "
                         "entropy, option_entropy, selected) VALUES(?,?,?,?,1.0,?,?/2,?)",
                         [(*r[:4], r[4], r[4], r[5]) for r in rows])
        conn.executemany("INSERT INTO responses(round_id, item_id, collaborator, cache_key, "
                         "answer, nll) VALUES(1,?,?,?,?,0.5)",
                         [(item[x], c, f"{x}-{c}", a) for x, answers in COLLABORATOR_ANSWERS.items()
                          for c, a in enumerate(answers)])
        conn.executemany("INSERT INTO decisions(item_id, action, label, reviewer, created_at, "
                         "round_id) VALUES(?,?,?,?,?,?)",
                         [(item["U00"], "accept", None, "ana", 1500, 1),
                          (item["U01"], "reject", None, "ana", 1501, 1),
                          (item["U02"], "relabel", "outage", "bo", 1502, None)])  # -> round 1
        conn.executemany("INSERT INTO evaluations(round_id, model, split, accuracy, macro_f1, "
                         "report, created_at) VALUES(?,?,'test',?,NULL,'{}',0)",
                         [(None, "base", 0.10), (None, "base", 0.33), (None, "base+demos", 0.44),
                          (1, "warmup", 0.55), (1, "round", 0.66)])
        conn.execute("INSERT INTO selections(round_id, config, applied_at) VALUES(1, ?, 0)",
                     (json.dumps({"policy": "percentile", "theta": 50.0, "threshold": None,
                                  "score": "nll"}),))
    return {"round1": 1, "round2": 2, "adapter": adapter}


@pytest.fixture
def rounds_ws(filled_workspace):
    prepare_rounds(filled_workspace)
    return filled_workspace


# -- audit: pure ------------------------------------------------------------------------------
def test_audit_sample_takes_per_bin_from_every_entropy_quintile():
    entropies = np.random.default_rng(1).permutation(100).astype(float)
    picked = audit.audit_sample(entropies, bins=5, per_bin=4, seed=0)
    assert len(picked) == 20 and len(set(picked)) == 20
    quintile = entropies[picked] // 20
    assert [int((quintile == q).sum()) for q in range(5)] == [4] * 5
    assert list(quintile) == sorted(quintile)  # most confident bin first


def test_audit_sample_is_deterministic_and_grows_by_prefix():
    entropies = np.linspace(0, 1, 50)
    first = audit.audit_sample(entropies, per_bin=3, seed=7)
    assert np.array_equal(first, audit.audit_sample(entropies, per_bin=3, seed=7))
    assert not np.array_equal(first, audit.audit_sample(entropies, per_bin=3, seed=8))
    more = audit.audit_sample(entropies, per_bin=5, seed=7)
    bins = audit.entropy_bins(entropies)
    for b in range(5):  # taking more per bin keeps the items already drawn
        assert set(first[bins[first] == b]) <= set(more[bins[more] == b])


def test_audit_sample_handles_ties_small_bins_and_nan():
    tied = np.zeros(10)
    assert np.bincount(audit.entropy_bins(tied, bins=5)).tolist() == [2] * 5
    entropies = np.array([0.3, np.nan, 0.1, 0.2])
    bins = audit.entropy_bins(entropies, bins=5)
    assert bins.tolist() == [2, 5, 0, 1]  # three scored items fill three bins; nan apart
    assert sorted(audit.audit_sample(entropies, per_bin=10)) == [0, 1, 2, 3]


def test_estimate_error_on_a_hand_example():
    selected = [0] * 6 + [1] * 4  # weights 0.6 and 0.4
    result = audit.estimate_error(selected, [0, 0, 0, 1, 1], [False, False, False, True, False])
    assert result["error_rate"] == pytest.approx(0.4 * 0.5)
    assert result["complete"] and result["reviewed"] == 5 and result["wrong"] == 1
    w0, w1 = wilson_interval(0, 3), wilson_interval(1, 2)
    assert w0[0] == 0.0 and w0[1] == pytest.approx(0.5615, abs=1e-4)  # by hand: 2z²/3 / ...
    assert result["interval"] == pytest.approx([0.6 * w0[0] + 0.4 * w1[0],
                                                0.6 * w0[1] + 0.4 * w1[1]])
    low, high = result["interval"]
    assert low < result["error_rate"] < high


def test_estimate_error_with_an_unreviewed_bin_stays_honest():
    result = audit.estimate_error([0, 0, 1, 1], [0, 0], [False, True])
    assert not result["complete"]
    assert result["error_rate"] == pytest.approx(0.5)  # renormalised over reviewed bin 0
    assert result["interval"][1] >= 0.5 + 0.5 * wilson_interval(1, 2)[1] - 1e-9
    nothing = audit.estimate_error([0, 1], [], [])
    assert nothing["error_rate"] is None and nothing["interval"] == [0.0, 1.0]
    clean = audit.estimate_error([0, 0, 0], [0, 0, 0], [False] * 3)
    assert clean["error_rate"] == 0.0 and clean["interval"][1] > 0.3  # not a point at 0
    with pytest.raises(ValueError):
        audit.estimate_error([0], [0, 0], [True])


# -- audit: workspace ---------------------------------------------------------------------------
def test_audit_queue_samples_what_the_applied_policy_keeps(rounds_ws):
    item = ids(rounds_ws)
    # U01 was rejected (unselected) but the policy kept it: it stays in the population.
    queue = audit.audit_queue(rounds_ws, 1, 1)
    assert queue == [item[x] for x in ("U00", "U01", "U02", "U03", "U04")]
    assert audit.audit_queue(rounds_ws, 2, 4) == []  # no selection applied to round 2
    with rounds_ws.transaction() as conn:  # a leakage flag takes U03 out
        conn.execute("INSERT INTO flags(round_id, item_id, kind, detail) VALUES(1, ?, "
                     "'near_duplicate_test', '{}')", (item["U03"],))
    assert item["U03"] not in audit.audit_queue(rounds_ws, 1, 1)


def test_audit_estimate_reads_the_reviewers_verdicts(rounds_ws):
    result = audit.audit_estimate(rounds_ws, 1, 1)
    # Five bins of one item; U00 accepted (right), U01 rejected and U02 relabeled (wrong).
    assert result["queue"] == 5 and result["reviewed"] == 3 and result["wrong"] == 2
    assert result["error_rate"] == pytest.approx(2 / 3)
    assert result["precision"] == pytest.approx(1 / 3)
    low, high = result["interval"]  # the precision's interval: the error's turned around
    assert result["precision_interval"] == pytest.approx([1 - high, 1 - low])
    assert not result["complete"]
    expected_high = 0.2 * (wilson_interval(0, 1)[1] + 2 * wilson_interval(1, 1)[1]) + 0.4
    assert result["interval"][1] == pytest.approx(expected_high)
    assert result["expected_wrong"] == pytest.approx(2 / 3 * 2)  # U03, U04 undecided


def test_audit_ignores_decisions_of_another_round(rounds_ws):
    item = ids(rounds_ws)
    with rounds_ws.transaction() as conn:
        conn.execute("INSERT INTO decisions(item_id, action, reviewer, created_at, round_id) "
                     "VALUES(?, 'reject', 'ana', 2500, 2)", (item["U03"],))
        conn.execute("INSERT INTO decisions(item_id, action, reviewer, created_at, round_id) "
                     "VALUES(?, 'clear', 'ana', 2501, 1)", (item["U00"],))
    result = audit.audit_estimate(rounds_ws, 1, 1)
    assert result["reviewed"] == 2 and result["wrong"] == 2  # U01, U02 only


# -- lineage --------------------------------------------------------------------------------------
def test_round_summaries_numbers(rounds_ws):
    first, second = round_summaries(rounds_ws)
    assert (first["number"], first["status"], second["status"]) == (1, "done", "open")
    assert first["accuracy"] == {"base": 0.33, "base+demos": 0.44, "warmup": 0.55,
                                 "round": 0.66}
    assert second["accuracy"] == {"base": 0.33, "base+demos": 0.44, "warmup": None,
                                  "round": None}
    assert (first["pseudo_labels"], first["selected"], first["agreed"],
            first["reflected"]) == (10, 4, 5, 5)
    assert (first["decisions"], first["accepted"], first["rejected"],
            first["relabeled"]) == (3, 1, 1, 1)
    assert first["calibration_items"] == 3
    assert first["calibration_selected"]["n"] == 2
    assert first["calibration_selected"]["precision"] == 0.5
    assert first["calibration_all"]["precision"] == pytest.approx(2 / 3)
    assert first["selection"] == {"policy": "percentile", "theta": 50.0, "threshold": None,
                                  "score": "nll", "rule": "percentile θ=50 (nll)"}
    assert first["final_adapter"].endswith("round1/final")
    assert (second["pseudo_labels"], second["selected"], second["decisions"]) == (5, 0, 0)
    assert second["selection"] is None and second["calibration_items"] == 0


def test_item_lineage_of_a_selected_item(rounds_ws):
    item = ids(rounds_ws)
    (row,) = item_lineage(rounds_ws, item["U00"])
    assert row["round"] == 1 and row["pseudo_label"] == "billing" and row["path"] == "agreed"
    assert [a["config"] for a in row["answers"]] == [c.label for c in RoundConfig().collaborators]
    assert [a["answer"] for a in row["answers"]] == ["billing"] * 4
    assert row["entropy"] == pytest.approx(0.1)
    assert row["policy"] == "percentile" and row["threshold"] == pytest.approx(0.55)
    assert row["selected"] and row["adapter"].endswith("round1/final")
    assert [(d["action"], d["reviewer"]) for d in row["decisions"]] == [("accept", "ana")]


def test_item_lineage_across_two_rounds(rounds_ws):
    item = ids(rounds_ws)
    first, second = item_lineage(rounds_ws, item["U05"])
    assert (first["round"], second["round"]) == (1, 2)
    assert not first["selected"] and first["adapter"] is None
    assert first["entropy"] == pytest.approx(0.6) and first["threshold"] == pytest.approx(0.55)
    assert second["policy"] is None and second["threshold"] is None  # nothing applied yet
    assert second["labeled_by"].endswith("round1/final")  # round 2 starts from round 1's R
    # A per_class policy on round 2: the threshold is the median of the item's class.
    rounds_ws.conn.execute("INSERT INTO selections(round_id, config, applied_at) VALUES(2, ?, 0)",
                           (json.dumps({"policy": "per_class", "theta": 50.0, "threshold": None,
                                        "score": "nll"}),))
    second = item_lineage(rounds_ws, item["U05"])[1]
    assert second["threshold"] == pytest.approx(np.median([0.25, 0.30, 0.35]))


def test_item_lineage_places_a_decision_without_round_by_time(rounds_ws):
    item = ids(rounds_ws)
    (row,) = item_lineage(rounds_ws, item["U02"])
    assert [(d["action"], d["label"]) for d in row["decisions"]] == [("relabel", "outage")]
    assert item_lineage(rounds_ws, item["T0"]) == []  # test items go through no round


def test_resolve_item_by_external_or_internal_id(rounds_ws):
    item = ids(rounds_ws)
    assert resolve_item(rounds_ws, " U05 ") == item["U05"]
    assert resolve_item(rounds_ws, str(item["T0"])) == item["T0"]
    assert resolve_item(rounds_ws, "nope") is None and resolve_item(rounds_ws, "") is None


# -- how a sampled share is shown --------------------------------------------------------------
def test_a_share_is_shown_with_its_sample_and_never_below_the_minimum():
    from semievol.views.sampled import MIN_SAMPLE, sampled_percent

    assert sampled_percent(0.0, 1, (0.0, 0.96)) == "–, audit at least 10 (1 so far)"
    assert sampled_percent(None, 0) == "–, audit at least 10"
    assert sampled_percent(0.66, MIN_SAMPLE, (0.39, 0.86)) == "66% (n=10, 95% 39%–86%)"
    assert sampled_percent(0.91, 240, (0.87, 0.94)) == "91% (n=240)"  # interval: large n
    assert sampled_percent(0.5, 4, need="needs at least") == "–, needs at least 10 (4 so far)"


def test_cli_audit_states_what_it_needs_before_an_error_rate(rounds_ws, capsys):
    from semievol.cli.main import main

    assert main(["audit", str(rounds_ws.path), "--round", "1", "--per-bin", "1"]) == 0
    out = capsys.readouterr().out
    # 3 verdicts (2 wrong): no "67%" printed, the need instead.
    assert "estimated error rate of the selection: –, audit at least 10 (3 so far)" in out
    assert "67" not in out.split("estimated error rate")[1]


def test_cli_keeps_a_rounds_selection_for_the_next_rounds(rounds_ws, capsys):
    from semievol.cli.main import main
    from semievol.rounds.record import base_config

    assert main(["keep-selection", str(rounds_ws.path), "--round", "2"]) == 2  # none applied
    assert "no applied selection" in capsys.readouterr().err
    assert main(["keep-selection", str(rounds_ws.path), "--round", "1"]) == 0
    assert "New rounds will select by percentile θ=50 (nll) (kept from round 1)." in \
        capsys.readouterr().out
    assert base_config(rounds_ws).selection.theta == 50.0
