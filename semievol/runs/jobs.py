"""Runs: every long step (warm-up, labeling, training, evaluation, a whole round) as a row.

A run is first registered (`register_run`: the refusal check and the insert in one write
transaction, so two starts cannot both pass the check), then executed inside
`run_context(ws, run_id)`, either in this process (a foreground CLI command) or in a detached
process started by `spawn` (`python -m semievol worker WORKSPACE RUN_ID`: the worker reads
what to do from the run's row and needs nothing else). Either way the row holds status,
progress, a heartbeat written by a thread, and the error of a failed run, so the UI and
`semievol runs` see the same thing. A process that died without saying so (killed, machine
rebooted) is found by `refresh_runs`: dead pid or stale heartbeat -> 'failed'.

Only one run may write a round at a time; a second one raises `RunRefused` naming the
holder and how to cancel it. `cancel_run` sends SIGTERM, which `run_context` turns into
`RunCancelled` so the step unwinds (transactions roll back) and the row says 'cancelled'.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Iterator

from semievol.errors import SemiEvolError, redact
from semievol.runs.progress import RunHandle, log_file, open_log
from semievol.runs.progress import clock as _clock
from semievol.workspace.store import Workspace, now

RUN_STATUSES = ("running", "succeeded", "failed", "cancelled")
RUN_KINDS_WRITING_ROUND = {"warmup", "label", "select", "train", "evaluate", "round"}
HEARTBEAT_SECONDS = 2.0  # how often a running process stamps its row's heartbeat
STALE_SECONDS = 30.0  # a running row with an older heartbeat belongs to a process gone
CANCEL_WAIT_SECONDS = 5.0
_ERROR_TRACEBACK_LINES = 12


class RunRefused(SemiEvolError):
    """Another run is already writing the round this run would write."""


class RunCancelled(Exception):
    """Raised in the main thread of a run by SIGTERM (`cancel_run`), so cleanup runs."""


# -- registering and starting ------------------------------------------------------------
def register_run(ws: Workspace, kind: str, *, round_id: int | None = None,
                 config: dict | None = None, request: dict | None = None,
                 pid: int | None = None) -> int:
    """Insert a 'running' row after the refusal check, in one write transaction (no race:
    BEGIN IMMEDIATE holds the write lock from the check to the insert). Nested inside a
    caller's transaction (launch.register), it is part of that one."""
    with ws.transaction() as conn:
        refresh_runs(ws)
        refuse_if_busy(ws, kind, round_id)
        return conn.execute(
            "INSERT INTO runs(kind, round_id, status, pid, progress, config, request, "
            "started_at, heartbeat) VALUES(?, ?, 'running', ?, 0, ?, ?, ?, ?)",
            (kind, round_id, pid, _dumps(config), _dumps(request), now(), now())).lastrowid


def spawn(ws: Workspace, run_id: int, argv: list[str], *, module: str = "semievol") -> int:
    """Start `python -m <module> *argv` detached, to execute the registered run `run_id`
    (its argv says which run; nothing else is passed). Output goes to
    WORKSPACE/runs/<id>.log. Returns the child's pid."""
    log_path = log_file(ws, run_id)
    ws.conn.execute("UPDATE runs SET log_path=? WHERE id=?", (str(log_path), run_id))
    command = [sys.executable, "-m", module, *argv]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    kind = ws.scalar("SELECT kind FROM runs WHERE id=?", (run_id,))
    try:
        with open_log(log_path, "ab") as log:
            log.write(f"# run {run_id} ({kind}) started {_clock(now())}: "
                      f"{' '.join(command)}\n".encode())
            log.flush()
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log,
                                       stderr=subprocess.STDOUT, env=env, cwd=os.getcwd(),
                                       start_new_session=True)
    except OSError as exc:
        _finish(ws, run_id, "failed", error=f"{type(exc).__name__}: {exc}")
        raise SemiEvolError(f"Could not start run {run_id} ({' '.join(command)}): {exc}.") \
            from exc
    ws.conn.execute("UPDATE runs SET pid=? WHERE id=? AND pid IS NULL", (process.pid, run_id))
    # Reap the child when it exits, so a long-lived parent (the app) collects no zombies.
    threading.Thread(target=process.wait, daemon=True, name=f"reap-run-{run_id}").start()
    return process.pid


@contextlib.contextmanager
def run_context(ws: Workspace, run_id: int) -> Iterator[RunHandle]:
    """Execute the enclosed step as the registered run `run_id`: take its row over (this
    process's pid, a heartbeat thread), and end it as succeeded / cancelled (SIGTERM,
    Ctrl-C) / failed (with the error)."""
    kind = _adopt(ws, run_id)
    row = ws.query("SELECT round_id, request FROM runs WHERE id=?", (run_id,))[0]
    estimate = (json.loads(row["request"]) if row["request"] else {}).get("estimate")
    handle = RunHandle(ws, run_id, row["round_id"], estimate=estimate)
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(ws.path / "workspace.db", run_id, stop),
                            daemon=True, name=f"heartbeat-run-{run_id}")
    beat.start()
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_cancelled) if in_main else None

    def restore():  # before writing the final status, so a late SIGTERM cannot cut it short
        nonlocal in_main
        if in_main:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
            in_main = False

    try:
        yield handle
    except (RunCancelled, KeyboardInterrupt):
        restore()
        _finish(ws, run_id, "cancelled")
        print(f"run {run_id} ({kind}) cancelled", file=sys.stderr)
        raise
    except SystemExit as exc:
        restore()
        ok = exc.code in (None, 0)
        _finish(ws, run_id, "succeeded" if ok else "failed",
                error=None if ok else f"SystemExit: {exc.code}")
        raise
    except BaseException as exc:
        restore()
        _finish(ws, run_id, "failed", error=_error_text(exc))
        if isinstance(exc, SemiEvolError):
            # A user error is one line: the CLI prints it in a terminal; a log (a background
            # run, a script reading the output) gets it here. No traceback: it is no bug.
            if not sys.stderr.isatty():
                print(f"run {run_id} ({kind}) failed: {exc}", file=sys.stderr)
        else:  # a bug: the full traceback is what someone will need
            print(f"run {run_id} ({kind}) failed:", file=sys.stderr)
            print(redact("".join(traceback.format_exception(type(exc), exc,
                                                            exc.__traceback__))),
                  file=sys.stderr, end="")
        raise
    else:
        restore()
        _finish(ws, run_id, "succeeded")
    finally:
        restore()
        stop.set()
        beat.join(timeout=5)


def _adopt(ws: Workspace, run_id: int) -> str:
    """Take the registered row over for this process; returns the run's kind."""
    row = ws.conn.execute("SELECT id, kind, status FROM runs WHERE id=?", (run_id,)).fetchone()
    if row is None:
        raise SemiEvolError(f"No run {run_id} in this workspace; `semievol runs {ws.path}` "
                            "lists them.")
    if row["status"] == "cancelled":  # cancelled before this process got going
        raise RunCancelled(f"Run {run_id} was cancelled before it started.")
    if row["status"] != "running":
        raise SemiEvolError(f"Run {run_id} already finished ({row['status']}); start a new "
                            f"one (`semievol resume {ws.path} {run_id}` for a failed run).")
    ws.conn.execute("UPDATE runs SET pid=?, heartbeat=?, error=NULL, finished_at=NULL "
                    "WHERE id=?", (os.getpid(), now(), run_id))
    return row["kind"]


def refuse_if_busy(ws: Workspace, kind: str, round_id: int | None) -> None:
    """Raise RunRefused when a running run already writes this round. A run of a writing
    kind with no round yet (it will create one) counts as writing every round."""
    writing = tuple(sorted(RUN_KINDS_WRITING_ROUND))
    marks = ",".join("?" * len(writing))
    if round_id is not None:
        sql = (f"SELECT * FROM runs WHERE status='running' AND (round_id=? OR "
               f"(round_id IS NULL AND kind IN ({marks}))) ORDER BY id LIMIT 1")
        params = (round_id, *writing)
    elif kind in RUN_KINDS_WRITING_ROUND:
        sql = (f"SELECT * FROM runs WHERE status='running' AND kind IN ({marks})"
               " ORDER BY id LIMIT 1")
        params = writing
    else:
        return
    holder = ws.conn.execute(sql, params).fetchone()
    if holder is None:
        return
    number = None if holder["round_id"] is None else ws.scalar(
        "SELECT number FROM rounds WHERE id=?", (holder["round_id"],))
    where = (f"round {number}" if number is not None else
             f"round id {holder['round_id']}" if holder["round_id"] is not None else "a round")
    raise RunRefused(
        f"Run {holder['id']} ({holder['kind']}, pid {holder['pid']}) is already writing "
        f"{where}; wait for it to finish (`semievol runs {ws.path}`) or cancel it with "
        f"`semievol cancel {ws.path} {holder['id']}`, then start this {kind} again.",
        app=f"Run {holder['id']} ({holder['kind']}) is already writing {where}: wait for it "
            f"to finish, or cancel it on the Runs page, then start this {kind} again.")


def _raise_cancelled(signum, frame):
    raise RunCancelled("cancelled (SIGTERM)")


def _heartbeat(db: Path, run_id: int, stop: threading.Event) -> None:
    """Stamp the row every HEARTBEAT_SECONDS on this thread's own connection."""
    conn = sqlite3.connect(db, timeout=30, isolation_level=None)
    try:
        while not stop.wait(HEARTBEAT_SECONDS):
            try:
                conn.execute("UPDATE runs SET heartbeat=? WHERE id=? AND status='running'",
                             (now(), run_id))
            except sqlite3.Error:
                pass  # database busy for 30 s: try again on the next beat
    finally:
        conn.close()


def _finish(ws: Workspace, run_id: int, status: str, *, error: str | None = None) -> None:
    fields = "status=?, finished_at=?, error=?" + (", progress=1" if status == "succeeded"
                                                    else "")
    ws.conn.execute(f"UPDATE runs SET {fields} WHERE id=?", (status, now(), error, run_id))


def _error_text(exc: BaseException) -> str:
    """The error a failed run stores: its message and the traceback's last lines, without
    any credential (a server's reply may quote the request's key)."""
    lines = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    tail = lines.rstrip("\n").splitlines()[-_ERROR_TRACEBACK_LINES:]
    return redact(f"{type(exc).__name__}: {exc}\n" + "\n".join(tail))


# -- watching ------------------------------------------------------------------------------
def refresh_runs(ws: Workspace) -> list[int]:
    """Mark 'failed' every running row whose process is gone (dead or zombie pid) or whose
    heartbeat is older than STALE_SECONDS (which also covers a reused pid). Returns the ids."""
    cutoff = now() - STALE_SECONDS
    marked = []
    for row in ws.query("SELECT id, pid, heartbeat, started_at FROM runs "
                        "WHERE status='running'"):
        last = row["heartbeat"] or row["started_at"]
        dead = row["pid"] is not None and not _pid_alive(row["pid"])
        if not dead and last >= cutoff:
            continue
        error = (f"the process died (no heartbeat since {_clock(last)}); "
                 "run the same command again to resume")
        # The conditions are repeated so a row that finished (or beat) meanwhile is left alone.
        sql = ("UPDATE runs SET status='failed', error=?, finished_at=? "
               "WHERE id=? AND status='running' AND pid IS ?")
        params = [error, now(), row["id"], row["pid"]]
        if not dead:
            sql += " AND COALESCE(heartbeat, started_at) < ?"
            params.append(cutoff)
        if ws.conn.execute(sql, params).rowcount:
            marked.append(row["id"])
    return marked


def _pid_alive(pid: int | None) -> bool:
    """Whether a process with this pid exists and is not a zombie."""
    if not pid or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, another user's
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc (macOS): trust kill(0)
    state = stat.rsplit(")", 1)[-1].split()[0]  # the command name may contain spaces
    return state not in ("Z", "X")


def cancel_run(ws: Workspace, run_id: int) -> bool:
    """SIGTERM a running run (its whole process group when it leads one, as background runs
    do). Marks it 'cancelled' if the process is gone within CANCEL_WAIT_SECONDS; otherwise
    the process's own handler does. Returns whether a signal was sent."""
    refresh_runs(ws)
    run = get_run(ws, run_id)
    if run["status"] != "running":
        raise SemiEvolError(f"Run {run_id} already finished with status {run['status']}; "
                            "there is nothing to cancel.")
    pid = run["pid"]
    if pid is None:  # registered a moment ago, process not started yet: it will see this
        if ws.conn.execute("UPDATE runs SET status='cancelled', finished_at=? "
                           "WHERE id=? AND status='running' AND pid IS NULL",
                           (now(), run_id)).rowcount:
            return False
        pid = get_run(ws, run_id)["pid"]
    try:
        group = os.getpgid(pid)
        if group == pid and group != os.getpgrp():
            os.killpg(group, signal.SIGTERM)
        else:
            os.kill(pid, signal.SIGTERM)
        sent = True
    except ProcessLookupError:
        sent = False
    except PermissionError as exc:
        raise SemiEvolError(f"Run {run_id} belongs to process {pid}, which this user may not "
                            "signal; cancel it as the user who started it.") from exc
    deadline = time.monotonic() + CANCEL_WAIT_SECONDS
    while sent and _pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if not sent or not _pid_alive(pid):
        ws.conn.execute("UPDATE runs SET status='cancelled', finished_at=? "
                        "WHERE id=? AND status='running'", (now(), run_id))
    return sent


def list_runs(ws: Workspace, *, limit: int = 50) -> list[dict]:
    """The newest `limit` runs, newest first (dead processes marked failed first)."""
    refresh_runs(ws)
    return [_run_dict(r) for r in ws.query(f"SELECT {_COLUMNS} FROM runs ORDER BY id DESC "
                                           "LIMIT ?", (limit,))]


def get_run(ws: Workspace, run_id: int) -> dict:
    refresh_runs(ws)
    row = ws.conn.execute(f"SELECT {_COLUMNS} FROM runs WHERE id=?", (run_id,)).fetchone()
    if row is None:
        raise SemiEvolError(f"No run {run_id} in this workspace; `semievol runs {ws.path}` "
                            "lists them.")
    return _run_dict(row)


def run_metrics(ws: Workspace, run_id: int, name: str | None = None) -> list[dict]:
    """The run's metrics as {step, name, value}, ordered by step (then insertion)."""
    sql = "SELECT step, name, value FROM metrics WHERE run_id=?"
    params: tuple = (run_id,)
    if name is not None:
        sql, params = sql + " AND name=?", (run_id, name)
    return [dict(r) for r in ws.query(sql + " ORDER BY step, id", params)]


def log_tail(ws: Workspace, run: dict, lines: int = 40) -> str:
    """The last `lines` lines of the run's log (WORKSPACE/runs/<id>.log, `log_file`) as a
    terminal would show them (a progress bar redrawn with carriage returns shows its last
    state). "" when there is no log yet."""
    if lines <= 0:
        return ""
    try:
        with open_log(log_file(ws, run["id"]), "rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            start = max(0, size - max(65536, 400 * lines))
            fh.seek(start)
            text = fh.read().decode("utf-8", errors="replace")
    except (OSError, SemiEvolError):
        return ""
    shown = [line.rstrip("\r").rsplit("\r", 1)[-1] for line in text.split("\n")]
    if start > 0:
        shown = shown[1:]  # the first line was cut in half
    if shown and shown[-1] == "":
        shown = shown[:-1]
    return "\n".join(shown[-lines:])


def running_runs(ws: Workspace, round_id: int | None = None) -> list[dict]:
    """The runs still running (dead processes marked failed first), of one round if given."""
    refresh_runs(ws)
    sql, params = f"SELECT {_COLUMNS} FROM runs WHERE status='running'", ()
    if round_id is not None:
        sql, params = sql + " AND round_id=?", (round_id,)
    return [_run_dict(r) for r in ws.query(sql + " ORDER BY id", params)]


_COLUMNS = "*, (SELECT number FROM rounds WHERE rounds.id = runs.round_id) AS round_number"
"""A run's row and the number of the round it works on (None before it has one)."""


def _run_dict(row: sqlite3.Row) -> dict:
    run = dict(row)
    for key in ("config", "request"):
        run[key] = json.loads(run[key]) if run.get(key) else None
    return run


def _dumps(config: dict | None) -> str | None:
    return None if config is None else json.dumps(config, default=str)


def set_estimate(ws: Workspace, run_id: int, estimate: dict) -> None:
    """Store a run's time estimate (semievol.runs.estimate) in its request, for its progress."""
    row = ws.query("SELECT request FROM runs WHERE id=?", (run_id,))[0]
    request = json.loads(row["request"]) if row["request"] else {}
    rough = bool((estimate.get("speeds") or {}).get("rough"))
    request["estimate"] = {"steps": estimate["steps"], "total": estimate["total"],
                           "line": estimate.get("line", ""), "rough": rough}
    ws.conn.execute("UPDATE runs SET request=? WHERE id=?", (_dumps(request), run_id))
