"""How long a round's steps will take here, before they start, and how far a run has got.

The estimate is work divided by speed:
- work: the tokens each step puts through the model, counted from the workspace with the
  round's own prompt builder (every collaborator's prompt for every pool item still to
  answer, the reflection share, the training sets times their epochs, each evaluation not
  stored yet); answers already cached cost nothing;
- speed: this machine's measured tokens per second for inference and for training, from the
  last steps that ran here (stored per model, device and dtype, in the workspace and in the
  machine's cache folder), or from a few seconds of real steps a first run takes before
  it starts (semievol.runs.calibrate); until one has, a rough guess from a half-second
  matmul measurement of this machine's peak times the share of it our scoring and training
  reached on one machine (measured by bench/round_profile.py).
"""

from __future__ import annotations

import json
from pathlib import Path

from semievol.model.loading import pick_device, pick_dtype, resolve_model_path
from semievol.model.throughput import matmul_peak, measured
from semievol.runs.work import step_work

INFERENCE_SHARE = 0.40   # scoring reached ~40 % of the float32 matmul peak (round profile)
TRAINING_SHARE = 0.28    # LoRA training ~28 % (round profile, before dropout was removed)
LOAD_SECONDS = 3.0       # loading a model and merging an adapter, per backend


def model_parameters(model_path: str | Path) -> int:
    """Parameters of the transformer body (embeddings and output layer excluded): the
    FLOPs per token are 2x this for inference, 4x for LoRA training (forward, and backward
    through the activations; frozen weights get no gradient)."""
    config = json.loads((Path(model_path) / "config.json").read_text())
    d, f, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    heads = config["num_attention_heads"]
    kv = config.get("num_key_value_heads", heads)
    head_dim = config.get("head_dim") or d // heads
    attention = 2 * d * heads * head_dim + 2 * d * kv * head_dim
    return layers * (attention + 3 * d * f)


def speeds(ws, model_config) -> dict:
    """{inference, training}: tokens per second here, and where each figure comes from."""
    stored, machine = measured(ws, model_config)
    out = {}
    for kind in ("inference", "training"):
        found = stored.get(kind) or machine.get(kind)
        if found:
            out[kind] = found["tokens_per_second"]
            out[f"{kind}_source"] = "measured in this workspace" if stored.get(kind) \
                else "measured on this machine"
    if len(out) < 4:
        device = pick_device(model_config.device)
        dtype = str(pick_dtype(model_config.dtype, device))
        peak = matmul_peak(dtype) * 1e9
        params = model_parameters(resolve_model_path(model_config.name_or_path))
        guesses = {"inference": peak * INFERENCE_SHARE / (2 * params),
                   "training": peak * TRAINING_SHARE / (4 * params)}
        for kind, value in guesses.items():
            if kind not in out:
                out[kind] = value
                out[f"{kind}_source"] = f"from this machine's matmul peak ({peak / 1e9:.0f} " \
                                        "GFLOP/s)"
                out["rough"] = True  # a guess until a real step has run here
    return out


def estimate_steps(ws, rnd, steps: list[str]) -> dict:
    """{steps: {name: seconds}, total, tokens: {name: (kind, tokens)}, speeds}: the time each
    step of round `rnd` should take here."""
    speed = speeds(ws, rnd.config.model)
    seconds, tokens = {}, {}
    for step in steps:
        kind, count, loads = step_work(ws, rnd, step, steps)
        tokens[step] = (kind, count)
        seconds[step] = (count / speed[kind] if count else 0.0) + loads * LOAD_SECONDS
    return {"steps": seconds, "total": sum(seconds.values()), "tokens": tokens,
            "speeds": speed}


def line(estimate: dict) -> str:
    """E.g. "about 14 min here (warmup 2.1, label 7.4, ...) at 2,300 inference and 610
    training tokens/s (measured in this workspace)"."""
    parts = ", ".join(f"{name} {seconds / 60:.1f}" for name, seconds in estimate["steps"].items())
    speed = estimate["speeds"]
    rough = ("a rough guess until a step has run on this machine (a run measures it first): "
             if speed.get("rough") else "")
    return (f"{rough}about {_minutes(estimate['total'])} here ({parts} min) at "
            f"{speed['inference']:,.0f} inference tokens/s ({speed['inference_source']}) and "
            f"{speed['training']:,.0f} training tokens/s ({speed['training_source']})")


def _minutes(seconds: float) -> str:
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    return f"{seconds / 60:.0f} min"


def workspace_state(ws) -> tuple:
    """What an estimate depends on in the workspace (responses, pseudo-labels, runs,
    evaluations stored): a page recomputes its estimate when this changes."""
    return tuple(ws.scalar(f"SELECT COUNT(*) FROM {table}") for table in
                 ("responses", "pseudo_labels", "runs", "evaluations"))
