"""Bringing a model in: what `semievol prepare-model SOURCE` does, and what a round checks
before its first step (semievol.rounds.steps.preflight).

A source is `bundled`, a local Hugging Face folder or a GGUF file (converted once to a
safetensors folder in the cache: semievol.model.loading). The check reads files and the
tokenizer, never the weights, and refuses with the reason and the fix:
- an architecture outside semievol.model.architectures;
- weights that are not safetensors (a .bin file is a pickle, and loading one can run code);
- no tokenizer, or one that cannot pad (neither a pad nor an eos token);
- no chat template, or one that cannot render a system turn and a question;
- a context window smaller than the round's context budget.
"""

from __future__ import annotations

import json
from pathlib import Path

from semievol.config import ModelConfig
from semievol.errors import SemiEvolError
from semievol.model.architectures import architecture_of, lora_targets
from semievol.model.loading import load_tokenizer, resolve_model_path
from semievol.model.prompts import context_window
from semievol.task.formats import end_of_turn, render_prompt

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")


def check_model(path: str | Path, *, budget: int | None = None) -> dict:
    """What the project needs of a model folder, checked; returns what was found."""
    folder = Path(path)
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SemiEvolError(f"{folder} has no readable config.json ({exc}); give a Hugging "
                            "Face model folder or a GGUF file.") from exc
    arch = architecture_of(config.get("model_type"))
    if not any(folder.glob("*.safetensors")):
        other = sorted(p.name for p in folder.glob("*") if p.suffix in (".bin", ".pt", ".pth"))
        raise SemiEvolError(
            f"{folder} has no safetensors weights" + (
                f" (only {', '.join(other[:3])}: pickle files, which can run code when "
                "loaded, so they are not)" if other else "") +
            ". Save the model with `save_pretrained(..., safe_serialization=True)` first.")
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise SemiEvolError(f"{folder} has no tokenizer ({' or '.join(TOKENIZER_FILES)}); "
                            "copy the tokenizer files of the model it was saved from into it.")
    try:
        tokenizer = load_tokenizer(str(folder))
    except Exception as exc:  # noqa: BLE001 (any failure of a user's files is one message)
        raise SemiEvolError(f"The tokenizer in {folder} could not be loaded: {exc}") from exc
    if tokenizer.pad_token is None:
        raise SemiEvolError(f"The tokenizer in {folder} cannot pad batches: it has neither a "
                            "pad token nor an end-of-sequence token to pad with.")
    if not tokenizer.chat_template:
        raise SemiEvolError(
            f"The model in {folder} has no chat template (tokenizer_config.json's "
            "chat_template, or chat_template.jinja): prompts are built with the model's own "
            "template. Use the instruct version of the model, or add its template.")
    try:
        render_prompt(tokenizer, [{"role": "system", "content": "Answer."},
                                  {"role": "user", "content": "Question?"}])
    except Exception as exc:  # noqa: BLE001 (a template's own error is the message)
        raise SemiEvolError(f"The chat template in {folder} cannot render a system turn "
                            f"and a question: {exc}") from exc
    window = context_window(folder)
    if budget and window and window < budget:
        raise SemiEvolError(f"The model's context window ({window} tokens) is smaller than "
                            f"the context budget ({budget}); lower the budget to {window} or "
                            "less.")
    return {"path": folder, "architecture": arch.label, "model_type": config["model_type"],
            "window": window, "lora_targets": lora_targets(config["model_type"], "auto"),
            "end_of_turn": end_of_turn(tokenizer), "vocabulary": len(tokenizer)}


def model_summary(found: dict) -> str:
    """What `check_model` found, as the CLI and Round setup say it: "context window 8192
    tokens, vocabulary 49,152, LoRA on q_proj, ..." ."""
    targets = found["lora_targets"]
    return (f"context window {found['window'] or 'not stated'} tokens, vocabulary "
            f"{found['vocabulary']:,}, LoRA on "
            f"{', '.join(targets) if isinstance(targets, list) else targets}")


def prepare_model(source: str, *, budget: int | None = None) -> dict:
    """The model `source` names, converted once where needed and checked: what a round
    will load. A refused GGUF file leaves nothing in the cache."""
    source = source.strip()
    if budget is not None:
        ModelConfig(context_budget=budget)  # the budget's own rule, before any conversion
    path = resolve_model_path(source)
    return {**check_model(path, budget=budget), "source": source}
