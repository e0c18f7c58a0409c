"""Engine commands of the CLI: the round's steps, runs, servers, calibration (decisions,
review, audit, lineage and export are in semievol.cli.review).

Every step command goes through `launch`: `register` (validate, refuse a conflicting run,
open the round, register the run, in one transaction), then `execute` in this process or,
with `--background`, a worker process started with the run id alone. The same functions
serve the app's buttons, so both are refused and recorded the same way.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from semievol.cli.flags import ROUND_FLAGS, SELECTION_FLAGS, add_config_flags, overrides
from semievol.cli.terminal import step_banner, terminal_progress
from semievol.config import CollaboratorConfig, RoundConfig, SelectionConfig
from semievol.curation.calibration import calibration_report
from semievol.curation.selection_state import (compute_selection, keep_for_next_rounds,
                                               selection_in_force)
from semievol.errors import SemiEvolError
from semievol.model.prompts import PromptStats
from semievol.rounds.backends import probe_servers
from semievol.rounds.guards import training_warnings
from semievol.rounds.record import base_config, get_round, latest_round
from semievol.runs import jobs, launch
from semievol.runs.jobs import cancel_run, list_runs
from semievol.runs.progress import run_clock
from semievol.saved_config import overridden, to_dict
from semievol.views.sampled import sampled_percent
from semievol.views.workflow import round_state
from semievol.workspace.store import Workspace


def open_workspace(path: str):
    return Workspace(path)


def config_from_file(ws, path: str | None) -> RoundConfig:
    """The round's current config (rounds.record.base_config) with the YAML file at `path`
    on top (a partial file overrides only what it names)."""
    config = base_config(ws)
    if not path:
        return config
    import yaml
    try:
        loaded = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise SemiEvolError(f"Could not read the round config {path}: {exc}") from exc
    if not isinstance(loaded, dict):
        raise SemiEvolError(f"{path} is not a round config (a YAML mapping).")
    return overridden(config, loaded)


def round_config_from_args(ws, args) -> RoundConfig | None:
    """The round config: a saved file (--config), else the round's current config (see
    rounds.record.base_config), with command-line overrides on top; None when nothing was
    given."""
    changes = overrides(args, ROUND_FLAGS)
    if args.collaborators:
        changes["collaborators"] = [to_dict(parse_collaborator(s))
                                    for s in args.collaborators.split(",")]
    if not (changes or getattr(args, "config", None)):
        return None
    config = overridden(config_from_file(ws, getattr(args, "config", None)), changes)
    steps, floor = config.train.max_steps, config.train.min_steps
    if "train.max_steps" in changes and "train.min_steps" not in changes and 0 < steps < floor:
        # max_steps wins over min_steps by design (smoke runs), so a flag meant as "a bit
        # shorter" silently trained a 19 % model; that takes asking for it.
        raise SemiEvolError(
            f"--max-steps {steps} is below the {floor}-step minimum (min_steps), under which "
            f"the warm-up measured undertrained; add --min-steps {steps} to train only "
            f"{steps} steps on purpose.")
    return config


def parse_collaborator(spec: str) -> CollaboratorConfig:
    """`model:demonstrations:temperature:seed[@server]`, e.g. `warmup:3:1.0:1` or
    `base:3:1.0:2@vllm` (answered by the round config's server named vllm)."""
    body, _, server = spec.strip().partition("@")
    parts = body.split(":")
    if len(parts) != 4:
        raise SemiEvolError(f"Collaborator {spec!r}: expected model:demonstrations:"
                            "temperature:seed[@server], e.g. warmup:3:1.0:1.")
    try:
        return CollaboratorConfig(parts[0], int(parts[1]), float(parts[2]), int(parts[3]),
                                  server=server.strip())
    except ValueError as exc:
        raise SemiEvolError(f"Collaborator {spec!r}: {exc}.") from exc


def selection_from_args(base: SelectionConfig, args) -> SelectionConfig | None:
    """`base` with --policy / --theta / --threshold / --score on top; None when none given."""
    changes = overrides(args, SELECTION_FLAGS)
    return overridden(base, changes) if changes else None


def _base_selection(ws, round_number):
    rnd = latest_round(ws) if round_number is None else get_round(ws, round_number)
    return rnd, (selection_in_force(ws, rnd.id)[0] if rnd else base_config(ws).selection)


def cmd_step(args) -> int:
    ws = open_workspace(args.workspace)
    kind = args.command
    config = round_config_from_args(ws, args)
    selection = None
    if kind in launch.SELECTION_KINDS:
        rnd, base = _base_selection(ws, args.round)
        selection = selection_from_args(config.selection if config else base, args)
        if kind == "select" and args.preview:
            return _preview_selection(ws, rnd, selection or base)
    run_id = launch.start(ws, kind, background=args.background, config=config,
                          selection=selection, round_number=args.round,
                          force=getattr(args, "force", False),
                          review=not getattr(args, "no_review", False),
                          confirm=_confirmer(args),
                          announce=lambda text: print(text, file=sys.stderr))
    estimated = (jobs_request(ws, run_id).get("estimate") or {}).get("line")
    if estimated:
        print(f"estimate: {estimated}", file=sys.stderr)  # stdout keeps the results
    if args.background:
        print(f"Started run {run_id} ({kind}) in the background; follow it with "
              f"`semievol runs {args.workspace}` (log: runs/{run_id}.log).")
        return 0
    return _execute(ws, run_id, keep_log=True)


def cmd_keep_selection(args) -> int:
    ws = open_workspace(args.workspace)
    rnd = get_round(ws, args.round)
    kept = keep_for_next_rounds(ws, rnd.id)
    print(f"New rounds will select by {kept.describe()} (kept from round {rnd.number}).")
    return 0


def jobs_request(ws, run_id: int) -> dict:
    return jobs.get_run(ws, run_id)["request"] or {}


def _execute(ws, run_id: int, *, keep_log: bool) -> int:
    """Run a registered run here, with progress bars, and print each step's summary and
    what to do next."""
    number = jobs.get_run(ws, run_id)["request"]["round"]
    results = launch.execute(ws, run_id, progress=terminal_progress(),
                             on_step=step_banner(number), keep_log=keep_log)
    for step, result in results.items():
        _report(step, result)
    if "select" in results and "train" not in results:

        for warning in training_warnings(ws, jobs.get_run(ws, run_id)["round_id"]):
            print(f"WARNING: {warning['message']}")
    state = round_state(ws)
    print(f"next: {state['action']} (`{state['command']}`)")
    return 0


def _confirmer(args) -> str | None:
    """Who confirms a step despite the evidence's warnings (`--confirm`)."""
    import getpass

    if not getattr(args, "confirm", False):
        return None
    return args.reviewer or getpass.getuser()


def _preview_selection(ws, rnd, selection: SelectionConfig) -> int:
    """`select --preview`: what the selection would keep, computed from stored scores and
    written nowhere."""
    if rnd is None:
        raise SemiEvolError("No round yet: nothing to select from.")
    result = compute_selection(ws, rnd.id, selection, compare=True)
    summary, calibration = result.summary(), result.calibration()
    print(f"preview (round {rnd.number}, nothing written): {selection.policy} "
          f"theta={selection.theta:g} threshold={selection.threshold} score={selection.score}")
    print(f"would select {summary['selected']} of {summary['pool']} pool item(s); threshold "
          f"{summary['threshold']}; by class {json.dumps(summary['by_class'])}; pool by class "
          f"{json.dumps(summary['pool_by_class'])}; left out for leakage "
          f"{summary['excluded_leakage']}")
    for name in ("all", "selected"):
        _print_share(f"calibration {name}", calibration[name])
    print(student_line(summary.get("student")))
    if summary.get("mean_weight") is not None:
        print(f"weighted by the collaborators' confidence: mean loss weight "
              f"{summary['mean_weight']:.2f} of the selected pseudo-labels")
    print("\nevery policy on the same scores (theta, score and class floor as above):")
    for row in result.comparison:
        student = row["student"]
        known = (f"{student['same']}/{student['known']} already the student's answer"
                 if student["known"] else "student not measured")
        cal = row["calibration"]
        print(f"{'*' if row['current'] else ' '} {row['describe']:<24} selects "
              f"{row['selected']:>5} of {row['pool']}; {known}; calibration precision "
              + sampled_percent(cal["precision"], cal["n"], cal["interval"],
                                need="needs at least"))
    return 0


def student_line(student: dict | None) -> str:
    """How much of the selection the student answers already (it cannot learn those)."""
    if not student or not student["known"]:
        return "student: no collaborator is the warm-up model on its own; not measured"
    return (f"student: the warm-up model already answers {student['same']} of "
            f"{student['known']} selected pseudo-label(s) ({student['share']:.1%}) the same "
            "way on its own; training cannot teach it those")


def _print_share(name: str, r: dict) -> None:
    print(f"{name:<21} precision " + sampled_percent(r["precision"], r["n"], r["interval"],
                                                     need="needs at least"))


def _trained(result: dict) -> str:
    loss = result.get("final_loss")
    return (f"{result.get('steps', '?')} step(s)"
            + (f", resumed from step {result['resumed_from']}" if result.get("resumed_from")
               else "")
            + (f", final loss {loss:.3f}" if isinstance(loss, (int, float)) else "")
            + (f", {result['seconds']:.0f} s" if result.get("seconds") is not None else ""))


def _summary_line(step: str, result: dict) -> str:
    """One line in words for a step's result (the full result is in the run's row)."""
    if result.get("skipped"):
        return f"already done, kept {result['adapter']}"
    if step == "warmup" and "from_round" in result:
        return (f"starts from round {result['from_round']}'s {result['from']} adapter "
                f"({result['reason']})")
    if step == "warmup":
        return (f"trained on {result['examples']} labeled example(s), "
                f"{result.get('calibration_items', 0)} held out for calibration; "
                + _trained(result))
    if step == "select":
        human = result.get("human") or {}
        calibration = result.get("calibration") or {}
        selected = calibration.get("selected") or {}
        return (f"{result['selected']} of {result['pool']} pseudo-label(s) selected "
                f"(threshold {result['threshold']}); reviewer decisions: "
                f"{human.get('accepted', 0)} accepted, {human.get('rejected', 0)} rejected, "
                f"{human.get('relabeled', 0)} relabeled; {result.get('flagged_leakage', 0)} "
                "flagged as near-duplicates of test items; calibration precision of the "
                "selection " + sampled_percent(selected.get("precision"), selected.get("n"),
                                               selected.get("interval"),
                                               need="needs at least")
                + "; " + student_line(result.get("student")))
    if step == "train":
        counts = result.get("examples") or {}
        total = sum(counts.values()) if isinstance(counts, dict) else counts
        return (f"trained on {total} example(s) ({counts.get('gold', 0)} labeled, "
                f"{counts.get('human', 0)} labeled by a reviewer, {counts.get('pseudo', 0)} "
                f"pseudo-labels); " + _trained(result))
    return ", ".join(f"{k} {v}" for k, v in result.items() if not isinstance(v, (dict, list)))


def _report(step: str, result: dict) -> None:
    if step == "label":
        for line in result.get("servers", []):
            print(line)
        if result.get("warning"):
            print(f"WARNING: {result['warning']}")
        print(f"label: {result['items']} item(s); responses computed {result['computed']}, "
              f"cached {result['cached']}, reused from earlier rounds {result['reused']}; "
              f"pseudo-labels agreed {result['agreed']}, reflected {result['reflected']}, "
              f"already stored {result['skipped']}; model calls {result['model_calls']}")
    elif step == "evaluate":
        for name, r in result.items():
            if name == "regression":
                continue
            f1 = "" if r["macro_f1"] is None else f", macro-F1 {r['macro_f1']:.3f}"
            print(f"evaluate: {name:<11} {r['split']} accuracy {r['accuracy']:.3f}{f1}"
                  + (f" (majority baseline {r['majority_baseline']:.3f})"
                     if r.get("majority_baseline") is not None else ""))
        if "regression" in result:
            print(f"WARNING: {result['regression']['message']}")
    else:
        print(f"{step}: {_summary_line(step, result)}")
    if result.get("note"):
        print(f"NOTE: {result['note']}")
    if isinstance(result.get("prompts"), dict):

        print(f"{step} context budget: {PromptStats(**result['prompts']).line()}")


def cmd_worker(args) -> int:
    """The background process of a run: everything it needs is in the run's row."""
    return _execute(open_workspace(args.workspace), args.run_id, keep_log=False)


def cmd_resume(args) -> int:
    ws = open_workspace(args.workspace)
    run_id = launch.resume(ws, args.run_id, background=args.background)
    if args.background:
        print(f"Resumed run {args.run_id} as run {run_id} in the background.")
        return 0
    return _execute(ws, run_id, keep_log=True)


def cmd_runs(args) -> int:
    import datetime

    ws = open_workspace(args.workspace)
    runs = list_runs(ws, limit=args.limit)
    if not runs:
        print("No runs yet.")
    for r in runs:
        started = datetime.datetime.fromtimestamp(r["started_at"]).strftime("%Y-%m-%d %H:%M:%S")
        number = r["round_number"] or "-"
        line = (f"{r['id']:>4}  {r['kind']:<9} round {number:<3} "
                f"{r['status']:<10} {100 * (r['progress'] or 0):5.1f}%  pid {r['pid'] or '-':<7} "
                f"{started}  {r['message'] or ''}  ({run_clock(r)})")
        print(line)
        if r["status"] == "failed" and r["error"]:
            print(f"      error: {r['error'].splitlines()[0]}")
    return 0


def cmd_cancel(args) -> int:
    sent = cancel_run(open_workspace(args.workspace), args.run_id)
    print(f"Run {args.run_id}: " + ("cancel signal sent." if sent else "was not running."))
    return 0


def cmd_servers(args) -> int:
    """Probe the round config's servers: what each can do, stored for the next run."""
    ws = open_workspace(args.workspace)
    config = config_from_file(ws, args.config)
    if not config.servers:
        print("No servers configured: add `servers:` to a round config (see README, "
              "Scaling out) and pass it with --config.")
        return 0
    for line in probe_servers(ws, config):
        print(line)
    return 0


def cmd_calibration(args) -> int:
    ws = open_workspace(args.workspace)
    rnd = get_round(ws, args.round)
    report = calibration_report(ws, rnd.id, score=selection_in_force(ws, rnd.id)[0].score)
    if not report["n"]:
        print("No calibration items are pseudo-labeled in this round.")
        return 0
    for name in ("all", "selected", "agreed", "reflected"):
        _print_share(name, report[name])
    print(f"coverage of the selection: {report['coverage_selected']:.3f}")
    return 0


def confirm_options(p, what: str) -> None:
    """--confirm (and --reviewer, who confirms) for a step the workspace's evidence warns
    against: the warnings and who confirmed are recorded with the round."""
    p.add_argument("--confirm", action="store_true",
                   help=f"{what} (the warnings and who confirmed are recorded with the round)")
    p.add_argument("--reviewer", help="who confirms (default: the user name)")


def add_engine_commands(sub) -> None:
    def round_options(p, *, selection=False):
        p.add_argument("workspace")
        p.add_argument("--round", type=int, default=None, help="round number (default: latest)")
        p.add_argument("--background", action="store_true", help="run as a background process")
        g = p.add_argument_group("round config (stored with the round; a flag left out keeps "
                                 "the round's current setting)")
        g.add_argument("--config", help="YAML file with a saved round config")
        add_config_flags(g, RoundConfig, ROUND_FLAGS)
        g.add_argument("--collaborators",
                       help="comma-separated model:demos:temperature:seed[@server]")
        if selection:
            add_config_flags(p.add_argument_group("selection"), SelectionConfig,
                             SELECTION_FLAGS)
        p.set_defaults(func=cmd_step)
        return p

    p = round_options(sub.add_parser(
        "round", help="run a round: warmup, label, select, then wait for review (train with "
                      "`semievol train`); --no-review also trains and evaluates"),
        selection=True)
    p.add_argument("--no-review", action="store_true",
                   help="unattended: train and evaluate right after selection, without "
                        "waiting for a reviewer (scripts, benchmarks)")
    confirm_options(p, "start round 1 although a class has few labeled examples")
    confirm_options(round_options(sub.add_parser("warmup",
                                                 help="LoRA warm-up on the labeled set")),
                    "warm up although a class has few labeled examples")
    round_options(sub.add_parser("label", help="collaborators + agreement + reflection"))
    p = round_options(sub.add_parser("select", help="apply the selection policy and decisions"),
                      selection=True)
    p.add_argument("--preview", action="store_true",
                   help="show what the selection would keep, and write nothing")
    p = sub.add_parser("keep-selection", help="use a round's applied selection for the next "
                                              "rounds (the app's 'Use these settings')")
    p.add_argument("workspace")
    p.add_argument("--round", type=int, help="the round whose selection to keep (latest)")
    p.set_defaults(func=cmd_keep_selection)
    p = round_options(sub.add_parser("train", help="final LoRA training on the curated set "
                                                   "(then evaluation, when there is a test set)"))
    confirm_options(p, "train although the workspace's evidence warns against it")
    p = round_options(sub.add_parser("evaluate", help="test metrics of base, warm-up and the "
                                                      "round"))
    p.add_argument("--force", action="store_true", help="recompute stored evaluations")

    p = sub.add_parser("worker", help="(internal) execute a registered background run")
    p.add_argument("workspace")
    p.add_argument("run_id", type=int)
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("runs", help="list runs (foreground and background)")
    p.add_argument("workspace")
    p.add_argument("--limit", type=int, default=20)
    p.set_defaults(func=cmd_runs)

    p = sub.add_parser("cancel", help="cancel a running run")
    p.add_argument("workspace")
    p.add_argument("run_id", type=int)
    p.set_defaults(func=cmd_cancel)

    p = sub.add_parser("resume", help="run a failed or cancelled run's steps again")
    p.add_argument("workspace")
    p.add_argument("run_id", type=int)
    p.add_argument("--background", action="store_true", help="run as a background process")
    p.set_defaults(func=cmd_resume)

    p = sub.add_parser("servers", help="probe the round config's model servers (what each "
                                       "can serve)")
    p.add_argument("workspace")
    p.add_argument("--config", help="YAML round config with `servers:` (default: the round's)")
    p.set_defaults(func=cmd_servers)

    p = sub.add_parser("calibration", help="pseudo-label precision on the calibration slice")
    p.add_argument("workspace")
    p.add_argument("--round", type=int)
    p.set_defaults(func=cmd_calibration)
