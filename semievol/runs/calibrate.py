"""This machine's speed, measured before its first round: a few seconds of the round's own
scoring and training on the workspace's labeled items, recorded as the steps themselves
record it (semievol.model.throughput.record_speed), so the first estimate is work over a
measured speed instead of a guess from the matmul peak.

Why measure: the peak-based guess assumed a share of the peak that depends on the CPU far
more than the peak does. Before this, a first round on the 2-core AMX Xeon was estimated at
2.5 minutes and took 19.2; on the 2-core AMD EPYC (Zen 3, no bf16) a round took ~35 minutes
where the same guess would say 10.
"""

from __future__ import annotations

import dataclasses
import time

from semievol.curation.training_set import training_examples, warmup_items
from semievol.model.loading import load_tokenizer, resolve_model_path
from semievol.model.local import load_backend
from semievol.model.throughput import record_speed
from semievol.profiling import Profiler
from semievol.rounds.record import budget_of
from semievol.runs.estimate import speeds
from semievol.runs.work import prompt_builder
from semievol.task.formats import Example, generated_tokens, option_targets
from semievol.training.finetune import prepare, train_step
from semievol.workspace.store import Workspace

ITEMS = 16
"""Labeled items scored in the measurement: one batch of the local backend."""
TRAIN_STEPS = 3
"""Optimizer steps: the first warms up (thread pool, allocator, kernel choice), the rest
are timed."""


def needs_measurement(ws: Workspace, rnd) -> bool:
    """True when the estimate for `rnd`'s model would be a guess: no step (nor an earlier
    measurement) has run on this machine with this model, device, dtype and thread count."""
    return bool(speeds(ws, rnd.config.model).get("rough"))


def measure_speed(ws: Workspace, rnd, *, progress=None) -> dict:
    """Score up to ITEMS labeled items with the round's longest local demonstration count
    and run TRAIN_STEPS warm-up training steps on the round's base model, then record the
    tokens per second of both here (workspace and machine cache). Returns {inference,
    training: tokens/s, seconds: the measurement's wall time}; {} when the workspace has no
    labeled item to measure with. `progress` gets (0, 0, message): a message without a
    fraction, so a run's progress bar (which never moves back) does not jump ahead."""
    started = time.perf_counter()
    gold = warmup_items(ws)
    if not gold:
        return {}
    items = (gold * (ITEMS // len(gold) + 1))[:ITEMS]
    config = rnd.config
    out = {"inference": _measure_scoring(ws, rnd, items, progress),
           "training": _measure_training(ws, rnd, items, progress)}
    for kind in ("inference", "training"):
        tokens, seconds = out[kind]
        record_speed(ws, config.model, kind, tokens, seconds, min_tokens=1)
        out[kind] = tokens / seconds if seconds else None
    out["seconds"] = time.perf_counter() - started
    return out


def _measure_scoring(ws, rnd, items: list[dict], progress) -> tuple[int, float]:
    """(tokens, seconds) of one timed scoring batch, after a small untimed one."""
    task = ws.require_task()
    local = [c.demonstrations for c in rnd.config.collaborators if not c.server]
    k = max(local, default=0)
    builder = prompt_builder(ws, rnd)
    examples = [Example(it["question"], it["options"], it["answer"]) for it in items]
    # Demonstrations from the other labeled items: prompts as long as the collaborators'.
    prompts = [builder.item(Example(e.question, e.options),
                            [d for d in examples if d is not e][:k]).text for e in examples]
    if progress:
        progress(0, 0, "measuring this machine's speed: scoring")
    backend = load_backend(rnd.config.model, batch_size=len(prompts))
    with Profiler().active() as profiler:
        _score(task, backend, prompts[:2], [e.options for e in examples[:2]])  # warm-up
        profiler.totals["forward"] = 0
        begin = time.perf_counter()
        _score(task, backend, prompts, [e.options for e in examples])
        seconds = time.perf_counter() - begin
    return profiler.totals["forward"], seconds


def _score(task, backend, prompts: list[str], options: list) -> None:
    """What a collaborator asks of the model (semievol.method.collaborators): the options'
    distributions for a choice task, a greedy answer for an open one."""
    if task.kind == "open":
        backend.generate(prompts, max_new_tokens=generated_tokens(task))
    else:
        backend.option_distributions(prompts, [option_targets(task, o, backend.tokenizer)
                                               for o in options])


def _measure_training(ws, rnd, items: list[dict], progress) -> tuple[int, float]:
    """(tokens, seconds) of the timed warm-up training steps."""
    config = rnd.config
    tokenizer = load_tokenizer(resolve_model_path(config.model.name_or_path))
    examples, _ = training_examples(ws.require_task(), items, tokenizer, budget_of(rnd))
    train = dataclasses.replace(config.train, max_steps=TRAIN_STEPS, checkpoint_every=0,
                                processes=1)
    if progress:
        progress(0, 0, "measuring this machine's speed: training")
    t = prepare(examples, model=config.model, lora=config.lora, train=train,
                init_adapter=None, resume_from=None)
    with Profiler().active():  # its tokens are not the round's (a bench's profiler is open)
        train_step(t, 0, train)
        tokens, begin = 0, time.perf_counter()
        for step in range(1, TRAIN_STEPS):
            tokens += train_step(t, step, train)[1]
        return tokens, time.perf_counter() - begin
