"""What a running step reports into its run's row: which step of how many, progress,
elapsed and remaining time, training losses (semievol.runs.jobs executes runs with it).

A run of several steps (a whole round) reports one fraction over all of them. With the
run's time estimate (semievol.runs.estimate) each step weighs what it is expected to take, so a
three-minute selection does not count as much as a forty-minute labeling; without one,
every step weighs the same. The message says "step k/n <name>: ... (elapsed, about N
left)" so a reader sees where it is and how long it should still take.
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
        if total > 0 and name in weights:
            done = sum(weights.get(s, 0.0) for s in self._done)
            return min(1.0, (done + fraction * weights[name]) / total)
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
        overall = fraction
        if self._step is not None:
            index, count, name = self._step
            overall = self._overall(fraction)
            message = f"step {index + 1}/{count} {name}: {message}" if count > 1 \
                else f"{name}: {message}"
            elapsed, left = self.times(fraction)
            message += f" ({_duration(elapsed)} elapsed" + (
                f", about {_duration(left)} left)" if left is not None else ")")
        self.ws.conn.execute("UPDATE runs SET progress=?, message=? WHERE id=?",
                             (overall, message, self.id))
        if done >= total or t - self._last_logged >= 5:
            self._last_logged = t
            self.log(f"[{100 * overall:5.1f}%] {message}")

    def metric(self, name: str, step: int | None, value: float) -> None:
        self.ws.conn.execute(
            "INSERT INTO metrics(run_id, round_id, name, step, value, created_at)"
            " VALUES(?, ?, ?, ?, ?, ?)",
            (self.id, self.round_id, name, step, None if value is None else float(value),
             now()))
