"""Speed: our pipeline against reference-style baselines, on the same model and items.

    .venv/bin/python bench/speed.py              # full sizes (~12 min on the 2-core machine)
    .venv/bin/python bench/speed.py --reduced    # tiny sizes (~2 min)

1. Pseudo-labeling: our batched collaborator scoring (run_collaborators +
   build_pseudo_labels) vs the reference SemiEvol way: per item, 4 sampled generations at
   temperature 1 with per-token log-probabilities (unbatched `model.generate`), answers
   parsed from the text, a reflection generation for disagreements. Same collaborator
   prompts and models, same items; items/s and pseudo-label precision against the true
   answers (hidden from the pipeline).
2. FLOP utilisation: the machine's matmul peak (bf16 and float32, measured here) against
   the model FLOPs of our scoring (2 * params * tokens) and training (6 * params * tokens).
3. Training: finetune.train_lora vs an HF-style loop (batches padded to max_length,
   full-vocabulary logits at every position, `model(..., labels=...).loss`): tokens/s and
   peak RSS, same examples, order, LoRA and dtype.
4. A repeated run with nothing changed: time and model calls (must be zero).
5. The paper's own configuration (the reference code's setting): one model, the warm-up,
   sampled four times at temperature 1 on the same prompt (k demonstrations), then
   reflection on disagreements; ours scores each distinct prompt once and draws the four
   samples from its option distribution, the reference-style loop generates four times.
   On a copy of the workspace taken before any pseudo-labeling, with freshly loaded
   models, so nothing computed for (1) is reused.

Writes bench/results/speed.{json,md} (reduced mode: bench/results/reduced/).

Modules: speed_measures (peak, token counts, workspace, our pipeline, the repeat run),
speed_reference (the reference-style baselines), speed_report (the Markdown).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    REPO,
    RESULTS,
    cpu_results,
    Stages,
    command_line,
    load_split,
    log,
    machine_info,
    model_dtype_name,
    pct,
    progress_printer,
    write_json,
    write_text,
)
from quality_data import task_description  # noqa: E402
from readme_summary import update_readmes  # noqa: E402
from speed_measures import (  # noqa: E402
    TokenCounter,
    build_workspace,
    matmul_peak,
    ours_pseudo_labels,
    repeat_run,
    training_examples,
    truth_by_item,
    utilisation,
)
from speed_reference import PAD_TO, reference_pseudo_labels, reference_train  # noqa: E402
from speed_report import markdown  # noqa: E402

DEFAULT_TASK = Path(__file__).resolve().parents[1] / "../shared/datasets/fpb"
REDUCED = {"items": 12, "labeled": 32, "train_steps": 2, "matmul_size": 1024, "matmul_reps": 5}

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", type=Path, default=DEFAULT_TASK,
                   help="folder with labeled.csv / unlabeled.csv (default ../shared/datasets/fpb)")
    p.add_argument("--items", type=int, default=128,
                   help="unlabeled items pseudo-labeled by both pipelines (default 128)")
    p.add_argument("--labeled", type=int, default=64,
                   help="labeled items (warm-up training set, demonstrations pool)")
    p.add_argument("--train-steps", type=int, default=16, help="optimizer steps per trainer")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=32,
                   help="generation cap of the reference loop (the reference asks for up to "
                        "1024; generation stops at end of turn either way)")
    p.add_argument("--matmul-size", type=int, default=2048)
    p.add_argument("--matmul-reps", type=int, default=10)
    p.add_argument("--theta", type=float, default=50.0, help="selection percentile")
    p.add_argument("--answer-format", choices=("words", "letter"), default="words")
    p.add_argument("--model", default="bundled")
    p.add_argument("--dtype", default="auto", choices=("auto", "bfloat16", "float32"))
    p.add_argument("--k", type=int, default=3)
    p.add_argument("--instruction", default=None,
                   help="task instruction (default: the task's own, from its task.json or "
                        "bench/tasks.json)")
    p.add_argument("--skip-reference", action="store_true",
                   help="skip the slow reference-style baselines")
    p.add_argument("--reduced", action="store_true",
                   help=f"tiny sizes for a smoke run under 10 minutes: {REDUCED}")
    p.add_argument("--out", type=Path, default=None,
                   help="results folder (default bench/results/<this CPU>/; reduced: "
                        "bench/results/reduced)")
    p.add_argument("--workdir", type=Path, default=None)
    args = p.parse_args(argv)
    if args.reduced:
        defaults = {a.dest: a.default for a in p._actions}
        for key, value in REDUCED.items():
            if getattr(args, key) == defaults[key]:
                setattr(args, key, value)
    args.out = args.out or (RESULTS / "reduced" if args.reduced else cpu_results())
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    from semievol.config import (CalibrationConfig, ModelConfig, RetrievalConfig, RoundConfig,
                                 TrainConfig)
    from semievol.method.retrieval import SentenceTransformerEmbedder
    from semievol.model.loading import set_offline
    from semievol.model.local import load_backend
    from semievol.rounds.record import get_round, open_round
    from semievol.rounds.steps import run_steps

    set_offline()
    for split in ("labeled", "unlabeled"):  # a wrong --task fails now, not after the peak
        load_split(args.task, split)
    args.instruction = args.instruction or task_description(args.task)["instruction"]
    started = time.time()
    model_config = ModelConfig(name_or_path=args.model, dtype=args.dtype)
    machine = machine_info(model_dtype_name(model_config))
    stages = Stages()
    result = {"benchmark": "speed", "command": command_line(), "machine": machine,
              "settings": {k: (str(v) if isinstance(v, Path) else v)
                           for k, v in vars(args).items()}}
    log(f"speed bench: {args.items} items, {args.labeled} labeled, {args.train_steps} training "
        f"steps of {args.batch_size}; torch threads {machine['torch_threads']}, "
        f"{machine['model_dtype']}")

    with stages.measure("matmul peak"):
        result["matmul_peak"] = matmul_peak(args.matmul_size, args.matmul_reps)

    root = Path(tempfile.mkdtemp(prefix="semievol-speed-", dir=args.workdir))
    try:
        embedder = SentenceTransformerEmbedder("bundled")
        with stages.measure("workspace: import + index"):
            ws, hidden = build_workspace(root / "ws", args.task, args.labeled, args.items,
                                         embedder, args.k, args.instruction, args.answer_format)
        truth = truth_by_item(ws, hidden)
        config = RoundConfig(
            model=model_config, retrieval=RetrievalConfig(k=args.k),
            train=TrainConfig(max_steps=args.train_steps, batch_size=args.batch_size,
                              class_balance="sampler", seed=0),
            calibration=CalibrationConfig(fraction=0.0))
        rnd = open_round(ws, config)

        # 3. training: ours (the warm-up step itself) vs the HF-style loop.
        with stages.measure("train ours: step_warmup (train_lora)") as rec:
            summary = run_steps(ws, rnd.number, ["warmup"], embedder=embedder,
                                progress=progress_printer("train ours", 15))["warmup"]
        ours_train = {**summary, "peak_rss_mb": rec["peak_rss_mb"],
                      "stage_seconds": rec["seconds"]}
        rnd = get_round(ws, rnd.number)
        ours_train["losses"] = json.loads(
            (Path(rnd.warmup_adapter) / "training.json").read_text())["losses"]
        examples, tokenizer = training_examples(ws, rnd)
        rows = [len(tokenizer(e.prompt + e.answer, add_special_tokens=False)["input_ids"])
                for e in examples]
        ours_train["example_tokens_mean"] = float(np.mean(rows))
        result["training"] = {"ours": ours_train, "examples": len(examples),
                              "max_length": PAD_TO}
        if not args.skip_reference:
            with stages.measure("train reference: padded to max_length, full logits") as rec:
                ref = reference_train(examples, tokenizer, config,
                                      progress_printer("train reference", 15))
            result["training"]["reference"] = {**ref, "peak_rss_mb": rec["peak_rss_mb"],
                                               "stage_seconds": rec["seconds"]}

        # A copy before any pseudo-labeling, for the paper configuration (5).
        from quality_data import fork
        paper_ws = fork(ws, root / "paper")

        # 1. pseudo-labeling, both ways, same backends (loaded once, outside the timings).
        with stages.measure("load base + warm-up models"):
            backends = {"base": load_backend(model_config),
                        "warmup": load_backend(model_config, adapter=rnd.warmup_adapter)}
        params = sum(p.numel() for p in backends["base"].model.parameters())
        counters = [TokenCounter(b.model) for b in backends.values()]
        result["model_parameters"] = params
        ours = ours_pseudo_labels(ws, rnd, backends, counters, stages, truth, args.theta)
        result["pseudo_labeling"] = {"ours": ours}
        log(f"  ours: {ours['items_per_second']:.2f} items/s, precision all "
            f"{pct(ours['precision_all'])}, selected {pct(ours['precision_selected'])}")
        if not args.skip_reference:
            ref = reference_pseudo_labels(ws, rnd, backends, counters, stages, truth, args.theta,
                                          args.max_new_tokens)
            result["pseudo_labeling"]["reference"] = ref
            result["pseudo_labeling"]["speedup"] = ours["items_per_second"] / \
                ref["items_per_second"]
            log(f"  reference: {ref['items_per_second']:.3f} items/s, precision all "
                f"{pct(ref['precision_all'])}, selected {pct(ref['precision_selected'])}; "
                f"ours is {result['pseudo_labeling']['speedup']:.1f}x faster")
        for c in counters:
            c.handle.remove()
        del backends, counters

        # 2. FLOP utilisation against the measured peaks.
        peak = result["matmul_peak"]
        score_dtype = machine["model_dtype"]
        train_dtype = "bfloat16" if ours_train.get("dtype", "").startswith("bfloat16") \
            else "float32"
        mfu = {"parameters": params,
               "scoring": utilisation(2 * params * ours["tokens_real"], ours["seconds"],
                                       peak[score_dtype], score_dtype),
               "scoring_incl_padding": utilisation(2 * params * ours["tokens_processed"],
                                                    ours["seconds"], peak[score_dtype],
                                                    score_dtype),
               "training": utilisation(6 * params * ours_train["tokens_per_second"], 1.0,
                                        peak[train_dtype], train_dtype)}
        if "reference" in result["training"]:
            ref_train = result["training"]["reference"]
            mfu["training_reference"] = utilisation(6 * params * ref_train["tokens_per_second"],
                                                     1.0, peak[train_dtype], train_dtype)
            result["training"]["speedup"] = ours_train["tokens_per_second"] / \
                ref_train["tokens_per_second"]
            result["training"]["peak_rss_ratio"] = ref_train["peak_rss_mb"] / \
                ours_train["peak_rss_mb"]
        if "reference" in result["pseudo_labeling"]:
            ref = result["pseudo_labeling"]["reference"]
            mfu["scoring_reference"] = utilisation(2 * params * ref["tokens_real"],
                                                    ref["seconds"], peak[score_dtype],
                                                    score_dtype)
        result["flop_utilisation"] = mfu

        # 4. a repeated run with nothing changed.
        result["repeat"] = repeat_run(ws, rnd, embedder, stages)
        ws.close()

        # 5. the paper's configuration, both ways.
        result["paper_configuration"] = paper_configuration(paper_ws, args, model_config,
                                                            stages, truth)
        paper_ws.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    machine["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    result["stages"] = stages.records
    result["wall_seconds"] = round(time.time() - started, 1)
    write_json(args.out / "speed.json", result)
    text = markdown(result)
    write_text(args.out / "speed.md", text)
    print(text)
    if not args.reduced and args.out.resolve().parent == RESULTS.resolve():
        for readme in update_readmes():
            log(f"updated the results summary in {readme.relative_to(REPO)}")
    log(f"wrote {args.out / 'speed.json'} and speed.md")
    return 0

def paper_configuration(ws, args, model_config, stages, truth: dict) -> dict:
    """The reference code's setting: the warm-up model sampled four times at temperature 1
    on one prompt, then reflection; ours vs the reference-style loop, fresh models (no
    scores remembered from the other comparison)."""
    import dataclasses

    from semievol.config import CollaboratorConfig
    from semievol.model.local import load_backend
    from semievol.rounds.record import get_round, open_round

    rnd = get_round(ws, 1)
    paper = [CollaboratorConfig("warmup", args.k, 1.0, seed) for seed in range(4)]
    rnd = open_round(ws, dataclasses.replace(rnd.config, collaborators=paper))
    with stages.measure("paper configuration: load the warm-up model"):
        backends = {"warmup": load_backend(model_config, adapter=rnd.warmup_adapter)}
    counters = [TokenCounter(backends["warmup"].model)]
    out = {"collaborators": [c.label for c in paper]}
    out["ours"] = ours_pseudo_labels(ws, rnd, backends, counters, stages, truth, args.theta)
    log(f"  paper configuration, ours: {out['ours']['items_per_second']:.2f} items/s")
    if not args.skip_reference:
        out["reference"] = reference_pseudo_labels(ws, rnd, backends, counters, stages, truth,
                                                   args.theta, args.max_new_tokens)
        out["speedup"] = out["ours"]["items_per_second"] / out["reference"]["items_per_second"]
        log(f"  paper configuration, reference: {out['reference']['items_per_second']:.3f} "
            f"items/s; ours is {out['speedup']:.1f}x faster")
    counters[0].handle.remove()
    return out


if __name__ == "__main__":
    sys.exit(main())
