"""Human decisions and the selection of pseudo-labels, over what the workspace stores.

Nothing here touches a model: changing the policy or threshold only re-reads stored
entropies, so the app can move a slider and show new counts at once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from semievol.config import SelectionConfig
from semievol.errors import SemiEvolError
from semievol.selection import apply_decisions, class_counts, current_decisions, select
from semievol.store import DECISION_ACTIONS, Workspace, now


# -- decisions ---------------------------------------------------------------------------
def record_decisions(ws: Workspace, item_ids: list[int], action: str, *, reviewer: str,
                     label: str | None = None, note: str | None = None,
                     round_id: int | None = None) -> int:
    """Append one decision per item, all in one transaction; returns how many."""
    if action not in DECISION_ACTIONS:
        raise SemiEvolError(f"action must be one of {', '.join(DECISION_ACTIONS)}; got {action!r}.")
    if not reviewer or not reviewer.strip():
        raise SemiEvolError("A decision needs a reviewer name (set it in the sidebar or with "
                            "--reviewer).")
    if action == "relabel" and not label:
        raise SemiEvolError("relabel needs the new label.")
    if not item_ids:
        return 0
    task = ws.require_task()
    rows = {r["id"]: r for r in ws.query_in(
        "SELECT id, split, options FROM items WHERE id IN ({})", list(item_ids))}
    missing = [i for i in item_ids if i not in rows]
    if missing:
        raise SemiEvolError(f"No item with id {missing[0]} in this workspace.")
    not_unlabeled = [i for i in item_ids if rows[i]["split"] != "unlabeled"]
    if not_unlabeled:
        raise SemiEvolError(f"Item {not_unlabeled[0]} is not in the unlabeled pool; decisions "
                            "apply to pseudo-labeled items only.")
    if action == "relabel" and task.kind == "choice":
        for i in item_ids:
            options = json.loads(rows[i]["options"]) if rows[i]["options"] else task.labels
            if label not in options:
                raise SemiEvolError(f"{label!r} is not an option of item {i}: choose one of "
                                    f"{', '.join(options)}.")
    with ws.transaction() as conn:
        conn.executemany(
            "INSERT INTO decisions(item_id, action, label, reviewer, note, created_at, round_id) "
            "VALUES(?,?,?,?,?,?,?)",
            [(i, action, label if action == "relabel" else None, reviewer.strip(), note or None,
              now(), round_id) for i in item_ids])
    return len(item_ids)


def decision_map(ws: Workspace) -> dict[int, dict]:
    """The current decision per item (the latest; a `clear` removes it)."""
    return current_decisions(dict(r) for r in ws.query(
        "SELECT item_id, action, label, reviewer, note, created_at FROM decisions ORDER BY id"))


def decision_history(ws: Workspace, item_id: int) -> list[dict]:
    return [dict(r) for r in ws.query(
        "SELECT action, label, reviewer, note, created_at FROM decisions WHERE item_id=? "
        "ORDER BY id", (item_id,))]


# -- selection ---------------------------------------------------------------------------
@dataclass
class SelectionResult:
    item_ids: list[int]
    splits: list[str]            # unlabeled or calibration
    labels: list[str]            # final labels (relabels applied)
    selected: np.ndarray         # bool, after human decisions and the leakage guard
    source: list[str]            # policy / accepted / rejected / relabeled / leakage
    threshold: float | None      # the entropy bound the policy used (percentile/absolute)

    def summary(self) -> dict:
        pool = np.array([s == "unlabeled" for s in self.splits], dtype=bool)
        train = self.selected & pool
        return {"pool": int(pool.sum()), "selected": int(train.sum()),
                "by_class": class_counts(self.labels, train),
                "human": {k: sum(1 for s, p in zip(self.source, pool) if p and s == k)
                          for k in ("accepted", "rejected", "relabeled")},
                "excluded_leakage": sum(1 for s in self.source if s == "leakage"),
                "threshold": self.threshold}


def compute_selection(ws: Workspace, round_id: int, config: SelectionConfig) -> SelectionResult:
    """The policy over the round's stored entropies (unlabeled and calibration items together:
    calibration items are treated exactly as if unlabeled), then human decisions, then the
    leakage guard's flags. Pure reading; `apply_selection` writes the result."""
    from semievol.selection import threshold_for

    rows = ws.query(
        "SELECT p.item_id, i.split, p.label, p.path, p.entropy, p.option_entropy "
        "FROM pseudo_labels p JOIN items i ON i.id = p.item_id WHERE p.round_id=? "
        "AND i.split IN ('unlabeled','calibration') ORDER BY p.item_id", (round_id,))
    ids = [r["item_id"] for r in rows]
    column = "option_entropy" if config.score == "option_entropy" else "entropy"
    scores = np.array([np.nan if r[column] is None else r[column] for r in rows], dtype=float)
    labels = [r["label"] for r in rows]
    agreed = np.array([r["path"] == "agreed" for r in rows], dtype=bool)
    chosen = select(scores, labels, agreed, policy=config.policy, theta=config.theta,
                    threshold=config.threshold)
    decisions = decision_map(ws)
    final, final_labels, source = apply_decisions(ids, chosen, labels, decisions)
    flagged = {r[0] for r in ws.query("SELECT item_id FROM flags WHERE round_id=? AND "
                                      "kind='near_duplicate_test'", (round_id,))}
    for k, item_id in enumerate(ids):
        # Leakage wins over the policy; only an explicit human accept or relabel overrides it.
        if item_id in flagged and source[k] == "policy":
            final[k], source[k] = False, "leakage"
    if config.policy == "absolute":
        threshold = config.threshold
    elif config.policy == "percentile" and len(scores):
        threshold = threshold_for(scores, theta=config.theta)
    else:
        threshold = None
    return SelectionResult(ids, [r["split"] for r in rows], final_labels, final, source,
                           None if threshold is None or np.isnan(threshold) else float(threshold))


def apply_selection(ws: Workspace, round_id: int, config: SelectionConfig) -> dict:
    """Compute and store the selection (pseudo_labels.selected) and the config used, also in
    the round's stored config, so a later `select` step re-applies the same policy."""
    from semievol.config import round_config_from_dict, to_dict, to_json

    result = compute_selection(ws, round_id, config)
    round_config = round_config_from_dict(json.loads(ws.scalar(
        "SELECT config FROM rounds WHERE id=?", (round_id,))))
    round_config.selection = config
    with ws.transaction() as conn:
        conn.execute("UPDATE rounds SET config=? WHERE id=?", (to_json(round_config), round_id))
        conn.execute("UPDATE pseudo_labels SET selected=0 WHERE round_id=?", (round_id,))
        conn.executemany("UPDATE pseudo_labels SET selected=1 WHERE round_id=? AND item_id=?",
                         [(round_id, i) for i, s in zip(result.item_ids, result.selected) if s])
        ws.set_setting(f"selection_round_{round_id}", to_dict(config), conn)
    return result.summary()


# -- the training set (paper eq. 9) -----------------------------------------------------
def training_items(ws: Workspace, up_to_round: int) -> list[dict]:
    """Labeled items, human labels, and selected pseudo-labels of rounds <= up_to_round.

    Each: {item_id, question, options, answer, source}. Membership is the stored selection
    with the *current* decisions on top, so a decision made after the selection was applied
    counts at once: reject keeps an item out (whatever an earlier round selected), accept
    brings in its latest pseudo-label, relabel brings it in with the human label.
    """
    task = ws.require_task()
    decisions = decision_map(ws)

    def entry(item_id, row, answer, source):
        return {"item_id": item_id, "question": row["question"],
                "options": json.loads(row["options"]) if row["options"] else task.labels,
                "answer": answer, "source": source}

    out = [entry(r["id"], r, r["answer"], "gold") for r in ws.query(
        "SELECT id, question, options, answer FROM items WHERE split='labeled' ORDER BY id")]
    # The latest pseudo-label of every unlabeled item, and whether any round selected it.
    latest = {}
    for r in ws.query(
            "SELECT p.item_id, p.label, p.selected, i.question, i.options FROM pseudo_labels p "
            "JOIN items i ON i.id = p.item_id JOIN rounds r ON r.id = p.round_id "
            "WHERE i.split='unlabeled' AND r.number <= ? ORDER BY r.number, p.item_id",
            (up_to_round,)):
        was_selected = latest.get(r["item_id"], {}).get("selected", False)
        latest[r["item_id"]] = {**dict(r), "selected": was_selected or bool(r["selected"])}
    for item_id, row in latest.items():
        action = decisions.get(item_id, {}).get("action")
        if action == "relabel":
            out.append(entry(item_id, row, decisions[item_id]["label"], "human"))
        elif action == "accept" or (row["selected"] and action != "reject"):
            out.append(entry(item_id, row, row["label"], "pseudo"))
    # Items a reviewer labeled that no round has pseudo-labeled yet.
    unseen = [i for i, d in decisions.items() if d["action"] == "relabel" and i not in latest]
    for r in ws.query_in("SELECT id, question, options FROM items WHERE id IN ({})", unseen):
        out.append(entry(r["id"], r, decisions[r["id"]]["label"], "human"))
    return out
