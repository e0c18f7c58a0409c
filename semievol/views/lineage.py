"""Lineage: what every round produced, and which rounds, collaborators, thresholds, human
decisions and adapters one item went through. Pure reading of the workspace.
"""

from __future__ import annotations

import json

from semievol.config import SelectionConfig, display_names
from semievol.curation.audit import audit_estimate
from semievol.curation.calibration import calibration_report
from semievol.curation.decisions import current_decisions, round_frozen_at, round_of
from semievol.curation.selection_state import (class_thresholds, policy_threshold,
                                               selection_in_force)
from semievol.method.pseudo_labels import scored_rows
from semievol.rounds.record import STATUS_NAMES, round_by_id
from semievol.rounds.scores import regression
from semievol.saved_config import round_config_from_dict
from semievol.workspace.items import item_row, resolve_item
from semievol.workspace.store import Workspace

MODELS = ("base", "base+demos", "warmup", "round")


def _latest_accuracy(ws: Workspace) -> dict[tuple[int | None, str], float]:
    rows = ws.query("SELECT round_id, model, accuracy FROM evaluations WHERE split='test' AND "
                    "id IN (SELECT MAX(id) FROM evaluations WHERE split='test' "
                    "GROUP BY round_id, model)")
    return {(r["round_id"], r["model"]): r["accuracy"] for r in rows}


def round_summaries(ws: Workspace) -> list[dict]:
    """One dict per round, oldest first: number, status, test accuracy of base, base+demos
    (shared by all rounds: evaluated once), warm-up and the round's adapter; pseudo-labels
    produced in the unlabeled pool (agreed / reflected), selected, the human decisions in
    force that were made for it (curation.decisions.round_of); calibration precision of all
    and of the selected pseudo-labels (with Wilson intervals); the applied selection config
    (`rule`: it in words);
    the audit queue's estimate of the selection's error (curation.audit.audit_estimate); the
    adapters."""
    accuracy = _latest_accuracy(ws)
    frozen = round_frozen_at(ws)
    made_for: dict[int | None, dict[str, int]] = {}
    for d in current_decisions(ws).values():
        counts = made_for.setdefault(round_of(d["created_at"], frozen),
                                     {"accept": 0, "reject": 0, "relabel": 0})
        counts[d["action"]] += 1
    out = []
    for rnd in ws.query("SELECT * FROM rounds ORDER BY number"):
        rid = rnd["id"]
        counts = ws.query(
            "SELECT COUNT(*) AS n, COALESCE(SUM(p.selected), 0) AS selected, "
            "COALESCE(SUM(p.path='agreed'), 0) AS agreed, "
            "COALESCE(SUM(p.path='reflected'), 0) AS reflected "
            "FROM pseudo_labels p JOIN items i ON i.id = p.item_id "
            "WHERE p.round_id=? AND i.split='unlabeled'", (rid,))[0]
        human = made_for.get(rid, {"accept": 0, "reject": 0, "relabel": 0})
        config, applied = selection_in_force(ws, rid)
        calibration = calibration_report(ws, rid, score=config.score)
        calibration.pop("curve", None)
        out.append({
            "round_id": rid, "number": rnd["number"], "status": rnd["status"],
            "status_name": STATUS_NAMES[rnd["status"]],
            "accuracy": {"base": accuracy.get((None, "base")),
                         "base+demos": accuracy.get((None, "base+demos")),
                         "warmup": accuracy.get((rid, "warmup")),
                         "round": accuracy.get((rid, "round"))},
            "pseudo_labels": counts["n"], "selected": counts["selected"],
            "agreed": counts["agreed"], "reflected": counts["reflected"],
            "calibration_items": calibration["n"],
            "calibration_all": calibration.get("all"),
            "calibration_selected": calibration.get("selected"),
            "decisions": sum(human.values()), "accepted": human["accept"],
            "rejected": human["reject"], "relabeled": human["relabel"],
            "selection": ({"policy": config.policy, "theta": config.theta,
                           "threshold": config.threshold, "score": config.score,
                           "rule": config.describe()} if applied else None),
            "audit": audit_estimate(ws, rid),
            "warmup_adapter": rnd["warmup_adapter"], "final_adapter": rnd["final_adapter"],
            "regression": _regression_message(ws, rid)})
    return out


def _regression_message(ws: Workspace, round_id: int) -> str:
    """The regression guard's warning for a round, or "" (not worse, or not evaluated)."""
    check = regression(ws, round_by_id(ws, round_id))
    return check["message"] if check else ""


def _thresholds(ws: Workspace, round_id: int, config: SelectionConfig) -> tuple[float | None,
                                                                               dict]:
    """(global threshold, {pseudo-label: threshold}) the policy used, over the round's
    unlabeled and calibration pseudo-labels as in selection_state.compute_selection."""
    if config.policy == "agreement_only":
        return None, {}
    rows = scored_rows(ws, round_id, config.score)
    return policy_threshold(rows, config), class_thresholds(rows, config)


def _decision_rounds(ws: Workspace, item_id: int) -> list[tuple[int | None, dict]]:
    """The item's decisions, each with the round it counts for (curation.decisions.round_of)."""
    frozen = round_frozen_at(ws)
    return [(round_of(d["created_at"], frozen),
             {k: d[k] for k in ("action", "label", "reviewer", "note", "created_at")})
            for d in ws.query("SELECT action, label, reviewer, note, created_at FROM "
                              "decisions WHERE item_id=? ORDER BY id", (item_id,))]


def find_item(ws: Workspace, key: str) -> dict | None:
    """The item an external id (or an internal number) names, as workspace.items.item_row
    gives it; None when there is none."""
    item_id = resolve_item(ws, key)
    return None if item_id is None else item_row(ws, item_id)


def item_lineage(ws: Workspace, item_id: int) -> list[dict]:
    """One dict per round the item was pseudo-labeled (or answered) in, oldest first: the
    collaborators' answers with their config labels, the pseudo-label, its path and entropy,
    the threshold the applied policy used (per class for `per_class`, None for
    `agreement_only`), whether it was selected, the decisions made in that round, the
    warm-up adapter that labeled it and the round's adapter if it was trained on."""
    decisions = _decision_rounds(ws, item_id)
    out = []
    for rnd in ws.query(
            "SELECT * FROM rounds r WHERE EXISTS (SELECT 1 FROM pseudo_labels p WHERE "
            "p.round_id = r.id AND p.item_id=?) OR EXISTS (SELECT 1 FROM responses s WHERE "
            "s.round_id = r.id AND s.item_id=?) ORDER BY r.number", (item_id, item_id)):
        config = round_config_from_dict(json.loads(rnd["config"]))
        labels = [c.label for c in config.collaborators]
        names = display_names(config.collaborators)
        answers = [{"collaborator": r["collaborator"],
                    "config": labels[r["collaborator"]] if r["collaborator"] < len(labels)
                    else f"#{r['collaborator']}",
                    "name": names[r["collaborator"]] if r["collaborator"] < len(names)
                    else f"collaborator {r['collaborator'] + 1}",
                    "answer": r["answer"], "nll": r["nll"], "option_entropy": r["option_entropy"]}
                   for r in ws.query("SELECT collaborator, answer, nll, option_entropy FROM "
                                     "responses WHERE round_id=? AND item_id=? ORDER BY "
                                     "collaborator", (rnd["id"], item_id))]
        label = ws.query("SELECT * FROM pseudo_labels WHERE round_id=? AND item_id=?",
                         (rnd["id"], item_id))
        label = label[0] if label else None
        selection, applied = selection_in_force(ws, rnd["id"])
        threshold = None
        if label is not None and applied:
            overall, per_class = _thresholds(ws, rnd["id"], selection)
            threshold = per_class.get(label["label"]) if per_class else overall
        selected = bool(label["selected"]) if label is not None else False
        out.append({
            "round": rnd["number"], "round_id": rnd["id"], "answers": answers,
            "pseudo_label": label["label"] if label is not None else None,
            "path": label["path"] if label is not None else None,
            "agreement": label["agreement"] if label is not None else None,
            "entropy": label["entropy"] if label is not None else None,
            "option_entropy": label["option_entropy"] if label is not None else None,
            "policy": selection.policy if applied else None,
            "score": selection.score if applied else None,
            "threshold": threshold, "selected": selected,
            "decisions": [d for rid, d in decisions if rid == rnd["id"]],
            "labeled_by": rnd["warmup_adapter"],
            "adapter": rnd["final_adapter"] if selected else None})
    return out
