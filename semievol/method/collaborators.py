"""Collaborators (paper step 3): several configurations answer every item.

A collaborator is {base, warm-up} x demonstrations x decoding. For `choice` each answer comes
from one scoring pass over the options (the option distribution, its entropy, the argmax or
a seeded sample at the collaborator's temperature); for `open` from sampled generation with
per-token log-probabilities. Every response is stored with a cache key over (model, adapter
digest, prompt, options, decoding): an identical request is never computed twice, in this
round or any later one.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np

from semievol.config import CollaboratorConfig, TaskConfig
from semievol.method.scoring import entropy as distribution_entropy
from semievol.method.scoring import mean_nll, sample_index
from semievol.model.backend import Backend, Progress, backend_key
from semievol.model.prompts import Prompt, PromptBuilder, PromptStats
from semievol.profiling import stage
from semievol.task.answers import extract_answer
from semievol.task.formats import generated_tokens, option_targets
from semievol.workspace.items import Item
from semievol.workspace.store import Workspace

OPEN_EXTRACTION = "extract-v2"
"""Bumped when the extraction of open answers (tasks.extract_answer) changes meaning, so a
stored response is re-answered rather than kept with an answer parsed the old way."""


def cache_key(backend_name: str, prompt: str, options: list[str] | None, task: TaskConfig,
              collaborator: CollaboratorConfig) -> str:
    fields = [backend_name, prompt, options, task.kind, task.answer_format,
              collaborator.temperature, collaborator.seed]
    if task.kind == "open":  # the stored answer depends on the checker's extraction
        fields += [task.checker, OPEN_EXTRACTION]
    payload = json.dumps(fields)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:32]


def collaborator_prompt(builder: PromptBuilder, item: Item, demonstrations: int) -> Prompt:
    """The question with the collaborator's demonstrations, within the context budget."""
    reserve = generated_tokens(builder.task) if builder.task.kind == "open" else None
    return builder.item(item.example, item.demonstrations[:demonstrations], reserve=reserve)


def run_collaborators(ws: Workspace, round_id: int, items: list[Item],
                      collaborators: list[CollaboratorConfig], backends: dict[str, Backend],
                      task: TaskConfig, *, budget: int, progress: Progress | None = None,
                      batch_items: int = 64) -> dict:
    """Store every collaborator's response for every item; returns counts
    {'computed', 'cached', 'reused'} (reused = copied from an identical earlier request)
    and `prompts`, what the context budget cut (prompts.PromptStats)."""
    stats = {"computed": 0, "cached": 0, "reused": 0}
    builders: dict[int, PromptBuilder] = {}
    total = len(items) * len(collaborators)
    done = 0
    for index, collaborator in enumerate(collaborators):
        backend = backends[backend_key(collaborator.model, collaborator.server)]
        builder = builders.setdefault(id(backend.tokenizer),
                                      PromptBuilder(task, backend.tokenizer, budget))

        def report(count, index=index, collaborator=collaborator):
            if progress:
                progress(done + count, total, f"collaborator {index + 1}/{len(collaborators)} "
                                              f"({collaborator.display_name})")

        with stage(f"collaborator {index + 1} ({collaborator.label})"):
            done += _one_collaborator(ws, round_id, items, index, collaborator, backend,
                                      builder, stats, report, batch_items)
    if progress and total:
        progress(total, total, "collaborators done")
    merged = PromptStats()
    for builder in builders.values():
        merged.merge(builder.stats)
    stats["prompts"] = merged
    return stats


def _one_collaborator(ws: Workspace, round_id: int, items: list[Item], index: int,
                      collaborator: CollaboratorConfig, backend: Backend,
                      builder: PromptBuilder, stats: dict, report, batch_items: int) -> int:
    """One collaborator's responses to every item (cached ones skipped, identical earlier
    requests copied); returns how many items it went through."""
    task = builder.task
    have = {r[0]: r[1] for r in ws.query(
        "SELECT item_id, cache_key FROM responses WHERE round_id=? AND collaborator=?",
        (round_id, index))}
    pending = []
    for item in items:
        prompt = collaborator_prompt(builder, item, collaborator.demonstrations)
        key = cache_key(backend.name, prompt.text, item.example.options, task, collaborator)
        if have.get(item.id) == key:
            stats["cached"] += 1
        else:
            pending.append((item, prompt, key))
    done = len(items) - len(pending)
    # Identical requests answered in an earlier round are copied, not recomputed.
    earlier = _earlier_responses(ws, [key for _, _, key in pending])
    for start in range(0, len(pending), batch_items):
        batch = pending[start:start + batch_items]
        fresh = [p for p in batch if p[2] not in earlier]
        # Progress inside the batch too: a served model answers a request (an option) at a
        # time, and a batch of 64 items can take minutes there.
        def within(count, total, message=None, before=done, size=len(fresh)):
            report(before + (count * size // total if total else 0))

        computed = dict(zip((p[2] for p in fresh),
                            _answer(backend, task, collaborator, fresh, within)
                            if fresh else []))
        rows = []
        for item, prompt, key in batch:
            response = computed.get(key) or earlier[key]
            rows.append((round_id, item.id, index, key, response["answer"], response["text"],
                         response["option_probs"], response["option_entropy"],
                         response["nll"], prompt.tokens, prompt.cut_tokens,
                         prompt.demos_shown))
        with ws.transaction() as conn:  # per batch: a killed run keeps what it finished
            conn.executemany(
                "INSERT OR REPLACE INTO responses(round_id, item_id, collaborator, cache_key, "
                "answer, text, option_probs, option_entropy, nll, prompt_tokens, cut_tokens, "
                "demos_shown) VALUES(?,?,?,?,?,?,?,?,?,?,?,?)", rows)
        stats["computed"] += len(fresh)
        stats["reused"] += len(batch) - len(fresh)
        done += len(batch)
        report(done)
    return len(items)


def _earlier_responses(ws: Workspace, keys: list[str]) -> dict[str, dict]:
    found = {}
    for r in ws.query_in("SELECT cache_key, answer, text, option_probs, option_entropy, nll "
                         "FROM responses WHERE cache_key IN ({})", keys):
        found[r["cache_key"]] = dict(r)
    return found


def _answer(backend: Backend, task: TaskConfig, collaborator: CollaboratorConfig,
            batch: list, progress: Progress | None = None) -> list[dict]:
    """Compute responses for (item, prompt, key) triples."""
    prompts = [prompt.text for _, prompt, _ in batch]
    if task.kind == "open":
        outputs = backend.generate(prompts, temperature=collaborator.temperature,
                                   seed=collaborator.seed,
                                   max_new_tokens=generated_tokens(task), progress=progress)
        nll = mean_nll([lp for _, lp in outputs])
        return [{"answer": extract_answer(task, text), "text": text, "option_probs": None,
                 "option_entropy": None, "nll": None if np.isnan(e) else float(e)}
                for (text, _), e in zip(outputs, nll)]
    continuations = [option_targets(task, item.example.options, backend.tokenizer)
                     for item, _, _ in batch]
    distributions = backend.option_distributions(prompts, continuations, progress=progress)
    responses = []
    for (item, _, _), probs in zip(batch, distributions):
        # Seeded per (collaborator seed, item): the same answer on every re-run.
        rng = np.random.default_rng([collaborator.seed, item.id])
        chosen = sample_index(probs, temperature=collaborator.temperature, rng=rng)
        answer = item.example.options[chosen]
        responses.append({"answer": answer, "text": answer,
                          "option_probs": json.dumps([round(float(p), 6) for p in probs]),
                          "option_entropy": float(distribution_entropy(probs)),
                          "nll": float(-np.log(max(probs[chosen], 1e-12)))})
    return responses
