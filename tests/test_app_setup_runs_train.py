"""The Round setup, Runs and Train and evaluate pages (AppTest) and the logic behind them.

`launch_step`, `resume_run` and `cancel_run` are replaced in every page test that presses a
button, so no page test starts a process."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pandas as pd
import pytest

from semievol.config import CollaboratorConfig, RoundConfig, SelectionConfig
from semievol.errors import SemiEvolError
from semievol.method.scoring import classification_report
from semievol.rounds.record import open_round, set_status
from semievol.runs import jobs, launch
from semievol.saved_config import to_json
from semievol.workspace.imports import ColumnMapping, import_file
from semievol.workspace.store import Workspace, now

APP = Path(__file__).resolve().parents[1] / "app"
sys.path.insert(0, str(APP))  # the pages import `common` and the *_view modules from app/

import common  # noqa: E402
import setup_view  # noqa: E402
import train_view  # noqa: E402

from semievol.views.train import VARIANT_NAMES, VARIANTS, train_page  # noqa: E402

SETUP, RUNS, TRAIN = "pages/2_Round_setup.py", "pages/3_Runs.py", "pages/6_Train_and_evaluate.py"
LABELS = ["billing", "outage", "equipment"]


@pytest.fixture
def task_workspace(workspace, task, small_task_files):
    """The small task imported (12 labeled, 20 unlabeled, 9 test), not indexed."""
    for split in ("labeled", "unlabeled", "test"):
        mapping = ColumnMapping(question="text", id="id",
                                answer=None if split == "unlabeled" else "label")
        import_file(workspace, small_task_files[split], split, mapping=mapping, task=task)
    return workspace


@pytest.fixture
def launched(monkeypatch):
    """Replace launch.start: record (step, kwargs), return run id 41; the app always starts
    in the background."""
    calls = []

    def fake(ws, step, *, background, **kwargs):
        assert background is True
        calls.append((step, kwargs))
        return 41
    monkeypatch.setattr(launch, "start", fake)
    return calls


def page(ws: Workspace, path: str, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("SEMIEVOL_WORKSPACE", str(ws.path))
    at = AppTest.from_file(str(APP / "Home.py"), default_timeout=30).run()
    return at.switch_page(path).run()


def texts(elements) -> str:
    return "\n".join(str(e.value) for e in elements)


def frame_with(at, column: str) -> pd.DataFrame:
    return next(d.value for d in at.dataframe if column in d.value.columns)


def _insert_run(ws, kind, round_id, status, *, error=None, pid=None, message=None,
                progress=0.0):
    return ws.conn.execute(
        "INSERT INTO runs(kind, round_id, status, pid, progress, message, started_at, heartbeat,"
        " finished_at, error) VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (kind, round_id, status, pid, progress, message, now() - 60, now(),
         None if status == "running" else now(), error)).lastrowid


def _insert_evaluation(ws, round_id, model, predicted):
    gold = ["billing"] * 3 + ["outage"] * 3 + ["equipment"] * 3
    report = classification_report(gold, predicted, LABELS)
    report["model"] = model
    ws.conn.execute("INSERT INTO evaluations(round_id, model, split, accuracy, macro_f1, report,"
                    " created_at) VALUES(?, ?, 'test', ?, ?, ?, ?)",
                    (round_id, model, report["accuracy"], report["macro_f1"],
                     json.dumps(report), now()))
    return report


# -- empty states ---------------------------------------------------------------------------
def test_pages_show_empty_states_on_an_empty_workspace(workspace, monkeypatch):
    at = page(workspace, SETUP, monkeypatch)
    assert not at.exception
    assert "no task yet" in texts(at.info)
    assert "launch_round" not in _keys(at)
    at.switch_page(RUNS).run()
    assert not at.exception
    assert "No runs yet" in texts(at.info)
    at.switch_page(TRAIN).run()
    assert not at.exception
    assert "No round yet" in texts(at.info)


def _keys(at) -> set[str]:
    return {b.key for b in at.button}


# -- round setup ----------------------------------------------------------------------------
def test_round_setup_shows_the_defaults_and_launches_the_whole_round(task_workspace, launched,
                                                                     monkeypatch):
    at = page(task_workspace, SETUP, monkeypatch)
    assert not at.exception
    assert "No round yet" in texts(at.markdown)
    assert at.text_input(key="setup_model").value == "bundled"
    # What the model is, checked from its files (semievol.views.setup.model_note).
    assert any(c.value.replace("\\", "").startswith(  # shown as literal text (escaped)
        "Llama: context window 8192 tokens, vocabulary 49,152") for c in at.caption)
    editor = setup_view.collaborator_frame(RoundConfig())
    shown = frame_with(at, "demonstrations")
    assert shown.to_dict("records") == editor.to_dict("records")
    assert len(shown) == 4
    # Steps after warm-up need an open round.
    assert at.button(key="launch_label").disabled and not at.button(key="launch_warmup").disabled
    at.number_input(key="setup_max_steps").set_value(5).run()
    at.button(key="launch_round").click().run()
    assert not at.exception
    step, kwargs = launched[-1]
    assert step == "round"
    expected = RoundConfig()
    expected.train.max_steps = 5
    assert kwargs["config"] == expected
    assert kwargs["review"] is True  # the round stops for review unless told otherwise
    assert "Started run 41" in texts(at.success)
    at.checkbox(key="unattended").check().run()
    at.button(key="launch_round").click().run()
    assert launched[-1][1]["review"] is False


def test_round_setup_shows_a_validation_error_instead_of_launching(task_workspace, launched,
                                                                   monkeypatch):
    at = page(task_workspace, SETUP, monkeypatch)
    at.session_state["setup_collaborators"] = {
        "edited_rows": {1: {"demonstrations": 7}}, "added_rows": [], "deleted_rows": []}
    at.run()
    assert not at.exception
    assert "asks for 7 demonstrations but retrieval keeps k=3" in texts(at.error)
    assert at.button(key="launch_round").disabled
    assert not [d for d in at.get("download_button")]  # no YAML of an invalid config
    # Raising k makes the same table valid again.
    at.number_input(key="setup_k").set_value(8).run()
    assert not at.error
    at.button(key="launch_round").click().run()
    config = launched[-1][1]["config"]
    assert config.retrieval.k == 8 and config.collaborators[1].demonstrations == 7


def test_round_setup_reports_an_incomplete_added_row(task_workspace, launched, monkeypatch):
    at = page(task_workspace, SETUP, monkeypatch)
    at.session_state["setup_collaborators"] = {
        "edited_rows": {}, "added_rows": [{"model": "base"}], "deleted_rows": [0, 1, 2, 3]}
    at.run()
    assert not at.exception
    errors = texts(at.error)
    assert "collaborator table is incomplete" in errors and "row 1" in errors


def test_round_setup_shows_what_the_round_has_done_and_a_refusal(task_workspace, monkeypatch):
    ws = task_workspace
    rnd = open_round(ws, RoundConfig())
    ws.conn.execute("UPDATE rounds SET warmup_adapter='adapters/round1/warmup' WHERE id=?",
                    (rnd.id,))
    ids = [r[0] for r in ws.query("SELECT id FROM items WHERE split='unlabeled' LIMIT 3")]
    ws.conn.executemany("INSERT INTO pseudo_labels(round_id, item_id, label, path, agreement) "
                        "VALUES(?, ?, 'billing', 'agreed', 1.0)", [(rnd.id, i) for i in ids])

    def refuse(*args, **kwargs):
        raise jobs.RunRefused("Run 7 (label, pid 1) is already writing round 1; cancel it.")
    monkeypatch.setattr(launch, "start", refuse)
    at = page(ws, SETUP, monkeypatch)
    assert not at.exception
    steps = frame_with(at, "detail")
    assert list(steps["done"]) == ["✓", "✓", "", "", ""]
    assert "3 pseudo-label(s) (3 agreed, 0 reflected)" in steps["detail"][1]
    assert "Next step: **select**" in texts(at.markdown)
    assert not at.button(key="launch_select").disabled
    at.button(key="launch_select").click().run()
    assert not at.exception
    assert "already writing round 1" in texts(at.warning)


def test_config_from_form_overrides_only_what_the_form_holds():
    base = RoundConfig()
    base.train.warmup_ratio = 0.2  # not on the form: kept
    frame = setup_view.collaborator_frame(base)
    config = setup_view.config_from_form(
        base, {"train.max_steps": None, "lora.r": 8, "unlabeled_limit": 100}, frame)
    assert (config.lora.r, config.unlabeled_limit, config.train.warmup_ratio) == (8, 100, 0.2)
    frame.loc[0, "model"] = "teacher"
    with pytest.raises(SemiEvolError, match="collaborator model must be one of"):
        setup_view.config_from_form(base, {}, frame)
    with pytest.raises(SemiEvolError, match="at least one collaborator"):
        setup_view.config_from_form(base, {}, frame.iloc[0:0])


# -- runs -----------------------------------------------------------------------------------
def test_runs_page_lists_runs_and_offers_resume_for_a_failed_one(task_workspace, monkeypatch):
    ws = task_workspace
    rnd = open_round(ws, RoundConfig())
    done = _insert_run(ws, "warmup", rnd.id, "succeeded", progress=1.0, message="trained")
    for step, loss in enumerate([2.0, 1.5, 1.1]):
        ws.conn.execute("INSERT INTO metrics(run_id, round_id, name, step, value, created_at)"
                        " VALUES(?, ?, 'train_loss', ?, ?, ?)", (done, rnd.id, step, loss, now()))
    failed = _insert_run(ws, "label", rnd.id, "failed", progress=0.4,
                         error="RuntimeError: CUDA out of memory\n  File x.py, line 3")
    resumed = []
    monkeypatch.setattr(launch, "resume", lambda w, run_id: resumed.append(run_id) or 99)
    at = page(ws, RUNS, monkeypatch)
    assert not at.exception
    table = frame_with(at, "kind")
    assert list(table["id"]) == [failed, done]
    assert list(table["kind"]) == ["label", "warmup"] and list(table["round"]) == [1, 1]
    assert "failed" in table["status"][0]
    # The newest (failed) run is shown: its error and a Resume button, no Cancel.
    assert "CUDA out of memory" in texts(at.error)
    assert f"resume_{failed}" in _keys(at) and f"cancel_{failed}" not in _keys(at)
    at.button(key=f"resume_{failed}").click().run()
    assert not at.exception
    assert resumed == [failed]
    assert f"Resumed run {failed} as run 99" in texts(at.success)
    # The succeeded run: no Resume, its loss curve (a plotly chart: UnknownElement).
    at.selectbox(key="runs_selected").set_value(done).run()
    assert not at.exception
    assert f"resume_{done}" not in _keys(at)
    assert any(type(e).__name__ == "UnknownElement" for e in at.main)
    assert "finished" in texts(at.caption)


def test_runs_page_shows_a_running_run_with_cancel(task_workspace, monkeypatch):
    ws = task_workspace
    rnd = open_round(ws, RoundConfig())
    running = _insert_run(ws, "train", rnd.id, "running", pid=os.getpid(), progress=0.4,
                          message="training")
    (ws.path / "runs" / f"{running}.log").write_text("loading model\nstep 3/10\r step 4/10\n")
    cancelled = []
    monkeypatch.setattr(jobs, "cancel_run", lambda w, run_id: cancelled.append(run_id) or True)
    at = page(ws, RUNS, monkeypatch)
    assert not at.exception
    assert "heartbeat" in texts(at.caption)
    assert "loading model\n step 4/10" in texts(at.code)  # the redrawn progress line
    at.button(key=f"cancel_{running}").click().run()
    assert not at.exception
    assert cancelled == [running]
    assert "cancel signal sent" in texts(at.success)


# -- train and evaluate ---------------------------------------------------------------------
def test_train_page_warns_without_a_selection_and_trains_once_there_is_one(task_workspace,
                                                                           launched,
                                                                           monkeypatch):
    ws = task_workspace
    rnd = open_round(ws, RoundConfig())
    at = page(ws, TRAIN, monkeypatch)
    assert not at.exception
    assert "no selection yet" in texts(at.warning)
    assert not [b for b in at.button if b.key == "train"]  # not awaiting review yet
    ids = [r[0] for r in ws.query("SELECT id FROM items WHERE split='unlabeled' LIMIT 4")]
    ws.conn.executemany("INSERT INTO pseudo_labels(round_id, item_id, label, path, agreement,"
                        " selected) VALUES(?, ?, ?, 'agreed', 1.0, ?)",
                        [(rnd.id, ids[0], "outage", 1), (rnd.id, ids[1], "outage", 1),
                         (rnd.id, ids[2], "billing", 1), (rnd.id, ids[3], "equipment", 0)])
    ws.conn.execute("INSERT INTO selections(round_id, config, applied_at) VALUES(?, ?, 0)",
                    (rnd.id, to_json(SelectionConfig())))  # as apply_selection records it
    set_status(ws, rnd, "awaiting_review")
    at.run()
    assert "no selection yet" not in texts(at.warning)
    counts = frame_with(at, "pseudo")
    assert counts.set_index("class")["pseudo"].to_dict() == {"billing": 1, "outage": 2,
                                                             "equipment": 0}
    assert list(counts["gold"]) == [4, 4, 4]
    assert "**15** item(s)" in texts(at.markdown)
    assert any("awaiting review" in m for m in texts(at.markdown).split("\n"))
    # The pool's only equipment item is left out: the evidence guard asks for a confirmation.
    assert "keeps no item of 'equipment'" in texts(at.warning)
    assert at.button(key="train").disabled
    at.checkbox(key="train_confirm").check().run()
    at.button(key="train").click().run()
    assert not at.exception
    assert launched == [("train", {"config": None, "review": True,
                                   "confirm": at.session_state[common.REVIEWER_KEY]})]


def test_train_page_compares_evaluations_and_starts_the_next_round(task_workspace, launched,
                                                                   monkeypatch):
    ws = task_workspace
    rnd = open_round(ws, RoundConfig())
    ws.conn.execute("UPDATE rounds SET status='done', warmup_adapter='w', final_adapter='f' "
                    "WHERE id=?", (rnd.id,))
    everything_billing = ["billing"] * 9
    _insert_evaluation(ws, None, "base", everything_billing)
    _insert_evaluation(ws, None, "base+demos", everything_billing)
    _insert_evaluation(ws, rnd.id, "warmup", ["billing"] * 3 + ["outage"] * 6)
    final = _insert_evaluation(ws, rnd.id, "round", ["billing"] * 3 + ["outage"] * 3
                               + ["equipment", "equipment", "outage"])
    at = page(ws, TRAIN, monkeypatch)
    assert not at.exception
    table = frame_with(at, "accuracy")
    assert list(table["model"]) == [VARIANT_NAMES[v] for v in VARIANTS]
    assert table["accuracy"].round(4).tolist() == [0.3333, 0.3333, 0.6667, 0.8889]
    assert table["majority baseline"].round(4).tolist() == [0.3333] * 4
    per_class = frame_with(at, "recall")
    assert per_class.set_index("class")["recall"].round(4).to_dict() == {
        "billing": 1.0, "outage": 1.0, "equipment": 0.6667}
    charts = [e for e in at.main if type(e).__name__ == "UnknownElement"]
    assert len(charts) >= 3  # bars, predicted vs gold, confusion heatmap
    assert final["confusion"][2] == [0, 1, 2]
    at.selectbox(key="eval_variant").set_value("base").run()
    assert frame_with(at, "recall").set_index("class")["predicted"].to_dict() == {
        "billing": 9, "outage": 0, "equipment": 0}
    assert "round 1's trained adapter (88.9% on test), the best so far" in texts(at.markdown)
    at.button(key="next_round").click().run()
    assert not at.exception
    assert launched == [("round", {"config": None, "review": True, "confirm": None})]


def test_training_counts_and_distribution_frames(task_workspace):
    ws = task_workspace
    open_round(ws, RoundConfig(collaborators=[CollaboratorConfig()]))
    counts = train_view.training_frame(train_page(ws))
    assert list(counts["class"]) == LABELS and list(counts["total"]) == [4, 4, 4]
    report = classification_report(["billing", "outage"], ["billing", None], LABELS)
    frame = train_view.distribution_frame(report)
    predicted = frame[frame["kind"] == "predicted"].set_index("class")["items"].to_dict()
    assert predicted == {"billing": 1, "outage": 0, "equipment": 0, "(none)": 1}


def test_a_round_worse_than_its_warmup_is_flagged_everywhere(task_workspace, launched,
                                                             monkeypatch):
    ws = task_workspace
    rnd = open_round(ws, RoundConfig())
    ws.conn.execute("UPDATE rounds SET status='done', warmup_adapter='adapters/w', "
                    "final_adapter='adapters/f' WHERE id=?", (rnd.id,))
    _insert_evaluation(ws, rnd.id, "warmup", ["billing"] * 3 + ["outage"] * 3
                       + ["equipment"] * 3)                      # 100 %
    _insert_evaluation(ws, rnd.id, "round", ["billing"] * 9)     # 33 %
    at = page(ws, TRAIN, monkeypatch)
    assert not at.exception
    assert "Round 1 scores 33.3% on test, below its warm-up 100.0%" in texts(at.error)
    # The next round starts from the warm-up (the best so far), and says so.
    assert "round 1's warm-up adapter (100.0% on test), the best so far" in texts(at.markdown)
    assert at.button(key="next_round").proto.type != "primary"
    at.switch_page("pages/7_Rounds.py").run()
    assert not at.exception and "below its warm-up" in texts(at.error)
    at.switch_page("Home.py").run()
    assert "below its warm-up" in texts(at.error)


def test_a_trained_round_shows_its_frozen_training_set(task_workspace, launched, monkeypatch):
    from semievol.curation.decisions import record_decisions
    from semievol.curation.training_set import freeze, training_items

    ws = task_workspace
    rnd = open_round(ws, RoundConfig())
    ids = [r[0] for r in ws.query("SELECT id FROM items WHERE split='unlabeled' LIMIT 3")]
    ws.conn.executemany("INSERT INTO pseudo_labels(round_id, item_id, label, path, agreement,"
                        " selected) VALUES(?, ?, 'outage', 'agreed', 1.0, 1)",
                        [(rnd.id, i) for i in ids])
    freeze(ws, rnd.id, training_items(ws, 1))           # 12 labeled + 3 pseudo
    ws.conn.execute("UPDATE rounds SET status='trained', final_adapter='adapters/f' "
                    "WHERE id=?", (rnd.id,))
    record_decisions(ws, ids[:2], "reject", reviewer="ann")  # after training started
    at = page(ws, TRAIN, monkeypatch)
    assert not at.exception
    assert "trained on **15** item(s), frozen when its training started" in texts(at.markdown)
    assert "2 decision(s) were made after this round started training" in texts(at.info)
    assert frame_with(at, "pseudo").set_index("class")["pseudo"].to_dict()["outage"] == 3


def test_round_setup_says_why_a_model_would_be_refused(task_workspace, tmp_path, monkeypatch):
    """A folder without a chat template, typed into the model field: the page says so before
    any launch, as the round would."""
    import shutil

    from semievol.model.loading import bundled_model_dir

    folder = tmp_path / "no_template"
    shutil.copytree(bundled_model_dir(), folder)
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    settings = json.loads((folder / "tokenizer_config.json").read_text())
    settings.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(settings))
    at = page(task_workspace, SETUP, monkeypatch)
    at.text_input(key="setup_model").set_value(str(folder)).run()
    assert not at.exception
    assert any("has no chat template" in e.value for e in at.error)
