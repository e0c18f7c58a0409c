"""Review and results commands of the CLI: decisions, the Review page's listing, the audit
queue, one item's lineage, exports. Each is a thin call into the library function the app's
pages call, so the CLI and the app record and show the same things.
"""

from __future__ import annotations

import json

from semievol.cli.engine import open_workspace
from semievol.cli.terminal import printable
from semievol.curation import audit
from semievol.curation.decisions import ACTIONS, label_reading, record_decisions
from semievol.errors import SemiEvolError
from semievol.export.dataset import export_dataset
from semievol.export.model import export_adapter, export_gguf, export_merged
from semievol.export.paths import human_size, parse_what
from semievol.method.pseudo_labels import PATHS
from semievol.rounds.record import get_round
from semievol.rounds.scores import adapter_scores, best_trained, describe
from semievol.views.decision_value import DEFAULT_DECISIONS, next_decisions_value
from semievol.views.focus import FOCUS_ORDERS, focus_queue
from semievol.views.lineage import item_lineage
from semievol.views.review import (DECISION_STATES, SORTS, ReviewFilter, filtered_item_ids,
                                   review_page)
from semievol.views.sampled import enough, sampled_percent
from semievol.workspace.items import item_id_of, item_row, resolve_item


def _item_ids(ws, refs: list[str], by_external: bool) -> list[int]:
    ids = []
    for ref in refs:
        found = item_id_of(ws, ref, external=by_external)
        if found is None:
            raise SemiEvolError(f"No item {ref!r} in this workspace"
                                + ("." if by_external else " (use --external for ids "
                                   "from your file)."))
        ids.append(found)
    return ids


def cmd_decide(args) -> int:
    ws = open_workspace(args.workspace)
    count = record_decisions(ws, _item_ids(ws, args.items, args.by_external), args.action,
                             reviewer=args.reviewer, label=args.label, note=args.note)
    label = f" as {label_reading(ws.task, args.label)}" if args.action == "relabel" else ""
    print(printable(f"Recorded {args.action}{label} for {count} item(s) by {args.reviewer}."))
    return 0


def cmd_review(args) -> int:
    """The Review page's listing: one page of a round's pseudo-labels, filtered and sorted."""
    ws = open_workspace(args.workspace)
    rnd = get_round(ws, args.round)
    flt = ReviewFilter(rnd.id, path=args.path, entropy_min=args.entropy_min,
                       entropy_max=args.entropy_max, label=args.label, decision=args.decision,
                       selected=None if args.selected is None else args.selected == "yes",
                       search=args.search or "", sort=args.sort, descending=args.descending)
    if args.value is not None and not args.order:
        raise SemiEvolError("--value estimates a queue's next decisions: give the queue with "
                            "--order.")
    if args.value is not None and args.value < 1:
        raise SemiEvolError(f"--value is a number of decisions (1 or more), not {args.value}.")
    value = None
    if args.order:  # the focus queue's order over what the filters keep
        total = len(filtered_item_ids(ws, flt))
        every, _ = review_page(ws, flt, limit=max(1, total), offset=0, total=total)
        by_item = {r["item_id"]: r for r in every}
        ranked = [by_item[i] for i in focus_queue(ws, rnd.id, args.order) if i in by_item]
        rows = ranked[args.offset:args.offset + args.limit]
        value = next_decisions_value(ws, rnd.id, args.order, args.value or DEFAULT_DECISIONS)
    else:
        rows, total = review_page(ws, flt, limit=args.limit, offset=args.offset)
    if args.json:
        print(json.dumps({"total": total, "rows": rows, **({"value": value} if value else {})},
                         indent=2, default=str))
        return 0
    print(f"round {rnd.number}: {total} item(s) match; showing {args.offset + 1}-"
          f"{args.offset + len(rows)}")
    for r in rows:
        decision = r["decision"] or "-"
        if r["decision"] == "relabel":
            decision += f"->{r['decision_label']}"
        entropy = "-" if r["entropy"] is None else f"{r['entropy']:.3f}"
        print(printable(f"{r['external_id']:<12} {r['label']:<16} {r['path']:<9} agree "
              f"{r['agreement']:.2f} entropy {entropy:<6} "
              f"{'selected' if r['selected'] else '-':<8} "
              f"{decision:<14} {r['question'][:60]!r}"))
    if value:
        print(value["message"])
    return 0


def cmd_audit(args) -> int:
    ws = open_workspace(args.workspace)
    rnd = get_round(ws, args.round)
    rows = audit.audit_rows(ws, rnd.id, args.per_bin)
    estimate = audit.audit_estimate(ws, rnd.id, args.per_bin)
    if args.json:
        print(json.dumps({"queue": rows, "estimate": estimate}, indent=2, default=str))
        return 0
    if not rows:
        print("Nothing to audit: apply a selection first (`semievol select WORKSPACE`).")
        return 0
    print(f"audit queue of round {rnd.number} ({len(rows)} item(s), most confident bin first):")
    for r in rows:
        print(printable(f"  bin {r['bin']}  {r['id']:<12} {r['pseudo_label']:<16} score "
                        f"{r['score']:.3f}  {r['decision'] or 'undecided':<10} "
                        f"{r['question'][:60]!r}"))
    error = None if estimate["error_rate"] is None else sampled_percent(
        estimate["error_rate"], estimate["reviewed"], estimate["interval"])
    if error is None or not enough(estimate["reviewed"]):
        need = sampled_percent(None, estimate["reviewed"])
        print(f"estimated error rate of the selection: {need} audited items (decide on them "
              "with `semievol decide`)")
    else:
        print(f"estimated error rate of the selection: {error}; {estimate['reviewed']} of "
              f"{estimate['queue']} audited")
    return 0


def cmd_lineage(args) -> int:
    ws = open_workspace(args.workspace)
    item_id = resolve_item(ws, args.item)
    if item_id is None:
        raise SemiEvolError(f"No item {args.item!r} in this workspace.")
    item = item_row(ws, item_id)
    rows = item_lineage(ws, item_id)
    if args.json:
        print(json.dumps({"item": item, "rounds": rows}, indent=2, default=str))
        return 0
    print(printable(f"{item['external_id']} ({item['split']}): {item['question'][:120]!r}"))
    if not rows:
        print("No round has pseudo-labeled this item.")
    for r in rows:
        answers = "; ".join(f"{a['name']}: {a['answer']}" for a in r["answers"])
        decisions = "; ".join(f"{d['action']}{' -> ' + d['label'] if d['label'] else ''} by "
                              f"{d['reviewer']}" for d in r["decisions"]) or "none"
        print(printable(
            f"round {r['round']}: {answers} => {r['pseudo_label']} ({r['path']}, entropy "
            f"{r['entropy']}); policy {r['policy'] or 'not applied'}, threshold "
            f"{r['threshold']}, selected {r['selected']}; decisions: {decisions}; "
            f"trained into {r['adapter'] or '-'}"))
    return 0


def cmd_export(args) -> int:
    ws = open_workspace(args.workspace)
    what = set(parse_what(args.what))
    number = get_round(ws, args.round).number  # latest when not given; 0/unknown: error
    best = best_trained(adapter_scores(ws))
    if args.round is None and best and best["round"] != number:
        print(f"note: exporting round {number} (the latest); round {best['round']} scores "
              f"higher ({describe(best)}): pass --round {best['round']} to export it.")
    out = args.out  # None: the workspace's exports/ folder
    if "dataset" in what:
        written = export_dataset(ws, number, out)
        for kind in ("jsonl", "csv", "parquet", "dataset"):
            print(f"{kind}: {written[kind]}")
    if "adapter" in what:
        print(f"adapter: {export_adapter(ws, number, out)}")
    if "merged" in what:
        print(f"merged model: {export_merged(ws, number, out)}")
    if "gguf" in what:
        info = export_gguf(ws, number, out, gguf_type=args.gguf_type)
        print(f"gguf: {info['path']} ({info['type']}, {human_size(info['bytes'])}), with "
              f"Modelfile and README.md (model card) in {info['folder']}")
        if info.get("note"):
            print(f"NOTE: {info['note']}")
    return 0


def add_review_commands(sub) -> None:
    p = sub.add_parser("decide", help="accept / reject / relabel / clear pseudo-labels")
    p.add_argument("workspace")
    p.add_argument("items", nargs="+", help="item ids (or external ids with --external)")
    p.add_argument("--action", required=True, choices=ACTIONS)
    p.add_argument("--label", help="the new label (relabel)")
    p.add_argument("--reviewer", required=True)
    p.add_argument("--note")
    p.add_argument("--external", dest="by_external", action="store_true")
    p.set_defaults(func=cmd_decide)

    p = sub.add_parser("review", help="list a round's pseudo-labels with the Review page's "
                                      "filters")
    p.add_argument("workspace")
    p.add_argument("--round", type=int)
    p.add_argument("--path", choices=PATHS)
    p.add_argument("--label")
    p.add_argument("--decision", choices=DECISION_STATES)
    p.add_argument("--selected", choices=("yes", "no"))
    p.add_argument("--entropy-min", type=float)
    p.add_argument("--entropy-max", type=float)
    p.add_argument("--search")
    p.add_argument("--sort", choices=SORTS, default="entropy")
    p.add_argument("--descending", action="store_true")
    p.add_argument("--order", choices=tuple(FOCUS_ORDERS),
                   help="list in a review queue's order instead of --sort (focus mode's "
                        "queues: " + "; ".join(f"{k}: {v}" for k, v in FOCUS_ORDERS.items())
                        + ")")
    p.add_argument("--value", type=int, metavar="N",
                   help=f"with --order: what the queue's next N decisions are worth, from the "
                        f"workspace's evidence (default {DEFAULT_DECISIONS}; printed after the "
                        "list)")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--offset", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_review)

    p = sub.add_parser("audit", help="the audit queue and the selection's estimated error rate")
    p.add_argument("workspace")
    p.add_argument("--round", type=int)
    p.add_argument("--per-bin", type=int, default=4, help="items per entropy bin")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_audit)

    p = sub.add_parser("lineage", help="every round one item went through")
    p.add_argument("workspace")
    p.add_argument("item", help="external id (or internal number)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_lineage)

    p = sub.add_parser("export", help="curated dataset, adapter, merged model, GGUF")
    p.add_argument("workspace")
    p.add_argument("--round", type=int)
    p.add_argument("--out", help="folder (default: WORKSPACE/exports)")
    p.add_argument("--what", default="dataset,adapter",
                   help="comma-separated: dataset, adapter, merged, gguf")
    p.add_argument("--gguf-type", default="f16", choices=("f16", "q8_0", "f32"),
                   help="weights of the GGUF export (default f16)")
    p.set_defaults(func=cmd_export)
