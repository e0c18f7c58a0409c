"""Resumable training checkpoints in formats that cannot run code.

A checkpoint folder holds the LoRA adapter (`adapter_model.safetensors`, as PEFT writes it),
the optimizer's tensors and the torch RNG state (`optimizer.safetensors`), and everything
else as JSON (`state.json`: the training's fingerprint, the step, the losses so far, the
optimizer's plain settings). Nothing is unpickled: a workspace shared with someone cannot
run code on their machine through a planted checkpoint. The fingerprint in `state.json` is
checked before any tensor is read, so a checkpoint from another training is never used.

Folders are swapped in by renames: at every moment either `checkpoint` or `checkpoint.old`
holds a complete one.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

STATE_FILE = "state.json"
TENSORS_FILE = "optimizer.safetensors"
ADAPTER_FILE = "adapter_model.safetensors"
FORMAT = 2  # 1 was a pickled state.pt (no longer read)


def save_checkpoint(peft_model, optimizer, step: int, losses: list[float], path: Path,
                    fingerprint: str) -> None:
    """Adapter + optimizer + RNG + step, written beside `path` and swapped in."""
    import torch
    from safetensors.torch import save_file

    partial, old = path.with_name(path.name + ".partial"), path.with_name(path.name + ".old")
    shutil.rmtree(partial, ignore_errors=True)
    peft_model.save_pretrained(partial)
    optimizer_state = optimizer.state_dict()
    tensors, plain = {}, {}
    for index, entry in optimizer_state["state"].items():
        for key, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"state.{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                plain[f"{index}.{key}"] = value
    tensors["rng.torch"] = torch.get_rng_state()
    save_file(tensors, str(partial / TENSORS_FILE))
    (partial / STATE_FILE).write_text(json.dumps({
        "format": FORMAT, "fingerprint": fingerprint, "step": step, "losses": losses,
        "param_groups": optimizer_state["param_groups"], "plain_state": plain}))
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        path.rename(old)
    partial.rename(path)
    shutil.rmtree(old, ignore_errors=True)


def read_state(folder: Path) -> dict | None:
    """The JSON state of a checkpoint folder, or None when it is missing or unreadable."""
    try:
        state = json.loads((folder / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def usable_checkpoint(path: Path, fingerprint: str) -> Path | None:
    """The newest complete checkpoint written by this same training (same fingerprint, in
    this format, with its tensor files present), if any. Reads JSON only."""
    for candidate in (path, path.with_name(path.name + ".old")):
        state = read_state(candidate)
        if (state is not None and state.get("format") == FORMAT
                and state.get("fingerprint") == fingerprint
                and (candidate / TENSORS_FILE).is_file() and (candidate / ADAPTER_FILE).is_file()):
            return candidate
    return None


def restore(folder: Path, optimizer) -> tuple[int, list[float]]:
    """Load the optimizer state and the RNG state of a checkpoint `usable_checkpoint` chose;
    returns (step, losses)."""
    import torch
    from safetensors.torch import load_file

    state = read_state(folder)
    tensors = load_file(str(folder / TENSORS_FILE))
    entries: dict[int, dict] = {}
    for name, value in tensors.items():
        if name.startswith("state."):
            _, index, key = name.split(".", 2)
            entries.setdefault(int(index), {})[key] = value
    for name, value in state["plain_state"].items():
        index, key = name.split(".", 1)
        entries.setdefault(int(index), {})[key] = value
    optimizer.load_state_dict({"state": entries, "param_groups": state["param_groups"]})
    torch.set_rng_state(tensors["rng.torch"])
    return int(state["step"]), [float(x) for x in state["losses"]]


def remove_checkpoints(path: Path) -> None:
    for stale in (path, path.with_name(path.name + ".old"), path.with_name(path.name + ".partial")):
        shutil.rmtree(stale, ignore_errors=True)
