"""Human decisions on pseudo-labels: recording them, the decision now in force per item, an
item's history, and how decisions override the selection policy.

Decisions are append-only rows (the schema refuses UPDATE and DELETE). Which one is in force
on an item depends on the workspace's decision rule (DECISION_RULES), written once, as the
`current_decisions` view (workspace/store.py, migration 9), which both the Python readers
here and the review queue's SQL read:
- `latest` (one reviewer): the item's newest decision, unless it is a `clear`;
- `team` (a workspace with accounts): the newest adjudication by a lead; else the reviewers'
  decision when every reviewer's standing decision agrees; else the item is a conflict and is
  left out of training (read as a reject, noted as a conflict) until a lead adjudicates.

What each action means for training: accept -> kept with its pseudo-label; reject ->
dropped; relabel -> kept with the reviewer's label (a gold label, even on an item no round
has pseudo-labeled yet); clear -> the selection policy decides again.
"""

from __future__ import annotations

import re
from typing import Mapping, Sequence

import numpy as np

from semievol.errors import SemiEvolError
from semievol.task.answers import extract_answer
from semievol.task.numbers import overflowed
from semievol.workspace.items import options_of
from semievol.workspace.store import Workspace, now

DECISION_RULES = {
    "latest": "the newest decision on an item is in force",
    "team": "a lead's adjudication, else the reviewers' agreed decision, else left out",
}
"""Which decision trains (see the module's docstring); the rule is a workspace setting and
is kept with each round when its training set is frozen."""
ACTIONS = ("accept", "reject", "relabel", "clear")
"""Every decision action (the CLI's choices, the app's buttons, the schema's CHECK)."""
SOURCES = ("policy", "accepted", "rejected", "relabeled")
"""Where a pseudo-label's final selection comes from (see `apply_decisions`)."""
NEEDS_PSEUDO_LABEL = ("accept", "reject")
"""Actions that judge a pseudo-label, so the item must have one."""
MAX_REVIEWER = 100
MAX_NOTE = 2000
MAX_LABEL = 1000
"""Lengths of what a reviewer types (a name, a note, a relabel): a name is shown beside every
decision, in tables and in a terminal."""
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_CONTROL_OR_NEWLINE = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def checked_text(what: str, value: str, limit: int, *, lines: bool = False) -> str:
    """`value` stripped, refused when longer than `limit` characters or holding a control
    character (a terminal escape sequence starts with one; `lines`: newlines and tabs are
    kept, as in a note)."""
    value = value.strip()
    if len(value) > limit:
        raise SemiEvolError(f"The {what} is {len(value):,} characters long; at most {limit:,} "
                            "are kept: shorten it.")
    bad = (_CONTROL if lines else _CONTROL_OR_NEWLINE).search(value)
    if bad:
        raise SemiEvolError(f"The {what} holds a control character (U+{ord(bad.group()):04X}), "
                            "which a terminal or a table would act on: remove it.")
    return value


def decision_rule(ws: Workspace) -> str:
    """The workspace's decision rule, a key of DECISION_RULES."""
    return ws.get_setting("decision_rule", "latest")


def record_decisions(ws: Workspace, item_ids: list[int], action: str, *, reviewer: str,
                     label: str | None = None, note: str | None = None,
                     round_id: int | None = None, adjudication: bool = False) -> int:
    """Append one decision per item, all in one transaction; returns how many.
    `adjudication`: a lead settles a conflict (in force over the reviewers' decisions under
    the team rule; the caller checks the role).

    Refused, with nothing written, when: the action is unknown; there is no reviewer; a
    relabel has no label or one that is not an option of the item; accept or clear is given
    a label; an item is not in the unlabeled pool; accept or reject is asked for an item
    that no round has pseudo-labeled (there is nothing to accept yet; relabel it instead).
    """
    if action not in ACTIONS:
        raise SemiEvolError(f"action must be one of {', '.join(ACTIONS)}; got {action!r}.")
    if not reviewer or not reviewer.strip():
        raise SemiEvolError("A decision needs a reviewer name (--reviewer).",
                            app="A decision needs a reviewer name: type yours in the sidebar.")
    reviewer = checked_text("reviewer name", reviewer, MAX_REVIEWER)
    note = checked_text("note", note, MAX_NOTE, lines=True) or None if note else None
    if label is not None:
        label = checked_text("label", label, MAX_LABEL)
    if action == "relabel" and not (label and label.strip()):
        raise SemiEvolError("relabel needs the new label (--label).")
    if action != "relabel" and label:
        raise SemiEvolError(f"{action} takes no label ({label!r} given): to change the label, "
                            "use relabel.")
    if not item_ids:
        return 0
    task = ws.require_task()
    rows = {r["id"]: r for r in ws.query_in(
        "SELECT id, external_id, split, options FROM items WHERE id IN ({})", list(item_ids))}
    missing = [i for i in item_ids if i not in rows]
    if missing:
        raise SemiEvolError(f"No item with id {missing[0]} in this workspace.")
    not_unlabeled = [i for i in item_ids if rows[i]["split"] != "unlabeled"]
    if not_unlabeled:
        row = rows[not_unlabeled[0]]
        raise SemiEvolError(f"Item {row['external_id']} is in the {row['split']} split; "
                            "decisions apply to items of the unlabeled pool only.")
    if action in NEEDS_PSEUDO_LABEL:
        labeled = {r[0] for r in ws.query_in(
            "SELECT DISTINCT item_id FROM pseudo_labels WHERE item_id IN ({})", list(item_ids))}
        bare = [i for i in item_ids if i not in labeled]
        if bare:
            raise SemiEvolError(
                f"Item {rows[bare[0]]['external_id']} has no pseudo-label yet, so there is "
                f"nothing to {action}" + (f" ({len(bare)} such items)" if len(bare) > 1 else "")
                + "; run the label step first, or relabel it to give it a gold label.")
    if action == "relabel" and task.kind == "choice":
        for i in item_ids:
            options = options_of(rows[i], task) or []
            if label not in options:
                raise SemiEvolError(f"{label!r} is not an option of item "
                                    f"{rows[i]['external_id']}: choose one of "
                                    f"{', '.join(options)}.")
    if action == "relabel" and task.kind == "open":
        label = checked_open_label(task, label)
    with ws.transaction() as conn:
        conn.executemany(
            "INSERT INTO decisions(item_id, action, label, reviewer, note, created_at, round_id,"
            " adjudication) VALUES(?,?,?,?,?,?,?,?)",
            [(i, action, label.strip() if action == "relabel" else None, reviewer.strip(),
              note or None, now(), round_id, int(adjudication)) for i in item_ids])
    return len(item_ids)


def checked_open_label(task, label: str) -> str:
    """A reviewer's answer to an open item as the checker compares it ("1,250" -> 1250 for
    a numeric task); refused when the checker can read no answer in it."""
    answer = extract_answer(task, label)
    if not answer:
        if task.checker == "numeric" and overflowed(label):
            raise SemiEvolError(f"{label!r} is a number too large to compare "
                                f"({overflowed(label)[0]} overflows): type the answer itself.")
        what = "no number" if task.checker == "numeric" else "no answer"
        raise SemiEvolError(f"{label!r} has {what} the task's {task.checker} checker can "
                            "read: type the answer itself.")
    return answer


def label_reading(task, label: str) -> str:
    """A relabel as it is stored, in words for the reviewer who typed it: the label, or for
    an open task the answer the checker read ("'1,00,000' read as 100000")."""
    if task is None or task.kind != "open":
        return label
    answer = checked_open_label(task, label)
    return answer if answer == label.strip() else f"{label.strip()!r} read as {answer}"


def current_decisions(ws: Workspace) -> dict[int, dict]:
    """{item id: the decision in force} (item_id, action, label, reviewer, note, created_at,
    round_id), read from the `current_decisions` view."""
    return {r["item_id"]: dict(r) for r in ws.query(
        "SELECT item_id, action, label, reviewer, note, created_at, round_id "
        "FROM current_decisions")}


def round_frozen_at(ws: Workspace) -> list[tuple[int, float | None]]:
    """[(round id, when its training set was frozen, or None)], in round order: what
    `round_of` needs."""
    return [(r[0], r[1]) for r in ws.query("SELECT id, frozen_at FROM rounds ORDER BY number")]


def round_of(created_at: float, rounds: list[tuple[int, float | None]]) -> int | None:
    """The round a decision made at `created_at` counts for: the first round whose training
    set was not frozen yet (a decision made after a round started training belongs to the
    next one); None when that round is not opened yet. The one rule the Rounds page, the
    lineage and the model card count decisions by."""
    for round_id, frozen_at in rounds:
        if frozen_at is None or frozen_at > created_at:
            return round_id
    return None


def current_decision(ws: Workspace, item_id: int) -> dict | None:
    """The decision in force on one item (as in `current_decisions`), or None."""
    rows = ws.query("SELECT item_id, action, label, reviewer, note, created_at, round_id "
                    "FROM current_decisions WHERE item_id=?", (item_id,))
    return dict(rows[0]) if rows else None


def decision_history(ws: Workspace, item_id: int) -> list[dict]:
    """Every decision on one item, oldest first."""
    return [dict(r) for r in ws.query(
        "SELECT action, label, reviewer, note, created_at, round_id FROM decisions "
        "WHERE item_id=? ORDER BY id", (item_id,))]


UNDO_NOTE = "undo of decision #"
"""The note of a decision that takes an earlier one back (`undo_last`)."""


def is_undo(row) -> bool:
    """Whether a decision row is an undo (`undo_last` wrote it)."""
    return (row["note"] or "").startswith(UNDO_NOTE)


def undone_ids(rows) -> set[int]:
    """The ids of the decisions that the undo rows among `rows` took back."""
    return {int(r["note"][len(UNDO_NOTE):]) for r in rows if is_undo(r)}


def last_decision(ws: Workspace, *, reviewer: str | None = None) -> dict | None:
    """The newest decision row (of one reviewer, if given)."""
    sql = "SELECT id, item_id, action, label, reviewer, note, created_at FROM decisions"
    params: tuple = ()
    if reviewer:
        sql, params = sql + " WHERE reviewer=?", (reviewer,)
    rows = ws.query(sql + " ORDER BY id DESC LIMIT 1", params)
    return dict(rows[0]) if rows else None


def undo_last(ws: Workspace, *, reviewer: str, round_id: int | None = None) -> dict | None:
    """Take back the reviewer's newest decision that is not itself an undo and not undone
    yet. Decisions are append-only, so a new row (noted "undo of decision #N") puts in
    force what would be there had the undone decision never been made: the item's latest
    decision that is neither undone nor an undo (another reviewer's later one stays), else
    `clear`. Returns the undone row, or None when there is nothing to undo."""
    reviewer = checked_text("reviewer name", reviewer or "", MAX_REVIEWER)

    rows = [dict(r) for r in ws.query(
        "SELECT id, item_id, action, label, reviewer, note, adjudication FROM decisions "
        "ORDER BY id")]
    undone = undone_ids(rows)
    target = next((r for r in reversed(rows) if r["reviewer"] == reviewer.strip()
                   and not is_undo(r) and r["id"] not in undone), None)
    if target is None:
        return None
    undone.add(target["id"])
    # Under the team rule each reviewer's (and each adjudication's) decisions stand apart:
    # an undo puts back the reviewer's own earlier one, never a colleague's.
    own = decision_rule(ws) == "team"
    standing = [r for r in rows if r["item_id"] == target["item_id"] and not is_undo(r)
                and r["id"] not in undone and (not own or (
                    r["reviewer"] == target["reviewer"]
                    and r["adjudication"] == target["adjudication"]))]
    action, label = (standing[-1]["action"], standing[-1]["label"]) if standing \
        else ("clear", None)
    with ws.transaction() as conn:
        conn.execute("INSERT INTO decisions(item_id, action, label, reviewer, note, created_at,"
                     " round_id, adjudication) VALUES(?,?,?,?,?,?,?,?)",
                     (target["item_id"], action, label, reviewer.strip(),
                      f"{UNDO_NOTE}{target['id']}", now(), round_id, target["adjudication"]))
    return target


# -- the override rule (pure) ------------------------------------------------------------
def apply_decisions(
    item_ids: Sequence[int],
    selected: np.ndarray,
    labels: Sequence[str],
    decisions: Mapping[int, Mapping],
) -> tuple[np.ndarray, list[str], list[str]]:
    """Let human decisions override the policy's mask.

    accept -> kept with its pseudo-label; reject -> dropped; relabel -> kept with the
    decision's label. Returns (final_selected, final_labels, source) where source[i] is
    one of SOURCES. Decisions for items not in `item_ids` are ignored.
    """
    final = np.asarray(selected, dtype=bool).ravel().copy()
    if not (len(item_ids) == final.size == len(labels)):
        raise ValueError(
            f"item_ids ({len(item_ids)}), selected ({final.size}) and labels ({len(labels)}) "
            "must have the same length"
        )
    final_labels = list(labels)
    source = ["policy"] * final.size
    for i, item_id in enumerate(item_ids):
        decision = decisions.get(int(item_id))
        if decision is None:
            continue
        action = decision["action"]
        if action == "accept":
            final[i], source[i] = True, "accepted"
        elif action == "reject":
            final[i], source[i] = False, "rejected"
        elif action == "relabel":
            new_label = decision.get("label")
            if new_label is None or new_label == "":
                raise ValueError(f"relabel decision for item {item_id} has no label")
            final[i], final_labels[i], source[i] = True, new_label, "relabeled"
        else:
            raise ValueError(f"unknown decision action {action!r} for item {item_id}")
    return final, final_labels, source
