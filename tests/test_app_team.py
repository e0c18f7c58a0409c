"""Team mode's refusals inside the app (AppTest): every lead action a page calls refuses a
signed-in reviewer by itself, not only by being hidden, and writes nothing; a lead's call
goes through. The browser test (test_browser_team.py) checks what each role sees."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from semievol.team.accounts import add_user, sign_in

APP = Path(__file__).resolve().parents[1] / "app"
sys.path.insert(0, str(APP))  # the pages import `common` and the views from app/

PASSWORD = "a long enough password"


def _every_lead_action(ws_path: str, csv_path: str, item_id: int, only_light: bool) -> None:
    """Call each lead action the pages call, as they call it; show what each one said
    (`only_light`: only those that start no run and load no model)."""
    import streamlit as st
    from common import launch_with_feedback, user_errors
    from review_view import _bulk
    from runs_view import _resume
    from team_view import _adjudicate, _save_overlap
    from workspace_view import run_import, run_index

    from semievol.views.review import ReviewFilter
    from semievol.workspace.imports import ColumnMapping
    from semievol.workspace.store import Workspace

    ws = Workspace(ws_path)
    said = []
    st.session_state["team_overlap"] = 50
    _save_overlap(ws_path)
    _adjudicate(ws_path, item_id, "reject", None)
    if only_light:
        return
    launch_with_feedback(ws, "round", "a round")
    launch_with_feedback(ws, "train", "training")
    _, error = run_import(ws, csv_path, "labeled", ColumnMapping(question="text",
                                                                  answer="label", id="id"))
    said.append(f"import: {error}")
    with user_errors():
        run_index(ws, 3)
    _resume(ws, 1)
    _bulk(ws_path, ReviewFilter(1), "accept", 1, "confirm")
    for line in said:
        st.write(line)


@pytest.fixture
def team_app(pool, tmp_path, monkeypatch, write_csv):
    from streamlit.testing.v1 import AppTest

    ws, rid, items = pool
    add_user(ws, "ana", "lead", PASSWORD)
    add_user(ws, "bo", "reviewer", PASSWORD)
    monkeypatch.setenv("SEMIEVOL_TEAM", "1")
    monkeypatch.setenv("SEMIEVOL_WORKSPACE", str(ws.path))
    csv_path = write_csv(tmp_path / "more.csv", [{"id": "N1", "text": "a new one",
                                                   "label": "billing"}])

    def app(name: str):
        at = AppTest.from_function(_every_lead_action,
                                   args=(str(ws.path), str(csv_path), items[0], name == "ana"),
                                   default_timeout=60)
        at.session_state["team_session"] = sign_in(ws, name, PASSWORD)
        return at

    return ws, app


def _shown(at) -> str:
    return "\n".join([e.value for e in at.error] + [w.value for w in at.warning]
                     + [m.value for m in at.markdown])


def test_a_reviewer_calling_lead_actions_is_refused_and_nothing_is_written(team_app):
    ws, app = team_app
    before = {k: v for k, v in ws.table_counts().items() if k != "sessions"}
    at = app("bo").run()
    assert not at.exception
    shown = _shown(at)
    for words in ("launch or resume rounds", "train and evaluate", "import files and index",
                  "see the team's agreement and set the overlap share", "adjudicate conflicts",
                  "decide on every filtered item"):
        assert f"only a lead can {words}" in shown.replace("\\", ""), words
    assert shown.count("bo is a reviewer here") >= 7
    after = {k: v for k, v in ws.table_counts().items() if k != "sessions"}
    assert after == before
    assert ws.get_setting("team_overlap") is None


def test_a_lead_calling_the_same_actions_is_not_refused_for_the_role(team_app):
    ws, app = team_app
    at = app("ana").run()
    assert not at.exception
    assert "is a reviewer here" not in _shown(at)
    assert ws.get_setting("team_overlap") == 0.5  # the lead's overlap was saved
    assert ws.query("SELECT action, reviewer, adjudication FROM decisions")[0][:] == \
        ("reject", "ana", 1)
