"""The Home and Workspace pages (AppTest) and the import / index logic behind them."""

from __future__ import annotations

import csv
import hashlib
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from semievol.config import TaskConfig
from semievol.workspace.imports import ColumnMapping, import_file
from semievol.workspace.store import Workspace

APP = Path(__file__).resolve().parents[1] / "app"
sys.path.insert(0, str(APP))  # the pages import `common` and `workspace_view` from app/

import common  # noqa: E402
import workspace_view  # noqa: E402


def plain(markdown: str) -> str:
    """What a reader sees of Markdown whose data was escaped (common.literal)."""
    import re
    return re.sub(r"\\(.)", r"\1", markdown)
from semievol.views.workflow import next_steps  # noqa: E402

LABELS = ["billing", "outage", "equipment"]
LABELED = [("Charged twice on my bill", "billing"), ("Refund the late fee", "billing"),
           ("Internet is down since morning", "outage"), ("No connection at all", "outage"),
           ("Router light blinking red", "equipment"), ("Router will not power on", "equipment")]
UNLABELED = ["Why is my invoice higher", "Broadband keeps dropping", "Router is overheating",
             "Payment failed twice"]
TEST = [("Bill went up", "billing"), ("Outage in my street", "outage"),
        ("Replacement router please", "equipment")]


class FakeEmbedder:
    """Hashed bag of words, L2-normalised: deterministic and instant."""

    name = "fake"

    def embed(self, texts):
        out = np.zeros((len(texts), 32), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in re.findall(r"[a-z0-9]+", text.lower()):
                out[row, int(hashlib.sha1(word.encode()).hexdigest(), 16) % 32] += 1.0
            out[row, 0] += 1e-3
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def write_csv(path: Path, header: list[str], rows: list[tuple]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture(autouse=True)
def private_tempdir(tmp_path, monkeypatch):
    """Uploads are saved under the temp folder: keep each test's apart."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()


@pytest.fixture
def task():
    return TaskConfig(kind="choice", labels=list(LABELS))


@pytest.fixture
def ws_path(tmp_path, task):
    """A workspace with 6 labeled, 4 unlabeled and 3 test items (not indexed)."""
    path = tmp_path / "ws"
    with Workspace(path, create=True) as ws:
        files = {
            "labeled": write_csv(tmp_path / "labeled.csv", ["id", "text", "label"],
                                 [(f"L{i}", q, a) for i, (q, a) in enumerate(LABELED)]),
            "unlabeled": write_csv(tmp_path / "unlabeled.csv", ["id", "text"],
                                   [(f"U{i}", q) for i, q in enumerate(UNLABELED)]),
            "test": write_csv(tmp_path / "test.csv", ["id", "text", "label"],
                              [(f"T{i}", q, a) for i, (q, a) in enumerate(TEST)]),
        }
        for split, file in files.items():
            mapping = ColumnMapping(question="text", id="id",
                                    answer=None if split == "unlabeled" else "label")
            import_file(ws, file, split, mapping=mapping, task=task)
    return path


def app_at(path: Path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("SEMIEVOL_WORKSPACE", str(path))
    return AppTest.from_file(str(APP / "Home.py"), default_timeout=30)


def metrics(at) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


# -- pages ----------------------------------------------------------------------------------
def test_home_shows_split_counts_and_next_step(ws_path, monkeypatch):
    at = app_at(ws_path, monkeypatch).run()
    assert not at.exception
    assert metrics(at) == {"Labeled": "6", "Unlabeled": "4", "Test": "3", "Calibration": "0"}
    text = " ".join(m.value for m in at.markdown)
    assert "billing, outage, equipment" in text
    assert "0 of 4 unlabeled" in text
    assert "Index / retrieve neighbours" in text  # not indexed yet: that is the next step


def test_workspace_page_shows_metrics_and_paginated_preview(ws_path, monkeypatch):
    at = app_at(ws_path, monkeypatch).run()
    at.switch_page("pages/1_Workspace.py").run()
    assert not at.exception
    assert metrics(at)["Labeled"] == "6"
    assert [t.label for t in at.tabs] == ["Statistics", "Browse items", "Import a file",
                                          "Neighbours"]
    frames = [d.value for d in at.dataframe]
    lengths = next(f for f in frames if "mean chars" in f.columns)
    assert set(lengths["split"]) == {"labeled", "unlabeled", "test"}
    preview = next(f for f in frames if "question" in f.columns)
    assert list(preview["id"]) == [f"L{i}" for i in range(6)]
    assert set(preview["options"]) == {"—"}  # no options column: a dash, never "None"
    at.selectbox(key="preview_split").set_value("unlabeled").run()
    preview = next(d.value for d in at.dataframe if "question" in d.value.columns)
    assert set(preview["answer"]) == {"—"}
    at.selectbox(key="preview_split").set_value("test").run()
    preview = next(d.value for d in at.dataframe if "question" in d.value.columns)
    assert list(preview["answer"]) == ["billing", "outage", "equipment"]
    at.text_input(key="preview_search").set_value("router").run()
    preview = next(d.value for d in at.dataframe if "question" in d.value.columns)
    assert list(preview["id"]) == ["T2"]


def test_missing_workspace_shows_empty_state_and_creates_it(tmp_path, monkeypatch):
    path = tmp_path / "new-ws"
    at = app_at(path, monkeypatch).run()
    assert not at.exception
    assert any(f"No workspace at {path}" in plain(i.value) for i in at.info)
    assert not at.metric
    at.button(key="create_workspace").click().run()
    assert not at.exception
    assert (path / "workspace.db").exists()
    assert metrics(at)["Labeled"] == "0"
    assert any("Import a **labeled** file" in m.value for m in at.markdown)


def test_sidebar_workspace_and_reviewer_live_in_session_state(ws_path, tmp_path, monkeypatch):
    at = app_at(ws_path, monkeypatch)
    at.session_state[common.REVIEWER_KEY] = "ana"
    at.run()
    assert at.session_state[common.WORKSPACE_KEY] == str(ws_path)
    assert at.text_input(key="_reviewer_input").value == "ana"
    at.text_input(key="_workspace_path_input").set_value(str(tmp_path / "elsewhere")).run()
    assert any("No workspace at" in i.value for i in at.info)
    at.switch_page("pages/1_Workspace.py").run()  # the choice survives a page change
    assert at.session_state[common.WORKSPACE_KEY] == str(tmp_path / "elsewhere")


def test_default_workspace_order():
    env = {"SEMIEVOL_WORKSPACE": "from-env"}
    assert common.default_workspace(["--workspace", "from-arg"], env) == "from-arg"
    assert common.default_workspace(["--", "--workspace=from-arg"], env) == "from-arg"
    assert common.default_workspace(["-q", "tests"], env) == "from-env"
    assert common.default_workspace([], {}) == "workspaces/demo"


# -- import and index logic -----------------------------------------------------------------
def test_run_import_of_a_malformed_file_lists_every_bad_row_and_imports_nothing(
        ws_path, tmp_path):
    bad = write_csv(tmp_path / "bad.csv", ["id", "text", "label"],
                    [("N1", "fine question", "billing"), ("N2", "", "outage"),
                     ("N3", "unknown label", "weather"), ("N1", "duplicate id", "billing"),
                     ("L0", "already in the workspace", "billing")])
    with Workspace(ws_path) as ws:
        before = ws.table_counts()
        mapping = workspace_view.mapping_from_choices("text", "label", workspace_view.NONE, "id")
        report, error = workspace_view.run_import(ws, bad, "labeled", mapping)
        assert report is None
        assert "nothing was imported" in str(error).lower()
        rows = sorted(int(re.match(r"row (\d+)", p)[1]) for p in error.problems)
        assert rows == [2, 3, 4, 5]
        assert ws.table_counts() == before


def test_run_import_of_a_good_file_adds_its_rows(ws_path, tmp_path):
    good = write_csv(tmp_path / "more.csv", ["question"], [("New router question",),
                                                           ("Another bill question",)])
    with Workspace(ws_path) as ws:
        mapping = workspace_view.mapping_from_choices("question", "(none)", "(none)", "(none)")
        report, error = workspace_view.run_import(ws, good, "unlabeled", mapping)
        assert error is None and report.rows == 2
        assert ws.split_counts()["unlabeled"] == 6
        ids = {r[0] for r in ws.query("SELECT external_id FROM items WHERE split='unlabeled'")}
        assert "more.csv:unlabeled:1" in ids  # the upload keeps its name: stable ids


def test_first_import_sets_the_task_from_the_form(tmp_path):
    task = workspace_view.task_from_form("choice", " billing, outage ,equipment ")
    assert task.labels == LABELS
    with pytest.raises(Exception, match="at least two"):
        workspace_view.task_from_form("choice", "billing")
    good = write_csv(tmp_path / "l.csv", ["text", "label"], [("bill", "billing")])
    with Workspace(tmp_path / "fresh", create=True) as ws:
        mapping = ColumnMapping(question="text", answer="label")
        report, error = workspace_view.run_import(ws, good, "labeled", mapping, task)
        assert error is None and ws.task == task


def test_save_upload_keeps_the_file_name(tmp_path):
    path = workspace_view.save_upload("../x/labeled.tsv", b"a\tb\n1\t2\n", "id-1")
    assert path.name == "labeled.tsv" and path.read_bytes() == b"a\tb\n1\t2\n"
    assert path.is_relative_to(tmp_path)


def test_run_index_reports_progress_then_nothing_to_do(ws_path):
    calls = []
    with Workspace(ws_path) as ws:
        result = workspace_view.run_index(ws, 2, lambda *a: calls.append(a), FakeEmbedder())
        assert result["queried"] == 7  # 4 unlabeled + 3 test
        assert calls and calls[-1][0] == calls[-1][1]
        again = workspace_view.run_index(ws, 2, None, FakeEmbedder())
        assert workspace_view.index_summary(again, 2).startswith("Nothing to do")
        steps = next_steps(ws)
        assert steps[0].startswith("Set up and launch round 1")


def _import_form(ws_path, upload_path):
    """The import section with st.file_uploader stood in for (AppTest cannot upload)."""
    from pathlib import Path

    import streamlit as st
    from workspace_view import show_import

    from semievol.workspace.store import Workspace

    class Upload:
        name = Path(upload_path).name
        file_id = "upload-" + Path(upload_path).name

        def getvalue(self):
            return Path(upload_path).read_bytes()

    original = st.file_uploader
    st.file_uploader = lambda *a, **k: Upload()
    try:
        show_import(Workspace(ws_path))
    finally:
        st.file_uploader = original


def import_form_app(ws_path, upload_path):
    from streamlit.testing.v1 import AppTest

    return AppTest.from_function(_import_form, args=(str(ws_path), str(upload_path)),
                                 default_timeout=30)


def test_import_form_shows_every_bad_row_and_says_nothing_was_imported(ws_path, tmp_path):
    bad = write_csv(tmp_path / "form-bad.csv", ["id", "text", "label"],
                    [("X1", "", "billing"), ("X2", "fine", "weather"), ("X3", "ok", "outage")])
    at = import_form_app(ws_path, bad).run()
    assert not at.exception
    assert at.selectbox(key="map_question").value == "text"
    assert at.selectbox(key="map_answer").value == "label"
    assert at.selectbox(key="map_id").value == "id"
    at.button(key="import").click().run()
    assert not at.exception
    assert "2 problem(s)" in plain(at.error[0].value)
    report = next(d.value for d in at.dataframe if "problem" in d.value.columns)
    assert list(report["row"]) == [1, 2]
    assert any("Nothing was imported" in w.value for w in at.warning)
    with Workspace(ws_path) as ws:
        assert ws.split_counts()["labeled"] == 6


def test_import_form_imports_a_good_file(ws_path, tmp_path):
    good = write_csv(tmp_path / "form-good.csv", ["id", "text", "label"],
                     [("X1", "bill is wrong", "billing"), ("X2", "router broke", "equipment")])
    at = import_form_app(ws_path, good).run()
    at.button(key="import").click().run()
    assert not at.exception
    assert at.session_state[common.FLASH_KEY] == "Imported 2 labeled item(s) from form-good.csv."
    with Workspace(ws_path) as ws:
        assert ws.split_counts()["labeled"] == 8


def test_import_form_asks_for_the_task_on_a_fresh_workspace(tmp_path):
    path = tmp_path / "fresh"
    Workspace(path, create=True).close()
    good = write_csv(tmp_path / "first.csv", ["text", "label"],
                     [("bill is wrong", "billing"), ("router broke", "equipment")])
    at = import_form_app(path, good).run()
    at.button(key="import").click().run()  # no label set and no options column
    assert "options column" in at.error[0].value
    assert any("Nothing was imported" in w.value for w in at.warning)
    at.text_input(key="task_labels").set_value("billing")
    at.button(key="import").click().run()
    assert "at least two" in at.error[0].value
    at.text_input(key="task_labels").set_value("billing, outage, equipment")
    at.button(key="import").click().run()
    assert not at.exception and not at.error
    with Workspace(path) as ws:
        assert ws.task.labels == LABELS and ws.split_counts()["labeled"] == 2


def test_next_steps_follow_the_workspace(ws_path):
    from semievol.config import RoundConfig
    from semievol.rounds.record import open_round, set_status

    with Workspace(ws_path) as ws:
        assert "Index" in next_steps(ws)[0]  # not indexed yet: the data comes first
        from semievol.method.retrieval import index_workspace
        index_workspace(ws, FakeEmbedder(), k=2)
        assert next_steps(ws)[0].startswith("Set up and launch round 1")
        rnd = open_round(ws, RoundConfig())
        assert "launch it" in next_steps(ws)[0]
        set_status(ws, rnd, "awaiting_review")
        assert "awaiting review" in next_steps(ws)[0]
        set_status(ws, rnd, "done")
        assert "start round 2" in next_steps(ws)[0]




def test_the_split_is_guessed_from_the_columns_and_the_file_name(ws_path, tmp_path):
    from semievol.workspace.imports import ColumnMapping, guess_split

    with_answer = ColumnMapping(question="text", answer="label")
    assert guess_split("unlabeled.csv", ColumnMapping(question="text")) == "unlabeled"
    assert guess_split("fpb_test.csv", with_answer) == "test"
    assert guess_split("pool-2024.jsonl", with_answer) == "unlabeled"
    assert guess_split("train.csv", with_answer) == "labeled"
    assert guess_split("latest.csv", with_answer) == "labeled"  # "test" inside a word: no
    pool = write_csv(tmp_path / "unlabeled.csv", ["id", "text"], [("U9", "a new bill")])
    at = import_form_app(ws_path, pool).run()
    split = next(s for s in at.selectbox if s.label == "Split")
    assert split.value == "unlabeled"  # the walk's unlabeled.csv defaulted to "labeled"
