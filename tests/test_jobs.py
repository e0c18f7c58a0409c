"""Runs: statuses, heartbeat, refusal, and real background processes (started, killed,
cancelled). The background child is a small module written into tmp_path and started through
`spawn(..., module=...)` with the run id, so these tests need no model and no CLI command."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from semievol.errors import SemiEvolError
from semievol.runs import jobs
from semievol.workspace.store import now

CHILD = '''
"""A stand-in for a long CLI step: python -m jobchild WORKSPACE RUN_ID MODE."""
import sys, time
from semievol.runs import jobs
from semievol.workspace.store import Workspace

ws = Workspace(sys.argv[1])
mode = sys.argv[3]
try:
    with jobs.run_context(ws, int(sys.argv[2])) as run:
        print(f"child adopted run {run.id}", flush=True)
        if mode == "quick":
            for step in range(3):
                run.progress(step + 1, 3, "counting")
                run.metric("loss", step, 1.0 / (step + 1))
            print("child done", flush=True)
        else:
            run.progress(0, 1, "sleeping")
            time.sleep(20)
except jobs.RunCancelled:
    print("child cancelled", flush=True)
    sys.exit(143)
'''


def _wait(predicate, timeout=10.0, interval=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")


def _row(ws, run_id):
    return dict(ws.conn.execute("SELECT * FROM runs WHERE id=?", (run_id,)).fetchone())


def _insert_running(ws, *, kind="label", round_id=1, pid=None, heartbeat=None):
    return ws.conn.execute(
        "INSERT INTO runs(kind, round_id, status, pid, started_at, heartbeat)"
        " VALUES(?, ?, 'running', ?, ?, ?)",
        (kind, round_id, pid, now(), now() if heartbeat is None else heartbeat)).lastrowid


def foreground(ws, kind, *, round_id=None, config=None):
    """Register a run for this process and execute the block as it (as the CLI does)."""
    run_id = jobs.register_run(ws, kind, round_id=round_id, config=config, pid=os.getpid())
    return jobs.run_context(ws, run_id)


def background(ws, kind, mode, module, *, round_id=1, config=None):
    """Register a run and spawn the child module to execute it; returns the run id."""
    run_id = jobs.register_run(ws, kind, round_id=round_id, config=config)
    jobs.spawn(ws, run_id, [str(ws.path), str(run_id), mode], module=module)
    return run_id


def _dead_pid():
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


@pytest.fixture
def child_module(tmp_path, monkeypatch):
    """`jobchild` importable by child processes (tmp_path on their PYTHONPATH)."""
    folder = tmp_path / "child"
    folder.mkdir()
    (folder / "jobchild.py").write_text(textwrap.dedent(CHILD))
    path = os.environ.get("PYTHONPATH")
    monkeypatch.setenv("PYTHONPATH", str(folder) + (os.pathsep + path if path else ""))
    return "jobchild"


@pytest.fixture
def children(workspace):
    """Kill whatever background child a failing test left running."""
    yield
    for (pid,) in workspace.query("SELECT pid FROM runs WHERE pid IS NOT NULL AND pid != ?",
                                  (os.getpid(),)):
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


# -- run_context in this process -----------------------------------------------------------
def test_run_context_success_records_progress_metrics_and_config(workspace):
    with foreground(workspace, "train", round_id=3, config={"lr": 0.1}) as run:
        row = _row(workspace, run.id)
        assert (row["status"], row["pid"], row["round_id"]) == ("running", os.getpid(), 3)
        run.progress(1, 4, "training")
        run.progress(2, 4, "training")  # within 0.5 s of the last write: not written
        assert _row(workspace, run.id)["progress"] == pytest.approx(0.25)
        run.metric("loss", 2, 0.5)
        run.metric("loss", 1, 0.7)
        run.metric("accuracy", None, 0.9)
    run_info = jobs.get_run(workspace, run.id)
    assert run_info["status"] == "succeeded"
    assert run_info["progress"] == 1 and run_info["finished_at"] >= run_info["started_at"]
    assert run_info["config"] == {"lr": 0.1} and run_info["error"] is None
    assert jobs.run_metrics(workspace, run.id, "loss") == [
        {"step": 1, "name": "loss", "value": 0.7}, {"step": 2, "name": "loss", "value": 0.5}]
    assert len(jobs.run_metrics(workspace, run.id)) == 3
    assert workspace.scalar("SELECT round_id FROM metrics WHERE name='accuracy'") == 3
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_progress_writes_the_last_step_and_a_new_message_at_once(workspace):
    with foreground(workspace, "label", round_id=1) as run:
        run.progress(1, 10, "a")
        run.progress(2, 10, "b")
        assert (_row(workspace, run.id)["progress"], _row(workspace, run.id)["message"]) \
            == (pytest.approx(0.2), "b")
        run.progress(10, 10, "b")
        assert _row(workspace, run.id)["progress"] == 1
        run.metric("x", 0, 1.0)
    assert workspace.scalar("SELECT round_id FROM metrics WHERE run_id=?", (run.id,)) == 1


def test_progress_of_a_run_of_several_steps_spans_them_all(workspace):
    with foreground(workspace, "round", round_id=1) as run:
        run.begin_step(0, 4, "warmup")
        assert _row(workspace, run.id)["message"] == "step 1/4 warmup: starting"
        run.progress(5, 10, "training")
        run.begin_step(2, 4, "select")
        run.progress(1, 2, "flags")
        row = _row(workspace, run.id)
        assert row["progress"] == pytest.approx((2 + 0.5) / 4)
        assert row["message"] == "step 3/4 select: flags"  # the time: run_clock, live
        run.begin_step(3, 4, "train")
        run.progress(4, 4, "done")
        assert _row(workspace, run.id)["progress"] == 1


def test_run_context_failure_records_error_and_traceback(workspace, capsys):
    def fail():
        raise ValueError("boom in step")

    with pytest.raises(ValueError):
        with foreground(workspace, "warmup", round_id=1) as run:
            fail()
    row = _row(workspace, run.id)
    assert row["status"] == "failed" and row["finished_at"] is not None
    assert row["error"].splitlines()[0] == "ValueError: boom in step"
    assert "in fail" in row["error"]  # the traceback's last frames
    assert "Traceback" in capsys.readouterr().err


@pytest.mark.parametrize("exc", [jobs.RunCancelled, KeyboardInterrupt])
def test_run_context_cancel_and_interrupt_are_cancelled(workspace, exc):
    with pytest.raises(exc):
        with foreground(workspace, "label", round_id=1) as run:
            raise exc()
    row = _row(workspace, run.id)
    assert row["status"] == "cancelled" and row["error"] is None


def test_sigterm_raises_run_cancelled_and_handler_is_restored(workspace):
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(jobs.RunCancelled):
        with foreground(workspace, "train", round_id=1) as run:
            assert signal.getsignal(signal.SIGTERM) is not before
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # interrupted by the handler
    assert _row(workspace, run.id)["status"] == "cancelled"
    assert signal.getsignal(signal.SIGTERM) == before


def test_heartbeat_advances_while_running(workspace, monkeypatch):
    monkeypatch.setattr(jobs, "HEARTBEAT_SECONDS", 0.1)
    with foreground(workspace, "train", round_id=1) as run:
        first = _row(workspace, run.id)["heartbeat"]
        _wait(lambda: _row(workspace, run.id)["heartbeat"] > first, timeout=3)
    threads = [t.name for t in threading.enumerate()]
    assert f"heartbeat-run-{run.id}" not in threads


def test_run_context_adopts_the_registered_row(workspace):
    run_id = jobs.register_run(workspace, "evaluate", round_id=2, config={"a": 1},
                               request={"steps": ["evaluate"], "round": 2})
    assert _row(workspace, run_id)["pid"] is None  # a background start, before its worker
    with jobs.run_context(workspace, run_id) as run:
        assert run.id == run_id and run.round_id == 2
    row = jobs.get_run(workspace, run_id)
    assert (row["status"], row["pid"], row["round_id"]) == ("succeeded", os.getpid(), 2)
    assert row["request"] == {"steps": ["evaluate"], "round": 2}
    assert workspace.scalar("SELECT COUNT(*) FROM runs") == 1
    with pytest.raises(SemiEvolError, match="already finished"):
        with jobs.run_context(workspace, run_id):
            pass
    cancelled = jobs.register_run(workspace, "evaluate", round_id=2)
    jobs.cancel_run(workspace, cancelled)  # before any process took it over
    with pytest.raises(jobs.RunCancelled):
        with jobs.run_context(workspace, cancelled):
            pass


# -- refusal and refresh -------------------------------------------------------------------
def test_second_run_on_the_same_round_is_refused(workspace):
    with foreground(workspace, "label", round_id=1) as holder:
        with pytest.raises(jobs.RunRefused) as refused:
            with foreground(workspace, "train", round_id=1):
                pass
        message = str(refused.value)
        assert f"Run {holder.id} (label, pid {os.getpid()})" in message
        assert f"semievol cancel {workspace.path} {holder.id}" in message
        with pytest.raises(jobs.RunRefused):
            jobs.register_run(workspace, "train", round_id=1)
        with pytest.raises(jobs.RunRefused):  # a writing run with no round yet
            jobs.register_run(workspace, "round")
        with foreground(workspace, "evaluate", round_id=2):  # another round is free
            pass
        with foreground(workspace, "index"):  # writes no round
            pass
    assert workspace.scalar("SELECT COUNT(*) FROM runs WHERE status='running'") == 0
    assert workspace.scalar("SELECT COUNT(*) FROM runs") == 3  # refused runs left no row


def test_refresh_marks_dead_and_silent_runs_failed(workspace):
    dead = _insert_running(workspace, pid=_dead_pid(), round_id=1)
    silent = _insert_running(workspace, pid=os.getpid(), round_id=2,
                             heartbeat=now() - jobs.STALE_SECONDS - 5)
    alive = _insert_running(workspace, pid=os.getpid(), round_id=3)
    starting = _insert_running(workspace, pid=None, round_id=4)  # pid not stored yet
    assert sorted(jobs.refresh_runs(workspace)) == [dead, silent]
    for run_id in (dead, silent):
        row = _row(workspace, run_id)
        assert row["status"] == "failed" and row["finished_at"] is not None
        assert row["error"].startswith("the process died (no heartbeat since ")
        assert row["error"].endswith("run the same command again to resume")
    assert {_row(workspace, i)["status"] for i in (alive, starting)} == {"running"}
    # A dead holder does not block its round.
    with foreground(workspace, "label", round_id=1):
        pass


def test_a_zombie_counts_as_dead():
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        _wait(lambda: open(f"/proc/{process.pid}/stat").read().rsplit(")", 1)[1].split()[0]
              == "Z", timeout=10)
        assert not jobs._pid_alive(process.pid)
    finally:
        process.wait()
    assert jobs._pid_alive(os.getpid())


def test_listing_getting_and_log_tail(workspace, tmp_path):
    first = _insert_running(workspace, pid=os.getpid(), round_id=1)
    with foreground(workspace, "evaluate", round_id=2, config={"k": 3}):
        pass
    runs = jobs.list_runs(workspace)
    assert [r["id"] for r in runs] == [first + 1, first]
    assert runs[0]["config"] == {"k": 3} and runs[1]["config"] is None
    assert set(runs[0]) >= {"id", "kind", "round_id", "status", "pid", "progress", "message",
                            "heartbeat", "log_path", "error", "started_at", "finished_at"}
    assert len(jobs.list_runs(workspace, limit=1)) == 1
    with pytest.raises(SemiEvolError, match="No run 99"):
        jobs.get_run(workspace, 99)
    log = workspace.path / "runs" / f"{first}.log"
    log.write_text("".join(f"line {i}\n" for i in range(100)) + "\r 10%\r 50%\r100%\n")
    assert jobs.log_tail(workspace, runs[1], 3) == "line 98\nline 99\n100%"
    assert jobs.log_tail(workspace, {"id": 12345}) == ""  # no log yet


def test_cancel_of_a_finished_run_says_so(workspace):
    with foreground(workspace, "train", round_id=1) as run:
        pass
    with pytest.raises(SemiEvolError, match="already finished with status succeeded"):
        jobs.cancel_run(workspace, run.id)


# -- real background processes -------------------------------------------------------------
def test_background_run_succeeds_and_logs(workspace, child_module, children):
    run_id = background(workspace, "label", "quick", child_module, config={"mode": "quick"})
    run = _wait(lambda: (r := jobs.get_run(workspace, run_id))["status"] != "running" and r,
                timeout=20)
    assert run["status"] == "succeeded", jobs.log_tail(workspace, run)
    assert run["progress"] == 1 and run["message"] == "counting"
    assert run["config"] == {"mode": "quick"} and run["pid"] > 0
    assert run["log_path"] == str(workspace.path / "runs" / f"{run_id}.log")
    log = jobs.log_tail(workspace, run)
    assert f"child adopted run {run_id}" in log and "child done" in log
    assert [m["value"] for m in jobs.run_metrics(workspace, run_id, "loss")] == \
        pytest.approx([1.0, 0.5, 1 / 3])
    assert workspace.scalar("SELECT COUNT(*) FROM runs") == 1  # adopted, not a second row


def _start_sleeper(workspace, child_module):
    run_id = background(workspace, "train", "sleep", child_module)
    _wait(lambda: _row(workspace, run_id)["message"] == "sleeping", timeout=20)
    return run_id, _row(workspace, run_id)["pid"]


def test_killed_background_run_is_seen_as_failed(workspace, child_module, children):
    run_id, pid = _start_sleeper(workspace, child_module)
    assert jobs.refresh_runs(workspace) == []
    os.kill(pid, signal.SIGKILL)
    _wait(lambda: not jobs._pid_alive(pid), timeout=5)
    assert jobs.refresh_runs(workspace) == [run_id]
    run = jobs.get_run(workspace, run_id)
    assert run["status"] == "failed" and "the process died" in run["error"]
    # The round is free again.
    with foreground(workspace, "train", round_id=1):
        pass


def test_cancel_a_background_run(workspace, child_module, children):
    run_id, pid = _start_sleeper(workspace, child_module)
    assert jobs.cancel_run(workspace, run_id) is True
    run = jobs.get_run(workspace, run_id)
    assert run["status"] == "cancelled" and not jobs._pid_alive(pid)
    assert "child cancelled" in jobs.log_tail(workspace, run)
    with pytest.raises(SemiEvolError, match="already finished with status cancelled"):
        jobs.cancel_run(workspace, run_id)
