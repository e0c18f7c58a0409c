"""Refuse before you change: while a run writes a round, every entry point (the CLI in the
foreground and with --background, the library, the app) refuses a conflicting command and
leaves every table exactly as it was; two starts at once give one clear refusal."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from semievol.config import CollaboratorConfig, RoundConfig
from semievol.rounds.record import open_round
from semievol.runs import jobs, launch
from semievol.workspace.store import Workspace, now

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "app"


def digest(ws) -> str:
    """Every row of every table, in a stable order: equal digests mean nothing changed."""
    h = hashlib.sha256()
    for (name,) in ws.query("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name"):
        for row in sorted(map(tuple, ws.query(f"SELECT * FROM {name}")), key=repr):
            h.update(repr((name, row)).encode())
    return h.hexdigest()


def semievol(*args, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "semievol", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def busy(filled_workspace):
    """Round 1 open with pseudo-labels, and a live run (this process) evaluating it."""
    ws = filled_workspace
    rnd = open_round(ws, RoundConfig())
    ids = [r[0] for r in ws.query("SELECT id FROM items WHERE split='unlabeled' LIMIT 5")]
    ws.conn.executemany("INSERT INTO pseudo_labels(round_id, item_id, label, path, agreement) "
                        "VALUES(?, ?, 'billing', 'agreed', 1.0)", [(rnd.id, i) for i in ids])
    ws.conn.execute("INSERT INTO runs(kind, round_id, status, pid, started_at, heartbeat) "
                    "VALUES('evaluate', ?, 'running', ?, ?, ?)", (rnd.id, os.getpid(), now(),
                                                                  now()))
    return ws


@pytest.mark.parametrize("args", [
    ["label", "--collaborators", "base:0:1.0:0"],    # would drop the round's pseudo-labels
    ["label", "--unlabeled-limit", "5"],             # would rewrite the stored config
    ["round"], ["warmup", "--background"], ["select", "--theta", "30"],
    ["train", "--confirm"], ["evaluate", "--force"],
])
def test_the_cli_refuses_before_it_changes_anything(busy, args):
    before = digest(busy)
    result = semievol(args[0], busy.path, *args[1:])
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "is already writing round 1" in result.stderr and "Traceback" not in result.stderr
    assert digest(busy) == before


def test_the_library_refuses_before_it_changes_anything(busy):
    before = digest(busy)
    config = RoundConfig(collaborators=[CollaboratorConfig("base", 0, 1.0, 0)])
    for kind, options in (("label", {"config": config}), ("round", {}), ("select", {})):
        with pytest.raises(jobs.RunRefused):
            launch.start(busy, kind, background=True, **options)
    assert digest(busy) == before


def test_the_app_offers_no_launch_while_a_run_writes(busy, monkeypatch):
    from streamlit.testing.v1 import AppTest

    sys.path.insert(0, str(APP))
    monkeypatch.setenv("SEMIEVOL_WORKSPACE", str(busy.path))
    before = digest(busy)
    at = AppTest.from_file(str(APP / "Home.py"), default_timeout=30).run()
    assert "is working on round 1" in " ".join(m.value for m in at.markdown)
    at.switch_page("pages/2_Round_setup.py").run()
    assert not at.exception
    for key in ("launch_round", "launch_warmup", "launch_label", "launch_select"):
        assert at.button(key=key).disabled, key
    assert "is writing a round" in " ".join(w.value for w in at.warning)
    assert digest(busy) == before


RACE_TIMEOUT = 120


def test_two_background_warmups_at_once_give_one_clear_refusal(filled_workspace,
                                                               tiny_model_dir):
    ws_path = filled_workspace.path
    filled_workspace.close()
    args = [sys.executable, "-m", "semievol", "warmup", str(ws_path), "--background",
            "--model", str(tiny_model_dir), "--dtype", "float32", "--max-steps", "1",
            "--min-steps", "0"]
    processes = [subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=RACE_TIMEOUT), *p.communicate()) for p in processes]
    assert sorted(r[0] for r in results) == [0, 2], results
    loser = next(r for r in results if r[0] == 2)
    assert "is already writing" in loser[2] and "Traceback" not in loser[2]
    with Workspace(ws_path) as ws:
        assert ws.scalar("SELECT COUNT(*) FROM rounds") == 1
        assert ws.scalar("SELECT COUNT(*) FROM runs") == 1
        run = jobs.list_runs(ws)[0]
        deadline = time.monotonic() + RACE_TIMEOUT
        while run["status"] == "running" and time.monotonic() < deadline:
            time.sleep(0.5)
            run = jobs.get_run(ws, run["id"])
        if run["status"] == "running":
            os.killpg(run["pid"], signal.SIGKILL)
        assert run["status"] == "succeeded", jobs.log_tail(ws, run)


def test_missing_adapters_are_refused_before_any_work(filled_workspace):
    ws = filled_workspace
    rnd = open_round(ws, RoundConfig())
    ws.conn.execute("UPDATE rounds SET warmup_adapter='adapters/round1/warmup' WHERE id=?",
                    (rnd.id,))  # recorded, but the folder was deleted
    before = digest(ws)
    for step in ("evaluate", "label"):
        started = time.monotonic()
        result = semievol(step, ws.path)
        assert result.returncode == 2 and "No complete LoRA adapter" in result.stderr
        assert time.monotonic() - started < 30  # no base model scored first
    assert digest(ws) == before and ws.scalar("SELECT COUNT(*) FROM evaluations") == 0
