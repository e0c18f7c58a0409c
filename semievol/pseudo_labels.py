"""Pseudo-labels (paper steps 4-5): agreement, self-justification, entropy.

Unanimous collaborators give the pseudo-label directly (`agreed`). Otherwise the warm-up
model sees the question and every collaborator's answer (the reflection prompt) and its
answer becomes the pseudo-label (`reflected`). The entropy of the pseudo-response is its
mean token NLL under the warm-up model on the plain prompt (paper eq. 6); for `choice` the
same forward pass also gives the warm-up's option distribution, whose entropy is kept too.
"""

from __future__ import annotations

import numpy as np

from semievol.backend import LocalBackend, Progress
from semievol.collaborators import Item
from semievol.config import TaskConfig
from semievol.scoring import agreement
from semievol.scoring import entropy as distribution_entropy
from semievol.store import Workspace
from semievol.tasks import (answer_text, build_messages, end_of_turn, option_continuations,
                            parse_open, reflection_messages, render_prompt)


def build_pseudo_labels(ws: Workspace, round_id: int, items: list[Item], n_collaborators: int,
                        warmup: LocalBackend, task: TaskConfig, *,
                        progress: Progress | None = None, batch_items: int = 64) -> dict:
    """Write a pseudo-label row for every item that lacks one; returns path counts."""
    done_ids = {r[0] for r in ws.query("SELECT item_id FROM pseudo_labels WHERE round_id=?",
                                       (round_id,))}
    todo = [it for it in items if it.id not in done_ids]
    answers = _answers_by_item(ws, round_id, n_collaborators)
    counts = {"agreed": 0, "reflected": 0, "skipped": len(items) - len(todo)}
    for start in range(0, len(todo), batch_items):
        batch = todo[start:start + batch_items]
        rows = _label_batch(batch, answers, warmup, task)
        with ws.transaction() as conn:
            conn.executemany(
                "INSERT OR REPLACE INTO pseudo_labels(round_id, item_id, label, path, agreement, "
                "reflection_text, entropy, option_entropy, selected) VALUES(?,?,?,?,?,?,?,?,0)",
                [(round_id, *row) for row in rows])
        for row in rows:
            counts[row[2]] += 1
        if progress:
            progress(start + len(batch), len(todo), "pseudo-labels")
    return counts


def _answers_by_item(ws: Workspace, round_id: int, n: int) -> dict[int, list[str | None]]:
    answers: dict[int, list[str | None]] = {}
    for r in ws.query("SELECT item_id, collaborator, answer FROM responses WHERE round_id=? "
                      "AND collaborator < ?", (round_id, n)):
        answers.setdefault(r["item_id"], [None] * n)[r["collaborator"]] = r["answer"]
    return answers


def _label_batch(batch: list[Item], answers: dict, warmup: LocalBackend, task: TaskConfig):
    tokenizer = warmup.tokenizer
    decided, reflection_text = {}, {}
    paths, shares = {}, {}
    disputed = []
    for item in batch:
        majority, share, unanimous = agreement(answers.get(item.id, []))
        shares[item.id] = share
        if unanimous:
            decided[item.id], paths[item.id] = majority, "agreed"
        else:
            disputed.append(item)
            paths[item.id] = "reflected"
    if disputed:
        prompts = [render_prompt(tokenizer, reflection_messages(task, it.example, answers[it.id]))
                   for it in disputed]
        if task.kind == "choice":
            eot = end_of_turn(tokenizer) if task.answer_format == "words" else ""
            dists = warmup.option_distributions(
                prompts, [[c + eot for c in option_continuations(task, it.example.options)]
                          for it in disputed])
            for it, probs in zip(disputed, dists):
                best = int(np.argmax(probs))
                decided[it.id] = it.example.options[best]
                reflection_text[it.id] = ", ".join(
                    f"{o} {p:.2f}" for o, p in zip(it.example.options, probs))
        else:
            for it, (text, _) in zip(disputed, warmup.generate(prompts, temperature=0.0)):
                decided[it.id] = parse_open(text) or answers[it.id][0] or ""
                reflection_text[it.id] = text

    # Entropy of the pseudo-response under the warm-up model, on the plain prompt (eq. 6).
    plain = [render_prompt(tokenizer, build_messages(task, it.example)) for it in batch]
    eot = end_of_turn(tokenizer)
    rows = []
    if task.kind == "choice":
        fmt_eot = eot if task.answer_format == "words" else ""
        conts = [[c + fmt_eot for c in option_continuations(task, it.example.options)]
                 for it in batch]
        scores = warmup.score_continuations(plain, conts)
        for it, per_option in zip(batch, scores):
            label = decided[it.id]
            chosen = it.example.options.index(label)
            totals = np.array([s.sum() for s in per_option])
            probs = np.exp(totals - totals.max())
            probs /= probs.sum()
            rows.append((it.id, label, paths[it.id], shares[it.id], reflection_text.get(it.id),
                         float(-per_option[chosen].mean()), float(distribution_entropy(probs))))
    else:
        conts = [[answer_text(task, decided[it.id], None) + eot] for it in batch]
        scores = warmup.score_continuations(plain, conts)
        for it, (per_token,) in zip(batch, scores):
            rows.append((it.id, decided[it.id], paths[it.id], shares[it.id],
                         reflection_text.get(it.id), float(-per_token.mean()), None))
    return rows

