"""What a running step reports into its run's row: which step of how many, progress,
elapsed and remaining time, training losses (semievol.runs.jobs executes runs with it).

A run of several steps (a whole round) reports one fraction over all of them. With the
run's time estimate (semievol.runs.estimate) each step weighs what it is expected to take, so a
three-minute selection does not count as much as a forty-minute labeling; without one,
every step weighs the same. The fraction only goes forward: one formula for the whole run
(a step the estimate does not know weighs nothing rather than switching formulas, which once
took a round from 80 % back to 56 %), and never below what was already shown.

The message says "step k/n <name>: ..." and the row keeps the seconds left as of that
write (`left_seconds`, `progress_at`): `run_clock` turns them into "2:31 elapsed, about 1:05
left" on the reader's clock, so elapsed time runs on while a model loads and a finished or
cancelled run shows no time left. A remaining time that grows says why in the message.
"""

from __future__ import annotations

import datetime
import errno
import os
import time
from pathlib import Path

from semievol.errors import SemiEvolError
from semievol.workspace.store import Workspace, now

PROGRESS_INTERVAL = 0.5  # at most one progress write per this many seconds (not the last)


def clock(t: float) -> str:
    return datetime.datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S")


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}" if seconds >= 60 else f"{seconds} s"


def log_file(ws: Workspace, run_id: int) -> Path:
    """A run's log, WORKSPACE/runs/<id>.log: named by the run's id (a path stored in the
    database is never followed) and inside the workspace (a link out is refused)."""
    folder = ws.inside("runs")
    folder.mkdir(exist_ok=True)
    return ws.inside(folder / f"{run_id}.log")


def open_log(path: Path, mode: str = "a"):
    """A log file opened to append (`a`, `ab`) or read (`rb`) without following a link at
    its own name: a link planted at runs/<next id>.log would otherwise receive a run's
    output."""
    flags = os.O_NOFOLLOW | (os.O_WRONLY | os.O_APPEND | os.O_CREAT if "a" in mode
                             else os.O_RDONLY)
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise SemiEvolError(f"{path} is a link; a run's log is never written through one. "
                                "Remove it.") from exc
        raise
    return os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"}))


def remaining(estimate: dict, done_steps: list[str], current: str | None, fraction: float,
              elapsed: float) -> float | None:
    """Seconds left: the estimate of what is left, scaled by how the finished work compared
    with its estimate (a machine busier than when measured shows up here)."""
    if not estimate:
        return None
    per = estimate["steps"]
    expected_so_far = sum(per.get(s, 0.0) for s in done_steps) + \
        (per.get(current, 0.0) * fraction if current else 0.0)
    left = sum(per.get(s, 0.0) for s in per if s not in done_steps and s != current) + \
        (per.get(current, 0.0) * (1 - fraction) if current else 0.0)
    scale = elapsed / expected_so_far if expected_so_far > 30 else 1.0
    return max(0.0, left * min(max(scale, 0.25), 4.0))


REVISE_UP = 1.2
"""A new remaining time above this many times the old one (counted down) is said aloud."""
REVISED_SHOWN = 30.0
"""Seconds the "estimate raised" note stays in the message (a reader polls every 2 s)."""


def run_clock(run: dict, at: float | None = None) -> str:
    """A run's time in words on the reader's clock: "2:31 elapsed, about 1:05 left" while
    it runs (the remaining time counted down since its last progress write; "rough" while
    the estimate rests on the matmul peak alone), "took 6:40" or "cancelled after 2:31"
    once it ended."""
    at = now() if at is None else at
    if run["status"] != "running":
        end = run.get("finished_at") or at
        took = _duration(max(0.0, end - run["started_at"]))
        return {"succeeded": f"took {took}", "cancelled": f"cancelled after {took}",
                "failed": f"failed after {took}"}.get(run["status"], took)
    text = f"{_duration(max(0.0, at - run['started_at']))} elapsed"
    left = run.get("left_seconds")
    if left is None:
        return text
    left -= max(0.0, at - (run.get("progress_at") or at))
    if left <= 0:
        return text + ", taking longer than estimated"
    estimate = (run.get("request") or {}).get("estimate") or {}
    rough = " (rough: no step measured on this machine yet)" if estimate.get("rough") else ""
    return text + f", about {_duration(left)} left{rough}"


class RunHandle:
    def __init__(self, ws: Workspace, run_id: int, round_id: int | None, *,
                 estimate: dict | None = None):
        self.ws = ws
        self.id = run_id
        self.round_id = round_id
        self.estimate = estimate  # {"steps": {name: seconds}, "total": seconds}
        self._started = time.monotonic()
        self._last_write = 0.0
        self._last_message: str | None = None
        self._step: tuple[int, int, str] | None = None
        self._done: list[str] = []
        self._log: Path | None = None
        self._last_logged = 0.0
        self._shown = 0.0  # the highest fraction written: progress never goes back
        self._left: tuple[float, float] | None = None  # (when, seconds left) last written
        self._raised: tuple[float, str] | None = None  # (until when, the note) once raised

    def keep_log(self) -> None:
        """Write a plain log of this run to WORKSPACE/runs/<id>.log (a foreground run; a
        background run's output already goes there)."""
        self._log = log_file(self.ws, self.id)
        self.ws.conn.execute("UPDATE runs SET log_path=? WHERE id=?", (str(self._log), self.id))
        self.log(f"# run {self.id} started {clock(now())} in the foreground (pid {os.getpid()})")

    def log(self, line: str) -> None:
        if self._log is not None:
            with open_log(self._log) as fh:
                fh.write(line.rstrip("\n") + "\n")

    def begin_step(self, index: int, count: int, name: str) -> None:
        """Step `index` (0-based) of `count` starts."""
        if self._step is not None:
            self._done.append(self._step[2])
        self._step = (index, count, name)
        self.log(f"== step {index + 1}/{count}: {name}")
        self.progress(0, 1, "starting")

    def _overall(self, fraction: float) -> float:
        """The run's fraction done, with step `fraction` of the current step done."""
        index, count, name = self._step
        weights = (self.estimate or {}).get("steps") or {}
        total = sum(weights.values())
        if total > 0:  # one formula for the whole run: an unknown step weighs nothing
            done = sum(weights.get(s, 0.0) for s in self._done)
            return min(1.0, (done + fraction * weights.get(name, 0.0)) / total)
        return (index + fraction) / count

    def times(self, fraction: float) -> tuple[float, float | None]:
        """(seconds elapsed, seconds left or None) with the current step `fraction` done."""
        elapsed = time.monotonic() - self._started
        name = self._step[2] if self._step else None
        return elapsed, remaining(self.estimate, self._done, name, fraction, elapsed)

    def progress(self, done: int, total: int, message: str = "") -> None:
        """Record done/total (throttled to one write per PROGRESS_INTERVAL, except the last
        step and a change of message)."""
        t = time.monotonic()
        if (done < total and message == self._last_message
                and t - self._last_write < PROGRESS_INTERVAL):
            return
        self._last_write, self._last_message = t, message
        fraction = min(max(done / total, 0.0), 1.0) if total > 0 else 0.0
        overall, left, elapsed = fraction, None, None
        if self._step is not None:
            index, count, name = self._step
            overall = self._overall(fraction)
            message = f"step {index + 1}/{count} {name}: {message}" if count > 1 \
                else f"{name}: {message}"
            elapsed, left = self.times(fraction)
            if left is not None:
                message += self._revised(t, left, name)
        overall = self._shown = max(self._shown, overall)
        self.ws.conn.execute("UPDATE runs SET progress=?, message=?, left_seconds=?, "
                             "progress_at=? WHERE id=?", (overall, message, left, now(), self.id))
        if done >= total or t - self._last_logged >= 5:
            self._last_logged = t
            clock_text = "" if elapsed is None else f" ({_duration(elapsed)} elapsed" + (
                f", about {_duration(left)} left)" if left is not None else ")")
            self.log(f"[{100 * overall:5.1f}%] {message}{clock_text}")

    def _revised(self, t: float, left: float, step: str) -> str:
        """" · estimate raised: <step> runs slower than estimated" when the time left grew
        past what the last write, counted down, promised, and for REVISED_SHOWN seconds
        after; "" otherwise."""
        before, self._left = self._left, (t, left)
        if before is not None and left > max(0.0, before[1] - (t - before[0])) * REVISE_UP + 10:
            self._raised = (t + REVISED_SHOWN,
                            f" · estimate raised: {step} runs slower than estimated")
        if self._raised is not None and t < self._raised[0]:
            return self._raised[1]
        return ""

    def metric(self, name: str, step: int | None, value: float) -> None:
        self.ws.conn.execute(
            "INSERT INTO metrics(run_id, round_id, name, step, value, created_at)"
            " VALUES(?, ?, ?, ?, ?, ?)",
            (self.id, self.round_id, name, step, None if value is None else float(value),
             now()))
