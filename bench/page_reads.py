"""How much one render of an app page reads: SQL statements, the library modules that issue
them, and the library calls that take the workspace.

    .venv/bin/python bench/page_reads.py [--page pages/6_Train_and_evaluate.py]

Builds a workspace from data/demo in a temporary folder with round 1 done (pseudo-labels,
a frozen training set, evaluations of base, base + demonstrations, warm-up and the round;
no model runs: rows are written directly), renders the page once with Streamlit's AppTest
and reports:
- `sql`: statements executed on the workspace database during that render;
- `calls`: library function calls that were handed the workspace (`ws`), the modules they
  belong to, and `stays` (runs of consecutive such calls in one module: a page that reads
  each thing once from one read model stays in few modules);
- every library call (`library_calls`, its modules and stays);
- the functions called more than once with the workspace (a thing read twice).
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import tempfile
import threading
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LIBRARY = str(REPO / "semievol")
APP = REPO / "app"


def build_workspace(root: Path, state: str = "done") -> Path:
    """data/demo imported (not indexed), round 1 with stored rows: `done` (trained on a
    frozen set and evaluated) or `awaiting_review` (selected, base and warm-up evaluated)."""
    from semievol.config import RoundConfig
    from semievol.curation.training_set import freeze, training_items
    from semievol.method.scoring import classification_report
    from semievol.rounds.record import open_round
    from semievol.saved_config import task_config_from_dict
    from semievol.workspace.imports import ColumnMapping, import_file
    from semievol.workspace.store import Workspace, now

    spec = json.loads((REPO / "data/demo/task.json").read_text())
    task = task_config_from_dict(spec["task"])
    ws = Workspace(root / "ws", create=True)
    for split, name in spec["files"].items():
        mapping = ColumnMapping(question="text", id="id",
                                answer=None if split == "unlabeled" else "label")
        import_file(ws, REPO / "data/demo" / name, split, mapping=mapping, task=task)
    rnd = open_round(ws, RoundConfig())
    pool = [r[0] for r in ws.query("SELECT id FROM items WHERE split='unlabeled' LIMIT 60")]
    ws.conn.executemany(
        "INSERT INTO pseudo_labels(round_id, item_id, label, path, agreement, entropy,"
        " selected) VALUES(?, ?, ?, 'agreed', 1.0, ?, ?)",
        [(rnd.id, i, task.labels[k % len(task.labels)], 0.01 * k, int(k % 2 == 0))
         for k, i in enumerate(pool)])
    ws.conn.execute("INSERT INTO selections(round_id, config, applied_at) VALUES(?, ?, ?)",
                    (rnd.id, json.dumps({"policy": "percentile", "theta": 50.0}), now()))
    if state == "done":
        freeze(ws, rnd.id, training_items(ws, 1))
        ws.conn.execute("UPDATE rounds SET status='done', warmup_adapter='adapters/w', "
                        "final_adapter='adapters/f' WHERE id=?", (rnd.id,))
    else:
        ws.conn.execute("UPDATE rounds SET status='awaiting_review', "
                        "warmup_adapter='adapters/w' WHERE id=?", (rnd.id,))
    gold = [r[0] for r in ws.query("SELECT answer FROM items WHERE split='test' ORDER BY id")]
    for round_id, model, right in ((None, "base", 0.3), (None, "base+demos", 0.4),
                                   (rnd.id, "warmup", 0.7), (rnd.id, "round", 0.8)):
        if model == "round" and state != "done":
            continue
        cut = int(len(gold) * right)
        predicted = gold[:cut] + [task.labels[0]] * (len(gold) - cut)
        report = classification_report(gold, predicted, task.labels)
        report.update(model=model, split="test")
        ws.conn.execute("INSERT INTO evaluations(round_id, model, split, accuracy, macro_f1,"
                        " report, created_at) VALUES(?, ?, 'test', ?, ?, ?, ?)",
                        (round_id, model, report["accuracy"], report["macro_f1"],
                         json.dumps(report), now()))
    ws.close()
    return root / "ws"


class Recorder:
    """SQL statements (by the library module that issued them) and library calls that were
    handed the workspace, while `on` is set."""

    def __init__(self):
        self.on = False
        self.sql: list[str] = []
        self.calls: list[tuple[str, str]] = []
        self.visits: list[str] = []

    @staticmethod
    def _module(filename: str) -> str | None:
        if not filename.startswith(LIBRARY):
            return None
        return Path(filename).relative_to(REPO).with_suffix("").as_posix().replace("/", ".")

    def statement(self, _sql: str) -> None:
        if not self.on:
            return
        frame = sys._getframe(1)
        while frame is not None:
            module = self._module(frame.f_code.co_filename)
            if module and not module.endswith(("store", "workspace.store")):
                self.sql.append(module)
                return
            frame = frame.f_back
        self.sql.append("(app)")

    def profile(self, frame, event, _arg):
        if not self.on or event != "call":
            return
        module = self._module(frame.f_code.co_filename)
        if module:
            self.visits.append(module)
        if module and "ws" in frame.f_code.co_varnames[:frame.f_code.co_argcount]:
            self.calls.append((module, frame.f_code.co_name))


def measure(page: str, state: str = "done") -> dict:
    from streamlit.testing.v1 import AppTest

    recorder = Recorder()
    connect = sqlite3.connect

    def traced(*args, **kwargs):
        conn = connect(*args, **kwargs)
        conn.set_trace_callback(recorder.statement)
        return conn

    sqlite3.connect = traced
    sys.setprofile(recorder.profile)
    threading.setprofile(recorder.profile)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            import os

            os.environ["SEMIEVOL_WORKSPACE"] = str(build_workspace(Path(tmp), state))
            at = AppTest.from_file(str(APP / "Home.py"), default_timeout=60).run()
            at.switch_page(page)
            recorder.on = True
            at.run()
            recorder.on = False
            if at.exception:
                raise SystemExit(f"the page failed: {at.exception}")
    finally:
        sys.setprofile(None)
        threading.setprofile(None)
        sqlite3.connect = connect
    modules = [m for m, _ in recorder.calls]
    repeated = {f"{m}.{f}": n for (m, f), n in Counter(recorder.calls).items() if n > 1}
    return {"page": page, "state": state, "sql": len(recorder.sql),
            "sql_modules": len(set(recorder.sql)),
            "calls": len(recorder.calls), "modules": len(set(modules)),
            "stays": _stays(modules), "library_calls": len(recorder.visits),
            "library_modules": len(set(recorder.visits)), "library_stays": _stays(recorder.visits),
            "repeated": dict(sorted(repeated.items(), key=lambda kv: -kv[1]))}


def _stays(modules: list[str]) -> int:
    """Runs of consecutive entries in the same module."""
    return sum(1 for k, m in enumerate(modules) if k == 0 or modules[k - 1] != m)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--page", default="pages/6_Train_and_evaluate.py")
    parser.add_argument("--state", choices=("done", "awaiting_review"), default="done",
                        help="round 1 done, or awaiting review")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    sys.path.insert(0, str(APP))
    result = measure(args.page, args.state)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{result['page']} (round 1 {result['state']}): {result['sql']} SQL statements "
          f"from {result['sql_modules']} "
          f"module(s); {result['calls']} library calls with the workspace, in "
          f"{result['modules']} module(s), {result['stays']} stays; all library calls: "
          f"{result['library_calls']} in {result['library_modules']} module(s), "
          f"{result['library_stays']} stays")
    for name, n in result["repeated"].items():
        print(f"  {n:>3} x {name}")


if __name__ == "__main__":
    main()
