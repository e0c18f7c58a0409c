"""What the Selection page reads: where its controls start for a round, the preview of a
selection config over the stored scores (nothing written), the calibration curve, the
leakage flags, the evidence against training and the audit queue with its estimate.

Nothing here loads a model: moving a slider only re-reads stored scores
(semievol.curation.selection_state.compute_selection).
"""

from __future__ import annotations

from dataclasses import dataclass

from semievol.config import SelectionConfig
from semievol.curation.audit import DEFAULT_PER_BIN, audit_estimate, audit_rows
from semievol.curation.calibration import calibration_report
from semievol.curation.selection_state import (applied_selection, class_thresholds,
                                               compute_selection, kept_selection, preview_rows,
                                               selection_in_force)
from semievol.method.pseudo_labels import available_scores, score_range
from semievol.rounds.guards import TRUST_MIN_ITEMS, leakage_flags, training_warnings
from semievol.views.workspace import label_counts
from semievol.workspace.store import Workspace


@dataclass
class Controls:
    """Where the policy widgets start for a round."""
    start: SelectionConfig        # the applied selection, else the round config's
    applied: bool                 # a selection was applied to the round
    scores: list[str]             # the selection scores the round stored
    ranges: dict[str, tuple]      # score -> (low, high) for the threshold slider
    open_task: bool               # an open task: no per-class policy, no class floor


@dataclass
class Preview:
    """A selection config over the round's stored scores, unapplied."""
    rows: list[dict]              # selection_state.preview_rows
    summary: dict                 # SelectionResult.summary()
    calibration: dict             # precision of all vs selected on the calibration slice
    class_thresholds: dict        # per-class bounds of the per_class policy
    curve: dict                   # precision against coverage on the calibration slice
    gold: dict[str, int]          # labeled items per class
    labels: list[str]             # the task's label set ([] for per-item options / open)
    leakage: list[dict]           # items flagged as near-duplicates of a test item
    warnings: list[dict]          # the evidence against training now
    comparison: list[dict]        # every policy on the same scores (SelectionResult)
    trust_min_items: int = TRUST_MIN_ITEMS


def _slider_range(found: tuple[float, float] | None) -> tuple[float, float]:
    """(min, max) for a threshold slider, widened when the scores are all equal (or
    absent)."""
    if found is None:
        return 0.0, 1.0
    low, high = found
    return (low, high) if high > low else (low, low + 1e-3)


def controls(ws: Workspace, round_id: int) -> Controls:
    start, applied = selection_in_force(ws, round_id)
    scores = available_scores(ws, round_id)
    task = ws.task
    return Controls(start, applied, scores,
                    {s: _slider_range(score_range(ws, round_id, s)) for s in scores},
                    bool(task and task.kind == "open"))


def next_rounds(ws: Workspace, round_id: int) -> dict:
    """{applied: the round's applied selection or None, kept: (the selection new rounds start
    from, the round it was tuned on) or None}: Selection's "Use these settings for the next
    rounds"."""
    return {"applied": applied_selection(ws, round_id), "kept": kept_selection(ws)}


def preview(ws: Workspace, round_id: int, config: SelectionConfig) -> Preview:
    """What `config` would keep of the round, with its evidence (raises SemiEvolError for
    a config the task refuses, e.g. per_class on an open task)."""
    result = compute_selection(ws, round_id, config, compare=True)
    task = ws.task
    return Preview(
        rows=preview_rows(result), summary=result.summary(), calibration=result.calibration(),
        class_thresholds=class_thresholds(result.rows, config),
        curve=calibration_report(ws, round_id, score=config.score).get("curve") or {},
        gold={r["label"]: r["items"] for r in label_counts(ws, ("labeled",))},
        labels=list(task.labels or []) if task else [],
        leakage=leakage_flags(ws, round_id), warnings=training_warnings(ws, round_id),
        comparison=result.comparison)


def audit(ws: Workspace, round_id: int, n_per_bin: int = DEFAULT_PER_BIN) -> dict | None:
    """{rows, estimate} of the audit queue; None before a selection is applied."""
    if applied_selection(ws, round_id) is None:
        return None
    return {"rows": audit_rows(ws, round_id, n_per_bin),
            "estimate": audit_estimate(ws, round_id, n_per_bin)}
