"""Every supported architecture end to end, on a tiny random-weight model of each
(conftest.tiny_architecture: Llama, Mistral, Qwen2, Qwen3, Gemma 2, Gemma 3, Phi-3; the
bundled tokenizer stands in for each model's own):

- `prepare_model` checks the folder; an unattended round trains the warm-up and the final
  adapter (LoRA on the architecture's own projections), scores every option with both
  collaborators and evaluates;
- the merged export loads back as the same architecture;
- the GGUF export, in f32, f16 and q8_0, loaded by llama.cpp (.venv-llama's bindings, in
  tests/llama_scores.py) scores the options as the merged model does in transformers, and
  picks the same ones;
- that GGUF, brought back with `prepare_model`, scores as the merged model too.

And the refusals: a GGUF of an unsupported architecture, a folder without a tokenizer, a
model without a chat template, pickle weights, an unknown architecture and a window smaller
than the budget each get one clear message, from the library and the command line, and
leave the workspace and the model cache unchanged.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_ARCHITECTURES, tiny_architecture_config
from server_support import require_llama
from test_engine_cli import semievol
from test_review_first import run, tiny
from test_served import _prompts

from semievol.errors import SemiEvolError
from semievol.model.architectures import ARCHITECTURES, architecture_of
from semievol.model.prepare import check_model, prepare_model

TOLERANCE = {"f32": 5e-3, "f16": 2e-2, "q8_0": 0.15}
"""How far llama.cpp's option probabilities may be from transformers' on the merged model:
with f32 weights only llama.cpp's KV cache rounds (it is f16 by default; measured up to
2.1e-3 on the Llama one); f16 and q8_0 weights round too. These tiny models' large random
weights (std 0.3) make q8_0's rounding show: up to 0.107 measured on the Phi-3 one, on an
item whose two options were 0.39 and 0.60. Picks are compared where they are clear of it."""


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("model_type", TINY_ARCHITECTURES)
def test_an_architecture_prepares_trains_runs_a_round_and_exports(
        model_type, tiny_architecture, filled_workspace, fake_embedder, monkeypatch, tmp_path):
    from transformers import AutoConfig, AutoTokenizer

    from semievol.export.model import export_gguf, export_merged
    from semievol.rounds.record import get_round

    folder = tiny_architecture(model_type)
    monkeypatch.setenv("SEMIEVOL_CACHE", str(tmp_path / "cache"))  # GGUF conversions go here
    arch = ARCHITECTURES[model_type]
    found = prepare_model(str(folder))
    assert found["architecture"] == arch.label and found["model_type"] == model_type
    assert found["lora_targets"] == list(arch.lora_targets)
    assert found["end_of_turn"] == "<|im_end|>"  # the stand-in tokenizer's ChatML template

    ws = filled_workspace
    monkeypatch.setattr("semievol.rounds.steps._embedder", lambda config, embedder: fake_embedder)
    results, _ = run(ws, "round", config=tiny(folder), review=False)
    assert list(results) == ["warmup", "label", "select", "train", "evaluate"]
    rnd = get_round(ws, 1)
    assert rnd.status == "done"
    adapter = json.loads((Path(rnd.final_adapter) / "adapter_config.json").read_text())
    assert set(adapter["target_modules"]) == set(arch.lora_targets)
    unlabeled = {r[0] for r in ws.query("SELECT id FROM items WHERE split='unlabeled'")}
    scored = {r[0] for r in ws.query("SELECT item_id FROM pseudo_labels WHERE round_id=?",
                                     (rnd.id,))}
    assert unlabeled <= scored  # every unlabeled item got its collaborators' answers

    merged = export_merged(ws, 1, tmp_path / "merged")
    assert AutoConfig.from_pretrained(merged).model_type == model_type

    tokenizer = AutoTokenizer.from_pretrained(merged)
    prompts, options = _prompts(tokenizer)
    sequences = [(tokenizer(p, add_special_tokens=False)["input_ids"],
                  tokenizer(o, add_special_tokens=False)["input_ids"])
                 for p, item_options in zip(prompts, options) for o in item_options]
    want = distributions(transformers_scores(merged, sequences), len(options[0]))
    ranked = np.sort(want, axis=1)
    decisive = ranked[:, -1] - ranked[:, -2]  # how clearly the merged model picks its option
    for gguf_type, tolerance in TOLERANCE.items():
        info = export_gguf(ws, 1, tmp_path / gguf_type, gguf_type=gguf_type)
        got = distributions(llama_scores(info["path"], sequences), len(options[0]))
        np.testing.assert_allclose(got, want, atol=tolerance, err_msg=gguf_type)
        # The same pick wherever the merged model's pick is clear of the rounding.
        clear = decisive > 2 * tolerance
        assert clear.sum() >= len(prompts) // 2, "too few clear picks to compare"
        assert (got.argmax(axis=1) == want.argmax(axis=1))[clear].all(), gguf_type

    back = prepare_model(str(tmp_path / "f32" / "gguf_round1" / "model.gguf"))
    # A Mistral GGUF states llama.cpp's `llama` architecture, so it comes back as Llama.
    assert back["model_type"] == ("llama" if model_type == "mistral" else model_type)
    assert back["path"].is_relative_to(tmp_path / "cache")
    np.testing.assert_allclose(
        distributions(transformers_scores(back["path"], sequences), len(options[0])), want,
        atol=2e-3)


@pytest.mark.parametrize("model_type", ("llama", "mistral", "gemma2", "gemma3_text", "phi3"))
def test_a_byte_fallback_vocabulary_reaches_llama_cpp_as_sentencepiece(
        model_type, tiny_architecture, byte_fallback_tokenizer_dir, tmp_path):
    """Gemma, Mistral, Phi-3 and Llama 2 ship SentencePiece-style vocabularies (▁ for
    spaces, byte fallback). Exported as llama.cpp's `llama` tokenizer (scores from the
    merges' ranks, <0xNN> as byte tokens, the space prefix), llama.cpp tokenizes the
    rendered prompts, text with double spaces, an accent and a special token in the middle
    exactly as transformers does, and scores the options as the model does. (Qwen models
    ship byte-level vocabularies, and transformers loads any tokenizer in a Qwen folder with
    Qwen's own splitting rules, so the pairing would test nothing real.)"""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from semievol.export.gguf import write_gguf

    folder = tiny_architecture(model_type, byte_fallback_tokenizer_dir)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    target = tmp_path / "model.gguf"
    info = write_gguf(AutoModelForCausalLM.from_pretrained(folder), folder, target,
                      name="tiny", gguf_type="f32")
    assert info["pre_tokenizer"] is None  # a SentencePiece vocabulary has no pre-tokenizer
    prompts, options = _prompts(tokenizer)
    texts = prompts + ["My bill is  wrong, é!", "x<|im_end|>y", " leading space"]
    assert llama_tokens(target, texts) == [
        tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    assert tokenizer.tokenize("é")[-2:] == ["<0xC3>", "<0xA9>"]  # through byte fallback
    sequences = [(tokenizer(p, add_special_tokens=False)["input_ids"],
                  tokenizer(o, add_special_tokens=False)["input_ids"])
                 for p, item_options in zip(prompts, options) for o in item_options]
    np.testing.assert_allclose(
        distributions(llama_scores(target, sequences), len(options[0])),
        distributions(transformers_scores(folder, sequences), len(options[0])),
        atol=TOLERANCE["f32"])


def transformers_scores(folder: Path, sequences) -> list[float]:
    """Each continuation's summed log-probability given its prompt, by transformers."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    totals = []
    with torch.inference_mode():
        for prompt, continuation in sequences:
            logits = model(torch.tensor([prompt + continuation])).logits[0].double()
            rows = torch.log_softmax(logits[len(prompt) - 1:-1], dim=-1)
            totals.append(float(rows[torch.arange(len(continuation)), continuation].sum()))
    return totals


def llama_scores(gguf: Path, sequences) -> list[float]:
    """The same by llama.cpp, in the llama.cpp environment (tests/llama_scores.py)."""
    return _llama({"gguf": str(gguf), "sequences": sequences})


def llama_tokens(gguf: Path, texts: list[str]) -> list[list[int]]:
    """How llama.cpp tokenizes each text (special tokens parsed, no BOS)."""
    return _llama({"gguf": str(gguf), "texts": texts})


def _llama(request: dict):
    """tests/llama_scores.py's answer to `request`, run in the llama.cpp environment."""
    import subprocess

    done = subprocess.run([require_llama(), str(Path(__file__).with_name("llama_scores.py"))],
                          input=json.dumps(request), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def distributions(totals: list[float], per_item: int) -> np.ndarray:
    """Summed log-probabilities -> each item's distribution over its options."""
    scores = np.array(totals).reshape(-1, per_item)
    scores = np.exp(scores - scores.max(axis=1, keepdims=True))
    return scores / scores.sum(axis=1, keepdims=True)


# -- refusals ------------------------------------------------------------------------------
def unsupported_gguf(path: Path) -> Path:
    """A well-formed GGUF file of an architecture the project does not load (Mamba)."""
    import gguf

    writer = gguf.GGUFWriter(str(path), "mamba")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def damaged_copy(source: Path, target: Path, how: str) -> Path:
    shutil.copytree(source, target)
    if how == "no tokenizer":
        for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
            (target / name).unlink(missing_ok=True)
    elif how == "no chat template":
        (target / "chat_template.jinja").unlink(missing_ok=True)
        settings = json.loads((target / "tokenizer_config.json").read_text())
        settings.pop("chat_template", None)
        (target / "tokenizer_config.json").write_text(json.dumps(settings))
    elif how == "pickle weights":
        (target / "model.safetensors").rename(target / "pytorch_model.bin")
    elif how == "cannot pad":
        settings = json.loads((target / "tokenizer_config.json").read_text())
        for key in ("eos_token", "pad_token"):
            settings.pop(key, None)
        (target / "tokenizer_config.json").write_text(json.dumps(settings))
    elif how == "unknown architecture":
        config = json.loads((target / "config.json").read_text())
        (target / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))
    return target


REFUSALS = {
    "unsupported gguf": "is a GGUF of the 'mamba' architecture, which is not supported",
    "no tokenizer": "has no tokenizer (tokenizer.json or tokenizer.model)",
    "no chat template": "has no chat template",
    "pickle weights": "no safetensors weights (only pytorch_model.bin: pickle files",
    "cannot pad": "cannot pad batches: it has neither a pad token nor an end-of-sequence",
    "unknown architecture": "The model's architecture (gpt2) is not supported. Supported: "
                            "Llama, Mistral, Qwen2, Qwen3, Gemma 2, Gemma 3, Phi-3.",
}


@pytest.fixture
def refused_models(tiny_model_dir, tmp_path) -> dict[str, Path]:
    models = {"unsupported gguf": unsupported_gguf(tmp_path / "mamba.gguf")}
    for how in REFUSALS:
        if how != "unsupported gguf":
            models[how] = damaged_copy(tiny_model_dir, tmp_path / how.replace(" ", "_"), how)
    return models


def test_models_the_project_cannot_use_are_refused_with_the_reason(refused_models, tmp_path,
                                                                    monkeypatch):
    monkeypatch.setenv("SEMIEVOL_CACHE", str(tmp_path / "cache"))
    for how, model in refused_models.items():
        with pytest.raises(SemiEvolError) as refused:
            prepare_model(str(model))
        assert REFUSALS[how] in str(refused.value), how
    assert not (tmp_path / "cache").exists()  # nothing was converted


def test_the_command_line_refuses_them_before_the_workspace_changes(refused_models,
                                                                    filled_workspace):
    ws_path = filled_workspace.path
    before = _dump(ws_path)
    for how, model in refused_models.items():
        for command in (["prepare-model", model], ["round", ws_path, "--model", model]):
            result = semievol(*command, check=False)
            assert result.returncode != 0, (how, command[0])
            assert REFUSALS[how] in result.stderr + result.stdout, (how, command[0])
            assert "Traceback" not in result.stderr, (how, command[0])
    assert _dump(ws_path) == before


def _dump(ws_path: Path) -> list[str]:
    import sqlite3

    with sqlite3.connect(ws_path / "workspace.db") as conn:
        return list(conn.iterdump())


def test_a_context_window_smaller_than_the_budget_is_refused(tiny_model_dir, tmp_path):
    small = tmp_path / "small"
    shutil.copytree(tiny_model_dir, small)
    config = json.loads((small / "config.json").read_text())
    (small / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 256}))
    assert check_model(small, budget=256)["window"] == 256
    with pytest.raises(SemiEvolError, match=r"context window \(256 tokens\) is smaller than "
                                            r"the context budget \(512\)"):
        check_model(small, budget=512)


def test_near_misses_say_what_is_supported_instead():
    with pytest.raises(SemiEvolError, match="text-only Gemma 3 model"):
        architecture_of("gemma3")
    with pytest.raises(SemiEvolError, match="none stated in config.json"):
        architecture_of(None)


def test_lora_targets_follow_the_architecture_unless_the_user_names_them():
    from semievol.model.architectures import lora_targets

    assert lora_targets("phi3", "auto") == ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]
    assert lora_targets("qwen2", "auto") == ["q_proj", "k_proj", "v_proj", "o_proj",
                                             "gate_proj", "up_proj", "down_proj"]
    assert lora_targets("gpt_neox", "auto") == "all-linear"
    assert lora_targets("llama", "all-linear") == "all-linear"
    assert lora_targets("llama", "q_proj, v_proj") == ["q_proj", "v_proj"]


def test_round_setup_notes_what_a_model_is_without_converting_it(tiny_model_dir, tmp_path,
                                                                  monkeypatch):
    """The note under Round setup's model field: a folder's architecture and window; a GGUF
    file not yet converted, from its header only (nothing lands in the cache); a refusal's
    reason."""
    from transformers import AutoModelForCausalLM

    from semievol.export.gguf import write_gguf
    from semievol.views.setup import model_note

    monkeypatch.setenv("SEMIEVOL_CACHE", str(tmp_path / "cache"))
    assert model_note(str(tiny_model_dir)) == (True, (
        "Llama: context window 1024 tokens, vocabulary 49,152, LoRA on q_proj, k_proj, "
        "v_proj, o_proj, gate_proj, up_proj, down_proj."))
    gguf = tmp_path / "tiny.gguf"
    write_gguf(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tiny_model_dir, gguf,
               name="tiny", gguf_type="f32")
    usable, note = model_note(str(gguf))
    assert usable and "llama.cpp's llama architecture: it is converted once" in note
    assert not (tmp_path / "cache").exists()
    usable, note = model_note(str(unsupported_gguf(tmp_path / "mamba.gguf")))
    assert not usable and "'mamba' architecture, which is not supported" in note
    assert model_note(str(tiny_model_dir), 2048)[1].startswith(
        "The model's context window (1024 tokens) is smaller than the context budget (2048)")


def test_the_card_header_carries_the_rounds_test_metrics_in_model_index_form(filled_workspace,
                                                                              tmp_path):
    """The Hub header of an exported card, read back by huggingface_hub's own parser: base
    model, license, library, dataset, and the round's stored test accuracy and macro-F1 as
    model-index results."""
    from conftest import add_round
    from huggingface_hub import ModelCard

    from semievol.export.model_card import card_data
    from semievol.method.evaluate import store_evaluation

    ws = filled_workspace
    round_id = add_round(ws)
    store_evaluation(ws, {"model": "round", "split": "test", "accuracy": 0.8125,
                          "macro_f1": 0.75}, round_id=round_id)
    path = tmp_path / "README.md"
    ModelCard(f"---\n{card_data(ws, 1, library='peft').to_yaml()}\n---\n# card").save(path)
    data = ModelCard.load(path).data
    assert (data.base_model, data.license, data.library_name) == (
        "HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0", "peft")
    assert data.datasets == [ws.path.name]
    results = {r.metric_type: r for r in data.eval_results}
    assert results["accuracy"].metric_value == 0.8125
    assert results["f1"].metric_value == 0.75 and results["f1"].dataset_split == "test"


def test_llama3_rope_scaling_reaches_llama_cpp(tmp_path):
    """Llama 3.1's rope scaling (rope_type llama3) goes into the GGUF as llama.cpp's
    `rope_freqs` factors: llama.cpp then scores as transformers does, where the same weights
    with plain rope score measurably otherwise (so the factors are what make them agree)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from semievol.export.gguf import write_gguf
    from semievol.model.loading import bundled_model_dir

    tokenizer = AutoTokenizer.from_pretrained(bundled_model_dir())
    scaled = tiny_architecture_config("llama", tokenizer, rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16})
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(scaled)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" not in name:
                parameter.normal_(0.0, 0.3)
    model.save_pretrained(tmp_path / "scaled")
    tokenizer.save_pretrained(tmp_path / "scaled")
    plain = json.loads((tmp_path / "scaled" / "config.json").read_text())
    for key in ("rope_scaling", "rope_parameters"):
        plain.pop(key, None)
    shutil.copytree(tmp_path / "scaled", tmp_path / "plain")
    (tmp_path / "plain" / "config.json").write_text(json.dumps(plain))

    text = " ".join(["The quarterly report says revenue grew while costs fell."] * 4)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    sequences = [(ids[:n], ids[n:n + 2]) for n in (20, 30, 40)]
    write_gguf(model, tmp_path / "scaled", tmp_path / "scaled.gguf", name="tiny",
               gguf_type="f32")
    want = np.array(transformers_scores(tmp_path / "scaled", sequences))
    unscaled = np.array(transformers_scores(tmp_path / "plain", sequences))
    got = np.array(llama_scores(tmp_path / "scaled.gguf", sequences))
    assert np.abs(unscaled - want).max() > 0.1  # the scaling matters at these positions
    np.testing.assert_allclose(got, want, atol=0.02)


def test_the_gguf_export_refuses_what_llama_cpp_would_read_otherwise(tiny_model_dir, tmp_path):
    """Refused before the file is opened: an architecture outside the table, a rope scaling
    the writer does not carry (Phi-3's longrope), an attention scale llama.cpp does not use,
    a vocabulary that is neither byte-level nor byte-fallback BPE (a Unigram one)."""
    from transformers import AutoTokenizer, GemmaConfig

    from semievol.export.gguf import exportable, tokenizer_fields
    from semievol.model.loading import bundled_model_dir

    tokenizer = AutoTokenizer.from_pretrained(bundled_model_dir())
    with pytest.raises(SemiEvolError, match=r"architecture \(gemma: Gemma 1; Gemma 2 and "):
        exportable(GemmaConfig())
    longrope = tiny_architecture_config("phi3", tokenizer, rope_scaling={
        "rope_type": "longrope", "long_factor": [1.0] * 8, "short_factor": [1.0] * 8,
        "original_max_position_embeddings": 512})
    with pytest.raises(SemiEvolError, match="uses 'longrope' rope scaling"):
        exportable(longrope)
    scaled = tiny_architecture_config("gemma2", tokenizer, query_pre_attn_scalar=144)
    with pytest.raises(SemiEvolError, match="query_pre_attn_scalar=144, not its head size"):
        exportable(scaled)
    assert exportable(tiny_architecture_config("gemma2", tokenizer)).label == "Gemma 2"

    unigram = tmp_path / "unigram"
    shutil.copytree(tiny_model_dir, unigram)
    spec = json.loads((unigram / "tokenizer.json").read_text())
    spec["model"] = {"type": "Unigram", "vocab": [["<unk>", 0.0]], "unk_id": 0}
    (unigram / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(SemiEvolError, match="is a 'Unigram' vocabulary; the GGUF export "):
        tokenizer_fields(unigram)
    assert tokenizer_fields(tiny_model_dir)["tokens"][2] == "<|im_end|>"
