"""Rounds: the stored round (config, adapters, status), opening the next one, and what each
round holds so far. The steps that fill a round are in semievol.rounds.steps.

Adapter paths are stored relative to the workspace, so a moved or copied workspace keeps
using its own adapters (an absolute path from older rows still resolves as is).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from semievol.config import RoundConfig
from semievol.curation.selection_state import kept_selection
from semievol.errors import SemiEvolError
from semievol.method.pseudo_labels import drop_derived
from semievol.model.prompts import resolve_budget
from semievol.saved_config import round_config_from_dict, to_json
from semievol.workspace.store import Workspace, now

ROUND_STATUSES = ("open", "awaiting_review", "training", "trained", "done")
"""open: warm-up and labeling to run; awaiting_review: pseudo-labels selected, waiting for a
reviewer to say train; training: its training set is frozen and training runs (or failed
and waits to resume); trained: it has its adapter; done: trained and evaluated."""
FINISHED = ("trained", "done")
"""A round in one of these states is finished: the next launch opens a new round."""
STATUS_NAMES = {"open": "open", "awaiting_review": "awaiting review", "training": "training",
                "trained": "trained (not evaluated)", "done": "done"}


@dataclass
class Round:
    id: int
    number: int
    status: str
    config: RoundConfig
    warmup_adapter: str | None
    final_adapter: str | None


def _round_from_row(ws: Workspace, row) -> Round:
    def resolve(path):
        return None if path is None else str(ws.path / path)

    return Round(row["id"], row["number"], row["status"],
                 round_config_from_dict(json.loads(row["config"])),
                 resolve(row["warmup_adapter"]), resolve(row["final_adapter"]))


def relative_path(ws: Workspace, path: str | Path) -> str:
    """A path inside the workspace as stored (relative to the workspace folder)."""
    return str(Path(path).resolve().relative_to(ws.path))


def get_round(ws: Workspace, number: int | None = None) -> Round:
    """Round `number`, or the latest one."""
    if number is not None and number < 1:
        raise SemiEvolError(f"Round numbers start at 1; got {number}.")
    sql = "SELECT * FROM rounds " + ("WHERE number=?" if number else "ORDER BY number DESC LIMIT 1")
    rows = ws.query(sql, (number,) if number else ())
    if not rows:
        if number is None:
            raise SemiEvolError("No round yet: start one with `semievol round WORKSPACE`.",
                                app="No round yet: launch one on the Round setup page.")
        raise SemiEvolError(f"There is no round {number}.")
    return _round_from_row(ws, rows[0])


def latest_round(ws: Workspace) -> Round | None:
    """The latest round, or None when there is none yet."""
    rows = ws.query("SELECT * FROM rounds ORDER BY number DESC LIMIT 1")
    return _round_from_row(ws, rows[0]) if rows else None


def round_by_id(ws: Workspace, round_id: int) -> Round:
    rows = ws.query("SELECT * FROM rounds WHERE id=?", (round_id,))
    if not rows:
        raise SemiEvolError(f"There is no round with id {round_id}.")
    return _round_from_row(ws, rows[0])


def base_config(ws: Workspace) -> RoundConfig:
    """The config a new round (or a command-line override) starts from: the latest round's,
    else the workspace's recommended one (see data/demo/task.json), else the defaults; with
    the selection a reviewer kept for the next rounds (curation.selection_state), if any."""
    latest = ws.query("SELECT config FROM rounds ORDER BY number DESC LIMIT 1")
    if latest:
        config = round_config_from_dict(json.loads(latest[0]["config"]))
    else:
        stored = ws.get_setting("default_round_config")
        config = round_config_from_dict(stored) if stored else RoundConfig()
    kept = kept_selection(ws)  # a selection a reviewer chose for the next rounds
    if kept is not None:
        import dataclasses

        config = dataclasses.replace(config, selection=kept[0])
    return config


def open_round(ws: Workspace, config: RoundConfig | None = None) -> Round:
    """The latest unfinished round, or a new one (numbered after the last finished round).

    A config given for an unfinished round replaces its stored one. Responses are cached by
    content, so changed collaborators recompute what they must; pseudo-labels are derived
    from all collaborators together, so they are dropped when the collaborators or the model
    change (and the responses of removed collaborators with them). One transaction: nothing
    changes unless all of it does."""
    ws.require_task()
    if config is not None:
        config = with_budget(config)
    with ws.transaction() as conn:
        latest = latest_round(ws)
        if latest is not None and latest.status not in FINISHED:
            if config is not None and config != latest.config:
                conn.execute("UPDATE rounds SET config=? WHERE id=?",
                             (to_json(config), latest.id))
                if (config.collaborators != latest.config.collaborators
                        or config.model != latest.config.model):
                    drop_derived(ws, latest.id, len(config.collaborators))
                return get_round(ws, latest.number)
            return latest
        config = config or with_budget(base_config(ws))
        number = latest.number + 1 if latest else 1
        conn.execute("INSERT INTO rounds(number, status, config, created_at) VALUES(?,?,?,?)",
                     (number, "open", to_json(config), now()))
    return get_round(ws, number)


def prospective(ws: Workspace, config: RoundConfig | None = None) -> Round:
    """The round a launch would work on, without opening it: the latest unfinished round
    (with `config` in place of its own), or the next one (id None: it has nothing yet)."""
    latest = latest_round(ws)
    if latest is not None and latest.status not in FINISHED:
        if config is None:
            return latest
        import dataclasses

        return dataclasses.replace(latest, config=with_budget(config))
    number = latest.number + 1 if latest else 1
    return Round(None, number, "open", with_budget(config or base_config(ws)), None, None)


def with_budget(config: RoundConfig) -> RoundConfig:
    """`config` with its context budget resolved to a number (prompts.resolve_budget), so the
    round stores the budget its every prompt is built in."""
    import dataclasses

    if config.model.context_budget:
        return config
    model = dataclasses.replace(config.model, context_budget=resolve_budget(config.model))
    return dataclasses.replace(config, model=model)


def set_adapter(ws: Workspace, rnd: Round, which: str, path: str | Path) -> None:
    """Record the round's `warmup` or `final` adapter folder."""
    column = {"warmup": "warmup_adapter", "final": "final_adapter"}[which]
    with ws.transaction() as conn:
        conn.execute(f"UPDATE rounds SET {column}=? WHERE id=?",
                     (relative_path(ws, path), rnd.id))


def set_status(ws: Workspace, rnd: Round, status: str) -> None:
    """Move the round to `status` (ROUND_STATUSES); `done` also stamps finished_at."""
    if status not in ROUND_STATUSES:
        raise ValueError(f"unknown round status {status!r}")
    with ws.transaction() as conn:
        conn.execute("UPDATE rounds SET status=?, finished_at=COALESCE(?, finished_at) "
                     "WHERE id=?", (status, now() if status == "done" else None, rnd.id))


def adapter_dir(ws: Workspace, rnd: Round, which: str) -> Path:
    """Where the round's `warmup` or `final` adapter is trained."""
    return ws.path / "adapters" / f"round{rnd.number}" / which


def budget_of(rnd: Round) -> int:
    """The round's context budget (resolved when the round opened; an older round without
    one gets the default resolution)."""
    return rnd.config.model.context_budget or resolve_budget(rnd.config.model)
