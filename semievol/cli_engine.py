"""Engine commands of the CLI: the round's steps, runs, decisions, export.

Each long step runs inside `jobs.run_context`, so a foreground run is registered exactly like
a background one: `semievol runs` sees it, and a killed one shows as failed.
`--background` starts the same command as a detached process and returns at once.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from semievol.errors import SemiEvolError


def _round_config(args):
    """The round config: a saved file (--config), else the round's current config (see
    rounds.base_config), with command-line overrides on top; None when nothing was given."""
    from semievol.config import round_config_from_dict, to_dict
    from semievol.rounds import base_config
    from semievol.store import Workspace

    data = to_dict(base_config(Workspace(args.workspace)))
    if getattr(args, "config", None):
        import yaml
        loaded = yaml.safe_load(Path(args.config).read_text()) or {}
        for key, value in loaded.items():  # a partial file overrides only what it names
            if isinstance(value, dict) and isinstance(data.get(key), dict):
                data[key].update(value)
            else:
                data[key] = value
    overrides = {("train", "epochs"): args.epochs, ("train", "max_steps"): args.max_steps,
                 ("train", "learning_rate"): args.lr, ("train", "batch_size"): args.batch_size,
                 ("train", "class_balance"): args.class_balance, ("retrieval", "k"): args.k,
                 ("model", "name_or_path"): args.model, ("model", "dtype"): args.dtype,
                 ("calibration", "fraction"): args.calibration}
    for (section, key), value in overrides.items():
        if value is not None:
            data[section][key] = value
    if args.unlabeled_limit is not None:
        data["unlabeled_limit"] = args.unlabeled_limit
    if args.collaborators:
        data["collaborators"] = [to_dict(parse_collaborator(s))
                                 for s in args.collaborators.split(",")]
    config = round_config_from_dict(data)
    explicit = bool(getattr(args, "config", None)) or any(
        v is not None for v in list(overrides.values()) + [args.unlabeled_limit]) \
        or bool(args.collaborators)
    return config if explicit else None


def parse_collaborator(spec: str):
    """`model:demonstrations:temperature:seed`, e.g. `warmup:3:1.0:1`."""
    from semievol.config import CollaboratorConfig

    parts = spec.strip().split(":")
    if len(parts) != 4:
        raise SemiEvolError(f"Collaborator {spec!r}: expected model:demonstrations:"
                            "temperature:seed, e.g. warmup:3:1.0:1.")
    try:
        return CollaboratorConfig(parts[0], int(parts[1]), float(parts[2]), int(parts[3]))
    except ValueError as exc:
        raise SemiEvolError(f"Collaborator {spec!r}: {exc}.") from exc


def _progress(handle):
    from semievol.cli import tqdm_progress

    bar = tqdm_progress("")

    def update(done, total, message=""):
        handle.progress(done, total, message)
        bar(done, total, message)
    return update


def _background(args, kind: str, round_id: int | None, config: dict | None) -> int:
    # The app's buttons and `--background` start a step the same way (semievol.launch): the
    # resolved config saved as YAML under runs/, the round number pinned on the command line.
    from semievol.config import SelectionConfig, round_config_from_dict
    from semievol.launch import launch_step
    from semievol.store import Workspace

    selection = None
    if kind in ("select", "round") and (args.policy or args.theta is not None
                                        or args.threshold is not None or args.score):
        current = round_config_from_dict(config).selection
        selection = SelectionConfig(policy=args.policy or current.policy,
                                    theta=current.theta if args.theta is None else args.theta,
                                    threshold=args.threshold if args.threshold is not None
                                    else current.threshold, score=args.score or current.score)
    run_id = launch_step(Workspace(args.workspace), kind, config=_round_config(args),
                         selection=selection, round_number=args.round,
                         force=getattr(args, "force", False))
    print(f"Started run {run_id} ({kind}) in the background; follow it with "
          f"`semievol runs {args.workspace}` (log: runs/{run_id}.log).")
    return 0


def cmd_step(args) -> int:
    from semievol import jobs, rounds
    from semievol.config import SelectionConfig, to_dict
    from semievol.store import Workspace

    ws = Workspace(args.workspace)
    kind = args.command
    config = _round_config(args)
    rnd = rounds.open_round(ws, config) if kind in ("warmup", "round") or config else \
        rounds.get_round(ws, args.round)
    if args.background:
        return _background(args, kind, rnd.id, to_dict(rnd.config))
    selection = None
    if kind in ("select", "round") and (args.policy or args.theta is not None
                                        or args.threshold is not None or args.score):
        current = rnd.config.selection
        selection = SelectionConfig(policy=args.policy or current.policy,
                                    theta=current.theta if args.theta is None else args.theta,
                                    threshold=args.threshold if args.threshold is not None
                                    else current.threshold, score=args.score or current.score)
    with jobs.run_context(ws, kind, round_id=rnd.id, config=to_dict(rnd.config)) as handle:
        progress = _progress(handle)
        steps = rounds.STEPS if kind == "round" else (kind,)
        for step in steps:
            rnd = rounds.get_round(ws, rnd.number)  # each step sees the previous one's output
            print(f"== round {rnd.number}: {step}", file=sys.stderr)
            if step == "warmup":
                result = rounds.step_warmup(ws, rnd, progress=progress, metric=handle.metric)
            elif step == "label":
                result = rounds.step_label(ws, rnd, progress=progress)
            elif step == "select":
                result = rounds.step_select(ws, rnd, selection=selection)
            elif step == "train":
                result = rounds.step_train(ws, rnd, progress=progress, metric=handle.metric)
            else:
                result = rounds.step_evaluate(ws, rnd, progress=progress,
                                              force=getattr(args, "force", False))
            _report(step, result)
    return 0


def _report(step: str, result: dict) -> None:
    if step == "label":
        print(f"label: {result['items']} item(s); responses computed {result['computed']}, "
              f"cached {result['cached']}, reused from earlier rounds {result['reused']}; "
              f"pseudo-labels agreed {result['agreed']}, reflected {result['reflected']}, "
              f"already stored {result['skipped']}; model forward calls {result['model_calls']}")
    elif step == "evaluate":
        for name, r in result.items():
            f1 = "" if r["macro_f1"] is None else f", macro-F1 {r['macro_f1']:.3f}"
            print(f"evaluate: {name:<11} accuracy {r['accuracy']:.3f}{f1}"
                  + (f" (majority baseline {r['majority_baseline']:.3f})"
                     if r.get("majority_baseline") is not None else ""))
    else:
        print(f"{step}: " + json.dumps(result, default=str))


def cmd_runs(args) -> int:
    import datetime

    from semievol.jobs import list_runs
    from semievol.store import Workspace

    runs = list_runs(Workspace(args.workspace), limit=args.limit)
    if not runs:
        print("No runs yet.")
    for r in runs:
        started = datetime.datetime.fromtimestamp(r["started_at"]).strftime("%Y-%m-%d %H:%M:%S")
        line = (f"{r['id']:>4}  {r['kind']:<9} round {r['round_id'] or '-':<3} "
                f"{r['status']:<10} {100 * (r['progress'] or 0):5.1f}%  pid {r['pid'] or '-':<7} "
                f"{started}  {r['message'] or ''}")
        print(line)
        if r["status"] == "failed" and r["error"]:
            print(f"      error: {r['error'].splitlines()[0]}")
    return 0


def cmd_cancel(args) -> int:
    from semievol.jobs import cancel_run
    from semievol.store import Workspace

    sent = cancel_run(Workspace(args.workspace), args.run_id)
    print(f"Run {args.run_id}: " + ("cancel signal sent." if sent else "was not running."))
    return 0


def cmd_decide(args) -> int:
    from semievol.curation import record_decisions
    from semievol.store import Workspace

    ws = Workspace(args.workspace)
    ids = []
    for ref in args.items:
        if args.by_external:
            row = ws.query("SELECT id FROM items WHERE external_id=?", (ref,))
        else:
            row = ws.query("SELECT id FROM items WHERE id=?", (int(ref),)) if ref.isdigit() else []
        if not row:
            raise SemiEvolError(f"No item {ref!r} in this workspace"
                                + ("." if args.by_external else " (use --external for ids "
                                   "from your file)."))
        ids.append(row[0][0])
    count = record_decisions(ws, ids, args.action, reviewer=args.reviewer, label=args.label,
                             note=args.note)
    print(f"Recorded {args.action} for {count} item(s) by {args.reviewer}.")
    return 0


def cmd_export(args) -> int:
    from semievol import export, rounds
    from semievol.store import Workspace

    ws = Workspace(args.workspace)
    number = args.round or rounds.get_round(ws).number
    out = Path(args.out) if args.out else ws.path / "exports"
    what = set(args.what.split(","))
    if "dataset" in what:
        for kind, path in export.export_dataset(ws, number, out).items():
            print(f"{kind}: {path}")
    if "adapter" in what:
        print(f"adapter: {export.export_adapter(ws, number, out)}")
    if "merged" in what:
        print(f"merged model: {export.export_merged(ws, number, out)}")
    return 0


def cmd_calibration(args) -> int:
    from semievol import rounds
    from semievol.calibration import calibration_report
    from semievol.store import Workspace

    ws = Workspace(args.workspace)
    rnd = rounds.get_round(ws, args.round)
    report = calibration_report(ws, rnd.id, score=rnd.config.selection.score)
    if not report["n"]:
        print("No calibration items are pseudo-labeled in this round.")
        return 0
    for name in ("all", "selected", "agreed", "reflected"):
        r = report[name]
        precision = "-" if r["precision"] is None else f"{r['precision']:.3f}"
        print(f"{name:<9} n={r['n']:<4} precision {precision} "
              f"(95% CI {r['interval'][0]:.2f}-{r['interval'][1]:.2f})")
    print(f"coverage of the selection: {report['coverage_selected']:.3f}")
    return 0


def add_engine_commands(sub) -> None:
    def round_options(p, *, selection=False):
        p.add_argument("workspace")
        p.add_argument("--round", type=int, default=None, help="round number (default: latest)")
        p.add_argument("--background", action="store_true", help="run as a background process")
        g = p.add_argument_group("round config (stored with the round)")
        g.add_argument("--config", help="YAML file with a saved round config")
        g.add_argument("--model", help="`bundled`, a local folder or a cached hub id")
        g.add_argument("--dtype", choices=["auto", "bfloat16", "float32"])
        g.add_argument("--epochs", type=float)
        g.add_argument("--max-steps", type=int)
        g.add_argument("--lr", type=float)
        g.add_argument("--batch-size", type=int)
        g.add_argument("--class-balance", choices=["none", "sampler", "loss"])
        g.add_argument("-k", type=int, dest="k", help="retrieved demonstrations per item")
        g.add_argument("--calibration", type=float, help="held-out share of the labeled set")
        g.add_argument("--unlabeled-limit", type=int, help="pseudo-label at most N items")
        g.add_argument("--collaborators", help="comma-separated model:demos:temperature:seed")
        if selection:
            s = p.add_argument_group("selection")
            s.add_argument("--policy", choices=["percentile", "per_class", "agreement_only",
                                                "absolute"])
            s.add_argument("--theta", type=float, help="percentile (0-100)")
            s.add_argument("--threshold", type=float, help="entropy bound (absolute policy)")
            s.add_argument("--score", choices=["nll", "option_entropy"])
        p.set_defaults(func=cmd_step)

    round_options(sub.add_parser("round", help="run a whole round: warmup, label, select, "
                                               "train, evaluate"), selection=True)
    round_options(sub.add_parser("warmup", help="LoRA warm-up on the labeled set"))
    round_options(sub.add_parser("label", help="collaborators + agreement + reflection"))
    round_options(sub.add_parser("select", help="apply the selection policy and decisions"),
                  selection=True)
    round_options(sub.add_parser("train", help="final LoRA training on the curated set"))
    p = sub.add_parser("evaluate", help="test metrics of base, warm-up and the round")
    round_options(p)
    p.add_argument("--force", action="store_true", help="recompute stored evaluations")

    p = sub.add_parser("runs", help="list runs (foreground and background)")
    p.add_argument("workspace")
    p.add_argument("--limit", type=int, default=20)
    p.set_defaults(func=cmd_runs)

    p = sub.add_parser("cancel", help="cancel a running run")
    p.add_argument("workspace")
    p.add_argument("run_id", type=int)
    p.set_defaults(func=cmd_cancel)

    p = sub.add_parser("decide", help="accept / reject / relabel / clear pseudo-labels")
    p.add_argument("workspace")
    p.add_argument("items", nargs="+", help="item ids (or external ids with --external)")
    p.add_argument("--action", required=True, choices=["accept", "reject", "relabel", "clear"])
    p.add_argument("--label", help="the new label (relabel)")
    p.add_argument("--reviewer", required=True)
    p.add_argument("--note")
    p.add_argument("--external", dest="by_external", action="store_true")
    p.set_defaults(func=cmd_decide)

    p = sub.add_parser("calibration", help="pseudo-label precision on the calibration slice")
    p.add_argument("workspace")
    p.add_argument("--round", type=int)
    p.set_defaults(func=cmd_calibration)

    p = sub.add_parser("export", help="curated dataset, adapter, merged model")
    p.add_argument("workspace")
    p.add_argument("--round", type=int)
    p.add_argument("--out", help="folder (default: WORKSPACE/exports)")
    p.add_argument("--what", default="dataset,adapter", help="dataset,adapter,merged")
    p.set_defaults(func=cmd_export)

