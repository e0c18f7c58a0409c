"""The results summary in README.md and bench/README.md, generated from the JSON files in
bench/results/ (never typed by hand). The benches call it after a full run; to regenerate
it alone:

    .venv/bin/python bench/readme_summary.py
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from common import REPO, RESULTS, md_table, pct

# Both READMEs carry the same generated section between the markers.
READMES = (REPO / "bench" / "README.md", REPO / "README.md")
SUMMARY_START, SUMMARY_END = "<!-- results:start -->", "<!-- results:end -->"


def quality_files(results: Path) -> list[Path]:
    """Quality results: the main runs first (by labeled size), then supplementary runs kept
    in their own folders (another seed, an extra ablation); never the reduced smoke runs,
    and never a run that a merged report (bench/quality_merge.py) already holds."""
    def order(path: Path):  # the main runs, then by folder (a CPU's runs together)
        folders = path.relative_to(results).parts[:-1]
        return (bool(folders), folders, len(path.stem), path.stem)

    # results/quality_*.json, results/<run or cpu>/quality_*.json and, since results are
    # kept per CPU, results/<cpu>/<run>/quality_*.json
    found = [p for p in [*results.glob("quality_*.json"), *results.glob("*/quality_*.json"),
                         *results.glob("*/*/quality_*.json")]
             if "reduced" not in p.relative_to(results).parts]
    merged = {(REPO / src["path"]).resolve() for p in found
              for src in json.loads(p.read_text()).get("sources", [])}
    return sorted((p for p in found if p.resolve() not in merged), key=order)


def machine_label(data: dict, path: Path, results: Path) -> str:
    """Which CPU a result is from: its recorded CPU key, else the per-CPU folder it sits in
    (results/<cpu>/<run>/), else the CPU's name and whether it computed in bf16 (results
    from before they were kept per CPU)."""
    machine = data.get("machine", {})
    key = (machine.get("cpu_identity") or {}).get("key")
    parts = path.relative_to(results).parts
    if not key and len(parts) > 2:
        key = parts[0]
    if key:
        return key
    dtype = machine.get("model_dtype") or ("bf16" if machine.get("cpu_bf16") else "float32")
    return f"{machine.get('cpu') or 'an unrecorded CPU'}, {dtype}"


def summary_markdown(results: Path = RESULTS, links: str = "results") -> str:
    """The README's results section, built from the committed JSON files in `results`;
    `links` is the results folder as seen from the README (for the report links)."""
    parts = []
    for path in quality_files(results):
        data = json.loads(path.read_text())
        report = path.relative_to(results).with_suffix(".md").as_posix()
        s = data["summary"]
        rows = []
        labels = list(s["variants"][0]["predicted_distribution"][0]) if s["variants"] else []
        # Every variant, both SFTs and the ablations included: a summary that showed only
        # the flattering rows would not be one. The predicted classes (first seed) show a
        # collapse onto the majority class at a glance.
        for v in s["variants"]:
            acc = v["accuracy"]
            spread = (f" ± {100 * acc['std']:.1f} ({100 * acc['min']:.1f}–"
                      f"{100 * acc['max']:.1f})" if acc["n"] > 1 else "")
            if acc["n"] < len(data["runs"]):  # a merged report: this variant ran in fewer seeds
                spread += f", seeds {', '.join(str(x) for x in v.get('seeds', []))}"
            first = v["predicted_distribution"][0]
            predicted = " / ".join(str(first.get(label, 0)) for label in labels)
            rows.append([v["format"], v["variant"], f"{pct(acc['mean'])}{spread}",
                         pct(v["macro_f1"]["mean"]), pct(v["majority_baseline"]), predicted])
        prow = [[p["format"], p["variant"], pct(p["precision_all"]["mean"]),
                 pct(p["precision_selected"]["mean"]), pct(p["coverage"]["mean"])]
                for p in s["pseudo_labels"]]
        parts += [f"### Quality: {data['task']}, {data['labeled']} labeled, on "
                  f"{machine_label(data, path, results)} ([report]({links}/{report}); seeds "
                  f"{[r['seed'] for r in data['runs']]})", "",
                  f"`{data['command']}`", "",
                  *(f"- from seeds {src['seeds']}: `{src['command']}`"
                    for src in data.get("sources", [])),
                  *([""] if data.get("sources") else []),
                  md_table(["format", "model", "test accuracy", "macro-F1", "majority class",
                            "predicted " + " / ".join(labels)
                            + (" (first seed)" if len(data["runs"]) > 1 else "")], rows), "",
                  md_table(["format", "pseudo-labels", "precision all", "precision selected",
                            "coverage"], prow), ""]
        review = s.get("review") or []
        if review:
            parts += [md_table(
                ["extra labels", "items", "accuracy", "gain over its baseline (points)",
                 "per item (points)", "baseline"],
                [[r["variant"], r["n"], pct(r["accuracy"]["mean"]), _points(r["gain"]),
                  _points(r["gain_per_item"], 2), r["baseline"]] for r in review]), ""]
    for speed in speed_files(results):
        data = json.loads(speed.read_text())
        pl, tr, mfu = data["pseudo_labeling"], data["training"], data["flop_utilisation"]
        rows = []
        if "reference" in pl:
            rows.append(["pseudo-labeling items/s (ours vs reference-style)",
                         f"{pl['ours']['items_per_second']:.2f} vs "
                         f"{pl['reference']['items_per_second']:.3f}",
                         f"{pl['speedup']:.1f}x"])
            rows.append(["pseudo-label precision all / selected (ours)",
                         f"{pct(pl['ours']['precision_all'])} / "
                         f"{pct(pl['ours']['precision_selected'])}", ""])
            rows.append(["pseudo-label precision all / selected (reference-style)",
                         f"{pct(pl['reference']['precision_all'])} / "
                         f"{pct(pl['reference']['precision_selected'])}", ""])
        if "reference" in tr:
            rows.append(["training tokens/s (ours vs padded, full logits)",
                         f"{tr['ours']['tokens_per_second']:.0f} vs "
                         f"{tr['reference']['tokens_per_second']:.0f}", f"{tr['speedup']:.1f}x"])
            rows.append(["training peak RSS MB (ours vs reference)",
                         f"{tr['ours']['peak_rss_mb']:.0f} vs {tr['reference']['peak_rss_mb']:.0f}",
                         ""])
        paper = data.get("paper_configuration") or {}
        if "reference" in paper:
            rows.append(["paper configuration (warm-up sampled 4x + reflection) items/s, "
                         "ours vs reference-style",
                         f"{paper['ours']['items_per_second']:.2f} vs "
                         f"{paper['reference']['items_per_second']:.3f}",
                         f"{paper['speedup']:.1f}x"])
        for name in ("scoring", "training"):
            u = mfu[name]
            rows.append([f"FLOP utilisation, {name} ({u['peak_dtype']})",
                         f"{u['achieved_gflops']:.1f} of {u['peak_gflops']:.1f} GFLOP/s",
                         pct(u["utilisation"])])
        rep = data["repeat"]
        rows.append(["repeated run: model calls / seconds (in-process label, CLI label)",
                     f"{rep['model_calls_total']} / {rep['label']['seconds']:.1f} s, "
                     f"{rep['cli_label']['seconds']:.1f} s",
                     "OK" if rep["zero_model_calls"] else "NOT ZERO"])
        report = speed.relative_to(results).with_suffix(".md").as_posix()
        machine = data.get("machine", {})
        cpu = machine.get("cpu_identity", {}).get("key") or machine.get("cpu", "unknown CPU")
        flags = machine.get("cpu_identity", {}).get("flags")
        bf16 = "native bf16" if machine.get("cpu_bf16") else "no native bf16"
        parts += [f"### Speed on {cpu} ({', '.join(flags) if flags else bf16}, "
                  f"{machine.get('cores', '?')} cores; [report]({links}/{report}))", "",
                  f"`{data['command']}`", "",
                  md_table(["measure", "value", "ratio / verdict"], rows), ""]
    if not parts:
        parts = ["No full run committed yet: see the commands in bench/README.md.", ""]
    return "\n".join(parts)


def speed_files(results: Path) -> list[Path]:
    """Speed results, one per CPU: bench/results/<cpu>/speed.json (speed.py's folder), and
    the top-level speed.json written before results were kept per CPU."""
    found = [results / "speed.json", *sorted(results.glob("*/speed.json"))]
    return [p for p in found if p.is_file() and p.parent.name != "reduced"]


def _points(stat: dict, digits: int = 1) -> str:
    """A gain in percentage points, with its spread over seeds."""
    text = f"{100 * stat['mean']:+.{digits}f}"
    return text + (f" ± {100 * stat['std']:.{digits}f}" if stat["n"] > 1 else "")


def update_readmes(results: Path = RESULTS, readmes=READMES) -> list[Path]:
    """Rewrite the generated results section of every README that has the markers."""
    updated = []
    for readme in readmes:
        text = readme.read_text() if readme.exists() else ""
        if SUMMARY_START not in text or SUMMARY_END not in text:
            continue
        head, rest = text.split(SUMMARY_START, 1)
        _, tail = rest.split(SUMMARY_END, 1)
        section = summary_markdown(results, os.path.relpath(results, readme.parent))
        readme.write_text(f"{head}{SUMMARY_START}\n{section}\n{SUMMARY_END}{tail}")
        updated.append(readme)
    return updated


if __name__ == "__main__":
    for path in update_readmes():
        print(f"updated the results summary in {path.relative_to(REPO)}")
