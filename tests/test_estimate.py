"""Time estimates: work counted from the workspace, speeds measured here, progress weighted
by the estimate, remaining time scaled by how the run is going."""

from __future__ import annotations

import pytest
from conftest import add_round

from semievol.config import CollaboratorConfig, ModelConfig, RoundConfig, TrainConfig


@pytest.fixture(autouse=True)
def machine_file(tmp_path, monkeypatch):
    """The machine-level speed file in a scratch folder (not the real cache)."""
    path = tmp_path / "throughput.json"
    monkeypatch.setattr("semievol.model.throughput._machine_file", lambda: path)
    return path


def _config(tiny_model_dir, **train) -> RoundConfig:
    return RoundConfig(model=ModelConfig(name_or_path=str(tiny_model_dir), dtype="float32"),
                       train=TrainConfig(batch_size=4, **{"min_steps": 0, **train}),
                       collaborators=[CollaboratorConfig("warmup", 0, 1.0, 0),
                                      CollaboratorConfig("base", 3, 1.0, 1)])


def test_a_new_round_is_estimated_step_by_step(filled_workspace, tiny_model_dir):
    from semievol.runs import launch

    found = launch.estimate(filled_workspace, "round", config=_config(tiny_model_dir),
                            review=False)
    assert set(found["steps"]) == {"warmup", "label", "select", "train", "evaluate"}
    assert all(found["steps"][s] > 0 for s in ("warmup", "label", "train", "evaluate"))
    assert found["steps"]["select"] == 0
    assert found["total"] == pytest.approx(sum(found["steps"].values()))
    assert "matmul peak" in found["line"] and "inference tokens/s" in found["line"]


def test_more_epochs_and_more_collaborators_cost_more(filled_workspace, tiny_model_dir):
    from semievol.runs import launch

    small = launch.estimate(filled_workspace, "round", config=_config(tiny_model_dir),
                            review=False)
    bigger = _config(tiny_model_dir, epochs=6.0)  # min_steps 0: the epochs decide
    bigger.collaborators.append(CollaboratorConfig("warmup", 3, 1.0, 2))
    large = launch.estimate(filled_workspace, "round", config=bigger, review=False)
    assert large["steps"]["warmup"] > small["steps"]["warmup"]
    assert large["steps"]["label"] > small["steps"]["label"]


def test_measured_speed_replaces_the_guess(filled_workspace, tiny_model_dir, machine_file):
    from semievol.model.throughput import record_speed
    from semievol.runs.estimate import speeds

    model = _config(tiny_model_dir).model
    record_speed(filled_workspace, model, "inference", 50_000, 10.0)
    found = speeds(filled_workspace, model)
    assert found["inference"] == pytest.approx(5000.0)
    assert found["inference_source"] == "measured in this workspace"
    assert "matmul peak" in found["training_source"]
    assert machine_file.exists()  # a new workspace on this machine starts from it


def test_answered_items_are_not_counted_again(filled_workspace, tiny_model_dir):
    from semievol.rounds.record import open_round
    from semievol.runs.work import step_work

    config = _config(tiny_model_dir)
    with filled_workspace.transaction():
        rnd = open_round(filled_workspace, config)
    before = step_work(filled_workspace, rnd, "label", ["label"])[1]
    pool = [r[0] for r in filled_workspace.query("SELECT id FROM items WHERE split='unlabeled'")]
    with filled_workspace.transaction() as conn:
        conn.executemany("INSERT INTO responses(round_id, item_id, collaborator, cache_key, "
                         "answer) VALUES(?,?,?,?,?)",
                         [(rnd.id, i, c, f"k{i}{c}", "billing") for i in pool for c in (0, 1)])
    after = step_work(filled_workspace, rnd, "label", ["label"])[1]
    assert 0 < after < before


def test_progress_is_weighted_by_the_estimate(workspace):
    from semievol.runs.jobs import register_run
    from semievol.runs.progress import RunHandle

    rid = add_round(workspace)
    run_id = register_run(workspace, "round", round_id=rid)
    handle = RunHandle(workspace, run_id, rid,
                       estimate={"steps": {"warmup": 10.0, "label": 90.0}, "total": 100.0})
    handle.begin_step(0, 2, "warmup")
    handle.begin_step(1, 2, "label")
    handle.progress(50, 100, "scoring")
    progress, message = workspace.query("SELECT progress, message FROM runs WHERE id=?",
                                        (run_id,))[0]
    assert progress == pytest.approx(0.55)  # 10 + half of 90, of 100
    assert message.startswith("step 2/2 label: scoring (") and "left)" in message


def test_remaining_time_follows_how_the_run_goes():
    from semievol.runs.progress import remaining

    estimate = {"steps": {"warmup": 100.0, "label": 300.0}}
    assert remaining(estimate, ["warmup"], "label", 0.0, 100.0) == pytest.approx(300.0)
    # Twice as slow as estimated so far: what is left is expected to be twice as long.
    assert remaining(estimate, ["warmup"], "label", 0.5, 500.0) == pytest.approx(300.0)
    assert remaining(None, [], None, 0.0, 0.0) is None


def test_a_step_with_a_served_part_records_no_local_speed(workspace, tiny_model_dir,
                                                         machine_file):
    """A served collaborator's requests are in the label step's wall time: recording that as
    this machine's inference speed once made the next estimate three times too long."""
    from types import SimpleNamespace

    from semievol.config import ServedConfig, ServerConfig
    from semievol.model.throughput import measured
    from semievol.rounds.steps import _remember_speed

    servers = [ServerConfig(name="llama", base_url="http://127.0.0.1:1/v1")]
    model = _config(tiny_model_dir).model
    configs = {
        "local": RoundConfig(model=model),
        "served collaborator": RoundConfig(model=model, servers=servers, collaborators=[
            CollaboratorConfig("warmup", 0, 1.0, 0),
            CollaboratorConfig("base", 0, 1.0, 1, "llama")]),
        "served evaluation": RoundConfig(model=model, servers=servers,
                                         served=ServedConfig(evaluation="llama"))}

    def recorded(kind: str, step: str) -> bool:
        workspace.set_setting("throughput", {})
        _remember_speed(workspace, SimpleNamespace(config=configs[kind]), step, {}, 10.0,
                      {"forward": 50_000, "train": 0})
        return "inference" in measured(workspace, model)[0]

    assert recorded("local", "label") and recorded("local", "evaluate")
    assert not recorded("served collaborator", "label")
    assert recorded("served collaborator", "evaluate")
    assert not recorded("served evaluation", "evaluate")
    assert recorded("served evaluation", "label")
