"""Time the review page's queries on a large synthetic round (not a test).

    .venv/bin/python bench/review_query.py [--items 100000] [--runs 5]

Builds a workspace in a temp folder with N unlabeled items (4 collaborator responses each,
3 neighbours each, a pseudo-label with random entropy/path/label, decisions on ~5 % of the
items, some of them later cleared) by bulk SQL, then times `review_page` for several filtered
and sorted queries and `item_detail`, reporting the median of `--runs` runs in ms. Writes
bench/results/review_query.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from semievol.config import RoundConfig, TaskConfig  # noqa: E402
from semievol.saved_config import to_json  # noqa: E402
from semievol.views.review import (  # noqa: E402
    ReviewFilter,
    filtered_item_ids,
    item_detail,
    review_page,
    round_facets,
)
from semievol.views.status import round_rows  # noqa: E402
from semievol.workspace.store import Workspace  # noqa: E402

LABELS = ["billing", "outage", "equipment", "account"]
WORDS = ("bill charge refund invoice router internet outage broadband slow wifi password "
         "account payment engineer cable speed connection replacement contract fee late "
         "email modem signal storm street").split()
LABELED = 400


def fill(ws: Workspace, n: int, seed: int = 0) -> int:
    """N unlabeled items with a full round 1; returns the round id."""
    rng = random.Random(seed)
    ws.set_task(TaskConfig(kind="choice", labels=list(LABELS)))
    conn = ws.conn
    conn.execute("BEGIN IMMEDIATE")
    total = LABELED + n

    def question(i):
        return f"item {i}: " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 30)))

    conn.executemany(
        "INSERT INTO items(id, external_id, split, question, options, answer) VALUES(?,?,?,?,?,?)",
        ((i, f"X{i}", "labeled" if i <= LABELED else "unlabeled", question(i), None,
          rng.choice(LABELS) if i <= LABELED else None) for i in range(1, total + 1)))
    conn.executemany(
        "INSERT INTO neighbours(item_id, rank, neighbour_id, similarity) VALUES(?,?,?,?)",
        ((i, rank, rng.randint(1, LABELED), sim)
         for i in range(LABELED + 1, total + 1)
         for rank, sim in enumerate(sorted((rng.random() for _ in range(3)), reverse=True))))
    conn.execute("INSERT INTO rounds(id, number, status, config, created_at) "
                 "VALUES(1, 1, 'open', ?, ?)", (to_json(RoundConfig()), time.time()))

    def probs():
        raw = [rng.random() for _ in LABELS]
        return [x / sum(raw) for x in raw]

    conn.executemany(
        "INSERT INTO responses(round_id, item_id, collaborator, cache_key, answer, text, "
        "option_probs, option_entropy, nll) VALUES(1,?,?,?,?,?,?,?,?)",
        ((i, c, f"k{i}-{c}", a, a, json.dumps(probs()), rng.random() * 1.4, rng.random() * 3)
         for i in range(LABELED + 1, total + 1) for c in range(4)
         for a in (rng.choice(LABELS),)))
    conn.executemany(
        "INSERT INTO pseudo_labels(round_id, item_id, label, path, agreement, reflection_text, "
        "entropy, option_entropy, selected) VALUES(1,?,?,?,?,?,?,?,?)",
        ((i, rng.choice(LABELS), path, 1.0 if path == "agreed" else rng.choice([.5, .75]),
          None if path == "agreed" else "billing 0.40, outage 0.30, equipment 0.20, account 0.10",
          rng.random() * 4, rng.random() * 1.4, int(rng.random() < .5))
         for i in range(LABELED + 1, total + 1)
         for path in (rng.choice(["agreed", "reflected", "reflected"]),)))
    decided = rng.sample(range(LABELED + 1, total + 1), n // 20)
    rows = []
    for i in decided:
        action = rng.choice(["accept", "reject", "relabel"])
        rows.append((i, action, rng.choice(LABELS) if action == "relabel" else None))
    for i in decided[: len(decided) // 5]:  # a fifth of them cleared again
        rows.append((i, "clear", None))
    conn.executemany("INSERT INTO decisions(item_id, action, label, reviewer, note, created_at, "
                     "round_id) VALUES(?,?,?,'bench',NULL,?,1)",
                     ((i, a, label, time.time()) for i, a, label in rows))
    conn.execute("COMMIT")
    conn.execute("ANALYZE")
    return 1


def median_ms(fn, runs: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(runs):
        start = time.perf_counter()
        result = fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "review_query.json"))
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as folder:
        ws = Workspace(Path(folder) / "ws", create=True)
        start = time.perf_counter()
        rid = fill(ws, args.items)
        fill_s = time.perf_counter() - start
        page = 50
        last = 49  # page 50 of 50 rows: offset 2,450
        cases = [
            ("all, sort entropy asc, page 1", ReviewFilter(rid), 0),
            ("reflected + entropy 1..3, sort entropy desc, page 50",
             ReviewFilter(rid, path="reflected", entropy_min=1.0, entropy_max=3.0,
                          descending=True), last * page),
            ("label + selected, sort item, page 50",
             ReviewFilter(rid, label="outage", selected=True, sort="item"), last * page),
            ("search 'router wifi', sort entropy, page 1",
             ReviewFilter(rid, search="router wifi"), 0),
            ("search 'REFUND', sort similarity desc, page 1",
             ReviewFilter(rid, search="REFUND", sort="similarity", descending=True), 0),
            ("decision = reject, sort entropy, page 1", ReviewFilter(rid, decision="reject"), 0),
            ("decision = none + agreed, sort entropy desc, page 50",
             ReviewFilter(rid, decision="none", path="agreed", descending=True), last * page),
            ("all, sort similarity desc, page 50",
             ReviewFilter(rid, sort="similarity", descending=True), last * page),
            ("all, sort similarity asc, last page",
             ReviewFilter(rid, sort="similarity"), None),
        ]
        results = []
        for name, flt, offset in cases:
            if offset is None:  # the last page
                _, total = review_page(ws, flt, limit=page, offset=0)
                offset = max(total - page, 0)
            ms, (rows, total) = median_ms(
                lambda: review_page(ws, flt, limit=page, offset=offset), args.runs)
            results.append({"query": name, "median_ms": round(ms, 1), "total": total,
                            "rows": len(rows), "offset": offset})
        for name, fn in [
                ("filtered_item_ids (reflected + entropy 1..3)", lambda: filtered_item_ids(
                    ws, ReviewFilter(rid, path="reflected", entropy_min=1.0, entropy_max=3.0))),
                ("round_facets + round_rows (page controls)",
                 lambda: (round_facets(ws, rid), round_rows(ws)))]:
            ms, out = median_ms(fn, args.runs)
            results.append({"query": name, "median_ms": round(ms, 1),
                            "total": len(out) if isinstance(out, list) else
                            out[1][0]["pseudo_labels"],
                            "rows": len(out) if isinstance(out, list) else 1, "offset": 0})
        detail_id = args.items // 2 + LABELED
        ms, detail = median_ms(lambda: item_detail(ws, rid, detail_id), args.runs)
        results.append({"query": "item_detail", "median_ms": round(ms, 1), "total": 1,
                        "rows": len(detail["collaborators"]), "offset": 0})
        ws.close()

    report = {"items": args.items, "runs": args.runs, "page_size": page,
              "fill_seconds": round(fill_s, 1), "sqlite": sqlite3.sqlite_version,
              "python": platform.python_version(), "machine": platform.machine(),
              "results": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    width = max(len(r["query"]) for r in results)
    print(f"{args.items:,} unlabeled items, filled in {fill_s:.1f} s; median of {args.runs} "
          f"runs (SQLite {sqlite3.sqlite_version})")
    print(f"{'query':<{width}}  {'ms':>8}  {'total':>7}  {'rows':>4}")
    for r in results:
        print(f"{r['query']:<{width}}  {r['median_ms']:>8.1f}  {r['total']:>7}  {r['rows']:>4}")
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
