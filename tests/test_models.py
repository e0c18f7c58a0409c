"""Loading the base model and LoRA adapters; device and dtype choice; offline resolution."""

from __future__ import annotations

import pytest

from semievol.config import ModelConfig
from semievol.errors import SemiEvolError
from semievol.model.loading import (adapter_digest, attach_adapter, load_model, pick_device,
                                    pick_dtype, resolve_model_path)

torch = pytest.importorskip("torch")


def tiny_config(path) -> ModelConfig:
    return ModelConfig(name_or_path=str(path), device="cpu", dtype="float32")


def make_adapter(tiny_model_dir, out, *, seed=1):
    """A LoRA adapter (r=4, all-linear) with non-zero B, so it changes the outputs."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                                 init_lora_weights=False, task_type="CAUSAL_LM"))
    peft_model.eval()
    peft_model.save_pretrained(out)
    return peft_model


@pytest.fixture
def batch(tiny_model_dir):
    from semievol.model.loading import load_tokenizer

    tokenizer = load_tokenizer(str(tiny_model_dir))
    return tokenizer(["Is my router broken?", "Refund the double charge please, twice"],
                     return_tensors="pt", padding=True)


def test_load_tiny_model(tiny_model_dir):
    grad_before = torch.is_grad_enabled()
    model, tokenizer = load_model(tiny_config(tiny_model_dir))
    assert not model.training
    assert next(model.parameters()).device.type == "cpu"
    assert next(model.parameters()).dtype == torch.float32
    assert model.config.num_hidden_layers == 2 and model.config.hidden_size == 16
    assert tokenizer.padding_side == "left"
    assert tokenizer.pad_token is not None and tokenizer.pad_token_id is not None
    assert tokenizer.pad_token == tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.chat_template  # the bundled ChatML template came along
    # Loading for inference must not switch autograd off for the whole thread (training
    # later in the same process needs it).
    assert torch.is_grad_enabled() == grad_before
    enc = tokenizer(["short", "a somewhat longer text"], return_tensors="pt", padding=True)
    assert enc["attention_mask"][0, 0] == 0 and enc["attention_mask"][0, -1] == 1
    with torch.no_grad():
        logits = model(**enc).logits
    assert logits.shape[:2] == enc["input_ids"].shape
    assert logits.shape[-1] == model.config.vocab_size


def test_load_model_explicit_dtype(tiny_model_dir):
    model, _ = load_model(tiny_config(tiny_model_dir), dtype=torch.bfloat16)
    assert next(model.parameters()).dtype == torch.bfloat16


def test_load_model_of_a_folder_that_is_no_model(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SemiEvolError, match="could not be loaded"):
        load_model(tiny_config(tmp_path / "empty"))


def test_pick_dtype_rules(monkeypatch):
    for device in ("cpu", "cuda"):
        assert pick_dtype("float32", device) is torch.float32
        assert pick_dtype("bfloat16", device) is torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert pick_dtype("auto", "cuda") is torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert pick_dtype("auto", "cuda") is torch.float16
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    assert pick_dtype("auto", "cpu") is torch.bfloat16
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    assert pick_dtype("auto", "cpu") is torch.float32


def test_pick_device_rules(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device("auto") == "cpu"
    assert pick_device("cpu") == "cpu"
    with pytest.raises(SemiEvolError, match="no CUDA GPU"):
        pick_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device("auto") == "cuda"


def test_resolve_model_path(tiny_model_dir, tmp_path, monkeypatch):
    from semievol.model.loading import bundled_model_dir

    assert resolve_model_path(str(tiny_model_dir)) == str(tiny_model_dir)
    assert resolve_model_path("bundled") == str(bundled_model_dir())
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty hub cache
    missing = "semievol-tests/no-such-model-anywhere"
    with pytest.raises(SemiEvolError) as info:
        resolve_model_path(missing)
    assert missing in str(info.value) and "not available locally" in str(info.value)
    with pytest.raises(SemiEvolError, match="not available locally"):
        load_model(ModelConfig(name_or_path=missing, device="cpu", dtype="float32"))


def test_adapter_is_merged_and_matches_peft_logits(tiny_model_dir, tmp_path, batch):
    from peft import PeftModel

    adapter = tmp_path / "adapter"
    peft_model = make_adapter(tiny_model_dir, adapter)
    with torch.no_grad():
        expected = peft_model(**batch).logits
    base, _ = load_model(tiny_config(tiny_model_dir))
    merged, tokenizer = load_model(tiny_config(tiny_model_dir), adapter=adapter)
    assert not isinstance(merged, PeftModel)
    assert not merged.training and tokenizer.padding_side == "left"
    assert not any("lora" in name for name, _ in merged.named_parameters())
    with torch.no_grad():
        got = merged(**batch).logits
        plain = base(**batch).logits
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(plain, expected, atol=1e-4)  # the adapter does change outputs

    unmerged, _ = load_model(tiny_config(tiny_model_dir), adapter=adapter, merge=False)
    assert isinstance(unmerged, PeftModel)
    with torch.no_grad():
        torch.testing.assert_close(unmerged(**batch).logits, expected, atol=1e-4, rtol=1e-4)


def test_adapter_digest_follows_weights(tiny_model_dir, tmp_path):
    assert adapter_digest(None) == "none"
    first = tmp_path / "first"
    peft_model = make_adapter(tiny_model_dir, first, seed=1)
    digest = adapter_digest(first)
    assert len(digest) == 16 and digest == adapter_digest(str(first))
    same = tmp_path / "same"
    peft_model.save_pretrained(same)
    assert adapter_digest(same) == digest
    with torch.no_grad():
        name, param = next((n, p) for n, p in peft_model.named_parameters() if "lora_B" in n)
        param.add_(0.5)
    changed = tmp_path / "changed"
    peft_model.save_pretrained(changed)
    assert adapter_digest(changed) != digest


def test_attach_adapter_needs_adapter_config(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    folder = tmp_path / "not-an-adapter"
    folder.mkdir()
    (folder / "adapter_model.safetensors").write_bytes(b"")
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    with pytest.raises(SemiEvolError, match="adapter_config.json"):
        attach_adapter(base, folder)
    with pytest.raises(SemiEvolError, match="No complete LoRA adapter"):
        load_model(tiny_config(tiny_model_dir), adapter=tmp_path / "missing")


def test_output_head_gets_a_contiguous_last_position(tiny_model_dir):
    """A merged model's weights are frozen; the last-position slice must reach the head
    contiguous, or torch.matmul copies the whole head once per row (see semievol/model/loading.py)."""
    import torch
    from transformers import AutoModelForCausalLM

    model, tokenizer = load_model(tiny_config(tiny_model_dir))
    model.requires_grad_(False)
    plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    seen = []
    model.get_output_embeddings().register_forward_hook(
        lambda _module, args, _out: seen.append(args[0].is_contiguous()))
    batch = tokenizer(["a b c d e f", "a b"], return_tensors="pt", padding=True)
    with torch.inference_mode():
        logits = model(**batch, logits_to_keep=1).logits
        expected = plain(**batch, logits_to_keep=1).logits
    assert seen == [True]
    torch.testing.assert_close(logits, expected)
