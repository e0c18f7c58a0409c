"""A review-first round on the tiny model, through the same path as the CLI (launch.start
in the foreground, then execute): it stops awaiting review, trains when told to on a
frozen training set, and an unattended round runs to the end. Plus the evidence guard that
refuses training until it is confirmed (SQL-built calibration slice, no model)."""

from __future__ import annotations

import json

import pytest
from conftest import add_pseudo, add_round, fake_adapter, ids_of

from semievol.config import (CalibrationConfig, CollaboratorConfig, ModelConfig, RoundConfig,
                             SelectionConfig, TrainConfig)
from semievol.curation.calibration import hold_out
from semievol.curation.decisions import record_decisions
from semievol.curation.selection_state import apply_selection
from semievol.curation.training_set import live_training_items, training_items
from semievol.errors import SemiEvolError
from semievol.export.dataset import export_dataset
from semievol.rounds.guards import collapse_message, confirmations, training_warnings
from semievol.rounds.record import get_round
from semievol.runs import launch


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny(model_dir) -> RoundConfig:
    return RoundConfig(model=ModelConfig(name_or_path=str(model_dir), dtype="float32"),
                       train=TrainConfig(max_steps=2, batch_size=4),
                       calibration=CalibrationConfig(fraction=0.25, min_per_class=1),
                       collaborators=[CollaboratorConfig("base", 0, 1.0, 0),
                                      CollaboratorConfig("warmup", 2, 1.0, 1)])


def run(ws, kind, **options) -> tuple[dict, int]:
    """A foreground run, as `semievol KIND WS` does it: (each step's summary, run id)."""
    run_id = launch.start(ws, kind, background=False, **options)
    return launch.execute(ws, run_id), run_id


def test_a_round_waits_for_review_then_trains_on_a_frozen_set(filled_workspace, fake_embedder,
                                                               tiny_model_dir, monkeypatch):
    ws = filled_workspace
    monkeypatch.setattr("semievol.rounds.steps._embedder", lambda config, embedder: fake_embedder)
    results, _ = run(ws, "round", config=tiny(tiny_model_dir))
    assert list(results) == ["warmup", "label", "select"]
    rnd = get_round(ws, 1)
    assert rnd.status == "awaiting_review" and rnd.final_adapter is None
    # The warm-up was measured on the calibration slice before labeling (the collapse check).
    assert ws.scalar("SELECT COUNT(*) FROM evaluations WHERE split='calibration' AND "
                     "model='warmup'") == 1

    pool = ids_of(ws, "unlabeled")
    labeled = {r[0] for r in ws.query("SELECT item_id FROM pseudo_labels WHERE round_id=?",
                                      (rnd.id,))}
    record_decisions(ws, [pool[0]], "relabel", label="billing", reviewer="ann")
    before = [(it["item_id"], it["answer"], it["source"]) for it in training_items(ws, 1)]
    assert ("human" in {s for _, _, s in before}) and (pool[0], "billing", "human") in before

    results, _ = run(ws, "train", confirm="ann")
    assert list(results) == ["train", "evaluate"]
    rnd = get_round(ws, 1)
    assert rnd.status == "done" and rnd.final_adapter
    frozen = [(it["item_id"], it["answer"], it["source"]) for it in training_items(ws, 1)]
    assert frozen == before
    # A decision made after training belongs to the next round: the trained round's numbers
    # and export stay what it trained on.
    trained_pseudo = next(i for i, _, s in frozen if s == "pseudo")
    record_decisions(ws, [trained_pseudo], "reject", reviewer="ann")
    assert [(it["item_id"], it["answer"], it["source"]) for it in training_items(ws, 1)] == frozen
    assert trained_pseudo not in {it["item_id"] for it in live_training_items(ws, 2)}
    paths = export_dataset(ws, 1, ws.path / "exports")
    assert paths["trained"] == len(frozen)  # plus the calibration labels, marked as such
    sources = [json.loads(line)["source"] for line in paths["jsonl"].open()]
    assert sum(s != "calibration" for s in sources) == len(frozen)
    assert labeled  # the round pseudo-labeled something to review


def test_an_unattended_round_runs_every_step(filled_workspace, fake_embedder, tiny_model_dir,
                                             monkeypatch):
    ws = filled_workspace
    monkeypatch.setattr("semievol.rounds.steps._embedder", lambda config, embedder: fake_embedder)
    results, run_id = run(ws, "round", config=tiny(tiny_model_dir), review=False)
    assert list(results) == ["warmup", "label", "select", "train", "evaluate"]
    assert get_round(ws, 1).status == "done"
    from semievol.runs import jobs
    assert jobs.get_run(ws, run_id)["request"]["confirm"] == "unattended (no review)"


def test_training_is_refused_while_the_evidence_warns_until_confirmed(filled_workspace):
    ws = filled_workspace
    hold_out(ws, CalibrationConfig(fraction=0.5, min_per_class=1))
    rid = add_round(ws)
    calibration = {r[0]: r[1] for r in ws.query(
        "SELECT id, answer FROM items WHERE split='calibration'")}
    unlabeled = ids_of(ws, "unlabeled")[:6]
    wrong = {"billing": "outage", "outage": "equipment", "equipment": "billing"}
    # On the calibration slice the confident half is wrong, the rest right: selecting the
    # confident half makes the pseudo-labels worse, and the pool's equipment items are all
    # in the uncertain half (the selection drops that class).
    rows = [(i, wrong[a], "agreed", 0.1 * k, 0.1) for k, (i, a) in enumerate(calibration.items())
            if k % 2 == 0]
    rows += [(i, a, "agreed", 5.0 + k, 0.1) for k, (i, a) in enumerate(calibration.items())
             if k % 2 == 1]
    rows += [(i, ["billing", "outage"][k % 2], "agreed", 0.05, 0.1)
             for k, i in enumerate(unlabeled[:4])]
    rows += [(i, "equipment", "agreed", 9.0, 0.1) for i in unlabeled[4:]]
    add_pseudo(ws, rid, rows)
    ws.conn.execute("UPDATE rounds SET warmup_adapter=?, status='awaiting_review' WHERE id=?",
                    (fake_adapter(ws, "adapters/w"), rid))
    apply_selection(ws, rid, SelectionConfig(policy="percentile", theta=50))
    kinds = {w["kind"] for w in training_warnings(ws, rid)}
    assert {"selection_no_better", "class_dropped"} <= kinds
    # Keeping everything and weighting by confidence is judged by the precision by weight:
    # all of them are as precise as all of them, unless the weights favour the right ones.
    weighted = SelectionConfig(policy="percentile", theta=100, weighting="confidence")
    apply_selection(ws, rid, weighted)
    said = [w["message"] for w in training_warnings(ws, rid, selection=weighted)
            if w["kind"] == "selection_no_better"]
    assert len(said) == 1 and "confidence weights are not separating" in said[0]
    with ws.transaction() as conn:
        conn.executemany("UPDATE pseudo_labels SET weight=? WHERE round_id=? AND item_id=?",
                         [(0.1 if k % 2 == 0 else 0.9, rid, i)
                          for k, i in enumerate(calibration)])
    kinds = {w["kind"] for w in training_warnings(ws, rid, selection=weighted)}
    assert "selection_no_better" not in kinds
    apply_selection(ws, rid, SelectionConfig(policy="percentile", theta=50))
    before = ws.table_counts()
    with pytest.raises(SemiEvolError, match="evidence warns") as refused:
        launch.start(ws, "train", background=True)
    assert any("no better than all of them" in p for p in refused.value.problems)
    assert any("'equipment'" in p for p in refused.value.problems)
    assert ws.table_counts() == before  # refused before anything changed
    assert confirmations(ws, rid) == []


def test_collapse_is_read_from_the_predicted_distribution():
    report = {"n": 20, "split": "calibration", "predicted_distribution": {"No": 19, "Yes": 1},
              "per_class": {"No": {"support": 6}, "Yes": {"support": 14}}}
    assert "predicts 'No' for 19 of 20 calibration items (95%" in collapse_message(report, "X")
    fair = {**report, "per_class": {"No": {"support": 19}, "Yes": {"support": 1}}}
    assert collapse_message(fair, "X") is None  # that class is as frequent in the gold labels
    spread = {**report, "predicted_distribution": {"No": 12, "Yes": 8}}
    assert collapse_message(spread, "X") is None


def test_a_round_reported_to_tensorboard_reads_back(filled_workspace, fake_embedder,
                                                    tiny_model_dir, monkeypatch):
    """`report_to: tensorboard`: losses and learning rate per optimizer step and the test
    accuracy per model, read back with TensorBoard's own event reader."""
    import dataclasses

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ws = filled_workspace
    monkeypatch.setattr("semievol.rounds.steps._embedder", lambda config, embedder: fake_embedder)
    config = dataclasses.replace(tiny(tiny_model_dir), report_to="tensorboard")
    results, run_id = run(ws, "round", config=config, review=False)
    events = EventAccumulator(str(ws.path / "tensorboard" / "round1"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"warmup_loss", "warmup_learning_rate", "train_loss", "train_learning_rate"} <= tags
    from semievol.runs.jobs import run_metrics

    stored = [m["value"] for m in run_metrics(ws, run_id, "train_loss")]
    assert [e.value for e in events.Scalars("train_loss")] == pytest.approx(stored)
    assert [e.step for e in events.Scalars("warmup_loss")] == [1, 2]  # max_steps=2
    rates = [e.value for e in events.Scalars("train_learning_rate")]
    assert all(r > 0 for r in rates)
    evaluated = {k: v for k, v in results["evaluate"].items() if k != "regression"}
    for model, report in evaluated.items():
        split = report["split"]
        assert [e.value for e in events.Scalars(f"{split}/{model}_accuracy")] == \
            pytest.approx([report["accuracy"]])
    assert "config/text_summary" in events.Tags()["tensors"]  # the resolved config, as text


def test_a_round_reported_to_mlflow_reads_back(filled_workspace, fake_embedder,
                                               tiny_model_dir, monkeypatch):
    """`report_to: mlflow`: one run per round in the workspace's SQLite store, read back with
    `mlflow.search_runs` and MLflow's client: the metrics per step, the resolved config as
    params, the adapters as artifacts in the workspace."""
    import dataclasses

    import mlflow
    from mlflow.tracking import MlflowClient

    from semievol.rounds.tracking import mlflow_name, mlflow_uri
    from semievol.runs.jobs import run_metrics

    ws = filled_workspace
    monkeypatch.setattr("semievol.rounds.steps._embedder", lambda config, embedder: fake_embedder)
    config = dataclasses.replace(tiny(tiny_model_dir), report_to="mlflow")
    results, run_id = run(ws, "round", config=config, review=False)
    mlflow.set_tracking_uri(mlflow_uri(ws))
    try:
        runs = mlflow.search_runs(experiment_names=[f"semievol:{ws.path.name}"])
    finally:
        mlflow.set_tracking_uri(None)
    assert len(runs) == 1 and runs.loc[0, "tags.semievol.round"] == "1"
    assert runs.loc[0, "status"] == "FINISHED"
    assert runs.loc[0, "params.train.learning_rate"] == str(config.train.learning_rate)
    assert runs.loc[0, "params.report_to"] == "mlflow"
    evaluated = {k: v for k, v in results["evaluate"].items() if k != "regression"}
    for model, report in evaluated.items():
        assert runs.loc[0, "metrics." + mlflow_name(f"{report['split']}/{model}_accuracy")] == \
            pytest.approx(report["accuracy"])
    client = MlflowClient(tracking_uri=mlflow_uri(ws))
    history = client.get_metric_history(runs.loc[0, "run_id"], "train_loss")
    stored = [m["value"] for m in run_metrics(ws, run_id, "train_loss")]
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == pytest.approx(stored)
    assert [m.step for m in client.get_metric_history(runs.loc[0, "run_id"],
                                                      "warmup_loss")] == [1, 2]
    artifacts = {a.path for a in client.list_artifacts(runs.loc[0, "run_id"], "adapters/final")}
    assert "adapters/final/adapter_model.safetensors" in artifacts
    assert (ws.path / "mlflow" / "mlflow.db").is_file()
    assert runs.loc[0, "artifact_uri"].startswith((ws.path / "mlflow" / "artifacts").as_uri())


def test_report_to_takes_only_what_is_supported():
    with pytest.raises(SemiEvolError, match="report to"):
        RoundConfig(report_to="wandb")
