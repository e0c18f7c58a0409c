"""What the Train and evaluate page reads, once per render: the latest round, the run
working on it, what it trains on, the evidence to confirm before training, its evaluations,
the regression check, where the next round starts and the next action.

`train_action` is the "train on the curated set" box that Review and Selection show too
(the same counts and warnings), built from the same reads when the Train page has them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from semievol.config import SelectionConfig
from semievol.curation.selection_state import applied_selection
from semievol.curation.training_set import (SOURCES, decisions_since_freeze, source_counts,
                                            training_items)
from semievol.method.evaluate import evaluation_split, stored_evaluation
from semievol.rounds.guards import collapse_message, confirmations, training_warnings
from semievol.rounds.record import FINISHED, Round, latest_round
from semievol.rounds.scores import adapter_scores, regression, start_adapter
from semievol.runs import jobs
from semievol.views.workflow import data_step, state_of
from semievol.workspace.store import Workspace

VARIANTS = ("base", "base+demos", "warmup", "round")
"""The evaluated models, in the order the page compares them."""
VARIANT_NAMES = {"base": "base (zero-shot)", "base+demos": "base + demonstrations",
                 "warmup": "warm-up adapter", "round": "round adapter"}


@dataclass
class TrainAction:
    """The "train on the curated set" box of a round awaiting review."""
    round_id: int
    number: int
    counts: dict[str, int]       # training items by source (gold, human, pseudo)
    warnings: list[dict]         # the evidence against training now, to confirm
    running: dict | None         # a run that must finish first (it writes the rounds)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@dataclass
class TrainPage:
    round: Round | None
    state: dict                          # workflow's round state and next action
    running: list[dict] = field(default_factory=list)   # every running run
    busy: dict | None = None             # the run working on this round, if any
    training: list[dict] = field(default_factory=list)  # what the round trains on
    frozen: bool = False                 # its training set is frozen (training started)
    later_decisions: int = 0             # decisions made after the freeze (next round's)
    selected: bool = False               # a selection was applied to the round
    confirmations: list[dict] = field(default_factory=list)
    action: TrainAction | None = None    # the train box, while the round awaits review
    split: str | None = None             # where models are measured (test or calibration)
    reports: dict[str, dict] = field(default_factory=dict)  # variant -> stored report
    regression: dict | None = None       # rounds.scores.regression, once evaluated
    next_start: dict | None = None       # where the next round starts, once finished

    labels: list[str] = field(default_factory=list)  # the task's label set, if any

    @property
    def counts(self) -> dict[str, int]:
        return source_counts(self.training)

    def training_table(self) -> list[dict]:
        """Training items per class and source: [{class, gold, human, pseudo, total}], the
        task's labels first in their order, then any other answer (an open task's)."""
        table: dict[str, dict] = {}
        for it in self.training:
            row = table.setdefault(it["answer"], dict.fromkeys(SOURCES, 0))
            row[it["source"]] += 1
        order = [x for x in self.labels if x in table] + sorted(
            x for x in table if x not in self.labels)
        return [{"class": c, **table[c], "total": sum(table[c].values())} for c in order]

    def collapsed(self) -> dict[str, str]:
        """{variant: why its predictions collapsed onto one class} for the adapters
        (guards.collapse_message)."""
        out = {}
        for variant in ("warmup", "round"):
            report = self.reports.get(variant)
            message = report and collapse_message(report, VARIANT_NAMES[variant].capitalize())
            if message:
                out[variant] = message
        return out


def train_action(ws: Workspace, round_id: int, number: int, status: str, *,
                 training: list[dict] | None = None, running: list[dict] | None = None,
                 selection: SelectionConfig | None = None, split: str | None = None,
                 warmup_report: dict | None = None) -> TrainAction | None:
    """The train box of a round (None unless it awaits review); what the caller has read
    already (the training set, the running runs, the applied selection, the evaluation
    split, the warm-up's report on it) is passed on rather than read again."""
    if status != "awaiting_review":
        return None
    training = training_items(ws, number) if training is None else training
    running = jobs.running_runs(ws) if running is None else running
    warnings = training_warnings(ws, round_id, training=training, selection=selection,
                                 split=split, warmup_report=warmup_report)
    return TrainAction(round_id, number, source_counts(training), warnings,
                       running[0] if running else None)


def train_page(ws: Workspace) -> TrainPage:
    """Everything the Train and evaluate page shows, each thing read once."""
    rnd = latest_round(ws)
    running = jobs.running_runs(ws)
    if rnd is None:
        return TrainPage(None, state_of(ws.path, None, running, None, data_step(ws)), running)
    split = evaluation_split(ws)
    scores = adapter_scores(ws, split=split)
    check = regression(ws, rnd, scores=scores) if rnd.final_adapter else None
    training = training_items(ws, rnd.number)
    selection = applied_selection(ws, rnd.id)
    reports = {}
    for variant in VARIANTS:
        round_id = None if variant.startswith("base") else rnd.id
        report = stored_evaluation(ws, round_id, variant, split or "test")
        if report is not None:
            reports[variant] = report
    task = ws.task
    return TrainPage(
        labels=list(task.labels or []) if task else [],
        round=rnd, state=state_of(ws.path, rnd, running, check), running=running,
        busy=next((r for r in running if r["round_id"] == rnd.id), None),
        training=training, frozen=rnd.status in ("training", "trained", "done"),
        later_decisions=decisions_since_freeze(ws, rnd.id),
        selected=selection is not None,
        confirmations=confirmations(ws, rnd.id),
        action=train_action(ws, rnd.id, rnd.number, rnd.status, training=training,
                            running=running, selection=selection, split=split,
                            warmup_report=reports.get("warmup")),
        split=split, reports=reports, regression=check,
        next_start=start_adapter(ws, rnd.number + 1, rnd.config.start_from, scores=scores,
                                 previous=rnd) if rnd.status in FINISHED else None)
