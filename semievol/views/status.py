"""A summary of a workspace: what the CLI's `status` prints and the app's first page shows."""

from __future__ import annotations

import json

from semievol.curation.decisions import DECISION_RULES, decision_rule
from semievol.curation.sufficiency import label_warnings
from semievol.model.loading import load_tokenizer, resolve_model_path
from semievol.model.prompts import PromptBuilder, resolve_budget
from semievol.rounds.record import STATUS_NAMES, base_config
from semievol.rounds.scores import accuracy_on, adapter_scores, best_trained
from semievol.saved_config import to_dict
from semievol.task.formats import Example, build_messages, render_prompt
from semievol.team.handout import conflicts, overlap_share
from semievol.workspace.items import options_of, with_neighbours
from semievol.workspace.store import SCHEMA_VERSION, Workspace


def round_rows(ws: Workspace) -> list[dict]:
    """Every round, newest first, as the pages' round pickers list them: id, number, status,
    status_name (in words), final_adapter, pseudo_labels (of the unlabeled pool),
    calibration_labels (of the calibration slice), selected (pool items the applied
    selection keeps), accuracy and split (its trained adapter's stored evaluation, or None),
    best (the best-scoring trained round, `rounds.scores.best_trained`)."""
    scores = adapter_scores(ws)
    trained = {s["round"]: s for s in scores if s["model"] == "round"}
    best = best_trained(scores)
    return [{**dict(r), "status_name": STATUS_NAMES[r["status"]],
             "accuracy": trained.get(r["number"], {}).get("accuracy"),
             "split": trained.get(r["number"], {}).get("split"),
             "best": best is not None and best["round"] == r["number"]} for r in ws.query(
        "SELECT r.id, r.number, r.status, r.final_adapter, "
        "(SELECT COUNT(*) FROM pseudo_labels p JOIN items i ON i.id = p.item_id "
        " WHERE p.round_id = r.id AND i.split = 'unlabeled') AS pseudo_labels, "
        "(SELECT COUNT(*) FROM pseudo_labels p JOIN items i ON i.id = p.item_id "
        " WHERE p.round_id = r.id AND i.split = 'calibration') AS calibration_labels, "
        "(SELECT COUNT(*) FROM pseudo_labels p JOIN items i ON i.id = p.item_id "
        " WHERE p.round_id = r.id AND i.split = 'unlabeled' AND p.selected) AS selected "
        "FROM rounds r ORDER BY r.number DESC")]


def round_label(row: dict) -> str:
    """A round as the pickers name it: "Round 2 (done) · 81.0 % on test · best"."""
    parts = [f"Round {row['number']} ({row['status_name']})"]
    if row.get("accuracy") is not None:
        parts.append(accuracy_on(row["accuracy"], row["split"]))
    if row.get("best"):
        parts.append("best")
    return " · ".join(parts)


def held_out_line(splits: dict[str, int]) -> str | None:
    """Where the labeled examples went, in words, once round 1 has held some out."""
    held = splits.get("calibration", 0)
    if not held:
        return None
    total = held + splits.get("labeled", 0)
    return (f"{held} of the {total} labeled examples are held out as the calibration slice: "
            "the collaborators label them as if they were unlabeled, which measures how "
            "precise the pseudo-labels are before anyone trains on them. They are not trained "
            "on; a class with few labels gives none.")


def workspace_status(ws: Workspace) -> dict:
    task = ws.task
    rounds = [{**{k: r[k] for k in ("number", "status", "status_name", "pseudo_labels",
                                    "calibration_labels", "selected", "accuracy", "split",
                                    "best")},
               "score": None if r["accuracy"] is None else accuracy_on(r["accuracy"], r["split"])}
              for r in reversed(round_rows(ws))]
    splits = ws.split_counts()
    return {
        "path": str(ws.path),
        "schema_version": SCHEMA_VERSION,
        "task": to_dict(task) if task else None,
        "splits": splits,
        "held_out": held_out_line(splits),
        "label_warnings": label_warnings(ws),
        "unlabeled_with_neighbours": with_neighbours(ws, "unlabeled"),
        "retrieval_k": ws.get_setting("retrieval_k"),
        "rounds": rounds,
        "decisions": ws.scalar("SELECT COUNT(*) FROM decisions"),
        "runs": ws.scalar("SELECT COUNT(*) FROM runs"),
        "team": team_status(ws),
    }


def team_status(ws: Workspace) -> dict | None:
    """Accounts by role, the decision rule, the overlap share and the conflicts waiting for
    a lead; None for a single-user workspace (no accounts)."""
    roles = dict(ws.query("SELECT role, COUNT(*) FROM users GROUP BY role"))
    if not roles:
        return None
    rule = decision_rule(ws)
    return {"leads": roles.get("lead", 0), "reviewers": roles.get("reviewer", 0),
            "rule": rule, "rule_text": DECISION_RULES[rule], "overlap": overlap_share(ws),
            "conflicts": len(conflicts(ws))}


SAMPLE = 20_000
"""Items the lengths report tokenizes at most: a larger workspace is sampled evenly (every
n-th item), and the report says so."""


def length_report(ws, model_config=None, *, cached_only: bool = False) -> dict | None:
    """How many items' plain prompts (and their answers) exceed the context budget, and by
    how much: {budget, items, over, max_over, median_over, by_split: {split: over},
    sampled (items tokenized), estimated (items too long to tokenize whole, whose excess
    is extrapolated)}. The budget is the latest round's (or what a new round would
    resolve). `cached_only`: None unless the report is already stored.

    In bounded memory and time whatever the data: rows are streamed, at most SAMPLE items
    are tokenized (the counts of a sample are scaled to the whole), and an item is cut to
    the characters that already make it longer than the budget before it is tokenized (a
    text of a megabyte once took 14 GiB and three minutes here)."""
    import math
    import statistics

    task = ws.task
    if task is None:
        return {"budget": None, "items": 0, "over": 0, "max_over": 0, "median_over": 0,
                "by_split": {}, "sampled": 0, "estimated": 0}
    config = model_config or base_config(ws).model
    budget = resolve_budget(config)
    # The report depends on the items, the task, the model and the budget: kept in the
    # workspace so `status` does not tokenize again (and load a tokenizer) each time.
    total, last = ws.query("SELECT COUNT(*), COALESCE(MAX(id), 0) FROM items")[0]
    key = json.dumps([f"{total}:{last}", to_dict(task), config.name_or_path, budget])
    cached = ws.get_setting("length_report")
    if cached and cached.get("key") == key:
        return cached["report"]
    if cached_only:
        return None
    tokenizer = load_tokenizer(resolve_model_path(config.name_or_path))
    builder = PromptBuilder(task, tokenizer, budget)
    # A token is at most this many characters, so a text this long is over the budget.
    cap = (budget + 1) * max(map(len, tokenizer.get_vocab()))
    step = max(1, math.ceil(total / SAMPLE))
    overs, by_split, sampled, estimated = [], {}, 0, 0
    rows = ws.conn.execute("SELECT split, question, options FROM items WHERE id % ? = 0 "
                           "ORDER BY id", (step,)) if step > 1 else \
        ws.conn.execute("SELECT split, question, options FROM items ORDER BY id")
    while chunk := rows.fetchmany(256):
        texts, scale = [], []
        for r in chunk:
            question = r["question"]
            scale.append(len(question) / cap if len(question) > cap else 1.0)
            texts.append(render_prompt(tokenizer, build_messages(task, Example(
                question[:cap], options_of(r, task)))))
        lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
        for r, length, factor in zip(chunk, lengths, scale):
            sampled += 1
            estimated += factor > 1
            over = int(length * factor) + builder.choice_reserve(options_of(r, task)) - budget
            if over > 0:
                overs.append(over)
                by_split[r["split"]] = by_split.get(r["split"], 0) + step
    report = {"budget": budget, "items": total, "over": min(total, len(overs) * step),
              "max_over": max(overs, default=0),
              "median_over": int(statistics.median(overs)) if overs else 0,
              "by_split": by_split, "sampled": sampled, "estimated": estimated}
    if not ws.read_only and ws.damage is None:
        with ws.transaction() as conn:
            ws.set_setting("length_report", {"key": key, "report": report}, conn)
    return report


def length_line(report: dict) -> str:
    """The length report in one sentence."""
    if not report["items"]:
        return "no items yet"
    if not report["over"]:
        return f"every item fits the context budget of {report['budget']} tokens"
    sampled = report.get("sampled", report["items"])
    about = "about " if sampled < report["items"] else ""
    splits = ", ".join(f"{about}{n} {s}" for s, n in report["by_split"].items())
    how = (f" (from a sample of {sampled:,} of the {report['items']:,} items)"
           if sampled < report["items"] else "")
    estimated = (f"; {report['estimated']} too long to count whole, their excess estimated"
                 if report.get("estimated") else "")
    return (f"{about}{report['over']:,} of {report['items']:,} items are longer than the "
            f"context budget of {report['budget']} tokens{how} ({splits}; by "
            f"{report['median_over']} tokens median, {report['max_over']} at most"
            f"{estimated}): their text is cut in the middle, and demonstrations are dropped "
            "first. Raise --context-budget to keep more.")
