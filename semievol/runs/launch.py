"""Starting a round's steps as a run: the one path for the CLI (foreground and
`--background`), the app's buttons, resuming a failed run and the background worker.

`register` validates the request, refuses a conflicting run, opens the round and registers
the run, all in one write transaction: a refused start changes nothing, and two starts at
once cannot both pass the check. What the run must do (its steps, a selection override,
`force`) and the round's resolved config are stored in the run's row, so `execute` needs
nothing but the run id: in this process (foreground) or in a worker started by
`start(..., background=True)` as `python -m semievol worker WORKSPACE RUN_ID`.
"""

from __future__ import annotations

from semievol.config import RoundConfig, SelectionConfig
from semievol.errors import SemiEvolError
from semievol.method.evaluate import evaluation_split
from semievol.rounds import steps
from semievol.rounds.backends import check_servers
from semievol.rounds.guards import check_label_warnings, check_training_warnings
from semievol.rounds.record import (FINISHED, get_round, latest_round, open_round, prospective,
                                    round_by_id)
from semievol.runs import calibrate, jobs
from semievol.runs.estimate import estimate_steps, line
from semievol.saved_config import selection_config_from_dict, to_dict
from semievol.workspace.store import Workspace

RUN_KINDS = ("round", *steps.STEPS)
"""What a run may be: a whole round, or one of its steps."""
OPENING_KINDS = ("round", "warmup")
"""Kinds that open the round (a new one after a finished round)."""
SELECTION_KINDS = ("round", "select")
RESUMABLE = ("failed", "cancelled")


REVIEW_STEPS = ("warmup", "label", "select")
"""A round with review: it stops after selection, awaiting a reviewer (the paper's round
without the human stop is `review=False`)."""


def steps_of(ws: Workspace, kind: str, *, review: bool = True) -> list[str]:
    """The steps a run of `kind` executes: a round stops for review after selection unless
    `review` is False (unattended: every step); training is followed by an evaluation
    when there is something to evaluate on."""
    if kind == "round":
        return list(REVIEW_STEPS if review else steps.STEPS)
    if kind == "train" and evaluation_split(ws) is not None:
        return ["train", "evaluate"]
    return [kind]


def register(ws: Workspace, kind: str, *, config: RoundConfig | None = None,
             selection: SelectionConfig | None = None, round_number: int | None = None,
             force: bool = False, review: bool = True, confirm: str | None = None,
             pid: int | None = None) -> int:
    """Validate, refuse while another run writes the round, open the round and register the
    run, in one transaction; returns the run id.

    `round` and `warmup`, or any step given a `config`, open the round (`open_round`:
    the latest unfinished round, whose stored config `config` replaces, or a new one); other
    steps take round `round_number` (default: the latest). `selection` (select / round)
    overrides the selection policy; `force` (evaluate / round) recomputes stored
    evaluations; `review=False` runs a whole round unattended (training without review,
    its evidence warnings recorded as confirmed by "unattended"); `confirm` names who trains
    despite the workspace's evidence warnings (guards.training_warnings), or warms round 1
    up although a class has few labels (curation.sufficiency): a run is refused, before
    anything changes, while there are warnings and no confirmation."""
    if kind not in RUN_KINDS:
        raise SemiEvolError(f"Unknown step {kind!r}: choose one of {', '.join(RUN_KINDS)}.")
    if selection is not None and kind not in SELECTION_KINDS:
        raise SemiEvolError(f"A selection policy applies to select or round, not to {kind}.")
    ws.require_task()
    opens = kind in OPENING_KINDS or config is not None
    # Model servers are asked what they can serve before the write lock is taken (a slow
    # or dead server must not hold the workspace); the answer is stored for the run.
    check_servers(ws, prospective(ws, config) if opens else
                        get_round(ws, round_number), steps_of(ws, kind, review=review))
    with ws.transaction():
        jobs.refresh_runs(ws)
        if opens:
            # open_round may rewrite the open round's stored config: refuse first.
            jobs.refuse_if_busy(ws, kind, None)
            rnd = open_round(ws, config)
        else:
            rnd = get_round(ws, round_number)
            jobs.refuse_if_busy(ws, kind, rnd.id)  # the most useful refusal comes first
        steps.preflight(ws, rnd, steps_of(ws, kind, review=review), servers=False)
        if kind == "train" and not confirm:
            check_training_warnings(ws, rnd, None)  # refuses while the evidence warns
        if kind == "round" and not review:
            confirm = confirm or "unattended (no review)"
        if "warmup" in steps_of(ws, kind, review=review):
            check_label_warnings(ws, rnd, confirm)  # refuses while a class has few labels
        request = {"steps": steps_of(ws, kind, review=review), "round": rnd.number,
                   "force": bool(force), "confirm": confirm,
                   "selection": None if selection is None else to_dict(selection)}
        return jobs.register_run(ws, kind, round_id=rnd.id, config=to_dict(rnd.config),
                                 request=request, pid=pid)


def start(ws: Workspace, kind: str, *, background: bool, announce=None, **options) -> int:
    """Register a run (see `register`); in the background, also start its worker. A
    foreground caller then runs it with `execute`. Returns the run id.

    A foreground run on a machine that has not run this model yet measures its speed first
    (semievol.runs.calibrate, a few seconds; `announce` receives a line saying so), so the
    estimate stored and printed is work over a measured speed; a background run's worker
    does the same before its first step."""
    import os

    run_id = register(ws, kind, pid=None if background else os.getpid(), **options)
    if not background:
        _measure_if_needed(ws, run_id, announce=announce)
    run = jobs.get_run(ws, run_id)
    found = estimate_run(ws, get_round(ws, run["request"]["round"]),
                         run["request"]["steps"])
    if found:
        jobs.set_estimate(ws, run_id, found)
    if background:
        jobs.spawn(ws, run_id, ["worker", str(ws.path), str(run_id)])
    return run_id


MODEL_STEPS = ("warmup", "label", "train", "evaluate")


def _measure_if_needed(ws: Workspace, run_id: int, *, announce=None, progress=None) -> bool:
    """Measure this machine's speed (semievol.runs.calibrate) when run `run_id` has model
    work and the estimate would otherwise be a guess; True when it measured. Off with
    SEMIEVOL_MEASURE_SPEED=0 (the test suite: its tiny models' speeds say nothing)."""
    import os

    if os.environ.get("SEMIEVOL_MEASURE_SPEED", "1") == "0":
        return False
    request = jobs.get_run(ws, run_id)["request"]
    rnd = get_round(ws, request["round"])
    if not set(request["steps"]) & set(MODEL_STEPS) or not calibrate.needs_measurement(ws, rnd):
        return False
    if announce:
        announce("measuring this machine's speed for the estimate: a few scoring and "
                 "training steps of this model (once per machine)")
    measured = calibrate.measure_speed(ws, rnd, progress=progress)
    if announce and measured and measured["inference"] and measured["training"]:
        announce(f"measured in {measured['seconds']:.0f} s: {measured['inference']:,.0f} "
                 f"inference and {measured['training']:,.0f} training tokens/s")
    return bool(measured)


def estimate_run(ws: Workspace, rnd, steps_to_run: list[str]) -> dict | None:
    """How long `steps_to_run` of round `rnd` should take here (semievol.runs.estimate), with
    its one-line summary; None when the workspace cannot say (nothing to count yet)."""
    try:
        found = estimate_steps(ws, rnd, steps_to_run)
    except (SemiEvolError, OSError, ValueError, KeyError) as exc:
        return {"steps": {}, "total": 0.0, "line": f"no estimate ({exc})"}
    return {**found, "line": line(found)}


def estimate(ws: Workspace, kind: str, *, config: RoundConfig | None = None,
             review: bool = True) -> dict | None:
    """The estimate of a launch of `kind` with `config`, before anything starts (Round
    setup shows it)."""
    return estimate_run(ws, prospective(ws, config), steps_of(ws, kind, review=review))


def execute(ws: Workspace, run_id: int, *, progress=None, on_step=None,
            keep_log: bool = False) -> dict[str, dict]:
    """Run a registered run's steps through `run_steps`, recorded in its row (status,
    progress over all its steps, training losses). `progress` and `on_step` also receive
    the reports (a terminal's progress bars); `keep_log` writes the run's log file (a
    foreground run: a worker's output is its log already)."""
    import json
    run = jobs.get_run(ws, run_id)
    request = run["request"]
    if not request:
        raise SemiEvolError(f"Run {run_id} has no stored request (it was started by an older "
                            "version); start the step again.")
    selection = request.get("selection")
    with jobs.run_context(ws, run_id) as handle:
        if keep_log:
            handle.keep_log()

        def report(done, total, message=""):
            handle.progress(done, total, message)
            if progress:
                progress(done, total, message)

        def step_started(index, count, name):
            handle.begin_step(index, count, name)
            if on_step:
                on_step(index, count, name)

        # A background run measures this machine's speed here, in its worker, not in the
        # page that started it; the estimate it stores then replaces the guess.
        if (request.get("estimate") or {}).get("rough") and _measure_if_needed(
                ws, run_id, progress=report):
            found = estimate_run(ws, get_round(ws, request["round"]), request["steps"])
            if found:
                jobs.set_estimate(ws, run_id, found)
        results = steps.run_steps(ws, request["round"], request["steps"],
                                  selection=None if selection is None
                                  else selection_config_from_dict(selection),
                                  force=request.get("force", False),
                                  confirm=request.get("confirm"), progress=report,
                                  metric=handle.metric, on_step=step_started)
        for name, result in results.items():
            handle.log(f"{name}: {json.dumps(result, default=str)}")
        return results


def resume_check(ws: Workspace, run: dict) -> int:
    """The round number a failed (or cancelled) run's steps would run on again; raises
    SemiEvolError when there is nothing to resume."""
    kind = run["kind"]
    if kind not in RUN_KINDS:
        raise SemiEvolError(f"Run {run['id']} ({kind}) is not a round step; start it again "
                            "from its own page or command.")
    if run["status"] not in RESUMABLE:
        raise SemiEvolError(f"Run {run['id']} is {run['status']}; only a failed or cancelled "
                            "run can be resumed.")
    if run["round_id"] is None:
        raise SemiEvolError(f"Run {run['id']} belongs to no round; start the step again.")
    rnd = round_by_id(ws, run["round_id"])
    if kind in OPENING_KINDS:
        # These open the latest unfinished round: that must still be the run's own round.
        latest = latest_round(ws)
        if latest.number != rnd.number or latest.status in FINISHED:
            raise SemiEvolError(f"Round {rnd.number} is no longer the open round, so run "
                                f"{run['id']} ({kind}) cannot be resumed; launch the step "
                                "again from the Round setup page.")
    return rnd.number


def resume(ws: Workspace, run_id: int, *, background: bool = True) -> int:
    """Start a failed or cancelled run's request again as a new run on the same round; every
    step continues from what the workspace stores (adapters, cached responses,
    checkpoints). Returns the new run's id (a foreground caller then `execute`s it)."""
    import os

    run = jobs.get_run(ws, run_id)
    number = resume_check(ws, run)
    request = run["request"] or {"steps": steps_of(ws, run["kind"]), "force": False,
                                 "selection": None}
    request = {**request, "round": number}
    with ws.transaction():
        rnd = get_round(ws, number)
        new_id = jobs.register_run(ws, run["kind"], round_id=rnd.id,
                                   config=to_dict(rnd.config), request=request,
                                   pid=None if background else os.getpid())
    if background:
        jobs.spawn(ws, new_id, ["worker", str(ws.path), str(new_id)])
    return new_id
