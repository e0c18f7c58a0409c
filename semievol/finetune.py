"""LoRA fine-tuning with the loss on the answer tokens only (warm-up and final training).

Why a loop of our own rather than `Trainer`: the answer is a few tokens after a prompt of a
few hundred, so we run the transformer body once and apply the 49k-wide output layer only at
the answer positions (hidden (B, T, d) -> (n_answer_tokens, d) -> logits), which is most of
the step's memory and much of its time; batches are padded to their own longest sequence,
not to max_length; class-balanced sampling, checkpoints and progress go to the workspace.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from semievol.config import LoraConfig, ModelConfig, TrainConfig, to_dict
from semievol.errors import SemiEvolError

Progress = Callable[[int, int, str], None]
Metric = Callable[[str, int, float], None]


@dataclass
class TrainExample:
    prompt: str       # chat-templated prompt ending where the answer starts
    answer: str       # assistant turn text, end-of-turn token included
    label: str        # class used for balancing (the answer for choice tasks)


def tokenize(tokenizer, examples: list[TrainExample], max_length: int):
    """(input_ids, answer_start) per example; prompts are cut from the left to fit."""
    prompts = tokenizer([e.prompt for e in examples], add_special_tokens=False)["input_ids"]
    answers = tokenizer([e.answer for e in examples], add_special_tokens=False)["input_ids"]
    rows = []
    for p, a in zip(prompts, answers):
        p = p[-max(1, max_length - len(a)):]
        rows.append((p + a, len(p)))
    return rows


def sample_order(labels: list[str], steps: int, batch: int, *, balance: bool, seed: int):
    """Indices for `steps` batches: epochs of shuffled data, or draws with inverse class
    frequency so that every class is seen equally often."""
    rng = random.Random(seed)
    need = steps * batch
    if balance:
        counts = {c: labels.count(c) for c in set(labels)}
        weights = [1.0 / counts[c] for c in labels]
        return rng.choices(range(len(labels)), weights=weights, k=need)
    order = []
    while len(order) < need:
        epoch = list(range(len(labels)))
        rng.shuffle(epoch)
        order += epoch
    return order[:need]


def lr_at(step: int, total: int, warmup: int, peak: float) -> float:
    if step < warmup:
        return peak * (step + 1) / max(1, warmup)
    progress = (step - warmup) / max(1, total - warmup)
    return peak * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def train_lora(examples: list[TrainExample], output_dir: str | Path, *,
               model: ModelConfig, lora: LoraConfig, train: TrainConfig,
               init_adapter: str | Path | None = None, progress: Progress | None = None,
               metric: Metric | None = None) -> dict:
    """Train and save a LoRA adapter to `output_dir`; resumes from its checkpoint if any.

    Returns a summary (steps, final loss, seconds, tokens/s) also saved as training.json.
    """
    import torch
    from peft import LoraConfig as PeftLoraConfig, get_peft_model

    from semievol.models import attach_adapter, load_tokenizer, pick_device, pick_dtype, \
        resolve_model_path, set_offline

    if not examples:
        raise SemiEvolError("Nothing to train on: the training set is empty.")
    set_offline()
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = output_dir / "checkpoint"
    resolved = {"model": to_dict(model), "lora": to_dict(lora), "train": to_dict(train),
                "init_adapter": str(init_adapter) if init_adapter else None,
                "examples": len(examples)}
    # A checkpoint is resumed only by the same training (model, LoRA, hyper-parameters,
    # examples); how long it runs (epochs, max_steps, checkpoint cadence) may change.
    identity = {**resolved, "train": {k: v for k, v in resolved["train"].items()
                                      if k not in ("epochs", "max_steps", "checkpoint_every")}}
    fingerprint = hashlib.sha256(json.dumps(
        [identity, [(e.prompt, e.answer) for e in examples]]).encode("utf-8")).hexdigest()
    resume_from = _usable_checkpoint(checkpoint, fingerprint)

    from transformers import AutoModelForCausalLM

    path = resolve_model_path(model.name_or_path)
    device = pick_device(model.device)
    compute_dtype = pick_dtype(model.dtype, device)
    tokenizer = load_tokenizer(path)
    torch.manual_seed(train.seed)
    # Master weights in float32; bf16 autocast for the matmuls where the hardware has it.
    base = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(device)
    if train.gradient_checkpointing:
        base.gradient_checkpointing_enable()
        base.enable_input_require_grads()
    if resume_from is not None:
        peft_model = attach_adapter(base, resume_from, trainable=True)
    elif init_adapter:
        peft_model = attach_adapter(base, init_adapter, trainable=True)
    else:
        targets = lora.target_modules if lora.target_modules == "all-linear" else \
            [m.strip() for m in lora.target_modules.split(",")]
        peft_model = get_peft_model(base, PeftLoraConfig(
            r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
            target_modules=targets, task_type="CAUSAL_LM"))
    peft_model.train()
    body = peft_model.get_base_model().model          # the transformer without its head
    head = peft_model.get_base_model().lm_head        # not adapted by all-linear LoRA

    rows = tokenize(tokenizer, examples, train.max_length)
    labels = [e.label for e in examples]
    micro = train.batch_size
    per_step = micro * train.grad_accum
    total_steps = train.max_steps or max(1, math.ceil(train.epochs * len(rows) / per_step))
    order = sample_order(labels, total_steps * train.grad_accum, micro,
                         balance=train.class_balance == "sampler", seed=train.seed)
    class_weight = None
    if train.class_balance == "loss":
        counts = {c: labels.count(c) for c in set(labels)}
        class_weight = [len(labels) / (len(counts) * counts[c]) for c in labels]

    params = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=train.learning_rate, weight_decay=0.0)
    warmup = int(round(train.warmup_ratio * total_steps))
    start_step, losses = 0, []
    if resume_from is not None:
        state = torch.load(resume_from / "state.pt", weights_only=False)
        optimizer.load_state_dict(state["optimizer"])
        start_step, losses = state["step"], state["losses"]
    use_autocast = compute_dtype == torch.bfloat16
    pad = tokenizer.pad_token_id
    started, tokens_seen = time.time(), 0

    for step in range(start_step, total_steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, total_steps, warmup, train.learning_rate)
        step_loss = 0.0
        for accum in range(train.grad_accum):
            at = (step * train.grad_accum + accum) * micro
            batch = order[at:at + micro]
            width = max(len(rows[i][0]) for i in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for b, i in enumerate(batch):  # right padding: answers keep their positions
                seq = rows[i][0]
                ids[b, :len(seq)] = torch.tensor(seq)
                mask[b, :len(seq)] = 1
            ids, mask = ids.to(device), mask.to(device)
            # Positions (b, t) whose next token is an answer token.
            pos_b, pos_t, targets, weights = [], [], [], []
            for b, i in enumerate(batch):
                seq, answer_start = rows[i]
                for t in range(answer_start - 1, len(seq) - 1):
                    pos_b.append(b)
                    pos_t.append(t)
                    targets.append(seq[t + 1])
                    weights.append(class_weight[i] if class_weight else 1.0)
            with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=use_autocast):
                hidden = body(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, T, d)
                logits = head(hidden[torch.tensor(pos_b), torch.tensor(pos_t)])       # (n, V)
            token_loss = torch.nn.functional.cross_entropy(
                logits.float(), torch.tensor(targets, device=device), reduction="none")
            w = torch.tensor(weights, device=device)
            loss = (token_loss * w).sum() / w.sum() / train.grad_accum
            loss.backward()
            step_loss += loss.item()
            tokens_seen += int(mask.sum())
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(step_loss)
        # Checkpoint before reporting: a run stopped in a callback (SIGTERM, a locked
        # database) resumes from the step it last reported, not one checkpoint earlier.
        if train.checkpoint_every and (step + 1) % train.checkpoint_every == 0 \
                and step + 1 < total_steps:
            _save_checkpoint(peft_model, optimizer, step + 1, losses, checkpoint, fingerprint)
        if metric:
            metric("train_loss", step + 1, step_loss)
        if progress:
            progress(step + 1, total_steps, f"step {step + 1}/{total_steps} loss {step_loss:.4f}")

    seconds = time.time() - started
    peft_model.save_pretrained(output_dir)
    summary = {"steps": total_steps, "resumed_from": start_step, "final_loss": losses[-1],
               "mean_loss_last10": sum(losses[-10:]) / len(losses[-10:]),
               "seconds": round(seconds, 2),
               "tokens_per_second": round(tokens_seen / seconds, 1) if seconds else None,
               "dtype": "bfloat16-autocast" if use_autocast else "float32", "device": device}
    (output_dir / "semievol_config.json").write_text(json.dumps(resolved, indent=2))
    (output_dir / "training.json").write_text(json.dumps({**summary, "losses": losses}, indent=2))
    for stale in (checkpoint, checkpoint.with_name("checkpoint.old")):
        shutil.rmtree(stale, ignore_errors=True)
    return summary


def _save_checkpoint(peft_model, optimizer, step: int, losses: list[float], path: Path,
                     fingerprint: str) -> None:
    """Adapter + optimizer + step, written beside and swapped in by renames; at every moment
    either `checkpoint` or `checkpoint.old` holds a complete one."""
    import torch

    partial, old = path.with_name(path.name + ".partial"), path.with_name(path.name + ".old")
    shutil.rmtree(partial, ignore_errors=True)
    peft_model.save_pretrained(partial)
    torch.save({"optimizer": optimizer.state_dict(), "step": step, "losses": losses,
                "fingerprint": fingerprint}, partial / "state.pt")
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        path.rename(old)
    partial.rename(path)
    shutil.rmtree(old, ignore_errors=True)


def _usable_checkpoint(path: Path, fingerprint: str) -> Path | None:
    """The newest complete checkpoint written by this same training, if any."""
    import torch

    for candidate in (path, path.with_name(path.name + ".old")):
        state = candidate / "state.pt"
        if state.exists() and torch.load(state, weights_only=False).get(
                "fingerprint") == fingerprint:
            return candidate
    return None
