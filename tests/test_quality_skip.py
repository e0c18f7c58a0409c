"""bench/quality.py --skip-held: a seed run again for the variants it lacks runs only those
(and what they stand on), and refuses an earlier run that measured something else."""

from __future__ import annotations

import json
import sys
from argparse import Namespace
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH_MODULES = ("common", "quality_report", "readme_summary", "quality_merge", "quality_data",
                 "quality_review", "quality_runner")


@pytest.fixture
def bench(monkeypatch):
    """The bench's modules, imported afresh (its `common` is not the app's)."""
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    for name in BENCH_MODULES:
        monkeypatch.delitem(sys.modules, name, raising=False)
    import quality_merge
    import quality_runner
    yield Namespace(merge=quality_merge, runner=quality_runner)
    for name in BENCH_MODULES:
        sys.modules.pop(name, None)


SETTINGS = {"unlabeled": 200, "test": None, "model": "bundled", "dtype": "auto", "k": 3,
            "epochs": 2.0, "lr": 1e-3, "max_steps": None, "lora_dropout": None,
            "batch_size": 8, "calibration": 0.2, "instruction": "Answer.",
            "formats": ["words"], "reduced": False, "labeled": [64]}


def _earlier_run(tmp_path, seeds, names, task="pubmedqa", labeled=64, **settings):
    path = tmp_path / f"{task}-{labeled}-{'-'.join(map(str, seeds))}.json"
    path.write_text(json.dumps({
        "benchmark": "quality", "task": task, "labeled": labeled,
        "settings": {**SETTINGS, **settings}, "machine": {"model_dtype": "bfloat16"},
        "runs": [{"seed": s, "variants": [{"format": "words", "variant": n} for n in names]}
                 for s in seeds]}))
    return path


def test_held_variants_by_labeled_size_and_seed(bench, tmp_path):
    a = _earlier_run(tmp_path, [0, 1], ["base", "SemiEvol r1"])
    b = _earlier_run(tmp_path, [1], ["SemiEvol r2"])
    held = bench.merge.held_variants([a, b], "pubmedqa", SETTINGS, "bfloat16")
    assert held == {(64, 0): {("words", "base"), ("words", "SemiEvol r1")},
                    (64, 1): {("words", "base"), ("words", "SemiEvol r1"),
                              ("words", "SemiEvol r2")}}
    assert bench.merge.held_variants([], "pubmedqa", SETTINGS, "bfloat16") == {}


@pytest.mark.parametrize("earlier, dtype, message", [
    ({"lr": 1e-4}, "bfloat16", "lr=0.0001, not 0.001"),
    ({"task": "fpb"}, "bfloat16", "task 'fpb', not 'pubmedqa'"),
    ({"labeled": 452}, "bfloat16", "452 labeled, not [64]"),
    ({}, "float32", "in bfloat16, not float32"),
])
def test_an_earlier_run_that_measured_something_else_is_refused(bench, tmp_path, earlier,
                                                                 dtype, message):
    path = _earlier_run(tmp_path, [0], ["base"], **earlier)
    with pytest.raises(bench.merge.MergeRefused, match="Drop it from --skip-held") as refused:
        bench.merge.held_variants([path], "pubmedqa", SETTINGS, dtype)
    assert message in str(refused.value)


class _Workspace:
    """What run_format asks of a workspace when every step is stubbed."""

    path = Path("unused")

    def split_counts(self):
        return {}

    def scalar(self, sql, params=()):
        return 0

    def close(self):
        pass


def _run_format(bench, monkeypatch, held, **args):
    """run_format with every model step replaced by a recorder: which variants it runs."""
    import semievol.method.evaluate
    import semievol.model.prompts
    import semievol.rounds.record

    qr = bench.runner
    ran = []
    monkeypatch.setattr(qr, "build_workspace", lambda *a, **k: (_Workspace(), None))
    monkeypatch.setattr(qr, "fork", lambda ws, dest: _Workspace())
    monkeypatch.setattr(qr, "round_config",
                        lambda *a, **k: Namespace(train=Namespace(max_steps=None)))
    monkeypatch.setattr(qr, "give_gold_labels", lambda *a, **k: 0)
    monkeypatch.setattr(qr, "random_pool_items", lambda *a, **k: [])

    def a_round(ws, number=None):
        return Namespace(id=number or 1, number=number or 1, config=Namespace(
            selection=Namespace(theta=50.0), collaborators=[]))
    monkeypatch.setattr(semievol.rounds.record, "open_round", lambda ws, config=None: a_round(ws))
    monkeypatch.setattr(semievol.rounds.record, "get_round", a_round)
    monkeypatch.setattr(semievol.method.evaluate, "evaluate", lambda ws, backend, model, **k: model)
    monkeypatch.setattr(semievol.model.prompts, "resolve_budget", lambda config: 1024)

    runner = qr.Runner(Namespace(**{
        "instruction": "Answer.", "calibration": 0.2, "k": 3, "balance": ["sampler"],
        "gold_sizes": [], "ablations": [], "rounds": 1, "secondary_rounds": 1,
        "review_orders": [], "review_sizes": [], **args}),
        {"labels": ["Yes", "No"]}, 64, 0, Path("unused"), None, Namespace(model_config=None),
        held={("words", name) for name in held})
    monkeypatch.setattr(runner, "add_variant", lambda fmt, name, report, **k: ran.append(name))
    monkeypatch.setattr(runner, "run_step", lambda *a, **k: {})

    def warmup(ws, rnd, fmt, name, **extra):
        ran.append(name)
        return rnd

    def select_train_evaluate(ws, rnd, fmt, name, hidden, **extra):
        ran.append(name)
        runner.training.append({"format": fmt, "variant": name, "steps": 40})

    monkeypatch.setattr(runner, "warmup", warmup)
    monkeypatch.setattr(runner, "label", lambda ws, rnd, fmt, name: ran.append(f"{name}: label"))
    monkeypatch.setattr(runner, "select_train_evaluate", select_train_evaluate)
    runner.run_format("words", True, {}, {})
    return ran


def test_a_seed_run_again_runs_only_what_it_lacks(bench, monkeypatch):
    held = ["base", "base+demos", "SemiEvol r1", "SFT (class-balanced) + 25 gold labels",
            "SemiEvol r1 + 25 reviewed (least confident first)",
            "SemiEvol r1, single collaborator"]
    ran = _run_format(bench, monkeypatch, held, gold_sizes=[10, 25],
                      review_orders=["least_confident", "random"], review_sizes=[10, 25],
                      ablations=["single", "no-selection"])
    # The warm-up SFT and round 1's labeling stay: every later variant stands on them.
    assert ran == ["SFT (class-balanced) + 10 gold labels", "SFT (class-balanced)",
                   "SemiEvol r1: label",
                   "SemiEvol r1 + 10 reviewed (least confident first)",
                   "SemiEvol r1 + 10 random gold labels", "SemiEvol r1 + 25 random gold labels",
                   "SemiEvol r1, no selection (all pseudo-labels)"]
    # Nothing held: everything runs (the single-collaborator ablation labels anew).
    everything = _run_format(bench, monkeypatch, [], gold_sizes=[10, 25],
                             review_orders=["least_confident", "random"], review_sizes=[10, 25],
                             ablations=["single", "no-selection"])
    assert sorted(everything) == sorted(
        ran + held + ["SemiEvol r1, single collaborator: label"])


def test_a_held_round_runs_again_where_a_later_variant_needs_it(bench, monkeypatch):
    held = ["SemiEvol r1", "SemiEvol r2", "SFT (class-balanced), as many steps as SemiEvol r1"]
    # Round 2 starts from round 1's model.
    ran = _run_format(bench, monkeypatch, held, rounds=2)
    assert "SemiEvol r1" in ran and "SemiEvol r2" not in ran
    # The step-matched SFT takes round 1's number of steps; held itself, it is skipped.
    ran = _run_format(bench, monkeypatch, ["SemiEvol r1"], ablations=["matched-sft"])
    assert "SemiEvol r1" in ran and ran[-1] == "SFT (class-balanced), as many steps as SemiEvol r1"
    ran = _run_format(bench, monkeypatch, held, ablations=["matched-sft"])
    assert "SemiEvol r1" not in ran
