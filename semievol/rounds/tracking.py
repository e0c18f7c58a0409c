"""A round's numbers in an experiment tracker, when the round config asks (`report_to`):
the training losses and learning rate of the warm-up and the final training per optimizer
step, each model's test accuracy per round, and the resolved config as text.

TensorBoard only, to a local folder in the workspace (WORKSPACE/tensorboard/roundN): users
read it with `tensorboard --logdir WORKSPACE/tensorboard`. The workspace's own tables stay
the record; the tracker is a copy for the tools people already watch.
"""

from __future__ import annotations

from semievol.rounds.record import Round
from semievol.saved_config import to_json
from semievol.workspace.store import Workspace


class Tracker:
    """One round's event files (a resumed run appends to them)."""

    def __init__(self, ws: Workspace, rnd: Round):
        from torch.utils.tensorboard import SummaryWriter

        self.folder = ws.inside("tensorboard") / f"round{rnd.number}"
        self.folder.mkdir(parents=True, exist_ok=True)
        self._writer = SummaryWriter(log_dir=str(self.folder))
        self._writer.add_text("config", to_json(rnd.config), rnd.number)

    def scalar(self, tag: str, value: float | None, step: int) -> None:
        if value is not None:
            self._writer.add_scalar(tag, float(value), step)

    def evaluation(self, number: int, result: dict) -> None:
        """The evaluate step's result: each model's accuracy (and macro-F1) at step N."""
        for model, r in result.items():
            if model == "regression" or not isinstance(r, dict):
                continue
            self.scalar(f"{r.get('split', 'test')}/{model}_accuracy", r.get("accuracy"),
                        number)
            self.scalar(f"{r.get('split', 'test')}/{model}_macro_f1", r.get("macro_f1"),
                        number)

    def close(self) -> None:
        self._writer.close()


def open_tracker(ws: Workspace, rnd: Round) -> Tracker | None:
    """The round's tracker, or None when its config reports to none."""
    return Tracker(ws, rnd) if rnd.config.report_to == "tensorboard" else None
