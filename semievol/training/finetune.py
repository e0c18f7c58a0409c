"""LoRA fine-tuning with the loss on the answer tokens only (warm-up and final training).

Why a loop of our own rather than `Trainer`: the answer is a few tokens after a prompt of a
few hundred, so we run the transformer body once and apply the 49k-wide output layer only at
the answer positions (hidden (B, T, d) -> (n_answer_tokens, d) -> logits), which is most of
the step's memory and much of its time; batches are padded to their own longest sequence,
not to max_length; class-balanced sampling, checkpoints and progress go to the workspace.

The parts, in the order `train_lora` runs them: `fingerprint` (what identifies a training,
so only the same one resumes), `prepare` (model, LoRA, data order, optimizer), `train_step`
(one optimizer step over its micro-batches), checkpointing (semievol.training.checkpoints).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from semievol.config import LoraConfig, ModelConfig, TrainConfig
from semievol.errors import SemiEvolError
from semievol.model.architectures import lora_targets
from semievol.model.loading import (attach_adapter, load_tokenizer, model_classes, pick_device,
                                    pick_dtype, resolve_model_path, set_offline)
from semievol.model.prompts import resolve_budget
from semievol.profiling import count_tokens, stage
from semievol.saved_config import to_dict
from semievol.training.checkpoints import (remove_checkpoints, restore, save_checkpoint,
                                           usable_checkpoint)
from semievol.training.distributed import launch_training
from semievol.training.lora_forward import fuse_lora_forward

Progress = Callable[[int, int, str], None]
Metric = Callable[[str, int, float], None]


@dataclass
class TrainExample:
    prompt: str       # chat-templated prompt ending where the answer starts
    answer: str       # assistant turn text, end-of-turn token included
    label: str        # class used for balancing (the answer for choice tasks)
    weight: float = 1.0  # its loss weight (a confidence-weighted pseudo-label: below 1)


def tokenize(tokenizer, examples: list[TrainExample], max_length: int):
    """(input_ids, answer_start) per example. Prompts are built to fit the context budget
    (semievol.model.prompts); cutting from the left here is only a last guard."""
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


def resolved_config(examples, model: ModelConfig, lora: LoraConfig, train: TrainConfig,
                    init_adapter) -> dict:
    """The config saved beside the adapter (semievol_config.json)."""
    return {"model": to_dict(model), "lora": to_dict(lora), "train": to_dict(train),
            "init_adapter": str(init_adapter) if init_adapter else None,
            "examples": len(examples)}


def fingerprint(resolved: dict, examples: list[TrainExample]) -> str:
    """What a checkpoint must match to be resumed: the model, LoRA, hyper-parameters and
    examples; how long it runs (epochs, max_steps, min_steps, checkpoint cadence) and on how many
    processes (the same global batch either way) may change."""
    free = ("epochs", "max_steps", "min_steps", "checkpoint_every", "processes",
            "accelerate_config")
    identity = {**resolved, "train": {k: v for k, v in resolved["train"].items()
                                      if k not in free}}
    # A weight enters only where it is not 1, so a checkpoint of an unweighted training
    # keeps the fingerprint it had before weights existed.
    return hashlib.sha256(json.dumps(
        [identity, [(e.prompt, e.answer) if e.weight == 1.0 else (e.prompt, e.answer, e.weight)
                    for e in examples]]).encode("utf-8")).hexdigest()


@dataclass
class Training:
    """Everything one training run holds between steps."""
    peft_model: object
    body: object            # the transformer without its head
    head: object            # the output layer (not adapted by all-linear LoRA)
    params: list            # the trainable (LoRA) parameters
    optimizer: object
    rows: list              # (token ids, answer start) per example
    order: list             # example index per micro-batch slot, for every step
    example_weight: list | None  # each example's loss weight (class balance x its own)
    total_steps: int
    warmup_steps: int
    device: str
    use_autocast: bool
    pad: int
    shard: "Shard"
    dropouts: list = field(default_factory=list)  # shared LoRA dropouts (lora_dropout.py)


@dataclass
class Shard:
    """This process's part of a multi-process training (semievol.training.distributed): rank `rank`
    of `world` takes every world-th example of each micro-batch, and `total` sums a value
    over the processes. One process: rank 0 of 1, `total` is the value itself."""
    rank: int = 0
    world: int = 1
    accelerator: object = None

    def total(self, value):
        return value if self.world == 1 else self.accelerator.reduce(value, "sum")

    @property
    def main(self) -> bool:
        return self.rank == 0


def prepare(examples: list[TrainExample], *, model: ModelConfig, lora: LoraConfig,
            train: TrainConfig, init_adapter, resume_from: Path | None,
            shard: Shard | None = None) -> Training:
    """Load the base model in float32 (master weights), attach LoRA (new, the init adapter,
    or the checkpoint's), tokenize, fix the sampling order and build the optimizer. With a
    multi-process `shard`, the transformer body is wrapped by accelerate (DDP), so the LoRA
    gradients are averaged over the processes after every backward."""
    import torch
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    (AutoModelForCausalLM,) = model_classes("transformers", "AutoModelForCausalLM")
    path = resolve_model_path(model.name_or_path)
    device = pick_device(model.device)
    compute_dtype = pick_dtype(model.dtype, device)
    tokenizer = load_tokenizer(path)
    torch.manual_seed(train.seed)
    # Master weights in float32; bf16 autocast for the matmuls where the hardware has it.
    # Eager attention on CPU: SDPA's CPU flash-attention backward took 17% of a training
    # step (bundled model, batch 8 x ~70 tokens, 2 cores: 2.2 s a step with SDPA, 2.0 eager).
    # On a GPU SDPA is the fast one.
    attention = {"attn_implementation": "eager"} if device == "cpu" else {}
    base = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32,
                                                **attention).to(device)
    if train.gradient_checkpointing:
        base.gradient_checkpointing_enable()
        base.enable_input_require_grads()
    if resume_from is not None:
        peft_model = attach_adapter(base, resume_from, trainable=True)
    elif init_adapter:
        peft_model = attach_adapter(base, init_adapter, trainable=True)
    else:
        peft_model = get_peft_model(base, PeftLoraConfig(
            r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
            target_modules=lora_targets(base.config.model_type, lora.target_modules),
            task_type="CAUSAL_LM"))
    peft_model.train()

    # lora_dropout subclasses torch.nn.Module, so it loads torch: imported here, not at top.
    from semievol.training.lora_dropout import share_dropout_masks

    dropouts = share_dropout_masks(peft_model)
    fuse_lora_forward(peft_model)

    rows = tokenize(tokenizer, examples, resolve_budget(model))
    labels = [e.label for e in examples]
    total_steps = train.total_steps(len(rows))
    order = sample_order(labels, total_steps * train.grad_accum, train.batch_size,
                         balance=train.class_balance == "sampler", seed=train.seed)
    example_weight = None
    if train.class_balance == "loss":
        counts = {c: labels.count(c) for c in set(labels)}
        example_weight = [len(labels) / (len(counts) * counts[c]) for c in labels]
    if any(e.weight != 1.0 for e in examples):
        example_weight = [(example_weight[k] if example_weight else 1.0) * e.weight
                          for k, e in enumerate(examples)]
    params = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=train.learning_rate, weight_decay=0.0)
    shard = shard or Shard()
    body = peft_model.get_base_model().model
    if shard.world > 1:
        body = shard.accelerator.prepare_model(body)  # DDP: identical LoRA start, mean grads
        torch.manual_seed(train.seed + shard.rank)    # each process its own dropout masks
    return Training(peft_model, body, peft_model.get_base_model().lm_head, params, optimizer,
                    rows, order, example_weight, total_steps,
                    int(round(train.warmup_ratio * total_steps)), device,
                    compute_dtype == torch.bfloat16, tokenizer.pad_token_id, shard, dropouts)


def _micro_batch(t: Training, batch: list[int]):
    """Right-padded ids and mask (answers keep their positions), and the (b, t) positions
    whose next token is an answer token, with their targets and loss weights."""
    import torch

    width = max(len(t.rows[i][0]) for i in batch)
    ids = torch.full((len(batch), width), t.pad, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    pos_b, pos_t, targets, weights = [], [], [], []
    for b, i in enumerate(batch):
        seq, answer_start = t.rows[i]
        ids[b, :len(seq)] = torch.tensor(seq)
        mask[b, :len(seq)] = 1
        for pos in range(answer_start - 1, len(seq) - 1):
            pos_b.append(b)
            pos_t.append(pos)
            targets.append(seq[pos + 1])
            weights.append(t.example_weight[i] if t.example_weight else 1.0)
    return ids.to(t.device), mask.to(t.device), pos_b, pos_t, targets, weights


ATTENTION_CELLS = 1 << 20
"""The most attention scores one forward pass of a training batch may hold: pieces x the
longest sequence squared. Eager attention keeps (pieces, heads, T, T) scores per layer for
the backward (about 8 bytes a cell with its softmax): a batch of 8 pubmedqa prompts of
~1,000 tokens held 18-23 GB on the bundled model. At this cap one forward holds ~2.3 GB of
them; short texts (a batch of 8 up to 362 tokens) are never split."""


def memory_pieces(rows: list, batch: list[int], cells: int = ATTENTION_CELLS) -> list[list[int]]:
    """`batch` split into pieces run one after another, each within `cells` attention scores
    (a single sequence is never split); the batch itself, in its order, when it fits."""
    longest = max(len(rows[i][0]) for i in batch)
    if len(batch) * longest ** 2 <= cells:
        return [batch]
    pieces: list[list[int]] = []
    for i in sorted(batch, key=lambda i: -len(rows[i][0])):  # the longest first
        piece = pieces[-1] if pieces else None
        if piece and (len(piece) + 1) * len(rows[piece[0]][0]) ** 2 <= cells:
            piece.append(i)
        else:
            pieces.append([i])
    return pieces


def train_step(t: Training, step: int, train: TrainConfig) -> tuple[float, int]:
    """One optimizer step (its `grad_accum` micro-batches); returns (loss, tokens seen).

    A micro-batch of long sequences runs in pieces (memory_pieces) whose gradients add up
    to the whole micro-batch's: every piece's loss is normalised by the whole micro-batch's
    weight."""
    import contextlib

    import torch

    for group in t.optimizer.param_groups:
        group["lr"] = lr_at(step, t.total_steps, t.warmup_steps, train.learning_rate)
    step_loss, tokens = 0.0, 0
    shard = t.shard
    for accum in range(train.grad_accum):
        at = (step * train.grad_accum + accum) * train.batch_size
        batch = t.order[at:at + train.batch_size][shard.rank::shard.world]
        # Normalised by the whole micro-batch's weight (every process's answer tokens),
        # times the processes because DDP averages their gradients: the same gradient as
        # one process on the whole batch in one piece.
        weight = shard.total(torch.tensor(float(sum(
            (len(t.rows[i][0]) - t.rows[i][1])
            * (t.example_weight[i] if t.example_weight else 1.0)
            for i in batch)), device=t.device)).clamp_min(1e-12)  # all weights 0: no step
        pieces = memory_pieces(t.rows, batch)
        local_sum = 0.0
        for k, piece in enumerate(pieces):
            ids, mask, pos_b, pos_t, targets, weights = _micro_batch(t, piece)
            # DDP exchanges gradients on the last piece's backward only (each process runs
            # one synchronised backward per micro-batch, however many pieces it has).
            last = k == len(pieces) - 1
            sync = contextlib.nullcontext() if last or shard.world == 1 else t.body.no_sync()
            with sync:
                with torch.autocast(device_type=t.device, dtype=torch.bfloat16,
                                    enabled=t.use_autocast):
                    hidden = t.body(input_ids=ids, attention_mask=mask).last_hidden_state
                    logits = t.head(hidden[torch.tensor(pos_b), torch.tensor(pos_t)])  # (n, V)
                token_loss = torch.nn.functional.cross_entropy(
                    logits.float(), torch.tensor(targets, device=t.device), reduction="none")
                local = (token_loss * torch.tensor(weights, device=t.device)).sum()
                (local * shard.world / weight / train.grad_accum).backward()
            for dropout in t.dropouts:  # the backward has used the masks: free them now
                dropout.forget()
            local_sum = local_sum + local.detach()
            tokens += int(mask.sum())
        step_loss += (shard.total(local_sum) / weight / train.grad_accum).item()
    tokens = int(shard.total(torch.tensor(tokens, device=t.device)))
    torch.nn.utils.clip_grad_norm_(t.params, 1.0)
    t.optimizer.step()
    t.optimizer.zero_grad(set_to_none=True)
    count_tokens(tokens, training=True)
    return step_loss, tokens


def train_lora(examples: list[TrainExample], output_dir: str | Path, *,
               model: ModelConfig, lora: LoraConfig, train: TrainConfig,
               init_adapter: str | Path | None = None, progress: Progress | None = None,
               metric: Metric | None = None, shard: Shard | None = None) -> dict:
    """Train and save a LoRA adapter to `output_dir`; resumes from its checkpoint if any.
    With `train.processes` > 1 the same training runs under `accelerate launch`
    (semievol.training.distributed), which calls back here with each process's `shard`.

    Returns a summary (steps, final loss, seconds, tokens/s) also saved as training.json.
    """
    if not examples:
        raise SemiEvolError("Nothing to train on: the training set is empty.")
    if train.processes > 1 and shard is None:

        return launch_training(examples, output_dir, model=model, lora=lora, train=train,
                               init_adapter=init_adapter, progress=progress, metric=metric)
    shard = shard or Shard()
    set_offline()
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = output_dir / "checkpoint"
    resolved = resolved_config(examples, model, lora, train, init_adapter)
    digest = fingerprint(resolved, examples)
    _warn_unusable(checkpoint)
    resume_from = usable_checkpoint(checkpoint, digest)
    with stage("load model + LoRA"):
        t = prepare(examples, model=model, lora=lora, train=train, init_adapter=init_adapter,
                    resume_from=resume_from, shard=shard)
    start_step, losses = restore(resume_from, t.optimizer) if resume_from else (0, [])
    started = time.time()
    with stage("optimizer steps"):
        tokens_seen = _run_steps(t, train, start_step, losses, checkpoint, digest,
                                 progress, metric)
    seconds = time.time() - started
    if not shard.main:  # the first process saves; the others only trained
        return {"steps": t.total_steps, "rank": shard.rank}
    t.peft_model.save_pretrained(output_dir)
    summary = {"steps": t.total_steps, "resumed_from": start_step, "final_loss": losses[-1],
               "mean_loss_last10": sum(losses[-10:]) / len(losses[-10:]),
               "seconds": round(seconds, 2),
               "tokens_per_second": round(tokens_seen / seconds, 1) if seconds else None,
               "dtype": "bfloat16-autocast" if t.use_autocast else "float32",
               "device": t.device, "processes": shard.world}
    (output_dir / "semievol_config.json").write_text(json.dumps(resolved, indent=2))
    (output_dir / "training.json").write_text(json.dumps({**summary, "losses": losses}, indent=2))
    remove_checkpoints(checkpoint)
    return summary


def _run_steps(t: Training, train: TrainConfig, start_step: int, losses: list[float],
               checkpoint: Path, digest: str, progress, metric) -> int:
    """The optimizer steps from `start_step` on, checkpointed every `checkpoint_every`;
    appends to `losses`, returns the tokens seen."""
    tokens_seen = 0
    for step in range(start_step, t.total_steps):
        step_loss, tokens = train_step(t, step, train)
        tokens_seen += tokens
        losses.append(step_loss)
        # Checkpoint before reporting: a run stopped in a callback (SIGTERM, a locked
        # database) resumes from the step it last reported, not one checkpoint earlier.
        if train.checkpoint_every and (step + 1) % train.checkpoint_every == 0 \
                and step + 1 < t.total_steps and t.shard.main:
            save_checkpoint(t.peft_model, t.optimizer, step + 1, losses, checkpoint, digest)
        if metric:
            metric("train_loss", step + 1, step_loss)
            # The rate this step used (train_step sets it from lr_at), for a tracker.
            metric("learning_rate", step + 1, t.optimizer.param_groups[0]["lr"])
        if progress:
            progress(step + 1, t.total_steps, f"step {step + 1}/{t.total_steps} "
                                              f"loss {step_loss:.4f}")
    return tokens_seen


def _warn_unusable(checkpoint: Path) -> None:
    """Say so when a checkpoint folder holds a pickle (an older format, or a planted file):
    it is never loaded, because unpickling can run code."""
    for folder in (checkpoint, checkpoint.with_name(checkpoint.name + ".old")):
        pickled = sorted(p.name for p in folder.glob("*.pt")) + sorted(
            p.name for p in folder.glob("*.pkl")) if folder.is_dir() else []
        if pickled:
            print(f"warning: {folder} holds {', '.join(pickled)}: pickled files are never "
                  "loaded (they could run code); training starts without that checkpoint.",
                  file=sys.stderr)
