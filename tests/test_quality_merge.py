"""bench/quality_merge.py: one report from quality runs made separately (seeds run in
different sessions, a seed rerun with more variants), refusing runs that do not measure the
same thing before it writes anything."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def qm(monkeypatch):
    """The bench's modules, imported afresh (its `common` is not the app's)."""
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    names = ("common", "quality_report", "readme_summary", "quality_merge")
    for name in names:
        monkeypatch.delitem(sys.modules, name, raising=False)
    import quality_merge
    yield quality_merge
    for name in names:
        sys.modules.pop(name, None)


def _variant(seed, name, accuracy):
    return {"seed": seed, "format": "words", "variant": name, "accuracy": accuracy,
            "macro_f1": accuracy / 2, "majority_baseline": 0.55, "majority_label": "Yes",
            "predicted_distribution": {"No": 10 * seed, "Yes": 100 - 10 * seed}}


def _result(seeds, variants, **settings):
    runs = [{"seed": seed,
             "variants": [_variant(seed, name, acc + seed / 100) for name, acc in variants],
             "pseudo_labels": [], "training": [],
             "stages": [{"stage": "warmup", "seconds": 60.0, "cpu_seconds": 100.0,
                         "peak_rss_mb": 900.0}]} for seed in seeds]
    base = {"unlabeled": 200, "test": None, "model": "bundled", "dtype": "auto", "k": 3,
            "epochs": 2.0, "lr": 1e-3, "max_steps": None, "batch_size": 8,
            "calibration": 0.2, "instruction": "Answer.", "formats": ["words"],
            "balance": ["sampler", "none"], "reduced": False, "rounds": 1, "seeds": seeds,
            "secondary_rounds": 1, "ablations": [], "review_sizes": [], "review_orders": [],
            "gold_sizes": [], "labeled": [64]}
    return {"benchmark": "quality", "task": "pubmedqa", "labeled": 64,
            "command": f"bench/quality.py --seeds {' '.join(map(str, seeds))}",
            "machine": {"cpu": "test CPU", "cores": 2, "cores_usable": 2, "torch_threads": 2,
                        "cpu_bf16": True, "cuda": None, "memory_gb": 24,
                        "load_average_at_start": [0.1], "model_dtype": "bfloat16",
                        "python": "3.11", "platform": "Linux", "versions": {"torch": "2"}},
            "complete": True, "settings": {**base, **settings}, "wall_seconds": 600.0,
            "runs": runs}


def _write(tmp_path, name, result):
    path = tmp_path / name / "quality_pubmedqa_64.json"
    path.parent.mkdir()
    path.write_text(json.dumps(result))
    return path


def test_merges_seeds_and_summarises_each_variant_over_the_seeds_that_ran_it(qm, tmp_path):
    a = _write(tmp_path, "seed0", _result([0], [("SFT", 0.40), ("SemiEvol r1", 0.37)]))
    b = _write(tmp_path, "seed12", _result(
        [2, 1], [("SFT", 0.40), ("SemiEvol r1", 0.37), ("SemiEvol r2", 0.45)], rounds=2,
        ablations=["single"]))
    out = tmp_path / "merged"
    assert qm.main([str(a), str(b), "--out", str(out)]) == 0

    merged = json.loads((out / "quality_pubmedqa_64.json").read_text())
    assert [r["seed"] for r in merged["runs"]] == [0, 1, 2]
    assert merged["settings"]["seeds"] == [0, 1, 2]
    assert merged["settings"]["rounds"] == 2 and merged["settings"]["ablations"] == ["single"]
    assert [s["seeds"] for s in merged["sources"]] == [[0], [2, 1]]
    rows = {v["variant"]: v for v in merged["summary"]["variants"]}
    # Round 2 stays beside round 1 although seed 0 (first) did not run it.
    assert list(rows) == ["SFT", "SemiEvol r1", "SemiEvol r2"]
    assert rows["SFT"]["seeds"] == [0, 1, 2] and rows["SFT"]["accuracy"]["n"] == 3
    assert rows["SFT"]["accuracy"]["mean"] == pytest.approx(0.41)
    assert rows["SemiEvol r2"]["seeds"] == [1, 2]
    assert rows["SemiEvol r2"]["accuracy"]["mean"] == pytest.approx(0.465)
    report = (out / "quality_pubmedqa_64.md").read_text()
    assert "| words | SemiEvol r2 | 1, 2 | 46.5 ± 0.7 (46.0–47.0) % |" in report
    assert "Merged from these runs" in report and "bench/quality.py --seeds 2 1" in report
    assert (out / "quality_pubmedqa_64_accuracy.png").stat().st_size > 0


@pytest.mark.parametrize("change, message", [
    ({"lr": 1e-4}, "lr=0.0001"),
    ({"test": 50}, "test=50"),
    ({"task": "fpb"}, "task 'fpb'"),
])
def test_refuses_runs_that_do_not_measure_the_same_thing_before_writing(qm, tmp_path,
                                                                        change, message,
                                                                        capsys):
    a = _write(tmp_path, "a", _result([0], [("SFT", 0.40)]))
    seeds = change.pop("seeds", [1])
    other = _result(seeds, [("SFT", 0.40)], **{k: v for k, v in change.items() if k != "task"})
    other.update({k: v for k, v in change.items() if k == "task"})
    b = _write(tmp_path, "b", other)
    out = tmp_path / "merged"
    assert qm.main([str(a), str(b), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not out.exists()


def test_a_seed_run_again_for_its_missing_variants_merges_record_by_record(qm, tmp_path):
    """Seed 0 first without round 2; then again, warm-up SFT only, with round 2 and the
    single-collaborator ablation. What both hold (base, SFT, r1) agrees and appears once."""
    a = _write(tmp_path, "first", _result([0, 1], [("base", 0.30), ("SFT", 0.40),
                                                   ("SFT (no class balance)", 0.42),
                                                   ("SemiEvol r1", 0.37)]))
    b = _write(tmp_path, "more", _result(
        [0], [("base", 0.30), ("SFT", 0.40), ("SemiEvol r1", 0.37), ("SemiEvol r2", 0.45),
              ("SemiEvol r1, single collaborator", 0.33)],
        rounds=2, balance=["sampler"], ablations=["single"]))
    out = tmp_path / "merged"
    assert qm.main([str(a), str(b), "--out", str(out)]) == 0

    merged = json.loads((out / "quality_pubmedqa_64.json").read_text())
    seed0 = merged["runs"][0]
    assert [v["variant"] for v in seed0["variants"]] == [
        "base", "SFT", "SFT (no class balance)", "SemiEvol r1", "SemiEvol r2",
        "SemiEvol r1, single collaborator"]
    assert len(seed0["stages"]) == 1  # the same stage, timed twice, is kept once
    assert merged["settings"]["seeds"] == [0, 1]
    assert merged["settings"]["balance"] == ["sampler", "none"]
    rows = {v["variant"]: v for v in merged["summary"]["variants"]}
    assert rows["SFT"]["seeds"] == [0, 1] and rows["SemiEvol r2"]["seeds"] == [0]


def test_refuses_two_runs_of_a_seed_that_do_not_reproduce_each_other(qm, tmp_path, capsys):
    a = _write(tmp_path, "a", _result([0], [("SFT", 0.40), ("SemiEvol r1", 0.37)]))
    b = _write(tmp_path, "b", _result([0], [("SFT", 0.42), ("SemiEvol r2", 0.45)]))
    out = tmp_path / "merged"
    assert qm.main([str(a), str(b), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "Seed 0, words · SFT: accuracy is 0.4" in err and "do not reproduce" in err
    assert "Traceback" not in err and not out.exists()


def test_refuses_to_overwrite_a_source_and_a_missing_file(qm, tmp_path, capsys):
    a = _write(tmp_path, "a", _result([0], [("SFT", 0.40)]))
    b = _write(tmp_path, "b", _result([1], [("SFT", 0.42)]))
    before = a.read_text()
    assert qm.main([str(a), str(b), "--out", str(a.parent)]) == 2
    assert "would be overwritten" in capsys.readouterr().err
    assert a.read_text() == before
    assert qm.main([str(a), str(tmp_path / "nope.json"), "--out", str(tmp_path / "m")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_readme_summary_shows_the_merged_report_instead_of_its_sources(qm, tmp_path):
    import readme_summary

    results = tmp_path / "results"
    results.mkdir()
    a = _write(results, "seed0", _result([0], [("SFT", 0.40)]))
    b = _write(results, "seed1", _result([1], [("SFT", 0.42), ("SemiEvol r2", 0.45)]))
    assert qm.main([str(a), str(b), "--out", str(results)]) == 0
    assert readme_summary.quality_files(results) == [results / "quality_pubmedqa_64.json"]
    text = readme_summary.summary_markdown(results)
    assert "seeds [0, 1]" in text and "- from seeds [1]: `bench/quality.py --seeds 1`" in text
    assert "46.0 %, seeds 1" in text  # a variant from fewer seeds says which
    # A run kept per CPU (results/<cpu>/<run>/) is listed too, and says which CPU it is from.
    from quality_report import summarise

    one = _result([0], [("SFT", 0.41)])
    (results / "amd-epyc-26-2").mkdir()
    c = _write(results / "amd-epyc-26-2", "margin_s0", {**one, "summary": summarise(one["runs"])})
    assert readme_summary.quality_files(results) == [results / "quality_pubmedqa_64.json", c]
    text = readme_summary.summary_markdown(results)
    assert "### Quality: pubmedqa, 64 labeled, on amd-epyc-26-2 ([report](results/" \
        "amd-epyc-26-2/margin_s0/quality_pubmedqa_64.md)" in text


def test_the_report_plots_what_extra_labels_buy_against_how_many(qm, tmp_path):
    import quality_report

    def with_extras(seeds):
        result = _result(seeds, [("SFT (class-balanced)", 0.40), ("SemiEvol r1", 0.37)])
        for run in result["runs"]:
            for n, gain in ((10, 0.02), (25, 0.05)):
                reviewed = _variant(run["seed"], f"SemiEvol r1 + {n} reviewed (least confident "
                                    "first)", 0.37 + run["seed"] / 100 + gain)
                reviewed["review"] = {"n": n, "order": "least_confident", "relabeled": n // 2}
                gold = _variant(run["seed"], f"SFT (class-balanced) + {n} gold labels",
                                0.40 + run["seed"] / 100 - gain)
                gold["gold"] = n
                run["variants"] += [reviewed, gold]
        return result

    a = _write(tmp_path, "a", with_extras([0]))
    b = _write(tmp_path, "b", with_extras([1]))
    out = tmp_path / "merged"
    assert qm.main([str(a), str(b), "--out", str(out)]) == 0
    merged = json.loads((out / "quality_pubmedqa_64.json").read_text())
    curves = {c["label"]: c for c in quality_report._review_curves(merged["summary"]["review"])}
    reviewed = curves["words · SemiEvol r1 + reviewed, least confident"]
    assert reviewed["x"] == [0, 10, 25]
    assert reviewed["y"] == pytest.approx([0.0, 2.0, 5.0])
    assert curves["words · SFT (class-balanced) + random gold labels"]["y"] == \
        pytest.approx([0.0, -2.0, -5.0])
    assert "![what extra labels buy](quality_pubmedqa_64_review.png)" in \
        (out / "quality_pubmedqa_64.md").read_text()
    assert (out / "quality_pubmedqa_64_review.png").stat().st_size > 0


def test_the_report_checks_reviews_estimates_against_the_measured_gain(qm):
    import quality_report

    result = _result([0, 1], [("SemiEvol r1", 0.80), ("SemiEvol r1 + 25 reviewed", 0.83)])
    for run, (low, high) in zip(result["runs"], [(1.0, 5.0), (-1.0, 2.0)]):
        run["variants"][1]["review"] = {"order": "margin", "n": 25, "relabeled": 3,
                                        "estimate": {"estimate": 2.0, "low": low, "high": high,
                                                     "stop": low <= 0}}
    checks = quality_report.estimate_checks(result["runs"])
    # measured: +3 points in both seeds; inside (1, 5), outside (-1, 2)
    assert [(c["seed"], round(c["measured"], 6), c["inside"]) for c in checks] == [
        (0, 3.0, True), (1, 3.0, False)]
    result["summary"] = quality_report.summarise(result["runs"])
    text = quality_report.markdown(result, {"accuracy": "a.png", "curve": "c.png"})
    row = "| 0 | words | SemiEvol r1 + 25 reviewed | 25 | +2.0 | +1.0 to +5.0 | no | +3.0 | yes |"
    assert row in text
    assert "| -1.0 to +2.0 | yes | +3.0 | no |" in text
