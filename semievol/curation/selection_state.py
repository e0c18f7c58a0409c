"""A round's selection over what the workspace stores: the policy over the stored scores,
then human decisions, then the leakage guard; previewed without writing, or applied.

The one place selection state lives: the `selections` table holds the config applied to
each round (policy, theta, threshold, score), and `pseudo_labels.selected` is what that
config kept when it was applied. Both are written only by `apply_selection`, in one
transaction. A round's stored config carries the policy its select step applies when no
selection has been applied yet (`selection_in_force`).

Nothing here touches a model: moving a slider only re-reads stored scores.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from semievol.config import SELECTION_POLICIES, SelectionConfig, TaskConfig, student_index
from semievol.curation.calibration import precision_of
from semievol.curation.decisions import apply_decisions, current_decisions
from semievol.errors import SemiEvolError
from semievol.method.pseudo_labels import scored_rows
from semievol.method.selection import class_counts, reducible_loss, select, threshold_for
from semievol.saved_config import round_config_from_dict, selection_config_from_dict, to_json
from semievol.task.answers import is_correct, same_answer
from semievol.workspace.items import options_of
from semievol.workspace.store import Workspace, now


def applied_selection(ws: Workspace, round_id: int) -> SelectionConfig | None:
    """The selection config applied to the round, or None before any was."""
    raw = ws.scalar("SELECT config FROM selections WHERE round_id=?", (round_id,))
    return None if raw is None else selection_config_from_dict(json.loads(raw))


def selection_in_force(ws: Workspace, round_id: int) -> tuple[SelectionConfig, bool]:
    """(the config the round's selection follows, whether it was applied): the applied one,
    else the round config's (what its select step will apply)."""
    applied = applied_selection(ws, round_id)
    if applied is not None:
        return applied, True
    raw = ws.scalar("SELECT config FROM rounds WHERE id=?", (round_id,))
    if raw is None:
        raise SemiEvolError(f"There is no round with id {round_id}.")
    return round_config_from_dict(json.loads(raw)).selection, False


def leakage_flagged(ws: Workspace, round_id: int) -> set[int]:
    """Items of the round flagged as near-duplicates of a test item (guards.flag_leakage)."""
    return {r[0] for r in ws.query("SELECT item_id FROM flags WHERE round_id=? AND "
                                   "kind='near_duplicate_test'", (round_id,))}


def for_task(config: SelectionConfig, task: TaskConfig) -> SelectionConfig:
    """The selection as it applies to the task: an open task's answers are not classes, so
    the per-class and teach policies are refused and the class floor is off."""
    if task.kind != "open":
        return config
    why = {"per_class": "groups pseudo-labels by class, and the answers of an open task are "
                        "not classes",
           "teach": "reads the collaborators' probabilities of each option, and an open "
                    "task has no options"}
    if config.policy in why:
        raise SemiEvolError(f"The {config.policy} policy {why[config.policy]}: use "
                            "percentile, absolute or agreement_only.")
    import dataclasses

    return dataclasses.replace(config, class_floor=0.0)


def policy_mask(rows: list[dict], config: SelectionConfig) -> np.ndarray:
    """What the policy alone keeps of `selection_rows` (before decisions and the guard)."""
    scores = np.array([r["score"] for r in rows], dtype=float)
    agreed = np.array([r["path"] == "agreed" for r in rows], dtype=bool)
    teach = config.policy == "teach"
    # Calibration items are treated exactly as if unlabeled, the class floor included, so
    # their precision measures the selection that trains.
    return select(scores, [r["label"] for r in rows], agreed, policy=config.policy,
                  theta=config.theta, threshold=config.threshold,
                  class_floor=config.class_floor,
                  reducible=np.array([r["reducible"] for r in rows], dtype=float)
                  if teach else None,
                  reference_agrees=np.array([r["reference_agrees"] for r in rows], dtype=bool)
                  if teach else None)


def policy_threshold(rows: list[dict], config: SelectionConfig) -> float | None:
    """The single entropy bound the policy used (percentile / absolute), else None."""
    if config.policy == "absolute":
        return config.threshold
    if config.policy == "percentile" and rows:
        value = threshold_for(np.array([r["score"] for r in rows], dtype=float),
                              theta=config.theta)
        return None if np.isnan(value) else float(value)
    return None


def class_thresholds(rows: list[dict], config: SelectionConfig) -> dict[str, float]:
    """{pseudo-label: bound} of the per_class policy (its percentile within each class);
    {} for other policies."""
    if config.policy != "per_class":
        return {}
    out = {}
    for label in dict.fromkeys(r["label"] for r in rows):
        value = threshold_for(np.array([r["score"] for r in rows if r["label"] == label],
                                       dtype=float), theta=config.theta)
        if not np.isnan(value):
            out[label] = float(value)
    return out


@dataclass
class SelectionResult:
    task: TaskConfig
    rows: list[dict]             # scored_rows of the round (unlabeled and calibration)
    labels: list[str]            # final labels (relabels applied)
    selected: np.ndarray         # bool, after human decisions and the leakage guard
    source: list[str]            # policy / accepted / rejected / relabeled / leakage
    threshold: float | None      # the entropy bound the policy used (percentile/absolute)
    own: list[str | None] = field(default_factory=list)
    """The student's own answer per row (its most likely option; `config.student_index`),
    None where it gave none or no collaborator is the student."""
    weights: np.ndarray | None = None
    """Each row's training weight (SelectionConfig.weighting): 1, or for a pseudo-label the
    policy keeps under `confidence` weighting, the collaborators' confidence."""
    comparison: list[dict] = field(default_factory=list)
    """Every policy side by side over the same reads (compute_selection(compare=True))."""

    @property
    def item_ids(self) -> list[int]:
        return [r["item_id"] for r in self.rows]

    @property
    def splits(self) -> list[str]:
        return [r["split"] for r in self.rows]

    def summary(self) -> dict:
        pool = np.array([s == "unlabeled" for s in self.splits], dtype=bool)
        train = self.selected & pool
        classes = {} if self.task.kind == "open" else {  # open answers are not classes
            "by_class": class_counts(self.labels, train),
            "pool_by_class": class_counts([r["label"] for r in self.rows], pool)}
        return {"pool": int(pool.sum()), "selected": int(train.sum()), **classes,
                "human": {k: sum(1 for s, p in zip(self.source, pool) if p and s == k)
                          for k in ("accepted", "rejected", "relabeled")},
                "excluded_leakage": sum(1 for s in self.source if s == "leakage"),
                "threshold": self.threshold, "student": self.student_share(train),
                "mean_weight": self.mean_weight(train)}

    def mean_weight(self, train: np.ndarray) -> float | None:
        """The mean loss weight of what trains from the pool; None when all count in full."""
        if self.weights is None or not train.any() or np.all(self.weights[train] == 1.0):
            return None
        return float(self.weights[train].mean())

    def student_share(self, train: np.ndarray) -> dict:
        """Of the pool items selected to train, how many have the student's own answer and
        how many of those the selected label repeats: what training cannot teach it."""
        known = [k for k in np.flatnonzero(train) if k < len(self.own) and self.own[k]]
        same = sum(1 for k in known if same_answer(self.task, self.labels[k], self.own[k]))
        return {"known": len(known), "same": same,
                "share": same / len(known) if known else None}

    def calibration(self) -> dict:
        """Precision of all vs selected pseudo-labels on the calibration slice under this
        selection (calibration.precision_of), and the selection's coverage there."""
        cal = [k for k, r in enumerate(self.rows) if r["split"] == "calibration"]
        correct = np.array([is_correct(self.task, self.rows[k]["label"], self.rows[k]["gold"])
                            for k in cal], dtype=bool)
        return precision_of(correct, self.selected[cal] if cal else np.zeros(0, dtype=bool))


def compute_selection(ws: Workspace, round_id: int, config: SelectionConfig, *,
                      compare: bool = False) -> SelectionResult:
    """The policy over the round's stored scores, then human decisions, then the leakage
    guard's flags. Pure reading; `apply_selection` writes the result. `compare`: also every
    other policy over the same reads (`SelectionResult.comparison`)."""
    task = ws.require_task()
    config = for_task(config, task)
    inputs = _read_inputs(ws, round_id, config.score)
    result = _select_over(inputs, config)
    if compare:
        result.comparison = _compare_policies(inputs, config)
    return result


@dataclass
class _Inputs:
    """What a selection reads of the workspace, once for any number of configs."""
    task: TaskConfig
    rows: list[dict]              # selection_rows
    decisions: dict[int, dict]    # the decisions in force
    flagged: set[int]             # leakage-flagged items


def _read_inputs(ws: Workspace, round_id: int, score: str) -> _Inputs:
    return _Inputs(ws.require_task(), selection_rows(ws, round_id, score),
                   current_decisions(ws), leakage_flagged(ws, round_id))


def _select_over(inputs: _Inputs, config: SelectionConfig) -> SelectionResult:
    rows = inputs.rows
    chosen = policy_mask(rows, config)
    final, final_labels, source = apply_decisions(
        [r["item_id"] for r in rows], chosen, [r["label"] for r in rows], inputs.decisions)
    for k, row in enumerate(rows):
        # Leakage wins over the policy; only an explicit human accept or relabel overrides it.
        if row["item_id"] in inputs.flagged and source[k] == "policy":
            final[k], source[k] = False, "leakage"
    weights = np.array([r["confidence"] if config.weighting == "confidence"
                        and source[k] == "policy" else 1.0 for k, r in enumerate(rows)])
    return SelectionResult(inputs.task, rows, final_labels, final, source,
                           policy_threshold(rows, config), [r["own"] for r in rows],
                           weights=weights)


def _compare_policies(inputs: _Inputs, config: SelectionConfig) -> list[dict]:
    """Every policy the task allows, with `config`'s theta, score and class floor (absolute
    only where `config` has a threshold), over the same stored scores and decisions: what
    `select --preview` and Selection put side by side. One dict per policy: policy,
    describe, current (the one `config` names), selected, pool, student (the share the
    student answers already) and calibration (the slice's precision of the selected)."""
    import dataclasses

    out = []
    for policy in SELECTION_POLICIES:
        if policy == "absolute" and config.threshold is None:
            continue
        try:
            candidate = for_task(dataclasses.replace(config, policy=policy), inputs.task)
        except SemiEvolError:  # not for this task (an open one)
            continue
        result = _select_over(inputs, candidate)
        summary = result.summary()
        out.append({"policy": policy, "describe": candidate.describe(),
                    "current": policy == config.policy, "selected": summary["selected"],
                    "pool": summary["pool"], "student": summary["student"],
                    "calibration": result.calibration()["selected"]})
    return out


def selection_rows(ws: Workspace, round_id: int, score: str = "nll") -> list[dict]:
    """`scored_rows` with what the round's collaborators said of each pseudo-label, read from
    the stored responses in one pass:
    - own: the student's answer (`config.student_index`: the option it finds most likely,
      though its sampled answer may be another, else its answer), None where it gave none
      or no collaborator of the round is the student;
    - reference_p: the mean probability of the pseudo-label over the reference: the served
      collaborators where the round has any (a larger model), else every collaborator but
      the student (all of them when none is); nan without distributions;
    - reference_agrees: every reference collaborator's most likely option is the label;
    - reducible: the student's loss on the label minus the reference's (selection.
      reducible_loss; the student's probability is the warm-up model's on the plain prompt,
      `probability`), nan for an open task;
    - confidence: every collaborator's mean probability of the label (the student's too);
      where none stored a distribution (an open task), the share that gave it (agreement).
    """
    rows = scored_rows(ws, round_id, score)
    stored = ws.scalar("SELECT config FROM rounds WHERE id=?", (round_id,))
    collaborators = round_config_from_dict(json.loads(stored)).collaborators if stored else []
    student = student_index(collaborators)
    # A served collaborator (a larger model) is the reference when there is one.
    served = {k for k, c in enumerate(collaborators) if c.server}
    task = ws.require_task()
    said: dict[int, dict[int, tuple]] = {}  # item -> collaborator -> (answer, options, probs)
    for r in ws.query("SELECT r.item_id, r.collaborator, r.answer, r.option_probs, i.options "
                      "FROM responses r JOIN items i ON i.id = r.item_id WHERE r.round_id=?",
                      (round_id,)):
        probs = json.loads(r["option_probs"]) if r["option_probs"] else None
        options = options_of(r, task) if probs else None
        usable = options is not None and len(options) == len(probs) and sum(probs) > 0
        said.setdefault(r["item_id"], {})[r["collaborator"]] = (
            r["answer"], options if usable else None, probs if usable else None)
    for row in rows:
        answers = said.get(row["item_id"], {})
        row["own"] = _top_answer(*answers[student]) if student in answers else None
        shares = {k: p[o.index(row["label"])] / sum(p) if row["label"] in o else 0.0
                  for k, (_, o, p) in answers.items() if p}
        refs = {k for k in answers if k != student and (k in served or not served)}
        reference = [(o, p) for k, (_, o, p) in answers.items() if k in refs and p]
        others = [v for k, v in shares.items() if k in refs]
        row["reference_p"] = float(np.mean(others)) if others else np.nan
        row["confidence"] = float(np.mean(list(shares.values()))) if shares \
            else float(row["agreement"] or 0.0)
        row["reference_agrees"] = bool(reference) and all(
            o[int(np.argmax(p))] == row["label"] for o, p in reference)
    reducible = reducible_loss(np.array([r["probability"] for r in rows], dtype=float),
                               np.array([r["reference_p"] for r in rows], dtype=float))
    for row, value in zip(rows, reducible):
        row["reducible"] = float(value)
    return rows


def _top_answer(answer: str | None, options: list[str] | None, probs: list[float] | None):
    return options[int(np.argmax(probs))] if options else answer


def apply_selection(ws: Workspace, round_id: int, config: SelectionConfig) -> dict:
    """Compute the selection and store it: the config in `selections`, what it keeps in
    `pseudo_labels.selected`. Refused for a round that has trained (its training set is
    what it trained on). Returns the selection's summary."""
    status = ws.scalar("SELECT status FROM rounds WHERE id=?", (round_id,))
    if status is None:
        raise SemiEvolError(f"There is no round with id {round_id}.")
    if ws.scalar("SELECT final_adapter FROM rounds WHERE id=?", (round_id,)):
        raise SemiEvolError("This round is already trained: its selection stays as it was "
                            "trained on. Change the selection of the next round instead.")
    result = compute_selection(ws, round_id, config)
    with ws.transaction() as conn:
        conn.execute("INSERT INTO selections(round_id, config, applied_at) VALUES(?,?,?) "
                     "ON CONFLICT(round_id) DO UPDATE SET config=excluded.config, "
                     "applied_at=excluded.applied_at", (round_id, to_json(config), now()))
        conn.execute("UPDATE pseudo_labels SET selected=0, weight=NULL WHERE round_id=?",
                     (round_id,))
        # NULL is the full weight (schema 10): only a weighted selection writes one.
        conn.executemany("UPDATE pseudo_labels SET selected=1, weight=? WHERE round_id=? AND "
                         "item_id=?",
                         [(None if w == 1.0 else float(w), round_id, i) for i, s, w
                          in zip(result.item_ids, result.selected, result.weights) if s])
    return result.summary()


NEXT_SELECTION = "next_selection"
"""The setting holding the selection new rounds start from, once a reviewer chose one."""


def keep_for_next_rounds(ws: Workspace, round_id: int) -> SelectionConfig:
    """Make the selection applied to round `round_id` the one every new round starts from
    (rounds.record.base_config reads it), and the one of a later round already opened that
    has no selection applied yet: a threshold tuned on round 1 used to fall back to the
    round config's in round 2 without a word. Returns the kept config."""
    import dataclasses

    config = applied_selection(ws, round_id)
    if config is None:
        raise SemiEvolError("This round has no applied selection to keep: apply one first.")
    number = ws.scalar("SELECT number FROM rounds WHERE id=?", (round_id,))
    later = ws.query("SELECT id, config FROM rounds WHERE number > ? AND id NOT IN "
                     "(SELECT round_id FROM selections)", (number,))
    with ws.transaction() as conn:
        ws.set_setting(NEXT_SELECTION, {"round": number, "config": json.loads(to_json(config))},
                       conn)
        for row in later:
            updated = dataclasses.replace(round_config_from_dict(json.loads(row["config"])),
                                          selection=config)
            conn.execute("UPDATE rounds SET config=? WHERE id=?", (to_json(updated), row["id"]))
    return config


def kept_selection(ws: Workspace) -> tuple[SelectionConfig, int] | None:
    """(the selection kept for new rounds, the round it was tuned on), or None."""
    kept = ws.get_setting(NEXT_SELECTION)
    if not kept:
        return None
    return selection_config_from_dict(kept["config"]), kept["round"]


def preview_rows(result: SelectionResult) -> list[dict]:
    """One plain row per pseudo-label of a (previewed) selection: item_id, id (external),
    split, pseudo_label, label (after relabels), path, agreement (share of collaborators),
    score, selected, source, gold and correct (calibration items only)."""
    out = []
    for k, r in enumerate(result.rows):
        calibration = r["split"] == "calibration"
        out.append({"item_id": r["item_id"], "id": r["external_id"], "split": r["split"],
                    "pseudo_label": r["label"], "label": result.labels[k], "path": r["path"],
                    "agreement": r["agreement"],
                    "score": None if np.isnan(r["score"]) else r["score"],
                    "selected": bool(result.selected[k]), "source": result.source[k],
                    "gold": r["gold"] if calibration else None,
                    "correct": is_correct(result.task, r["label"], r["gold"])
                    if calibration else None})
    return out
