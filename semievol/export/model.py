"""The round's model as files a deployment loads: the adapter, the merged model, and the
merged model as GGUF with an Ollama Modelfile and a model card (semievol.export.gguf,
semievol.export.model_card). Names are never reused (semievol.export.paths).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from semievol.errors import SemiEvolError
from semievol.export.gguf import GGUF_TYPES, write_gguf
from semievol.export.model_card import model_card
from semievol.export.modelfile import modelfile
from semievol.export.paths import export_folder, free_path, staged
from semievol.model.loading import load_model, load_tokenizer, require_adapter, resolve_model_path
from semievol.rounds.record import get_round
from semievol.workspace.store import Workspace


def _final_adapter(ws: Workspace, round_number: int) -> Path:
    rnd = get_round(ws, round_number)
    if not rnd.final_adapter:
        raise SemiEvolError(f"Round {round_number} has no trained adapter to export; run "
                            "`semievol train WORKSPACE` first.",
                            app=f"Round {round_number} has no trained adapter to export: train "
                                "it on the Train and evaluate page first.")
    return require_adapter(rnd.final_adapter)


def export_adapter(ws: Workspace, round_number: int, out_dir: str | Path | None = None) -> Path:
    """The round's trained adapter folder (its checkpoints left out), with its model card."""
    source = _final_adapter(ws, round_number)
    target = free_path(export_folder(ws, out_dir) / f"adapter_round{round_number}")
    with staged(target) as partial:
        shutil.copytree(source, partial, ignore=shutil.ignore_patterns("checkpoint*"))
        tokenizer = load_tokenizer(resolve_model_path(
            get_round(ws, round_number).config.model.name_or_path))
        (partial / "README.md").write_text(
            model_card(ws, round_number, model_file=target.name, tokenizer=tokenizer),
            encoding="utf-8")
    return target


def _merged_model(ws: Workspace, round_number: int):
    """The base model with the round's adapter merged in (float32), and its tokenizer."""
    import torch

    config = get_round(ws, round_number).config.model
    adapter = _final_adapter(ws, round_number)
    return load_model(config, adapter=adapter, dtype=torch.float32)


def export_merged(ws: Workspace, round_number: int, out_dir: str | Path | None = None) -> Path:
    """Base model with the round's adapter merged in, saved with its tokenizer (float32)."""
    folder = export_folder(ws, out_dir)
    model, tokenizer = _merged_model(ws, round_number)
    target = free_path(folder / f"merged_round{round_number}")
    with staged(target) as partial:
        model.save_pretrained(partial)
        tokenizer.padding_side = "right"
        tokenizer.save_pretrained(partial)
    return target


def export_gguf(ws: Workspace, round_number: int, out_dir: str | Path | None = None, *,
                gguf_type: str = "f16") -> dict:
    """A folder a deployment loads: model.gguf (the merged model), an Ollama Modelfile and
    README.md, the model card from the workspace's evidence."""
    if gguf_type not in GGUF_TYPES:  # before the model loads
        raise SemiEvolError(f"GGUF type must be one of {', '.join(GGUF_TYPES)}; got "
                            f"{gguf_type!r}.")
    rnd = get_round(ws, round_number)
    folder = export_folder(ws, out_dir)
    model, tokenizer = _merged_model(ws, round_number)
    target = free_path(folder / f"gguf_round{round_number}")
    name = "model.gguf"
    with staged(target) as partial:  # whole or not at all
        partial.mkdir()
        info = write_gguf(model, Path(resolve_model_path(rnd.config.model.name_or_path)),
                          partial / name, name=f"{ws.path.name} round {round_number}",
                          gguf_type=gguf_type)
        (partial / "Modelfile").write_text(modelfile(name, tokenizer, ws.require_task()),
                                           encoding="utf-8")
        (partial / "README.md").write_text(model_card(ws, round_number, model_file=name,
                                                      gguf=info, tokenizer=tokenizer),
                                           encoding="utf-8")
    return {**info, "path": target / name, "folder": target}
