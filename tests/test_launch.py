"""Launching a round's steps as background runs (semievol.launch) and resuming failed ones.

The launched children are real `python -m semievol` processes. They run steps that need no
model: `select` over pseudo-labels inserted by SQL, `evaluate` over stored evaluations, and
`train` refused for want of a selection (the quick way to a real failed run).
"""

from __future__ import annotations

import json
import os
import time

import pytest
import yaml

from semievol import jobs, launch, rounds
from semievol.config import (CalibrationConfig, RoundConfig, SelectionConfig, TrainConfig,
                             to_dict, to_json)
from semievol.errors import SemiEvolError
from semievol.store import now

CHILD_TIMEOUT = 60.0


def _wait_finished(ws, run_id, timeout=CHILD_TIMEOUT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = jobs.get_run(ws, run_id)
        if run["status"] != "running":
            return run
        time.sleep(0.2)
    raise AssertionError(f"run {run_id} still running after {timeout} s:\n"
                         + jobs.log_tail(jobs.get_run(ws, run_id)))


def _config(**train) -> RoundConfig:
    return RoundConfig(train=TrainConfig(max_steps=2, batch_size=4, checkpoint_every=1, **train),
                       calibration=CalibrationConfig(fraction=0.25, min_per_class=1))


def _pseudo_label(ws, rnd, *, entropies=None):
    """One agreed pseudo-label per unlabeled item, with entropies 0.0, 0.1, 0.2, ..."""
    ids = [r[0] for r in ws.query("SELECT id FROM items WHERE split='unlabeled' ORDER BY id")]
    labels = ws.task.labels
    with ws.transaction() as conn:
        conn.executemany(
            "INSERT INTO pseudo_labels(round_id, item_id, label, path, agreement, entropy,"
            " option_entropy) VALUES(?, ?, ?, 'agreed', 1.0, ?, ?)",
            [(rnd.id, i, labels[k % len(labels)], 0.1 * k, 0.1 * k)
             for k, i in enumerate(ids)])
    return ids


def _insert_run(ws, kind, round_id, status, *, pid=None, error=None):
    return ws.conn.execute(
        "INSERT INTO runs(kind, round_id, status, pid, started_at, heartbeat, finished_at, error)"
        " VALUES(?, ?, ?, ?, ?, ?, ?, ?)",
        (kind, round_id, status, pid, now(), now(),
         None if status == "running" else now(), error)).lastrowid


def test_launch_select_writes_the_config_and_a_background_process_runs_it(filled_workspace):
    ws = filled_workspace
    config = _config()
    rnd = rounds.open_round(ws, config)
    ids = _pseudo_label(ws, rnd)
    run_id = launch.launch_step(ws, "select", config=config,
                                selection=SelectionConfig(policy="absolute", threshold=0.45))
    saved = ws.path / "runs" / "config_round1_select.yaml"
    assert yaml.safe_load(saved.read_text()) == to_dict(config)
    row = ws.conn.execute("SELECT * FROM runs WHERE id=?", (run_id,)).fetchone()
    assert (row["kind"], row["round_id"]) == ("select", rnd.id)
    assert json.loads(row["config"]) == to_dict(config)

    run = _wait_finished(ws, run_id)
    assert run["status"] == "succeeded", run["error"] or jobs.log_tail(run)
    log = jobs.log_tail(run, 200)
    assert f"--config {saved}" in log and "--policy absolute" in log
    selected = [r[0] for r in ws.query("SELECT item_id FROM pseudo_labels WHERE round_id=? "
                                       "AND selected=1 ORDER BY item_id", (rnd.id,))]
    assert selected == ids[:5]  # entropies 0.0 .. 0.4 are at or below 0.45
    assert ws.get_setting(f"selection_round_{rnd.id}")["policy"] == "absolute"
    assert rounds.get_round(ws).config.selection.threshold == 0.45


def test_cli_background_goes_through_launch_step(filled_workspace, capsys):
    from semievol.cli import main

    ws = filled_workspace
    rnd = rounds.open_round(ws, _config())
    ws.conn.execute("UPDATE rounds SET warmup_adapter='adapters/w' WHERE id=?", (rnd.id,))
    for model, round_id in (("base", None), ("base+demos", None), ("warmup", rnd.id)):
        ws.conn.execute("INSERT INTO evaluations(round_id, model, split, accuracy, macro_f1, "
                        "report, created_at) VALUES(?, ?, 'test', 0.5, 0.4, ?, ?)",
                        (round_id, model, json.dumps({"accuracy": 0.5, "macro_f1": 0.4}), now()))
    assert main(["evaluate", str(ws.path), "--background", "--max-steps", "3"]) == 0
    assert "Started run" in capsys.readouterr().out
    saved = yaml.safe_load((ws.path / "runs" / "config_round1_evaluate.yaml").read_text())
    assert saved["train"]["max_steps"] == 3
    run = jobs.list_runs(ws)[0]
    assert run["kind"] == "evaluate" and run["config"]["train"]["max_steps"] == 3
    run = _wait_finished(ws, run["id"])
    assert run["status"] == "succeeded", run["error"] or jobs.log_tail(run)
    assert "evaluate: base" in jobs.log_tail(run)  # answered from the stored evaluations


def test_launch_is_refused_before_anything_changes_while_a_run_writes(filled_workspace):
    ws = filled_workspace
    rnd = rounds.open_round(ws, _config())
    _insert_run(ws, "label", rnd.id, "running", pid=os.getpid())
    before = to_json(rounds.get_round(ws).config)
    with pytest.raises(jobs.RunRefused, match="cancel"):
        launch.launch_step(ws, "round", config=_config(max_length=128))
    assert to_json(rounds.get_round(ws).config) == before  # the stored config is untouched
    assert not list((ws.path / "runs").glob("*.yaml"))
    assert ws.scalar("SELECT COUNT(*) FROM runs") == 1


def test_launch_checks_its_arguments(filled_workspace):
    ws = filled_workspace
    with pytest.raises(SemiEvolError, match="Unknown step"):
        launch.launch_step(ws, "index")
    with pytest.raises(SemiEvolError, match="select or round"):
        launch.launch_step(ws, "train", selection=SelectionConfig())
    with pytest.raises(SemiEvolError, match="No round yet"):
        launch.launch_step(ws, "label")
    assert ws.scalar("SELECT COUNT(*) FROM runs") == 0


def test_resume_command_for_failed_and_other_runs(filled_workspace):
    ws = filled_workspace
    rnd = rounds.open_round(ws, _config())
    failed = jobs.get_run(ws, _insert_run(ws, "train", rnd.id, "failed", error="boom"))
    assert launch.resume_command(ws, failed) == ["train", str(ws.path), "--round", "1"]
    cancelled = jobs.get_run(ws, _insert_run(ws, "round", rnd.id, "cancelled"))
    assert launch.resume_command(ws, cancelled) == ["round", str(ws.path), "--round", "1"]
    done = jobs.get_run(ws, _insert_run(ws, "label", rnd.id, "succeeded"))
    with pytest.raises(SemiEvolError, match="only a failed or cancelled"):
        launch.resume_command(ws, done)
    ws.conn.execute("UPDATE rounds SET status='done' WHERE id=?", (rnd.id,))
    with pytest.raises(SemiEvolError, match="no longer the open round"):
        launch.resume_command(ws, cancelled)  # resuming would open round 2 instead
    assert launch.resume_command(ws, failed)[-1] == "1"  # a pinned step still may


def test_resume_run_starts_the_step_again_as_a_new_run(filled_workspace):
    ws = filled_workspace
    rnd = rounds.open_round(ws, _config())
    failed = _insert_run(ws, "train", rnd.id, "failed", error="the process died")
    new_id = launch.resume_run(ws, failed)
    assert new_id != failed
    run = _wait_finished(ws, new_id)
    # A real child ran `train` on round 1, which has no selection yet: it fails saying so.
    assert (run["kind"], run["round_id"], run["status"]) == ("train", rnd.id, "failed")
    assert "no selection yet" in run["error"]
    assert jobs.get_run(ws, failed)["status"] == "failed"  # the old row is left as it was
