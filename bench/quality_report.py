"""The quality bench's report: the summary over seeds (mean, std, range), the Markdown
report, its plots, and the JSON + Markdown files written after every seed."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
from common import (command_line, md_table, pct, plot_bars, plot_lines, report_footer,
                    stages_markdown, write_json, write_text)


def _mean_std(values: list[float]) -> dict:
    a = np.array([v for v in values if v is not None], dtype=float)
    if not a.size:
        return {"mean": None, "std": None, "min": None, "max": None, "n": 0}
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if a.size > 1 else 0.0,
            "min": float(a.min()), "max": float(a.max()), "n": int(a.size)}


def _by_variant(runs: list[dict], field: str) -> dict[tuple, list[dict]]:
    """The records of `field` from every seed (in seed order), grouped by (format, variant)
    in the order of the run with the most of them: a merged report whose first seed ran
    fewer variants keeps round 2 beside round 1."""
    groups: dict[tuple, list[dict]] = {}
    for run in sorted(runs, key=lambda r: -len(r[field])):  # stable: ties keep seed order
        for record in run[field]:
            groups.setdefault((record["format"], record["variant"]), [])
    for run in runs:
        for record in run[field]:
            groups[(record["format"], record["variant"])].append(record)
    return groups


def summarise(runs: list[dict]) -> dict:
    table = []
    for key, vs in _by_variant(runs, "variants").items():
        table.append({"format": key[0], "variant": key[1], "seeds": [v["seed"] for v in vs],
                      "accuracy": _mean_std([v["accuracy"] for v in vs]),
                      "macro_f1": _mean_std([v["macro_f1"] for v in vs]),
                      "majority_baseline": vs[0]["majority_baseline"],
                      "majority_label": vs[0]["majority_label"],
                      "predicted_distribution": [v["predicted_distribution"] for v in vs],
                      "warned": sorted({w for v in vs for w in v.get("warned", [])})})
    ptable = []
    for key, group in _by_variant(runs, "pseudo_labels").items():
        ps = [p for p in group if p["n"]]
        if not ps:
            continue
        ptable.append({"format": key[0], "variant": key[1], "round": ps[0]["round"],
                       "seeds": [p["seed"] for p in ps],
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
                       "precision_curated": _mean_std(
                           [(p.get("curated") or {}).get("precision") for p in ps]),
                       "curated": _mean_std([(p.get("curated") or {}).get("n") for p in ps]),
                       "knowledge": _knowledge(ps),
                       "majority_share": ps[0]["majority_share"]})
    return {"variants": table, "pseudo_labels": ptable, "review": review_summary(runs),
            "estimates": estimate_checks(runs)}


def _knowledge(ps: list[dict]) -> dict | None:
    """Selected pseudo-labels the warm-up already got right / the round corrects / wrong,
    as shares of the selected set, over seeds (see quality_runner.warmup_knowledge)."""
    known = [p["warmup_knowledge"] for p in ps if p.get("warmup_knowledge")
             and p["warmup_knowledge"]["selected"]]
    if not known:
        return None
    return {k: _mean_std([w[k] / w["selected"] for w in known])
            for k in ("warmup_right", "corrected", "wrong")}


REVIEW_BASELINES = {"review": "SemiEvol r1", "gold": "SFT (class-balanced)"}
"""What each kind of extra-label variant is compared with, seed by seed."""


def review_summary(runs: list[dict]) -> list[dict]:
    """Each reviewer / extra-gold variant against its baseline of the same seed and format
    (SemiEvol r1 without review; the class-balanced SFT): accuracy and macro-F1 gained,
    in all and per item given."""
    groups: dict[tuple, dict] = {}
    for run in runs:
        by_name = {(v["format"], v["variant"]): v for v in run["variants"]}
        for v in run["variants"]:
            kind = next((k for k in REVIEW_BASELINES if k in v), None)
            base = kind and by_name.get((v["format"], REVIEW_BASELINES[kind]))
            if not base:
                continue
            n = v["review"]["n"] if kind == "review" else v["gold"]
            g = groups.setdefault((v["format"], v["variant"]), {
                "format": v["format"], "variant": v["variant"], "kind": kind, "n": n,
                "order": v["review"]["order"] if kind == "review" else "random",
                "baseline": REVIEW_BASELINES[kind], "seeds": [], "accuracy": [], "gain": [],
                "f1_gain": [], "relabeled": []})
            g["seeds"].append(run["seed"])
            g["accuracy"].append(v["accuracy"])
            g["gain"].append(v["accuracy"] - base["accuracy"])
            g["f1_gain"].append(v["macro_f1"] - base["macro_f1"])
            if kind == "review" and v["review"]["order"] != "random":
                g["relabeled"].append(v["review"]["relabeled"])
    out = []
    for g in groups.values():
        n = max(1, g["n"])
        out.append({**{k: g[k] for k in ("format", "variant", "kind", "n", "order",
                                         "baseline", "seeds")},
                    "accuracy": _mean_std(g["accuracy"]), "gain": _mean_std(g["gain"]),
                    "gain_per_item": _mean_std([x / n for x in g["gain"]]),
                    "f1_gain": _mean_std(g["f1_gain"]),
                    "relabeled": _mean_std(g["relabeled"]) if g["relabeled"] else None})
    return sorted(out, key=lambda r: (r["format"], r["kind"] != "review", r["order"], r["n"]))


def estimate_checks(runs: list[dict]) -> list[dict]:
    """Per reviewed variant and seed: what Review estimated for those decisions before they
    were made (semievol.views.decision_value, in points) against the gain then measured
    over SemiEvol r1 of the same seed, and whether the range held it."""
    out = []
    for run in runs:
        by_name = {(v["format"], v["variant"]): v for v in run["variants"]}
        for v in run["variants"]:
            estimate = (v.get("review") or {}).get("estimate")
            base = by_name.get((v["format"], REVIEW_BASELINES["review"]))
            if not estimate or estimate.get("estimate") is None or not base:
                continue
            gain = 100 * (v["accuracy"] - base["accuracy"])
            out.append({"seed": run["seed"], "format": v["format"], "variant": v["variant"],
                        "n": v["review"]["n"], **estimate, "measured": gain,
                        "inside": estimate["low"] <= gain <= estimate["high"]})
    return sorted(out, key=lambda r: (r["format"], r["variant"], r["seed"]))


def _ms(stat: dict, percent: bool = True) -> str:
    if stat["mean"] is None:
        return "–"
    scale, unit = (100, " %") if percent else (1, "")
    if not percent and stat["n"] == 1:
        return f"{stat['mean']:g}"
    text = f"{scale * stat['mean']:.1f}"
    if stat["n"] > 1:
        low, high = scale * stat["min"], scale * stat["max"]
        text += f" ± {scale * stat['std']:.1f} ({low:.1f}–{high:.1f})"
    return text + unit


def _points(stat: dict, digits: int = 1) -> str:
    if stat["mean"] is None:
        return "–"
    text = f"{100 * stat['mean']:+.{digits}f}"
    if stat["n"] > 1:
        text += (f" ± {100 * stat['std']:.{digits}f} ({100 * stat['min']:+.{digits}f} to "
                 f"{100 * stat['max']:+.{digits}f})")
    return text


def _knowledge_table(ptable: list[dict]) -> str:
    rows = [[p["format"], p["variant"], _ms(p["curated"], False),
             _ms(p["precision_curated"]),
             *(_ms(p["knowledge"][k]) if p["knowledge"] else "–"
               for k in ("warmup_right", "corrected", "wrong"))] for p in ptable]
    return md_table(["format", "pseudo-labels", "curated items", "precision curated",
                     "selected: warm-up already right", "selected: corrected",
                     "selected: wrong"], rows)


def _num(value, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _dist(d: dict) -> str:
    return " / ".join(f"{k} {v}" for k, v in d.items())


def _seeds(row: dict) -> list[str]:
    """The seeds column of a multi-seed table: a merged report may hold a variant for only
    some of its seeds (bench/quality_merge.py), and its mean is over those."""
    return [", ".join(str(x) for x in row.get("seeds", []))]


def _sources(result: dict) -> list[str]:
    """A merged report's runs, each with the command that produced it."""
    if not result.get("sources"):
        return []
    lines = ["Merged from these runs (each variant is summarised over the seeds that ran "
             "it: see the `seeds` column):", ""]
    for src in result["sources"]:
        lines.append(f"- seeds {src['seeds']}, {src['wall_seconds'] / 60:.1f} min on "
                     f"{src.get('cpu') or 'unknown CPU'} (`{src['path']}`): `{src['command']}`")
    return lines + [""]


def markdown(result: dict, pngs: dict) -> str:
    s, settings = result["summary"], result["settings"]
    n_seeds = len(result["runs"])
    seeds = _seeds if n_seeds > 1 else (lambda row: [])
    seeds_head = ["seeds"] if n_seeds > 1 else []
    vt = md_table(
        ["format", "model", *seeds_head, "accuracy", "macro-F1", "majority-class acc.",
         "predicted classes" + (" (first of its seeds)" if n_seeds > 1 else ""),
         "warned before training"],
        [[v["format"], v["variant"], *seeds(v), _ms(v["accuracy"]), _ms(v["macro_f1"]),
          pct(v["majority_baseline"]) + f" ({v['majority_label']})",
          _dist(v["predicted_distribution"][0]), ", ".join(v.get("warned") or [])]
         for v in s["variants"]])
    pt = md_table(
        ["format", "pseudo-labels", "round", *seeds_head, "items", "precision all", "selected",
         "precision selected", "coverage", "agreed share", "precision agreed",
         "precision reflected", "calibration-slice estimate (selected)", "majority share"],
        [[p["format"], p["variant"], p["round"], *seeds(p), _ms(p["n"], False),
          _ms(p["precision_all"]),
          _ms(p["selected"], False), _ms(p["precision_selected"]), _ms(p["coverage"]),
          _ms(p["agreed_share"]), _ms(p["precision_agreed"]), _ms(p["precision_reflected"]),
          _ms(p["calibration_precision_selected"]), pct(p["majority_share"])]
         for p in s["pseudo_labels"]])
    rt = md_table(
        ["format", "variant", *seeds_head, "items", "wrong pseudo-labels corrected", "accuracy",
         "gain over baseline (points)", "gain per item (points)", "macro-F1 gain (points)",
         "baseline"],
        [[r["format"], r["variant"], *seeds(r), r["n"],
          _ms(r["relabeled"], False) if r["relabeled"] else "all (gold)",
          _ms(r["accuracy"]), _points(r["gain"]), _points(r["gain_per_item"], 2),
          _points(r["f1_gain"]), r["baseline"]] for r in s.get("review", [])])
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
        *_sources(result),
        f"Settings: labeled {settings['labeled']} (seed-drawn), unlabeled "
        f"{settings['unlabeled']} (answers hidden from the pipeline), test {settings['test']} "
        f"(fixed draw), seeds {settings['seeds']}, model `{settings['model']}` "
        f"({result['machine']['model_dtype']}), k={settings['k']}, calibration fraction "
        f"{settings['calibration']}, epochs {settings['epochs']}, lr {settings.get('lr', 1e-4)}"
        + (f", max steps {settings['max_steps']}" if settings["max_steps"] else "")
        + (f", LoRA dropout {settings['lora_dropout']}"
           if settings.get("lora_dropout") is not None else "")
        + (f", a simulated teacher collaborator right on {settings['teacher_accuracy']:.0%} of "
           "the items (bench/teacher_server.py)"
           + (", which also settles the collaborators' disagreements (reflection)"
              if settings.get("teacher_reflects") else "")
           if settings.get("teacher_accuracy") else "")
        + f", batch {settings['batch_size']}, rounds {settings['rounds']} "
        f"(secondary formats: {settings['secondary_rounds']}), instruction "
        f"“{settings['instruction']}”.",
        "",
        "## Test accuracy" + (f" (mean ± std (min–max) over {n_seeds} seeds)" if n_seeds > 1
                              else ""),
        "",
        "The majority-class accuracy is what always answering the most frequent test class "
        "scores; a model at or near it with one dominant predicted class has learned nothing. "
        "`warned before training`: the product's evidence guards (semievol.rounds.guards) that "
        "would "
        "have stopped this training in the CLI and the app until confirmed, in any seed "
        "(the bench confirms, to measure the outcome).",
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
        "Curated = what the round trained on from the unlabeled pool (selected and accepted "
        "pseudo-labels, human labels) against the hidden answers. Of the selected "
        "pseudo-labels: the share the warm-up model already answered right on its own "
        "(the plain warm-up collaborator's top option), the share the round corrects "
        "(right where the warm-up was wrong), and the share that is wrong:",
        "",
        _knowledge_table(s["pseudo_labels"]),
        "",
        "## What a reviewer's minutes buy",
        "",
        "A simulated reviewer who knows the hidden answers decides the first N items of a "
        "Review queue before round 1 trains, as in the app (accept a right pseudo-label, "
        "relabel a wrong one, through semievol.curation.decisions); `random gold labels` gives N "
        "random pool items their true answer instead (plain labeling, no queue). Plain SFT "
        "gets the same N random items as extra labeled data. Gains are paired by seed "
        "against the variant's baseline.",
        "",
        rt if s.get("review") else "(no reviewer variants in this run)",
        *(["", "What Review estimated for those decisions before they were made "
            "(semievol.views.decision_value: 80 % range, points over SemiEvol r1) against "
            "the gain then measured:", "",
            md_table(["seed", "format", "variant", "items", "estimate", "range",
                      "stopping hint", "measured gain", "inside the range"],
                     [[e["seed"], e["format"], e["variant"], e["n"], f"{e['estimate']:+.1f}",
                       f"{e['low']:+.1f} to {e['high']:+.1f}", "yes" if e["stop"] else "no",
                       f"{e['measured']:+.1f}", "yes" if e["inside"] else "no"]
                      for e in s["estimates"]])] if s.get("estimates") else []),
        "",
        *([f"![what extra labels buy]({pngs['review']})", ""] if pngs.get("review") else []),
        "## Training runs",
        "",
        tt,
        "",
        report_footer(stages, result["machine"]),
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
    pngs = {"curve": curve.name, "accuracy": bars.name}
    review = _review_curves(result["summary"].get("review", []))
    if review:
        seeds = f"mean ± std over {len(result['runs'])} seeds" if len(result["runs"]) > 1 else \
            "one seed"
        pngs["review"] = plot_lines(
            out / f"{stem}_review.png", review,
            title=f"What extra labels buy, {result['task']}, {result['labeled']} labeled "
                  f"({seeds})",
            xlabel="extra labeled items (reviewed from a queue, or random gold labels)",
            ylabel="accuracy over its baseline (points)",
            hline=(0.0, "no gain")).name
    return pngs


def _review_curves(review: list[dict]) -> list[dict]:
    """One line per kind of extra label (a review queue, random gold labels to SemiEvol,
    random gold labels to SFT): points gained over its baseline against how many items,
    from 0 (the baseline itself)."""
    curves: dict[tuple, dict] = {}
    for r in review:
        extra = ("random gold labels" if r["order"] == "random" else
                 f"reviewed, {r['order'].replace('_', ' ')}")
        label = f"{r['format']} · {r['baseline']} + {extra}"
        c = curves.setdefault((r["format"], r["kind"], r["order"]),
                              {"label": label, "x": [0], "y": [0.0], "err": [0.0]})
        c["x"].append(r["n"])
        c["y"].append(100 * r["gain"]["mean"])
        c["err"].append(100 * (r["gain"]["std"] or 0.0))
    return [c for c in curves.values() if len(c["x"]) > 1]


def write_results(args, task: dict, labeled: int, machine: dict, runs: list[dict],
                  started: float, *, complete: bool) -> tuple[list[Path], str]:
    machine["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    result = {"benchmark": "quality", "task": task["name"], "labeled": labeled,
              "command": command_line(), "machine": machine, "complete": complete,
              "settings": {k: (str(v) if isinstance(v, Path) else v)
                           for k, v in vars(args).items() if k != "teacher_url"},
              "wall_seconds": round(time.time() - started, 1),
              "summary": summarise(runs), "runs": runs}
    stem = f"quality_{task['name']}_{labeled}"
    pngs = plots(result, stem, args.out)
    text = markdown(result, pngs)
    return [write_json(args.out / f"{stem}.json", result),
            write_text(args.out / f"{stem}.md", text)], text
