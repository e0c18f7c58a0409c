"""What the browser test and the review timing bench share: starting the app's Streamlit
server on a workspace, finding Debian chromium, and opening a page once it has rendered."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from server_support import free_port, missing

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]


def browser_or_skip() -> str:
    chromium = shutil.which("chromium")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        chromium = None
    if chromium is None:
        missing("needs Debian chromium and playwright (`make test` installs them)",
                "SEMIEVOL_REQUIRE_BROWSER")
    return chromium


def start_server(workspace: Path, *, team: bool = False, secrets=None):
    """Start `streamlit run app/Home.py` on a free port (`team`: through `semievol serve
    --team`, as a team's server is started); (process, url) once healthy. `secrets(port)`:
    the text of the .streamlit/secrets.toml the server reads (from the folder it starts in,
    then the workspace's)."""
    port = free_port()
    log = open(Path(workspace) / "streamlit.log", "w")
    cwd = ROOT
    if secrets is not None:
        cwd = Path(workspace)
        (cwd / ".streamlit").mkdir(exist_ok=True)
        (cwd / ".streamlit" / "secrets.toml").write_text(secrets(port))
    command = ([sys.executable, "-m", "semievol", "serve", str(workspace), "--team",
                "--host", "127.0.0.1", "--port", str(port)] if team else
               [sys.executable, "-m", "streamlit", "run", str(ROOT / "app" / "Home.py"),
                "--server.headless", "true", "--server.address", "127.0.0.1",
                "--server.port", str(port), "--browser.gatherUsageStats", "false",
                "--", "--workspace", str(workspace)])
    process = subprocess.Popen(command, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
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


@contextlib.contextmanager
def served(workspace: Path, *, team: bool = False, secrets=None):
    """The app served on `workspace` for a test, yielding its URL: a server that does not
    start fails the test; on the way out the server stops, and so does every run it left
    running (their process groups: a background round's worker and its children)."""
    from semievol.workspace.store import Workspace

    try:
        process, url = start_server(workspace, team=team, secrets=secrets)
    except RuntimeError as exc:
        pytest.fail(str(exc))
    try:
        yield url
    finally:
        process.terminate()
        process.wait(timeout=20)
        with Workspace(workspace) as ws:
            running = [pid for (pid,) in ws.query("SELECT pid FROM runs WHERE "
                                                  "status='running'")]
        for pid in running:
            try:
                os.killpg(pid, 9)
            except (ProcessLookupError, PermissionError, TypeError):
                pass


def open_page(page, url: str, title: str) -> None:
    page.goto(url)
    # The first session after start takes seconds to render: wait for the page's title.
    page.get_by_role("heading", name=title, exact=True).first.wait_for(timeout=90_000)
    page.wait_for_load_state("networkidle")
    exceptions = page.locator('[data-testid="stException"]')
    assert exceptions.count() == 0, exceptions.first.inner_text()


