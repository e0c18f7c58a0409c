"""A real SemiEvol round, in this process: tiny random model, fake embedder, real library.

Each test runs the steps it needs (a whole tiny round takes a few seconds) and checks what
the workspace stores, not only what the steps return: one test runs round 1 and the start of
round 2; the others check human decisions and the test-leakage guard after labeling.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import LABELED_TEXTS, LABELS, TEST_ROWS, UNLABELED_TEXTS, FakeEmbedder

from semievol.config import (CalibrationConfig, CollaboratorConfig, ModelConfig, RoundConfig,
                             SelectionConfig, TrainConfig)
from semievol.curation.decisions import record_decisions
from semievol.curation.pool import pool_item_ids
from semievol.curation.selection_state import compute_selection
from semievol.curation.training_set import training_items
from semievol.method.evaluate import stored_evaluation
from semievol.rounds import steps
from semievol.rounds.guards import leakage_flags
from semievol.rounds.record import get_round, open_round
from semievol.runs import jobs

COLLABORATORS = [CollaboratorConfig("base", 0, 1.0, 0),
                 CollaboratorConfig("warmup", 3, 1.0, 1),
                 CollaboratorConfig("warmup", 1, 1.0, 2)]
SMALL_TEAM = [CollaboratorConfig("base", 2, 1.0, 0), CollaboratorConfig("warmup", 0, 1.0, 1)]
"""Two collaborators over a few items, for the tests about what happens after labeling."""
MAX_STEPS = 2


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_config(model_dir: Path, **overrides) -> RoundConfig:
    return RoundConfig(model=ModelConfig(name_or_path=str(model_dir), dtype="float32"),
                       train=TrainConfig(max_steps=MAX_STEPS, batch_size=4, checkpoint_every=1),
                       calibration=CalibrationConfig(fraction=0.25, min_per_class=1),
                       collaborators=list(overrides.pop("collaborators", COLLABORATORS)),
                       **overrides)


def ids_of(ws, split: str) -> list[int]:
    return [r[0] for r in ws.query("SELECT id FROM items WHERE split=? ORDER BY id", (split,))]


def selected_ids(ws, round_id: int, split: str = "unlabeled") -> set[int]:
    return {r[0] for r in ws.query(
        "SELECT p.item_id FROM pseudo_labels p JOIN items i ON i.id = p.item_id "
        "WHERE p.round_id=? AND p.selected=1 AND i.split=?", (round_id, split))}


def label_and_select(ws, rnd, embedder):
    """warmup -> label -> select; returns the refreshed round."""
    steps.step_warmup(ws, rnd, embedder=embedder)
    rnd = get_round(ws, rnd.number)
    steps.step_label(ws, rnd)
    steps.step_select(ws, rnd, embedder=embedder)
    return get_round(ws, rnd.number)


def test_two_rounds_end_to_end(filled_workspace, fake_embedder, tiny_model_dir, monkeypatch):
    ws = filled_workspace
    labeled_before = ids_of(ws, "labeled")
    rnd = open_round(ws, tiny_config(tiny_model_dir))
    assert (rnd.number, rnd.status) == (1, "open")
    assert open_round(ws).id == rnd.id  # an unfinished round is reopened, not doubled

    # -- warm-up: calibration held out (stratified), not trained on, retrieval refreshed
    losses = []
    summary = steps.step_warmup(ws, rnd, embedder=fake_embedder,
                                 metric=lambda *point: losses.append(point))
    calibration = ids_of(ws, "calibration")
    labeled = ids_of(ws, "labeled")
    answers = Counter(r[0] for r in ws.query("SELECT answer FROM items WHERE split='calibration'"))
    assert answers == {label: 1 for label in LABELS}  # 25% of 4 per class, one of each
    assert sorted(calibration + labeled) == labeled_before
    assert summary["calibration_items"] == 3 and summary["examples"] == len(labeled) == 9
    rnd = get_round(ws, 1)
    warmup_dir = Path(rnd.warmup_adapter)
    assert warmup_dir == ws.path / "adapters" / "round1" / "warmup"
    assert (warmup_dir / "adapter_config.json").exists()
    assert not (warmup_dir / "checkpoint").exists()  # removed once training finished
    assert json.loads((warmup_dir / "semievol_config.json").read_text())["examples"] == 9
    trained = json.loads((warmup_dir / "training.json").read_text())
    assert trained["steps"] == MAX_STEPS and len(trained["losses"]) == MAX_STEPS
    # The metric callback got every step's loss and rate, under the step's names; nothing
    # was written to the store by itself.
    assert [(n, s) for n, s, _ in losses] == [
        (name, s + 1) for s in range(MAX_STEPS) for name in ("warmup_loss",
                                                             "warmup_learning_rate")]
    assert all(math.isfinite(v) for _, _, v in losses)
    assert ws.scalar("SELECT COUNT(*) FROM metrics") == 0
    # Every non-labeled item has k neighbours, drawn from the labeled items only: a held-out
    # calibration item is never shown as a demonstration.
    unlabeled = ids_of(ws, "unlabeled")
    per_item = dict(ws.query("SELECT item_id, COUNT(*) FROM neighbours GROUP BY item_id"))
    for item_id in unlabeled + calibration + ids_of(ws, "test"):
        assert per_item.get(item_id) == 3, item_id
    demo_splits = {r[0] for r in ws.query(
        "SELECT DISTINCT i.split FROM neighbours n JOIN items i ON i.id = n.neighbour_id")}
    assert demo_splits == {"labeled"}

    # -- label: items x collaborators responses, one pseudo-label per pool item
    pool = pool_item_ids(ws, rnd.number, rnd.config.unlabeled_limit)
    assert pool == unlabeled + calibration
    result = steps.step_label(ws, rnd)
    n = len(COLLABORATORS)
    assert (result["items"], result["computed"], result["cached"]) == (len(pool), len(pool) * n, 0)
    assert result["model_calls"] > 0
    assert ws.scalar("SELECT COUNT(*) FROM responses WHERE round_id=?", (rnd.id,)) == len(pool) * n
    by_item: dict[int, list] = {}
    for r in ws.query("SELECT item_id, collaborator, answer FROM responses WHERE round_id=? "
                      "ORDER BY collaborator", (rnd.id,)):
        by_item.setdefault(r["item_id"], []).append(r["answer"])
    assert sorted(by_item) == sorted(pool)
    assert all(len(a) == n and set(a) <= set(LABELS) for a in by_item.values())
    rows = ws.query("SELECT * FROM pseudo_labels WHERE round_id=?", (rnd.id,))
    assert sorted(r["item_id"] for r in rows) == sorted(pool)
    paths = Counter()
    for r in rows:
        given = by_item[r["item_id"]]
        unanimous = len(set(given)) == 1
        assert r["path"] == ("agreed" if unanimous else "reflected"), (r["item_id"], given)
        paths[r["path"]] += 1
        if unanimous:
            assert r["label"] == given[0] and r["reflection_text"] is None
        else:
            assert r["reflection_text"]  # the warm-up model's reflection is kept
        assert r["label"] in LABELS
        assert r["agreement"] == pytest.approx(max(Counter(given).values()) / n)
        assert math.isfinite(r["entropy"]) and r["entropy"] > 0
        assert 0 <= r["option_entropy"] <= math.log(len(LABELS)) + 1e-6
        assert 0 < r["probability"] <= 1  # the label's share of the option distribution
        assert r["selected"] == 0
    assert paths["reflected"] > 0
    assert (result["agreed"], result["reflected"]) == (paths["agreed"], paths["reflected"])

    # -- a second label is a cache hit: no model is even loaded
    def no_model(*args, **kwargs):
        raise AssertionError("a cached label step loaded a model")
    with monkeypatch.context() as patch:
        patch.setattr("semievol.model.local.load_backend", no_model)
        again = steps.step_label(ws, rnd)
    assert (again["computed"], again["cached"], again["model_calls"]) == (0, len(pool) * n, 0)
    assert (again["agreed"], again["reflected"], again["skipped"]) == (0, 0, len(pool))
    assert ws.scalar("SELECT COUNT(*) FROM responses WHERE round_id=?", (rnd.id,)) == len(pool) * n

    # -- select: what is stored is exactly compute_selection's result
    summary = steps.step_select(ws, rnd, embedder=fake_embedder)
    expected = compute_selection(ws, rnd.id, rnd.config.selection)
    chosen = {i for i, s in zip(expected.item_ids, expected.selected) if s}
    stored = {r[0] for r in ws.query("SELECT item_id FROM pseudo_labels WHERE round_id=? AND "
                                     "selected=1", (rnd.id,))}
    assert stored == chosen
    picked = selected_ids(ws, rnd.id)
    assert 0 < len(picked) < len(unlabeled) and summary["selected"] == len(picked)
    assert summary["flagged_leakage"] == 0 and summary["calibration"]["n"] == len(calibration)

    # -- train, as a recorded run: its metrics rows come from the callback
    run_id = jobs.register_run(ws, "train", round_id=rnd.id, pid=os.getpid())
    with jobs.run_context(ws, run_id) as run:
        summary = steps.step_train(ws, rnd, metric=run.metric, confirm="tester")
    # no calibration item is trained on
    assert summary["examples"] == {"gold": 9, "human": 0, "pseudo": len(picked)}
    metrics = jobs.run_metrics(ws, run.id, "train_loss")
    assert [m["step"] for m in metrics] == list(range(1, MAX_STEPS + 1))
    assert ws.scalar("SELECT COUNT(*) FROM metrics WHERE round_id=? AND name='train_loss'",
                     (rnd.id,)) == MAX_STEPS
    rnd = get_round(ws, 1)
    final_dir = Path(rnd.final_adapter)
    assert final_dir == ws.path / "adapters" / "round1" / "final"
    assert (final_dir / "adapter_config.json").exists()
    assert json.loads((final_dir / "semievol_config.json").read_text())["examples"] == \
        9 + len(picked)
    assert steps.step_train(ws, rnd) == {"skipped": True, "adapter": rnd.final_adapter}

    # -- evaluate: base, base+demos (no round), warm-up and round; the round is done
    results = steps.step_evaluate(ws, rnd)
    assert set(results) == {"base", "base+demos", "warmup", "round"}
    evaluations = {(r["round_id"], r["model"]): r for r in ws.query(
        "SELECT * FROM evaluations WHERE split='test'")}
    assert set(evaluations) == {(None, "base"), (None, "base+demos"), (rnd.id, "warmup"),
                                (rnd.id, "round")}
    for (_, model), r in evaluations.items():
        assert 0 <= r["accuracy"] <= 1 and results[model]["accuracy"] == r["accuracy"]
        assert len(json.loads(r["report"])["predictions"]) == len(TEST_ROWS)
    assert json.loads(evaluations[(None, "base+demos")]["report"])["demonstrations"] == 3
    first = get_round(ws, 1)
    assert first.status == "done"
    assert ws.scalar("SELECT finished_at FROM rounds WHERE id=?", (rnd.id,)) is not None

    # -- round 2 starts from round 1's adapter and leaves out what round 1 selected
    relabeled = min(set(unlabeled) - picked)  # a reviewer labels it between the rounds
    record_decisions(ws, [relabeled], "relabel", label=LABELS[0], reviewer="ann")
    second = open_round(ws)
    assert (second.number, second.status) == (2, "open") and second.id != first.id
    assert second.config == first.config  # no config given: the last round's is kept

    def no_training(*args, **kwargs):
        raise AssertionError("round 2's warm-up trained a new adapter")
    monkeypatch.setattr("semievol.training.finetune.train_lora", no_training)
    summary = steps.step_warmup(ws, second, embedder=fake_embedder)
    # It starts from round 1's best adapter on the test set (warm-up or trained).
    accuracy = {m: stored_evaluation(ws, first.id, m)["accuracy"] for m in ("warmup", "round")}
    best = "round" if accuracy["round"] >= accuracy["warmup"] else "warmup"
    assert (summary["from_round"], summary["from"]) == (1, best)
    assert summary["adapter"] == (first.final_adapter if best == "round" else first.warmup_adapter)
    second = get_round(ws, 2)
    assert second.warmup_adapter == summary["adapter"]
    assert not (ws.path / "adapters" / "round2").exists()
    assert ids_of(ws, "calibration") == calibration  # held out once, in round 1

    pool2 = pool_item_ids(ws, second.number, second.config.unlabeled_limit)
    assert pool2 == sorted(set(unlabeled) - picked - {relabeled}) + calibration
    # Its base collaborator asks exactly what round 1's asked: copied, not recomputed.
    result = steps.step_label(ws, second)
    n_warmup = sum(c.model == "warmup" for c in COLLABORATORS)
    assert (result["reused"], result["computed"]) == (len(pool2), n_warmup * len(pool2))
    base = {}
    for r in ws.query("SELECT round_id, item_id, answer FROM responses WHERE collaborator=0"):
        base.setdefault(r["round_id"], {})[r["item_id"]] = r["answer"]
    assert base[second.id] == {i: base[first.id][i] for i in pool2}
    entropies = [r[0] for r in ws.query("SELECT entropy FROM pseudo_labels WHERE round_id=?",
                                        (second.id,))]
    assert len(entropies) == len(pool2) and np.isfinite(entropies).all()

    # Round 2 trains on both rounds' selections (eq. 9); round 1's set is unchanged.
    steps.step_select(ws, second, embedder=fake_embedder)
    picked2 = selected_ids(ws, second.id)
    assert picked2 and not picked2 & picked
    sources = {it["item_id"]: it["source"] for it in training_items(ws, 2)}
    assert {i for i, s in sources.items() if s == "gold"} == set(labeled)
    assert {i for i, s in sources.items() if s == "pseudo"} == picked | picked2
    assert {i for i, s in sources.items() if s == "human"} == {relabeled}
    # Round 1's set is what it trained on: the relabel came after, so it counts for round 2.
    assert {it["item_id"] for it in training_items(ws, 1)} == set(labeled) | picked

    # Round 2's warm-up is round 1's adapter: its test report is inherited, not recomputed.
    from semievol.model.local import LazyBackend
    round1 = stored_evaluation(ws, first.id, best)
    warmup = LazyBackend(second.config.model, second.warmup_adapter)
    steps.step_evaluate(ws, get_round(ws, 2),
                         backends={"base": warmup, "warmup": warmup})
    assert warmup.calls == 0  # base reports are shared, the warm-up's inherited
    inherited = stored_evaluation(ws, second.id, "warmup")
    assert inherited["accuracy"] == round1["accuracy"]
    assert inherited["predictions"] == round1["predictions"]


def test_decisions_override_the_policy(filled_workspace, fake_embedder, tiny_model_dir):
    ws = filled_workspace
    config = tiny_config(tiny_model_dir, collaborators=SMALL_TEAM, unlabeled_limit=8)
    rnd = label_and_select(ws, open_round(ws, config), fake_embedder)
    pool = set(ids_of(ws, "unlabeled")[:8])
    picked = selected_ids(ws, rnd.id)
    left_out = sorted(pool - picked)
    assert picked and left_out
    rejected, relabeled = min(picked), left_out[0]
    pseudo = ws.scalar("SELECT label FROM pseudo_labels WHERE round_id=? AND item_id=?",
                       (rnd.id, relabeled))
    human = next(label for label in LABELS if label != pseudo)
    record_decisions(ws, [rejected], "reject", reviewer="ann", round_id=rnd.id)
    record_decisions(ws, [relabeled], "relabel", label=human, reviewer="bob", note="checked",
                     round_id=rnd.id)
    # The training set follows the decisions at once, before the selection is re-applied.
    items = {it["item_id"]: it for it in training_items(ws, rnd.number)}
    assert rejected not in items
    assert (items[relabeled]["answer"], items[relabeled]["source"]) == (human, "human")

    summary = steps.step_select(ws, rnd, embedder=fake_embedder)
    now_picked = selected_ids(ws, rnd.id)
    assert rejected not in now_picked and relabeled in now_picked
    assert now_picked == (picked - {rejected}) | {relabeled}
    assert summary["human"] == {"accepted": 0, "rejected": 1, "relabeled": 1}
    result = compute_selection(ws, rnd.id, rnd.config.selection)
    where = {i: k for k, i in enumerate(result.item_ids)}
    assert result.source[where[rejected]] == "rejected"
    assert (result.source[where[relabeled]], result.labels[where[relabeled]]) == \
        ("relabeled", human)

    items = {it["item_id"]: it for it in training_items(ws, rnd.number)}
    assert rejected not in items
    assert (items[relabeled]["answer"], items[relabeled]["source"]) == (human, "human")
    assert {i for i, it in items.items() if it["source"] == "pseudo"} == now_picked - {relabeled}
    assert not set(items) & set(ids_of(ws, "calibration"))


def test_near_duplicate_of_a_test_item_is_held_out(workspace, task, tmp_path, write_csv,
                                                   tiny_model_dir):
    from semievol.method.retrieval import index_workspace
    from semievol.workspace.imports import ColumnMapping, import_file

    leaked_text, _ = TEST_ROWS[3]
    rows = {
        "labeled": [{"id": f"L{c}{i}", "text": t, "label": label}
                    for c, (label, texts) in enumerate(LABELED_TEXTS.items())
                    for i, t in enumerate(texts)],
        "unlabeled": [{"id": f"U{i:02d}", "text": t, "label": ""}
                      for i, t in enumerate([leaked_text] + UNLABELED_TEXTS)],
        "test": [{"id": f"T{i}", "text": t, "label": label}
                 for i, (t, label) in enumerate(TEST_ROWS)]}
    for split, data in rows.items():
        path = write_csv(tmp_path / "files" / f"{split}.csv", data)
        import_file(workspace, path, split, task=task, mapping=ColumnMapping(
            question="text", id="id", answer=None if split == "unlabeled" else "label"))
    embedder = FakeEmbedder()
    index_workspace(workspace, embedder, k=3)
    ws = workspace
    leaked = ws.scalar("SELECT id FROM items WHERE external_id='U00'")
    test_twin = ws.scalar("SELECT id FROM items WHERE external_id='T3'")

    # theta 100: the policy alone would keep every pseudo-label.
    config = tiny_config(tiny_model_dir, selection=SelectionConfig(theta=100.0),
                         collaborators=SMALL_TEAM, unlabeled_limit=6)
    rnd = label_and_select(ws, open_round(ws, config), embedder)
    pool = ids_of(ws, "unlabeled")[:6]
    assert leaked in pool
    flags = leakage_flags(ws, rnd.id)
    assert [(f["item_id"], f["test_item"]) for f in flags] == [(leaked, test_twin)]
    assert flags[0]["similarity"] == pytest.approx(1.0, abs=1e-4)
    assert flags[0]["question"] == leaked_text
    picked = selected_ids(ws, rnd.id)
    assert leaked not in picked
    assert picked == set(pool) - {leaked}
    result = compute_selection(ws, rnd.id, rnd.config.selection)
    assert result.source[result.item_ids.index(leaked)] == "leakage"
    assert result.summary()["excluded_leakage"] == 1
    assert leaked not in {it["item_id"] for it in training_items(ws, rnd.number)}

    # A reviewer who looked at it may let it in; the flag stays visible.
    record_decisions(ws, [leaked], "accept", reviewer="ann", note="not the same ticket")
    summary = steps.step_select(ws, rnd, embedder=embedder)
    assert leaked in selected_ids(ws, rnd.id) and summary["flagged_leakage"] == 1
    assert [f["item_id"] for f in leakage_flags(ws, rnd.id)] == [leaked]
    assert leaked in {it["item_id"] for it in training_items(ws, rnd.number)}


def test_a_batch_reports_progress_as_its_requests_finish(filled_workspace, tiny_model_dir):
    """Labeling reports inside a batch of 64 items, not only after it: on a served model a
    batch is hundreds of requests, minutes without a word otherwise."""
    from semievol.method.collaborators import run_collaborators
    from semievol.model.local import load_backend
    from semievol.workspace.items import load_items, split_ids

    ws = filled_workspace
    team = [CollaboratorConfig("base", 0, 1.0, 0)]
    rnd = open_round(ws, tiny_config(tiny_model_dir, collaborators=team))
    items = load_items(ws, split_ids(ws, "unlabeled"))
    backend = load_backend(rnd.config.model, batch_size=4)
    seen = []
    run_collaborators(ws, rnd.id, items, team, {"base": backend}, ws.require_task(),
                      budget=512, progress=lambda done, total, message="": seen.append(done))
    assert len(items) < 64 and 0 < seen[0] < len(items), seen
    assert seen == sorted(seen) and seen[-1] == len(items)
