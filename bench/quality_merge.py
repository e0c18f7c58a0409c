"""One quality report from several runs of the same task and labeled size: seeds run in
separate sessions (a pubmedqa seed with every variant takes over an hour on 2 cores), or a
seed run again for the variants it lacks. Each variant is summarised over the seeds that ran
it, and the report says which seeds those are.

    .venv/bin/python bench/quality_merge.py A/quality_pubmedqa_64.json B/quality_pubmedqa_64.json

A seed given in two runs is merged record by record (variants, pseudo-label reports,
trainings, stage timings). The bench is deterministic, so a record both runs hold (the base
model, the warm-up SFT, round 1 under a later run's round 2) must agree exactly: that is
checked, and the merge refuses when it does not. It also refuses runs whose results are not
comparable (another model, learning rate, budget of steps, test draw, ...), all before it
writes anything. The merged JSON lists its sources; the README summary shows the merged
report instead of its sources.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from common import REPO, RESULTS, command_line, log, repo_path, write_json, write_text
from quality_report import markdown, plots, summarise
from readme_summary import update_readmes

# Settings that change what a seed measures: runs that differ in any of them are not the
# same experiment. Missing keys (older runs) read as None, the bench's default.
SAME = ("unlabeled", "test", "model", "dtype", "k", "epochs", "lr", "max_steps",
        "lora_dropout", "batch_size", "calibration", "instruction", "formats", "reduced",
        "teacher_accuracy", "teacher_reflects")
# Settings that only choose which variants ran: the merged run has the union.
UNION = ("balance", "ablations", "review_sizes", "review_orders", "gold_sizes")
# How a record is named within one seed's run, per list in a run; a seed given twice is
# merged by these names.
RECORD_KEYS = {"variants": ("format", "variant"),
               "pseudo_labels": ("format", "variant", "round"),
               "training": ("format", "variant"),
               "stages": ("format", "label")}
# The result fields of a record that two runs of one seed must agree on (timings may not).
MUST_AGREE = {"variants": ("n", "accuracy", "macro_f1", "predicted_distribution"),
              "pseudo_labels": ("n", "all", "selected"),
              "training": ("steps", "examples")}


class MergeRefused(Exception):
    """Inputs that cannot make one report; the message says which and how to fix it."""


def load(paths: list[Path]) -> list[tuple[Path, dict]]:
    loaded = []
    for path in paths:
        if not path.is_file():
            raise MergeRefused(f"{path}: no such file; pass the quality_*.json of each run.")
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise MergeRefused(f"{path}: not a readable JSON file ({e}).") from None
        if data.get("benchmark") != "quality" or not data.get("runs"):
            raise MergeRefused(f"{path}: not a quality bench result with at least one seed.")
        loaded.append((path, data))
    return loaded


def check(loaded: list[tuple[Path, dict]]) -> None:
    """Every reason the runs' settings cannot make one report, raised before anything is
    written (merge_runs then checks that a seed given twice reproduces itself)."""
    if len(loaded) < 2:
        raise MergeRefused("Give at least two results to merge.")
    first_path, first = loaded[0]
    for path, data in loaded:
        for key in ("task", "labeled"):
            if data[key] != first[key]:
                raise MergeRefused(f"{path} is {key} {data[key]!r} but {first_path} is "
                                   f"{first[key]!r}: merge runs of one task and size only.")
        reason = differs(data, first["settings"], first["machine"].get("model_dtype"))
        if reason:
            raise MergeRefused(f"{path} {reason} {first_path}: their seeds measure "
                               "different things.")


def differs(data: dict, settings: dict, model_dtype: str | None) -> str | None:
    """Why a run does not measure what a run with these settings and model dtype measures
    (the first setting that differs), or None."""
    for key in SAME:
        mine, theirs = data["settings"].get(key), settings.get(key)
        if mine != theirs:
            return f"ran with {key}={mine!r}, not {theirs!r} as"
    if data["machine"].get("model_dtype") != model_dtype:
        return f"ran the model in {data['machine'].get('model_dtype')}, not {model_dtype} as"
    return None


def held_variants(paths: list[Path], task: str, settings: dict,
                  model_dtype: str) -> dict[tuple[int, int], set[tuple]]:
    """The variants earlier runs already measured, by (labeled size, seed), for a new run
    with these settings to skip: the bench is deterministic, so running them again would
    only reproduce them, and merge() puts the runs together afterwards. Refuses, before
    anything runs, a run that measured something else."""
    held: dict[tuple[int, int], set[tuple]] = {}
    for path, data in load(paths):
        reason = (f"is task {data['task']!r}, not {task!r} as" if data["task"] != task else
                  f"is {data['labeled']} labeled, not {settings['labeled']} as"
                  if data["labeled"] not in settings["labeled"] else
                  differs(data, settings, model_dtype))
        if reason:
            raise MergeRefused(f"{path} {reason} this run: its variants are not this run's "
                               "to skip. Drop it from --skip-held, or run with its settings.")
        for run in data["runs"]:
            held.setdefault((data["labeled"], run["seed"]), set()).update(
                _name("variants", v) for v in run["variants"])
    return held


def _name(field: str, record: dict) -> tuple:
    return tuple(record.get(key) for key in RECORD_KEYS[field])


def merge_runs(loaded: list[tuple[Path, dict]]) -> list[dict]:
    """Every seed once, in seed order. A seed given in several runs keeps every record of
    the first and adds what each later run holds that the earlier ones do not; a record two
    runs hold must agree on its results, or those runs are not the same experiment."""
    seeds: dict[int, dict] = {}
    # (seed, field) -> {record name: (the file it came from, the record)}, earlier runs only
    seen: dict[tuple[int, str], dict[tuple, tuple[Path, dict]]] = {}
    for path, data in loaded:
        for run in data["runs"]:
            unknown = set(run) - set(RECORD_KEYS) - {"seed"}
            if unknown:
                raise MergeRefused(f"{path}: seed {run['seed']} holds {sorted(unknown)}, "
                                   "which this tool does not know how to merge: pass only one "
                                   "run for that seed.")
            merged = seeds.setdefault(run["seed"], {"seed": run["seed"],
                                                    **{field: [] for field in RECORD_KEYS}})
            for field in RECORD_KEYS:
                earlier = seen.setdefault((run["seed"], field), {})
                added = {}  # not compared within one run: a run may time a stage twice
                for record in run.get(field, []):
                    name = _name(field, record)
                    if name not in earlier:
                        merged[field].append(record)
                        added.setdefault(name, (path, record))
                        continue
                    first_path, first = earlier[name]
                    for key in MUST_AGREE.get(field, ()):
                        if first.get(key) != record.get(key):
                            raise MergeRefused(
                                f"Seed {run['seed']}, {' · '.join(map(str, name))}: {key} is "
                                f"{first.get(key)!r} in {first_path} but {record.get(key)!r} "
                                f"in {path}. These runs of one seed do not reproduce each "
                                "other; pass only one of them.")
                earlier.update(added)
    return [seeds[seed] for seed in sorted(seeds)]


def merge(loaded: list[tuple[Path, dict]], out: Path) -> dict:
    check(loaded)
    first = loaded[0][1]
    runs = merge_runs(loaded)
    settings = dict(first["settings"])
    settings["seeds"] = [run["seed"] for run in runs]
    settings["rounds"] = max(d["settings"]["rounds"] for _, d in loaded)
    for key in UNION:
        settings[key] = list(dict.fromkeys(x for _, d in loaded for x in d["settings"][key]))
    settings["out"] = str(out)
    sources = [{"path": repo_path(path), "command": data["command"],
                "seeds": [run["seed"] for run in data["runs"]],
                "complete": data.get("complete", True), "wall_seconds": data["wall_seconds"],
                "cpu": data["machine"].get("cpu"),
                "versions": data["machine"].get("versions")} for path, data in loaded]
    return {"benchmark": "quality", "task": first["task"], "labeled": first["labeled"],
            "command": command_line(), "sources": sources, "machine": first["machine"],
            "complete": all(s["complete"] for s in sources), "settings": settings,
            "wall_seconds": round(sum(s["wall_seconds"] for s in sources), 1),
            "summary": summarise(runs), "runs": runs}


def write(result: dict, out: Path) -> list[Path]:
    stem = f"quality_{result['task']}_{result['labeled']}"
    out.mkdir(parents=True, exist_ok=True)
    for source in result["sources"]:  # the merged files must not overwrite a source
        if (REPO / source["path"]).resolve() == (out / f"{stem}.json").resolve():
            raise MergeRefused(f"{source['path']} would be overwritten by the merged report: "
                               "move it to its own folder first, or choose another --out.")
    pngs = plots(result, stem, out)
    return [write_json(out / f"{stem}.json", result),
            write_text(out / f"{stem}.md", markdown(result, pngs))]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", nargs="+", type=Path, help="quality_*.json files to merge")
    p.add_argument("--out", type=Path, default=RESULTS,
                   help="folder for the merged report (default bench/results)")
    args = p.parse_args(argv)
    started = time.time()
    try:
        result = merge(load(args.results), args.out)
        written = write(result, args.out)
    except MergeRefused as e:
        print(f"quality_merge: {e}", file=sys.stderr)
        return 2
    log(f"merged seeds {result['settings']['seeds']} from {len(result['sources'])} runs in "
        f"{time.time() - started:.1f} s: " + ", ".join(repo_path(p) for p in written))
    if args.out.resolve() == RESULTS.resolve():
        for readme in update_readmes():
            log(f"updated the results summary in {readme.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
