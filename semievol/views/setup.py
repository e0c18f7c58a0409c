"""What the Round setup page reads, once per render: the latest round and what each of its
steps has produced, where the form starts (the config the next launch would use), the runs
that would make a launch wait, and the next action."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

from semievol.config import RoundConfig
from semievol.curation.sufficiency import label_warnings
from semievol.errors import SemiEvolError
from semievol.model.architectures import check_gguf
from semievol.model.loading import converted_gguf_dir, resolve_model_path
from semievol.model.prepare import check_model, model_summary
from semievol.rounds.record import FINISHED, Round, base_config, latest_round
from semievol.rounds.scores import regression
from semievol.rounds.steps import STEPS
from semievol.runs import jobs
from semievol.views.workflow import data_step, state_of, step_states
from semievol.workspace.store import Workspace


@dataclass
class SetupPage:
    round: Round | None                 # the latest round (None before round 1)
    state: dict                         # workflow's round state and next action
    config: RoundConfig                 # where the form starts (rounds.record.base_config)
    running: list[dict] = field(default_factory=list)  # runs a launch would wait for
    steps: list[dict] = field(default_factory=list)    # what each step of the round produced
    step_names: tuple = STEPS           # the steps, in order (one launch button each)
    label_warnings: list[dict] = field(default_factory=list)  # classes short of labels,
    # when the next launch warms round 1 up (it must then be confirmed)

    @property
    def finished(self) -> bool:
        """The latest round is finished: a launch opens the next one."""
        return self.round is not None and self.round.status in FINISHED

    @property
    def open(self) -> bool:
        """A round is open: steps after warm-up can run on it."""
        return self.round is not None and not self.finished

    @property
    def next_step(self) -> str | None:
        return next((s["step"] for s in self.steps if not s["done"]), None)


def setup_page(ws: Workspace) -> SetupPage:
    rnd = latest_round(ws)
    running = jobs.running_runs(ws)
    check = regression(ws, rnd) if rnd is not None and rnd.status == "done" else None
    first_warmup = rnd is None or (rnd.number == 1 and not rnd.warmup_adapter)
    data = data_step(ws) if rnd is None else None
    return SetupPage(rnd, state_of(ws.path, rnd, running, check, data), base_config(ws), running,
                     step_states(ws, rnd) if rnd is not None else [],
                     label_warnings=label_warnings(ws) if first_warmup else [])


def model_note(name_or_path: str, budget: int | None = None) -> tuple[bool, str]:
    """Round setup's line under the model field: (usable, what the model is, or why a round
    would refuse it). Reads files and the tokenizer, never weights; a GGUF file not yet
    converted is checked from its header only (converting is a round's or prepare-model's
    work, not a page render's). Cached until the file or folder changes."""
    local = Path(name_or_path).expanduser()
    target = local / "config.json" if local.is_dir() else local
    stamp = target.stat().st_mtime_ns if target.exists() else None
    return _model_note(name_or_path, budget, stamp)


@functools.lru_cache(maxsize=16)
def _model_note(name_or_path: str, budget: int | None, _stamp) -> tuple[bool, str]:
    local = Path(name_or_path).expanduser()
    try:
        if local.suffix.lower() == ".gguf" and local.is_file():
            try:
                path = converted_gguf_dir(local, convert=False)
            except SemiEvolError:
                stated = check_gguf(local)["architecture"]
                return True, (f"A GGUF file of llama.cpp's {stated} architecture: it is "
                              "converted once when the round starts, or now with "
                              f"`semievol prepare-model {name_or_path}`.")
        else:
            path = resolve_model_path(name_or_path)
        found = check_model(path, budget=budget)
    except SemiEvolError as exc:
        return False, str(exc)
    return True, f"{found['architecture']}: {model_summary(found)}."
