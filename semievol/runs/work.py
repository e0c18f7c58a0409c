"""The work of each step in tokens through the model, counted from the workspace with the
round's own prompts (semievol.runs.estimate turns it into time). Counting needs the tokenizer
only; nothing is loaded or computed."""

from __future__ import annotations

from semievol.curation.pool import pool_item_ids
from semievol.curation.training_set import live_training_items, warmup_items
from semievol.method.collaborators import collaborator_prompt
from semievol.method.evaluate import evaluation_split, stored_evaluation
from semievol.model.prompts import PromptBuilder
from semievol.rounds.backends import tokenizer_for
from semievol.rounds.record import budget_of
from semievol.task.formats import Example
from semievol.workspace.items import load_items, split_ids
from semievol.workspace.store import Workspace

REFLECTED_SHARE = 0.35
"""Share of disputed (reflected) items assumed before the workspace has measured its own."""


def prompt_builder(ws: Workspace, rnd) -> PromptBuilder:
    """The round's prompts, as its steps build them (task, tokenizer, context budget)."""
    return PromptBuilder(ws.require_task(), tokenizer_for(rnd.config.model.name_or_path),
                         budget_of(rnd))


def step_work(ws: Workspace, rnd, step: str, steps: list[str]) -> tuple[str, int, int]:
    """(inference or training, tokens, models to load) of `step` of round `rnd`."""
    if step == "warmup":
        # A reused warm-up (round N > 1 starts from an earlier adapter, or round 1's was
        # trained already) loads no model either: the step only records which adapter.
        tokens = _warmup_tokens(ws, rnd)
        return "training", tokens, 1 if tokens else 0
    if step == "label":
        return "inference", _label_tokens(ws, rnd), 2
    if step == "train":
        return "training", _train_tokens(ws, rnd, "select" in steps), 1
    if step == "evaluate":
        tokens, models = _evaluate_tokens(ws, rnd, "train" in steps)
        return "inference", tokens, models
    return "inference", 0, 0  # select: no model


def _training_tokens(builder, items: list[dict], train, extra: int = 0) -> int:
    """Tokens of the optimizer steps over `items` (plus `extra` items of the same mean
    length): steps x batch x the mean example length."""
    if not items:
        return 0
    lengths = []
    for it in items:
        prompt, target = builder.training(Example(it["question"], it["options"]), it["answer"])
        lengths.append(prompt.tokens + builder.count(target))
    per_step = train.batch_size * train.grad_accum
    count = len(items) + extra
    steps = train.total_steps(count)
    return int(steps * per_step * sum(lengths) / len(lengths))


def _warmup_tokens(ws: Workspace, rnd) -> int:
    if rnd.number > 1 or rnd.warmup_adapter:
        return 0  # round N > 1 starts from an earlier adapter; a trained warm-up is kept
    gold = warmup_items(ws)
    if not ws.split_counts()["calibration"]:  # the hold-out happens in the step itself
        keep = 1 - rnd.config.calibration.fraction
        gold = gold[:max(1, int(len(gold) * keep))]
    return _training_tokens(prompt_builder(ws, rnd), gold, rnd.config.train)


def _label_tokens(ws: Workspace, rnd) -> int:
    """Every local collaborator's prompt for each item it has not answered, the reflection
    share of disputed items, the eq. 6 pass when no plain warm-up collaborator shares it,
    and the warm-up's check on the calibration slice."""
    items = load_items(ws, pool_item_ids(ws, rnd.number, rnd.config.unlabeled_limit))
    if not items:
        return 0
    builder = prompt_builder(ws, rnd)
    answered = {(r[0], r[1]) for r in ws.query(
        "SELECT item_id, collaborator FROM responses WHERE round_id=?", (rnd.id,))}
    tokens = 0
    for index, c in enumerate(rnd.config.collaborators):
        if c.server:
            continue  # a served collaborator's time is the server's
        tokens += sum(collaborator_prompt(builder, it, c.demonstrations).tokens
                      for it in items if (it.id, index) not in answered)
    labeled = {r[0] for r in ws.query("SELECT item_id FROM pseudo_labels WHERE round_id=?",
                                      (rnd.id,))}
    todo = [it for it in items if it.id not in labeled]
    plain = sum(builder.item(it.example).tokens for it in todo)
    share = _reflected_share(ws)
    tokens += int(share * plain * 1.3)  # the reflection prompt lists every answer
    if not any(c.model == "warmup" and c.demonstrations == 0 and not c.server
               for c in rnd.config.collaborators):
        tokens += plain  # eq. 6 re-scores the plain prompt
    return tokens


def _reflected_share(ws: Workspace) -> float:
    row = ws.query("SELECT COUNT(*) AS n, SUM(path='reflected') AS r FROM pseudo_labels")[0]
    return (row["r"] or 0) / row["n"] if row["n"] else REFLECTED_SHARE


def _train_tokens(ws: Workspace, rnd, selecting_first: bool) -> int:
    """The training set as it stands (or, before selection, the labeled set plus the
    selection's expected share of the pool)."""
    if rnd.final_adapter:
        return 0
    items = live_training_items(ws, rnd.number)
    extra = 0
    if selecting_first or not any(it["source"] == "pseudo" for it in items):
        unlabeled = ws.query_in("SELECT id FROM items WHERE split='unlabeled' AND id IN ({})",
                                pool_item_ids(ws, rnd.number, rnd.config.unlabeled_limit))
        items = warmup_items(ws)
        extra = int(len(unlabeled) * rnd.config.selection.theta / 100)
    return _training_tokens(prompt_builder(ws, rnd), items, rnd.config.train, extra)


def _evaluate_tokens(ws: Workspace, rnd, training_first: bool) -> tuple[int, int]:
    split = evaluation_split(ws)
    if split is None:
        return 0, 0
    items = load_items(ws, split_ids(ws, split))
    builder = prompt_builder(ws, rnd)
    plain = sum(builder.item(it.example).tokens for it in items)
    k = rnd.config.retrieval.k
    demos = sum(builder.item(it.example, it.demonstrations[:k]).tokens for it in items)
    wanted = {("base", None): plain, ("base+demos", None): demos,
              ("warmup", rnd.id): plain}
    if rnd.final_adapter or training_first:
        wanted[("round", rnd.id)] = plain
    todo = {key: n for key, n in wanted.items()
            if stored_evaluation(ws, key[1], key[0], split) is None}
    models = len({"base" if name.startswith("base") else name for name, _ in todo})
    return sum(todo.values()), models
