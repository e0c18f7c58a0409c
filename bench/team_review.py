"""A team reviewing at once: N reviewers (default 5), each in a browser context of their own
on one team-mode server (`semievol serve --team`), make M decisions each (default 40) from
the keyboard in focus mode, all at the same time, with a share of the items (default 20 %)
handed to two reviewers.

    .venv/bin/python bench/team_review.py
    .venv/bin/python bench/team_review.py --reviewers 5 --decisions 40 --overlap 0.2

The workspace is built for the bench (a 3-class task, 400 unlabeled items with stored
pseudo-labels; no model runs: what is measured is the hand-out and the app). Each reviewer
presses a key per item (accept, reject or a relabel, drawn from a seeded generator) and the
bench records which item it was shown and what it pressed. Afterwards the workspace is read:

- decisions lost: pressed but not stored (0 expected);
- wrong attribution: a stored decision whose reviewer is not the one who pressed for that
  item, or whose action differs (0 expected);
- double hand-outs outside overlap: an item decided by two reviewers that is not an overlap
  item, or by three (0 expected);
- key-to-next-item time: from the key press to the next item's header, per press.

Writes bench/results/<cpu>/team_review.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the browser helpers the browser tests use
sys.path.insert(0, str(Path(__file__).resolve().parent))

from browser_support import CHROMIUM_ARGS, start_server  # noqa: E402
from common import cpu_identity, cpu_results  # noqa: E402

LABELS = ["billing", "outage", "equipment"]
KEYS = ["a", "a", "a", "x", "1", "2", "3"]
"""Mostly accepts, some rejects and relabels (the number keys follow LABELS)."""


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reviewers", type=int, default=5)
    p.add_argument("--decisions", type=int, default=40, help="decisions per reviewer")
    p.add_argument("--overlap", type=float, default=0.2)
    p.add_argument("--items", type=int, default=400)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None,
                   help="folder for the results (default: bench/results/<cpu>/)")
    return p.parse_args(argv)


def build_workspace(folder: Path, items: int, reviewers: int, overlap: float, seed: int):
    """A team workspace: a lead and `reviewers` reviewers, a round awaiting review over
    `items` pseudo-labeled items. Returns {name: password}."""
    from semievol.config import TaskConfig
    from semievol.rounds.record import open_round
    from semievol.team.accounts import add_user
    from semievol.team.handout import set_overlap_share
    from semievol.workspace.imports import ColumnMapping, import_file
    from semievol.workspace.store import Workspace

    rng = random.Random(seed)
    folder.mkdir(parents=True)
    for split, count in (("labeled", 12), ("unlabeled", items)):
        with open(folder / f"{split}.csv", "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["id", "question", "answer"])
            for i in range(count):
                label = LABELS[i % 3]
                writer.writerow([f"{split[0].upper()}{i:04d}", f"Ticket {i}: a customer "
                                 f"writes about {label} ({rng.random():.6f})", label])
    ws = Workspace(folder / "ws", create=True)
    import_file(ws, folder / "labeled.csv", "labeled", mapping=ColumnMapping(id="id"),
                task=TaskConfig(kind="choice", labels=LABELS))
    import_file(ws, folder / "unlabeled.csv", "unlabeled",
                mapping=ColumnMapping(id="id", answer=None))
    rnd = open_round(ws)
    pool = [r[0] for r in ws.query("SELECT id FROM items WHERE split='unlabeled' ORDER BY id")]
    with ws.transaction() as conn:  # stored pseudo-labels, as a round's label step leaves them
        conn.executemany(
            "INSERT INTO pseudo_labels(round_id, item_id, label, path, agreement, entropy, "
            "selected) VALUES(?,?,?,?,?,?,1)",
            [(rnd.id, item, rng.choice(LABELS), rng.choice(["agreed", "reflected"]), 1.0,
              rng.random()) for item in pool])
        conn.execute("UPDATE rounds SET status='awaiting_review' WHERE id=?", (rnd.id,))
    passwords = {"lead": "the lead's long password"}
    add_user(ws, "lead", "lead", passwords["lead"])
    for k in range(reviewers):
        passwords[f"reviewer{k + 1}"] = f"reviewer {k + 1}'s long password"
        add_user(ws, f"reviewer{k + 1}", "reviewer", passwords[f"reviewer{k + 1}"])
    set_overlap_share(ws, overlap)
    ws.close()
    return passwords


HEADER_CHANGED = ("shown => { const h = [...document.querySelectorAll('h4')]"
                  ".find(e => e.innerText.startsWith('Item ')); "
                  "return (h && h.innerText !== shown) || "
                  "document.body.innerText.includes('Nothing is left for you'); }")


async def reviewer(browser, url: str, name: str, password: str, decisions: int, seed: int,
                   start: asyncio.Event) -> list[dict]:
    rng = random.Random(f"{seed}-{name}")
    context = await browser.new_context(viewport={"width": 1400, "height": 2000})
    page = await context.new_page()
    await page.goto(f"{url}/Review")
    await page.get_by_role("textbox", name="Name").fill(name, timeout=120_000)
    await page.get_by_role("textbox", name="Password").fill(password)
    await page.get_by_role("button", name="Sign in", exact=True).click()
    await page.get_by_text("decided by you").first.wait_for(timeout=120_000)
    await start.wait()  # every reviewer signed in: now all at once
    header = page.locator("h4").filter(has_text="Item ")
    records = []
    for _ in range(decisions):
        await header.first.wait_for(timeout=60_000)
        shown = await header.first.inner_text()
        key = rng.choice(KEYS)
        await page.get_by_role("heading", name="Review", exact=True).first.click()
        t0 = time.perf_counter()
        await page.keyboard.press(key)
        await page.wait_for_function(HEADER_CHANGED, arg=shown, timeout=60_000)
        records.append({"reviewer": name, "item": shown.split("Item ", 1)[1].strip(),
                        "key": key, "seconds": time.perf_counter() - t0})
    await context.close()
    return records


async def review_all(url: str, chromium: str, passwords: dict, decisions: int,
                     seed: int) -> tuple[list[dict], float]:
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        start = asyncio.Event()
        names = [n for n in passwords if n != "lead"]
        tasks = [asyncio.create_task(reviewer(browser, url, n, passwords[n], decisions, seed,
                                              start)) for n in names]
        while True:  # wait until all are signed in (or one failed)
            await asyncio.sleep(0.5)
            if any(t.done() for t in tasks):
                break
            # signed-in reviewers wait on the event; release them once the server has them all
            if await _all_signed_in(url, len(names)):
                break
        t0 = time.perf_counter()
        start.set()
        results = await asyncio.gather(*tasks)
        wall = time.perf_counter() - t0
        await browser.close()
    return [r for rs in results for r in rs], wall


_WORKSPACE: Path | None = None


async def _all_signed_in(url: str, count: int) -> bool:
    from semievol.workspace.store import Workspace

    with Workspace(_WORKSPACE) as ws:
        return ws.scalar("SELECT COUNT(DISTINCT user_name) FROM sessions") >= count


def check(ws_path: Path, records: list[dict], overlap: float) -> dict:
    """What the workspace holds against what the reviewers pressed."""
    from semievol.team.handout import is_overlap
    from semievol.workspace.store import Workspace

    actions = {"a": ("accept", None), "x": ("reject", None), "1": ("relabel", LABELS[0]),
               "2": ("relabel", LABELS[1]), "3": ("relabel", LABELS[2])}
    with Workspace(ws_path) as ws:
        ids = dict(ws.query("SELECT external_id, id FROM items"))
        stored = [dict(r) for r in ws.query("SELECT item_id, reviewer, action, label "
                                            "FROM decisions ORDER BY id")]
    by_key = {}
    for r in stored:
        by_key.setdefault((r["item_id"], r["reviewer"]), []).append(r)
    lost = wrong = 0
    for r in records:
        found = by_key.get((ids[r["item"]], r["reviewer"]))
        if not found:
            lost += 1
            continue
        action, label = actions[r["key"]]
        if (found[-1]["action"], found[-1]["label"]) != (action, label):
            wrong += 1
    pressed = {(ids[r["item"]], r["reviewer"]) for r in records}
    wrong += sum(1 for key in by_key if key not in pressed)  # stored, but nobody pressed it
    reviewers_of: dict[int, set] = {}
    for item, who in by_key:
        reviewers_of.setdefault(item, set()).add(who)
    double = sum(1 for item, who in reviewers_of.items()
                 if len(who) > (2 if is_overlap(item, overlap) else 1))
    return {"stored": len(stored), "lost": lost, "wrong_attribution": wrong,
            "double_handouts_outside_overlap": double,
            "overlap_items_decided_twice": sum(1 for item, who in reviewers_of.items()
                                               if len(who) == 2)}


def main(argv=None) -> int:
    global _WORKSPACE
    args = parse_args(argv)
    chromium = shutil.which("chromium")
    if chromium is None:
        raise SystemExit("needs Debian chromium (`make browser`)")
    folder = Path(tempfile.mkdtemp(prefix="semievol-team-review-")) / "bench"
    passwords = build_workspace(folder, args.items, args.reviewers, args.overlap, args.seed)
    _WORKSPACE = folder / "ws"
    process, url = start_server(_WORKSPACE, team=True)
    try:
        records, wall = asyncio.run(review_all(url, chromium, passwords, args.decisions,
                                               args.seed))
    finally:
        process.terminate()
        process.wait(timeout=30)
    found = check(_WORKSPACE, records, args.overlap)
    shutil.rmtree(folder.parent, ignore_errors=True)
    times = sorted(r["seconds"] for r in records)
    p95 = times[min(len(times) - 1, int(round(0.95 * (len(times) - 1))))]
    cpu = cpu_identity()
    result = {"command": " ".join(["bench/team_review.py", *(argv or sys.argv[1:])]),
              "reviewers": args.reviewers, "decisions_each": args.decisions,
              "overlap": args.overlap, "pressed": len(records), **found,
              "median_seconds": statistics.median(times), "p95_seconds": p95,
              "max_seconds": times[-1], "wall_seconds": wall,
              "decisions_per_minute": len(records) / wall * 60, "cpu": cpu,
              "records": records}
    out = args.out or cpu_results()
    out.mkdir(parents=True, exist_ok=True)
    (out / "team_review.json").write_text(json.dumps(result, indent=2))
    md = (f"# Team review: {args.reviewers} reviewers x {args.decisions} decisions at once\n\n"
          f"`{result['command']}` · overlap {args.overlap:.0%} · CPU {cpu['model']} "
          f"({cpu['key']})\n\n"
          "| measure | value |\n|---|---|\n"
          f"| decisions pressed / stored | {len(records)} / {found['stored']} |\n"
          f"| decisions lost | {found['lost']} |\n"
          f"| wrong attribution | {found['wrong_attribution']} |\n"
          f"| double hand-outs outside overlap | "
          f"{found['double_handouts_outside_overlap']} |\n"
          f"| overlap items decided by two reviewers | "
          f"{found['overlap_items_decided_twice']} |\n"
          f"| key press to next item, median | {result['median_seconds']:.2f} s |\n"
          f"| key press to next item, 95th percentile | {p95:.2f} s |\n"
          f"| slowest | {times[-1]:.2f} s |\n"
          f"| wall time, all reviewers | {wall:.0f} s "
          f"({result['decisions_per_minute']:.0f} decisions a minute) |\n")
    (out / "team_review.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
