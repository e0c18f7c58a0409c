"""Pseudo-labels (paper steps 4-5): agreement, self-justification, entropy; and the stored
pseudo-labels as the selection reads them.

Unanimous collaborators give the pseudo-label directly (`agreed`). Otherwise the warm-up
model (or, where the round says so, a larger served model: config.ServedConfig) sees the
question and every collaborator's answer (the reflection prompt) and its answer becomes the
pseudo-label (`reflected`). The entropy of the pseudo-response is its
mean token NLL under the warm-up model on the plain prompt (paper eq. 6,
`scoring.mean_nll`); for `choice` the same forward pass also gives the warm-up's option
distribution, whose entropy is kept too.
"""

from __future__ import annotations

import numpy as np

from semievol.config import TaskConfig
from semievol.method.scoring import agreement, mean_nll
from semievol.method.scoring import entropy as distribution_entropy
from semievol.model.backend import Backend, Progress, normalised
from semievol.model.prompts import PromptBuilder
from semievol.profiling import stage
from semievol.task.answers import distinct_answers, extract_answer, same_answer
from semievol.task.formats import answer_target, generated_tokens, option_targets
from semievol.workspace.items import Item
from semievol.workspace.store import Workspace

PATHS = ("agreed", "reflected")
SCORE_COLUMNS = {"nll": "entropy", "option_entropy": "option_entropy"}
"""Which pseudo_labels column holds each selection score (config.SELECTION_SCORES)."""


def build_pseudo_labels(ws: Workspace, round_id: int, items: list[Item], n_collaborators: int,
                        warmup: Backend, task: TaskConfig, *, budget: int,
                        reflector: Backend | None = None, progress: Progress | None = None,
                        batch_items: int = 64) -> dict:
    """Write a pseudo-label row for every item that lacks one; returns path counts and
    `prompts` (what the context budget cut in the reflection and entropy prompts).
    `warmup` scores the eq. 6 entropy; `reflector` (default: the same model; perhaps on a
    server, or a larger served model) settles disagreements."""
    done_ids = {r[0] for r in ws.query("SELECT item_id FROM pseudo_labels WHERE round_id=?",
                                       (round_id,))}
    todo = [it for it in items if it.id not in done_ids]
    answers = _answers_by_item(ws, round_id, n_collaborators)
    counts = {"agreed": 0, "reflected": 0, "skipped": len(items) - len(todo)}
    builder = PromptBuilder(task, warmup.tokenizer, budget)
    for start in range(0, len(todo), batch_items):
        batch = todo[start:start + batch_items]
        rows = _label_batch(batch, answers, warmup, reflector or warmup, builder)
        with ws.transaction() as conn:
            conn.executemany(
                "INSERT OR REPLACE INTO pseudo_labels(round_id, item_id, label, path, agreement, "
                "reflection_text, entropy, option_entropy, probability, selected) "
                "VALUES(?,?,?,?,?,?,?,?,?,0)",
                [(round_id, *row) for row in rows])
        for row in rows:
            counts[row[2]] += 1
        if progress:
            progress(start + len(batch), len(todo), "pseudo-labels")
    counts["prompts"] = builder.stats
    return counts


def drop_derived(ws: Workspace, round_id: int, n_collaborators: int) -> None:
    """Forget a round's pseudo-labels (derived from all collaborators together) and the
    responses of collaborators beyond the first `n_collaborators`: what changes when the
    collaborators or the model change. Responses stay cached by content."""
    with ws.transaction() as conn:
        conn.execute("DELETE FROM pseudo_labels WHERE round_id=?", (round_id,))
        conn.execute("DELETE FROM responses WHERE round_id=? AND collaborator >= ?",
                     (round_id, n_collaborators))


def _answers_by_item(ws: Workspace, round_id: int, n: int) -> dict[int, list[str | None]]:
    answers: dict[int, list[str | None]] = {}
    for r in ws.query("SELECT item_id, collaborator, answer FROM responses WHERE round_id=? "
                      "AND collaborator < ?", (round_id, n)):
        answers.setdefault(r["item_id"], [None] * n)[r["collaborator"]] = r["answer"]
    return answers


def _label_batch(batch: list[Item], answers: dict, warmup: Backend, reflector: Backend,
                 builder: PromptBuilder):
    """Agreement, then reflection for the disputed items, then the entropies; the rows."""
    decided, reflection_text = {}, {}
    paths, shares = {}, {}
    disputed = []
    task = builder.task
    same = (lambda a, b: same_answer(task, a, b)) if task.kind == "open" else None
    for item in batch:
        majority, share, unanimous = agreement(answers.get(item.id, []), same)
        shares[item.id] = share
        if unanimous:
            decided[item.id], paths[item.id] = majority, "agreed"
        else:
            disputed.append(item)
            paths[item.id] = "reflected"
    if disputed:
        _reflect(disputed, answers, reflector, builder, decided, reflection_text)

    # Entropy of the pseudo-response under the warm-up model, on the plain prompt (eq. 6).
    with stage("eq. 6 entropy"):
        return _entropy_rows(batch, decided, paths, shares, reflection_text, warmup, builder)


def _reflect(disputed, answers, reflector, builder, decided, reflection_text) -> None:
    """Self-justification: the reflecting model's pick among the disagreeing answers (the
    warm-up model's, unless the round names a larger served one)."""
    task = builder.task
    with stage("reflection"):
        reserve = generated_tokens(task) if task.kind == "open" else None
        # Open answers are listed once each (by the checker: "27" and "27.0" are one).
        shown = {it.id: distinct_answers(task, answers[it.id]) if task.kind == "open"
                 else answers[it.id] for it in disputed}
        prompts = [builder.reflection(it.example, shown[it.id], reserve=reserve).text
                   for it in disputed]
        if task.kind == "choice":
            dists = reflector.option_distributions(
                prompts, [option_targets(task, it.example.options, reflector.tokenizer)
                          for it in disputed])
            for it, probs in zip(disputed, dists):
                best = int(np.argmax(probs))
                decided[it.id] = it.example.options[best]
                reflection_text[it.id] = ", ".join(
                    f"{o} {p:.2f}" for o, p in zip(it.example.options, probs))
        else:
            for it, (text, _) in zip(disputed, reflector.generate(
                    prompts, temperature=0.0, max_new_tokens=generated_tokens(task))):
                # The reflection's own answer, else the most common of the collaborators'.
                decided[it.id] = extract_answer(task, text) or agreement(
                    answers[it.id], lambda a, b: same_answer(task, a, b))[0] or ""
                reflection_text[it.id] = text


def _entropy_rows(batch, decided, paths, shares, reflection_text, warmup, builder) -> list:
    """Paper eq. 6: the mean token NLL of each pseudo-response under the warm-up model on
    the plain prompt (and, for choice, the entropy of its option distribution)."""
    task, tokenizer = builder.task, warmup.tokenizer
    rows = []
    if task.kind == "choice":
        plain = [builder.item(it.example).text for it in batch]
        conts = [option_targets(task, it.example.options, tokenizer) for it in batch]
        scores = warmup.score_continuations(plain, conts)
        chosen = [it.example.options.index(decided[it.id]) for it in batch]
        nll = mean_nll([per_option[k] for per_option, k in zip(scores, chosen)])
        for it, per_option, e, k in zip(batch, scores, nll, chosen):
            distribution = normalised(per_option)
            rows.append((it.id, decided[it.id], paths[it.id], shares[it.id],
                         reflection_text.get(it.id), float(e),
                         float(distribution_entropy(distribution)), float(distribution[k])))
    else:
        # An item no response gave an answer for has no pseudo-label to score: its entropy
        # stays empty, so no policy ever selects it.
        answered = [it for it in batch if decided[it.id]]
        conts = [[answer_target(task, decided[it.id], None, tokenizer)] for it in answered]
        plain = [builder.item(it.example, reserve=builder.count(c[0])).text
                 for it, c in zip(answered, conts)]
        scores = warmup.score_continuations(plain, conts) if answered else []
        nll = dict(zip((it.id for it in answered),
                       mean_nll([per_token for (per_token,) in scores])))
        for it in batch:
            e = nll.get(it.id)
            rows.append((it.id, decided[it.id], paths[it.id], shares[it.id],
                         reflection_text.get(it.id), None if e is None else float(e), None,
                         None))
    return rows


# -- the stored pseudo-labels, as selection and its evidence read them -------------------
def scored_rows(ws: Workspace, round_id: int, score: str = "nll") -> list[dict]:
    """The round's pseudo-labels of the unlabeled pool and the calibration slice (the
    percentile is taken over both: calibration items are treated exactly as if unlabeled),
    in item order: item_id, external_id, split, label, path, agreement, score (the chosen
    selection score; nan when there is none), probability (the warm-up model's, on the plain
    prompt, of the label: choice tasks; nan otherwise), gold (calibration items only)."""
    column = SCORE_COLUMNS[score]
    rows = ws.query(
        f"SELECT p.item_id, i.external_id, i.split, p.label, p.path, p.agreement, "
        f"p.{column} AS score, p.probability, i.answer FROM pseudo_labels p "
        "JOIN items i ON i.id = p.item_id "
        "WHERE p.round_id=? AND i.split IN ('unlabeled','calibration') ORDER BY p.item_id",
        (round_id,))
    return [{"item_id": r["item_id"], "external_id": r["external_id"], "split": r["split"],
             "label": r["label"], "path": r["path"], "agreement": r["agreement"],
             "score": np.nan if r["score"] is None else float(r["score"]),
             "probability": np.nan if r["probability"] is None else float(r["probability"]),
             "gold": r["answer"] if r["split"] == "calibration" else None} for r in rows]


def score_range(ws: Workspace, round_id: int, score: str) -> tuple[float, float] | None:
    """(min, max) of a round's stored score; None when no pseudo-label has one."""
    column = SCORE_COLUMNS[score]
    low, high = ws.query(f"SELECT MIN({column}), MAX({column}) FROM pseudo_labels "
                         "WHERE round_id=?", (round_id,))[0]
    return None if low is None else (float(low), float(high))


def available_scores(ws: Workspace, round_id: int) -> list[str]:
    """`nll`, and `option_entropy` where the round stored one (choice tasks)."""
    has_option = ws.scalar("SELECT COUNT(*) FROM pseudo_labels WHERE round_id=? AND "
                           "option_entropy IS NOT NULL", (round_id,))
    return list(SCORE_COLUMNS) if has_option else ["nll"]


def path_counts(ws: Workspace, round_id: int) -> dict[str, int]:
    """{agreed, reflected}: how many pseudo-labels of the round took each path."""
    counts = dict.fromkeys(PATHS, 0)
    counts.update({r[0]: r[1] for r in ws.query(
        "SELECT path, COUNT(*) FROM pseudo_labels WHERE round_id=? GROUP BY path", (round_id,))})
    return counts
