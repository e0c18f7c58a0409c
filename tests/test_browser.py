"""The real app in a real browser: Streamlit server + Debian chromium driven by playwright.

Two walks. (1) A small workspace goes through a real (tiny-model) round, the server is
started on it, every page is opened and screenshotted under test-output/screenshots/, and a
review decision made in the browser is read back after a reload and from the database.
(2) A review-first round launched from the app on the tiny model: it stops awaiting review,
items are reviewed in focus mode with the keyboard only, the decisions survive a reload,
training starts from the Review page and its result is shown; every state is screenshotted
under test-output/screenshots/review-first/.
Skipped when chromium or playwright is missing, unless SEMIEVOL_REQUIRE_BROWSER=1 (as in
`make test`), where that is a failure.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import pytest
from browser_support import CHROMIUM_ARGS, browser_or_skip, open_page, served, start_server

from semievol.config import CalibrationConfig, ModelConfig, RoundConfig, TrainConfig
from semievol.rounds import steps
from semievol.rounds.record import get_round, open_round

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "test-output" / "screenshots"
PAGES = [("Home", "", "SemiEvol Studio"), ("Workspace", "Workspace", "Workspace and data"),
         ("Round_setup", "Round_setup", "Round setup"), ("Runs", "Runs", "Runs"),
         ("Review", "Review", "Review"), ("Selection", "Selection", "Selection"),
         ("Train_and_evaluate", "Train_and_evaluate", "Train and evaluate"),
         ("Rounds", "Rounds", "Rounds"), ("Export", "Export", "Export"),
         ("Team", "Team", "Team and agreement")]
@pytest.fixture
def round_workspace(filled_workspace, tiny_model_dir, fake_embedder):
    """A workspace after one whole round on the tiny model (every page has something)."""
    ws = filled_workspace
    config = RoundConfig(model=ModelConfig(name_or_path=str(tiny_model_dir), dtype="float32"),
                         train=TrainConfig(max_steps=2, batch_size=4),
                         calibration=CalibrationConfig(fraction=0.25, min_per_class=1))
    rnd = open_round(ws, config)
    steps.run_steps(ws, rnd.number, steps.STEPS, embedder=fake_embedder, confirm="tester")
    return ws


@pytest.fixture
def server(round_workspace):
    with served(round_workspace.path) as url:
        yield url, round_workspace


def walk_pages(chromium: str, url: str, shots: Path, reviewer: str) -> None:
    """Open and screenshot every page, then accept the first item on Review as `reviewer`
    and check the decision is still shown after a reload."""
    from playwright.sync_api import sync_playwright

    shots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        # Tall viewport: Streamlit scrolls an inner container, full_page cannot reach it.
        page = browser.new_page(viewport={"width": 1400, "height": 2600})
        for name, path, title in PAGES:
            open_page(page, f"{url}/{path}", title)
            page.screenshot(path=str(shots / f"{name}.png"))

        open_page(page, f"{url}/Review", "Review")
        field = page.get_by_role("textbox", name="Reviewer", exact=True)
        field.fill(reviewer)
        field.press("Enter")
        page.wait_for_load_state("networkidle")
        page.get_by_role("button", name="Accept").first.click()
        # Wait for the counter itself: "1 of" alone also matches "item 1 of N", which is
        # there before the click, and a reload before the decision's rerun loses it.
        wait_reviewed(page, 1)
        page.reload()
        open_page(page, f"{url}/Review", "Review")
        wait_reviewed(page, 1)
        page.screenshot(path=str(shots / "Review_after_accept.png"))
        browser.close()


def wait_reviewed(page, count: int) -> None:
    """Wait until the Review page's counter reads "`count` of N reviewed"."""
    page.wait_for_function(
        "n => new RegExp('(^|\\\\D)' + n + ' of \\\\d+ reviewed').test(document.body.innerText)",
        arg=count, timeout=30_000)


def test_every_page_renders_and_a_decision_survives_reload(server):
    chromium = browser_or_skip()
    url, ws = server
    walk_pages(chromium, url, SHOTS, "browser-tester")
    rows = ws.query("SELECT action, reviewer FROM decisions")
    assert [(r["action"], r["reviewer"]) for r in rows] == [("accept", "browser-tester")]
    for name, _, _ in PAGES:
        assert (SHOTS / f"{name}.png").stat().st_size > 10_000


# -- a review-first round, driven from the app -------------------------------------------
REVIEW_SHOTS = SHOTS / "review-first"
KEYS = ["a", "x", "2", "ArrowRight", "a", "1"]
"""Accept, reject, relabel as the 2nd label, skip, accept, relabel as the 1st label: five
decisions from six key presses."""


@pytest.fixture
def launch_server(filled_workspace):
    with served(filled_workspace.path) as url:
        yield url, filled_workspace


def _wait_text(page, url: str, path: str, title: str, text: str, timeout: float) -> None:
    """Reload a page until `text` shows (a background run moves the round on)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        open_page(page, f"{url}/{path}", title)
        if page.get_by_text(text, exact=False).count():
            return
        time.sleep(2)
    raise AssertionError(f"{text!r} did not show on {path} within {timeout} s")


def _reviewed(page) -> str:
    return page.get_by_text(" reviewed · item ", exact=False).first.inner_text()


def test_a_round_launched_from_the_app_waits_for_review_by_keyboard(launch_server,
                                                                   tiny_model_dir):
    from playwright.sync_api import sync_playwright

    chromium = browser_or_skip()
    url, ws = launch_server
    REVIEW_SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 2600})
        open_page(page, f"{url}/Round_setup", "Round setup")
        for name, value in (("Base model", str(tiny_model_dir)), ("Max steps (0 = none)", "2"),
                            ("Batch size", "4"), ("Calibration fraction", "0.25")):
            box = page.get_by_label(name, exact=True)
            box.fill(value)
            box.press("Enter")
            page.wait_for_load_state("networkidle")
        page.get_by_text("Llama: context window 1024 tokens", exact=False).wait_for()
        page.screenshot(path=str(REVIEW_SHOTS / "1_setup.png"))
        page.get_by_role("button", name="Launch round").click()
        page.get_by_text("Started run", exact=False).wait_for(timeout=60_000)
        page.screenshot(path=str(REVIEW_SHOTS / "2_launched.png"))
        _wait_text(page, url, "Review", "Review", "awaiting review", timeout=300)
        assert get_round(ws, 1).status == "awaiting_review"
        assert get_round(ws, 1).final_adapter is None  # nothing trained before review
        page.screenshot(path=str(REVIEW_SHOTS / "3_awaiting_review.png"))

        field = page.get_by_role("textbox", name="Reviewer", exact=True)
        field.fill("keyboard-reviewer")
        field.press("Enter")
        page.wait_for_load_state("networkidle")
        before = _reviewed(page)
        assert before.startswith("0 of ")
        for key in KEYS:
            shown = _reviewed(page)
            page.get_by_role("heading", name="Review", exact=True).first.click()  # focus: the page
            page.keyboard.press(key)
            page.wait_for_function(
                "text => !document.body.innerText.includes(text)", arg=shown, timeout=30_000)
        assert _reviewed(page).startswith("5 of ")
        page.screenshot(path=str(REVIEW_SHOTS / "4_reviewed_by_keyboard.png"))
        page.reload()
        open_page(page, f"{url}/Review", "Review")
        wait_reviewed(page, 5)
        actions = [r[0] for r in ws.query("SELECT action FROM decisions ORDER BY id")]
        assert actions == ["accept", "reject", "relabel", "accept", "relabel"]
        assert {r[0] for r in ws.query("SELECT reviewer FROM decisions")} == {"keyboard-reviewer"}

        confirm = page.get_by_text("I have read these warnings", exact=False)
        if confirm.count():  # a tiny random model: the evidence guard asks first
            confirm.first.click()
            page.get_by_role("button", name="Train on the curated set").first.wait_for(
                state="visible", timeout=30_000)
            page.wait_for_function(
                "() => [...document.querySelectorAll('button')].some(b => "
                "b.innerText.includes('Train on the curated set') && !b.disabled)",
                timeout=30_000)
        page.screenshot(path=str(REVIEW_SHOTS / "4b_confirmed.png"))
        page.get_by_role("button", name="Train on the curated set").first.click()
        page.get_by_text("Started run", exact=False).wait_for(timeout=60_000)
        _wait_text(page, url, "Train_and_evaluate", "Train and evaluate", "is done",
                   timeout=300)
        page.get_by_text("round adapter", exact=False).first.wait_for(timeout=30_000)
        page.screenshot(path=str(REVIEW_SHOTS / "5_trained.png"))
        browser.close()
    rnd = get_round(ws, 1)
    assert rnd.status == "done" and rnd.final_adapter
    trained = {r[0] for r in ws.query("SELECT source FROM training_rows")}
    assert "human" in trained  # the relabels made by keyboard were trained on
    for shot in REVIEW_SHOTS.glob("*.png"):
        assert shot.stat().st_size > 10_000


if __name__ == "__main__":
    # The same walk over a copy of any workspace, e.g. the demo after `semievol round`:
    #   .venv/bin/python tests/test_browser.py workspaces/demo
    import tempfile

    from semievol.workspace.store import Workspace

    source = Path(sys.argv[1] if len(sys.argv) > 1 else "workspaces/demo").resolve()
    copy = Path(tempfile.mkdtemp()) / source.name
    shutil.copytree(source, copy)
    process, url = start_server(copy)
    try:
        shots = ROOT / "test-output" / f"screenshots-{source.name}"
        walk_pages(shutil.which("chromium"), url, shots, "demo-reviewer")
    finally:
        process.terminate()
    for row in Workspace(copy).query("SELECT item_id, action, reviewer FROM decisions"):
        print(f"decision in the copy's database: item {row['item_id']} {row['action']} "
              f"by {row['reviewer']}")
    print(f"every page rendered without an exception; screenshots in {shots}")
