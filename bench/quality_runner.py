"""One seed of the quality bench: every answer format and configuration (baselines, warm-up
SFTs, SemiEvol rounds, ablations) run through the library, with stage timings and the
pseudo-labels scored against the hidden answers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from common import Stages, log, pct, progress_printer
from quality_data import build_workspace, fork, round_config, write_split_files
from quality_review import give_gold_labels, random_pool_items, review_name, simulate_review

CURVE_POINTS = 120  # precision-coverage points kept per curve in the JSON


# -- measurements ------------------------------------------------------------------------
def metrics_of(report: dict) -> dict:
    keep = ("accuracy", "macro_f1", "majority_baseline", "majority_label",
            "predicted_distribution", "per_class", "confusion", "n", "demonstrations")
    return {k: report.get(k) for k in keep}


def pseudo_label_stats(ws, round_id: int, hidden: dict, score: str = "nll") -> dict:
    """Precision of the round's pseudo-labels on unlabeled items against the hidden answers:
    all vs selected, by path, and the precision-coverage curve over the entropy."""
    from semievol.curation.calibration import calibration_report
    from semievol.method.scoring import precision_coverage, wilson_interval

    rows = ws.query(
        "SELECT p.item_id, p.label, p.path, p.entropy, p.option_entropy, p.selected, "
        "i.external_id FROM pseudo_labels p JOIN items i ON i.id = p.item_id "
        "WHERE p.round_id=? AND i.split='unlabeled' ORDER BY p.item_id", (round_id,))
    if not rows:
        return {"n": 0}
    correct = np.array([r["label"] == hidden[r["external_id"]] for r in rows], dtype=bool)
    selected = np.array([bool(r["selected"]) for r in rows], dtype=bool)
    agreed = np.array([r["path"] == "agreed" for r in rows], dtype=bool)

    def share(mask):
        n, k = int(mask.sum()), int((correct & mask).sum())
        return {"n": n, "correct": k, "precision": k / n if n else None,
                "interval": list(wilson_interval(k, n))}

    def curve(column):
        s = np.array([np.nan if r[column] is None else r[column] for r in rows], dtype=float)
        c = precision_coverage(s, correct)
        step = max(1, len(c["coverage"]) // CURVE_POINTS)
        return {k: v[::step] + (v[-1:] if (len(v) - 1) % step else []) for k, v in c.items()}

    def distribution(mask):
        out: dict[str, int] = {}
        for r, m in zip(rows, mask):
            if m:
                out[r["label"]] = out.get(r["label"], 0) + 1
        return dict(sorted(out.items()))

    truth: dict[str, int] = {}
    for r in rows:
        truth[hidden[r["external_id"]]] = truth.get(hidden[r["external_id"]], 0) + 1
    calibration = calibration_report(ws, round_id, score=score)
    calibration.pop("curve", None)
    return {"n": len(rows), "all": share(np.ones_like(correct)), "selected": share(selected),
            "coverage": float(selected.mean()), "agreed": share(agreed),
            "reflected": share(~agreed), "label_distribution": distribution(np.ones_like(selected)),
            "selected_distribution": distribution(selected), "truth_distribution": truth,
            "majority_share": max(truth.values()) / len(rows),
            "curve_nll": curve("entropy"), "curve_option_entropy": curve("option_entropy"),
            "calibration_slice": calibration}


def warmup_knowledge(ws, rnd, hidden: dict) -> dict | None:
    """What the selected pseudo-labels teach beyond the warm-up model: how many it already
    answered right on its own (the argmax of the plain warm-up collaborator's option
    probabilities), how many the round corrects (right where the warm-up was wrong), how
    many are wrong. None when no collaborator is the plain warm-up (warmup, 0 demos)."""
    from semievol.workspace.items import options_of

    from semievol.config import student_index

    student = student_index(rnd.config.collaborators)
    if student is None:
        return None
    task = ws.require_task()
    rows = ws.query(
        "SELECT p.label, i.external_id, i.options, r.option_probs FROM pseudo_labels p "
        "JOIN items i ON i.id = p.item_id JOIN responses r ON r.round_id = p.round_id "
        "AND r.item_id = p.item_id AND r.collaborator = ? "
        "WHERE p.round_id = ? AND p.selected = 1 AND i.split = 'unlabeled'",
        (student, rnd.id))
    out = {"selected": len(rows), "warmup_right": 0, "corrected": 0, "wrong": 0}
    for r in rows:
        truth = hidden[r["external_id"]]
        probs = json.loads(r["option_probs"]) if r["option_probs"] else None
        own = options_of(r, task)[int(np.argmax(probs))] if probs else None
        if r["label"] != truth:
            out["wrong"] += 1
        elif own == truth:
            out["warmup_right"] += 1
        else:
            out["corrected"] += 1
    return out


def curated_stats(ws, round_number: int, hidden: dict) -> dict:
    """Precision of what the round trained on from the unlabeled pool (selected
    pseudo-labels, accepted ones and human labels), against the hidden answers."""
    from semievol.curation.training_set import training_items

    ids = {r["id"]: r["external_id"] for r in ws.query(
        "SELECT id, external_id FROM items WHERE split='unlabeled'")}
    rows = [it for it in training_items(ws, round_number) if it["item_id"] in ids]
    correct = sum(it["answer"] == hidden[ids[it["item_id"]]] for it in rows)
    by_source: dict[str, int] = {}
    for it in rows:
        by_source[it["source"]] = by_source.get(it["source"], 0) + 1
    return {"n": len(rows), "correct": correct,
            "precision": correct / len(rows) if rows else None, "sources": by_source}


class Runner:
    """One seed: every format and configuration, with its stage timings."""

    def __init__(self, args, task: dict, labeled: int, seed: int, root: Path, embedder, base,
                 held: set[tuple[str, str]] = frozenset()):
        self.args, self.task, self.labeled, self.seed = args, task, labeled, seed
        self.root, self.embedder, self.base = root, embedder, base
        self.held = held  # (format, variant) an earlier run of this seed measured
        self.stages = Stages()
        self.variants: list[dict] = []
        self.pseudo: list[dict] = []
        self.training: list[dict] = []

    def holds(self, fmt: str, name: str) -> bool:
        """Whether an earlier run of this seed measured this variant (--skip-held): it is
        not run again unless a later variant needs it."""
        if (fmt, name) in self.held:
            log(f"  skipped {fmt} {name}: an earlier run of seed {self.seed} holds it")
            return True
        return False

    def stage(self, fmt: str, name: str):
        return self.stages.measure(f"seed {self.seed} · {self.labeled} labeled · {fmt} · {name}",
                                   seed=self.seed, format=fmt, label=f"{fmt} · {name}")

    def add_variant(self, fmt: str, name: str, report: dict, **extra) -> None:
        m = metrics_of(report)
        self.variants.append({"seed": self.seed, "format": fmt, "variant": name, **m, **extra})
        log(f"  => {fmt} {name}: accuracy {m['accuracy']:.3f}, macro-F1 {m['macro_f1']:.3f} "
            f"(majority {m['majority_baseline']:.3f}); predicted {m['predicted_distribution']}")

    def add_pseudo(self, fmt: str, name: str, ws, rnd, hidden: dict) -> None:
        stats = pseudo_label_stats(ws, rnd.id, hidden, score=rnd.config.selection.score)
        stats["warmup_knowledge"] = warmup_knowledge(ws, rnd, hidden)
        self.pseudo.append({"seed": self.seed, "format": fmt, "variant": name,
                            "round": rnd.number, **stats})
        if stats["n"]:
            log(f"  => {fmt} {name}: pseudo-label precision all {pct(stats['all']['precision'])} "
                f"(n={stats['n']}), selected {pct(stats['selected']['precision'])} "
                f"(n={stats['selected']['n']}, coverage {pct(stats['coverage'])})")

    def run_step(self, ws, rnd, step: str, progress=None, **options) -> dict:
        """One step through the library's step runner (semievol.rounds.steps.run_steps), with the
        bench's shared base model and embedder."""
        from semievol.rounds import steps

        return steps.run_steps(ws, rnd.number, [step], progress=progress,
                               embedder=self.embedder, backends={"base": self.base},
                               confirm="quality bench", **options)[step]

    # -- steps ---------------------------------------------------------------------------
    def warmup(self, ws, rnd, fmt: str, name: str, **extra):
        from semievol.method.evaluate import evaluate
        from semievol.rounds.backends import load_backends
        from semievol.rounds.record import budget_of, get_round

        with self.stage(fmt, f"{name}: train") as rec:
            summary = self.run_step(ws, rnd, "warmup", progress=progress_printer("warm-up", 30))
            rec.update(train=_train_summary(summary))
        self.training.append({"seed": self.seed, "format": fmt, "variant": name,
                              **_train_summary(summary)})
        rnd = get_round(ws, rnd.number)
        with self.stage(fmt, f"{name}: evaluate"):
            report = evaluate(ws, load_backends(ws, rnd)["warmup"], model="warmup",
                              round_id=rnd.id, budget=budget_of(rnd),
                              progress=progress_printer("evaluate"))
        self.add_variant(fmt, name, report, round=rnd.number, **extra)
        return rnd

    def label(self, ws, rnd, fmt: str, name: str) -> dict:
        with self.stage(fmt, f"{name}: label") as rec:
            result = self.run_step(ws, rnd, "label", progress=progress_printer("label"))
            rec.update(labeling=result)
        log(f"  label: {result}")
        return result

    def select_train_evaluate(self, ws, rnd, fmt: str, name: str, hidden: dict,
                              selection=None, review=None, **extra) -> None:
        """Select, then (`review`: a simulated reviewer's decisions, as the round waits for
        review in the app), train and evaluate."""
        from semievol.method.evaluate import stored_evaluation
        from semievol.rounds.guards import confirmations
        from semievol.rounds.record import get_round

        with self.stage(fmt, f"{name}: select") as rec:
            summary = self.run_step(ws, rnd, "select", selection=selection)
            rec.update(select={k: summary.get(k) for k in ("pool", "selected", "by_class",
                                                           "flagged_leakage", "threshold")})
        self.add_pseudo(fmt, name, ws, get_round(ws, rnd.number), hidden)
        if review is not None:
            extra["review"] = review(ws, get_round(ws, rnd.number))
            log(f"  review: {extra['review']}")
        with self.stage(fmt, f"{name}: train") as rec:
            summary = self.run_step(ws, rnd, "train", progress=progress_printer("train", 30))
            rec.update(train=_train_summary(summary))
        self.training.append({"seed": self.seed, "format": fmt, "variant": name,
                              **_train_summary(summary)})
        with self.stage(fmt, f"{name}: evaluate"):
            self.run_step(ws, rnd, "evaluate", progress=progress_printer("evaluate"))
        rnd = get_round(ws, rnd.number)
        self.pseudo[-1]["curated"] = curated_stats(ws, rnd.number, hidden)
        # What the product warned before this training (the bench confirms and trains
        # anyway, so that the warning can be checked against the outcome).
        extra["warned"] = sorted({c["kind"] for c in confirmations(ws, rnd.id)})
        self.add_variant(fmt, name, stored_evaluation(ws, rnd.id, "round"), round=rnd.number,
                         **extra)

    def train_continuing(self, ws, number: int, fmt: str, name: str, hidden: dict) -> None:
        """The round's final training continued from its warm-up model's adapter instead of
        a fresh LoRA on the base model (RoundConfig.continue_from_warmup)."""
        import dataclasses

        from semievol.rounds.record import get_round, open_round

        rnd = get_round(ws, number)
        rnd = open_round(ws, dataclasses.replace(rnd.config, continue_from_warmup=True))
        self.select_train_evaluate(ws, rnd, fmt, name, hidden)
        ws.close()

    # -- one format ----------------------------------------------------------------------
    def run_format(self, fmt: str, primary: bool, files: dict, hidden: dict) -> None:
        from semievol.config import (CalibrationConfig, CollaboratorConfig, SelectionConfig,
                                     TaskConfig)
        from semievol.method.evaluate import evaluate
        from semievol.model.prompts import resolve_budget
        from semievol.rounds.record import get_round, open_round

        args = self.args
        task_config = TaskConfig(kind="choice", labels=self.task["labels"], answer_format=fmt,
                                 instruction=args.instruction)
        with self.stage(fmt, "import + hold-out + index") as rec:
            ws, _held_out = build_workspace(self.root / fmt, files, task_config, self.embedder,
                                       CalibrationConfig(fraction=args.calibration, seed=self.seed),
                                       args.k)
            rec.update(splits=ws.split_counts())
        log(f"  workspace {ws.path}: {ws.split_counts()}")
        for name, demos in (("base", 0), ("base+demos", args.k)):
            if self.holds(fmt, name):
                continue
            with self.stage(fmt, f"{name}: evaluate"):
                report = evaluate(ws, self.base, model=name, round_id=None,
                                  budget=resolve_budget(self.base.model_config),
                                  demonstrations=demos, progress=progress_printer("evaluate"))
            self.add_variant(fmt, name, report)

        if "none" in args.balance and not self.holds(fmt, NO_BALANCE_SFT):
            nb = fork(ws, self.root / f"{fmt}-no-balance")
            rnd = open_round(nb, round_config(args, self.seed, "none"))
            self.warmup(nb, rnd, fmt, NO_BALANCE_SFT)
            nb.close()
        for n in (args.gold_sizes if primary else []):
            name = f"SFT (class-balanced) + {n} gold labels"
            if self.holds(fmt, name):
                continue
            # Plain labeling: n random unlabeled items given their true answer, then the
            # same warm-up SFT as SemiEvol's (class-balanced) on labeled + those.
            gws = fork(ws, self.root / f"{fmt}-gold-{n}")
            give_gold_labels(gws, random_pool_items(gws, n, self.seed), hidden)
            rnd = open_round(gws, round_config(args, self.seed, "sampler"))
            self.warmup(gws, rnd, fmt, name, gold=n)
            gws.close()
        # Plain SFT given as many optimizer steps as SemiEvol r1 takes (it trains on labeled
        # + selected, so it runs longer): is r1's gain the pseudo-labels or the steps?
        matched = (fork(ws, self.root / f"{fmt}-matched-sft")
                   if primary and "matched-sft" in args.ablations
                   and not self.holds(fmt, ABLATION_NAMES["matched-sft"]) else None)
        if "sampler" not in args.balance:
            ws.close()
            return
        rnd = open_round(ws, round_config(args, self.seed, "sampler"))
        rnd = self.warmup(ws, rnd, fmt, "SFT (class-balanced)")

        n_rounds = args.rounds if primary else args.secondary_rounds
        forks, reviews, later = {}, {}, None
        for number in range(1, n_rounds + 1):
            if number > 1:
                rnd = open_round(ws)
                self.run_step(ws, rnd, "warmup")  # the previous final adapter
                rnd = get_round(ws, rnd.number)
            self.label(ws, rnd, fmt, f"SemiEvol r{number}")
            if number == 1 and primary:
                # Branch after labeling: the ablations and reviewers reuse the stored responses.
                forks = {a: fork(ws, self.root / f"{fmt}-{a}") for a in args.ablations
                         if a not in NOT_FORKED_AFTER_LABELING
                         and not self.holds(fmt, ABLATION_NAMES[a])}
                reviews = {(o, n): fork(ws, self.root / f"{fmt}-review-{o}-{n}")
                           for o in args.review_orders for n in args.review_sizes
                           if not self.holds(fmt, review_name(o, n))}
            if (number == 2 and primary and "continue" in args.ablations
                    and not self.holds(fmt, CONTINUED_R2)):
                later = fork(ws, self.root / f"{fmt}-r2-continue")
            # A held round is trained again only where something after it needs it: the
            # next round starts from it, the matched SFT takes its number of steps.
            if (number < n_rounds or matched is not None
                    or not self.holds(fmt, f"SemiEvol r{number}")):
                self.select_train_evaluate(ws, rnd, fmt, f"SemiEvol r{number}", hidden)
            rnd = get_round(ws, number)
        ws.close()

        if matched is not None:
            steps = next(t["steps"] for t in self.training
                         if t["variant"] == "SemiEvol r1" and t["format"] == fmt)
            config = round_config(args, self.seed, "sampler")
            config.train.max_steps = steps
            rnd = open_round(matched, config)
            self.warmup(matched, rnd, fmt, ABLATION_NAMES["matched-sft"], steps=steps)
            matched.close()
        if later is not None:
            self.train_continuing(later, 2, fmt, CONTINUED_R2, hidden)
        for (order, n), rws in reviews.items():
            self.select_train_evaluate(
                rws, get_round(rws, 1), fmt, review_name(order, n), hidden,
                review=lambda w, r, o=order, k=n: simulate_review(w, r, hidden, o, k,
                                                                  self.seed))
            rws.close()
        for ablation, fws in forks.items():
            name = ABLATION_NAMES[ablation]
            rnd = get_round(fws, 1)
            selection = None
            if ablation == "continue":
                self.train_continuing(fws, 1, fmt, name, hidden)
                continue
            if ablation == "no-selection":
                selection = SelectionConfig(policy="percentile", theta=100.0)
            elif ablation == "per-class":
                # The same percentile within each pseudo-label class: the global one can
                # drop a class whose items the warm-up model is less sure of.
                selection = SelectionConfig(policy="per_class",
                                            theta=rnd.config.selection.theta)
            elif ablation == "weighted":
                # Nothing dropped: every pseudo-label trains, its loss weighted by the
                # collaborators' confidence in it.
                selection = SelectionConfig(policy="percentile", theta=100.0,
                                            weighting="confidence",
                                            class_floor=rnd.config.selection.class_floor)
            elif ablation in TEACH_THETA:
                # What the student can still learn (selection.teach_mask), every teachable
                # item or the half with the largest reducible loss; the round's class floor.
                selection = SelectionConfig(policy="teach", theta=TEACH_THETA[ablation],
                                            class_floor=rnd.config.selection.class_floor)
            else:
                collaborators = ([CollaboratorConfig(c.model, 0, c.temperature, c.seed)
                                  for c in rnd.config.collaborators]
                                 if ablation == "no-demos" else
                                 [CollaboratorConfig("warmup", args.k, 1.0, 1)])
                config = round_config(args, self.seed, "sampler", collaborators)
                # Replaces the open round's config; new collaborators drop the round's
                # pseudo-labels (and the responses of collaborators beyond the new count).
                rnd = open_round(fws, config)
                if fws.scalar("SELECT COUNT(*) FROM pseudo_labels WHERE round_id=?", (rnd.id,)):
                    raise RuntimeError("open_round kept the old pseudo-labels after the "
                                       "collaborators changed; the ablation would reuse them.")
                self.label(fws, rnd, fmt, name)
            self.select_train_evaluate(fws, rnd, fmt, name, hidden, selection=selection)
            fws.close()

    def run(self) -> dict:
        sizes = {"labeled": self.labeled, "unlabeled": self.args.unlabeled, "test": self.args.test}
        files, hidden = write_split_files(self.task, sizes, self.seed, self.root / "files")
        for i, fmt in enumerate(self.args.formats):
            log(f"seed {self.seed}, {self.labeled} labeled: format {fmt}")
            self.run_format(fmt, i == 0, files, hidden)
        return {"seed": self.seed, "variants": self.variants, "pseudo_labels": self.pseudo,
                "training": self.training, "stages": self.stages.records}


ABLATION_NAMES = {"no-selection": "SemiEvol r1, no selection (all pseudo-labels)",
                  "matched-sft": "SFT (class-balanced), as many steps as SemiEvol r1",
                  "continue": "SemiEvol r1, continuing the warm-up adapter",
                  "per-class": "SemiEvol r1, per-class selection",
                  "no-demos": "SemiEvol r1, no demonstrations",
                  "single": "SemiEvol r1, single collaborator",
                  "teach": "SemiEvol r1, teach selection (every teachable item)",
                  "teach-50": "SemiEvol r1, teach selection (theta 50)",
                  "weighted": "SemiEvol r1, every pseudo-label weighted by confidence"}
TEACH_THETA = {"teach": 100.0, "teach-50": 50.0}


CONTINUED_R2 = "SemiEvol r2, continuing round 1's model"
NO_BALANCE_SFT = "SFT (no class balance)"
NOT_FORKED_AFTER_LABELING = {"matched-sft"}  # forks the freshly built workspace instead


def _train_summary(summary: dict) -> dict:
    keep = ("steps", "final_loss", "mean_loss_last10", "seconds", "tokens_per_second",
            "dtype", "examples", "skipped")
    return {k: summary[k] for k in keep if k in summary}
