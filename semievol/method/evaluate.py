"""Evaluation on the test split: accuracy, per-class P/R/F1, confusion matrix, the
majority-class baseline and the predicted-class distribution (so a collapse onto the
majority class cannot pass for learning). Stored per round and model variant.
"""

from __future__ import annotations

import json

import numpy as np

from semievol.config import TaskConfig
from semievol.errors import SemiEvolError
from semievol.method.scoring import classification_report
from semievol.model.backend import Backend, Progress
from semievol.model.prompts import PromptBuilder, PromptStats
from semievol.profiling import stage
from semievol.task.answers import extract_answer, is_correct
from semievol.task.formats import LETTERS, generated_tokens, option_targets
from semievol.workspace.items import Item, load_items, split_ids
from semievol.workspace.store import Workspace, now


def predict(backend: Backend, task: TaskConfig, items: list[Item], *, budget: int,
            demonstrations: int = 0, progress: Progress | None = None
            ) -> tuple[list[str | None], PromptStats]:
    """Greedy answers: the most likely option (choice) or greedy generation (open), with
    what the context budget cut in their prompts."""
    builder = PromptBuilder(task, backend.tokenizer, budget)
    reserve = generated_tokens(task) if task.kind == "open" else None
    prompts = [builder.item(it.example, it.demonstrations[:demonstrations], reserve=reserve).text
               for it in items]
    if task.kind == "open":
        return [extract_answer(task, text) for text, _ in
                backend.generate(prompts, temperature=0.0, max_new_tokens=generated_tokens(task),
                                 progress=progress)], builder.stats
    dists = backend.option_distributions(
        prompts, [option_targets(task, it.example.options, backend.tokenizer) for it in items],
        progress=progress)
    return [it.example.options[int(np.argmax(p))] for it, p in zip(items, dists)], builder.stats


EVAL_SPLITS = ("test", "calibration")


def evaluation_split(ws: Workspace) -> str | None:
    """Where models are measured: the test split, else (no test file imported) the
    calibration slice held out of the labeled set; None when there is neither."""
    counts = ws.split_counts()
    return next((s for s in EVAL_SPLITS if counts[s]), None)


def stored_evaluation(ws: Workspace, round_id: int | None, model: str,
                      split: str = "test") -> dict | None:
    row = ws.query("SELECT * FROM evaluations WHERE model=? AND split=? AND "
                   "round_id IS ? ORDER BY id DESC LIMIT 1", (model, split, round_id))
    return json.loads(row[0]["report"]) if row else None


def evaluate(ws: Workspace, backend: Backend, *, model: str, round_id: int | None,
             budget: int, demonstrations: int = 0, force: bool = False,
             progress: Progress | None = None, split: str = "test") -> dict:
    """Evaluate on `split` (test, or the calibration slice) and store the report; an
    existing report is returned as is unless `force` (the same model on the same items
    gives the same numbers)."""
    if not force:
        existing = stored_evaluation(ws, round_id, model, split)
        if existing is not None:
            return existing
    task = ws.require_task()
    ids = split_ids(ws, split)
    if not ids:
        raise SemiEvolError(f"The workspace has no {split} items: import a test file to "
                            "evaluate.")
    items = load_items(ws, ids)
    with stage(f"evaluate {model} on {split}"):
        predicted, prompts = predict(backend, task, items, budget=budget,
                                     demonstrations=demonstrations, progress=progress)
    gold = [it.example.answer for it in items]
    if task.kind == "choice" and task.labels:
        report = classification_report(gold, predicted, task.labels)
    elif task.kind == "choice":
        # Per-item options (A-D questions): the classes are the option positions.
        def letter(item, answer):
            return None if answer is None else LETTERS[item.example.options.index(answer)]
        width = max(len(it.example.options) for it in items)
        report = classification_report([letter(it, g) for it, g in zip(items, gold)],
                                       [letter(it, p) for it, p in zip(items, predicted)],
                                       list(LETTERS[:width]))
    else:
        correct = [is_correct(task, p, g) for p, g in zip(predicted, gold)]
        report = {"accuracy": float(np.mean(correct)), "macro_f1": None, "n": len(gold)}
    report["model"] = model
    report["demonstrations"] = demonstrations
    report["predictions"] = [[it.id, p] for it, p in zip(items, predicted)]
    report["split"] = split
    report["budget"], report["prompts"] = budget, prompts.summary()
    store_evaluation(ws, report, round_id=round_id)
    return report


def store_evaluation(ws: Workspace, report: dict, *, round_id: int | None) -> None:
    with ws.transaction() as conn:
        conn.execute("INSERT INTO evaluations(round_id, model, split, accuracy, macro_f1, report, "
                     "created_at) VALUES(?,?,?,?,?,?,?)",
                     (round_id, report["model"], report.get("split", "test"),
                      report["accuracy"],
                      report.get("macro_f1"), json.dumps(report), now()))


def evaluated_models(ws: Workspace, round_id: int) -> list[str]:
    """The model variants with a stored test report for the round, sorted."""
    return [r[0] for r in ws.query(
        "SELECT DISTINCT model FROM evaluations WHERE round_id=? ORDER BY model", (round_id,))]


def evaluations_table(ws: Workspace) -> list[dict]:
    """Latest accuracy / macro-F1 per (round, model), oldest round first."""
    rows = ws.query("SELECT e.round_id, r.number, e.model, e.accuracy, e.macro_f1, e.report "
                    "FROM evaluations e LEFT JOIN rounds r ON r.id = e.round_id "
                    "WHERE e.id IN (SELECT MAX(id) FROM evaluations GROUP BY round_id, model) "
                    "ORDER BY COALESCE(r.number, 0), e.id")
    out = []
    for r in rows:
        report = json.loads(r["report"])
        out.append({"round": r["number"], "model": r["model"], "accuracy": r["accuracy"],
                    "macro_f1": r["macro_f1"], "majority_baseline": report.get("majority_baseline"),
                    "predicted_distribution": report.get("predicted_distribution")})
    return out
