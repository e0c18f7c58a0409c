"""A model in this process behind the `Backend` protocol: `LocalBackend` wraps one loaded
transformers model (the base, or the base with a merged adapter) and `LazyBackend` loads one
on first use.

Scoring cost model (why it looks like this): every prompt is run once, sorted by length and
batched, keeping only the last position's logits; each option's few tokens then run on a
copy-free KV cache that is cropped back after each option. A 5-way label set therefore costs
one prompt forward plus five tiny forwards, not five full ones, and no full-vocabulary
logits are ever materialised over the prompt.
"""

from __future__ import annotations

import numpy as np

from semievol.model.backend import DeferredBackend, Progress, normalised
from semievol.model.loading import (adapter_digest, load_model, load_tokenizer, pick_device,
                                    pick_dtype, resolve_model_path)
from semievol.model.prompts import resolve_budget
from semievol.profiling import count_tokens, stage


class LocalBackend:
    def __init__(self, model, tokenizer, *, name: str, batch_size: int = 16,
                 max_length: int = 1024):
        self.model = model
        self.tokenizer = tokenizer
        self.name = name  # goes into cache keys: model path, adapter digest, dtype
        self.batch_size = batch_size
        # The context budget: prompts are built to fit it (semievol.model.prompts); cutting from
        # the left here is only a last guard for a prompt built some other way.
        self.max_length = max_length
        self.calls = 0  # forward passes, counted so a cached re-run shows it computed nothing
        # (prompt, continuations) -> token log-probs, for this process's lifetime: the entropy
        # pass (paper eq. 6) re-scores the plain prompt that the warm-up collaborator without
        # demonstrations has just scored, and gets it for free.
        self._memo: dict[tuple, list[np.ndarray]] = {}

    @property
    def device(self):
        return next(self.model.parameters()).device

    def _tokens(self, texts: list[str]) -> list[list[int]]:
        return self.tokenizer(texts, add_special_tokens=False)["input_ids"]

    def _left_pad(self, rows: list[list[int]]):
        import torch

        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, width - len(row):] = torch.tensor(row)
            mask[i, width - len(row):] = 1
        return ids.to(self.device), mask.to(self.device)

    def score_continuations(self, prompts: list[str], continuations: list[list[str]],
                            *, progress: Progress | None = None) -> list[list[np.ndarray]]:
        """Token log-probabilities of each continuation after its prompt.

        result[i][j] is a float array, one entry per token of continuations[i][j].
        """
        keys = [(p, tuple(c)) for p, c in zip(prompts, continuations)]
        todo = [i for i, key in enumerate(keys) if key not in self._memo]
        if todo:
            fresh = self._score([prompts[i] for i in todo], [continuations[i] for i in todo],
                                progress=progress)
            self._memo.update((keys[i], scores) for i, scores in zip(todo, fresh))
        return [self._memo[key] for key in keys]

    def _score(self, prompts: list[str], continuations: list[list[str]], *,
               progress: Progress | None) -> list[list[np.ndarray]]:
        import torch

        prompt_ids = [ids[-self.max_length:] for ids in self._tokens(prompts)]
        cont_ids = [self._tokens(c) if c else [] for c in continuations]
        result: list[list[np.ndarray]] = [[None] * len(c) for c in continuations]
        order = sorted(range(len(prompts)), key=lambda i: -len(prompt_ids[i]))
        for start in range(0, len(order), self.batch_size):
            rows = order[start:start + self.batch_size]
            with torch.inference_mode():
                self._score_batch(rows, prompt_ids, cont_ids, result)
            if progress:
                progress(min(start + self.batch_size, len(order)), len(order), "scoring")
        return result

    def _score_batch(self, rows, prompt_ids, cont_ids, result) -> None:
        import torch

        ids, mask = self._left_pad([prompt_ids[i] for i in rows])
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions,
                         use_cache=True, logits_to_keep=1)
        self.calls += 1
        count_tokens(int(mask.sum()))
        first = torch.log_softmax(out.logits[:, -1].float(), dim=-1)  # (B, V)
        cache = out.past_key_values
        lengths = mask.sum(-1)  # real prompt lengths, for the options' positions
        pad = self.tokenizer.pad_token_id
        n_options = max(len(cont_ids[i]) for i in rows)
        for j in range(n_options):
            conts = [cont_ids[i][j] if j < len(cont_ids[i]) else [pad] for i in rows]
            for b, i in enumerate(rows):
                if j < len(cont_ids[i]):
                    result[i][j] = np.array([first[b, conts[b][0]].item()], dtype=np.float64)
            width = max(len(c) for c in conts) - 1
            if width == 0:
                continue  # single-token options (letters): the prompt's last logits suffice
            # Feed tokens 0..n-2 of each option (right-padded) to predict tokens 1..n-1.
            feed = torch.full((len(rows), width), pad, dtype=torch.long, device=self.device)
            feed_mask = torch.zeros_like(feed)
            for b, c in enumerate(conts):
                feed[b, :len(c) - 1] = torch.tensor(c[:-1])
                feed_mask[b, :len(c) - 1] = 1
            out = self.model(input_ids=feed, attention_mask=torch.cat([mask, feed_mask], -1),
                             position_ids=lengths[:, None] + torch.arange(width, device=self.device),
                             cache=cache, use_cache=True)
            self.calls += 1
            count_tokens(int(feed_mask.sum()))
            logp = torch.log_softmax(out.logits.float(), dim=-1)  # (B, width, V)
            cache.crop(-width)  # drop this option's tokens; the prompt cache is reused
            for b, i in enumerate(rows):
                c = conts[b]
                if j < len(cont_ids[i]) and len(c) > 1:
                    rest = logp[b, torch.arange(len(c) - 1), torch.tensor(c[1:])]
                    result[i][j] = np.concatenate([result[i][j], rest.double().cpu().numpy()])

    def option_distributions(self, prompts: list[str], options: list[list[str]],
                             *, progress: Progress | None = None) -> list[np.ndarray]:
        """Normalised probability over each prompt's options from their total log-likelihood."""
        scores = self.score_continuations(prompts, options, progress=progress)
        return [normalised(per_option) for per_option in scores]

    def generate(self, prompts: list[str], *, temperature: float = 0.0, seed: int = 0,
                 max_new_tokens: int = 32, progress: Progress | None = None
                 ) -> list[tuple[str, list[float]]]:
        """(text, per-token log-probabilities) per prompt; batched, sorted by length."""
        import torch

        prompt_ids = [ids[-self.max_length:] for ids in self._tokens(prompts)]
        order = sorted(range(len(prompts)), key=lambda i: -len(prompt_ids[i]))
        results: list = [None] * len(prompts)
        for start in range(0, len(order), self.batch_size):
            rows = order[start:start + self.batch_size]
            ids, mask = self._left_pad([prompt_ids[i] for i in rows])
            torch.manual_seed(seed + start)
            with torch.inference_mode():
                out = self.model.generate(
                    input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                    do_sample=temperature > 0, temperature=temperature or None, top_k=None,
                    top_p=None, pad_token_id=self.tokenizer.pad_token_id,
                    output_scores=True, return_dict_in_generate=True)
                scores = self.model.compute_transition_scores(out.sequences, out.scores,
                                                              normalize_logits=True)
            self.calls += len(out.scores)
            count_tokens(int(mask.sum()) + int((out.sequences[:, ids.shape[1]:]
                                                != self.tokenizer.pad_token_id).sum()))
            new = out.sequences[:, ids.shape[1]:]
            for b, i in enumerate(rows):
                keep = new[b] != self.tokenizer.pad_token_id
                text = self.tokenizer.decode(new[b][keep], skip_special_tokens=True)
                results[i] = (text.strip(), scores[b][keep].float().cpu().tolist())
            if progress:
                progress(min(start + self.batch_size, len(order)), len(order), "generating")
        return results


def backend_name(model_config, adapter=None) -> str:
    """What a backend's outputs depend on: model weights, adapter content, dtype."""
    dtype = pick_dtype(model_config.dtype, pick_device(model_config.device))
    return f"{resolve_model_path(model_config.name_or_path)}|{adapter_digest(adapter)}|{dtype}"


def load_backend(model_config, *, adapter=None, batch_size: int = 16) -> LocalBackend:
    """A LocalBackend for the base model, or the base with `adapter` merged in."""
    model, tokenizer = load_model(model_config, adapter=adapter)
    return LocalBackend(model, tokenizer, name=backend_name(model_config, adapter),
                        batch_size=batch_size, max_length=resolve_budget(model_config))


class LazyBackend(DeferredBackend):
    """A LocalBackend whose model loads on the first call that needs it: a step whose
    answers are all cached builds its prompts (tokenizer only) and loads no weights."""

    def __init__(self, model_config, adapter=None, *, batch_size: int = 16):
        self.model_config, self.adapter, self.batch_size = model_config, adapter, batch_size
        self.name = backend_name(model_config, adapter)
        self.tokenizer = load_tokenizer(resolve_model_path(model_config.name_or_path))

    def _make(self) -> LocalBackend:
        with stage("load model" + (" + merge adapter" if self.adapter else "")):
            return load_backend(self.model_config, adapter=self.adapter,
                                batch_size=self.batch_size)
