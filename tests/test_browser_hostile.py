"""Data never renders in the app (hardening round 2, class 2): an item id, an option, a
relabel and a run's error written as Markdown images and links pointing at a local spy
server are shown on Review (focus and table), Selection, Rounds and Runs in a real browser,
and the browser never asks the spy for anything. Skipped without chromium unless
SEMIEVOL_REQUIRE_BROWSER=1 (`make test`)."""

from __future__ import annotations

import http.server
import json
import threading
import time

import pytest
from browser_support import CHROMIUM_ARGS, browser_or_skip, open_page, served
from conftest import add_round, write_csv

from semievol.config import TaskConfig
from semievol.curation.decisions import record_decisions
from semievol.workspace.imports import ColumnMapping, import_file
from semievol.workspace.store import now


class Spy:
    """An HTTP server that only counts what is asked of it."""

    def __init__(self):
        self.hits: list[str] = []
        spy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                spy.hits.append(self.path)
                self.send_response(404)
                self.end_headers()

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def image(self, name: str) -> str:
        return f"![{name}]({self.base}/{name}.png)"


@pytest.fixture
def spy():
    found = Spy()
    yield found
    found.server.shutdown()


@pytest.fixture
def hostile_workspace(workspace, tmp_path, spy):
    ws = workspace
    bad_id, bad_option = spy.image("id"), spy.image("option")
    options = json.dumps(["plain answer", bad_option])
    write_csv(tmp_path / "labeled.csv", [
        {"id": "L1", "question": "A labeled question", "options": options,
         "answer": "plain answer"},
        {"id": "L2", "question": "Another labeled question", "options": options,
         "answer": bad_option}])
    write_csv(tmp_path / "unlabeled.csv", [
        {"id": bad_id, "question": "Which answer?", "options": options}])
    task = TaskConfig(kind="choice", labels=None)
    import_file(ws, tmp_path / "labeled.csv", "labeled",
                mapping=ColumnMapping(options="options", id="id"), task=task)
    import_file(ws, tmp_path / "unlabeled.csv", "unlabeled",
                mapping=ColumnMapping(answer=None, options="options", id="id"))
    rid = add_round(ws)
    item = ws.scalar("SELECT id FROM items WHERE split='unlabeled'")
    with ws.transaction() as conn:
        conn.execute("UPDATE rounds SET status='awaiting_review' WHERE id=?", (rid,))
        conn.execute("INSERT INTO pseudo_labels(round_id, item_id, label, path, agreement, "
                     "entropy, selected) VALUES(?, ?, ?, 'agreed', 1.0, 0.3, 1)",
                     (rid, item, bad_option))
        conn.execute("INSERT INTO responses(round_id, item_id, collaborator, cache_key, answer,"
                     " text, option_probs) VALUES(?, ?, 0, 'k', ?, ?, ?)",
                     (rid, item, bad_option, bad_option, json.dumps([0.2, 0.8])))
        conn.execute("INSERT INTO runs(kind, round_id, status, progress, error, started_at, "
                     "finished_at) VALUES('label', ?, 'failed', 0.3, ?, ?, ?)",
                     (rid, f"ServerError: the server said {spy.image('error')}\ndetails "
                           f"{spy.image('details')}", now() - 5, now()))
    record_decisions(ws, [item], "relabel", reviewer="ann", label=bad_option)
    return ws


def test_hostile_ids_options_labels_and_errors_make_no_request(hostile_workspace, spy):
    from playwright.sync_api import sync_playwright

    chromium = browser_or_skip()
    with served(hostile_workspace.path) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 2600})
        open_page(page, f"{url}/Review", "Review")
        page.get_by_text("Which answer?").first.wait_for(timeout=30_000)  # focus mode
        page.get_by_text("Table: filter, sort, bulk").click()
        page.wait_for_load_state("networkidle")
        page.get_by_text("Current decision").first.wait_for(timeout=30_000)
        for path, title in (("Selection", "Selection"), ("Rounds", "Rounds"),
                            ("Runs", "Runs")):
            open_page(page, f"{url}/{path}", title)
        page.get_by_text("the server said").first.wait_for(timeout=30_000)
        shown = page.inner_text("body")
        time.sleep(1)
        browser.close()
    assert spy.hits == []
    assert f"![error]({spy.base}/error.png)" in shown  # the error is shown, as its text
