"""A domain expert's first round, in a real browser (issue 36's walk, on the tiny model).

(1) A fresh workspace gets its three files through the Workspace page's uploader (the split
guessed from each file, the uploader empty after each import). The labeled file has only 2
examples of one class: before any run, Home and Round setup name that class. Launching takes
a ticked confirmation, which is recorded; the calibration hold-out keeps both examples in
training; the progress the Runs page shows while the round runs never goes back; Selection
shows no bare percentage from fewer than 10 audited items.
(2) After a round that scores below its predecessor, Home's next action names the best
round and Export preselects it.
Screenshots go under test-output/screenshots/first-round/. Skipped without chromium or
playwright, unless SEMIEVOL_REQUIRE_BROWSER=1 (as in `make test`).
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from browser_support import CHROMIUM_ARGS, browser_or_skip, open_page, served
from conftest import LABELS, write_csv

from semievol.workspace.store import Workspace

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "test-output" / "screenshots" / "first-round"
PERCENT = re.compile(r"^(\d+)% ·")


@pytest.fixture
def files(tmp_path) -> dict[str, Path]:
    """The user's own CSVs: id,text,label; 2 billing among 40 labeled; no instruction."""
    labeled = [{"id": f"L{i}", "text": f"my bill is wrong this month, case {i}",
                "label": "billing"} for i in range(2)]
    labeled += [{"id": f"L{i}", "text": f"the internet is down again, case {i}",
                 "label": "outage"} for i in range(2, 21)]
    labeled += [{"id": f"L{i}", "text": f"the router is broken, case {i}",
                 "label": "equipment"} for i in range(21, 40)]
    unlabeled = [{"id": f"U{i}", "text": f"please help with my {w}, case {i}"}
                 for i, w in enumerate(["bill", "internet", "router"] * 6)]
    test = [{"id": f"T{i}", "text": f"test question {i}", "label": LABELS[i % 3]}
            for i in range(9)]
    folder = tmp_path / "files"
    folder.mkdir()
    return {"labeled": write_csv(folder / "labeled.csv", labeled),
            "unlabeled": write_csv(folder / "unlabeled.csv", unlabeled),
            "test": write_csv(folder / "test.csv", test)}


def _upload(page, path: Path, expected_split: str, labels: str | None = None) -> None:
    page.get_by_role("tab", name="Import a file").click()
    page.locator('input[type="file"]').set_input_files(str(path))
    # This file's form: its own first line ("unlabeled.csv: 18 row(s); columns: ...").
    page.get_by_text(f"{path.name}: ", exact=False).first.wait_for(timeout=60_000)
    page.wait_for_load_state("networkidle")
    split = page.get_by_role("combobox", name="Split").last
    deadline = time.time() + 20
    while split.input_value() != expected_split and time.time() < deadline:
        time.sleep(0.2)  # the form's widgets arrive just after its first line
    page.screenshot(path=str(SHOTS / f"0_upload_{path.stem}.png"))
    assert split.input_value() == expected_split  # guessed from the columns and the name
    if labels is not None:
        box = page.get_by_label("Label set", exact=False)
        box.fill(labels)
        box.press("Enter")
        page.wait_for_load_state("networkidle")
    page.get_by_role("button", name="Import", exact=True).click()
    page.get_by_text(f"from {path.name}", exact=False).first.wait_for(timeout=60_000)
    page.wait_for_load_state("networkidle")
    # The uploader is empty again: no file left behind with a live Import button.
    assert page.get_by_role("button", name="Import", exact=True).count() == 0


def test_a_short_class_is_named_before_any_run_and_keeps_its_examples(files, tmp_path,
                                                                     tiny_model_dir):
    from playwright.sync_api import sync_playwright

    chromium = browser_or_skip()
    path = tmp_path / "ws"
    Workspace(path, create=True).close()
    ws = Workspace(path)
    SHOTS.mkdir(parents=True, exist_ok=True)
    with served(path) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 2400})
        open_page(page, f"{url}/Workspace", "Workspace and data")
        _upload(page, files["labeled"], "labeled", labels=", ".join(LABELS))
        _upload(page, files["unlabeled"], "unlabeled")
        _upload(page, files["test"], "test")
        assert ws.split_counts() == {"labeled": 40, "unlabeled": 18, "test": 9,
                                     "calibration": 0}

        # Before any run: Home names the short class, its count and the remedy.
        assert ws.scalar("SELECT COUNT(*) FROM runs") == 0
        open_page(page, url, "SemiEvol Studio")
        page.get_by_text("billing: 2 labeled examples", exact=False).first.wait_for(
            timeout=30_000)
        page.screenshot(path=str(SHOTS / "1_home_warns.png"))

        open_page(page, f"{url}/Round_setup", "Round setup")
        page.get_by_text("billing: 2 labeled examples", exact=False).first.wait_for(
            timeout=30_000)
        for name, value in (("Base model", str(tiny_model_dir)),
                            ("Max steps (0 = none)", "2"), ("Batch size", "4"),
                            ("Calibration fraction", "0.25")):
            box = page.get_by_label(name, exact=True)
            box.fill(value)
            box.press("Enter")
            page.wait_for_load_state("networkidle")
        launch = page.get_by_role("button", name="Launch round")
        assert launch.is_disabled()  # refused until the warning is confirmed
        page.get_by_text("I have read this and want to launch anyway",
                         exact=False).first.click()
        page.wait_for_function(
            "() => [...document.querySelectorAll('button')].some(b => "
            "b.innerText.includes('Launch round') && !b.disabled)", timeout=30_000)
        page.screenshot(path=str(SHOTS / "2_setup_confirmed.png"))
        launch.click()
        page.get_by_text("Started run", exact=False).wait_for(timeout=60_000)

        # The Runs page polls the run: its progress never goes back.
        open_page(page, f"{url}/Runs", "Runs")
        seen = []
        deadline = time.time() + 300
        while time.time() < deadline:
            bars = page.locator('[data-testid="stProgress"]')
            text = bars.first.inner_text() if bars.count() else ""
            found = PERCENT.match(text.strip())
            if found:
                seen.append(int(found[1]))
            status = ws.scalar("SELECT status FROM runs ORDER BY id DESC LIMIT 1")
            if status != "running":
                break
            time.sleep(0.5)
        assert ws.scalar("SELECT status FROM runs ORDER BY id DESC LIMIT 1") == \
            "succeeded", ws.scalar("SELECT error FROM runs ORDER BY id DESC LIMIT 1")
        assert len(seen) >= 3, seen
        assert seen == sorted(seen), f"progress went back: {seen}"
        page.screenshot(path=str(SHOTS / "3_runs.png"))

        # The confirmation was recorded, and the hold-out kept both billing examples.
        assert [r[0] for r in ws.query("SELECT kind FROM confirmations")] == ["few_labels"]
        assert dict(ws.query("SELECT split, COUNT(*) FROM items WHERE answer='billing' "
                             "AND split != 'test' GROUP BY split")) == {"labeled": 2}
        assert ws.split_counts()["calibration"] > 0

        # Selection: no error rate or precision as a bare percentage from < 10 items.
        open_page(page, f"{url}/Selection", "Selection")
        page.get_by_text("Estimated error rate", exact=False).first.wait_for(
            timeout=60_000)
        page.wait_for_load_state("networkidle")
        values = {m.locator('[data-testid="stMetricLabel"]').inner_text().strip():
                  m.locator('[data-testid="stMetricValue"]').inner_text().strip()
                  for m in page.locator('[data-testid="stMetric"]').all()}
        assert values["Estimated error rate"].startswith("–, audit at least 10"), values
        calibration = ws.split_counts()["calibration"]
        if calibration < 10:
            assert values["Calibration precision, all"].startswith("–, needs at least 10")
        page.screenshot(path=str(SHOTS / "4_selection.png"), full_page=True)
        browser.close()


def test_after_a_regression_home_and_export_name_the_best_round(filled_workspace):
    from playwright.sync_api import sync_playwright
    from test_round_scores import add_rounds

    chromium = browser_or_skip()
    ws = filled_workspace
    add_rounds(ws, {(1, "round"): 0.81, (2, "warmup"): 0.80, (2, "round"): 0.68})
    for n in (1, 2):  # the adapters the rounds point at
        for which in ("warmup", "final"):
            folder = ws.path / "adapters" / f"round{n}" / which
            folder.mkdir(parents=True)
            (folder / "adapter_config.json").write_text('{"r": 8}')
            (folder / "adapter_model.safetensors").write_bytes(b"weights")
    SHOTS.mkdir(parents=True, exist_ok=True)
    with served(ws.path) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 2000})
        open_page(page, url, "SemiEvol Studio")
        box = page.get_by_text("the best is round 1", exact=False).first
        box.wait_for(timeout=30_000)
        text = box.inner_text()
        assert "Export round 1" in text and "start round 3" not in text.split("before")[0]
        page.get_by_text("Go to Export", exact=False).first.wait_for(timeout=30_000)
        page.screenshot(path=str(SHOTS / "5_home_best_round.png"))
        open_page(page, f"{url}/Export", "Export")
        picker = page.get_by_role("combobox", name="Round").first
        picker.wait_for(timeout=30_000)
        chosen = picker.input_value()
        assert chosen.startswith("Round 1 ") and chosen.endswith("· best"), chosen
        page.screenshot(path=str(SHOTS / "6_export_preselects_best.png"))
        browser.close()
