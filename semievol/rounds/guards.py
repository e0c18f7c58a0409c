"""Guards before training: answer format validation, test leakage (near-duplicates), and
the workspace's evidence against training (warnings a person must confirm)."""

from __future__ import annotations

import json

from semievol.config import SelectionConfig, TaskConfig
from semievol.curation.calibration import calibration_report
from semievol.curation.selection_state import applied_selection
from semievol.curation.sufficiency import class_mix_shift, label_counts_by_class, label_warnings
from semievol.curation.training_set import live_training_items
from semievol.errors import SemiEvolError
from semievol.method.evaluate import evaluation_split, stored_evaluation
from semievol.method.retrieval import item_embeddings
from semievol.rounds.record import Round
from semievol.workspace.store import Workspace, now


def validate_training_set(task: TaskConfig, examples: list[dict]) -> None:
    """Every training answer must be a well-formed answer for its item."""
    problems = []
    for e in examples:
        answer = e["answer"]
        if answer is None or not str(answer).strip():
            problems.append(f"item {e['item_id']} ({e['source']}): empty answer")
        elif task.kind == "choice" and answer not in (e["options"] or []):
            problems.append(f"item {e['item_id']} ({e['source']}): answer {answer!r} is not "
                            f"one of its options")
    if problems:
        raise SemiEvolError(f"{len(problems)} training example(s) have malformed answers; "
                            "relabel or reject them, then train again.", problems[:50])

def flag_leakage(ws: Workspace, round_id: int, embedder, *, similarity: float) -> int:
    """Flag pseudo-labeled items whose question nearly duplicates a test item (cosine >=
    `similarity`); flagged items are left out of training unless a reviewer accepts them."""
    pool = [r[0] for r in ws.query(
        "SELECT item_id FROM pseudo_labels WHERE round_id=? ORDER BY item_id", (round_id,))]
    tests = [r[0] for r in ws.query("SELECT id FROM items WHERE split='test' ORDER BY id")]
    flags = []
    if pool and tests:
        test_vectors = item_embeddings(ws, embedder, tests)
        for start in range(0, len(pool), 2048):
            chunk = pool[start:start + 2048]
            sims = item_embeddings(ws, embedder, chunk) @ test_vectors.T   # (chunk, tests)
            best = sims.argmax(axis=1)
            for row, item_id in enumerate(chunk):
                value = float(sims[row, best[row]])
                if value >= similarity:
                    flags.append((round_id, item_id, "near_duplicate_test", json.dumps(
                        {"test_item": tests[best[row]], "similarity": round(value, 4)})))
    with ws.transaction() as conn:
        conn.execute("DELETE FROM flags WHERE round_id=? AND kind='near_duplicate_test'",
                     (round_id,))
        conn.executemany("INSERT INTO flags(round_id, item_id, kind, detail) VALUES(?,?,?,?)",
                         flags)
    return len(flags)

def leakage_flags(ws: Workspace, round_id: int) -> list[dict]:
    rows = ws.query("SELECT f.item_id, f.detail, i.question FROM flags f JOIN items i ON "
                    "i.id = f.item_id WHERE f.round_id=? AND f.kind='near_duplicate_test'",
                    (round_id,))
    return [{"item_id": r["item_id"], "question": r["question"], **json.loads(r["detail"])}
            for r in rows]


# -- evidence before training ------------------------------------------------------------
COLLAPSE_SHARE = 0.9
"""A model predicting one class for this share of items (or more) has collapsed, unless
that class is as frequent in the gold labels."""
TRUST_MIN_ITEMS = 30
"""Below this many calibration items, a precision is a hint, not an estimate."""


def collapse_message(report: dict, what: str, *, share: float = COLLAPSE_SHARE) -> str | None:
    """Why an evaluation report shows a model collapsed onto one class, or None."""
    distribution = report.get("predicted_distribution") or {}
    n = report.get("n") or 0
    if not distribution or not n:
        return None
    top, count = max(distribution.items(), key=lambda kv: kv[1])
    gold = (report.get("per_class") or {}).get(top, {}).get("support", 0) / n
    if count / n >= share and gold < share:
        return (f"{what} predicts {top!r} for {count} of {n} {report.get('split', 'test')} "
                f"items ({count / n:.0%}; {gold:.0%} of the gold labels are {top!r}): it has "
                "collapsed onto one class, and pseudo-labels from it will mostly say the same.")
    return None


def training_warnings(ws: Workspace, round_id: int, *, training: list[dict] | None = None,
                      selection: SelectionConfig | None = None, split: str | None = None,
                      warmup_report: dict | None = None) -> list[dict]:
    """What the workspace's own evidence says against training round `round_id` now:
    [{kind, message}]. Kinds: `collapsed_warmup` (the warm-up predicts one class),
    `selection_no_better` (on the calibration slice the selected pseudo-labels are no more
    precise than all of them), `selection_below_majority` (less precise than always
    answering the majority class), `class_mix` (the selected pseudo-labels' classes depart
    from the labeled set's), `class_dropped` (a class of the pool has no selected item).
    What the caller has read already may be passed: the round's `training` set
    (curation.training_set.training_items, before its freeze), its applied `selection`, the
    evaluation `split` and the warm-up's stored report on it."""
    out = []
    split = split or evaluation_split(ws)
    for where in ("calibration", split):
        report = (warmup_report if where == split and warmup_report is not None else
                  stored_evaluation(ws, round_id, "warmup", where) if where else None)
        message = report and collapse_message(report, "The warm-up model")
        if message:
            out.append({"kind": "collapsed_warmup", "message": message})
            break
    config = selection or applied_selection(ws, round_id)
    if config is None:
        return out
    calibration = calibration_report(ws, round_id, score=config.score)
    if calibration.get("n"):
        everything, chosen = calibration["all"], calibration["selected"]
        few = (f" (only {calibration['n']} calibration items: a hint, not an estimate)"
               if calibration["n"] < TRUST_MIN_ITEMS else "")
        # Under confidence weighting a selection may keep everything (theta 100) and let the
        # weights separate right from wrong: judge the precision training sees, by weight.
        weighted = config.weighting == "confidence"
        precision = (calibration["selected_weighted"]["precision"] if weighted
                     else chosen["precision"])
        if chosen["n"] and precision is not None and precision <= everything["precision"]:
            said = (f"{precision:.0%} right by training weight" if weighted else
                    f"{precision:.0%} right ({chosen['correct']}/{chosen['n']})")
            out.append({"kind": "selection_no_better", "message": (
                f"On the calibration slice the selected pseudo-labels are {said}, no better "
                f"than all of them ({everything['precision']:.0%}){few}: "
                + ("the confidence weights are not separating right from wrong." if weighted
                   else "the entropy threshold is not separating right from wrong."))})
        majority = _majority_share(ws) if ws.require_task().kind == "choice" else None
        if chosen["n"] and majority is not None and chosen["precision"] < majority:
            out.append({"kind": "selection_below_majority", "message": (
                f"On the calibration slice the selected pseudo-labels are "
                f"{chosen['precision']:.0%} right, below the {majority:.0%} of always answering "
                f"the most frequent class{few}.")})
    dropped = dropped_classes(ws, round_id, training) if ws.require_task().kind == "choice" \
        else []
    shift = class_mix(ws, round_id, training) if ws.require_task().kind == "choice" else []
    if shift:
        said = "; ".join(f"{c['pseudo_share']:.0%} {c['label']!r} against "
                         f"{c['labeled_share']:.0%} of the labeled examples" for c in shift)
        out.append({"kind": "class_mix", "message": (
            f"The selected pseudo-labels' classes depart from the labeled set's: {said}. "
            "The warm-up model may favour a class it learnt from too few examples: review "
            "items of those classes (Review, by class), or add labels to the short ones.")})
    if dropped:
        out.append({"kind": "class_dropped", "message": (
            f"The selection keeps no item of {', '.join(map(repr, dropped))} (present in the "
            "pool): training would see that class only in the labeled set. Use the per-class "
            "policy, or accept some of its items.")})
    return out


def class_mix(ws: Workspace, round_id: int, training: list[dict] | None = None) -> list[dict]:
    """How the classes of the pseudo-labels training would keep from this round's pool
    depart from the labeled set's (curation.sufficiency.class_mix_shift)."""
    if training is None:
        number = ws.scalar("SELECT number FROM rounds WHERE id=?", (round_id,))
        training = live_training_items(ws, number)
    pool = {r[0] for r in ws.query(
        "SELECT p.item_id FROM pseudo_labels p JOIN items i ON i.id = p.item_id "
        "WHERE p.round_id=? AND i.split='unlabeled'", (round_id,))}
    pseudo: dict[str, int] = {}
    for it in training:
        if it["item_id"] in pool and it["source"] == "pseudo":
            pseudo[it["answer"]] = pseudo.get(it["answer"], 0) + 1
    return class_mix_shift(label_counts_by_class(ws)[0], pseudo)


def dropped_classes(ws: Workspace, round_id: int,
                    training: list[dict] | None = None) -> list[str]:
    """Pseudo-label classes of the round's pool of which training would keep no item (what
    training_set would train on: the applied selection with the decisions on top;
    `training` when the caller has read it)."""
    pool = {r[0]: r[1] for r in ws.query(
        "SELECT p.item_id, p.label FROM pseudo_labels p JOIN items i ON i.id = p.item_id "
        "WHERE p.round_id=? AND i.split='unlabeled'", (round_id,))}
    if training is None:
        number = ws.scalar("SELECT number FROM rounds WHERE id=?", (round_id,))
        training = live_training_items(ws, number)
    kept = {it["answer"] for it in training if it["item_id"] in pool and it["source"] != "gold"}
    return [c for c in dict.fromkeys(pool.values()) if c not in kept]


def _majority_share(ws: Workspace) -> float | None:
    """The most frequent gold class's share of the labeled and calibration items."""
    rows = ws.query("SELECT answer, COUNT(*) FROM items WHERE split IN ('labeled', "
                    "'calibration') GROUP BY answer")
    total = sum(r[1] for r in rows)
    return max(r[1] for r in rows) / total if total else None


def record_confirmation(ws: Workspace, round_id: int, warnings: list[dict], *,
                        reviewer: str) -> None:
    """Record that `reviewer` read `warnings` and trains round `round_id` anyway."""
    with ws.transaction() as conn:
        conn.executemany(
            "INSERT INTO confirmations(round_id, kind, message, reviewer, created_at) "
            "VALUES(?,?,?,?,?)",
            [(round_id, w["kind"], w["message"], reviewer, now()) for w in warnings])


def confirmations(ws: Workspace, round_id: int) -> list[dict]:
    """The warnings confirmed for a round, oldest first."""
    return [dict(r) for r in ws.query(
        "SELECT kind, message, reviewer, created_at FROM confirmations WHERE round_id=? "
        "ORDER BY id", (round_id,))]


def check_training_warnings(ws: Workspace, rnd: Round, confirm: str | None) -> list[dict]:
    """The pre-training warnings of an untrained round: raised as one error unless
    `confirm` (who trains anyway) is given, then recorded with the round."""
    if rnd.final_adapter or ws.scalar("SELECT frozen_at FROM rounds WHERE id=?", (rnd.id,)):
        return []  # training started already: it was decided then
    return _confirmed(ws, rnd, training_warnings(ws, rnd.id), confirm, (
        f"The workspace's evidence warns against training round {rnd.number} now; "
        "read the warnings, then confirm to train anyway (`--confirm`), or change the "
        "selection.",
        f"The workspace's evidence warns against training round {rnd.number} now: "
        "read the warnings, then tick the confirmation box to train anyway, or change "
        "the selection on the Selection page."))


def check_label_warnings(ws: Workspace, rnd: Round, confirm: str | None) -> list[dict]:
    """Before round 1 warms up: the classes short of labels (curation.sufficiency), raised
    as one error unless `confirm` (who goes on anyway) is given, then recorded with the
    round. Later rounds start from an earlier adapter, so only round 1 is checked."""
    if rnd.number != 1 or rnd.warmup_adapter:
        return []
    warnings = [{"kind": "few_labels", "message": c["message"]} for c in label_warnings(ws)]
    return _confirmed(ws, rnd, warnings, confirm, (
        "Some classes have too few labeled examples to be learnt: add labels to them "
        "(import more), or confirm to start the round anyway (`--confirm`).",
        "Some classes have too few labeled examples to be learnt: add labels to them "
        "(import more on the Workspace page), or tick the confirmation box on Round "
        "setup to start the round anyway."))


def _confirmed(ws: Workspace, rnd: Round, warnings: list[dict], confirm: str | None,
               refusal: tuple[str, str]) -> list[dict]:
    """The one rule of a warning that takes a confirmation: none, nothing to do; not
    confirmed, one error (`refusal`: its message, and the same in the app's words) with
    every warning as a problem; confirmed, the warnings not confirmed before are recorded
    with the round, with who confirmed. Returns `warnings`."""
    if not warnings:
        return []
    if not confirm:
        raise SemiEvolError(refusal[0], [w["message"] for w in warnings], app=refusal[1])
    seen = {(c["kind"], c["message"]) for c in confirmations(ws, rnd.id)}
    record_confirmation(ws, rnd.id, [w for w in warnings if (w["kind"], w["message"])
                                     not in seen], reviewer=confirm)
    return warnings
