"""Adaptation quality on a real task: base, base + demonstrations, warm-up SFT, SemiEvol
rounds and ablations, measured side by side on the same test split.

    .venv/bin/python bench/quality.py                 # fpb, 64 and 452 labeled (~2 h + ~3-4 h)
    .venv/bin/python bench/quality.py --reduced       # every configuration, tiny sizes (~7 min)

Per seed and answer format one workspace is built through the library (import, calibration
hold-out, retrieval index); the unlabeled split is imported without its answers, which stay
in this process's memory only, to score the pseudo-labels afterwards. Work is shared where
the workspace allows: base evaluations are done once per format and copied into the
class-balance-off fork; the ablations are forks of the round-1 workspace taken after
labeling, so their identical collaborator requests are answered from the response cache
(the no-selection ablation labels nothing at all).

Writes bench/results/quality_<task>_<labeled>.{json,md} and PNGs (reduced mode:
bench/results/reduced/).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (REPO, RESULTS, command_line, load_split, log, machine_info,
                    machine_markdown, md_table, model_dtype_name, pct, plot_bars,
                    plot_lines, progress_printer, Stages, stages_markdown, true_option,
                    update_readme, write_json, write_text)  # noqa: E402

DEFAULT_TASK = Path(__file__).resolve().parents[1] / "../shared/datasets/fpb"
FORMATS = ("words", "letter")
REDUCED = {"labeled": [32], "unlabeled": 16, "test": 30, "max_steps": 2, "seeds": [0]}
CURVE_POINTS = 120  # precision-coverage points kept per curve in the JSON


# -- data --------------------------------------------------------------------------------
def load_task(task_dir: Path) -> dict:
    """The three splits, the option list(s) and whether the task has one fixed label set."""
    frames = {s: load_split(task_dir, s) for s in ("labeled", "unlabeled", "test")}
    if "options" not in frames["labeled"].columns:
        raise SystemExit(f"{task_dir}: the bench expects an `options` column (JSON list).")
    distinct = {o for f in frames.values() for o in f["options"]}
    fixed = [json.loads(o) for o in distinct][0] if len(distinct) == 1 else None
    return {"frames": frames, "labels": fixed, "name": task_dir.resolve().name}


def subsample(frame, n: int | None, seed: int):
    if not n or n >= len(frame):
        return frame
    return frame.sample(n=n, random_state=seed).sort_index()


def write_split_files(task: dict, sizes: dict, seed: int, folder: Path) -> tuple[dict, dict]:
    """Subsampled CSVs for import (unlabeled: no answer column) and the hidden answers
    {external id: option text} of the unlabeled items."""
    folder.mkdir(parents=True, exist_ok=True)
    files, hidden = {}, {}
    for split in ("labeled", "unlabeled", "test"):
        # The test subsample is drawn with seed 0 whatever --seeds says: seeds then differ in
        # their training data only, and their test numbers are comparable.
        frame = subsample(task["frames"][split], sizes[split], 0 if split == "test" else seed)
        rows = []
        for index, row in frame.iterrows():
            options = json.loads(row["options"])
            out = {"id": f"{split}:{index}", "question": row["question"]}
            if task["labels"] is None:
                out["options"] = row["options"]
            if split == "unlabeled":
                hidden[out["id"]] = true_option(row, options)
            else:
                out["answer"] = row["answer"]
            rows.append(out)
        import pandas as pd
        path = folder / f"{split}.csv"
        pd.DataFrame(rows).to_csv(path, index=False)
        files[split] = path
    return files, hidden


def build_workspace(path: Path, files: dict, task_config, embedder, calibration, k: int):
    from semievol.calibration import hold_out
    from semievol.data import ColumnMapping, import_file
    from semievol.retrieval import index_workspace
    from semievol.store import Workspace

    ws = Workspace(path, create=True)
    for split, file in files.items():
        mapping = ColumnMapping(question="question", id="id",
                                answer=None if split == "unlabeled" else "answer",
                                options=None if task_config.labels else "options")
        import_file(ws, file, split, mapping=mapping, task=task_config)
    held = hold_out(ws, calibration)  # before indexing: calibration items leave the pool
    index_workspace(ws, embedder, k=k, progress=progress_printer("index"))
    return ws, held


def fork(ws, dest: Path):
    """A copy of a workspace (database, Chroma, adapters) to branch an experiment from."""
    from semievol.store import Workspace

    ws.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    shutil.copytree(ws.path, dest)
    return Workspace(dest)


# -- configs -----------------------------------------------------------------------------
def round_config(args, seed: int, balance: str, collaborators=None):
    from semievol.config import (CalibrationConfig, ModelConfig, RetrievalConfig, RoundConfig,
                                 TrainConfig, default_collaborators)

    return RoundConfig(
        model=ModelConfig(name_or_path=args.model, dtype=args.dtype),
        train=TrainConfig(class_balance=balance, seed=seed, epochs=args.epochs,
                          learning_rate=args.lr, max_steps=args.max_steps,
                          batch_size=args.batch_size),
        retrieval=RetrievalConfig(k=args.k),
        calibration=CalibrationConfig(fraction=args.calibration, seed=seed),
        collaborators=collaborators or default_collaborators())


# -- measurements ------------------------------------------------------------------------
def metrics_of(report: dict) -> dict:
    keep = ("accuracy", "macro_f1", "majority_baseline", "majority_label",
            "predicted_distribution", "per_class", "confusion", "n", "demonstrations")
    return {k: report.get(k) for k in keep}


def pseudo_label_stats(ws, round_id: int, hidden: dict, score: str = "nll") -> dict:
    """Precision of the round's pseudo-labels on unlabeled items against the hidden answers:
    all vs selected, by path, and the precision-coverage curve over the entropy."""
    from semievol.calibration import calibration_report
    from semievol.scoring import precision_coverage, wilson_interval

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


class Runner:
    """One seed: every format and configuration, with its stage timings."""

    def __init__(self, args, task: dict, labeled: int, seed: int, root: Path, embedder, base):
        self.args, self.task, self.labeled, self.seed = args, task, labeled, seed
        self.root, self.embedder, self.base = root, embedder, base
        self.stages = Stages()
        self.variants: list[dict] = []
        self.pseudo: list[dict] = []
        self.training: list[dict] = []

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
        self.pseudo.append({"seed": self.seed, "format": fmt, "variant": name,
                            "round": rnd.number, **stats})
        if stats["n"]:
            log(f"  => {fmt} {name}: pseudo-label precision all {pct(stats['all']['precision'])} "
                f"(n={stats['n']}), selected {pct(stats['selected']['precision'])} "
                f"(n={stats['selected']['n']}, coverage {pct(stats['coverage'])})")

    def warmup_backend(self, rnd):
        from semievol.backend import LazyBackend
        return LazyBackend(rnd.config.model, rnd.warmup_adapter)

    # -- steps ---------------------------------------------------------------------------
    def warmup(self, ws, rnd, fmt: str, name: str) -> None:
        from semievol import rounds
        from semievol.evaluate import evaluate

        with self.stage(fmt, f"{name}: train") as rec:
            summary = rounds.step_warmup(ws, rnd, embedder=self.embedder,
                                         progress=progress_printer("warm-up", 30))
            rec.update(train=_train_summary(summary))
        self.training.append({"seed": self.seed, "format": fmt, "variant": name,
                              **_train_summary(summary)})
        rnd = rounds.get_round(ws, rnd.number)
        with self.stage(fmt, f"{name}: evaluate"):
            report = evaluate(ws, self.warmup_backend(rnd), model="warmup", round_id=rnd.id,
                              progress=progress_printer("evaluate"))
        self.add_variant(fmt, name, report, round=rnd.number)
        return rnd

    def label(self, ws, rnd, fmt: str, name: str) -> dict:
        from semievol import rounds

        with self.stage(fmt, f"{name}: label") as rec:
            result = rounds.step_label(ws, rnd, backends={"base": self.base,
                                                          "warmup": self.warmup_backend(rnd)},
                                       progress=progress_printer("label"))
            rec.update(labeling=result)
        log(f"  label: {result}")
        return result

    def select_train_evaluate(self, ws, rnd, fmt: str, name: str, hidden: dict,
                              selection=None) -> None:
        from semievol import rounds
        from semievol.backend import LazyBackend

        with self.stage(fmt, f"{name}: select") as rec:
            summary = rounds.step_select(ws, rnd, selection=selection, embedder=self.embedder)
            rec.update(select={k: summary.get(k) for k in ("pool", "selected", "by_class",
                                                           "flagged_leakage", "threshold")})
        self.add_pseudo(fmt, name, ws, rounds.get_round(ws, rnd.number), hidden)
        rnd = rounds.get_round(ws, rnd.number)
        with self.stage(fmt, f"{name}: train") as rec:
            summary = rounds.step_train(ws, rnd, progress=progress_printer("train", 30))
            rec.update(train=_train_summary(summary))
        self.training.append({"seed": self.seed, "format": fmt, "variant": name,
                              **_train_summary(summary)})
        rnd = rounds.get_round(ws, rnd.number)
        with self.stage(fmt, f"{name}: evaluate"):
            rounds.step_evaluate(ws, rnd, backends={
                "base": self.base, "warmup": self.warmup_backend(rnd),
                "final": LazyBackend(rnd.config.model, rnd.final_adapter)},
                progress=progress_printer("evaluate"))
        from semievol.evaluate import stored_evaluation
        self.add_variant(fmt, name, stored_evaluation(ws, rnd.id, "round"), round=rnd.number)

    # -- one format ----------------------------------------------------------------------
    def run_format(self, fmt: str, primary: bool, files: dict, hidden: dict) -> None:
        from semievol import rounds
        from semievol.config import (CalibrationConfig, CollaboratorConfig, SelectionConfig,
                                     TaskConfig)
        from semievol.evaluate import evaluate

        args = self.args
        task_config = TaskConfig(kind="choice", labels=self.task["labels"], answer_format=fmt,
                                 instruction=args.instruction)
        with self.stage(fmt, "import + hold-out + index") as rec:
            ws, held = build_workspace(self.root / fmt, files, task_config, self.embedder,
                                       CalibrationConfig(fraction=args.calibration, seed=self.seed),
                                       args.k)
            rec.update(splits=ws.split_counts())
        log(f"  workspace {ws.path}: {ws.split_counts()}")
        for name, demos in (("base", 0), ("base+demos", args.k)):
            with self.stage(fmt, f"{name}: evaluate"):
                report = evaluate(ws, self.base, model=name, round_id=None,
                                  demonstrations=demos, progress=progress_printer("evaluate"))
            self.add_variant(fmt, name, report)

        if "none" in args.balance:
            nb = fork(ws, self.root / f"{fmt}-no-balance")
            rnd = rounds.open_round(nb, round_config(args, self.seed, "none"))
            self.warmup(nb, rnd, fmt, "SFT (no class balance)")
            nb.close()
        if "sampler" not in args.balance:
            ws.close()
            return
        rnd = rounds.open_round(ws, round_config(args, self.seed, "sampler"))
        rnd = self.warmup(ws, rnd, fmt, "SFT (class-balanced)")

        n_rounds = args.rounds if primary else args.secondary_rounds
        forks = {}
        for number in range(1, n_rounds + 1):
            if number > 1:
                rnd = rounds.open_round(ws)
                rounds.step_warmup(ws, rnd, embedder=self.embedder)  # the previous final adapter
                rnd = rounds.get_round(ws, rnd.number)
            self.label(ws, rnd, fmt, f"SemiEvol r{number}")
            if number == 1 and primary and args.ablations:
                # Branch after labeling: the ablations reuse the stored responses.
                forks = {a: fork(ws, self.root / f"{fmt}-{a}") for a in args.ablations}
            self.select_train_evaluate(ws, rnd, fmt, f"SemiEvol r{number}", hidden)
            rnd = rounds.get_round(ws, number)
        ws.close()

        for ablation, fws in forks.items():
            name = ABLATION_NAMES[ablation]
            rnd = rounds.get_round(fws, 1)
            selection = None
            if ablation == "no-selection":
                selection = SelectionConfig(policy="percentile", theta=100.0)
            else:
                collaborators = ([CollaboratorConfig(c.model, 0, c.temperature, c.seed)
                                  for c in rnd.config.collaborators]
                                 if ablation == "no-demos" else
                                 [CollaboratorConfig("warmup", args.k, 1.0, 1)])
                config = round_config(args, self.seed, "sampler", collaborators)
                # Replaces the open round's config; new collaborators drop the round's
                # pseudo-labels (and the responses of collaborators beyond the new count).
                rnd = rounds.open_round(fws, config)
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
                  "no-demos": "SemiEvol r1, no demonstrations",
                  "single": "SemiEvol r1, single collaborator"}


def _train_summary(summary: dict) -> dict:
    keep = ("steps", "final_loss", "mean_loss_last10", "seconds", "tokens_per_second",
            "dtype", "examples", "skipped")
    return {k: summary[k] for k in keep if k in summary}


# -- report ------------------------------------------------------------------------------
def _mean_std(values: list[float]) -> dict:
    a = np.array([v for v in values if v is not None], dtype=float)
    if not a.size:
        return {"mean": None, "std": None, "min": None, "max": None, "n": 0}
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if a.size > 1 else 0.0,
            "min": float(a.min()), "max": float(a.max()), "n": int(a.size)}


def summarise(runs: list[dict]) -> dict:
    variants, order = {}, []
    for run in runs:
        for v in run["variants"]:
            key = (v["format"], v["variant"])
            if key not in variants:
                order.append(key)
            variants.setdefault(key, []).append(v)
    table = []
    for key in order:
        vs = variants[key]
        table.append({"format": key[0], "variant": key[1],
                      "accuracy": _mean_std([v["accuracy"] for v in vs]),
                      "macro_f1": _mean_std([v["macro_f1"] for v in vs]),
                      "majority_baseline": vs[0]["majority_baseline"],
                      "majority_label": vs[0]["majority_label"],
                      "predicted_distribution": [v["predicted_distribution"] for v in vs]})
    pseudo, porder = {}, []
    for run in runs:
        for p in run["pseudo_labels"]:
            key = (p["format"], p["variant"])
            if key not in pseudo:
                porder.append(key)
            pseudo.setdefault(key, []).append(p)
    ptable = []
    for key in porder:
        ps = [p for p in pseudo[key] if p["n"]]
        if not ps:
            continue
        ptable.append({"format": key[0], "variant": key[1], "round": ps[0]["round"],
                       "n": _mean_std([p["n"] for p in ps]),
                       "precision_all": _mean_std([p["all"]["precision"] for p in ps]),
                       "selected": _mean_std([p["selected"]["n"] for p in ps]),
                       "precision_selected": _mean_std([p["selected"]["precision"] for p in ps]),
                       "coverage": _mean_std([p["coverage"] for p in ps]),
                       "agreed_share": _mean_std([p["agreed"]["n"] / p["n"] for p in ps]),
                       "precision_agreed": _mean_std([p["agreed"]["precision"] for p in ps]),
                       "precision_reflected": _mean_std([p["reflected"]["precision"] for p in ps]),
                       "calibration_precision_selected": _mean_std(
                           [(p["calibration_slice"].get("selected") or {}).get("precision")
                            for p in ps]),
                       "majority_share": ps[0]["majority_share"]})
    return {"variants": table, "pseudo_labels": ptable}


def _ms(stat: dict, percent: bool = True) -> str:
    if stat["mean"] is None:
        return "–"
    scale, unit = (100, " %") if percent else (1, "")
    if not percent and stat["n"] == 1:
        return f"{stat['mean']:g}"
    text = f"{scale * stat['mean']:.1f}"
    if stat["n"] > 1:
        text += f" ± {scale * stat['std']:.1f} ({scale * stat['min']:.1f}–{scale * stat['max']:.1f})"
    return text + unit


def _num(value, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _dist(d: dict) -> str:
    return " / ".join(f"{k} {v}" for k, v in d.items())


def markdown(result: dict, pngs: dict) -> str:
    s, settings = result["summary"], result["settings"]
    n_seeds = len(result["runs"])
    vt = md_table(
        ["format", "model", "accuracy", "macro-F1", "majority-class acc.",
         "predicted classes" + (" (seed " + str(result["runs"][0]["seed"]) + ")"
                                if n_seeds > 1 else "")],
        [[v["format"], v["variant"], _ms(v["accuracy"]), _ms(v["macro_f1"]),
          pct(v["majority_baseline"]) + f" ({v['majority_label']})",
          _dist(v["predicted_distribution"][0])] for v in s["variants"]])
    pt = md_table(
        ["format", "pseudo-labels", "round", "items", "precision all", "selected",
         "precision selected", "coverage", "agreed share", "precision agreed",
         "precision reflected", "calibration-slice estimate (selected)", "majority share"],
        [[p["format"], p["variant"], p["round"], _ms(p["n"], False), _ms(p["precision_all"]),
          _ms(p["selected"], False), _ms(p["precision_selected"]), _ms(p["coverage"]),
          _ms(p["agreed_share"]), _ms(p["precision_agreed"]), _ms(p["precision_reflected"]),
          _ms(p["calibration_precision_selected"]), pct(p["majority_share"])]
         for p in s["pseudo_labels"]])
    tt = md_table(["seed", "format", "model", "steps", "examples", "final loss", "train s",
                   "tokens/s"],
                  [[t["seed"], t["format"], t["variant"], t.get("steps"),
                    _dist(t["examples"]) if isinstance(t.get("examples"), dict) else
                    t.get("examples"), _num(t.get("final_loss"), 4), _num(t.get("seconds"), 1),
                    _num(t.get("tokens_per_second"), 0)]
                   for run in result["runs"] for t in run["training"]])
    stages = "\n\n".join(f"Seed {run['seed']}:\n\n" + stages_markdown(run["stages"])
                         for run in result["runs"])
    total = sum(r["seconds"] for run in result["runs"] for r in run["stages"])
    lines = [
        f"# Quality: {result['task']}, {result['labeled']} labeled"
        + (" (reduced mode)" if settings["reduced"] else "")
        + ("" if result["complete"] else
           f" (PARTIAL: {n_seeds} of {len(settings['seeds'])} seeds so far)"),
        "",
        f"Produced by `{result['command']}` in {result['wall_seconds'] / 60:.1f} min "
        f"(stages sum {total / 60:.1f} min).",
        "",
        f"Settings: labeled {settings['labeled']} (seed-drawn), unlabeled "
        f"{settings['unlabeled']} (answers hidden from the pipeline), test {settings['test']} "
        f"(fixed draw), seeds {settings['seeds']}, model `{settings['model']}` "
        f"({result['machine']['model_dtype']}), k={settings['k']}, calibration fraction "
        f"{settings['calibration']}, epochs {settings['epochs']}, lr {settings.get('lr', 1e-4)}"
        + (f", max steps {settings['max_steps']}" if settings["max_steps"] else "")
        + f", batch {settings['batch_size']}, rounds {settings['rounds']} "
        f"(secondary formats: {settings['secondary_rounds']}), instruction "
        f"“{settings['instruction']}”.",
        "",
        "## Test accuracy" + (f" (mean ± std (min–max) over {n_seeds} seeds)" if n_seeds > 1
                              else ""),
        "",
        "The majority-class accuracy is what always answering the most frequent test class "
        "scores; a model at or near it with one dominant predicted class has learned nothing.",
        "",
        vt,
        "",
        f"![accuracy]({pngs['accuracy']})",
        "",
        "## Pseudo-labels (unlabeled items, against the hidden answers)",
        "",
        "Precision of every pseudo-label vs of those the selection kept; coverage = selected / "
        "all; the calibration-slice column is the library's own estimate from held-out "
        "labeled items, to compare with the truth; majority share = precision of labeling "
        "everything with the most frequent true class.",
        "",
        pt,
        "",
        f"![precision vs coverage]({pngs['curve']})",
        "",
        "## Training runs",
        "",
        tt,
        "",
        "## Stages (wall time, CPU time, peak RSS of the stage)",
        "",
        stages,
        "",
        "## Machine",
        "",
        machine_markdown(result["machine"]),
        "",
    ]
    return "\n".join(lines)


def plots(result: dict, stem: str, out: Path) -> dict:
    first = result["runs"][0]
    series = []
    for p in first["pseudo_labels"]:
        if not p["n"] or not p["curve_nll"]["coverage"]:
            continue
        series.append({"label": f"{p['format']} · {p['variant']}",
                       "x": p["curve_nll"]["coverage"], "y": p["curve_nll"]["precision"],
                       "marker_x": p["coverage"], "marker_y": p["selected"]["precision"]})
    majority = next((p["majority_share"] for p in first["pseudo_labels"] if p["n"]), None)
    curve = plot_lines(out / f"{stem}_precision_coverage.png", series,
                       title=f"Pseudo-label precision vs coverage (seed {first['seed']}; "
                             "dot = selected set)",
                       xlabel="coverage (share of unlabeled items kept, lowest entropy first)",
                       ylabel="precision against hidden answers",
                       hline=(majority, "majority-class share") if majority else None)
    v = result["summary"]["variants"]
    bars = plot_bars(out / f"{stem}_accuracy.png",
                     [f"{x['format']} · {x['variant']}" for x in v],
                     [x["accuracy"]["mean"] for x in v],
                     errors=[x["accuracy"]["std"] or 0 for x in v] if len(result["runs"]) > 1
                     else None,
                     title=f"Test accuracy, {result['task']}, {result['labeled']} labeled",
                     ylabel="accuracy",
                     hline=(v[0]["majority_baseline"], "majority class") if v else None)
    return {"curve": curve.name, "accuracy": bars.name}


# -- main --------------------------------------------------------------------------------
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", type=Path, default=DEFAULT_TASK,
                   help="folder with labeled.csv / unlabeled.csv / test.csv (default: "
                        "../shared/datasets/fpb)")
    p.add_argument("--labeled", type=int, nargs="+", default=[64, 452],
                   help="labeled subsample sizes, one result file each (default 64 452)")
    p.add_argument("--unlabeled", type=int, default=400,
                   help="unlabeled subsample size; 0 = all (default 400)")
    p.add_argument("--test", type=int, default=0, help="test subsample size; 0 = all (default)")
    p.add_argument("--rounds", type=int, default=2, help="SemiEvol rounds, primary format")
    p.add_argument("--secondary-rounds", type=int, default=1,
                   help="SemiEvol rounds for the other answer format(s) (default 1)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0],
                   help="seeds (labeled/unlabeled draws, training); the spread is reported")
    p.add_argument("--formats", nargs="+", choices=FORMATS, default=list(FORMATS),
                   help="answer formats; the first is the primary one (default words letter)")
    p.add_argument("--balance", nargs="+", choices=("sampler", "none"),
                   default=["sampler", "none"], help="class balance variants of the warm-up SFT")
    p.add_argument("--ablations", nargs="*", choices=tuple(ABLATION_NAMES),
                   default=list(ABLATION_NAMES), help="round-1 ablations (primary format)")
    p.add_argument("--model", default="bundled", help="model id or folder (default bundled)")
    p.add_argument("--dtype", default="auto", choices=("auto", "bfloat16", "float32"))
    p.add_argument("--k", type=int, default=3, help="retrieved demonstrations")
    p.add_argument("--epochs", type=float, default=2.0)
    p.add_argument("--lr", type=float, default=1e-4,
                   help="peak learning rate (paper 1e-4; the 135M bundled model needs ~1e-3)")
    p.add_argument("--max-steps", type=int, default=None, help="cap optimizer steps per training")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--calibration", type=float, default=0.2,
                   help="share of the labeled set held out for calibration")
    p.add_argument("--instruction", default="Classify the sentiment of the financial news "
                   "sentence.", help="task instruction shown in every prompt")
    p.add_argument("--reduced", action="store_true",
                   help=f"tiny sizes for a smoke run under 10 minutes: {REDUCED}")
    p.add_argument("--out", type=Path, default=None,
                   help="results folder (default bench/results; reduced: bench/results/reduced)")
    p.add_argument("--workdir", type=Path, default=None,
                   help="where temporary workspaces go (default: the system temp folder)")
    p.add_argument("--keep", action="store_true", help="keep the temporary workspaces")
    args = p.parse_args(argv)
    if args.reduced:
        defaults = {a.dest: a.default for a in p._actions}
        for key, value in REDUCED.items():
            if getattr(args, key) == defaults[key]:  # explicit flags still win
                setattr(args, key, value)
    args.out = args.out or (RESULTS / "reduced" if args.reduced else RESULTS)
    args.unlabeled = args.unlabeled or None
    args.test = args.test or None
    return args


def write_results(args, task: dict, labeled: int, machine: dict, runs: list[dict],
                  started: float, *, complete: bool) -> tuple[list[Path], str]:
    machine["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    result = {"benchmark": "quality", "task": task["name"], "labeled": labeled,
              "command": command_line(), "machine": machine, "complete": complete,
              "settings": {k: (str(v) if isinstance(v, Path) else v)
                           for k, v in vars(args).items()},
              "wall_seconds": round(time.time() - started, 1),
              "summary": summarise(runs), "runs": runs}
    stem = f"quality_{task['name']}_{labeled}"
    pngs = plots(result, stem, args.out)
    text = markdown(result, pngs)
    return [write_json(args.out / f"{stem}.json", result),
            write_text(args.out / f"{stem}.md", text)], text


def main(argv=None) -> int:
    args = parse_args(argv)
    from semievol.backend import LazyBackend
    from semievol.config import ModelConfig
    from semievol.models import set_offline
    from semievol.retrieval import SentenceTransformerEmbedder

    set_offline()
    task = load_task(args.task)
    if args.ablations is None:
        args.ablations = []
    model_config = ModelConfig(name_or_path=args.model, dtype=args.dtype)
    machine = machine_info(model_dtype_name(model_config))
    log(f"quality bench on {task['name']}: labeled {args.labeled}, unlabeled "
        f"{args.unlabeled or 'all'}, test {args.test or 'all'}, seeds {args.seeds}, formats "
        f"{args.formats}, rounds {args.rounds}/{args.secondary_rounds}, ablations "
        f"{args.ablations}; torch threads {machine['torch_threads']}, {machine['model_dtype']}")
    embedder = SentenceTransformerEmbedder("bundled")
    base = LazyBackend(model_config, None)  # one base model for every workspace
    written = []
    for labeled in args.labeled:
        started = time.time()
        runs = []
        for seed in args.seeds:
            root = Path(tempfile.mkdtemp(prefix=f"semievol-quality-{labeled}-{seed}-",
                                         dir=args.workdir))
            try:
                runs.append(Runner(args, task, labeled, seed, root, embedder, base).run())
            finally:
                if args.keep:
                    log(f"kept workspaces in {root}")
                else:
                    shutil.rmtree(root, ignore_errors=True)
            # Written after every seed: a long run that stops later keeps what it measured.
            paths, text = write_results(args, task, labeled, machine, runs, started,
                                        complete=seed == args.seeds[-1])
        written += paths
        print(text.split("## Training runs")[0])
        if not args.reduced and args.out.resolve() == RESULTS.resolve() and update_readme():
            log("updated the results summary in bench/README.md")
    log("wrote " + ", ".join(str(p.relative_to(REPO)) if p.is_relative_to(REPO) else str(p)
                             for p in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
