"""The Review page (AppTest): focus mode (one item, keyboard shortcuts, auto-advance, undo),
the table and detail, a decision made through the page and a bulk decision on a filtered
set land in the decisions table, the training action, empty states."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from test_review import add_round, unlabeled_ids

from semievol.rounds.guards import training_warnings
from semievol.views.review import ReviewFilter, filtered_item_ids

APP = Path(__file__).resolve().parents[1] / "app"
sys.path.insert(0, str(APP))  # the page imports `common` and `review_view` from app/

import common  # noqa: E402

PAGE = "pages/4_Review.py"


def page_at(ws, monkeypatch, reviewer="ana", mode="table"):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("SEMIEVOL_WORKSPACE", str(ws.path))
    at = AppTest.from_file(str(APP / "Home.py"), default_timeout=30)
    at.session_state[common.REVIEWER_KEY] = reviewer
    at.session_state["review_mode"] = mode
    return at.run().switch_page(PAGE).run()


def frame_with(at, column):
    return next(d.value for d in at.dataframe if column in d.value.columns)


def decisions(ws):
    return [dict(r) for r in ws.query("SELECT item_id, action, label, reviewer, note, round_id "
                                      "FROM decisions ORDER BY id")]


@pytest.fixture
def review_ws(filled_workspace):
    return filled_workspace, add_round(filled_workspace)


def test_page_shows_the_round_table_and_the_first_items_detail(review_ws, monkeypatch):
    ws, round_id = review_ws
    at = page_at(ws, monkeypatch)
    assert not at.exception and not at.error
    table = frame_with(at, "pseudo-label")
    assert len(table) == 20 and list(table["entropy"]) == sorted(table["entropy"])
    assert any("Items 1–20 of 20" in c.value for c in at.caption)
    # The default item is the page's first row: the lowest entropy, U00 (agreed, flagged).
    assert at.selectbox(key="review_item").value == unlabeled_ids(ws)[0]
    assert "Item U00" in [h.value for h in at.subheader]
    collaborators = frame_with(at, "collaborator")
    assert list(collaborators["collaborator"]) == [
        "warm-up model, no examples", "warm-up model, 3 examples", "base model, 3 examples",
        "warm-up model, 1 example"]
    assert any(e.label.startswith("Demonstrations (3 retrieved") for e in at.expander)
    assert any("near duplicate test" in w.value for w in at.warning)
    at.slider(key=f"review_entropy_{round_id}").set_value((0.5, 1.0)).run()
    entropies = frame_with(at, "pseudo-label")["entropy"]
    assert len(entropies) == 6 and entropies.between(0.5, 1.0).all()
    at.slider(key=f"review_entropy_{round_id}").set_value((0.0, 1.9)).run()
    at.selectbox(key="review_page_size").set_value(25).run()
    at.selectbox(key="review_path").set_value("reflected").run()
    assert set(frame_with(at, "pseudo-label")["path"]) == {"reflected"}
    assert at.selectbox(key="review_item").value in unlabeled_ids(ws)[1::2]
    assert any(e.label.startswith("Reflection: the warm-up model was shown") for e in at.expander)


def test_accept_on_the_selected_item_is_saved_with_the_reviewer(review_ws, monkeypatch):
    ws, round_id = review_ws
    at = page_at(ws, monkeypatch, reviewer="ana")
    item = unlabeled_ids(ws)[2]
    at.selectbox(key="review_item").set_value(item).run()
    at.text_input(key="review_note").set_value("looks right").run()
    at.button(key="review_accept").click().run()
    assert not at.exception and not at.error
    assert decisions(ws) == [{"item_id": item, "action": "accept", "label": None,
                              "reviewer": "ana", "note": "looks right", "round_id": round_id}]
    assert any("Accepted U02" in t.value for t in at.toast)
    table = frame_with(at, "pseudo-label")
    assert table.loc[table["item"] == "U02", "decision"].item() == "accept"

    # Relabel starts at the current pseudo-label.
    pseudo = ws.scalar("SELECT label FROM pseudo_labels WHERE item_id=?", (item,))
    assert at.selectbox(key=f"review_relabel_{item}").value == pseudo
    at.selectbox(key=f"review_relabel_{item}").set_value("equipment").run()
    at.button(key="review_relabel").click().run()
    at.button(key="review_clear").click().run()
    assert [(d["action"], d["label"]) for d in decisions(ws)] == [
        ("accept", None), ("relabel", "equipment"), ("clear", None)]
    assert at.text_input(key="review_note").value == ""  # a note goes with one decision


def test_bulk_reject_applies_to_exactly_the_filtered_items(review_ws, monkeypatch):
    ws, round_id = review_ws
    at = page_at(ws, monkeypatch, reviewer="bo")
    at.selectbox(key="review_path").set_value("reflected").run()
    at.selectbox(key="review_selected").set_value("not selected").run()
    expected = filtered_item_ids(ws, ReviewFilter(round_id, path="reflected", selected=False))
    assert 0 < len(expected) < 20
    at.selectbox(key="review_bulk_action").set_value("reject").run()
    assert at.button(key="review_bulk_apply").disabled
    confirm = next(c for c in at.checkbox if c.label.startswith("Apply reject"))
    assert confirm.label == f"Apply reject to {len(expected)} filtered items"
    confirm.check().run()
    at.button(key="review_bulk_apply").click().run()
    assert not at.exception and not at.error
    rows = decisions(ws)
    assert len(rows) == len(expected)
    assert sorted(r["item_id"] for r in rows) == expected
    assert {(r["action"], r["reviewer"], r["round_id"]) for r in rows} == {
        ("reject", "bo", round_id)}
    assert any(f"Rejected {len(expected)} item(s)" in t.value for t in at.toast)
    # The confirmation is used up: applying again needs a new tick.
    assert at.button(key="review_bulk_apply").disabled


def test_empty_states(filled_workspace, monkeypatch):
    at = page_at(filled_workspace, monkeypatch)
    assert not at.exception
    assert any("No round yet" in i.value and "Round setup" in i.value for i in at.info)
    assert not at.dataframe
    add_round(filled_workspace)
    at.run()
    at.text_input(key="review_search").set_value("no such words anywhere").run()
    assert not at.exception
    assert any("No items match these filters" in i.value for i in at.info)


# -- focus mode -----------------------------------------------------------------------------
def shown_item(at) -> str:
    return next(m.value for m in at.markdown if m.value.startswith("#### Item "))[10:]


def test_focus_mode_decides_from_the_keyboard_and_moves_on(review_ws, monkeypatch):
    ws, round_id = review_ws
    at = page_at(ws, monkeypatch, reviewer="ana", mode="focus")
    assert not at.exception and not at.error
    keys = {b.key: b for b in at.button}
    assert {"focus_accept", "focus_reject", "focus_relabel_1", "focus_skip", "focus_back",
            "focus_undo"} <= set(keys)
    at.segmented_control(key="focus_order").set_value("least_confident").run()
    first = shown_item(at)
    assert any("0 of 20 reviewed" in p.proto.text for p in at.get("progress"))
    at.button(key="focus_accept").click().run()               # A
    second = shown_item(at)
    assert second != first                                     # auto-advance
    at.button(key="focus_relabel_3").click().run()             # 3: the third label
    third = shown_item(at)
    at.button(key="focus_reject").click().run()                # X
    assert any("3 of 20 reviewed" in p.proto.text for p in at.get("progress"))
    by_external = {r[1]: r[0] for r in ws.query("SELECT id, external_id FROM items")}
    assert [(d["item_id"], d["action"], d["label"]) for d in decisions(ws)] == [
        (by_external[first], "accept", None), (by_external[second], "relabel", "equipment"),
        (by_external[third], "reject", None)]
    at.button(key="focus_undo").click().run()                  # U: the reject is taken back
    assert shown_item(at) == third
    assert decisions(ws)[-1]["action"] == "clear"
    at.button(key="focus_back").click().run()                  # <-
    assert shown_item(at) == second
    at.button(key="focus_skip").click().run()                  # ->
    assert shown_item(at) == third
    # Reloading the page shows the same decisions (they live in the workspace).
    again = page_at(ws, monkeypatch, reviewer="ana", mode="focus")
    again.segmented_control(key="focus_order").set_value("least_confident").run()
    assert any("2 of 20 reviewed" in p.proto.text for p in again.get("progress"))


def awaiting_review(review_ws):
    """The review workspace's round 1 awaiting review, percentile 50 applied."""
    from semievol.rounds.record import get_round, set_status

    ws, round_id = review_ws
    set_status(ws, get_round(ws, 1), "awaiting_review")
    ws.conn.execute("INSERT INTO selections(round_id, config, applied_at) VALUES(?, ?, 0)",
                    (round_id, '{"policy": "percentile", "theta": 50.0, "threshold": null, '
                               '"score": "nll"}'))
    return ws, round_id


def test_the_round_awaiting_review_offers_training(review_ws, monkeypatch):
    from semievol.runs import launch

    ws, round_id = awaiting_review(review_ws)
    started = []
    monkeypatch.setattr(launch, "start",
                        lambda ws_, kind, **kw: started.append((kind, kw)) or 7)
    at = page_at(ws, monkeypatch, mode="focus")
    assert not at.exception
    assert any("awaiting review" in m.value for m in at.markdown)
    warnings = training_warnings(ws, round_id)
    if warnings:  # the evidence warns: the button waits for an explicit confirmation
        assert at.button(key="review_train").disabled
        at.checkbox(key="review_train_confirm").check().run()
    at.button(key="review_train").click().run()
    assert started and started[0][0] == "train" and started[0][1]["background"] is True
    assert started[0][1]["confirm"] == ("ana" if warnings else None)


def test_the_training_counts_in_focus_mode_follow_each_decision(review_ws, monkeypatch):
    ws, round_id = awaiting_review(review_ws)

    def counts(at):
        return next(c.value for c in at.caption if "Training now uses" in c.value)

    at = page_at(ws, monkeypatch, reviewer="ana", mode="focus")
    at.segmented_control(key="focus_order").set_value("least_confident").run()
    before = counts(at)
    at.button(key="focus_relabel_1").click().run()  # a relabel adds a reviewer's label
    after = counts(at)
    assert before != after and "+ 1 relabeled by a reviewer" in after


def test_focus_mode_says_what_the_next_decisions_are_worth(review_ws, monkeypatch):
    from semievol.method.evaluate import store_evaluation
    from semievol.views.decision_value import next_decisions_value

    ws, round_id = awaiting_review(review_ws)
    at = page_at(ws, monkeypatch, reviewer="ana", mode="focus")
    at.segmented_control(key="focus_order").set_value("least_confident").run()
    assert any("No evaluated model yet" in c.value for c in at.caption)
    store_evaluation(ws, {"model": "warmup", "split": "test", "accuracy": 0.8, "n": 400},
                     round_id=round_id)
    at.button(key="focus_relabel_1").click().run()  # a decided item: known truth
    assert not at.exception
    value = next_decisions_value(ws, round_id, "least_confident")
    shown = [m.value for m in (*at.info, *at.warning) if "decisions in this queue" in m.value]
    assert shown == [value["message"][0].upper() + value["message"][1:] + "."]
    assert any(c.value.startswith("From ") and "80 % range" in c.value for c in at.caption)
