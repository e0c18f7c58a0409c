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
    assert found["line"].startswith("a rough guess until a step has run on this machine")


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
    assert message == "step 2/2 label: scoring"
    left = workspace.scalar("SELECT left_seconds FROM runs WHERE id=?", (run_id,))
    # Half of label's 90 s, scaled by how the run went so far: 55 s of work done in no time
    # is as fast as the scale allows (a quarter of the estimate).
    assert left == pytest.approx(45.0 * 0.25, abs=0.5)


def test_progress_never_goes_back_and_a_step_the_estimate_lacks_weighs_nothing(workspace):
    from semievol.runs.jobs import register_run
    from semievol.runs.progress import RunHandle

    rid = add_round(workspace)
    run_id = register_run(workspace, "round", round_id=rid)
    handle = RunHandle(workspace, run_id, rid,
                       estimate={"steps": {"warmup": 10.0, "label": 90.0}, "total": 100.0})
    shown = []

    def read():
        shown.append(workspace.scalar("SELECT progress FROM runs WHERE id=?", (run_id,)))

    handle.begin_step(0, 3, "warmup")
    handle.progress(1, 1, "trained")
    read()
    handle.begin_step(1, 3, "label")
    for done in (10, 60, 100):
        handle.progress(done, 100, f"item {done}")
        read()
    # A step the estimate has no figure for: before, the formula switched to step counting
    # (2/3 + a bit = 67 %, after 100 %); now it weighs nothing and the bar holds.
    handle.begin_step(2, 3, "select")
    handle.progress(1, 2, "half")
    read()
    handle.progress(0, 2, "again")  # a step that restarts its own count
    read()
    assert shown == sorted(shown) and shown[-1] == pytest.approx(1.0)


def test_a_remaining_time_that_grows_says_why(workspace, monkeypatch):
    from semievol.runs import progress as progress_module
    from semievol.runs.jobs import register_run
    from semievol.runs.progress import RunHandle

    clock = [1000.0]
    monkeypatch.setattr(progress_module.time, "monotonic", lambda: clock[0])
    rid = add_round(workspace)
    run_id = register_run(workspace, "round", round_id=rid)
    handle = RunHandle(workspace, run_id, rid,
                       estimate={"steps": {"label": 100.0}, "total": 100.0})
    handle.begin_step(0, 1, "label")
    clock[0] += 40
    handle.progress(50, 100, "on time")  # 40 s for half of 100: a little fast
    message = workspace.scalar("SELECT message FROM runs WHERE id=?", (run_id,))
    assert "estimate raised" not in message
    clock[0] += 200
    handle.progress(55, 100, "slow")  # 240 s for 55 %: the time left jumps up
    message = workspace.scalar("SELECT message FROM runs WHERE id=?", (run_id,))
    assert message.endswith("· estimate raised: label runs slower than estimated")
    clock[0] += 5
    handle.progress(56, 100, "still slow")  # the note stays while a reader may look
    assert workspace.scalar("SELECT message FROM runs WHERE id=?", (run_id,)).endswith(
        "runs slower than estimated")
    clock[0] += 60
    handle.progress(70, 100, "later")
    assert "estimate raised" not in workspace.scalar("SELECT message FROM runs WHERE id=?",
                                                     (run_id,))


def test_run_clock_counts_on_the_readers_clock():
    from semievol.runs.progress import run_clock

    running = {"status": "running", "started_at": 100.0, "left_seconds": 90.0,
               "progress_at": 130.0, "request": {"estimate": {"rough": False}}}
    # 30 s after the last write: elapsed runs on (a model load writes nothing) and the time
    # left counts down.
    assert run_clock(running, at=160.0) == "1:00 elapsed, about 1:00 left"
    assert run_clock(dict(running, request={"estimate": {"rough": True}}), at=160.0) == (
        "1:00 elapsed, about 1:00 left (rough: no step measured on this machine yet)")
    assert run_clock(running, at=400.0) == "5:00 elapsed, taking longer than estimated"
    cancelled = dict(running, status="cancelled", finished_at=250.0)
    assert run_clock(cancelled, at=900.0) == "cancelled after 2:30"  # no time left shown
    assert run_clock(dict(cancelled, status="succeeded"), at=900.0) == "took 2:30"


def test_a_reused_warm_up_costs_nothing_in_round_two(filled_workspace, tiny_model_dir):
    from semievol.rounds.record import Round
    from semievol.runs.work import step_work

    second = Round(None, 2, "open", _config(tiny_model_dir), None, None)
    assert step_work(filled_workspace, second, "warmup", ["warmup", "label"]) == (
        "training", 0, 0)


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


# -- a first run measures this machine (semievol.runs.calibrate) ------------------------------
def test_a_first_foreground_run_measures_this_machine_before_its_estimate(
        filled_workspace, tiny_model_dir, machine_file, monkeypatch):
    import json

    from semievol.runs import calibrate, jobs, launch
    from semievol.runs.estimate import speeds

    monkeypatch.setenv("SEMIEVOL_MEASURE_SPEED", "1")
    config = _config(tiny_model_dir)
    said: list[str] = []
    run_id = launch.start(filled_workspace, "warmup", background=False, config=config,
                          announce=said.append)
    assert said[0].startswith("measuring this machine's speed")
    assert said[1].startswith("measured in") and "training tokens/s" in said[1]
    found = speeds(filled_workspace, config.model)
    assert "rough" not in found
    assert found["training_source"] == found["inference_source"] == "measured in this workspace"
    assert found["inference"] > 0 and found["training"] > 0
    (machine,) = json.loads(machine_file.read_text()).values()  # and for the next workspace
    assert set(machine) == {"inference", "training"}
    estimate = jobs.get_run(filled_workspace, run_id)["request"]["estimate"]
    assert estimate["rough"] is False and "measured in this workspace" in estimate["line"]
    rnd = launch.get_round(filled_workspace, 1)
    assert not calibrate.needs_measurement(filled_workspace, rnd)  # once per machine


def test_a_background_run_measures_in_its_worker_and_replaces_the_guess(
        filled_workspace, tiny_model_dir, machine_file, monkeypatch):
    from semievol.runs import jobs, launch

    config = _config(tiny_model_dir)
    monkeypatch.setenv("SEMIEVOL_MEASURE_SPEED", "0")  # the start stores the guess
    run_id = launch.start(filled_workspace, "warmup", background=False, config=config)
    assert jobs.get_run(filled_workspace, run_id)["request"]["estimate"]["rough"] is True
    monkeypatch.setenv("SEMIEVOL_MEASURE_SPEED", "1")  # as a worker would run it
    launch.execute(filled_workspace, run_id)
    run = jobs.get_run(filled_workspace, run_id)
    assert run["status"] == "succeeded"
    assert run["request"]["estimate"]["rough"] is False


def test_no_measurement_without_labeled_items_or_model_work(workspace, tiny_model_dir,
                                                             machine_file):
    from semievol.rounds.record import prospective
    from semievol.runs import calibrate

    workspace.set_task(__import__("conftest").TaskConfig(
        kind="choice", labels=["a", "b"], instruction="Pick."))
    rnd = prospective(workspace, _config(tiny_model_dir))
    assert calibrate.measure_speed(workspace, rnd) == {}
    assert not machine_file.exists()
