"""What a round trains on (paper eq. 9) and the prompts it trains with.

The training set of round N: the labeled items, the human labels, and the pseudo-labels
selected in rounds <= N, with the current decisions on top (a decision counts at once:
reject keeps an item out whatever an earlier round selected, accept brings in its latest
pseudo-label, relabel brings it in with the human label).

When a round's training starts, the rows it trains on are frozen (`freeze`, table
training_rows): from then on everything shown for that round (counts, export, lineage) is
what it trained on, a resumed training trains on the same rows, and decisions made
afterwards belong to the next round.
"""

from __future__ import annotations

from semievol.config import TaskConfig
from semievol.curation.decisions import current_decisions, decision_rule
from semievol.model.prompts import PromptBuilder
from semievol.task.answers import extract_answer, same_answer
from semievol.task.formats import Example
from semievol.training.finetune import TrainExample
from semievol.workspace.items import options_of
from semievol.workspace.store import Workspace, now, stored_weight

SOURCES = ("gold", "human", "pseudo")
"""Where a training example's answer comes from."""


def training_items(ws: Workspace, up_to_round: int) -> list[dict]:
    """What round `up_to_round` trains on: its frozen rows once its training has started,
    else the labeled items, human labels, and selected pseudo-labels of rounds <=
    up_to_round with the current decisions on top (`live_training_items`).

    Each: {item_id, question, options, answer, source, weight} (weight: the loss weight, 1
    but for a pseudo-label kept by a confidence-weighted selection).
    """
    frozen = frozen_items(ws, up_to_round)
    return frozen if frozen is not None else live_training_items(ws, up_to_round)


def frozen_items(ws: Workspace, round_number: int) -> list[dict] | None:
    """The rows round `round_number` froze when its training started, in training order;
    None when it has not started training."""
    task = ws.require_task()
    if not ws.scalar("SELECT frozen_at FROM rounds WHERE number=?", (round_number,)):
        return None
    rows = ws.query("SELECT t.item_id, t.answer, t.source, t.weight, i.question, i.options "
                    "FROM training_rows t JOIN rounds r ON r.id = t.round_id "
                    "JOIN items i ON i.id = t.item_id WHERE r.number=? ORDER BY t.position",
                    (round_number,))
    return [{"item_id": r["item_id"], "question": r["question"], "options": options_of(r, task),
             "answer": r["answer"], "source": r["source"],
             "weight": stored_weight(r["weight"])} for r in rows]


def freeze(ws: Workspace, round_id: int, items: list[dict]) -> None:
    """Store `items` as what the round trains on (once; a frozen round keeps its rows)."""
    with ws.transaction() as conn:
        if ws.scalar("SELECT frozen_at FROM rounds WHERE id=?", (round_id,)):
            return
        conn.executemany(
            "INSERT INTO training_rows(round_id, item_id, position, answer, source, weight) "
            "VALUES(?,?,?,?,?,?)",
            [(round_id, it["item_id"], k, it["answer"], it["source"],
              None if it.get("weight", 1.0) == 1.0 else it["weight"])
             for k, it in enumerate(items)])
        conn.execute("UPDATE rounds SET frozen_at=?, decision_rule=? WHERE id=?",
                     (now(), decision_rule(ws), round_id))


def decisions_since_freeze(ws: Workspace, round_id: int) -> int:
    """Decisions recorded after the round's training set was frozen (they count for the
    next round)."""
    frozen_at = ws.scalar("SELECT frozen_at FROM rounds WHERE id=?", (round_id,))
    if not frozen_at:
        return 0
    return ws.scalar("SELECT COUNT(*) FROM decisions WHERE created_at > ?", (frozen_at,))


def live_training_items(ws: Workspace, up_to_round: int) -> list[dict]:
    """Labeled items, human labels, and selected pseudo-labels of rounds <= up_to_round,
    with the *current* decisions on top."""
    task = ws.require_task()
    decisions = current_decisions(ws)

    def entry(item_id, row, answer, source, weight=None):
        return {"item_id": item_id, "question": row["question"],
                "options": options_of(row, task), "answer": answer, "source": source,
                "weight": stored_weight(weight)}

    out = [entry(r["id"], r, r["answer"], "gold") for r in ws.query(
        "SELECT id, question, options, answer FROM items WHERE split='labeled' ORDER BY id")]
    # The latest pseudo-label of every unlabeled item, whether any round selected it, and
    # the weight of the latest selection of it.
    latest = {}
    for r in ws.query(
            "SELECT p.item_id, p.label, p.selected, p.weight, i.question, i.options "
            "FROM pseudo_labels p JOIN items i ON i.id = p.item_id JOIN rounds r ON "
            "r.id = p.round_id WHERE i.split='unlabeled' AND r.number <= ? "
            "ORDER BY r.number, p.item_id", (up_to_round,)):
        before = latest.get(r["item_id"], {})
        weight = r["weight"] if r["selected"] else before.get("weight")
        latest[r["item_id"]] = {**dict(r), "weight": weight,
                                "selected": before.get("selected", False) or bool(r["selected"])}
    for item_id, row in latest.items():
        action = decisions.get(item_id, {}).get("action")
        if action == "relabel":
            out.append(entry(item_id, row, decisions[item_id]["label"], "human"))
        elif action == "accept":  # a person confirmed it: it counts in full
            out.append(entry(item_id, row, row["label"], "pseudo"))
        elif row["selected"] and action != "reject":
            out.append(entry(item_id, row, row["label"], "pseudo", row["weight"]))
    # Items a reviewer labeled that no round has pseudo-labeled yet.
    unseen = [i for i, d in decisions.items() if d["action"] == "relabel" and i not in latest]
    for r in ws.query_in("SELECT id, question, options FROM items WHERE id IN ({})", unseen):
        out.append(entry(r["id"], r, decisions[r["id"]]["label"], "human"))
    return out


def warmup_items(ws: Workspace) -> list[dict]:
    """What the warm-up trains on, in the same form: every label a person gave, i.e. the
    labeled split and the human labels in force (a reviewer's relabel is a gold label, even
    on an item no round has pseudo-labeled yet), never a pseudo-label."""
    return [it for it in live_training_items(ws, 0) if it["source"] != "pseudo"]


def source_counts(items: list[dict]) -> dict[str, int]:
    """{gold, human, pseudo}: how many training items come from each source."""
    counts = dict.fromkeys(SOURCES, 0)
    for it in items:
        counts[it["source"]] += 1
    return counts


def training_examples(task: TaskConfig, items: list[dict], tokenizer, budget: int,
                      responses: dict[int, str] | None = None):
    """The prompts and answer targets training sees, within the round's context budget: the
    plain prompt (no demonstrations, as the eq. 6 entropy and zero-shot evaluation see it)
    and the answer's target. An open task that trains on responses (open_target
    `response`) takes a pseudo-label's own response (`responses`, see pseudo_responses) as
    the target. Returns (examples, what the budget cut)."""
    builder = PromptBuilder(task, tokenizer, budget)
    examples = []
    for it in items:
        example = Example(it["question"], it["options"])
        response = (responses or {}).get(it["item_id"])
        if response is not None:
            prompt, target = builder.training_response(example, response)
        else:
            prompt, target = builder.training(example, it["answer"])
        examples.append(TrainExample(prompt.text, target, it["answer"],
                                     float(it.get("weight", 1.0))))
    return examples, builder.stats


def pseudo_responses(ws: Workspace, items: list[dict]) -> dict[int, str]:
    """For an open task that trains on responses: the response each pseudo-label came
    from (the reflection when collaborators disagreed, else the first collaborator whose
    answer is the label), from the latest round that pseudo-labeled the item."""
    task = ws.require_task()
    wanted = {it["item_id"]: it["answer"] for it in items if it["source"] == "pseudo"}
    out: dict[int, str] = {}
    rows = ws.query_in(
        "SELECT p.item_id, p.round_id, p.path, p.reflection_text FROM pseudo_labels p "
        "JOIN rounds r ON r.id = p.round_id WHERE p.item_id IN ({}) ORDER BY r.number",
        list(wanted))
    latest = {r["item_id"]: r for r in rows}  # the last round's row wins
    for item_id, row in latest.items():
        if row["path"] == "reflected" and row["reflection_text"] and same_answer(
                task, extract_answer(task, row["reflection_text"]), wanted[item_id]):
            out[item_id] = row["reflection_text"]
            continue
        for r in ws.query("SELECT answer, text FROM responses WHERE round_id=? AND item_id=? "
                          "ORDER BY collaborator", (row["round_id"], item_id)):
            if r["text"] and same_answer(task, r["answer"], wanted[item_id]):
                out[item_id] = r["text"]
                break
    return out
