"""The review queries (semievol.views.review) over a round written by hand: filters, sorting,
pagination, the decision state, and one item's detail."""

from __future__ import annotations

import json
import math
import time

import pytest

from semievol.config import RoundConfig
from semievol.curation.decisions import record_decisions
from semievol.errors import SemiEvolError
from semievol.method.retrieval import neighbours_of
from semievol.saved_config import to_json
from semievol.views.review import (ReviewFilter, count_items, filtered_item_ids, item_detail,
                                   review_page, round_facets)
from semievol.views.status import round_rows

LABELS = ["billing", "outage", "equipment"]


def unlabeled_ids(ws) -> list[int]:
    return [r[0] for r in ws.query("SELECT id FROM items WHERE split='unlabeled' ORDER BY id")]


def pseudo_row(k: int) -> dict:
    """The k-th unlabeled item's hand-set pseudo-label: entropies are a permutation of
    0.0..1.9, so no order by entropy is the id order."""
    return {"label": LABELS[k % 3], "path": "agreed" if k % 2 == 0 else "reflected",
            "entropy": ((k * 7) % 20) / 10, "selected": k < 10}


def add_round(ws, *, calibration: bool = True) -> int:
    """Round 1 over the unlabeled items: 4 responses each (the default collaborators), a
    pseudo-label from `pseudo_row`, a leakage flag on the first item. With `calibration`,
    the first test item becomes a calibration item with its own pseudo-label (never
    reviewed). Returns the round id."""
    ids = unlabeled_ids(ws)
    with ws.transaction() as conn:
        cur = conn.execute("INSERT INTO rounds(number, status, config, created_at) "
                           "VALUES(1, 'open', ?, ?)", (to_json(RoundConfig()), time.time()))
        round_id = cur.lastrowid
        pool = list(ids)
        if calibration:
            extra = conn.execute("SELECT id FROM items WHERE split='test' ORDER BY id "
                                 "LIMIT 1").fetchone()[0]
            conn.execute("UPDATE items SET split='calibration' WHERE id=?", (extra,))
            pool.append(extra)
        for k, item_id in enumerate(pool):
            row = pseudo_row(k)
            for c in range(4):
                answer = row["label"] if row["path"] == "agreed" or c % 2 else LABELS[(k + 1) % 3]
                probs = [0.1, 0.1, 0.1]
                probs[LABELS.index(answer)] = 0.8
                conn.execute(
                    "INSERT INTO responses(round_id, item_id, collaborator, cache_key, answer, "
                    "text, option_probs, option_entropy, nll) VALUES(?,?,?,?,?,?,?,?,?)",
                    (round_id, item_id, c, f"key-{item_id}-{c}", answer, answer,
                     json.dumps(probs), 0.5 + c / 10, 1.0 + c / 10))
            conn.execute(
                "INSERT INTO pseudo_labels(round_id, item_id, label, path, agreement, "
                "reflection_text, entropy, option_entropy, selected) VALUES(?,?,?,?,?,?,?,?,?)",
                (round_id, item_id, row["label"], row["path"],
                 1.0 if row["path"] == "agreed" else 0.5,
                 None if row["path"] == "agreed" else f"reflected on item {item_id}",
                 row["entropy"], row["entropy"] / 2, int(row["selected"])))
        conn.execute("INSERT INTO flags(round_id, item_id, kind, detail) VALUES(?,?,?,?)",
                     (round_id, ids[0], "near_duplicate_test",
                      json.dumps({"test_item": 1, "similarity": 0.97})))
    return round_id


@pytest.fixture
def review_ws(filled_workspace):
    return filled_workspace, add_round(filled_workspace)


def all_rows(ws, flt, size=3):
    """Every page of `size` rows, concatenated (each page checks the total)."""
    rows, offset = [], 0
    total = count_items(ws, flt)
    while True:
        page, page_total = review_page(ws, flt, limit=size, offset=offset)
        assert page_total == total
        if not page:
            return rows
        assert len(page) == min(size, total - offset)
        rows += page
        offset += size


def test_a_page_lists_unlabeled_items_only_with_their_columns(review_ws):
    ws, round_id = review_ws
    ids = unlabeled_ids(ws)
    rows, total = review_page(ws, ReviewFilter(round_id, sort="item"), limit=50)
    assert total == 20 and [r["item_id"] for r in rows] == ids  # the calibration item is not
    first = rows[0]
    assert first["external_id"] == "U00" and first["label"] == "billing"
    assert first["path"] == "agreed" and first["agreement"] == 1.0
    assert first["entropy"] == 0.0 and first["selected"] is True and first["flagged"] is True
    assert first["decision"] is None and first["decision_label"] is None
    assert first["similarity"] == pytest.approx(neighbours_of(ws, ids[0])[0]["similarity"])
    assert rows[1]["flagged"] is False and rows[10]["selected"] is False


def test_filters_narrow_the_rows_and_the_total(review_ws):
    ws, round_id = review_ws
    rows = {k: pseudo_row(k) for k in range(20)}
    ids = unlabeled_ids(ws)

    def expect(**kw):
        flt = ReviewFilter(round_id, sort="item", **kw)
        got = [r["item_id"] for r in all_rows(ws, flt)]
        assert got == filtered_item_ids(ws, flt)
        return got

    assert expect(path="reflected") == [ids[k] for k in range(20) if rows[k]["path"] == "reflected"]
    assert expect(entropy_min=0.5, entropy_max=1.0) == [
        ids[k] for k in range(20) if 0.5 <= rows[k]["entropy"] <= 1.0]
    assert expect(label="outage", selected=False) == [
        ids[k] for k in range(20) if rows[k]["label"] == "outage" and not rows[k]["selected"]]
    assert expect(path="agreed", entropy_max=0.9, selected=True) == [
        ids[k] for k in range(20) if rows[k]["path"] == "agreed" and rows[k]["entropy"] <= 0.9
        and rows[k]["selected"]]
    # Search is a case-insensitive substring of the question; % and _ are literal.
    routers = [r["id"] for r in ws.query("SELECT id FROM items WHERE split='unlabeled' AND "
                                         "lower(question) LIKE '%router%' ORDER BY id")]
    assert len(routers) >= 5 and expect(search="ROUTER") == routers
    assert expect(search="router", path="agreed") == [
        i for i in routers if rows[ids.index(i)]["path"] == "agreed"]
    assert expect(search="100%") == [] and expect(search="_") == []


def test_sorting_orders_every_page_and_pages_cover_everything(review_ws):
    ws, round_id = review_ws
    by_entropy = all_rows(ws, ReviewFilter(round_id, sort="entropy"))
    entropies = [r["entropy"] for r in by_entropy]
    assert entropies == sorted(entropies) and len(set(entropies)) == 20
    assert [r["entropy"] for r in all_rows(
        ws, ReviewFilter(round_id, sort="entropy", descending=True))] == entropies[::-1]

    # Pages past the middle are read from the other end: the same rows in the same order.
    for size in (3, 7, 19):
        for descending in (False, True):
            flt = ReviewFilter(round_id, sort="similarity", descending=descending)
            rows = all_rows(ws, flt, size=size)
            keys = [(r["similarity"], r["item_id"]) for r in rows]
            assert keys == sorted(keys, reverse=descending)
            assert len({r["item_id"] for r in rows}) == 20
    nearest = {r["item_id"]: r["similarity"] for r in rows}
    assert nearest == {i: neighbours_of(ws, i)[0]["similarity"] for i in unlabeled_ids(ws)}
    assert [r["item_id"] for r in all_rows(ws, ReviewFilter(round_id, sort="item",
                                                            descending=True))] == \
        unlabeled_ids(ws)[::-1]


def test_pagination_edges(review_ws):
    ws, round_id = review_ws
    flt = ReviewFilter(round_id, path="agreed", sort="item")
    assert review_page(ws, flt, limit=4, offset=8)[0] == review_page(ws, flt, limit=50)[0][8:]
    rows, total = review_page(ws, flt, limit=4, offset=10)
    assert rows == [] and total == 10
    with pytest.raises(SemiEvolError, match="limit"):
        review_page(ws, flt, limit=0)


def test_decision_state_follows_the_latest_decision_and_clear(review_ws):
    ws, round_id = review_ws
    a, b, c, d, e = unlabeled_ids(ws)[:5]
    record_decisions(ws, [a], "accept", reviewer="ana", round_id=round_id)
    record_decisions(ws, [b], "reject", reviewer="ana")
    record_decisions(ws, [c], "relabel", reviewer="ana", label="equipment", note="clearly")
    record_decisions(ws, [d], "accept", reviewer="ana")
    record_decisions(ws, [d], "clear", reviewer="bo")         # cleared: undecided again
    record_decisions(ws, [e], "reject", reviewer="ana")
    record_decisions(ws, [e], "accept", reviewer="bo")        # the latest wins

    def ids(decision):
        return filtered_item_ids(ws, ReviewFilter(round_id, decision=decision))

    assert ids("accept") == [a, e]
    assert ids("reject") == [b]
    assert ids("relabel") == [c]
    assert ids("any") == [a, b, c, e]
    assert ids("none") == [i for i in unlabeled_ids(ws) if i not in (a, b, c, e)]
    assert d in ids("none")
    assert count_items(ws, ReviewFilter(round_id, decision="none", path="agreed")) == \
        len([i for k, i in enumerate(unlabeled_ids(ws)) if k % 2 == 0 and i not in (a, c, e)])
    rows = {r["item_id"]: r for r in review_page(ws, ReviewFilter(round_id, sort="item"),
                                                 limit=5)[0]}
    assert rows[c]["decision"] == "relabel" and rows[c]["decision_label"] == "equipment"
    assert rows[d]["decision"] is None and rows[e]["decision"] == "accept"
    assert rows[b]["decision_label"] is None


def test_item_detail_shows_everything_about_one_item(review_ws):
    ws, round_id = review_ws
    ids = unlabeled_ids(ws)
    record_decisions(ws, [ids[1]], "reject", reviewer="ana", note="off topic")
    record_decisions(ws, [ids[1]], "relabel", reviewer="bo", label="outage")
    detail = item_detail(ws, round_id, ids[1])
    assert detail["item"]["external_id"] == "U01"
    assert detail["item"]["options"] == LABELS  # the task's label set
    assert detail["pseudo_label"] == {
        "label": "outage", "path": "reflected", "agreement": 0.5, "entropy": 0.7,
        "option_entropy": 0.35, "selected": True,
        "reflection_text": f"reflected on item {ids[1]}",
        "confidence": pytest.approx(math.exp(-0.7)),  # plain scale: exp(-entropy)
        "agreement_text": "2 of 4 collaborators gave this answer", "agreeing": "2 of 4",
        "cut_tokens": 0,
        # One confidence in words, and the reflection's choice against two collaborators.
        "voice": "the warm-up model gives outage 50%",
        "override": "the warm-up model overrode 2 of 4 collaborators"}
    neighbours = detail["neighbours"]
    assert len(neighbours) == 3
    assert [n["similarity"] for n in neighbours] == sorted(
        (n["similarity"] for n in neighbours), reverse=True)
    gold = {r["id"]: r["answer"] for r in ws.query("SELECT id, answer FROM items "
                                                    "WHERE split='labeled'")}
    assert all(n["label"] == gold[n["id"]] for n in neighbours)
    collaborators = detail["collaborators"]
    configs = RoundConfig().collaborators
    assert [c["config"] for c in collaborators] == [c.label for c in configs]
    assert [(c["model"], c["demonstrations"], c["temperature"], c["seed"])
            for c in collaborators] == [(c.model, c.demonstrations, c.temperature, c.seed)
                                        for c in configs]
    assert [c["answer"] for c in collaborators] == ["equipment", "outage", "equipment", "outage"]
    assert collaborators[0]["probs"] == {"billing": 0.1, "outage": 0.1, "equipment": 0.8}
    assert [c["nll"] for c in collaborators] == pytest.approx([1.0, 1.1, 1.2, 1.3])
    assert [c["name"] for c in collaborators] == [
        "warm-up model, no examples", "warm-up model, 3 examples", "base model, 3 examples",
        "warm-up model, 1 example"]
    assert collaborators[0]["decoding"] == "sampled at temperature 1, seed 0"
    assert collaborators[0]["confidence"] == pytest.approx(0.8)  # its most likely answer's
    assert collaborators[0]["top"] == "equipment"
    reflection = detail["reflection"]
    assert reflection["chose"] == "outage" and "Assistant 1: equipment" in reflection["shown"]
    assert "Several assistants answered this differently" in reflection["shown"]
    assert reflection["by"] == "the warm-up model"
    assert [(h["action"], h["reviewer"], h["note"]) for h in detail["history"]] == [
        ("reject", "ana", "off topic"), ("relabel", "bo", None)]
    assert detail["decision"]["label"] == "outage" and detail["flags"] == []

    first = item_detail(ws, round_id, ids[0])
    assert first["flags"] == [{"kind": "near_duplicate_test",
                               "detail": {"test_item": 1, "similarity": 0.97}}]
    assert first["decision"] is None and first["pseudo_label"]["reflection_text"] is None
    assert first["reflection"] is None  # agreed: nothing was reflected on
    record_decisions(ws, [ids[0]], "accept", reviewer="ana")
    record_decisions(ws, [ids[0]], "clear", reviewer="ana")
    assert item_detail(ws, round_id, ids[0])["decision"] is None


def test_item_detail_refuses_unknown_items(review_ws):
    ws, round_id = review_ws
    with pytest.raises(SemiEvolError, match="No item with id 99999"):
        item_detail(ws, round_id, 99999)
    labeled = ws.scalar("SELECT id FROM items WHERE split='labeled' LIMIT 1")
    with pytest.raises(SemiEvolError, match="no pseudo-label"):
        item_detail(ws, round_id, labeled)


def test_rounds_and_facets_for_the_controls(review_ws):
    ws, round_id = review_ws
    assert round_rows(ws) == [{"id": round_id, "number": 1, "status": "open",
                               "status_name": "open", "final_adapter": None,
                               "pseudo_labels": 20, "calibration_labels": 1, "selected": 10,
                               "accuracy": None, "split": None, "best": False}]
    assert round_facets(ws, round_id) == {"entropy_min": 0.0, "entropy_max": 1.9,
                                          "labels": LABELS}  # the task's label set
    ws.conn.execute("DELETE FROM settings WHERE key='task'")  # open answers: the labels seen
    ws.conn.execute("UPDATE pseudo_labels SET label='42', entropy=entropy+3 WHERE item_id=?",
                    (unlabeled_ids(ws)[0],))
    assert round_facets(ws, round_id) == {"entropy_min": 0.0, "entropy_max": 3.0,
                                          "labels": ["42", *sorted(LABELS)]}


def test_filter_validation():
    with pytest.raises(SemiEvolError, match="path"):
        ReviewFilter(1, path="voted")
    with pytest.raises(SemiEvolError, match="decision"):
        ReviewFilter(1, decision="maybe")
    with pytest.raises(SemiEvolError, match="sort"):
        ReviewFilter(1, sort="random")
    with pytest.raises(SemiEvolError, match="entropy range is empty"):
        ReviewFilter(1, entropy_min=2, entropy_max=1)


def test_a_collaborator_leads_with_its_most_likely_answer_and_votes_on_a_detail_line(review_ws):
    ws, round_id = review_ws
    item = unlabeled_ids(ws)[1]
    # Collaborator 0 sampled "billing" though it finds "equipment" most likely (0.8).
    ws.conn.execute("UPDATE responses SET answer='billing' WHERE item_id=? AND collaborator=0",
                    (item,))
    first = item_detail(ws, round_id, item)["collaborators"][0]
    assert (first["top"], first["confidence"], first["answer"]) == ("equipment",
                                                                     pytest.approx(0.8), "billing")


def test_voice_and_override_in_words():
    from semievol.views.review import override, voice

    assert voice("positive", 0.66) == "the warm-up model gives positive 66%"
    assert override("reflected", 1, 4) == "the warm-up model overrode 3 of 4 collaborators"
    assert override("agreed", 4, 4) is None and override("reflected", 4, 4) is None


def test_the_reflecting_model_is_named_where_a_served_one_settles_disagreements():
    from semievol.config import CollaboratorConfig, RoundConfig, ServedConfig, ServerConfig
    from semievol.views.review import override, reflector_name

    team = [CollaboratorConfig("warmup", 0, 1.0, 0)]
    assert reflector_name(None) == reflector_name(RoundConfig(collaborators=team)) == \
        "the warm-up model"
    big = RoundConfig(collaborators=team, servers=[ServerConfig(name="big")],
                      served=ServedConfig(reflection="big", reflection_model="base"))
    assert reflector_name(big) == "the base model on server big"
    assert override("reflected", 2, 4, reflector_name(big)) == \
        "the base model on server big overrode 2 of 4 collaborators"


def test_collaborator_names_are_told_apart_in_words():
    from semievol.config import CollaboratorConfig, display_names

    twins = [CollaboratorConfig("warmup", 3, 1.0, 1), CollaboratorConfig("warmup", 3, 1.0, 2),
             CollaboratorConfig("warmup", 3, 0.0, 0), CollaboratorConfig("base", 0, 1.0, 0)]
    assert display_names(twins) == [
        "warm-up model, 3 examples, sampled at temperature 1, seed 1",
        "warm-up model, 3 examples, sampled at temperature 1, seed 2",
        "warm-up model, 3 examples, most likely answer", "base model, no examples"]
    assert not any("/" in n for n in display_names(twins))


def test_the_one_confidence_is_the_warm_up_models_share_of_the_options(review_ws):
    ws, round_id = review_ws
    item = unlabeled_ids(ws)[1]
    ws.conn.execute("UPDATE pseudo_labels SET probability=0.56 WHERE item_id=?", (item,))
    pseudo = item_detail(ws, round_id, item)["pseudo_label"]
    # The walk read "85 %" (exp(-mean token NLL)) above a card saying the same model gives
    # the label 56 % among the options: one scale now.
    assert pseudo["confidence"] == pytest.approx(0.56)
    assert pseudo["voice"] == "the warm-up model gives outage 56%"
