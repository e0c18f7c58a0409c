"""Speed: our pipeline against reference-style baselines, on the same model and items.

    .venv/bin/python bench/speed.py              # full sizes (~20 min on the 2-core machine)
    .venv/bin/python bench/speed.py --reduced    # tiny sizes (~2-3 min)

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

Writes bench/results/speed.{json,md} (reduced mode: bench/results/reduced/).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (REPO, RESULTS, command_line, load_split, log, machine_info,
                    machine_markdown, md_table, model_dtype_name, pct, progress_printer,
                    Stages, stages_markdown, true_option, update_readme, write_json,
                    write_text)  # noqa: E402

DEFAULT_TASK = Path(__file__).resolve().parents[1] / "../shared/datasets/fpb"
REDUCED = {"items": 12, "labeled": 32, "train_steps": 2, "matmul_size": 1024, "matmul_reps": 5}


# -- 2. matmul peak ----------------------------------------------------------------------
def matmul_peak(size: int, reps: int) -> dict:
    """Best and median GFLOP/s of torch.matmul on (size x size) matrices, per dtype."""
    import torch

    out = {}
    for dtype in (torch.float32, torch.bfloat16):
        a = torch.randn(size, size).to(dtype)
        b = torch.randn(size, size).to(dtype)
        for _ in range(2):  # warm-up: thread pool, kernel selection
            torch.matmul(a, b)
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            torch.matmul(a, b)
            times.append(time.perf_counter() - t0)
        flops = 2 * size ** 3
        name = str(dtype).replace("torch.", "")
        out[name] = {"size": size, "reps": reps, "best_gflops": flops / min(times) / 1e9,
                     "median_gflops": flops / float(np.median(times)) / 1e9}
        log(f"  matmul {name} {size}x{size}: best {out[name]['best_gflops']:.1f} GFLOP/s, "
            f"median {out[name]['median_gflops']:.1f}")
    return out


class TokenCounter:
    """Counts the tokens a model's forward passes process: `real` (attention mask on, the
    useful work) and `processed` (every input position, padding included)."""

    def __init__(self, model):
        self.real = self.processed = self.calls = 0
        self.handle = model.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            return
        mask = kwargs.get("attention_mask")
        n = ids.shape[-1]
        self.calls += 1
        self.processed += int(ids.numel())
        self.real += int(mask[:, -n:].sum()) if mask is not None else int(ids.numel())

    def snapshot(self) -> tuple[int, int, int]:
        return self.real, self.processed, self.calls


# -- workspace ---------------------------------------------------------------------------
def build_workspace(path: Path, task_dir: Path, labeled: int, items: int, embedder, k: int,
                    instruction: str, answer_format: str):
    """Labeled and unlabeled subsamples (seed 0) imported through the library; the unlabeled
    answers are returned, never imported."""
    import pandas as pd

    from semievol.config import TaskConfig
    from semievol.data import ColumnMapping, import_file
    from semievol.retrieval import index_workspace
    from semievol.store import Workspace

    frames = {s: load_split(task_dir, s) for s in ("labeled", "unlabeled")}
    options = sorted({o for f in frames.values() for o in f["options"]})
    fixed = None
    if len(options) == 1:
        import json
        fixed = json.loads(options[0])
    task = TaskConfig(kind="choice", labels=fixed, answer_format=answer_format,
                      instruction=instruction)
    ws = Workspace(path, create=True)
    hidden = {}
    for split, n in (("labeled", labeled), ("unlabeled", items)):
        frame = frames[split]
        frame = frame.sample(n=min(n, len(frame)), random_state=0).sort_index()
        rows = []
        for index, row in frame.iterrows():
            out = {"id": f"{split}:{index}", "question": row["question"]}
            if fixed is None:
                out["options"] = row["options"]
            if split == "unlabeled":
                import json
                hidden[out["id"]] = true_option(row, json.loads(row["options"]))
            else:
                out["answer"] = row["answer"]
            rows.append(out)
        file = path.parent / f"{split}.csv"
        pd.DataFrame(rows).to_csv(file, index=False)
        import_file(ws, file, split, task=task, mapping=ColumnMapping(
            question="question", id="id", answer="answer" if split == "labeled" else None,
            options=None if fixed else "options"))
    index_workspace(ws, embedder, k=k)
    return ws, hidden


def truth_by_item(ws, hidden: dict) -> dict[int, str]:
    return {r["id"]: hidden[r["external_id"]] for r in ws.query(
        "SELECT id, external_id FROM items WHERE split='unlabeled'")}


def precision(labels: list, truth: list, entropy: np.ndarray, agreed: np.ndarray,
              theta: float) -> dict:
    """Precision of all pseudo-labels and of the theta-percentile selection by entropy."""
    from semievol.selection import select

    correct = np.array([lab is not None and lab == t for lab, t in zip(labels, truth)])
    keep = select(entropy, [str(x) for x in labels], agreed, policy="percentile", theta=theta)
    return {"n": len(labels), "precision_all": float(correct.mean()) if len(labels) else None,
            "selected": int(keep.sum()),
            "precision_selected": float(correct[keep].mean()) if keep.any() else None,
            "agreed_share": float(agreed.mean()) if len(labels) else None,
            "unparsed": sum(1 for lab in labels if lab is None)}


# -- 1. pseudo-labeling ------------------------------------------------------------------
def ours_pseudo_labels(ws, rnd, backends: dict, counters: list, stages: Stages, truth: dict,
                       theta: float) -> dict:
    from semievol.collaborators import load_items, run_collaborators
    from semievol.pseudo_labels import build_pseudo_labels
    from semievol.rounds import pool_item_ids

    task = ws.require_task()
    items = load_items(ws, pool_item_ids(ws, rnd))
    before = [c.snapshot() for c in counters]
    calls0 = sum(b.forward_calls for b in backends.values())
    t0 = time.perf_counter()
    with stages.measure("pseudo-label ours: collaborators (run_collaborators)") as rec:
        stats = run_collaborators(ws, rnd.id, items, rnd.config.collaborators, backends, task,
                                  progress=progress_printer("collaborators"))
        rec.update(stats)
    with stages.measure("pseudo-label ours: agreement, reflection, entropy "
                        "(build_pseudo_labels)") as rec:
        paths = build_pseudo_labels(ws, rnd.id, items, len(rnd.config.collaborators),
                                    backends["warmup"], task,
                                    progress=progress_printer("pseudo-labels"))
        rec.update(paths)
    seconds = time.perf_counter() - t0
    after = [c.snapshot() for c in counters]
    rows = ws.query("SELECT item_id, label, path, entropy FROM pseudo_labels WHERE round_id=? "
                    "ORDER BY item_id", (rnd.id,))
    labels = [r["label"] for r in rows]
    result = precision(labels, [truth[r["item_id"]] for r in rows],
                       np.array([r["entropy"] for r in rows], dtype=float),
                       np.array([r["path"] == "agreed" for r in rows]), theta)
    result.update({
        "items": len(items), "seconds": round(seconds, 2), "items_per_second": len(items) / seconds,
        "collaborator_stats": stats, "paths": paths,
        "model_calls": sum(b.forward_calls for b in backends.values()) - calls0,
        "tokens_real": sum(a[0] - b[0] for a, b in zip(after, before)),
        "tokens_processed": sum(a[1] - b[1] for a, b in zip(after, before))})
    return result


def _generate_one(backend, prompt: str, *, seed: int, max_new_tokens: int):
    """One unbatched sampled generation at temperature 1 with per-token log-probabilities,
    as the reference pipeline asks its server for (n=1, logprobs) per request."""
    import torch

    tokenizer, model = backend.tokenizer, backend.model
    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    ids = ids[:, -backend.max_length:].to(backend.device)
    torch.manual_seed(seed)
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                             do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                             max_new_tokens=max_new_tokens,
                             pad_token_id=tokenizer.pad_token_id, output_scores=True,
                             return_dict_in_generate=True)
        scores = model.compute_transition_scores(out.sequences, out.scores,
                                                 normalize_logits=True)
    new = out.sequences[0, ids.shape[1]:]
    text = tokenizer.decode(new, skip_special_tokens=True).strip()
    return text, scores[0].float().cpu().numpy(), int(new.numel())


def reference_pseudo_labels(ws, rnd, backends: dict, counters: list, stages: Stages,
                            truth: dict, theta: float, max_new_tokens: int) -> dict:
    """The reference pipeline's loop: generate, parse, vote, reflect; item by item."""
    from semievol.collaborators import collaborator_prompt, load_items
    from semievol.rounds import pool_item_ids
    from semievol.scoring import agreement
    from semievol.tasks import parse_choice, reflection_messages, render_prompt

    task = ws.require_task()
    items = load_items(ws, pool_item_ids(ws, rnd))
    collaborators = rnd.config.collaborators
    before = [c.snapshot() for c in counters]
    labels, entropies, agreed, generated, generations = [], [], [], 0, 0
    progress = progress_printer("reference loop")
    t0 = time.perf_counter()
    with stages.measure("pseudo-label reference: 4 sampled generations + reflection, "
                        "item by item") as rec:
        for n, item in enumerate(items):
            answers, nlls = [], []
            for c in collaborators:
                backend = backends[c.model]
                prompt = collaborator_prompt(task, backend.tokenizer, item, c.demonstrations)
                text, logprobs, length = _generate_one(backend, prompt, seed=c.seed * 100003
                                                       + item.id, max_new_tokens=max_new_tokens)
                answers.append(parse_choice(text, item.example.options, task.answer_format))
                nlls.append(float(-logprobs.mean()) if logprobs.size else np.nan)
                generated += length
                generations += 1
            _, _, unanimous = agreement(answers)
            if unanimous:
                # The reference scores an agreed item by its first inference's log-probs.
                labels.append(answers[0])
                entropies.append(nlls[0])
                agreed.append(True)
            else:
                warm = backends["warmup"]
                prompt = render_prompt(warm.tokenizer, reflection_messages(task, item.example,
                                                                           answers))
                text, logprobs, length = _generate_one(warm, prompt, seed=7 * 100003 + item.id,
                                                       max_new_tokens=max_new_tokens)
                labels.append(parse_choice(text, item.example.options, task.answer_format))
                entropies.append(float(-logprobs.mean()) if logprobs.size else np.nan)
                agreed.append(False)
                generated += length
                generations += 1
            progress(n + 1, len(items), "items")
        rec.update(items=len(items), generations=generations, generated_tokens=generated)
    seconds = time.perf_counter() - t0
    after = [c.snapshot() for c in counters]
    result = precision(labels, [truth[it.id] for it in items], np.array(entropies, dtype=float),
                       np.array(agreed, dtype=bool), theta)
    result.update({"items": len(items), "seconds": round(seconds, 2),
                   "items_per_second": len(items) / seconds, "generations": generations,
                   "generated_tokens": generated,
                   "tokens_real": sum(a[0] - b[0] for a, b in zip(after, before)),
                   "tokens_processed": sum(a[1] - b[1] for a, b in zip(after, before)),
                   "max_new_tokens": max_new_tokens})
    return result


# -- 3. training -------------------------------------------------------------------------
def training_examples(ws, rnd):
    """The warm-up's own examples (the labeled set, as step_warmup builds them)."""
    from semievol.curation import training_items
    from semievol.models import load_tokenizer, resolve_model_path
    from semievol.rounds import _training_examples

    tokenizer = load_tokenizer(resolve_model_path(rnd.config.model.name_or_path))
    gold = [it for it in training_items(ws, 0) if it["source"] == "gold"]
    return _training_examples(ws, gold, tokenizer), tokenizer


def reference_train(examples, tokenizer, config, progress=None) -> dict:
    """HF-style LoRA loop on the same examples, order, LoRA, schedule and dtype as
    train_lora: every batch padded to max_length, logits over the full vocabulary at every
    position, the loss from `model(input_ids, attention_mask, labels).loss`."""
    import torch
    from peft import LoraConfig as PeftLoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from semievol.finetune import lr_at, sample_order, tokenize
    from semievol.models import pick_device, pick_dtype, resolve_model_path

    model_cfg, lora, train = config.model, config.lora, config.train
    device = pick_device(model_cfg.device)
    use_autocast = pick_dtype(model_cfg.dtype, device) == torch.bfloat16
    torch.manual_seed(train.seed)
    base = AutoModelForCausalLM.from_pretrained(resolve_model_path(model_cfg.name_or_path),
                                                dtype=torch.float32).to(device)
    targets = lora.target_modules if lora.target_modules == "all-linear" else \
        [m.strip() for m in lora.target_modules.split(",")]
    model = get_peft_model(base, PeftLoraConfig(r=lora.r, lora_alpha=lora.alpha,
                                                lora_dropout=lora.dropout,
                                                target_modules=targets, task_type="CAUSAL_LM"))
    model.train()
    rows = tokenize(tokenizer, examples, train.max_length)
    labels = [e.label for e in examples]
    micro, steps = train.batch_size, train.max_steps
    order = sample_order(labels, steps * train.grad_accum, micro,
                         balance=train.class_balance == "sampler", seed=train.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=train.learning_rate, weight_decay=0.0)
    warmup = int(round(train.warmup_ratio * steps))
    pad, width = tokenizer.pad_token_id, train.max_length
    losses, real, processed = [], 0, 0
    t0 = time.perf_counter()
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, steps, warmup, train.learning_rate)
        step_loss = 0.0
        for accum in range(train.grad_accum):
            at = (step * train.grad_accum + accum) * micro
            batch = order[at:at + micro]
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros_like(ids)
            target = torch.full_like(ids, -100)
            for b, i in enumerate(batch):
                seq, answer_start = rows[i]
                ids[b, :len(seq)] = torch.tensor(seq)
                mask[b, :len(seq)] = 1
                target[b, answer_start:len(seq)] = torch.tensor(seq[answer_start:])
            with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=use_autocast):
                out = model(input_ids=ids.to(device), attention_mask=mask.to(device),
                            labels=target.to(device))
            loss = out.loss / train.grad_accum
            loss.backward()
            step_loss += loss.item()
            real += int(mask.sum())
            processed += int(ids.numel())
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(step_loss)
        if progress:
            progress(step + 1, steps, f"step {step + 1}/{steps} loss {step_loss:.4f}")
    seconds = time.perf_counter() - t0
    return {"steps": steps, "seconds": round(seconds, 2), "losses": losses,
            "tokens_real": real, "tokens_processed": processed,
            "tokens_per_second": real / seconds, "processed_tokens_per_second": processed / seconds,
            "dtype": "bfloat16-autocast" if use_autocast else "float32"}


# -- main --------------------------------------------------------------------------------
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
    p.add_argument("--instruction", default="Classify the sentiment of the financial news "
                   "sentence.")
    p.add_argument("--skip-reference", action="store_true",
                   help="skip the slow reference-style baselines")
    p.add_argument("--reduced", action="store_true",
                   help=f"tiny sizes for a smoke run under 10 minutes: {REDUCED}")
    p.add_argument("--out", type=Path, default=None,
                   help="results folder (default bench/results; reduced: bench/results/reduced)")
    p.add_argument("--workdir", type=Path, default=None)
    args = p.parse_args(argv)
    if args.reduced:
        defaults = {a.dest: a.default for a in p._actions}
        for key, value in REDUCED.items():
            if getattr(args, key) == defaults[key]:
                setattr(args, key, value)
    args.out = args.out or (RESULTS / "reduced" if args.reduced else RESULTS)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    import shutil

    from semievol import rounds
    from semievol.backend import load_backend
    from semievol.config import (CalibrationConfig, ModelConfig, RetrievalConfig, RoundConfig,
                                 TrainConfig)
    from semievol.models import set_offline
    from semievol.retrieval import SentenceTransformerEmbedder

    set_offline()
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
        rnd = rounds.open_round(ws, config)

        # 3. training: ours (the warm-up step itself) vs the HF-style loop.
        with stages.measure("train ours: step_warmup (train_lora)") as rec:
            summary = rounds.step_warmup(ws, rnd, embedder=embedder,
                                         progress=progress_printer("train ours", 15))
        ours_train = {**summary, "peak_rss_mb": rec["peak_rss_mb"],
                      "stage_seconds": rec["seconds"]}
        rnd = rounds.get_round(ws, rnd.number)
        import json
        ours_train["losses"] = json.loads(
            (Path(rnd.warmup_adapter) / "training.json").read_text())["losses"]
        examples, tokenizer = training_examples(ws, rnd)
        rows = [len(tokenizer(e.prompt + e.answer, add_special_tokens=False)["input_ids"])
                for e in examples]
        ours_train["example_tokens_mean"] = float(np.mean(rows))
        result["training"] = {"ours": ours_train, "examples": len(examples),
                              "max_length": config.train.max_length}
        if not args.skip_reference:
            with stages.measure("train reference: padded to max_length, full logits") as rec:
                ref = reference_train(examples, tokenizer, config,
                                      progress_printer("train reference", 15))
            result["training"]["reference"] = {**ref, "peak_rss_mb": rec["peak_rss_mb"],
                                               "stage_seconds": rec["seconds"]}

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
               "scoring": _utilisation(2 * params * ours["tokens_real"], ours["seconds"],
                                       peak[score_dtype], score_dtype),
               "scoring_incl_padding": _utilisation(2 * params * ours["tokens_processed"],
                                                    ours["seconds"], peak[score_dtype],
                                                    score_dtype),
               "training": _utilisation(6 * params * ours_train["tokens_per_second"], 1.0,
                                        peak[train_dtype], train_dtype)}
        if "reference" in result["training"]:
            ref_train = result["training"]["reference"]
            mfu["training_reference"] = _utilisation(6 * params * ref_train["tokens_per_second"],
                                                     1.0, peak[train_dtype], train_dtype)
            result["training"]["speedup"] = ours_train["tokens_per_second"] / \
                ref_train["tokens_per_second"]
            result["training"]["peak_rss_ratio"] = ref_train["peak_rss_mb"] / \
                ours_train["peak_rss_mb"]
        if "reference" in result["pseudo_labeling"]:
            ref = result["pseudo_labeling"]["reference"]
            mfu["scoring_reference"] = _utilisation(2 * params * ref["tokens_real"],
                                                    ref["seconds"], peak[score_dtype],
                                                    score_dtype)
        result["flop_utilisation"] = mfu

        # 4. a repeated run with nothing changed.
        result["repeat"] = repeat_run(ws, rnd, embedder, stages)
        ws.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    machine["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    result["stages"] = stages.records
    result["wall_seconds"] = round(time.time() - started, 1)
    write_json(args.out / "speed.json", result)
    text = markdown(result)
    write_text(args.out / "speed.md", text)
    print(text)
    if not args.reduced and args.out.resolve() == RESULTS.resolve() and update_readme():
        log("updated the results summary in bench/README.md")
    log(f"wrote {args.out / 'speed.json'} and speed.md")
    return 0


def _utilisation(flops: float, seconds: float, peak: dict, dtype: str) -> dict:
    achieved = flops / seconds / 1e9 if seconds else None
    return {"achieved_gflops": achieved, "peak_gflops": peak["best_gflops"], "peak_dtype": dtype,
            "utilisation": achieved / peak["best_gflops"] if achieved else None}


class CountingEmbedder:
    """The bundled embedder, loaded only if asked to embed; counts the texts it embeds."""

    def __init__(self):
        from semievol.retrieval import LazyEmbedder
        self.inner = LazyEmbedder("bundled")
        self.name = "bundled"
        self.texts = 0

    def embed(self, texts):
        self.texts += len(texts)
        return self.inner.embed(texts)


def repeat_run(ws, rnd, embedder, stages: Stages) -> dict:
    """Every step again with nothing changed: the library must compute nothing."""
    from semievol import rounds
    from semievol.retrieval import index_workspace

    out = {}
    counting = CountingEmbedder()
    with stages.measure("repeat: index_workspace") as rec:
        out["index"] = {**index_workspace(ws, counting, k=rnd.config.retrieval.k),
                        "texts_embedded": counting.texts}
        rec.update(out["index"])
    with stages.measure("repeat: step_warmup") as rec:
        out["warmup"] = rounds.step_warmup(ws, rnd, embedder=counting)
        out["warmup"]["seconds"] = None
    out["warmup"]["seconds"] = stages.records[-1]["seconds"]
    with stages.measure("repeat: step_label (lazy backends, in-process)") as rec:
        label = rounds.step_label(ws, rnd)
        rec.update(label)
    out["label"] = {**label, "seconds": stages.records[-1]["seconds"]}
    # The same through the CLI, as a user would re-run it: process start and imports included.
    with stages.measure("repeat: `semievol label` CLI (new process)"):
        proc = subprocess.run([sys.executable, "-m", "semievol", "label", str(ws.path)],
                              capture_output=True, text=True, cwd=REPO)
    match = re.search(r"model forward calls (\d+)", proc.stdout)
    out["cli_label"] = {"returncode": proc.returncode, "seconds": stages.records[-1]["seconds"],
                        "model_calls": int(match.group(1)) if match else None,
                        "stdout": proc.stdout.strip()[-400:],
                        "stderr_tail": proc.stderr.strip()[-400:] if proc.returncode else ""}
    out["model_calls_total"] = (out["label"]["model_calls"] or 0) + \
        (out["cli_label"]["model_calls"] or 0)
    out["zero_model_calls"] = (out["label"]["model_calls"] == 0 and
                               out["cli_label"]["model_calls"] == 0 and
                               out["index"]["texts_embedded"] == 0 and
                               bool(out["warmup"].get("skipped")))
    log(f"  repeat: label {out['label']['seconds']:.1f} s in-process / "
        f"{out['cli_label']['seconds']:.1f} s CLI; model calls {out['label']['model_calls']} / "
        f"{out['cli_label']['model_calls']}; texts embedded {counting.texts}")
    return out


def markdown(result: dict) -> str:
    pl, tr, mfu, rep = (result["pseudo_labeling"], result["training"],
                        result["flop_utilisation"], result["repeat"])
    settings = result["settings"]
    ours, ref = pl["ours"], pl.get("reference")

    def pl_row(name, r):
        return [name, r["items"], f"{r['seconds']:.1f}", f"{r['items_per_second']:.3f}",
                pct(r["precision_all"]), f"{r['selected']}", pct(r["precision_selected"]),
                pct(r["agreed_share"]), r["unparsed"], f"{r['tokens_real']:,}"]
    pl_rows = [pl_row("ours: batched option scoring (run_collaborators + "
                      "build_pseudo_labels)", ours)]
    if ref:
        pl_rows.append(pl_row(f"reference-style: {ref['generations']} unbatched sampled "
                              "generations + reflection", ref))
    tr_rows = [["ours: train_lora (own-length batches, logits at answer positions)",
                tr["ours"]["steps"], f"{tr['ours']['seconds']:.1f}",
                f"{tr['ours']['tokens_per_second']:.0f}", "–",
                f"{tr['ours']['peak_rss_mb']:.0f}", f"{tr['ours']['final_loss']:.4f}"]]
    if "reference" in tr:
        r = tr["reference"]
        tr_rows.append(["reference: padded to max_length, full-vocabulary logits everywhere",
                        r["steps"], f"{r['seconds']:.1f}", f"{r['tokens_per_second']:.0f}",
                        f"{r['processed_tokens_per_second']:.0f}", f"{r['peak_rss_mb']:.0f}",
                        f"{r['losses'][-1]:.4f}"])
    peak = result["matmul_peak"]
    mfu_rows = [[name, u["peak_dtype"], f"{u['achieved_gflops']:.1f}", f"{u['peak_gflops']:.1f}",
                 pct(u["utilisation"])] for name, u in mfu.items() if isinstance(u, dict)]
    lines = [
        "# Speed" + (" (reduced mode)" if settings["reduced"] else ""),
        "",
        f"Produced by `{result['command']}` in {result['wall_seconds'] / 60:.1f} min.",
        "",
        f"Model `{settings['model']}` ({result['model_parameters'] / 1e6:.1f}M parameters, "
        f"{result['machine']['model_dtype']}); {settings['items']} unlabeled fpb items "
        f"(answers hidden), {settings['labeled']} labeled, answer format "
        f"{settings['answer_format']}, k={settings['k']}.",
        "",
        "## 1. Pseudo-labeling",
        "",
        "Same items, same 4 collaborator configurations (models and prompts), same warm-up "
        "adapter; models loaded before timing. Precision against the true answers; "
        f"selected = entropy at or below the {settings['theta']:g}th percentile.",
        "",
        md_table(["pipeline", "items", "seconds", "items/s", "precision all", "selected",
                  "precision selected", "agreed share", "unparsed", "tokens (non-pad)"],
                 pl_rows),
        "",
        (f"**Ours is {pl['speedup']:.1f}x faster than the reference-style loop.**" if ref
         else "Reference-style loop skipped."),
        "",
        "## 2. FLOP utilisation",
        "",
        "Matmul peak measured in this run: " + ", ".join(
            f"{d} {v['best_gflops']:.1f} GFLOP/s (best of {v['reps']}, {v['size']}x{v['size']};"
            f" median {v['median_gflops']:.1f})" for d, v in peak.items()) + ".",
        f"Model FLOPs: 2 x {result['model_parameters'] / 1e6:.1f}M params x tokens for a "
        "forward pass, 6 x params x tokens for a training step (the usual MFU convention; "
        "LoRA skips the frozen weights' gradients, so training does less real work than "
        "counted), over non-pad tokens unless noted.",
        "",
        md_table(["work", "dtype", "achieved GFLOP/s", "peak GFLOP/s", "utilisation"],
                 mfu_rows),
        "",
        "## 3. Training",
        "",
        f"{tr['examples']} examples (mean {tr['ours']['example_tokens_mean']:.0f} tokens), "
        f"same sampling order, LoRA and dtype ({tr['ours'].get('dtype')}); max_length "
        f"{tr['max_length']}; tokens/s counts non-pad tokens (padded tokens/s beside it).",
        "",
        md_table(["trainer", "steps", "train s", "tokens/s", "padded tokens/s", "peak RSS MB",
                  "final loss"], tr_rows),
        "",
        (f"**train_lora: {tr['speedup']:.1f}x the tokens/s at {1 / tr['peak_rss_ratio']:.2f}x "
         "the peak RSS of the reference loop.**" if "speedup" in tr else ""),
        "",
        "## 4. Repeated run, nothing changed",
        "",
        md_table(["step", "seconds", "model calls", "computed", "note"], [
            ["index_workspace", f"{_stage(result, 'repeat: index_workspace'):.1f}", "–",
             f"{rep['index']['embedded']} embedded, {rep['index']['queried']} queried",
             f"{rep['index']['texts_embedded']} texts embedded"],
            ["step_warmup", f"{rep['warmup']['seconds']:.1f}", "–",
             "skipped" if rep["warmup"].get("skipped") else "trained", ""],
            ["step_label (in-process, lazy backends)", f"{rep['label']['seconds']:.1f}",
             rep["label"]["model_calls"], rep["label"]["computed"],
             f"cached {rep['label']['cached']}"],
            ["`semievol label` (new process)", f"{rep['cli_label']['seconds']:.1f}",
             rep["cli_label"]["model_calls"], "–", f"exit {rep['cli_label']['returncode']}"]]),
        "",
        f"**Model calls on the repeat: {rep['model_calls_total']} "
        f"({'OK: zero' if rep['zero_model_calls'] else 'NOT ZERO'}).**",
        "",
        "## Stages (wall time, CPU time, peak RSS of the stage)",
        "",
        stages_markdown(result["stages"]),
        "",
        "## Machine",
        "",
        machine_markdown(result["machine"]),
        "",
    ]
    return "\n".join(lines)


def _stage(result: dict, name: str) -> float:
    return next(r["seconds"] for r in result["stages"] if r["stage"] == name)


if __name__ == "__main__":
    sys.exit(main())
