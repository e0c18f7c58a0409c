"""Saved configs: a config dataclass as a dict or JSON (what a round stores), and back.

Reading is strict and faithful: unknown fields are refused with a clear message, and a
config saved by an older version keeps the meaning it had when it was saved (renamed and
dropped fields in LEGACY, fields added later in ADDED_LATER).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping

from semievol.config import (CalibrationConfig, CollaboratorConfig, LoraConfig, ModelConfig,
                             RetrievalConfig, RoundConfig, SelectionConfig, ServedConfig,
                             ServerConfig, TaskConfig, TrainConfig)
from semievol.errors import SemiEvolError


def to_dict(config: Any) -> dict:
    return dataclasses.asdict(config)


def to_json(config: Any) -> str:
    return json.dumps(to_dict(config), sort_keys=True)


LEGACY = {("ModelConfig", "max_length"): "context_budget", ("TrainConfig", "max_length"): None}
"""Fields of configs saved by older versions: renamed (to the new name) or dropped (None;
training now uses the model's context budget)."""
ADDED_LATER = {("SelectionConfig", "class_floor"): 0.0}
"""Fields added after configs were saved without them: a saved config means what it meant
when it was saved, so the field takes the value that keeps that meaning (not the new
default)."""


def _build(cls, data: dict):
    """Build a (nested) dataclass from a dict, refusing unknown keys with a clear message."""
    data = dict(data)
    for (owner, old), new in LEGACY.items():
        if cls.__name__ == owner and old in data:
            value = data.pop(old)
            if new is not None:
                data.setdefault(new, value)
    for (owner, name), value in ADDED_LATER.items():
        if cls.__name__ == owner:
            data.setdefault(name, value)
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(names)
    if unknown:
        raise SemiEvolError(f"Unknown {cls.__name__} fields: {', '.join(sorted(unknown))}.")
    kwargs = {}
    for key, value in data.items():
        sub = _NESTED.get((cls, key))
        if isinstance(sub, tuple):  # a list of nested configs
            kwargs[key] = [_build(sub[0], v) for v in value]
        elif sub is not None and isinstance(value, dict):
            kwargs[key] = _build(sub, value)
        else:
            kwargs[key] = value
    return cls(**kwargs)


_NESTED = {
    (RoundConfig, "model"): ModelConfig,
    (RoundConfig, "lora"): LoraConfig,
    (RoundConfig, "train"): TrainConfig,
    (RoundConfig, "retrieval"): RetrievalConfig,
    (RoundConfig, "selection"): SelectionConfig,
    (RoundConfig, "calibration"): CalibrationConfig,
    (RoundConfig, "collaborators"): (CollaboratorConfig,),
    (RoundConfig, "servers"): (ServerConfig,),
    (RoundConfig, "served"): ServedConfig,
}


def config_from_dict(cls, data: dict):
    """Any config dataclass (e.g. TrainConfig) from its saved dict, validated."""
    return _build(cls, data)


def overridden(config: Any, overrides: Mapping[str, Any]):
    """`config` (a config dataclass) with `overrides` laid on top, validated as a new config.

    Each key is a field's path ("train.epochs", "unlabeled_limit") and its value the new
    value; a section given a mapping ("train": {"epochs": 4}, as a partial YAML file writes
    it) changes only the fields it names. The one way a command's flags, a saved file or a
    form change a config: an unknown field or a value of the wrong type is refused with a
    message, and nothing else changes."""
    data = to_dict(config)
    for path, value in overrides.items():
        *sections, key = path.split(".")
        target = data
        for section in sections:
            if not isinstance(target.get(section), dict):
                raise SemiEvolError(f"{path!r} is not a {type(config).__name__} setting: "
                                    f"it has no section {section!r}.")
            target = target[section]
        if isinstance(value, Mapping) and isinstance(target.get(key), dict):
            target[key] = {**target[key], **value}
        else:
            target[key] = value
    try:
        return _build(type(config), data)
    except TypeError as exc:  # a value of the wrong type reached a comparison
        raise SemiEvolError(f"The {type(config).__name__} is not valid: {exc}.") from exc


def round_config_from_dict(data: dict) -> RoundConfig:
    return _build(RoundConfig, data)


def task_config_from_dict(data: dict) -> TaskConfig:
    return _build(TaskConfig, data)


def selection_config_from_dict(data: dict) -> SelectionConfig:
    return _build(SelectionConfig, data)
