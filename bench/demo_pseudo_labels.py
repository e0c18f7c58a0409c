"""Pseudo-label precision of a demo workspace's rounds against the demo's hidden answers.

    .venv/bin/python bench/demo_pseudo_labels.py [workspaces/demo]

`data/demo/unlabeled_answers.csv` is never imported by the product; this script reads it
only to score what the rounds produced (all vs selected, agreed vs reflected, coverage) and
prints the stored test metrics beside them. Writes bench/results/demo_pseudo_labels.json.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from semievol.curation.calibration import calibration_report  # noqa: E402
from semievol.method.evaluate import evaluations_table  # noqa: E402
from semievol.workspace.store import Workspace  # noqa: E402


def precision(rows: list, truth: dict) -> dict:
    correct = sum(truth[r["external_id"]] == r["label"] for r in rows)
    return {"n": len(rows), "precision": round(correct / len(rows), 4) if rows else None}


def main(path: str = "workspaces/demo") -> dict:
    ws = Workspace(ROOT / path if not Path(path).is_absolute() else path)
    truth = {r["id"]: r["label"] for r in
             csv.DictReader(open(ROOT / "data/demo/unlabeled_answers.csv", encoding="utf-8"))}
    report = {"workspace": str(ws.path), "rounds": [], "test": evaluations_table(ws)}
    for rnd in ws.query("SELECT id, number FROM rounds ORDER BY number"):
        rows = [dict(r) for r in ws.query(
            "SELECT i.external_id, p.label, p.path, p.selected FROM pseudo_labels p "
            "JOIN items i ON i.id = p.item_id WHERE p.round_id=? AND i.split='unlabeled'",
            (rnd["id"],))]
        if not rows:
            continue
        calibration = calibration_report(ws, rnd["id"])
        calibration.pop("curve", None)
        report["rounds"].append({
            "round": rnd["number"], "all": precision(rows, truth),
            "selected": precision([r for r in rows if r["selected"]], truth),
            "agreed": precision([r for r in rows if r["path"] == "agreed"], truth),
            "reflected": precision([r for r in rows if r["path"] == "reflected"], truth),
            "coverage": round(sum(r["selected"] for r in rows) / len(rows), 4),
            "calibration_slice": calibration})
    out = ROOT / "bench/results/demo_pseudo_labels.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    for r in report["rounds"]:
        print(f"round {r['round']}: pseudo-label precision all {r['all']['precision']} "
              f"(n={r['all']['n']}), selected {r['selected']['precision']} "
              f"(n={r['selected']['n']}, coverage {r['coverage']}); agreed "
              f"{r['agreed']['precision']}, reflected {r['reflected']['precision']}")
    for e in report["test"]:
        print(f"test: round {e['round'] or '-'} {e['model']:<11} accuracy {e['accuracy']:.3f} "
              f"macro-F1 {e['macro_f1'] or 0:.3f} (majority {e['majority_baseline']})")
    return report


if __name__ == "__main__":
    main(*sys.argv[1:])
