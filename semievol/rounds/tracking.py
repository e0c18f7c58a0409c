"""A round's numbers in an experiment tracker, when the round config asks (`report_to`):
the training losses and learning rate of the warm-up and the final training per optimizer
step, each model's test accuracy per round, and the resolved config.

Local stores only, inside the workspace, so nothing leaves the machine:
- `tensorboard`: event files in WORKSPACE/tensorboard/roundN (the config as text); users
  read them with `tensorboard --logdir WORKSPACE/tensorboard`.
- `mlflow`: one MLflow run per round in WORKSPACE/mlflow/mlflow.db (SQLite; MLflow keeps its
  file store in maintenance mode and refuses it by default), the experiment named for the
  workspace, the resolved config as params and the round's adapters as artifacts in
  WORKSPACE/mlflow/artifacts; users read it with
  `mlflow ui --backend-store-uri sqlite:///WORKSPACE/mlflow/mlflow.db`.
The workspace's own tables stay the record; a tracker is a copy for the tools people
already watch. A resumed round appends to the same event files or MLflow run.
"""

from __future__ import annotations

import json
import logging
import re

from semievol.rounds.record import Round, get_round
from semievol.saved_config import to_dict, to_json
from semievol.workspace.store import Workspace

ROUND_TAG = "semievol.round"
"""The MLflow tag that names a round's run, so a resumed round finds it again."""


def mlflow_uri(ws: Workspace) -> str:
    """The workspace's MLflow tracking store (what `mlflow ui --backend-store-uri` takes)."""
    return f"sqlite:///{ws.inside('mlflow') / 'mlflow.db'}"


def mlflow_name(tag: str) -> str:
    """A metric name MLflow takes: it allows letters, digits, `_-. :/` only, so the `+` of
    a model name (`base+demos`) becomes `_`."""
    return re.sub(r"[^\w\-. :/]", "_", tag)


def flat_params(config) -> dict[str, str]:
    """A config as MLflow params: dotted keys (`train.learning_rate`), values as text; lists
    (collaborators, servers) as JSON under their own key."""
    out: dict[str, str] = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(f"{prefix}.{key}" if prefix else key, inner)
        else:
            out[prefix] = value if isinstance(value, str) else json.dumps(value)
    walk("", to_dict(config))
    return out


class Tracker:
    """The interface a round reports through; `open_tracker` picks the implementation."""

    def scalar(self, tag: str, value: float | None, step: int) -> None:
        raise NotImplementedError

    def evaluation(self, number: int, result: dict) -> None:
        """The evaluate step's result: each model's accuracy (and macro-F1) at step N."""
        for model, r in result.items():
            if model == "regression" or not isinstance(r, dict):
                continue
            split = r.get("split", "test")
            self.scalar(f"{split}/{model}_accuracy", r.get("accuracy"), number)
            self.scalar(f"{split}/{model}_macro_f1", r.get("macro_f1"), number)

    def close(self) -> None:
        raise NotImplementedError


class TensorBoardTracker(Tracker):
    """One round's event files."""

    def __init__(self, ws: Workspace, rnd: Round):
        from torch.utils.tensorboard import SummaryWriter

        self.folder = ws.inside("tensorboard") / f"round{rnd.number}"
        self.folder.mkdir(parents=True, exist_ok=True)
        self._writer = SummaryWriter(log_dir=str(self.folder))
        self._writer.add_text("config", to_json(rnd.config), rnd.number)

    def scalar(self, tag: str, value: float | None, step: int) -> None:
        if value is not None:
            self._writer.add_scalar(tag, float(value), step)

    def close(self) -> None:
        self._writer.close()


class MlflowTracker(Tracker):
    """One round's MLflow run, written through `MlflowClient` (no global active run, so
    nothing leaks into another round in the same process)."""

    def __init__(self, ws: Workspace, rnd: Round):
        from mlflow.tracking import MlflowClient

        # MLflow logs its store migrations at INFO on first use; the round's own progress
        # says what is happening.
        logging.getLogger("mlflow").setLevel(logging.WARNING)
        folder = ws.inside("mlflow")
        folder.mkdir(parents=True, exist_ok=True)
        self._ws, self._number = ws, rnd.number
        self._client = MlflowClient(tracking_uri=mlflow_uri(ws))
        name = f"semievol:{ws.path.name}"
        experiment = self._client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment else \
            self._client.create_experiment(name, artifact_location=(folder / "artifacts")
                                           .as_uri())
        earlier = self._client.search_runs(
            [experiment_id], filter_string=f"tags.`{ROUND_TAG}` = '{rnd.number}'",
            max_results=1)
        if earlier:
            self.run_id = earlier[0].info.run_id
            self._client.update_run(self.run_id, status="RUNNING")
        else:
            run = self._client.create_run(experiment_id, run_name=f"round {rnd.number}",
                                          tags={ROUND_TAG: str(rnd.number)})
            self.run_id = run.info.run_id
            from mlflow.entities import Param

            self._client.log_batch(self.run_id, params=[
                Param(k, v[:6000]) for k, v in flat_params(rnd.config).items()])

    def scalar(self, tag: str, value: float | None, step: int) -> None:
        if value is not None:
            self._client.log_metric(self.run_id, mlflow_name(tag), float(value),
                                    step=int(step))

    def close(self) -> None:
        """Attach the adapters trained so far, then end the run (a resumed round opens it
        again)."""
        rnd = get_round(self._ws, self._number)
        for which, adapter in (("warmup", rnd.warmup_adapter), ("final", rnd.final_adapter)):
            if adapter and (self._ws.path / adapter).is_dir():
                self._client.log_artifacts(self.run_id, str(self._ws.path / adapter),
                                           f"adapters/{which}")
        self._client.set_terminated(self.run_id)


TRACKERS = {"tensorboard": TensorBoardTracker, "mlflow": MlflowTracker}


def open_tracker(ws: Workspace, rnd: Round) -> Tracker | None:
    """The round's tracker, or None when its config reports to none."""
    kind = TRACKERS.get(rnd.config.report_to)
    return kind(ws, rnd) if kind else None
