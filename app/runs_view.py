"""The Runs page: every background or foreground run, and the live detail of one.

`runs_frame` and `heartbeat_age` are plain functions; `show_runs` renders. The detail of the
selected run is a fragment that re-runs every 2 s while some run is running (progress, loss,
log tail); once nothing runs it is drawn once, statically.
"""

from __future__ import annotations

import datetime
import re
import time

import pandas as pd
import streamlit as st
from common import allow, literal, may_here, show_error

from semievol.errors import SemiEvolError
from semievol.runs import jobs, launch
from semievol.runs.progress import run_clock
from semievol.workspace.store import Workspace

POLL_SECONDS = 2
LOG_LINES = 40
SETUP_PAGE = "pages/2_Round_setup.py"
LOSS_KINDS = ("warmup", "train", "round")


def clock(t: float | None) -> str:
    return "" if t is None else datetime.datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S")


def heartbeat_age(run: dict, at: float | None = None) -> float | None:
    """Seconds since the run's last heartbeat (None when it never beat)."""
    last = run.get("heartbeat") or run.get("started_at")
    return None if last is None else max(0.0, (time.time() if at is None else at) - last)


_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def clean_log(text: str) -> str:
    """A log tail without terminal control codes and the blank lines and "(more hidden)"
    markers that progress bars leave in a file."""
    lines = (_ANSI.sub("", line).rstrip() for line in text.split("\n"))
    return "\n".join(line for line in lines
                     if line.strip() and line.strip() != "... (more hidden) ...")


def runs_frame(runs: list[dict]) -> pd.DataFrame:
    """One row per run: id, status, kind, round, progress (%), message, started, finished."""
    rows = [{"id": r["id"], "status": r["status"],
             "kind": r["kind"], "round": r["round_number"],
             "progress": round(100 * (r["progress"] or 0.0), 1), "message": r["message"] or "",
             "time": run_clock(r),
             "started": clock(r["started_at"]), "finished": clock(r["finished_at"])}
            for r in runs]
    return pd.DataFrame(rows, columns=["id", "status", "kind", "round", "progress", "message",
                                       "time", "started", "finished"])


def run_label(run: dict) -> str:
    number = run["round_number"]
    where = f" · round {number}" if number is not None else ""
    return f"#{run['id']} {run['kind']}{where} · {run['status']}"


# -- rendering ----------------------------------------------------------------------------
LOSS_NAMES = {"warmup_loss": "warm-up training", "train_loss": "final training"}


def show_loss(ws: Workspace, run: dict) -> None:
    """The run's training losses, one curve per training (warm-up and final apart)."""
    points = [p for name in LOSS_NAMES for p in jobs.run_metrics(ws, run["id"], name)]
    if not points:
        if run["kind"] in LOSS_KINDS:
            st.caption("No training loss recorded yet.")
        return
    import plotly.express as px

    frame = pd.DataFrame(points)
    frame["training"] = frame["name"].map(LOSS_NAMES)
    figure = px.line(frame, x="step", y="value", color="training",
                     markers=len(frame) < 50,
                     labels={"value": "training loss", "step": "optimizer step"},
                     title="Training loss")
    if frame["step"].nunique() <= 20:
        figure.update_xaxes(dtick=1)  # whole optimizer steps, not 0.5
    figure.update_layout(height=300, margin=dict(t=40, b=10))
    st.plotly_chart(figure, key=f"loss_{run['id']}")


def _cancel(ws: Workspace, run_id: int) -> None:
    try:
        allow(ws, "launch")
        sent = jobs.cancel_run(ws, run_id)
    except SemiEvolError as exc:
        show_error(exc)
        return
    st.session_state["runs_flash"] = (f"Run {run_id}: cancel signal sent." if sent
                                      else f"Run {run_id} was not running.")
    st.rerun()


def _resume(ws: Workspace, run_id: int) -> None:
    try:
        allow(ws, "launch")
        new_id = launch.resume(ws, run_id)
    except SemiEvolError as exc:  # RunRefused included
        show_error(exc)
        return
    st.session_state["runs_flash"] = f"Resumed run {run_id} as run {new_id}."
    st.session_state["runs_pending_select"] = new_id  # the selectbox exists already
    st.rerun()


def live_runs(ws: Workspace, run_id: int) -> None:
    """The runs table and the chosen run's detail as the body of a polling fragment (so the
    two always agree): when no run is left running, the whole page is drawn again
    (statically, so the polling stops)."""
    runs = jobs.list_runs(ws)
    show_table(runs)
    if not any(r["status"] == "running" for r in runs):
        st.rerun()
    show_run_detail(ws, run_id)


def show_table(runs: list[dict]) -> None:
    st.dataframe(runs_frame(runs), hide_index=True,
                 column_config={"progress": st.column_config.ProgressColumn(
                     "progress", min_value=0, max_value=100, format="%.0f%%")})


def show_run_detail(ws: Workspace, run_id: int) -> None:
    """Status, progress, heartbeat, loss curve, log tail, and Cancel / Resume."""
    try:
        run = jobs.get_run(ws, run_id)
    except SemiEvolError as exc:
        show_error(exc)
        return
    st.subheader(run_label(run))
    progress = min(max(run["progress"] or 0.0, 0.0), 1.0)
    st.progress(progress, text=f"{100 * progress:.0f}% · {run['message'] or run['status']} · "
                               f"{run_clock(run)}")
    age = heartbeat_age(run)
    facts = [f"started {clock(run['started_at'])}"]
    if run["status"] == "running":
        if age is not None:
            facts.append(f"heartbeat {age:.0f} s ago")
        facts.append(f"pid {run['pid']}")
    elif run["finished_at"]:
        facts.append(f"finished {clock(run['finished_at'])} "
                     f"({run['finished_at'] - run['started_at']:.0f} s)")
    st.caption(" · ".join(facts))
    lead = may_here(ws, "launch")
    if run["status"] == "running" and lead:
        if st.button("Cancel run", key=f"cancel_{run['id']}", icon=":material/stop:"):
            _cancel(ws, run["id"])
    if run["status"] == "failed":
        first, _, rest = (run["error"] or "failed without an error message").partition("\n")
        st.error(literal(first), icon=":material/error:")
        if rest:
            with st.expander("Error details"):
                st.code(rest, language="text")
    if run["status"] in launch.RESUMABLE and run["kind"] in launch.RUN_KINDS and lead:
        if st.button("Resume", key=f"resume_{run['id']}", icon=":material/replay:",
                     help="Run the same step again; it continues from what the workspace "
                          "stores (adapters, cached responses, checkpoints)."):
            _resume(ws, run["id"])
    show_loss(ws, run)
    tail = clean_log(jobs.log_tail(ws, run, 4 * LOG_LINES))
    tail = "\n".join(tail.split("\n")[-LOG_LINES:])
    st.markdown("**Log** (last lines)")
    if tail:
        st.code(tail, language="text")
    else:
        st.caption("No log output yet.")


def show_runs(ws: Workspace) -> None:
    message = st.session_state.pop("runs_flash", None)
    if message:
        st.success(message)
    runs = jobs.list_runs(ws)
    if not runs:
        st.info("No runs yet: launch a round (or one step of it) on the Round setup page; "
                "`semievol round WORKSPACE --background` shows up here too.")
        st.page_link(SETUP_PAGE, label="Open Round setup", icon=":material/settings:")
        return
    ids = [r["id"] for r in runs]
    labels = {r["id"]: run_label(r) for r in runs}
    chosen = st.session_state.pop("runs_pending_select", None) or \
        st.session_state.get("runs_selected")
    if chosen not in ids:
        running = [r["id"] for r in runs if r["status"] == "running"]
        chosen = running[0] if running else ids[0]
    st.session_state["runs_selected"] = chosen
    run_id = st.selectbox("Run", ids, key="runs_selected", format_func=labels.get)
    if any(r["status"] == "running" for r in runs):
        # Polls only while something runs; when nothing does, the page is redrawn statically.
        st.fragment(live_runs, run_every=POLL_SECONDS)(ws, run_id)
    else:
        show_table(runs)
        show_run_detail(ws, run_id)
