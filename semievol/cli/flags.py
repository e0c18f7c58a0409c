"""Command-line flags made from the config dataclasses: a flag's type, help and choices come
from the field it sets (its annotation, its docstring, config.CHOICES), so a setting is
documented once, in semievol.config, and a new one needs a line in a table here.

A flag left out sets nothing (its argparse default is None): the command keeps the round's
current setting (rounds.record.base_config), and `overrides` returns only what was given.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import typing

from semievol.config import CHOICES, field_docs

ROUND_FLAGS = {
    "--model": "model.name_or_path",
    "--dtype": "model.dtype",
    "--context-budget": "model.context_budget",
    "--epochs": "train.epochs",
    "--max-steps": "train.max_steps",
    "--min-steps": "train.min_steps",
    "--lr": "train.learning_rate",
    "--batch-size": "train.batch_size",
    "--class-balance": "train.class_balance",
    "--processes": "train.processes",
    "-k": "retrieval.k",
    "--calibration": "calibration.fraction",
    "--unlabeled-limit": "unlabeled_limit",
    "--report-to": "report_to",
    "--reflect-with": "served.reflection_model",
}
"""The round settings a step command takes, by flag: the RoundConfig field each sets."""

SELECTION_FLAGS = {"--policy": "policy", "--theta": "theta", "--threshold": "threshold",
                   "--score": "score", "--weighting": "weighting"}
"""The selection settings of `round` and `select` (SelectionConfig fields)."""

TASK_FLAGS = {"--kind": "kind", "--answer-format": "answer_format", "--checker": "checker",
              "--instruction": "instruction"}
"""The task settings of a first import (TaskConfig fields; --labels is a list, its own)."""

INDEX_FLAGS = {"-k": "k", "--embedder": "embedder"}
"""Retrieval settings of `index` (RetrievalConfig fields)."""


def _field(cls, path: str) -> tuple[type, dataclasses.Field]:
    """The dataclass owning the field at `path` ("train.epochs" of a RoundConfig) and it."""
    *sections, name = path.split(".")
    for section in sections:
        cls = typing.get_type_hints(cls)[section]
    return cls, {f.name: f for f in dataclasses.fields(cls)}[name]


def _scalar(annotation) -> type:
    """int, float or str from a field's annotation (`int | None` is int)."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    kind = args[0] if args else annotation
    return kind if kind in (int, float, str) else str


def _help(owner, field: dataclasses.Field) -> str:
    """The first sentence of the field's docstring, and its default where it has one."""
    doc = field_docs(owner).get(field.name, "")
    first = re.split(r"(?<=[a-z)\]`])\. (?=[A-Z])", doc)[0].rstrip(".")
    default = field.default if field.default is not dataclasses.MISSING else \
        field.default_factory()
    return first + ("" if default is None else f" [new workspaces: {default}]")


def dest(path: str) -> str:
    return "config__" + path.replace(".", "__")


def add_config_flags(parser, cls, flags: dict[str, str]) -> None:
    """One flag per entry of `flags` (flag -> field path in `cls`), with the field's type,
    first docstring sentence, default and choices."""
    for flag, path in flags.items():
        owner, field = _field(cls, path)
        hints = typing.get_type_hints(owner)
        choices = CHOICES.get(f"{owner.__name__}.{field.name}")
        parser.add_argument(flag, dest=dest(path), type=_scalar(hints[field.name]),
                            choices=choices, default=None, help=_help(owner, field),
                            metavar=None if choices else path.rsplit(".", 1)[-1].upper())


def overrides(args: argparse.Namespace, flags: dict[str, str]) -> dict[str, object]:
    """{field path: value} of the flags that were given."""
    return {path: getattr(args, dest(path)) for path in flags.values()
            if getattr(args, dest(path), None) is not None}
