"""Selection over stored entropies (with decisions and the leakage guard on top), the
training set, the calibration slice and its report, the training-set guard and the dataset
export. Rounds and pseudo-labels are written with SQL: no model runs here."""

from __future__ import annotations

import csv
import json
import sys

import numpy as np
import pytest
from conftest import POOL_LABELS as LABELS
from conftest import add_pseudo, add_round, ids_of

from semievol.config import CalibrationConfig, SelectionConfig, TaskConfig
from semievol.curation.calibration import calibration_report, hold_out
from semievol.curation.decisions import record_decisions
from semievol.curation.selection_state import applied_selection, apply_selection, compute_selection
from semievol.curation.training_set import training_items, warmup_items
from semievol.errors import SemiEvolError
from semievol.export.dataset import calibration_items, export_dataset, user_columns
from semievol.rounds.guards import validate_training_set


# -- selection -----------------------------------------------------------------------------
def Plain(**fields) -> SelectionConfig:  # noqa: N802 - reads as the config it builds
    """A selection without the class floor: these tests pin the policies themselves."""
    return SelectionConfig(class_floor=0.0, **fields)


def chosen(result, items) -> list[int]:
    """Positions (0..8 in `items`) that the result selects."""
    by_id = dict(zip(result.item_ids, result.selected))
    return [k for k, i in enumerate(items) if by_id[i]]


@pytest.mark.parametrize("config, expected, threshold", [
    (Plain(policy="percentile", theta=50), [0, 1, 2, 3], 0.45),
    (Plain(policy="percentile", theta=25), [0, 1], 0.275),
    (Plain(policy="per_class", theta=50), [0, 1, 4, 5], None),
    (Plain(policy="agreement_only"), [0, 2, 4, 7, 8], None),
    (Plain(policy="absolute", threshold=0.35), [0, 1, 2], 0.35),
    (Plain(policy="percentile", theta=50, score="option_entropy"), [4, 5, 6, 7],
     0.55),
])
def test_compute_selection_policies(pool, config, expected, threshold):
    ws, rid, items = pool
    result = compute_selection(ws, rid, config)
    assert result.item_ids == items
    assert chosen(result, items) == expected
    assert result.source == ["policy"] * 9
    assert result.labels == LABELS + ["equipment"]
    assert set(result.splits) == {"unlabeled"}
    if threshold is None:
        assert result.threshold is None
    else:
        assert result.threshold == pytest.approx(threshold)
    summary = result.summary()
    assert summary["pool"] == 9 and summary["selected"] == len(expected)
    assert sum(summary["by_class"].values()) == len(expected)


def test_compute_selection_reads_only_the_database(pool, monkeypatch):
    ws, rid, items = pool
    for module in ("torch", "transformers", "peft", "sentence_transformers", "chromadb"):
        monkeypatch.setitem(sys.modules, module, None)   # any import of them now fails
    result = compute_selection(ws, rid, Plain(policy="percentile", theta=50))
    assert chosen(result, items) == [0, 1, 2, 3]
    before = ws.table_counts()
    compute_selection(ws, rid, Plain(policy="agreement_only"))
    assert ws.table_counts() == before
    assert ws.scalar("SELECT COUNT(*) FROM pseudo_labels WHERE selected=1") == 0


def test_human_decisions_override_the_policy(pool):
    ws, rid, items = pool
    record_decisions(ws, [items[7]], "accept", reviewer="ann")             # least confident
    record_decisions(ws, [items[0]], "reject", reviewer="ann")             # most confident
    record_decisions(ws, [items[5]], "relabel", label="equipment", reviewer="ann")
    record_decisions(ws, [items[1]], "reject", reviewer="ann")
    record_decisions(ws, [items[1]], "clear", reviewer="ann")              # back to the policy
    result = compute_selection(ws, rid, Plain(policy="percentile", theta=50))
    assert chosen(result, items) == [1, 2, 3, 5, 7]
    assert result.source[0] == "rejected" and result.source[7] == "accepted"
    assert result.source[5] == "relabeled" and result.labels[5] == "equipment"
    assert result.source[1] == "policy"
    summary = result.summary()
    assert summary["human"] == {"accepted": 1, "rejected": 1, "relabeled": 1}
    assert summary["by_class"] == {"billing": 3, "outage": 1, "equipment": 1}


def test_leakage_flags_exclude_items_unless_accepted(pool):
    ws, rid, items = pool
    other = add_round(ws, 2)
    with ws.transaction() as conn:
        conn.executemany("INSERT INTO flags(round_id, item_id, kind, detail) VALUES(?,?,?,?)",
                         [(rid, items[0], "near_duplicate_test", "{}"),
                          (rid, items[1], "near_duplicate_test", "{}"),
                          (rid, items[6], "near_duplicate_test", "{}"),
                          (other, items[2], "near_duplicate_test", "{}")])  # another round
    record_decisions(ws, [items[1]], "accept", reviewer="ann")
    result = compute_selection(ws, rid, Plain(policy="percentile", theta=50))
    assert chosen(result, items) == [1, 2, 3]
    assert result.source[0] == "leakage" and result.source[1] == "accepted"
    assert result.source[6] == "leakage"    # not chosen anyway, but marked with its flag
    assert result.summary()["excluded_leakage"] == 2
    assert result.source[2] == "policy" and result.selected[2]


def test_apply_selection_writes_selected(pool):
    ws, rid, items = pool
    summary = apply_selection(ws, rid, Plain(policy="percentile", theta=50))
    assert summary["selected"] == 4

    def stored():
        return [r[0] for r in ws.query("SELECT item_id FROM pseudo_labels WHERE round_id=? "
                                       "AND selected=1 ORDER BY item_id", (rid,))]

    assert stored() == items[:4]
    apply_selection(ws, rid, Plain(policy="agreement_only"))
    assert stored() == [items[k] for k in (0, 2, 4, 7, 8)]   # the earlier choice is replaced
    assert applied_selection(ws, rid) == Plain(policy="agreement_only")


# -- the training set ----------------------------------------------------------------------
def test_training_items_are_gold_selected_pseudo_and_human_labels(pool):
    ws, rid, items = pool
    apply_selection(ws, rid, Plain(policy="percentile", theta=50))   # items 0..3
    unlabeled = ids_of(ws, "unlabeled")
    direct = unlabeled[15]                                   # never pseudo-labeled
    record_decisions(ws, [direct], "relabel", label="equipment", reviewer="ann")
    record_decisions(ws, [items[1]], "relabel", label="outage", reviewer="ann")
    record_decisions(ws, [items[2]], "reject", reviewer="ann")   # after the selection ran
    # Round 2 selects another item, and item 3 again with a new label.
    second = add_round(ws, 2)
    add_pseudo(ws, second, [(unlabeled[12], "equipment", "agreed", 0.1, 0.1, 1),
                            (items[3], "outage", "agreed", 0.1, 0.1, 1)])

    def by_item(up_to):
        return {it["item_id"]: it for it in training_items(ws, up_to)}

    first = by_item(1)
    gold = ids_of(ws, "labeled")
    assert [i for i in first if first[i]["source"] == "gold"] == gold
    assert all(first[i]["answer"] in ("billing", "outage", "equipment") for i in first)
    assert first[items[0]]["source"] == "pseudo" and first[items[0]]["answer"] == "billing"
    assert first[items[1]]["source"] == "human" and first[items[1]]["answer"] == "outage"
    assert items[2] not in first                               # rejected: never trained on
    assert first[items[3]]["answer"] == "billing"
    assert first[direct]["source"] == "human" and first[direct]["answer"] == "equipment"
    assert unlabeled[12] not in first                          # a later round
    assert not set(items[4:]) & set(first)                     # not selected
    assert len(first) == len(gold) + 4
    assert first[gold[0]]["options"] == ["billing", "outage", "equipment"]

    later = by_item(2)
    assert later[unlabeled[12]]["source"] == "pseudo"
    assert later[items[3]]["answer"] == "outage"               # the latest round's label
    assert items[2] not in later
    assert len(later) == len(first) + 1


def test_the_warmup_trains_on_gold_and_human_labels_never_on_pseudo_labels(pool):
    ws, rid, items = pool
    apply_selection(ws, rid, Plain(policy="percentile", theta=100))  # every pseudo-label
    direct = ids_of(ws, "unlabeled")[15]                     # never pseudo-labeled
    record_decisions(ws, [direct], "relabel", label="equipment", reviewer="ann")
    record_decisions(ws, [items[1]], "relabel", label="outage", reviewer="ann")
    record_decisions(ws, [items[0]], "accept", reviewer="ann")  # still a pseudo-label
    warmup = {it["item_id"]: it for it in warmup_items(ws)}
    gold = ids_of(ws, "labeled")
    assert sorted(warmup) == sorted(gold + [direct, items[1]])
    assert warmup[direct]["answer"] == "equipment" and warmup[direct]["source"] == "human"
    assert warmup[items[1]]["answer"] == "outage"
    record_decisions(ws, [direct], "clear", reviewer="ann")  # a cleared label is gone
    assert direct not in {it["item_id"] for it in warmup_items(ws)}


def test_a_rejection_outlasts_an_earlier_rounds_selection(pool):
    ws, rid, items = pool
    apply_selection(ws, rid, Plain(policy="percentile", theta=50))
    second = add_round(ws, 2)
    add_pseudo(ws, second, [(items[0], "billing", "agreed", 0.9, 0.9)])
    record_decisions(ws, [items[0]], "reject", reviewer="ann")
    apply_selection(ws, second, Plain(policy="percentile", theta=50))
    assert items[0] not in {it["item_id"] for it in training_items(ws, 2)}


def test_calibration_items_never_enter_training(filled_workspace):
    ws = filled_workspace
    hold_out(ws, CalibrationConfig(fraction=0.25, min_per_class=1))
    calibration = ids_of(ws, "calibration")
    rid = add_round(ws)
    add_pseudo(ws, rid, [(i, "billing", "agreed", 0.1, 0.1) for i in calibration]
               + [(ids_of(ws, "unlabeled")[0], "billing", "agreed", 0.2, 0.2)])
    result = compute_selection(ws, rid, Plain(policy="percentile", theta=100))
    assert sorted(result.splits) == ["calibration"] * 3 + ["unlabeled"]
    assert result.selected.all() and result.summary()["pool"] == 1
    apply_selection(ws, rid, Plain(policy="percentile", theta=100))
    sources = [it["source"] for it in training_items(ws, 1)]
    assert sources.count("gold") == 9 and sources.count("pseudo") == 1
    assert not set(calibration) & {it["item_id"] for it in training_items(ws, 1)}


# -- calibration ---------------------------------------------------------------------------
def labeled_by_class(ws, split="labeled") -> dict[str, int]:
    return {r[0]: r[1] for r in ws.query(
        "SELECT answer, COUNT(*) FROM items WHERE split=? GROUP BY answer", (split,))}


def test_hold_out_is_stratified_and_idempotent(filled_workspace):
    ws = filled_workspace
    assert hold_out(ws, CalibrationConfig(fraction=0.5, min_per_class=1)) == 6
    assert labeled_by_class(ws, "calibration") == {"billing": 2, "outage": 2, "equipment": 2}
    assert labeled_by_class(ws) == {"billing": 2, "outage": 2, "equipment": 2}
    held = ids_of(ws, "calibration")
    # Once held out, never again: another config changes nothing.
    assert hold_out(ws, CalibrationConfig(fraction=0.25, min_per_class=1, seed=5)) == 6
    assert ids_of(ws, "calibration") == held
    assert ws.split_counts()["labeled"] == 6


def test_hold_out_follows_min_per_class_and_leaves_one_per_class(workspace):
    workspace.set_task(TaskConfig(kind="choice", labels=["a", "b", "c", "d"]))
    sizes = {"a": 1, "b": 2, "c": 3, "d": 10}
    with workspace.transaction() as conn:
        for label, size in sizes.items():
            for n in range(size):
                conn.execute("INSERT INTO items(external_id, split, question, answer) "
                             "VALUES(?,?,?,?)", (f"{label}{n}", "labeled", f"q {label}{n}", label))
    assert hold_out(workspace, CalibrationConfig(fraction=0.1, min_per_class=3)) == 0 + 1 + 1 + 3
    assert labeled_by_class(workspace, "calibration") == {"b": 1, "c": 1, "d": 3}
    assert labeled_by_class(workspace) == {"a": 1, "b": 1, "c": 2, "d": 7}


def test_hold_out_with_fraction_zero_holds_nothing(filled_workspace):
    assert hold_out(filled_workspace, CalibrationConfig(fraction=0.0)) == 0
    assert filled_workspace.split_counts()["calibration"] == 0


def test_calibration_report_all_vs_selected_and_curve(filled_workspace):
    ws = filled_workspace
    hold_out(ws, CalibrationConfig(fraction=0.5, min_per_class=2))
    rows = ws.query("SELECT id, answer FROM items WHERE split='calibration' ORDER BY id")
    assert len(rows) == 6
    wrong = {"billing": "outage", "outage": "equipment", "equipment": "billing"}
    # (correct?, entropy, selected, path) per calibration item
    plan = [(True, 0.1, 1, "agreed"), (True, 0.2, 1, "agreed"), (False, 0.3, 1, "reflected"),
            (True, 0.4, 0, "agreed"), (False, 0.5, 0, "reflected"), (True, None, 0, "reflected")]
    rid = add_round(ws)
    add_pseudo(ws, rid, [(r["id"], r["answer"] if ok else wrong[r["answer"]], path, e, 0.0, sel)
                         for r, (ok, e, sel, path) in zip(rows, plan)]
               # an unlabeled item's pseudo-label is no calibration evidence
               + [(ids_of(ws, "unlabeled")[0], "billing", "agreed", 0.05, 0.0, 1)])
    report = calibration_report(ws, rid)
    assert report["n"] == 6
    assert (report["all"]["n"], report["all"]["correct"]) == (6, 4)
    assert report["all"]["precision"] == pytest.approx(4 / 6)
    assert (report["selected"]["n"], report["selected"]["correct"]) == (3, 2)
    assert report["selected"]["precision"] == pytest.approx(2 / 3)
    assert report["agreed"]["precision"] == pytest.approx(1.0)
    assert (report["reflected"]["n"], report["reflected"]["correct"]) == (3, 1)
    assert report["coverage_selected"] == pytest.approx(0.5)
    low, high = report["selected"]["interval"]
    assert 0 <= low < 2 / 3 < high <= 1
    curve = report["curve"]
    assert curve["threshold"] == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5])
    assert curve["count"] == [1, 2, 3, 4, 5]
    assert curve["precision"] == pytest.approx([1, 1, 2 / 3, 3 / 4, 3 / 5])
    # Coverage is a share of the whole slice (the item with no entropy is never kept), as
    # coverage_selected is.
    assert curve["coverage"] == pytest.approx([1 / 6, 2 / 6, 3 / 6, 4 / 6, 5 / 6])
    json.dumps(report)   # stored and shown as is

    # By training weight (confidence weighting): NULL counts in full; the wrong selected
    # label at 0.2 weighs less than the two right ones at 1 and 0.8.
    assert report["selected_weighted"] == pytest.approx({"weight": 3.0, "precision": 2 / 3})
    ws.conn.execute("UPDATE pseudo_labels SET weight=0.2 WHERE round_id=? AND item_id=?",
                    (rid, rows[2]["id"]))
    ws.conn.execute("UPDATE pseudo_labels SET weight=0.8 WHERE round_id=? AND item_id=?",
                    (rid, rows[1]["id"]))
    weighted = calibration_report(ws, rid)["selected_weighted"]
    assert weighted["weight"] == pytest.approx(2.0)
    assert weighted["precision"] == pytest.approx(1.8 / 2.0)

    by_option = calibration_report(ws, rid, score="option_entropy")
    assert by_option["curve"]["count"] == [6] and by_option["curve"]["precision"] == \
        pytest.approx([4 / 6])
    assert calibration_report(ws, add_round(ws, 2)) == {"n": 0}


# -- guards --------------------------------------------------------------------------------
def test_validate_training_set_lists_every_malformed_example(task):
    options = ["billing", "outage", "equipment"]
    examples = [
        {"item_id": 1, "answer": "billing", "options": options, "source": "gold"},
        {"item_id": 2, "answer": "", "options": options, "source": "pseudo"},
        {"item_id": 3, "answer": None, "options": options, "source": "human"},
        {"item_id": 4, "answer": "router", "options": options, "source": "pseudo"},
        {"item_id": 5, "answer": "  ", "options": options, "source": "pseudo"},
        {"item_id": 6, "answer": "outage", "options": options, "source": "human"},
    ]
    with pytest.raises(SemiEvolError) as caught:
        validate_training_set(task, examples)
    problems = caught.value.problems
    assert len(problems) == 4
    assert [p.split(" ")[1] for p in problems] == ["2", "3", "4", "5"]
    assert "(human): empty answer" in problems[1]
    assert "'router' is not one of its options" in problems[2]
    assert "4 training example(s)" in str(caught.value)
    validate_training_set(task, [examples[0], examples[5]])        # well-formed: no error
    open_task = TaskConfig(kind="open")
    validate_training_set(open_task, [dict(examples[3], options=None)])
    with pytest.raises(SemiEvolError):
        validate_training_set(open_task, [dict(examples[1], options=None)])


# -- export --------------------------------------------------------------------------------
def test_export_dataset_writes_chat_jsonl_and_csv(pool, tmp_path):
    ws, rid, items = pool
    apply_selection(ws, rid, Plain(policy="percentile", theta=50))
    record_decisions(ws, [items[1]], "relabel", label="outage", reviewer="ann")
    paths = export_dataset(ws, 1, tmp_path / "out")
    trained = training_items(ws, 1)
    assert len(trained) == 12 + 4
    # The calibration labels are the user's gold answers too: the export carries them, marked.
    expected = trained + calibration_items(ws)
    assert paths["trained"] == len(trained) and paths["calibration"] == len(calibration_items(ws))

    lines = paths["jsonl"].read_text(encoding="utf-8").splitlines()
    assert len(lines) == len(expected)
    rows = [json.loads(line) for line in lines]
    external = {r[0]: r[1] for r in ws.query("SELECT id, external_id FROM items")}
    for row, item in zip(rows, expected):
        assert [m["role"] for m in row["messages"]] == ["system", "user", "assistant"]
        assert row["messages"][1]["content"] == item["question"]
        assert row["messages"][2]["content"] == item["answer"]
        assert row["id"] == external[item["item_id"]] and row["source"] == item["source"]
    assert [r["source"] for r in rows].count("gold") == 12
    assert [r["source"] for r in rows].count("pseudo") == 3
    assert [r["source"] for r in rows].count("human") == 1

    with paths["csv"].open(encoding="utf-8", newline="") as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(expected)
    names = user_columns(ws)  # the CSV speaks the user's column names
    assert [r[names["id"]] for r in table] == [r["id"] for r in rows]
    assert [r["source"] for r in table] == [r["source"] for r in rows]
    assert [r[names["answer"]] for r in table] == [it["answer"] for it in expected]
    assert json.loads(table[0][names["options"]]) == ["billing", "outage", "equipment"]
    # The Parquet file: the same rows, typed (options as a list), for pandas and datasets.
    import pandas as pd

    frame = pd.read_parquet(paths["parquet"])
    assert list(frame[names["id"]]) == [r["id"] for r in rows]
    assert list(frame[names["answer"]]) == [it["answer"] for it in expected]
    assert list(frame[names["options"]].iloc[0]) == ["billing", "outage", "equipment"]
    assert list(frame["source"]) == [r["source"] for r in rows]
    from datasets import load_from_disk  # and an HF datasets folder, with a dataset card
    from huggingface_hub import DatasetCard

    hub = load_from_disk(str(paths["dataset"]))
    assert hub[names["answer"]] == [it["answer"] for it in expected]
    assert hub[names["id"]] == [r["id"] for r in rows]
    card = DatasetCard.load(paths["dataset"] / "README.md")
    assert "semievol" in card.data.tags and "text-classification" in card.data.task_categories
    assert np.all([r[names["answer"]] in ("billing", "outage", "equipment") for r in table])


def test_the_class_floor_keeps_every_class_of_the_pool(pool):
    ws, rid, items = pool
    plain = compute_selection(ws, rid, Plain(policy="percentile", theta=50)).summary()
    assert plain["by_class"]["outage"] == 0  # the global percentile drops a whole class
    floored = compute_selection(ws, rid, SelectionConfig(policy="percentile", theta=50,
                                                         class_floor=0.5))
    summary = floored.summary()
    assert summary["by_class"] == {"billing": 4, "outage": 2, "equipment": 0}
    assert summary["pool_by_class"] == {"billing": 4, "outage": 4, "equipment": 1}
    # The floor adds a class's most confident items: outage's two lowest entropies.
    assert chosen(floored, items) == [0, 1, 2, 3, 4, 5]
    # An item without an entropy is never added (equipment's only item has none).
    assert SelectionConfig().class_floor == 0.1  # on by default


def test_a_saved_selection_means_what_it_meant(pool):
    """A selection applied before the class floor existed has none."""
    ws, rid, items = pool
    ws.conn.execute("INSERT INTO selections(round_id, config, applied_at) VALUES(?, ?, 0)",
                    (rid, '{"policy": "percentile", "theta": 50.0, "threshold": null, '
                          '"score": "nll"}'))
    assert applied_selection(ws, rid).class_floor == 0.0


# -- teach: what the student can still learn ------------------------------------------------
@pytest.fixture
def taught_pool(pool):
    """The pool's first four items (billing) with the student's probability of the label and
    the other collaborators' distributions: A the reference is sure and the student is not;
    B the student is surer than the reference; C a reference collaborator prefers outage;
    D no student probability."""
    ws, rid, items = pool
    student = {0: 0.3, 1: 0.95, 2: 0.2, 3: None}
    reference = {0: ([0.9, 0.1, 0.0], [0.8, 0.2, 0.0]), 1: ([0.9, 0.1, 0.0], [0.9, 0.1, 0.0]),
                 2: ([0.9, 0.1, 0.0], [0.4, 0.6, 0.0]), 3: ([0.9, 0.1, 0.0], [0.9, 0.1, 0.0])}
    rows = []
    with ws.transaction() as conn:
        for n in range(4):
            conn.execute("UPDATE pseudo_labels SET probability=? WHERE round_id=? AND item_id=?",
                         (student[n], rid, items[n]))
            own = [student[n] or 0.5, 1 - (student[n] or 0.5), 0.0]
            for c, p in enumerate([own, *reference[n]]):
                rows.append((rid, items[n], c, f"t{n}{c}", "billing", json.dumps(p)))
        conn.executemany("INSERT INTO responses(round_id, item_id, collaborator, cache_key, "
                         "answer, option_probs) VALUES(?,?,?,?,?,?)", rows)
    return ws, rid, items


def test_selection_rows_read_the_reference_and_the_reducible_loss(taught_pool):
    from semievol.curation.selection_state import selection_rows

    ws, rid, items = taught_pool
    rows = {r["item_id"]: r for r in selection_rows(ws, rid)}
    a, b, c, d = (rows[i] for i in items[:4])
    assert a["reference_p"] == pytest.approx(0.85) and a["reference_agrees"]
    assert a["reducible"] == pytest.approx(np.log(0.85 / 0.3))
    assert b["reducible"] < 0 and b["reference_agrees"]
    assert not c["reference_agrees"]
    assert np.isnan(d["reducible"])
    assert a["own"] == "outage" and b["own"] == "billing"  # the student's likeliest option
    # items without responses: no reference, nothing to teach
    assert np.isnan(rows[items[5]]["reference_p"]) and not rows[items[5]]["reference_agrees"]


def test_the_teach_policy_keeps_only_what_the_student_can_learn(taught_pool):
    ws, rid, items = taught_pool
    result = compute_selection(ws, rid, Plain(policy="teach", theta=100))
    assert chosen(result, items) == [0]
    student = result.summary()["student"]
    assert student == {"known": 1, "same": 0, "share": 0.0}  # it answers outage on its own
    # entropy's selection, by contrast: what the student already says
    entropy = compute_selection(ws, rid, Plain(policy="percentile", theta=25))
    assert chosen(entropy, items) == [0, 1]


def test_the_teach_policy_is_refused_for_an_open_task(pool):
    ws, rid, _ = pool
    ws.set_task(TaskConfig(kind="open"))
    with pytest.raises(SemiEvolError, match="teach policy reads"):
        compute_selection(ws, rid, Plain(policy="teach"))


def test_compare_policies_puts_every_policy_side_by_side(taught_pool):
    ws, rid, items = taught_pool
    result = compute_selection(ws, rid, Plain(policy="teach", theta=100), compare=True)
    rows = {r["policy"]: r for r in result.comparison}
    # absolute needs a threshold, so it is left out
    assert list(rows) == ["percentile", "per_class", "agreement_only", "teach"]
    assert rows["teach"]["current"] and not rows["percentile"]["current"]
    assert rows["teach"]["selected"] == 1 and rows["teach"]["describe"] == "teach θ=100 (nll)"
    assert rows["percentile"]["selected"] == 8  # theta 100 keeps every finite entropy
    assert rows["teach"]["student"]["same"] == 0
    with_threshold = compute_selection(ws, rid, Plain(policy="absolute", threshold=0.35),
                                       compare=True).comparison
    assert [r["policy"] for r in with_threshold][3] == "absolute"
    assert next(r for r in with_threshold if r["policy"] == "absolute")["selected"] == 3


def test_confidence_weighting_carries_to_the_training_rows(taught_pool):
    from semievol.curation.training_set import freeze, frozen_items, live_training_items

    ws, rid, items = taught_pool
    config = Plain(policy="percentile", theta=100, weighting="confidence")
    assert config.describe() == "percentile θ=100 (nll, weighted by confidence)"
    record_decisions(ws, [items[1]], "accept", reviewer="r")
    result = compute_selection(ws, rid, config)
    weights = dict(zip(result.item_ids, result.weights))
    # item A: collaborators 0.3 (the student), 0.9, 0.8 of billing -> 2/3
    assert weights[items[0]] == pytest.approx((0.3 + 0.9 + 0.8) / 3)
    assert weights[items[1]] == 1.0       # accepted by a person: in full
    assert weights[items[5]] == 0.5       # no distributions: the agreement share (reflected)
    apply_selection(ws, rid, config)
    stored = dict(ws.query("SELECT item_id, weight FROM pseudo_labels WHERE round_id=?",
                           (rid,)))
    assert stored[items[0]] == pytest.approx(2 / 3) and stored[items[1]] is None
    live = {it["item_id"]: it["weight"] for it in live_training_items(ws, 1)}
    assert live[items[0]] == pytest.approx(2 / 3) and live[items[1]] == 1.0
    assert all(w == 1.0 for i, w in live.items() if i not in items)  # gold in full
    freeze(ws, rid, live_training_items(ws, 1))
    frozen = {it["item_id"]: it["weight"] for it in frozen_items(ws, 1)}
    assert frozen == pytest.approx(live)
    # without weighting, every weight is the full one again
    with ws.transaction() as conn:
        conn.execute("UPDATE rounds SET final_adapter=NULL WHERE id=?", (rid,))
    apply_selection(ws, rid, Plain(policy="percentile", theta=100))
    assert ws.scalar("SELECT COUNT(*) FROM pseudo_labels WHERE weight IS NOT NULL") == 0


def test_a_served_collaborator_is_the_reference_when_there_is_one(taught_pool):
    """Item C: collaborator 2 prefers outage; made the round's served collaborator, it is
    the whole reference, so C is no longer agreed on billing and A's reference is its 0.4."""
    from semievol.config import CollaboratorConfig, RoundConfig, ServerConfig
    from semievol.curation.selection_state import selection_rows
    from semievol.saved_config import to_json

    ws, rid, items = taught_pool
    config = RoundConfig(servers=[ServerConfig(name="big")], collaborators=[
        CollaboratorConfig("warmup", 0, 1.0, 0), CollaboratorConfig("warmup", 3, 1.0, 1),
        CollaboratorConfig("base", 0, 0.0, 2, server="big")])
    with ws.transaction() as conn:
        conn.execute("UPDATE rounds SET config=? WHERE id=?", (to_json(config), rid))
    rows = {r["item_id"]: r for r in selection_rows(ws, rid)}
    assert rows[items[0]]["reference_p"] == pytest.approx(0.8)  # collaborator 2 alone
    assert not rows[items[2]]["reference_agrees"]
    assert rows[items[1]]["reference_agrees"] and rows[items[1]]["reference_p"] == 0.9
