"""The real app in a real browser: Streamlit server + Debian chromium driven by playwright.

A small workspace goes through a real (tiny-model) round, the server is started on it, every
page is opened and screenshotted under test-output/screenshots/, and a review decision made
in the browser is read back after a reload and from the database.
Skipped when chromium or playwright is missing, unless SEMIEVOL_REQUIRE_BROWSER=1 (as in
`make test`), where that is a failure.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from semievol import rounds, steps
from semievol.config import CalibrationConfig, ModelConfig, RoundConfig, TrainConfig

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "test-output" / "screenshots"
PAGES = [("Home", "", "SemiEvol Studio"), ("Workspace", "Workspace", "Workspace and data"),
         ("Round_setup", "Round_setup", "Round setup"), ("Runs", "Runs", "Runs"),
         ("Review", "Review", "Review"), ("Selection", "Selection", "Selection"),
         ("Train_and_evaluate", "Train_and_evaluate", "Train and evaluate"),
         ("Rounds", "Rounds", "Rounds"), ("Export", "Export", "Export")]
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]


def _browser_or_skip() -> str:
    chromium = shutil.which("chromium")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        chromium = None
    if chromium is None:
        message = "needs Debian chromium and playwright (`make test` installs them)"
        if os.environ.get("SEMIEVOL_REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return chromium


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def round_workspace(filled_workspace, tiny_model_dir, fake_embedder):
    """A workspace after one whole round on the tiny model (every page has something)."""
    ws = filled_workspace
    config = RoundConfig(model=ModelConfig(name_or_path=str(tiny_model_dir), dtype="float32"),
                         train=TrainConfig(max_steps=2, batch_size=4),
                         calibration=CalibrationConfig(fraction=0.25, min_per_class=1))
    rnd = rounds.open_round(ws, config)
    steps.run_steps(ws, rnd.number, steps.STEPS, embedder=fake_embedder, confirm="tester")
    return ws


def start_server(workspace: Path):
    """Start `streamlit run app/Home.py` on a free port; (process, url) once healthy."""
    port = _free_port()
    log = open(Path(workspace) / "streamlit.log", "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(ROOT / "app" / "Home.py"),
         "--server.headless", "true", "--server.address", "127.0.0.1",
         "--server.port", str(port), "--browser.gatherUsageStats", "false",
         "--", "--workspace", str(workspace)],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                return process, url
        except OSError:
            time.sleep(0.5)
    process.kill()
    raise RuntimeError("the Streamlit server did not become healthy: "
                       + (Path(workspace) / "streamlit.log").read_text()[-2000:])


@pytest.fixture
def server(round_workspace):
    try:
        process, url = start_server(round_workspace.path)
    except RuntimeError as exc:
        pytest.fail(str(exc))
    yield url, round_workspace
    process.terminate()
    process.wait(timeout=20)


def _open(page, url: str, title: str) -> None:
    page.goto(url)
    # The first session after start takes seconds to render: wait for the page's title.
    page.get_by_role("heading", name=title, exact=True).first.wait_for(timeout=90_000)
    page.wait_for_load_state("networkidle")
    exceptions = page.locator('[data-testid="stException"]')
    assert exceptions.count() == 0, exceptions.first.inner_text()


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
            _open(page, f"{url}/{path}", title)
            page.screenshot(path=str(shots / f"{name}.png"))

        _open(page, f"{url}/Review", "Review")
        field = page.get_by_role("textbox", name="Reviewer", exact=True)
        field.fill(reviewer)
        field.press("Enter")
        page.wait_for_load_state("networkidle")
        page.get_by_role("button", name="Accept", exact=True).click()
        page.get_by_text("Current decision: accept", exact=False).wait_for(timeout=30_000)
        page.reload()
        _open(page, f"{url}/Review", "Review")
        page.get_by_text("Current decision: accept", exact=False).wait_for(timeout=30_000)
        page.screenshot(path=str(shots / "Review_after_accept.png"))
        browser.close()


def test_every_page_renders_and_a_decision_survives_reload(server):
    chromium = _browser_or_skip()
    url, ws = server
    walk_pages(chromium, url, SHOTS, "browser-tester")
    rows = ws.query("SELECT action, reviewer FROM decisions")
    assert [(r["action"], r["reviewer"]) for r in rows] == [("accept", "browser-tester")]
    for name, _, _ in PAGES:
        assert (SHOTS / f"{name}.png").stat().st_size > 10_000


if __name__ == "__main__":
    # The same walk over a copy of any workspace, e.g. the demo after `semievol round`:
    #   .venv/bin/python tests/test_browser.py workspaces/demo
    import tempfile

    from semievol.store import Workspace

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
