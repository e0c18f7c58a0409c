"""The model architectures the project loads, trains and exports, and what differs between
them: one table, read by the model check (semievol.model.prepare), LoRA (which layers get
adapters) and the GGUF export (llama.cpp's architecture name and its tensor layout).

A model is known by its config.json `model_type`. Loading always goes through transformers'
own classes for that type: no model's code is run from its folder (`trust_remote_code` is
never set).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from semievol.errors import SemiEvolError

ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
GATED_MLP = ("gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class Architecture:
    label: str
    """What users call it."""
    lora_targets: tuple[str, ...]
    """The linear layers LoRA adapts: every projection of attention and the MLP (the
    paper's all-linear), named as this architecture names them."""
    gguf_arch: str
    """llama.cpp's architecture name (gguf.MODEL_ARCH_NAMES)."""
    rope_interleaved: bool = False
    """llama.cpp's `llama` rope pairs dimensions 2i, 2i+1 while Hugging Face pairs i, i+d/2:
    Q and K rows are permuted on export. The other architectures use the NEOX rope in
    llama.cpp, which pairs as Hugging Face does."""
    norm_offset: float = 0.0
    """Gemma's RMSNorm multiplies by (1 + weight); llama.cpp's by weight: the export adds it."""
    gguf_header: tuple[str, ...] = ()
    """Config fields llama.cpp reads for this architecture beyond the common ones (Gemma's
    soft-capping and sliding window; a Mistral or Qwen2 window is not used by llama.cpp)."""


ARCHITECTURES = {
    "llama": Architecture("Llama", ATTENTION + GATED_MLP, "llama", rope_interleaved=True),
    # llama.cpp runs Mistral's dense models as its llama architecture (same tensors, same rope).
    "mistral": Architecture("Mistral", ATTENTION + GATED_MLP, "llama", rope_interleaved=True),
    "qwen2": Architecture("Qwen2", ATTENTION + GATED_MLP, "qwen2"),
    "qwen3": Architecture("Qwen3", ATTENTION + GATED_MLP, "qwen3"),
    "gemma2": Architecture("Gemma 2", ATTENTION + GATED_MLP, "gemma2", norm_offset=1.0,
                           gguf_header=("attn_logit_softcapping", "final_logit_softcapping",
                                        "sliding_window")),
    "gemma3_text": Architecture("Gemma 3", ATTENTION + GATED_MLP, "gemma3", norm_offset=1.0,
                                gguf_header=("sliding_window",)),
    # Phi-3 fuses Q, K and V into one projection, and gate and up into another.
    "phi3": Architecture("Phi-3", ("qkv_proj", "o_proj", "gate_up_proj", "down_proj"), "phi3"),
}

SUPPORTED = ", ".join(a.label for a in ARCHITECTURES.values())
"""The supported architectures, as the refusals list them."""

NEAR_MISSES = {
    "gemma3": "a Gemma 3 checkpoint with its vision tower (Gemma3ForConditionalGeneration); "
              "the text-only Gemma 3 model (model_type gemma3_text, e.g. Gemma 3 1B) is "
              "supported",
    "gemma": "Gemma 1; Gemma 2 and Gemma 3 are supported",
    "phi": "Phi-1/Phi-2; Phi-3 is supported",
}
"""Architectures users bring that look supported and are not, with what to use instead."""


def architecture_of(model_type: str | None) -> Architecture:
    """The table's entry for a config's `model_type`, or a refusal that says what is
    supported."""
    if model_type in ARCHITECTURES:
        return ARCHITECTURES[model_type]
    why = NEAR_MISSES.get(model_type or "")
    raise SemiEvolError(
        f"The model's architecture ({model_type or 'none stated in config.json'}"
        f"{': ' + why if why else ''}) is not supported. Supported: {SUPPORTED}.")


def lora_targets(model_type: str | None, configured: str) -> str | list[str]:
    """The modules LoRA adapts: `auto` resolves by architecture (all-linear for one the
    table does not know), anything else is the user's list or `all-linear` as given."""
    if configured != "auto":
        return configured if configured == "all-linear" else \
            [m.strip() for m in configured.split(",") if m.strip()]
    known = ARCHITECTURES.get(model_type or "")
    return list(known.lora_targets) if known else "all-linear"


def check_gguf(gguf_file: Path) -> dict:
    """What transformers needs beside a GGUF file to read it right, from its header only:
    {"architecture": llama.cpp's name, "head_dim": the head size when stated}; a refusal when
    it is not a GGUF file or not an architecture of the table."""
    from gguf import GGUFReader

    try:
        fields = GGUFReader(str(gguf_file)).fields
        stated = fields["general.architecture"].contents()
    except (OSError, ValueError, KeyError, IndexError) as exc:
        raise SemiEvolError(f"{gguf_file} is not a readable GGUF file ({exc}); nothing was "
                            "converted.") from exc
    if stated not in {a.gguf_arch for a in ARCHITECTURES.values()}:
        raise SemiEvolError(f"{gguf_file} is a GGUF of the {stated!r} architecture, which is "
                            f"not supported; nothing was converted. Supported: {SUPPORTED}.")
    # transformers' GGUF reader does not read the head size (semievol.model.loading passes it).
    key_length = fields.get(f"{stated}.attention.key_length")
    return {"architecture": stated,
            "head_dim": int(key_length.contents()) if key_length is not None else None}
