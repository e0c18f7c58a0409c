"""Starting a round's steps as runs (semievol.runs.launch): one path for every entry point,
refused before anything changes, background workers that get nothing but their run id, and
resuming failed runs.

The launched children are real `python -m semievol worker` processes. They run steps that
need no model: `select` over pseudo-labels inserted by SQL, `evaluate` over stored
evaluations, and `train` refused for want of a selection (the quick way to a real failed run).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest
from conftest import fake_adapter

from semievol.config import CalibrationConfig, RoundConfig, SelectionConfig, TrainConfig
from semievol.curation.selection_state import applied_selection
from semievol.errors import SemiEvolError
from semievol.rounds.record import get_round, open_round, with_budget
from semievol.runs import jobs, launch
from semievol.saved_config import to_dict, to_json
from semievol.workspace.store import now

ROOT = Path(__file__).resolve().parents[1]

CHILD_TIMEOUT = 60.0


def _wait_finished(ws, run_id, timeout=CHILD_TIMEOUT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = jobs.get_run(ws, run_id)
        if run["status"] != "running":
            return run
        time.sleep(0.2)
    raise AssertionError(f"run {run_id} still running after {timeout} s:\n"
                         + jobs.log_tail(ws, jobs.get_run(ws, run_id)))


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


def _command_line(ws, run_id) -> str:
    """The command the background process was started with (the log's first line)."""
    first = jobs.log_tail(ws, jobs.get_run(ws, run_id), 500).splitlines()[0]
    return first.split(": ", 1)[1]


def test_a_background_select_gets_only_its_run_id_and_runs_what_the_row_says(filled_workspace):
    ws = filled_workspace
    config = _config()
    rnd = open_round(ws, config)
    ids = _pseudo_label(ws, rnd)
    run_id = launch.start(ws, "select", background=True, config=config,
                          selection=SelectionConfig(policy="absolute", threshold=0.45))
    row = jobs.get_run(ws, run_id)
    assert (row["kind"], row["round_id"]) == ("select", rnd.id)
    assert row["config"] == to_dict(with_budget(config))  # the budget resolved
    estimate = row["request"].pop("estimate")
    assert "about " in estimate["line"]  # the time estimate travels with the run
    assert row["request"] == {"steps": ["select"], "round": 1, "force": False, "confirm": None,
                              "selection": to_dict(SelectionConfig(policy="absolute",
                                                                   threshold=0.45))}
    run = _wait_finished(ws, run_id)
    assert run["status"] == "succeeded", run["error"] or jobs.log_tail(ws, run)
    # The process was given its run id and nothing else: no config file, no flags.
    assert _command_line(ws, run_id).split()[1:] == ["-m", "semievol", "worker",
                                                     str(ws.path), str(run_id)]
    assert not list((ws.path / "runs").glob("*.yaml"))
    selected = [r[0] for r in ws.query("SELECT item_id FROM pseudo_labels WHERE round_id=? "
                                       "AND selected=1 ORDER BY item_id", (rnd.id,))]
    assert selected == ids[:5]  # entropies 0.0 .. 0.4 are at or below 0.45
    assert applied_selection(ws, rnd.id) == SelectionConfig(policy="absolute", threshold=0.45)


def test_cli_background_registers_the_resolved_config(filled_workspace, capsys):
    from semievol.cli.main import main

    ws = filled_workspace
    rnd = open_round(ws, _config())
    ws.conn.execute("UPDATE rounds SET warmup_adapter=? WHERE id=?",
                    (fake_adapter(ws, "adapters/w"), rnd.id))
    for model, round_id in (("base", None), ("base+demos", None), ("warmup", rnd.id)):
        ws.conn.execute("INSERT INTO evaluations(round_id, model, split, accuracy, macro_f1, "
                        "report, created_at) VALUES(?, ?, 'test', 0.5, 0.4, ?, ?)",
                        (round_id, model, json.dumps({"accuracy": 0.5, "macro_f1": 0.4}), now()))
    assert main(["evaluate", str(ws.path), "--background", "--max-steps", "3",
                 "--min-steps", "3"]) == 0
    assert "Started run" in capsys.readouterr().out
    run = jobs.list_runs(ws)[0]
    assert run["kind"] == "evaluate" and run["config"]["train"]["max_steps"] == 3
    assert get_round(ws).config.train.max_steps == 3  # stored with the round
    run = _wait_finished(ws, run["id"])
    assert run["status"] == "succeeded", run["error"] or jobs.log_tail(ws, run)
    assert "evaluate: base" in jobs.log_tail(ws, run)  # answered from the stored evaluations
    assert _command_line(ws, run["id"]).endswith(f"worker {ws.path} {run['id']}")


def test_every_entry_point_reaches_the_same_run_steps(filled_workspace, monkeypatch):
    """The CLI in the foreground, a background worker, the app's launch and the quality
    bench all go through semievol.rounds.steps.run_steps."""
    from semievol.cli.main import main
    from semievol.rounds import steps

    ws = filled_workspace
    rnd = open_round(ws, _config())
    ws.conn.execute("UPDATE rounds SET warmup_adapter=? WHERE id=?",
                    (fake_adapter(ws, "adapters/w"), rnd.id))
    calls = []

    def recorder(ws_, number, names, **options):
        calls.append((number, list(names), options.get("selection")))
        return {name: {} for name in names}
    monkeypatch.setattr(steps, "run_steps", recorder)
    monkeypatch.setattr("semievol.cli.engine._report", lambda step, result: None)
    spawned = []
    monkeypatch.setattr(jobs, "spawn", lambda ws_, run_id, argv, **kw: spawned.append(argv))

    assert main(["select", str(ws.path), "--theta", "40"]) == 0            # foreground CLI
    assert calls[-1] == (1, ["select"], SelectionConfig(theta=40.0))
    run_id = launch.start(ws, "label", background=True)                   # the app's launch
    assert spawned[-1] == ["worker", str(ws.path), str(run_id)]
    assert main(["worker", str(ws.path), str(run_id)]) == 0               # its worker
    assert calls[-1] == (1, ["label"], None)
    assert jobs.get_run(ws, run_id)["status"] == "succeeded"
    assert main(["round", str(ws.path), "--background"]) == 0             # CLI --background
    assert spawned[-1][0] == "worker"
    # The quality bench (its `common` module is not the app's: import it afresh).
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    for name in ("common", "quality_data", "quality_review", "quality_runner"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    from quality_runner import Runner
    runner = Runner.__new__(Runner)
    runner.embedder, runner.base = None, None
    runner.run_step(ws, rnd, "evaluate")
    assert calls[-1] == (1, ["evaluate"], None)
    for name in ("quality_data", "quality_review", "quality_runner"):
        sys.modules.pop(name, None)


def test_launch_is_refused_before_anything_changes_while_a_run_writes(filled_workspace):
    ws = filled_workspace
    rnd = open_round(ws, _config())
    _insert_run(ws, "label", rnd.id, "running", pid=os.getpid())
    before = ws.table_counts()
    config_before = to_json(get_round(ws).config)
    for kind in ("round", "select", "warmup"):
        with pytest.raises(jobs.RunRefused, match="cancel"):
            launch.start(ws, kind, background=True, config=_config(learning_rate=0.5))
    assert to_json(get_round(ws).config) == config_before  # the stored config is untouched
    assert ws.table_counts() == before
    assert not list((ws.path / "runs").iterdir())


def test_launch_checks_its_arguments(filled_workspace):
    ws = filled_workspace
    with pytest.raises(SemiEvolError, match="Unknown step"):
        launch.start(ws, "index", background=True)
    with pytest.raises(SemiEvolError, match="select or round"):
        launch.start(ws, "train", background=True, selection=SelectionConfig())
    with pytest.raises(SemiEvolError, match="No round yet"):
        launch.start(ws, "label", background=True)
    with pytest.raises(SemiEvolError, match="Round numbers start at 1"):
        launch.start(ws, "label", background=True, round_number=0)
    assert ws.scalar("SELECT COUNT(*) FROM runs") == 0


def test_resume_check_for_failed_and_other_runs(filled_workspace):
    ws = filled_workspace
    rnd = open_round(ws, _config())
    failed = jobs.get_run(ws, _insert_run(ws, "train", rnd.id, "failed", error="boom"))
    assert launch.resume_check(ws, failed) == 1
    cancelled = jobs.get_run(ws, _insert_run(ws, "round", rnd.id, "cancelled"))
    assert launch.resume_check(ws, cancelled) == 1
    done = jobs.get_run(ws, _insert_run(ws, "label", rnd.id, "succeeded"))
    with pytest.raises(SemiEvolError, match="only a failed or cancelled"):
        launch.resume_check(ws, done)
    ws.conn.execute("UPDATE rounds SET status='done' WHERE id=?", (rnd.id,))
    with pytest.raises(SemiEvolError, match="no longer the open round"):
        launch.resume_check(ws, cancelled)  # resuming would open round 2 instead
    assert launch.resume_check(ws, failed) == 1  # a pinned step still may


def test_resume_starts_the_step_again_as_a_new_run(filled_workspace):
    ws = filled_workspace
    rnd = open_round(ws, _config())
    ws.conn.execute("UPDATE rounds SET warmup_adapter=? WHERE id=?",
                    (fake_adapter(ws, "adapters/w"), rnd.id))
    failed = _insert_run(ws, "train", rnd.id, "failed", error="the process died")
    new_id = launch.resume(ws, failed)
    assert new_id != failed
    run = _wait_finished(ws, new_id)
    # A real child ran `train` on round 1, which has no selection yet: it fails saying so.
    assert (run["kind"], run["round_id"], run["status"]) == ("train", rnd.id, "failed")
    assert "no selection yet" in run["error"]
    assert run["request"]["steps"] == ["train", "evaluate"]  # there is a test set
    assert jobs.get_run(ws, failed)["status"] == "failed"  # the old row is left as it was
