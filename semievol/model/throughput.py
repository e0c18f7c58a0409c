"""This machine's measured speed: tokens per second for inference and for training (per
model, device, dtype and thread count), kept in the workspace and in the machine's cache
folder (run_steps records it after each step; semievol.runs.estimate reads it), and the
arithmetic peak, a model-shaped matrix product timed here (`matmul_speed`, the one
measurement the estimate and the benches use)."""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path

from semievol.model.loading import cache_dir, pick_device, pick_dtype, resolve_model_path

SETTING = "throughput"
MODEL_SHAPED = (3584, 576, 1536)
"""A product the bundled model computes: (batch x tokens) rows of the 576-wide hidden state
by a 576 x 1,536 MLP weight."""


def _key(model_config) -> str:
    device = pick_device(model_config.device)
    return (f"{resolve_model_path(model_config.name_or_path)}|{device}|"
            f"{pick_dtype(model_config.dtype, device)}|threads={_threads()}")


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def _machine_file() -> Path:
    return cache_dir() / "throughput.json"


def record_speed(ws, model_config, kind: str, tokens: int, seconds: float, *,
                 min_tokens: int = 1000) -> None:
    """Remember a measured speed (`kind`: inference or training) for this model here. A step
    that put fewer than `min_tokens` through the model says too little (a few items left to
    answer); a deliberate measurement (semievol.runs.calibrate) sets its own."""
    if tokens < min_tokens or seconds <= 0:
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


def forget_machine_speed(model_config) -> bool:
    """Remove this model's measured speeds from the machine's cache file (a bench starting
    as a fresh machine would); True when there were some."""
    path, key = _machine_file(), _key(model_config)
    try:
        machine = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    if machine.pop(key, None) is None:
        return False
    path.write_text(json.dumps(machine, indent=2))
    return True


def measured(ws, model_config) -> tuple[dict, dict]:
    """({kind: entry} stored in the workspace, {kind: entry} stored on this machine)."""
    key = _key(model_config)
    stored = (ws.get_setting(SETTING) or {}).get(key, {}) if ws is not None else {}
    try:
        machine = json.loads(_machine_file().read_text()).get(key, {})
    except (OSError, ValueError):
        machine = {}
    return stored, machine


def matmul_speed(shape: tuple[int, int, int] = MODEL_SHAPED, dtype_name: str = "float32", *,
                 seconds: float = 0.5, runs: int | None = None) -> dict:
    """GFLOP/s of an (m x k) by (k x n) torch.matmul here, after a warm-up (thread pool,
    kernel choice): {best, median, runs}, over `runs` products, or as many as fit in
    `seconds`."""
    import statistics

    import torch

    dtype = torch.bfloat16 if "bfloat16" in dtype_name else torch.float32
    m, k, n = shape
    a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
    for _ in range(2):
        torch.matmul(a, b)
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while (len(times) < runs) if runs else (time.perf_counter() < deadline or not times):
        start = time.perf_counter()
        torch.matmul(a, b)
        times.append(time.perf_counter() - start)
    flops = 2 * m * k * n
    return {"best": flops / min(times) / 1e9, "median": flops / statistics.median(times) / 1e9,
            "runs": len(times)}


@functools.lru_cache(maxsize=None)
def matmul_peak(dtype_name: str = "float32", shape: tuple[int, int, int] = MODEL_SHAPED
                ) -> float:
    """The best GFLOP/s of a half-second `matmul_speed`, measured once per process (Round
    setup asks for an estimate on every change)."""
    return matmul_speed(shape, dtype_name)["best"]
