"""Starting a round's steps as background runs, the way the CLI's `--background` does.

`launch_step` is what a button in the app (and `semievol <step> --background`) calls: it opens
the round exactly as the foreground command would, saves the resolved config as YAML under
WORKSPACE/runs/ (the config travels to the child as a file, and stays beside the run's log),
and starts `python -m semievol <step> WORKSPACE --config FILE --round N ...` through
`jobs.start_run`. `resume_run` starts a failed or cancelled run's step again: every step
resumes from what the workspace stores (adapters, cached responses, checkpoints).
"""

from __future__ import annotations

from pathlib import Path

from semievol import jobs, rounds
from semievol.config import RoundConfig, SelectionConfig, to_dict
from semievol.errors import SemiEvolError
from semievol.store import Workspace

LAUNCH_STEPS = ("round", *rounds.STEPS)
"""What `launch_step` starts: a whole round, or one of its steps."""
OPENING_STEPS = ("round", "warmup")
"""Steps that open the round (a new one after a finished round), as the CLI does."""
SELECTION_STEPS = ("round", "select")
RESUMABLE = ("failed", "cancelled")


def config_path(ws: Workspace, round_number: int, step: str) -> Path:
    """Where the resolved config of a launched step is saved."""
    return ws.path / "runs" / f"config_round{round_number}_{step}.yaml"


def selection_flags(selection: SelectionConfig) -> list[str]:
    """The CLI flags that give `selection` to `semievol select` / `semievol round`."""
    flags = ["--policy", selection.policy, "--theta", repr(float(selection.theta)),
             "--score", selection.score]
    if selection.threshold is not None:
        flags += ["--threshold", repr(float(selection.threshold))]
    return flags


def launch_step(ws: Workspace, step: str, *, config: RoundConfig | None = None,
                selection: SelectionConfig | None = None, round_number: int | None = None,
                force: bool = False) -> int:
    """Start `step` of a round in the background; returns the run id.

    The round is the one the CLI would use: `round` and `warmup`, or any step given a
    `config`, open it (`rounds.open_round`: the latest unfinished round, whose stored config
    `config` replaces, or a new one); other steps take round `round_number` (default: the
    latest). `selection` (select / round only) overrides the round's selection policy;
    `force` (evaluate only) recomputes stored evaluations. Raises RunRefused, before anything
    is changed, when another run is writing a round.
    """
    if step not in LAUNCH_STEPS:
        raise SemiEvolError(f"Unknown step {step!r}: choose one of {', '.join(LAUNCH_STEPS)}.")
    if selection is not None and step not in SELECTION_STEPS:
        raise SemiEvolError(f"A selection policy applies to select or round, not to {step}.")
    opens = step in OPENING_STEPS or config is not None
    if opens:
        # open_round may rewrite the open round's stored config: refuse first, while a run
        # (which may be reading that config) is still going.
        jobs.refresh_runs(ws)
        jobs._refuse_if_busy(ws, step, None)
        rnd = rounds.open_round(ws, config)
    else:
        rnd = rounds.get_round(ws, round_number)
    argv = [step, str(ws.path), "--round", str(rnd.number)]
    if config is not None:
        import yaml

        path = config_path(ws, rnd.number, step)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(to_dict(rnd.config), sort_keys=False))
        argv += ["--config", str(path)]
    if selection is not None:
        argv += selection_flags(selection)
    if force and step == "evaluate":
        argv.append("--force")
    return jobs.start_run(ws, step, argv, round_id=rnd.id, config=to_dict(rnd.config))


def resume_command(ws: Workspace, run: dict) -> list[str]:
    """The `semievol` arguments that run a failed (or cancelled) run's step again on the same
    round; the step resumes from what is stored. Raises SemiEvolError when there is nothing
    to resume."""
    kind = run["kind"]
    if kind not in LAUNCH_STEPS:
        raise SemiEvolError(f"Run {run['id']} ({kind}) is not a round step; start it again "
                            "from its own page or command.")
    if run["status"] not in RESUMABLE:
        raise SemiEvolError(f"Run {run['id']} is {run['status']}; only a failed or cancelled "
                            "run can be resumed.")
    argv = [kind, str(ws.path)]
    if run["round_id"] is None:
        return argv
    row = ws.query("SELECT number, status FROM rounds WHERE id=?", (run["round_id"],))
    if not row:
        raise SemiEvolError(f"Run {run['id']} belongs to a round that no longer exists.")
    number = row[0]["number"]
    if kind in OPENING_STEPS:
        # These open the latest unfinished round: that must still be the run's own round.
        latest = ws.query("SELECT number, status FROM rounds ORDER BY number DESC LIMIT 1")[0]
        if latest["number"] != number or latest["status"] == "done":
            raise SemiEvolError(f"Round {number} is no longer the open round, so run "
                                f"{run['id']} ({kind}) cannot be resumed; launch the step "
                                "again from the Round setup page.")
    return argv + ["--round", str(number)]


def resume_run(ws: Workspace, run_id: int) -> int:
    """Start a failed or cancelled run's step again as a new background run; returns its id."""
    run = jobs.get_run(ws, run_id)
    argv = resume_command(ws, run)
    config = None
    if run["round_id"] is not None:
        config = to_dict(rounds.get_round(ws, int(argv[argv.index("--round") + 1])).config)
    return jobs.start_run(ws, run["kind"], argv, round_id=run["round_id"], config=config)
