"""What the Round setup page reads, once per render: the latest round and what each of its
steps has produced, where the form starts (the config the next launch would use), the runs
that would make a launch wait, and the next action."""

from __future__ import annotations

from dataclasses import dataclass, field

from semievol.config import RoundConfig
from semievol.curation.sufficiency import label_warnings
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
