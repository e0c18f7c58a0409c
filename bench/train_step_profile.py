"""Where a LoRA training step's time goes, operator by operator: the library's own training
step (semievol.training.finetune.prepare + train_step, shared LoRA dropout, bf16 autocast on
CPUs with bf16) on the warm-up's prompts for a real task, under torch.profiler.

    .venv/bin/python bench/train_step_profile.py                 # fpb, 64 labeled, batch 8
    .venv/bin/python bench/train_step_profile.py --steps 2 --labeled 16   # a quick check

Answers one question with a measurement: how much of a training step is matrix arithmetic,
how fast that arithmetic runs against this machine's model-shaped bf16 peak, and what the
rest of the step is spent on (dropout masks, dtype casts under autocast, elementwise work,
the optimizer). Model FLOPs: 4 x P per token (forward, and the backward through the
activations; the frozen weights get no gradient), P = the transformer body's parameters.

Writes bench/results/<this CPU>/train_step_profile[_<label>].{json,md}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    REPO,
    command_line,
    cpu_results,
    load_split,
    log,
    machine_info,
    machine_markdown,
    md_table,
    true_option,
    write_json,
    write_text,
)
from quality_data import task_description  # noqa: E402

MATMULS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear")


def warmup_examples(task_dir: Path, labeled: int, tokenizer, budget: int):
    """The warm-up's training examples for `labeled` items of the task's labeled split
    (seed 0), built by the library (semievol.curation.training_set.training_examples)."""
    from semievol.config import TaskConfig
    from semievol.curation.training_set import training_examples

    frame = load_split(task_dir, "labeled").sample(frac=1.0, random_state=0).head(labeled)
    options = sorted({o for o in frame["options"]})
    fixed = json.loads(options[0]) if len(options) == 1 else None
    task = TaskConfig(kind="choice", labels=fixed, answer_format="words",
                      instruction=task_description(task_dir)["instruction"])
    items = [{"item_id": i, "question": row["question"],
              "options": fixed or json.loads(row["options"]),
              "answer": true_option(row, json.loads(row["options"]))}
             for i, (_, row) in enumerate(frame.iterrows())]
    examples, _ = training_examples(task, items, tokenizer, budget)
    return examples


def op_table(profile) -> tuple[list[dict], float]:
    """Self CPU time per operator (ms, all profiled steps), largest first, with the FLOPs
    the profiler counts for matrix products; and the total self time."""
    ops = defaultdict(lambda: {"self_ms": 0.0, "calls": 0, "flops": 0})
    for e in profile.key_averages():
        op = ops[e.key]
        op["self_ms"] += e.self_cpu_time_total / 1000
        op["calls"] += e.count
        op["flops"] += e.flops or 0
    total = sum(o["self_ms"] for o in ops.values())
    rows = sorted(({"op": k, **v} for k, v in ops.items()), key=lambda r: -r["self_ms"])
    return rows, total


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", type=Path, default=REPO.parent / "shared" / "datasets" / "fpb")
    p.add_argument("--labeled", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=6,
                   help="optimizer steps timed, then as many profiled")
    p.add_argument("--warm", type=int, default=2, help="unprofiled steps before them")
    p.add_argument("--top", type=int, default=15, help="operators in the report")
    p.add_argument("--dtype", default="auto", choices=("auto", "bfloat16", "float32"),
                   help="the model's dtype (auto: bf16 autocast where the CPU has bf16, as "
                        "the library trains); float32 to compare the two paths on one CPU")
    p.add_argument("--label", default=None,
                   help="before / after_... : names the output train_step_profile_<label>")
    p.add_argument("--out", type=Path, default=None,
                   help="results folder (default bench/results/<this CPU>/)")
    args = p.parse_args(argv)
    args.out = args.out or cpu_results()
    name = "train_step_profile" + (f"_{args.label}" if args.label else "")

    from torch.profiler import ProfilerActivity, profile

    from semievol.config import LoraConfig, ModelConfig, TrainConfig
    from semievol.model.loading import load_tokenizer, resolve_model_path
    from semievol.model.prompts import resolve_budget
    from semievol.model.throughput import MODEL_SHAPED, matmul_peak
    from semievol.training.finetune import prepare, train_step

    model = ModelConfig(dtype=args.dtype)
    train = TrainConfig(learning_rate=1e-3, batch_size=args.batch_size,
                        max_steps=args.warm + 2 * args.steps)
    tokenizer = load_tokenizer(resolve_model_path(model.name_or_path))
    examples = warmup_examples(args.task, args.labeled, tokenizer, resolve_budget(model))
    t = prepare(examples, model=model, lora=LoraConfig(), train=train, init_adapter=None,
                resume_from=None)
    body_params = sum(p.numel() for p in t.body.parameters())
    dtype = "bfloat16" if t.use_autocast else "float32"
    peak = matmul_peak(dtype, MODEL_SHAPED)
    log(f"train step profile: {len(examples)} examples, batch {args.batch_size}, {dtype}, "
        f"model-shaped peak {peak:.0f} GFLOP/s")
    for step in range(args.warm):
        train_step(t, step, train)

    # Timed without the profiler first: its recording (thousands of operator calls a step)
    # adds time of its own, so the profiled steps give the shares, not the speed.
    tokens, t0 = 0, time.perf_counter()
    for step in range(args.warm, args.warm + args.steps):
        tokens += train_step(t, step, train)[1]
    seconds = time.perf_counter() - t0
    profiled_tokens, t0 = 0, time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
        for step in range(args.warm + args.steps, args.warm + 2 * args.steps):
            profiled_tokens += train_step(t, step, train)[1]
    profiled_seconds = time.perf_counter() - t0
    ops, total_ms = op_table(prof)
    mm = [o for o in ops if o["op"] in MATMULS]
    mm_ms = sum(o["self_ms"] for o in mm)
    mm_flops = sum(o["flops"] for o in mm)
    model_gflops = 4 * body_params * tokens / seconds / 1e9
    result = {
        "benchmark": "train_step_profile", "command": command_line(),
        "machine": machine_info(dtype), "task": args.task.name, "examples": len(examples),
        "batch_size": args.batch_size, "steps": args.steps, "tokens": tokens,
        "seconds": round(seconds, 2), "seconds_per_step": round(seconds / args.steps, 3),
        "profiled_seconds_per_step": round(profiled_seconds / args.steps, 3),
        "profiled_tokens": profiled_tokens,
        "body_parameters": body_params, "dtype": dtype,
        "model_shaped_peak_gflops": peak,
        "model_gflops": model_gflops, "utilisation": model_gflops / peak,
        "matmul_share": mm_ms / total_ms if total_ms else None,
        "matmul_gflops": mm_flops / (mm_ms / 1000) / 1e9 if mm_ms else None,
        "profiled_self_ms": total_ms, "ops": ops[:60]}
    write_json(args.out / f"{name}.json", result)
    write_text(args.out / f"{name}.md", report(result, args.top))
    log(f"train step profile: {result['seconds_per_step']} s a step, utilisation "
        f"{100 * result['utilisation']:.0f} %, matrix products {100 * result['matmul_share']:.0f} "
        f"% of the time at {result['matmul_gflops']:.0f} GFLOP/s")
    return 0


def report(r: dict, top: int) -> str:
    total = r["profiled_self_ms"]
    rows = [[o["op"], f"{o['self_ms']:.0f}", f"{100 * o['self_ms'] / total:.1f} %", o["calls"],
             f"{o['flops'] / (o['self_ms'] / 1000) / 1e9:.0f}" if o["flops"] and o["self_ms"]
             else ""] for o in r["ops"][:top]]
    return "\n".join([
        "# Where a training step's time goes", "", f"`{r['command']}`", "",
        f"{r['task']}, {r['examples']} warm-up examples, batch {r['batch_size']}, "
        f"{r['steps']} timed steps ({r['tokens']:,} tokens), {r['dtype']}: "
        f"**{r['seconds_per_step']} s a step**, {r['model_gflops']:.0f} GFLOP/s of model "
        f"arithmetic (4 x {r['body_parameters'] / 1e6:.1f}M x tokens) = "
        f"**{100 * r['utilisation']:.0f} %** of this machine's model-shaped {r['dtype']} "
        f"matmul peak ({r['model_shaped_peak_gflops']:.0f} GFLOP/s).", "",
        f"Then {r['steps']} more steps under torch.profiler ({r['profiled_seconds_per_step']} s "
        "a step with its recording): matrix products take "
        f"**{100 * r['matmul_share']:.0f} %** of the step's CPU time and "
        f"run at {r['matmul_gflops']:.0f} GFLOP/s while they do (the profiler's FLOP count "
        "for them); the rest of the step is spent in the other operators below.", "",
        md_table(["operator", "self CPU ms", "share", "calls", "GFLOP/s"], rows), "",
        machine_markdown(r["machine"]), ""])


if __name__ == "__main__":
    raise SystemExit(main())
