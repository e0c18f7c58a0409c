"""The CUDA paths: device and dtype choice, option scoring and LoRA training on the GPU.

Skipped wherever no CUDA GPU is visible (CI, the 2-core CPU machines); run them on a GPU
machine with `pytest tests/test_cuda.py`. The scores and the trained adapter are compared
with the CPU's, so a device-placement slip (a tensor left on the CPU, a mask on the wrong
device) fails here rather than on a user's GPU.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from semievol.config import LoraConfig, ModelConfig, TaskConfig, TrainConfig

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible")

PROMPTS = ["A long prompt with many words in it, so that the batch is left padded here",
           "Short one", "Is my router broken?"]
OPTIONS = [["billing account", "outage", "the equipment is broken<|im_end|>"],
           ["x", "yy zz"], ["router", "power cable thing", "a", "b"]]
TASK = TaskConfig(kind="choice", labels=["billing", "outage", "equipment"])
QUESTIONS = [("Charged twice on my bill", "billing"), ("Internet down", "outage"),
             ("Router light is red", "equipment"), ("Refund the late fee", "billing")]


def config(path, device: str, dtype: str = "float32") -> ModelConfig:
    return ModelConfig(name_or_path=str(path), device=device, dtype=dtype)


def sharpened(backend):
    """Larger random weights (as in test_backend): default-init scores are all ~ -log(V)."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in backend.model.named_parameters():
            if "norm" not in name:
                p.copy_((torch.randn(p.shape, generator=generator) * 0.3).to(p.dtype))
    return backend


def test_auto_picks_the_gpu_in_bf16():
    from semievol.model.loading import pick_device, pick_dtype

    assert pick_device("auto") == "cuda"
    assert pick_dtype("auto", "cuda") == torch.bfloat16


def test_scores_on_the_gpu_equal_the_cpu_scores(tiny_model_dir):
    from semievol.model.local import load_backend

    cpu = sharpened(load_backend(config(tiny_model_dir, "cpu")))
    gpu = sharpened(load_backend(config(tiny_model_dir, "cuda")))
    assert next(gpu.model.parameters()).device.type == "cuda"
    on_cpu = cpu.score_continuations(PROMPTS, OPTIONS)
    on_gpu = gpu.score_continuations(PROMPTS, OPTIONS)
    for a, b in zip(on_cpu, on_gpu):
        for x, y in zip(a, b):
            np.testing.assert_allclose(x, y, atol=1e-3, rtol=0)
    dists = gpu.option_distributions(PROMPTS, OPTIONS)
    assert all(abs(d.sum() - 1) < 1e-6 for d in dists)


def test_bf16_scoring_on_the_gpu_stays_close_to_float32(tiny_model_dir):
    from semievol.model.local import load_backend

    full = sharpened(load_backend(config(tiny_model_dir, "cuda", "float32")))
    half = sharpened(load_backend(config(tiny_model_dir, "cuda", "bfloat16")))
    assert next(half.model.parameters()).dtype == torch.bfloat16
    a = full.option_distributions(PROMPTS, OPTIONS)
    b = half.option_distributions(PROMPTS, OPTIONS)
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, atol=0.05)


def prompts(tiny_model_dir) -> tuple[object, list[str]]:
    from semievol.model.loading import load_tokenizer
    from semievol.task.formats import Example, build_messages, render_prompt

    tokenizer = load_tokenizer(str(tiny_model_dir))
    return tokenizer, [render_prompt(tokenizer, build_messages(TASK, Example(q, TASK.labels)))
                       for q, _ in QUESTIONS]


def train(tiny_model_dir, folder, device: str, dtype: str, steps: int) -> list[float]:
    from semievol.training.finetune import TrainExample, train_lora

    tokenizer, texts = prompts(tiny_model_dir)
    examples = [TrainExample(text, a + tokenizer.eos_token, a)
                for text, (_, a) in zip(texts, QUESTIONS)]
    summary = train_lora(examples, folder, model=config(tiny_model_dir, device, dtype),
                         lora=LoraConfig(r=2, alpha=4, dropout=0.0),
                         train=TrainConfig(max_steps=steps, batch_size=4, learning_rate=3e-2,
                                           checkpoint_every=0, class_balance="none",
                                           seed=0))
    assert summary["device"] == device
    return json.loads((folder / "training.json").read_text())["losses"]


def test_float32_training_on_the_gpu_follows_the_cpu_run(tiny_model_dir, tmp_path):
    # Same seed, examples, order and LoRA init, no dropout: only float rounding differs.
    on_cpu = train(tiny_model_dir, tmp_path / "cpu", "cpu", "float32", steps=5)
    on_gpu = train(tiny_model_dir, tmp_path / "gpu", "cuda", "float32", steps=5)
    np.testing.assert_allclose(on_gpu, on_cpu, rtol=1e-3)


def test_bf16_training_on_the_gpu_lowers_the_loss_and_loads_back_on_the_cpu(tiny_model_dir,
                                                                           tmp_path):
    from semievol.model.local import load_backend

    losses = train(tiny_model_dir, tmp_path / "adapter", "cuda", "bfloat16", steps=30)
    assert len(losses) == 30 and all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    # The adapter trained on the GPU scores the same on the CPU.
    _, texts = prompts(tiny_model_dir)
    options = [TASK.labels] * len(texts)
    gpu = load_backend(config(tiny_model_dir, "cuda"), adapter=tmp_path / "adapter")
    cpu = load_backend(config(tiny_model_dir, "cpu"), adapter=tmp_path / "adapter")
    for x, y in zip(gpu.option_distributions(texts, options),
                    cpu.option_distributions(texts, options)):
        np.testing.assert_allclose(x, y, atol=1e-3)
