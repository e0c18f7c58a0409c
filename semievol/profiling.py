"""Where a round's time goes: named stages (a step, each collaborator, reflection, the
eq. 6 entropy, each evaluation, training) with their wall time, CPU time and the tokens the
model processed. The library marks its stages with `stage(...)` and counts tokens with
`count_tokens(...)`; both cost nothing unless a `Profiler` is active. bench/round_profile.py
activates one for the per-stage table; run_steps keeps one for each run (`measuring`), whose
token totals tell semievol.runs.estimate this machine's speed.
"""

from __future__ import annotations

import contextlib
import contextvars
import time
from dataclasses import dataclass, field

_active: contextvars.ContextVar = contextvars.ContextVar("semievol_profiler", default=None)


@dataclass
class StageRecord:
    path: str                     # "label / collaborator 2 (warmup/k3/t1/s1)"
    wall: float = 0.0
    cpu: float = 0.0
    forward_tokens: int = 0       # tokens through the model for inference
    train_tokens: int = 0         # tokens through forward + backward in training
    calls: int = 0                # how many times the stage ran


@dataclass
class Profiler:
    records: dict[str, StageRecord] = field(default_factory=dict)
    totals: dict[str, int] = field(default_factory=lambda: {"forward": 0, "train": 0})
    _stack: list[str] = field(default_factory=list)

    @contextlib.contextmanager
    def active(self):
        token = _active.set(self)
        try:
            yield self
        finally:
            _active.reset(token)

    def rows(self) -> list[dict]:
        return [dict(r.__dict__) for r in self.records.values()]


@contextlib.contextmanager
def stage(name: str):
    """Time the enclosed block as `name`, nested under the stages already open."""
    profiler = _active.get()
    if profiler is None:
        yield
        return
    path = " / ".join([*profiler._stack, name])
    record = profiler.records.setdefault(path, StageRecord(path))
    profiler._stack.append(name)
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        yield
    finally:
        record.wall += time.perf_counter() - wall
        record.cpu += time.process_time() - cpu
        record.calls += 1
        profiler._stack.pop()


@contextlib.contextmanager
def measuring():
    """The active profiler, or a fresh one active for the enclosed block: run_steps counts
    each step's tokens with it, to measure this machine's speed (semievol.runs.estimate)."""
    profiler = _active.get()
    if profiler is not None:
        yield profiler
        return
    with Profiler().active() as fresh:
        yield fresh


def count_tokens(n: int, *, training: bool = False) -> None:
    """Add `n` tokens to every open stage (inference, or training: forward and backward)."""
    profiler = _active.get()
    if profiler is None or not n:
        return
    profiler.totals["train" if training else "forward"] += n
    for depth in range(1, len(profiler._stack) + 1):
        record = profiler.records[" / ".join(profiler._stack[:depth])]
        if training:
            record.train_tokens += n
        else:
            record.forward_tokens += n
