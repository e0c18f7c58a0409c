"""How fast a reviewer gets through the demo in focus mode, keyboard only, in a real browser.

    .venv/bin/python bench/review_timing.py                 # 50 items of workspaces/demo
    .venv/bin/python bench/review_timing.py --items 50 --workspace workspaces/demo

Works on a copy of the workspace (the original is left as it is). When its latest round is
not awaiting review, a round is run first through the library (warm-up, label, select,
review-first, with the bundled model and short training: the pseudo-labels' quality does
not matter here, only that there are items to review). Then the app is served on the copy,
the Review page opened in focus mode, and N items are reviewed with one key each, as a
reviewer who knows the answers would (data/demo/unlabeled_answers.csv: `A` when the
pseudo-label is right, the number of the right label otherwise). For every key the time
from the key press to the next item shown is measured.

Writes bench/results/review_timing.{json,md}.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the browser helpers the browser test uses
sys.path.insert(0, str(Path(__file__).resolve().parent))

from browser_support import CHROMIUM_ARGS, open_page, start_server  # noqa: E402
from common import RESULTS, machine_info  # noqa: E402

CLICKS_BEFORE = 150
"""Clicks to review 50 items before focus mode (issue 10's walk: pick each item in a
dropdown, scroll to the Decide buttons, click; ~3 per item, plus scrolling)."""


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workspace", type=Path, default=REPO / "workspaces" / "demo")
    p.add_argument("--answers", type=Path, default=REPO / "data" / "demo" /
                   "unlabeled_answers.csv")
    p.add_argument("--items", type=int, default=50)
    p.add_argument("--max-steps", type=int, default=10, help="training steps of the warm-up")
    p.add_argument("--unlabeled-limit", type=int, default=80)
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--copy", type=Path, default=None,
                   help="where the workspace copy goes (kept; reused when it already has a "
                        "round awaiting review); default: a temporary folder, removed after")
    return p.parse_args(argv)


def prepare_round(ws, args) -> float:
    """A round awaiting review on the copy (seconds it took; 0 when there was one)."""
    from semievol.rounds.record import base_config, latest_round
    from semievol.runs import launch

    latest = latest_round(ws)
    if latest is not None and latest.status == "awaiting_review":
        return 0.0
    config = base_config(ws)
    config.train.max_steps = args.max_steps
    config.unlabeled_limit = args.unlabeled_limit
    started = time.time()
    run_id = launch.start(ws, "round", background=False, config=config,
                          confirm="review-timing bench")  # a warning must not stop it
    launch.execute(ws, run_id)
    return time.time() - started


def review(url: str, chromium: str, answers: dict, items: int, options_of) -> list[dict]:
    from playwright.sync_api import sync_playwright

    records = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 2000})
        open_page(page, f"{url}/Review", "Review")
        field = page.get_by_role("textbox", name="Reviewer", exact=True)
        field.fill("timing-bench")
        field.press("Enter")
        page.wait_for_load_state("networkidle")
        header = page.locator("h4").filter(has_text="Item ")
        for _ in range(items):
            shown = header.first.inner_text()
            external = shown.split("Item ", 1)[1].strip()
            pseudo = page.get_by_test_id("stMetricValue").first.inner_text().strip()
            options = options_of(external)  # the number keys follow the item's options
            truth = answers[external]
            key = "a" if pseudo == truth else str(options.index(truth) + 1)
            page.get_by_role("heading", name="Review", exact=True).first.click()
            t0 = time.perf_counter()
            page.keyboard.press(key)
            try:
                page.wait_for_function(
                    "shown => { const h = [...document.querySelectorAll('h4')]"
                    ".find(e => e.innerText.startsWith('Item ')); "
                    "return h && h.innerText !== shown; }", arg=shown, timeout=30_000)
            except Exception:
                shot = REPO / "test-output" / "review_timing_stuck.png"
                shot.parent.mkdir(exist_ok=True)
                page.screenshot(path=str(shot))
                raise RuntimeError(f"item {external} stayed after key {key!r} (pseudo-label "
                                   f"{pseudo!r}, truth {truth!r}, options {options}); see "
                                   f"{shot}") from None
            records.append({"item": external, "key": key, "pseudo_label": pseudo,
                            "truth": truth, "seconds": time.perf_counter() - t0})
        browser.close()
    return records


def item_options(workspace: Path, external: str) -> list[str]:
    from semievol.workspace.items import item_row, resolve_item
    from semievol.workspace.store import Workspace

    with Workspace(workspace) as ws:
        return item_row(ws, resolve_item(ws, external))["options"]


def main(argv=None) -> int:
    args = parse_args(argv)
    from semievol.model.loading import set_offline
    from semievol.workspace.store import Workspace

    set_offline()
    if not (args.workspace / "workspace.db").exists():
        raise SystemExit(f"No workspace at {args.workspace}: run `make demo` first.")
    with open(args.answers, newline="", encoding="utf-8") as fh:
        answers = {r["id"]: r["label"] for r in csv.DictReader(fh)}
    temporary = args.copy is None
    copy = args.copy or Path(tempfile.mkdtemp(prefix="semievol-review-timing-")) / \
        args.workspace.name
    if not (copy / "workspace.db").exists():
        shutil.copytree(args.workspace, copy)
    with Workspace(copy) as ws:
        prepared = prepare_round(ws, args)
        pool = ws.scalar("SELECT COUNT(*) FROM pseudo_labels p JOIN items i ON i.id = "
                         "p.item_id JOIN rounds r ON r.id = p.round_id WHERE i.split = "
                         "'unlabeled' AND r.number = (SELECT MAX(number) FROM rounds)")
    process, url = start_server(copy)
    try:
        records = review(url, shutil.which("chromium"), answers, min(args.items, pool),
                         lambda external: item_options(copy, external))
    finally:
        process.terminate()
        if temporary:
            shutil.rmtree(copy.parent, ignore_errors=True)
    times = sorted(r["seconds"] for r in records)
    p95 = times[min(len(times) - 1, int(round(0.95 * (len(times) - 1))))]
    result = {
        "command": " ".join(["bench/review_timing.py", *(argv or sys.argv[1:])]),
        "items": len(records), "key_presses": len(records),
        "key_presses_per_item": len(records) / len(records),
        "clicks_before": CLICKS_BEFORE,
        "median_seconds": statistics.median(times), "p95_seconds": p95,
        "max_seconds": times[-1], "total_seconds": sum(times),
        "relabeled": sum(r["key"] != "a" for r in records),
        "round_prepared_seconds": round(prepared, 1), "machine": machine_info("auto"),
        "records": records}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "review_timing.json").write_text(json.dumps(result, indent=2))
    md = (f"# Review timing: {result['items']} demo items in focus mode, keyboard only\n\n"
          f"`{result['command']}`\n\n"
          "| measure | value |\n|---|---|\n"
          f"| items reviewed | {result['items']} ({result['relabeled']} relabeled) |\n"
          f"| key presses per item | {result['key_presses_per_item']:.1f} (before: about "
          f"{CLICKS_BEFORE / 50:.0f} clicks per item plus scrolling) |\n"
          f"| key press to next item, median | {result['median_seconds']:.2f} s |\n"
          f"| key press to next item, 95th percentile | {result['p95_seconds']:.2f} s |\n"
          f"| slowest | {result['max_seconds']:.2f} s |\n"
          f"| CPU | {result['machine'].get('cpu')} "
          f"({(result['machine'].get('cpu_identity') or {}).get('key', '?')}, "
          f"{result['machine'].get('cores')} cores) |\n")
    (args.out / "review_timing.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
