"""The reference-style baselines of the speed bench, written the way the SemiEvol reference
code works: pseudo-labeling item by item with sampled generations (and a reflection
generation for disagreements), and an HF-style LoRA loop on padded batches with
full-vocabulary logits at every position."""

from __future__ import annotations

import time

import numpy as np
from common import Stages, progress_printer
from speed_measures import precision

PAD_TO = 256
"""The HF-style reference pads every training batch to this length (Trainer's max_length)."""


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
    from semievol.curation.pool import pool_item_ids
    from semievol.method.collaborators import collaborator_prompt
    from semievol.method.scoring import agreement
    from semievol.model.prompts import PromptBuilder
    from semievol.rounds.record import budget_of
    from semievol.task.answers import parse_choice
    from semievol.task.formats import reflection_messages, render_prompt
    from semievol.workspace.items import load_items

    task = ws.require_task()
    items = load_items(ws, pool_item_ids(ws, rnd.number, rnd.config.unlabeled_limit))
    collaborators = rnd.config.collaborators
    builders = {name: PromptBuilder(task, b.tokenizer, budget_of(rnd))
                for name, b in backends.items()}
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
                prompt = collaborator_prompt(builders[c.model], item, c.demonstrations).text
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


def reference_train(examples, tokenizer, config, progress=None) -> dict:
    """HF-style LoRA loop on the same examples, order, LoRA, schedule and dtype as
    train_lora: every batch padded to max_length, logits over the full vocabulary at every
    position, the loss from `model(input_ids, attention_mask, labels).loss`."""
    import torch
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from semievol.model.architectures import lora_targets
    from semievol.model.loading import pick_device, pick_dtype, resolve_model_path
    from semievol.training.finetune import lr_at, sample_order, tokenize

    model_cfg, lora, train = config.model, config.lora, config.train
    device = pick_device(model_cfg.device)
    use_autocast = pick_dtype(model_cfg.dtype, device) == torch.bfloat16
    torch.manual_seed(train.seed)
    base = AutoModelForCausalLM.from_pretrained(resolve_model_path(model_cfg.name_or_path),
                                                dtype=torch.float32).to(device)
    targets = lora_targets(base.config.model_type, lora.target_modules)
    model = get_peft_model(base, PeftLoraConfig(r=lora.r, lora_alpha=lora.alpha,
                                                lora_dropout=lora.dropout,
                                                target_modules=targets, task_type="CAUSAL_LM"))
    model.train()
    rows = tokenize(tokenizer, examples, PAD_TO)
    labels = [e.label for e in examples]
    micro, steps = train.batch_size, train.max_steps
    order = sample_order(labels, steps * train.grad_accum, micro,
                         balance=train.class_balance == "sampler", seed=train.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=train.learning_rate, weight_decay=0.0)
    warmup = int(round(train.warmup_ratio * steps))
    pad, width = tokenizer.pad_token_id, PAD_TO
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
