"""The review queue: a round's pseudo-labeled unlabeled items, filtered, sorted and paged in
SQL, and everything known about one item (demonstrations, every collaborator's answer, the
reflection, the decision history).

Nothing here loads a whole round into memory: a page is one LIMIT/OFFSET query over the
ids plus one query for the page's rows, and the total is a COUNT(*). The indexes the schema
already has serve every query (pseudo_labels (round_id, item_id) and (round_id, entropy),
decisions (item_id, id), neighbours (item_id, rank)); no extra index is created.
bench/review_query.py times them at 100,000 items.

A reviewer's current decision on an item is read from the `current_decisions` view (the one
definition of that rule, see semievol.curation.decisions); decisions are per item, not per round, as
in the selection.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from semievol.config import display_names
from semievol.curation.decisions import current_decision, decision_history
from semievol.errors import SemiEvolError
from semievol.method.pseudo_labels import PATHS
from semievol.method.retrieval import neighbours_of
from semievol.saved_config import round_config_from_dict
from semievol.task.formats import Example, reflection_messages
from semievol.workspace.items import item_row
from semievol.workspace.store import SPLITS, Workspace

DECISION_STATES = ("none", "accept", "reject", "relabel", "any")
SORTS = ("entropy", "similarity", "item")
QUESTION_CHARS = 200
"""Questions in a page's rows are cut to this many characters (the detail has all of it)."""

# Items whose current decision is one of a set of actions: a small list SQLite builds once.
_DECIDED = "p.item_id IN (SELECT d.item_id FROM current_decisions d WHERE d.action {})"
_NEAREST = "LEFT JOIN neighbours n0 ON n0.item_id = p.item_id AND n0.rank = 0 "
_NOT_UNLABELED = ", ".join(f"'{s}'" for s in SPLITS if s != "unlabeled")


@dataclass
class ReviewFilter:
    """What the review table shows: one round's unlabeled items, narrowed and ordered."""

    round_id: int
    path: str | None = None
    """`agreed`, `reflected`, or None for both."""
    entropy_min: float | None = None
    """Lowest entropy (mean token NLL of the pseudo-response) shown, inclusive."""
    entropy_max: float | None = None
    """Highest entropy shown, inclusive."""
    label: str | None = None
    """Only this pseudo-label."""
    decision: str | None = None
    """Current decision: `none` (undecided or cleared), `accept`, `reject`, `relabel`, `any`."""
    selected: bool | None = None
    """Only items the selection kept (True) or left out (False)."""
    search: str = ""
    """Text the question contains (case-insensitive for ASCII letters)."""
    sort: str = "entropy"
    """`entropy`, `similarity` (of the nearest demonstration) or `item` (import order)."""
    descending: bool = False

    def __post_init__(self):
        if self.path not in (None, *PATHS):
            raise SemiEvolError(f"path must be one of {', '.join(PATHS)}; got {self.path!r}.")
        if self.decision not in (None, *DECISION_STATES):
            raise SemiEvolError(f"decision must be one of {', '.join(DECISION_STATES)}; got "
                                f"{self.decision!r}.")
        if self.sort not in SORTS:
            raise SemiEvolError(f"sort must be one of {', '.join(SORTS)}; got {self.sort!r}.")
        if (self.entropy_min is not None and self.entropy_max is not None
                and self.entropy_min > self.entropy_max):
            raise SemiEvolError("The entropy range is empty: its minimum is above its maximum.")


def _where(flt: ReviewFilter) -> tuple[str, str, list]:
    """(tables, conditions, params): `pseudo_labels p`, joined to `items i` only to search."""
    narrowed = bool(flt.path or flt.label is not None or flt.selected is not None
                    or flt.search.strip() or flt.decision)
    # With other filters, reading rows in (round_id, entropy) index order means a random
    # table read per row; a scan of the round's rows is several times faster (COUNT(*) at
    # 100k: 150 ms vs 15 ms). The unary + keeps the entropy terms off the index.
    entropy = "+p.entropy" if narrowed else "p.entropy"
    params: list = []
    if flt.search.strip():
        tables = "pseudo_labels p JOIN items i ON i.id = p.item_id"
        sql = ["p.round_id = ? AND i.split = 'unlabeled' AND i.question LIKE ? ESCAPE '\\'"]
        params += [flt.round_id, "%" + re.sub(r"([\\%_])", r"\\\1", flt.search.strip()) + "%"]
    else:
        # Pseudo-labels exist for unlabeled and calibration items; the few non-unlabeled
        # ids are one small list, cheaper than a join to items per row.
        tables = "pseudo_labels p"
        sql = ["p.round_id = ? AND p.item_id NOT IN "
               f"(SELECT id FROM items WHERE split IN ({_NOT_UNLABELED}))"]
        params.append(flt.round_id)
    if flt.path:
        sql.append("AND p.path = ?")
        params.append(flt.path)
    if flt.entropy_min is not None:
        sql.append(f"AND {entropy} >= ?")
        params.append(float(flt.entropy_min))
    if flt.entropy_max is not None:
        sql.append(f"AND {entropy} <= ?")
        params.append(float(flt.entropy_max))
    if flt.label is not None:
        sql.append("AND p.label = ?")
        params.append(flt.label)
    if flt.selected is not None:
        sql.append("AND p.selected = ?")
        params.append(int(bool(flt.selected)))
    if flt.decision == "none":
        sql.append("AND NOT " + _DECIDED.format("IS NOT NULL"))
    elif flt.decision == "any":
        sql.append("AND " + _DECIDED.format("IS NOT NULL"))
    elif flt.decision:
        sql.append("AND " + _DECIDED.format("= ?"))
        params.append(flt.decision)
    return tables, " ".join(sql), params


def _order(flt: ReviewFilter, *, reverse: bool = False) -> tuple[str, str]:
    """(an extra join, ORDER BY ...) for the sort (`reverse` flips it)."""
    direction = "DESC" if flt.descending != reverse else "ASC"
    # The item id breaks ties, so pages never overlap or skip a row.
    if flt.sort == "entropy":
        return "", f"ORDER BY p.entropy {direction}, p.item_id {direction}"
    if flt.sort == "similarity":  # rank 0 is the nearest demonstration
        return (_NEAREST, f"ORDER BY n0.similarity {direction}, p.item_id {direction}")
    return "", f"ORDER BY p.item_id {direction}"


def count_items(ws: Workspace, flt: ReviewFilter) -> int:
    tables, where, params = _where(flt)
    return ws.scalar(f"SELECT COUNT(*) FROM {tables} WHERE {where}", params)


def review_page(ws: Workspace, flt: ReviewFilter, *, limit: int = 50, offset: int = 0,
                total: int | None = None) -> tuple[list[dict], int]:
    """One page of the filtered, sorted items and the total that match.

    Each row: item_id, external_id, question (cut to QUESTION_CHARS), label, path, agreement,
    entropy, option_entropy, selected (bool), decision (current action or None),
    decision_label (the relabel's label), similarity (nearest demonstration), flagged.
    `total`, when given, is this filter's `count_items` (the page needed it first).
    """
    if limit < 1 or offset < 0:
        raise SemiEvolError("limit must be at least 1 and offset at least 0.")
    total = count_items(ws, flt) if total is None else total
    if offset >= total:
        return [], total
    limit = min(limit, total - offset)
    # A page past the middle is read from the other end: the sorter then keeps `offset`
    # fewer rows (the last page of 100k sorted by similarity: about 2.5x faster). The item
    # id breaks every tie, so the reversed order is exactly the reverse.
    backwards = offset > total // 2
    if backwards:
        offset = total - offset - limit
    # Late row lookup: order and cut the ids first, then read the page's columns only.
    tables, where, params = _where(flt)
    join, order = _order(flt, reverse=backwards)
    ids = [r[0] for r in ws.query(
        f"SELECT p.item_id FROM {tables} {join}WHERE {where} {order} LIMIT ? OFFSET ?",
        [*params, int(limit), int(offset)])]
    if backwards:
        ids.reverse()
    marks = ",".join("?" * len(ids))
    rows = ws.query(
        f"SELECT p.item_id, i.external_id, SUBSTR(i.question, 1, {QUESTION_CHARS}) AS question, "
        "p.label, p.path, p.agreement, p.entropy, p.option_entropy, p.selected, "
        "n0.similarity, "
        "d.action AS decision, d.label AS decision_label, "
        "EXISTS (SELECT 1 FROM flags f WHERE f.round_id = p.round_id "
        "        AND f.item_id = p.item_id) AS flagged "
        f"FROM pseudo_labels p JOIN items i ON i.id = p.item_id {_NEAREST}"
        "LEFT JOIN current_decisions d ON d.item_id = p.item_id "
        f"WHERE p.round_id = ? AND p.item_id IN ({marks})", [flt.round_id, *ids])
    by_id = {}
    for r in rows:
        row = dict(r)
        if row["decision"] != "relabel":
            row["decision_label"] = None
        row["selected"] = bool(row["selected"])
        row["flagged"] = bool(row["flagged"])
        by_id[row["item_id"]] = row
    return [by_id[i] for i in ids], total


def filtered_item_ids(ws: Workspace, flt: ReviewFilter) -> list[int]:
    """Every item id the filter shows (for bulk decisions), in id order."""
    tables, where, params = _where(flt)
    return [r[0] for r in ws.query(
        f"SELECT p.item_id FROM {tables} WHERE {where} ORDER BY p.item_id", params)]


# -- what the page needs to draw its controls ------------------------------------------
MAX_LABEL_CHOICES = 500


def round_facets(ws: Workspace, round_id: int) -> dict:
    """What the filters offer for a round: entropy_min/max (None without entropies) and the
    pseudo-label choices.

    Both are read cheaply, the page draws them on every run: the entropy range comes from
    the (round_id, entropy) index and so spans the round's calibration items too; the label
    choices are the task's label set, or else the distinct pseudo-labels (sorted, at most
    MAX_LABEL_CHOICES: open answers can be many)."""
    low = ws.scalar("SELECT MIN(entropy) FROM pseudo_labels WHERE round_id = ?", (round_id,))
    high = ws.scalar("SELECT MAX(entropy) FROM pseudo_labels WHERE round_id = ?", (round_id,))
    task = ws.task
    if task and task.labels:
        labels = list(task.labels)
    else:
        labels = [r[0] for r in ws.query(
            "SELECT DISTINCT label FROM pseudo_labels WHERE round_id = ? ORDER BY label "
            "LIMIT ?", (round_id, MAX_LABEL_CHOICES))]
    return {"entropy_min": low, "entropy_max": high, "labels": labels}


def _round_config(ws: Workspace, round_id: int):
    """The round's RoundConfig, or None where it cannot be read (the answers are still
    shown, unnamed)."""
    raw = ws.scalar("SELECT config FROM rounds WHERE id = ?", (round_id,))
    if raw is None:
        raise SemiEvolError(f"There is no round with id {round_id}.")
    try:
        return round_config_from_dict(json.loads(raw))
    except (SemiEvolError, ValueError, TypeError):
        return None


WARMUP_REFLECTOR = "the warm-up model"
"""Who reflects unless the round names a served model (the paper's self-justification)."""


def reflector_name(round_config) -> str:
    """Who settled the round's disagreements, in words: the warm-up model (the paper's
    self-justification), or the base model of a named server (served.reflection_model)."""
    served = round_config.served if round_config is not None else None
    if served is not None and served.reflection_model == "base":
        return f"the base model on server {served.reflection}"
    return WARMUP_REFLECTOR


def _json(text):
    return None if text is None else json.loads(text)


def item_detail(ws: Workspace, round_id: int, item_id: int) -> dict:
    """Everything the reviewer needs to decide on one item of a round.

    {item: {id, external_id, question, options, answer}, pseudo_label: {label, path,
    agreement, entropy, option_entropy, selected, reflection_text}, neighbours: [{rank,
    similarity, id, external_id, question, label}], collaborators: [{collaborator, config,
    model, demonstrations, temperature, seed, answer, text, option_probs, probs (option ->
    probability), option_entropy, nll}], flags: [{kind, detail}], history: [decision rows,
    oldest first], decision: the current decision row or None}.
    """
    item = item_row(ws, item_id)
    if item is None:
        raise SemiEvolError(f"No item with id {item_id} in this workspace.")
    pseudo = ws.query("SELECT label, path, agreement, entropy, option_entropy, probability, "
                      "selected, reflection_text FROM pseudo_labels WHERE round_id = ? AND "
                      "item_id = ?",
                      (round_id, item_id))
    if not pseudo:
        raise SemiEvolError(f"Item {item_id} has no pseudo-label in this round; pick an item "
                            "from the review table.")
    pseudo_label = dict(pseudo[0])
    pseudo_label["selected"] = bool(pseudo_label["selected"])
    # One confidence: the warm-up model's probability of the pseudo-label among the options
    # (a collaborator card reads the same scale); exp(-entropy) where there are no options
    # (an open answer) or the round predates the stored probability.
    probability = pseudo_label.pop("probability")
    pseudo_label["confidence"] = probability if probability is not None else \
        confidence(pseudo_label["entropy"])

    round_config = _round_config(ws, round_id)
    configs = round_config.collaborators if round_config is not None else []
    reflector = reflector_name(round_config)
    names = display_names(configs)
    collaborators = []
    for r in ws.query("SELECT collaborator, answer, text, option_probs, option_entropy, nll, "
                      "cut_tokens, demos_shown FROM responses WHERE round_id = ? AND "
                      "item_id = ? ORDER BY collaborator", (round_id, item_id)):
        index = r["collaborator"]
        config = configs[index] if index < len(configs) else None
        probs = _json(r["option_probs"])
        options = item["options"] or []
        by_option = dict(zip(options, probs)) if probs and len(probs) == len(options) else None
        # One voice: the card leads with what the collaborator's model finds most likely and
        # that probability; the answer it sampled (its vote) goes to a detail line. Shown
        # side by side ("neutral · 15 %" next to "positive 66 %") they contradicted each
        # other for a reader who does not know sampling.
        top = max(by_option, key=by_option.get) if by_option else r["answer"]
        collaborators.append({
            "collaborator": index,
            "config": config.label if config else f"collaborator {index}",
            "name": names[index] if index < len(names) else f"collaborator {index + 1}",
            "decoding": config.decoding if config else "",
            "top": top,
            "confidence": by_option[top] if by_option else confidence(r["nll"]),
            "model": config.model if config else None,
            "demonstrations": config.demonstrations if config else None,
            "temperature": config.temperature if config else None,
            "seed": config.seed if config else None,
            "answer": r["answer"], "text": r["text"], "option_probs": probs,
            "probs": by_option,
            "option_entropy": r["option_entropy"], "nll": r["nll"],
            "cut_tokens": r["cut_tokens"] or 0, "demos_shown": r["demos_shown"]})

    neighbours = [{"rank": n["rank"], "similarity": n["similarity"], "id": n["id"],
                   "external_id": n["external_id"], "question": n["question"],
                   "label": n["answer"]} for n in neighbours_of(ws, item_id)]
    flags = [{"kind": f["kind"], "detail": _json(f["detail"])} for f in ws.query(
        "SELECT kind, detail FROM flags WHERE round_id = ? AND item_id = ? ORDER BY kind",
        (round_id, item_id))]
    history = decision_history(ws, item_id)
    current = current_decision(ws, item_id)
    answers = [c["answer"] for c in collaborators]
    agreeing = sum(1 for a in answers if a == pseudo_label["label"])
    pseudo_label["agreeing"] = f"{agreeing} of {len(answers)}"
    # What the context budget did to this item's prompts (0: it was never cut).
    pseudo_label["cut_tokens"] = max((c["cut_tokens"] for c in collaborators), default=0)
    pseudo_label["agreement_text"] = (f"{agreeing} of {len(answers)} collaborators gave this "
                                      "answer" if answers else "no collaborator answers stored")
    pseudo_label["voice"] = voice(pseudo_label["label"], pseudo_label["confidence"])
    pseudo_label["override"] = override(pseudo_label["path"], agreeing, len(answers),
                                        reflector)
    return {"item": item, "pseudo_label": pseudo_label, "neighbours": neighbours,
            "collaborators": collaborators, "flags": flags, "history": history,
            "decision": current,
            "reflection": _reflection(ws, item, pseudo_label, answers, reflector)}


def voice(label: str | None, probability: float | None) -> str:
    """The one confidence a reviewer reads, in words: "the warm-up model gives positive
    66 %" (its probability of the pseudo-label on the plain prompt, the number selection
    ranks by)."""
    if probability is None:
        return f"the warm-up model did not score {label!r}"
    return f"the warm-up model gives {label} {probability:.0%}"


def override(path: str | None, agreeing: int, answered: int,
             reflector: str = WARMUP_REFLECTOR) -> str | None:
    """When the collaborators disagreed and the reflecting model chose against some of them:
    "the warm-up model overrode 3 of 4 collaborators"; None otherwise."""
    overruled = answered - agreeing
    if path != "reflected" or overruled <= 0:
        return None
    return (f"{reflector} overrode {overruled} of {answered} collaborator"
            f"{'s' if answered != 1 else ''}")


def confidence(nll: float | None) -> float | None:
    """A plain 0..1 scale for a mean token NLL: exp(-NLL), the geometric-mean probability
    the model gave the answer's tokens (0.9 = sure; about 1/n_options = a guess)."""
    import math

    return None if nll is None else math.exp(-nll)


def _reflection(ws: Workspace, item: dict, pseudo_label: dict, answers: list,
                reflector: str) -> dict | None:
    """What the reflecting model was shown when collaborators disagreed, and what it chose:
    {by (who reflected, reflector_name), shown (the prompt's text), chose, scores (its text,
    e.g. option probabilities)}; None for an agreed item."""
    if pseudo_label["path"] != "reflected":
        return None
    task = ws.require_task()
    messages = reflection_messages(task, Example(item["question"], item["options"]), answers)
    shown = "\n\n".join(f"[{m['role']}]\n{m['content']}" for m in messages)
    return {"by": reflector, "shown": shown, "chose": pseudo_label["label"],
            "scores": pseudo_label["reflection_text"]}
