"""Where a whole demo round's time goes, stage by stage: the README's unattended round
(`semievol round WORKSPACE --no-review`) on a fresh copy of the demo workspace, through the
same run the CLI starts, with semievol.profiling active.

    .venv/bin/python bench/round_profile.py --label before
    .venv/bin/python bench/round_profile.py --label after

Per stage: wall and CPU time, tokens through the model, and model-FLOP utilisation against
the bf16 / float32 matmul peak measured in the same run on model-shaped matrices (a
(3,584 x 576) by (576 x 1,536) product, SmolLM2-135M's MLP) and square ones. FLOPs:
inference 2 x P per token, LoRA training 4 x P per token (forward, and the backward through
the activations; the frozen weights get no gradient), P = the transformer body's
parameters (the output layer runs on answer positions only).

Writes bench/results/round_profile_<label>.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, RESULTS, log, machine_info, model_dtype_name  # noqa: E402

MODEL_SHAPED = (3584, 576, 1536)


def matmul_peaks(reps: int = 20) -> dict:
    """Best GFLOP/s per dtype on model-shaped and on 1,024-square matrices."""
    import torch

    out = {}
    for dtype in (torch.float32, torch.bfloat16):
        name = str(dtype).replace("torch.", "")
        for label, (m, k, n) in (("model-shaped", MODEL_SHAPED), ("square-1024", (1024,) * 3)):
            a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
            for _ in range(3):
                torch.matmul(a, b)
            best = min(_timed(lambda: torch.matmul(a, b)) for _ in range(reps))
            out[f"{name} {label}"] = 2 * m * k * n / best / 1e9
    return out


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def body_parameters(model_config) -> int:
    """Parameters of the transformer body (embeddings and output layer excluded)."""
    from semievol.models import resolve_model_path

    config = json.loads((Path(resolve_model_path(model_config.name_or_path))
                         / "config.json").read_text())
    d, f, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    heads, kv = config["num_attention_heads"], config.get("num_key_value_heads",
                                                          config["num_attention_heads"])
    attention = d * d * 2 + 2 * d * (d // heads) * kv
    return layers * (attention + 3 * d * f)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--label", required=True, help="before / after / ... (the output's name)")
    p.add_argument("--data", type=Path, default=REPO / "data" / "demo")
    p.add_argument("--max-steps", type=int, default=None, help="cap training (a quick check)")
    p.add_argument("--unlabeled-limit", type=int, default=None)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)

    from semievol import launch, rounds
    from semievol.demo import create_demo_workspace
    from semievol.evaluate import evaluations_table
    from semievol.models import set_offline
    from semievol.profiling import Profiler
    from semievol.store import Workspace

    set_offline()
    root = Path(tempfile.mkdtemp(prefix="semievol-round-profile-"))
    try:
        started = time.time()
        create_demo_workspace(root / "demo", args.data)
        setup_seconds = time.time() - started
        with Workspace(root / "demo") as ws:
            config = rounds.base_config(ws)
            if args.max_steps:
                config.train.max_steps = args.max_steps
            if args.unlabeled_limit:
                config.unlabeled_limit = args.unlabeled_limit
            machine = machine_info(model_dtype_name(config.model))
            log("measuring the matmul peaks")
            peaks = matmul_peaks()
            profiler = Profiler()
            log("running the round (unattended, as `semievol round --no-review`)")
            t0 = time.time()
            with profiler.active():
                run_id = launch.start(ws, "round", background=False, config=config,
                                      review=False)
                results = launch.execute(ws, run_id)
            round_seconds = time.time() - t0
            evaluations = evaluations_table(ws)
            params = body_parameters(config.model)
            machine["load_average_at_end"] = [round(x, 2) for x in __import__("os").getloadavg()]
    finally:
        shutil.rmtree(root, ignore_errors=True)

    dtype = machine["model_dtype"] or "float32"
    peak_name = f"{'bfloat16' if 'bfloat16' in dtype else 'float32'} model-shaped"
    stages = []
    for row in profiler.rows():
        flops = 2 * params * row["forward_tokens"] + 4 * params * row["train_tokens"]
        achieved = flops / row["wall"] / 1e9 if row["wall"] else 0.0
        stages.append({**row, "gflops": achieved,
                       "utilisation": achieved / peaks[peak_name] if peaks[peak_name] else None})
    round_accuracy = next((e["accuracy"] for e in evaluations if e["model"] == "round"), None)
    report = {"label": args.label, "command": " ".join(["bench/round_profile.py",
                                                        *(argv or sys.argv[1:])]),
              "machine": machine, "peaks_gflops": peaks, "peak_used": peak_name,
              "body_parameters": params, "setup_seconds": round(setup_seconds, 1),
              "round_seconds": round(round_seconds, 1), "round_minutes": round_seconds / 60,
              "test_accuracy": round_accuracy, "evaluations": evaluations,
              "stages": stages, "results": results}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"round_profile_{args.label}.json").write_text(
        json.dumps(report, indent=2, default=str))
    (args.out / f"round_profile_{args.label}.md").write_text(markdown(report))
    print(markdown(report))
    return 0


def markdown(report: dict) -> str:
    lines = [f"# Demo round profile: {report['label']}", "",
             f"`{report['command']}`", "",
             f"Whole round: **{report['round_minutes']:.1f} min** wall; round test accuracy "
             f"**{report['test_accuracy']:.1%}**" if report["test_accuracy"] is not None
             else f"Whole round: {report['round_minutes']:.1f} min", "",
             f"CPU {report['machine']['cpu']}, {report['machine']['torch_threads']} torch "
             f"threads, model dtype {report['machine']['model_dtype']}; load average at start "
             f"{report['machine']['load_average_at_start']}, at end "
             f"{report['machine'].get('load_average_at_end')}.", "",
             "Matmul peaks (GFLOP/s): " + ", ".join(f"{k} {v:.0f}"
                                                    for k, v in report["peaks_gflops"].items())
             + f"; utilisation below is against {report['peak_used']}.", "",
             "| stage | wall s | CPU s | calls | inference tokens | training tokens | GFLOP/s "
             "| utilisation |", "|---|---|---|---|---|---|---|---|"]
    for s in report["stages"]:
        util = "" if s["utilisation"] is None or not (s["forward_tokens"] or s["train_tokens"]) \
            else f"{s['utilisation']:.0%}"
        gflops = f"{s['gflops']:.0f}" if s["forward_tokens"] or s["train_tokens"] else ""
        lines.append(f"| {s['path']} | {s['wall']:.1f} | {s['cpu']:.1f} | {s['calls']} | "
                     f"{s['forward_tokens']:,} | {s['train_tokens']:,} | {gflops} | {util} |")
    lines += ["", "| model | accuracy | macro-F1 |", "|---|---|---|"]
    for e in report["evaluations"]:
        f1 = "" if e["macro_f1"] is None else f"{e['macro_f1']:.3f}"
        lines.append(f"| {e['model']} (round {e['round'] or '-'}) | {e['accuracy']:.1%} | {f1} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
