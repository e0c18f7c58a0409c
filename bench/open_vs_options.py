"""fpb as an open-answer task beside the usual option scoring: the same items, the same model,
the same round settings. Option scoring reads the model's likelihood of each label word; the
open task lets the collaborators generate their answer and reads the label word out of it
(checker: normalised text), which is the reference implementation's own way of labeling.

    .venv/bin/python bench/open_vs_options.py --labeled 64 --unlabeled 100 --test 150

Each format: warm-up, labeling (4 collaborators), selection, and the test evaluation of base,
base + demonstrations and warm-up; reported: accuracy, pseudo-label precision of all and of
the selected (against the hidden answers), and labeling items/s. Writes
bench/results/open_vs_options.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, log, machine_info, progress_printer  # noqa: E402
from quality_data import build_workspace, load_task, write_split_files  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "fpb"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--labeled", type=int, default=64)
    p.add_argument("--unlabeled", type=int, default=100)
    p.add_argument("--test", type=int, default=150)
    p.add_argument("--epochs", type=float, default=2.0)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    from semievol.config import (CalibrationConfig, ModelConfig, RoundConfig, TaskConfig,
                                 TrainConfig)
    from semievol.method.retrieval import SentenceTransformerEmbedder
    from semievol.model.loading import set_offline
    from semievol.rounds.record import get_round, open_round
    from semievol.rounds.steps import run_steps

    set_offline()
    task = load_task(args.data)
    labels = task["labels"]
    instruction = task["description"]["instruction"]
    formats = {
        "options (label words scored)": TaskConfig(kind="choice", labels=labels,
                                                   answer_format="words",
                                                   instruction=instruction),
        # An open task is not told a label set by the system turn, so the instruction names it.
        "open (label word generated)": TaskConfig(
            kind="open", checker="normalized",
            instruction=f"{instruction} Answer with one word: {', '.join(labels)}.")}
    embedder = SentenceTransformerEmbedder("bundled")
    root = Path(tempfile.mkdtemp(prefix="semievol-open-vs-options-"))
    files, hidden = write_split_files(task, {"labeled": args.labeled,
                                             "unlabeled": args.unlabeled, "test": args.test},
                                      args.seed, root / "files")
    results = {}
    for name, task_config in formats.items():
        log(f"{name}: building the workspace")
        calibration = CalibrationConfig(fraction=0.2, seed=args.seed)
        ws, _ = build_workspace(root / name.split()[0], files, task_config, embedder,
                                calibration, 3)
        config = RoundConfig(model=ModelConfig(dtype="float32"), calibration=calibration,
                             train=TrainConfig(epochs=args.epochs, learning_rate=args.lr,
                                               seed=args.seed))
        with ws.transaction():
            rnd = open_round(ws, config)
        timings = {}
        for step in ("warmup", "label", "select", "evaluate"):
            log(f"{name}: {step}")
            t0 = time.perf_counter()
            out = run_steps(ws, rnd.number, [step], confirm="bench", embedder=embedder,
                            progress=progress_printer(step, 30))[step]
            timings[step] = time.perf_counter() - t0
            if step == "evaluate":
                evaluation = out
            if step == "label":
                labeled_items = out["items"]
        rnd = get_round(ws, rnd.number)
        results[name] = {"accuracy": {k: v["accuracy"] for k, v in evaluation.items()
                                      if isinstance(v, dict) and "accuracy" in v},
                         "pseudo_labels": _precision(ws, rnd.id, task_config, hidden),
                         "label_seconds": timings["label"], "label_items": labeled_items,
                         "label_items_per_second": labeled_items / timings["label"],
                         "seconds": timings}
        ws.close()
    report = {"command": " ".join(["bench/open_vs_options.py", *(argv or sys.argv[1:])]),
              "machine": machine_info("float32"), "args": vars(args) | {"data": str(args.data)},
              "results": results}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "open_vs_options.json").write_text(json.dumps(report, indent=2, default=str))
    (RESULTS / "open_vs_options.md").write_text(markdown(report))
    print(markdown(report))
    return 0


def _precision(ws, round_id: int, task_config, hidden: dict) -> dict:
    """Pseudo-labels of the unlabeled pool against the hidden answers, by the checker."""
    from semievol.task.answers import is_correct

    rows = ws.query("SELECT p.label, p.selected, i.external_id FROM pseudo_labels p "
                    "JOIN items i ON i.id = p.item_id WHERE p.round_id=? AND "
                    "i.split='unlabeled'", (round_id,))
    right = [is_correct(task_config, r["label"], hidden[r["external_id"]]) for r in rows]
    chosen = [ok for ok, r in zip(right, rows) if r["selected"]]
    return {"n": len(rows), "all": sum(right) / len(rows) if rows else None,
            "selected_n": len(chosen), "selected": sum(chosen) / len(chosen) if chosen else None}


def markdown(report: dict) -> str:
    def pct(x):
        return "-" if x is None else f"{x:.1%}"

    lines = ["# fpb as an open-answer task vs option scoring", "", f"`{report['command']}`", "",
             f"CPU {report['machine']['cpu']}; the bundled model, float32; the same items and "
             "round settings for both.", "",
             "| format | base | base + demos | warm-up | pseudo-labels right (all) | "
             "selected right | labeling items/s |", "|---|---|---|---|---|---|---|"]
    for name, r in report["results"].items():
        a, pl = r["accuracy"], r["pseudo_labels"]
        lines.append(f"| {name} | {pct(a.get('base'))} | {pct(a.get('base+demos'))} | "
                     f"{pct(a.get('warmup'))} | {pct(pl['all'])} (n={pl['n']}) | "
                     f"{pct(pl['selected'])} (n={pl['selected_n']}) | "
                     f"{r['label_items_per_second']:.2f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
