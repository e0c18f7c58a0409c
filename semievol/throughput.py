"""This machine's measured speed (tokens per second for inference and for training, per
model, device, dtype and thread count), kept in the workspace and in the machine's cache
folder. run_steps records it after each step; semievol.estimate reads it."""

from __future__ import annotations

import json
import time
from pathlib import Path

SETTING = "throughput"


def _key(model_config) -> str:
    from semievol.models import pick_device, pick_dtype, resolve_model_path

    device = pick_device(model_config.device)
    return (f"{resolve_model_path(model_config.name_or_path)}|{device}|"
            f"{pick_dtype(model_config.dtype, device)}|threads={_threads()}")


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def _machine_file() -> Path:
    from semievol.models import cache_dir

    return cache_dir() / "throughput.json"


def record(ws, model_config, kind: str, tokens: int, seconds: float) -> None:
    """Remember a measured speed (`kind`: inference or training) for this model here."""
    if tokens < 1000 or seconds <= 0:  # too little to say anything
        return
    key = _key(model_config)
    entry = {"tokens_per_second": tokens / seconds, "measured_at": time.time()}
    stored = dict(ws.get_setting(SETTING) or {})
    stored.setdefault(key, {})[kind] = entry
    with ws.transaction() as conn:
        ws.set_setting(SETTING, stored, conn)
    path = _machine_file()
    try:
        machine = json.loads(path.read_text()) if path.exists() else {}
        machine.setdefault(key, {})[kind] = entry
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(machine, indent=2))
    except (OSError, ValueError):
        pass  # a read-only cache only costs the next estimate its measurement


def measured(ws, model_config) -> tuple[dict, dict]:
    """({kind: entry} stored in the workspace, {kind: entry} stored on this machine)."""
    key = _key(model_config)
    stored = (ws.get_setting(SETTING) or {}).get(key, {}) if ws is not None else {}
    try:
        machine = json.loads(_machine_file().read_text()).get(key, {})
    except (OSError, ValueError):
        machine = {}
    return stored, machine
