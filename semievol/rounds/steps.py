"""The steps of a SemiEvol round and `run_steps`, the one runner every caller goes through
(the CLI in the foreground, a background worker given its run id, the app's launches, the
benches).

warmup   -> adapter W (round 1: LoRA on the labeled set and human labels; round N: round
            N-1's adapter)
label    -> collaborators' responses, pseudo-labels (agreed / reflected) and entropies
select   -> leakage flags, then the selection policy and human decisions
train    -> adapter R on labeled + human labels + selected pseudo-labels (paper eq. 9)
evaluate -> test metrics of base, base + demonstrations, warm-up and R

Every step checks what the workspace already holds and does only what is missing, so a
killed step resumes where it stopped and a repeated one does nothing. This module only
coordinates: each step calls the module that owns its work.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from semievol.config import SelectionConfig
from semievol.curation.calibration import calibration_report, hold_out
from semievol.curation.pool import pool_item_ids
from semievol.curation.selection_state import (applied_selection, apply_selection,
                                               selection_in_force)
from semievol.curation.training_set import (freeze, pseudo_responses, source_counts,
                                            training_examples, training_items, warmup_items)
from semievol.errors import SemiEvolError
from semievol.method.collaborators import run_collaborators
from semievol.method.evaluate import (evaluate, evaluation_split, store_evaluation,
                                      stored_evaluation)
from semievol.method.pseudo_labels import build_pseudo_labels
from semievol.method.retrieval import LazyEmbedder, index_workspace
from semievol.model.backend import backend_key
from semievol.model.loading import load_tokenizer, require_adapter, resolve_model_path
from semievol.model.prepare import check_model
from semievol.model.throughput import record_speed
from semievol.profiling import measuring, stage
from semievol.rounds.backends import check_servers, load_backends, servers_used
from semievol.rounds.guards import (check_training_warnings, collapse_message, flag_leakage,
                                    validate_training_set)
from semievol.rounds.record import (Round, adapter_dir, budget_of, get_round, set_adapter,
                                    set_status)
from semievol.rounds.scores import regression, start_adapter
from semievol.rounds.tracking import open_tracker
from semievol.training.finetune import train_lora
from semievol.workspace.items import load_items
from semievol.workspace.store import Workspace

Progress = Callable[[int, int, str], None]
Metric = Callable[[str, int, float], None]
OnStep = Callable[[int, int, str], None]
STEPS = ("warmup", "label", "select", "train", "evaluate")
"""A round's steps, in order (the CLI's commands, the app's buttons)."""


def _embedder(config, embedder):
    if embedder is not None:
        return embedder
    return LazyEmbedder(config.retrieval.embedder)


def _named(metric: Metric | None, name: str) -> Metric | None:
    """The training loss reported under the step's own name (warmup_loss, train_loss); any
    other training metric under the step's prefix (warmup_learning_rate)."""
    if metric is None:
        return None
    prefix = name.removesuffix("_loss")
    return lambda what, step, value: metric(name if what == "train_loss" else
                                            f"{prefix}_{what}", step, value)


def step_warmup(ws: Workspace, rnd: Round, *, embedder=None, progress: Progress | None = None,
                metric: Metric | None = None) -> dict:
    """In-weight propagation. Round 1 holds out the calibration slice, refreshes retrieval
    (the demonstrations pool lost those items) and trains W on the labeled set."""
    if rnd.warmup_adapter and Path(rnd.warmup_adapter, "adapter_config.json").exists():
        return {"skipped": True, "adapter": rnd.warmup_adapter}
    config = rnd.config
    if rnd.number > 1:

        if not get_round(ws, rnd.number - 1).final_adapter:
            raise SemiEvolError(f"Round {rnd.number - 1} has no trained adapter; finish it first.")
        start = start_adapter(ws, rnd.number, rnd.config.start_from)
        adapter = start["adapter"]
        summary = {"adapter": adapter, "from_round": start["round"], "from": start["model"],
                   "reason": start["reason"]}
    else:

        with stage("calibration hold-out + retrieval"):
            held_out = hold_out(ws, config.calibration)
            index_workspace(ws, _embedder(config, embedder), k=config.retrieval.k,
                            progress=progress)
        tokenizer = load_tokenizer(resolve_model_path(config.model.name_or_path))
        gold = warmup_items(ws)
        adapter = str(adapter_dir(ws, rnd, "warmup"))
        examples, prompts = training_examples(ws.require_task(), gold, tokenizer,
                                              budget_of(rnd))
        train, note = train_for_task(config.train, ws.require_task())
        summary = train_lora(examples, adapter, model=config.model, lora=config.lora,
                             train=train, progress=progress,
                             metric=_named(metric, "warmup_loss"))
        if note:
            summary["note"] = note
        summary.update(adapter=adapter, calibration_items=held_out, examples=len(gold),
                       sources=source_counts(gold),
                       prompts=prompts.summary())
    set_adapter(ws, rnd, "warmup", adapter)
    return summary


def step_label(ws: Workspace, rnd: Round, *, backends: dict | None = None,
               progress: Progress | None = None) -> dict:
    """Collaborators answer every pool item; agreement / reflection give pseudo-labels."""
    if not rnd.warmup_adapter:
        raise SemiEvolError(f"Round {rnd.number} has no warm-up adapter yet; run "
                            "`semievol warmup WORKSPACE` first.")
    config = rnd.config
    task = ws.require_task()
    items = load_items(ws, pool_item_ids(ws, rnd.number, rnd.config.unlabeled_limit))
    missing = [it.id for it in items if len(it.demonstrations) < max(
        c.demonstrations for c in config.collaborators)]
    if missing:
        raise SemiEvolError(f"{len(missing)} item(s) lack retrieved demonstrations; run "
                            "`semievol index WORKSPACE` (or the warm-up step) first.")
    backends = backends if backends is not None else load_backends(ws, rnd)
    servers = check_servers(ws, rnd, ["label"])  # the stored probe: no request
    warning = _check_warmup(ws, rnd, backends["warmup"], progress)
    stats = run_collaborators(ws, rnd.id, items, config.collaborators, backends, task,
                              budget=budget_of(rnd), progress=progress)
    entropy = backends[backend_key("warmup", config.served.entropy)]
    reflector = backends[backend_key(config.served.reflection_model, config.served.reflection)]
    paths = build_pseudo_labels(ws, rnd.id, items, len(config.collaborators), entropy, task,
                                reflector=reflector, budget=budget_of(rnd), progress=progress)
    prompts = stats.pop("prompts").merge(paths.pop("prompts"))
    calls = sum(b.calls for b in {id(b): b for b in backends.values()}.values())
    summary = {"items": len(items), **stats, **paths, "model_calls": calls,
               "prompts": prompts.summary(), "budget": budget_of(rnd), "servers": servers}
    if warning:
        summary["warning"] = warning
    return summary


def _check_warmup(ws: Workspace, rnd: Round, warmup, progress) -> str | None:
    """Before labeling: the warm-up model on the calibration slice (stored, a few items), and
    whether it has collapsed onto one class (guards.collapse_message)."""
    if not ws.split_counts()["calibration"] or ws.require_task().kind != "choice":
        return None
    report = evaluate(ws, warmup, model="warmup", round_id=rnd.id, split="calibration",
                      budget=budget_of(rnd), progress=progress)
    return collapse_message(report, f"Round {rnd.number}'s warm-up model")


def step_select(ws: Workspace, rnd: Round, *, selection: SelectionConfig | None = None,
                embedder=None) -> dict:
    """Flag test near-duplicates, then apply the selection: `selection` when given, else the
    one applied before (a re-run keeps a reviewer's tuning), else the round config's."""
    if not ws.scalar("SELECT COUNT(*) FROM pseudo_labels WHERE round_id=?", (rnd.id,)):
        raise SemiEvolError(f"Round {rnd.number} has no pseudo-labels yet; run "
                            "`semievol label WORKSPACE` first.")
    config = selection or selection_in_force(ws, rnd.id)[0]
    with stage("leakage guard"):
        flagged = flag_leakage(ws, rnd.id, _embedder(rnd.config, embedder),
                               similarity=rnd.config.leakage_similarity)
    with stage("selection"):
        summary = apply_selection(ws, rnd.id, config)
    if rnd.status == "open":  # the round now waits for a reviewer to say train
        set_status(ws, rnd, "awaiting_review")
    summary["flagged_leakage"] = flagged
    summary["calibration"] = calibration_report(ws, rnd.id, score=config.score)
    summary["calibration"].pop("curve", None)
    return summary


def step_train(ws: Workspace, rnd: Round, *, progress: Progress | None = None,
               metric: Metric | None = None, confirm: str | None = None) -> dict:
    """Final training on the curated set (paper eq. 9).

    Refused while the workspace's evidence warns against it (guards.training_warnings)
    unless `confirm` names who read the warnings and trains anyway; that is recorded with
    the round."""
    if rnd.final_adapter and Path(rnd.final_adapter, "adapter_config.json").exists():
        return {"skipped": True, "adapter": rnd.final_adapter}
    if applied_selection(ws, rnd.id) is None:
        raise SemiEvolError(f"Round {rnd.number} has no selection yet; run "
                            "`semievol select WORKSPACE` first.")
    check_training_warnings(ws, rnd, confirm)
    config = rnd.config
    task = ws.require_task()
    items = training_items(ws, rnd.number)  # the frozen rows, if training started before
    validate_training_set(task, items)
    tokenizer = load_tokenizer(resolve_model_path(config.model.name_or_path))
    # From here on the round trains on exactly these rows (a resume too); decisions made
    # later belong to the next round.
    freeze(ws, rnd.id, items)
    set_status(ws, rnd, "training")
    adapter = str(adapter_dir(ws, rnd, "final"))
    responses = pseudo_responses(ws, items) if task.kind == "open" and \
        task.open_target == "response" else None
    examples, prompts = training_examples(task, items, tokenizer, budget_of(rnd), responses)
    train, note = train_for_task(config.train, task)
    summary = train_lora(examples, adapter, model=config.model,
                         lora=config.lora, train=train,
                         init_adapter=rnd.warmup_adapter if config.continue_from_warmup else None,
                         progress=progress, metric=_named(metric, "train_loss"))
    set_adapter(ws, rnd, "final", adapter)
    set_status(ws, rnd, "trained")
    return {**summary, "adapter": adapter, "examples": source_counts(items),
            "prompts": prompts.summary(), **({"note": note} if note else {})}


def train_for_task(train, task):
    """(the training config for `task`, a note when it had to change): an open task's
    answers are not classes, so class balance is off for it."""
    import dataclasses

    if task.kind == "open" and train.class_balance != "none":
        return dataclasses.replace(train, class_balance="none"), (
            f"class balance {train.class_balance!r} is off for this open-answer task: its "
            "answers are not classes.")
    return train, None


def step_evaluate(ws: Workspace, rnd: Round, *, backends: dict | None = None,
                  progress: Progress | None = None, force: bool = False) -> dict:
    """Base (zero-shot and with k demonstrations), warm-up and the round's adapter on the
    test split (or, with no test set, the calibration slice); a trained round is then done.
    The summary carries the regression guard's verdict."""
    split = evaluation_split(ws)
    if split is None:
        raise SemiEvolError("The workspace has no test items (and no calibration slice) to "
                            "evaluate on: import a test file.")
    config = rnd.config
    backends = backends if backends is not None else load_backends(ws, rnd)
    budget = budget_of(rnd)
    served = config.served.evaluation  # '' = in this process
    base = backends[backend_key("base", served)]
    results = {
        "base": evaluate(ws, base, model="base", round_id=None, force=force,
                         progress=progress, split=split, budget=budget),
        "base+demos": evaluate(ws, base, model="base+demos", round_id=None,
                               demonstrations=config.retrieval.k, force=force,
                               progress=progress, split=split, budget=budget)}
    # Round N's warm-up is an adapter of an earlier round: its report is already stored.
    source = _warmup_source(ws, rnd)
    inherited = None if source is None or force else stored_evaluation(ws, *source, split)
    if inherited is not None and stored_evaluation(ws, rnd.id, "warmup", split) is None:
        store_evaluation(ws, {**inherited, "model": "warmup"}, round_id=rnd.id)
    results["warmup"] = evaluate(ws, backends[backend_key("warmup", served)], model="warmup",
                                 round_id=rnd.id, force=force, progress=progress, split=split,
                                 budget=budget)
    if rnd.final_adapter:
        role = backend_key("final", served)
        final = backends.get(role) or load_backends(ws, rnd)[role]
        results["round"] = evaluate(ws, final, model="round", round_id=rnd.id, force=force,
                                    progress=progress, split=split, budget=budget)
        set_status(ws, rnd, "done")
    summary = {name: {"accuracy": r["accuracy"], "macro_f1": r.get("macro_f1"),
                      "majority_baseline": r.get("majority_baseline"), "split": split}
               for name, r in results.items()}
    check = regression(ws, rnd)
    if check and check["message"]:
        summary["regression"] = check
    return summary


def _warmup_source(ws: Workspace, rnd: Round) -> tuple[int, str] | None:
    """(round id, model) of the earlier adapter that round `rnd` started from, if any."""
    if rnd.number == 1 or not rnd.warmup_adapter:
        return None
    for earlier in range(rnd.number - 1, 0, -1):
        other = get_round(ws, earlier)
        for model, path in (("round", other.final_adapter), ("warmup", other.warmup_adapter)):
            if path and Path(path) == Path(rnd.warmup_adapter):
                return other.id, model
    return None


def preflight(ws: Workspace, rnd: Round, steps: list[str], *, servers: bool = True) -> None:
    """Check, before any work, that the model and every adapter the steps need are there,
    and (`servers`) that every model server they use answers and can serve them: a missing
    adapter fails now with what to do, not after minutes of other work."""
    check_model(resolve_model_path(rnd.config.model.name_or_path), budget=budget_of(rnd))
    needs_warmup = "warmup" not in steps and any(s in steps for s in ("label", "evaluate")) \
        or ("train" in steps and rnd.config.continue_from_warmup and "warmup" not in steps)
    if needs_warmup:
        if not rnd.warmup_adapter:
            raise SemiEvolError(f"Round {rnd.number} has no warm-up adapter yet; run "
                                "`semievol warmup WORKSPACE` first.")
        require_adapter(rnd.warmup_adapter)
    if "evaluate" in steps and "train" not in steps and rnd.final_adapter:
        require_adapter(rnd.final_adapter)
    if servers:
        check_servers(ws, rnd, steps)


def check_steps(steps) -> list[str]:
    """The steps as a list, or a clear error naming the unknown ones."""
    steps = list(steps)
    unknown = [s for s in steps if s not in STEPS]
    if unknown or not steps:
        raise SemiEvolError(f"Unknown step(s) {', '.join(map(repr, unknown)) or '(none)'}: "
                            f"choose from {', '.join(STEPS)}.")
    return steps


def run_steps(ws: Workspace, number: int, steps, *, selection: SelectionConfig | None = None,
              force: bool = False, confirm: str | None = None,
              progress: Progress | None = None,
              metric: Metric | None = None, on_step: OnStep | None = None,
              backends: dict | None = None, embedder=None) -> dict[str, dict]:
    """Run `steps` (in the order given) of round `number`; returns each step's summary.

    Each step sees the round as the previous one left it. `selection` applies to the
    select step, `force` to evaluate (recompute stored reports), `confirm` (who trains
    despite the evidence's warnings) to train. `on_step(index, count,
    name)` is called as each step starts; `progress` and `metric` receive that step's
    progress and training losses. Backends are loaded lazily and shared by the steps;
    `backends` (e.g. {"base": ...}) and `embedder` replace the ones the steps would load
    (the benches share one base model across workspaces)."""
    steps = check_steps(steps)
    preflight(ws, get_round(ws, number), steps)
    results: dict[str, dict] = {}
    cache: dict = {}
    tracker = open_tracker(ws, get_round(ws, number))
    if tracker is not None:
        metric = _tracked(metric, tracker)
    try:
        with measuring() as profiler:
            for index, step in enumerate(steps):
                rnd = get_round(ws, number)
                if on_step:
                    on_step(index, len(steps), step)
                shared = {**load_backends(ws, rnd, cache), **(backends or {})}
                before, started = dict(profiler.totals), time.perf_counter()
                with stage(step):
                    results[step] = _run_one(ws, rnd, step, shared, selection=selection,
                                             force=force, confirm=confirm, progress=progress,
                                             metric=metric, embedder=embedder)
                _remember_speed(ws, rnd, step, results[step], time.perf_counter() - started,
                              {k: profiler.totals[k] - before[k] for k in before})
                if tracker is not None and step == "evaluate":
                    tracker.evaluation(number, results[step])
    finally:
        if tracker is not None:
            tracker.close()
    return results


def _tracked(metric: Metric | None, tracker) -> Metric:
    """`metric`, and the same numbers to the round's tracker."""
    def both(name, step, value):
        tracker.scalar(name, value, step)
        if metric is not None:
            metric(name, step, value)
    return both


def _remember_speed(ws: Workspace, rnd: Round, step: str, result: dict, seconds: float,
                  tokens: dict) -> None:
    """This machine's measured speed, for the next estimate: training from the optimizer
    loop's own tokens per second, inference from the step's tokens over its wall time."""
    if step in ("warmup", "train") and result.get("tokens_per_second"):
        record_speed(ws, rnd.config.model, "training", tokens["train"],
               tokens["train"] / result["tokens_per_second"])
    elif step in ("label", "evaluate") and not servers_used(rnd.config, [step]):
        # Not where part of the step ran on a server: its wall time says nothing about this
        # machine's speed (a served round once recorded a third of the local rate).
        record_speed(ws, rnd.config.model, "inference", tokens["forward"], seconds)


def _run_one(ws, rnd, step, shared, *, selection, force, confirm, progress, metric, embedder):
    """One step of `run_steps`, with the arguments it takes."""
    if step == "warmup":
        return step_warmup(ws, rnd, embedder=embedder, progress=progress, metric=metric)
    if step == "label":
        return step_label(ws, rnd, backends=shared, progress=progress)
    if step == "select":
        return step_select(ws, rnd, selection=selection, embedder=embedder)
    if step == "train":
        return step_train(ws, rnd, progress=progress, metric=metric, confirm=confirm)
    return step_evaluate(ws, rnd, backends=shared, progress=progress, force=force)
