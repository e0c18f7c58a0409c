"""The Selection, Rounds and Export pages (AppTest) on an empty workspace and on the two-round
workspace of test_lineage_audit.prepare_rounds, and the view functions behind them."""

from __future__ import annotations

import io
import json
import sys
import zipfile
from pathlib import Path

import pytest
from test_lineage_audit import ids, prepare_rounds

from semievol.config import RoundConfig, SelectionConfig
from semievol.curation.selection_state import applied_selection
from semievol.saved_config import to_json
from semievol.workspace.store import Workspace

APP = Path(__file__).resolve().parents[1] / "app"
sys.path.insert(0, str(APP))  # the pages import `common` and the *_view modules from app/

import export_view  # noqa: E402
import rounds_view  # noqa: E402
import selection_charts  # noqa: E402
import selection_view  # noqa: E402

SELECTION, ROUNDS, EXPORT = "pages/5_Selection.py", "pages/7_Rounds.py", "pages/8_Export.py"


@pytest.fixture(autouse=True)
def no_model(monkeypatch):
    """No page here may load a model: loading one fails the test."""
    import semievol.model.loading
    import semievol.model.local

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(semievol.model.local, "load_backend", refuse)
    monkeypatch.setattr(semievol.model.loading, "load_model", refuse)


@pytest.fixture
def prepared(filled_workspace):
    prepare_rounds(filled_workspace)
    return filled_workspace


def without_floor(at, round_id: int):
    """Set the class floor to 0, so the assertions below are about the policy alone."""
    at.slider(key=f"selection_floor_{round_id}").set_value(0.0).run()
    return at


def page(path: Path, name: str, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("SEMIEVOL_WORKSPACE", str(path))
    at = AppTest.from_file(str(APP / "Home.py"), default_timeout=30).run()
    at.switch_page(name).run()
    assert not at.exception, at.exception
    return at


def metrics(at) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def frame_with(at, column: str):
    return next(d.value for d in at.dataframe if column in d.value.columns)


# -- empty states -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", [SELECTION, ROUNDS, EXPORT])
def test_pages_show_an_empty_state_on_an_empty_workspace(workspace, monkeypatch, name):
    at = page(workspace.path, name, monkeypatch)
    assert any("No round yet" in i.value for i in at.info)
    assert not at.dataframe and not at.metric


def test_selection_page_on_a_round_without_pseudo_labels(filled_workspace, monkeypatch):
    with filled_workspace.transaction() as conn:
        conn.execute("INSERT INTO rounds(number, status, config, created_at) "
                     "VALUES(1, 'open', ?, 0)", (to_json(RoundConfig()),))
    at = page(filled_workspace.path, SELECTION, monkeypatch)
    assert any("has no pseudo-labels yet" in i.value for i in at.info)
    assert not at.button


# -- Selection ----------------------------------------------------------------------------------
def test_selection_preview_follows_the_theta_slider(prepared, monkeypatch):
    at = without_floor(page(prepared.path, SELECTION, monkeypatch), 2)
    assert at.selectbox(key="selection_round").value == 2  # newest round first
    shown = metrics(at)
    # Round 2's pool: entropies .25 .30 .35 .40 .45; the median keeps three.
    assert shown["Selected to train"] == "3" and shown["Unlabeled pool"] == "5"
    assert shown["Threshold"] == "0.350"
    at.slider(key="selection_theta_2").set_value(100.0).run()
    assert not at.exception
    assert metrics(at)["Selected to train"] == "5"
    at.slider(key="selection_theta_2").set_value(0.0).run()
    assert metrics(at)["Selected to train"] == "1"
    classes = frame_with(at, "would train")
    assert dict(zip(classes["class"], classes["would train"])) == {
        "billing": 0, "outage": 1, "equipment": 0}
    with Workspace(prepared.path) as ws:  # a preview writes nothing
        assert ws.scalar("SELECT SUM(selected) FROM pseudo_labels WHERE round_id=2") == 0


def test_selection_absolute_policy_and_agreement_only(prepared, monkeypatch):
    at = without_floor(page(prepared.path, SELECTION, monkeypatch), 2)
    assert at.slider(key="selection_threshold_2_nll").disabled
    at.radio(key="selection_policy_2").set_value("absolute").run()
    at.slider(key="selection_threshold_2_nll").set_value(0.31).run()
    assert not at.exception
    assert metrics(at)["Selected to train"] == "2" and metrics(at)["Threshold"] == "0.310"
    at.radio(key="selection_policy_2").set_value("agreement_only").run()
    assert metrics(at)["Selected to train"] == "5"  # every round-2 item agreed
    compared = frame_with(at, "already the warm-up's answer")
    assert list(compared["policy"]) == ["percentile θ=50 (nll)", "per_class θ=50 (nll)",
                                        "▶ agreement_only (nll)", "teach θ=50 (nll)"]
    assert list(compared["selected"])[:3] == [3, 3, 5]
    # round 2 stores no collaborator distributions: nothing for teach to read
    at.radio(key="selection_policy_2").set_value("teach").run()
    assert not at.exception and metrics(at)["Selected to train"] == "0"


def test_selection_page_shows_round_one_evidence(prepared, monkeypatch):
    at = page(prepared.path, SELECTION, monkeypatch)
    at.selectbox(key="selection_round").set_value(1).run()
    assert not at.exception
    shown = metrics(at)
    # The applied percentile 50: U00..U04 kept, U01 rejected by the reviewer.
    assert shown["Selected to train"] == "4"
    assert (shown["Accepted by a reviewer"], shown["Rejected by a reviewer"],
            shown["Relabeled by a reviewer"]) == ("1", "1", "1")
    # 1 of 2 and 2 of 3 right: samples too small for a percentage, shown as what they need.
    assert shown["Calibration precision, selected"] == "–, needs at least 10 (2 so far)"
    assert shown["Calibration precision, all"] == "–, needs at least 10 (3 so far)"
    assert any("controls are read-only" in i.value for i in at.info)  # a trained round
    assert at.slider(key="selection_theta_1").disabled
    assert not [b for b in at.button if b.key == "apply_selection"]
    queue = frame_with(at, "bin")
    assert list(queue["id"]) == ["U00", "U01", "U02", "U03", "U04"][:len(queue)]
    # 2 of 3 audited items wrong: shown as a need, never as "67%" in large type.
    assert shown["Audited"] == "3 of 5"
    assert shown["Estimated error rate"] == "–, audit at least 10 (3 so far)"
    assert any("fewer than 10 audited items" in c.value for c in at.caption)


def test_selection_leakage_flags_are_listed(prepared, monkeypatch):
    item = ids(prepared)
    with prepared.transaction() as conn:
        conn.execute("INSERT INTO flags(round_id, item_id, kind, detail) VALUES(2, ?, "
                     "'near_duplicate_test', ?)",
                     (item["U05"], json.dumps({"test_item": item["T3"], "similarity": 0.97})))
    at = without_floor(page(prepared.path, SELECTION, monkeypatch), 2)
    flags = frame_with(at, "similarity")
    assert list(flags["item_id"]) == [item["U05"]]
    assert metrics(at)["Leakage excluded"] == "1" and metrics(at)["Selected to train"] == "2"


def test_apply_writes_the_selection(prepared, monkeypatch):
    at = page(prepared.path, SELECTION, monkeypatch)
    at.slider(key="selection_theta_2").set_value(80.0).run()
    at.button(key="apply_selection").click().run()
    assert not at.exception
    assert any("4 of 5 pseudo-label(s) selected" in s.value for s in at.success)
    with Workspace(prepared.path) as ws:
        item = ids(ws)
        chosen = {r[0] for r in ws.query("SELECT item_id FROM pseudo_labels WHERE round_id=2 "
                                         "AND selected=1")}
        assert chosen == {item[x] for x in ("U05", "U06", "U07", "U08")}
        assert applied_selection(ws, 2).theta == 80.0
    at.run()  # the applied setting is now where the controls start, and the audit has a queue
    assert at.slider(key="selection_theta_2").value == 80.0
    assert len(frame_with(at, "bin")) == 4


def test_selection_view_functions(prepared):
    from semievol.views import selection as view

    config = SelectionConfig(policy="per_class", theta=50.0)
    assert view.preview(prepared, 2, config).class_thresholds == pytest.approx(
        {"outage": 0.30, "equipment": 0.425})
    preview = view.preview(prepared, 1, SelectionConfig(class_floor=0.0))
    assert selection_charts.calibration_point(preview) == pytest.approx((2 / 3, 0.5))
    assert len(selection_view.selection_frame(preview)) == len(preview.rows)
    assert view.controls(prepared, 2).ranges["nll"] == pytest.approx((0.25, 0.45))
    assert view.controls(prepared, 1).scores == ["nll", "option_entropy"]


# -- Rounds -------------------------------------------------------------------------------------
def test_rounds_page_shows_the_round_table_and_lineage(prepared, monkeypatch):
    at = page(prepared.path, ROUNDS, monkeypatch)
    table = frame_with(at, "pseudo-labels")
    assert list(table["round"]) == [1, 2]
    assert list(table["selected"]) == [4, 0]
    assert list(table["acc round"].fillna(-1)) == [0.66, -1]
    # 1 of 2 selected calibration items right is no percentage: too few to mean anything.
    assert list(table["calib. precision (selected)"]) == ["–, needs at least 10 (2 so far)", "–"]
    assert not any("%" in str(v) for v in table["audited precision"])
    at.text_input(key="lineage_item").set_value("U05").run()
    assert not at.exception
    lineage = frame_with(at, "collaborators")
    assert list(lineage["round"]) == [1, 2]
    assert lineage["collaborators"][0].startswith("warm-up model, no examples: outage")
    assert "/k" not in lineage["collaborators"][0]  # plain names, never warmup/k0/t1/s0
    at.text_input(key="lineage_item").set_value("missing").run()
    assert any("No item 'missing'" in w.value for w in at.warning)


def test_rounds_view_frames(prepared):
    from semievol.views.lineage import round_summaries

    summaries = round_summaries(prepared)
    accuracy = rounds_view.accuracy_frame(summaries)
    assert len(accuracy) == 6  # base and base+demos on both rounds, warmup and round on 1
    volume = rounds_view.volume_frame(summaries)
    assert volume.set_index(["round", "kind"])["items"].to_dict() == {
        (1, "produced"): 10, (1, "selected"): 4, (2, "produced"): 5, (2, "selected"): 0}
    # Round 1's calibration (2 items) and audit (3 reviewed) are too small to plot.
    assert rounds_view.precision_frame(summaries).empty
    enlarged = [dict(s, calibration_selected=dict(s["calibration_selected"] or {}, n=12,
                                                  precision=0.75, interval=(0.47, 0.91)),
                     audit=dict(s["audit"], reviewed=10, precision=0.8, interval=(0.05, 0.5),
                                precision_interval=(0.5, 0.95)))
                for s in summaries[:1]]
    precision = rounds_view.precision_frame(enlarged)
    assert set(zip(precision["round"], precision["estimate"], precision["n"])) == {
        (1, "calibration", 12), (1, "audit", 10)}
    assert list(precision["low"]) == pytest.approx([0.47, 0.5])
    assert rounds_view.round_table(enlarged)["calib. precision (selected)"][0] == (
        "75% (n=12, 95% 47%–91%)")


# -- Export -------------------------------------------------------------------------------------
def test_export_page_writes_the_dataset(prepared, monkeypatch):
    at = page(prepared.path, EXPORT, monkeypatch)
    at.selectbox(key="export_round").set_value(1).run()
    at.button(key="export_dataset").click().run()
    assert not at.exception
    jsonl = prepared.path / "exports" / "curated_round1.jsonl"
    assert jsonl.exists() and (prepared.path / "exports" / "curated_round1.csv").exists()
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    # 9 labeled (3 moved to calibration) + U00 (accepted), U02 (relabeled), U03, U04, then
    # the 3 calibration labels, marked as such.
    assert len(rows) == 16 and [r["source"] for r in rows[13:]] == ["calibration"] * 3
    assert any("Exported 13 training example(s) of round 1 and 3 held-out calibration"
               in s.value for s in at.success)
    labels = [b.proto.label for b in at.get("download_button")]
    assert any("curated_round1.jsonl" in x for x in labels)


def test_export_adapter_and_its_error(prepared, monkeypatch):
    at = page(prepared.path, EXPORT, monkeypatch)
    assert at.selectbox(key="export_round").value == 1  # the best (only) trained round
    at.selectbox(key="export_round").set_value(2).run()
    at.button(key="export_adapter").click().run()  # round 2: not trained
    assert not at.exception
    assert any("no trained adapter" in e.value for e in at.error)
    at.selectbox(key="export_round").set_value(1).run()
    at.button(key="export_adapter").click().run()
    assert not at.exception
    folder = prepared.path / "exports" / "adapter_round1"
    assert (folder / "adapter_config.json").exists()
    assert any("adapter_round1.zip" in b.proto.label for b in at.get("download_button"))
    archive = zipfile.ZipFile(io.BytesIO(export_view.zip_folder(folder)))
    assert sorted(archive.namelist()) == ["adapter_round1/README.md",
                                          "adapter_round1/adapter_config.json",
                                          "adapter_round1/adapter_model.safetensors"]


def test_the_tuned_selection_carries_to_the_next_rounds(prepared, monkeypatch):
    from semievol.config import SelectionConfig
    from semievol.curation.selection_state import applied_selection, selection_in_force
    from semievol.rounds.record import base_config

    with Workspace(prepared.path) as ws:  # tuned on round 1 (trained): percentile θ=30
        ws.conn.execute("UPDATE selections SET config=? WHERE round_id=1", (json.dumps(
            {"policy": "percentile", "theta": 30.0, "threshold": None, "score": "nll"}),))
        assert selection_in_force(ws, 2)[0].theta != 30  # round 2 would go back silently
    at = page(prepared.path, SELECTION, monkeypatch)
    at.selectbox(key="selection_round").set_value(1).run()
    at.button(key="keep_selection").click().run()
    assert not at.exception
    assert any("New rounds will select by percentile θ=30" in s.value for s in at.success)
    with Workspace(prepared.path) as ws:
        tuned = applied_selection(ws, 1)
        assert base_config(ws).selection == tuned
        assert selection_in_force(ws, 2) == (tuned, False)  # the open round 2 follows
    at.selectbox(key="selection_round").set_value(1).run()
    assert not [b for b in at.button if b.key == "keep_selection"]  # kept: nothing to do
    assert any("kept from round 1" in c.value for c in at.caption)
    assert SelectionConfig().theta == 50  # the default it no longer falls back to


def test_the_selection_page_weights_pseudo_labels_by_confidence(prepared, monkeypatch):
    with Workspace(prepared.path) as ws, ws.transaction() as conn:  # no distributions stored:
        conn.execute("UPDATE pseudo_labels SET agreement=0.6 WHERE round_id=2")  # the share
    at = without_floor(page(prepared.path, SELECTION, monkeypatch), 2)
    at.slider(key="selection_theta_2").set_value(100.0).run()
    at.radio(key="selection_weighting_2").set_value("confidence").run()
    assert not at.exception
    assert any("mean loss weight of 0.60" in c.value for c in at.caption)
    compared = frame_with(at, "already the warm-up's answer")
    assert all("weighted by confidence" in p for p in compared["policy"])
