"""Training on two processes with accelerate (DDP over gloo on CPU): the same warm-up as one
process with the same global batch, loss for loss, and an adapter that loads and scores."""

from __future__ import annotations

import json

import numpy as np
import pytest

from semievol.config import LoraConfig, ModelConfig, TrainConfig
from semievol.errors import SemiEvolError
from semievol.training.finetune import TrainExample

PAIRS = [("The bill is wrong", "billing"), ("Internet down", "outage"),
         ("Router broken", "equipment"), ("Refund my charge", "billing"),
         ("No connection", "outage"), ("Replace the router", "equipment"),
         ("Invoice too high", "billing"), ("Broadband drops", "outage")]


def _examples(tokenizer):
    from semievol.config import TaskConfig
    from semievol.model.prompts import PromptBuilder
    from semievol.task.formats import Example

    task = TaskConfig(kind="choice", labels=["billing", "outage", "equipment"])
    builder = PromptBuilder(task, tokenizer, 256)
    out = []
    for text, label in PAIRS:
        prompt, target = builder.training(Example(text, task.labels), label)
        out.append(TrainExample(prompt.text, target, label))
    return out


def _train(tmp_path, tiny_model_dir, processes: int):
    from semievol.model.loading import load_tokenizer
    from semievol.training.finetune import train_lora

    examples = _examples(load_tokenizer(str(tiny_model_dir)))
    seen = []
    summary = train_lora(
        examples, tmp_path / f"adapter-{processes}",
        model=ModelConfig(name_or_path=str(tiny_model_dir), dtype="float32", device="cpu"),
        lora=LoraConfig(r=4, alpha=8, dropout=0.0),  # no dropout: the runs can match exactly
        train=TrainConfig(learning_rate=5e-3, max_steps=4, batch_size=4, processes=processes,
                          checkpoint_every=0),
        progress=lambda done, total, message: seen.append((done, total)))
    losses = json.loads((tmp_path / f"adapter-{processes}" / "training.json").read_text())
    return summary, losses["losses"], seen


def test_two_processes_follow_one(tmp_path, tiny_model_dir):
    single, single_losses, _ = _train(tmp_path, tiny_model_dir, 1)
    double, double_losses, progress = _train(tmp_path, tiny_model_dir, 2)
    assert double["processes"] == 2 and single["processes"] == 1
    np.testing.assert_allclose(double_losses, single_losses, rtol=1e-4, atol=1e-5)
    assert progress[-1] == (4, 4)  # the first process's progress reached the parent

    from semievol.model.local import load_backend

    model = ModelConfig(name_or_path=str(tiny_model_dir), dtype="float32", device="cpu")
    one = load_backend(model, adapter=tmp_path / "adapter-1")
    two = load_backend(model, adapter=tmp_path / "adapter-2")
    prompts = [e.prompt for e in _examples(one.tokenizer)[:3]]
    options = [["billing", "outage", "equipment"]] * 3
    np.testing.assert_allclose(two.option_distributions(prompts, options),
                               one.option_distributions(prompts, options), atol=1e-4)


def test_a_batch_smaller_than_the_processes_is_refused():
    with pytest.raises(SemiEvolError, match="cannot be shared by 4 processes"):
        TrainConfig(batch_size=2, processes=4)
