"""Review queues (semievol.method.queues, pure) on constructed scores and embeddings:
items with no scores, a single class, ties; and the focus queue reading a round's stored
answers and embeddings (semievol.views.focus)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from semievol.errors import SemiEvolError
from semievol.method import queues
from semievol.views.focus import FOCUS_ORDERS, collaborator_votes, focus_queue


def test_margin_puts_no_scores_first_then_the_closest_call_and_a_single_class_last():
    distributions = [[0.9, 0.1], None, [0.5, 0.5], [1.0], [0.6, 0.3, 0.1], [0.45, 0.45, 0.1]]
    assert queues.margin_order(distributions) == [1, 2, 5, 4, 0, 3]
    assert queues.margins([[2.0, 2.0]])[0] == 0.0  # unnormalised counts are normalised
    assert np.isnan(queues.margins([[0.0, 0.0]])[0])  # nothing to normalise: no score


def test_ties_keep_the_items_order():
    same = [[0.5, 0.5]] * 4
    assert queues.margin_order(same) == [0, 1, 2, 3]
    assert queues.entropy_order(same) == [0, 1, 2, 3]
    assert queues.least_confident_order([0.3, 0.3, None, 0.3]) == [2, 0, 1, 3]


def test_entropy_and_least_confident():
    assert queues.entropy_order([[1.0, 0.0], [0.5, 0.5], None, [0.8, 0.2]]) == [2, 1, 3, 0]
    assert queues.entropies([[1.0]])[0] == 0.0  # one class: nothing uncertain
    assert queues.least_confident_order([0.1, 2.0, 0.5]) == [1, 2, 0]
    assert queues.least_confident_order([]) == []


def test_disagreement_counts_split_votes_then_margin():
    answers = [["a", "a", "a"], ["a", "b", "a"], ["a", "b", "c"], [], ["a", None, "a"],
               ["a", "b", "a"]]
    distributions = [[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], None, [0.7, 0.3], [0.55, 0.45]]
    order = queues.disagreement_order(answers, distributions)
    assert order[0] == 3  # no votes at all: nothing says it is safe
    assert order[1] == 2  # three ways split
    assert order[2:5] == [5, 4, 1]  # 2-1 splits (no answer is a vote), closer margin first
    assert order[-1] == 0


def clusters(sizes, dim=8, seed=0):
    rng = np.random.default_rng(seed)
    centres = np.eye(dim)[:len(sizes)] * 10
    return np.vstack([c + rng.normal(0, 0.3, (n, dim)) for c, n in zip(centres, sizes)])


def test_typical_starts_in_the_densest_region_and_spreads_out():
    vectors = clusters([12, 6, 3])
    order = queues.typical_order(vectors, k=3)
    cluster = [0] * 12 + [1] * 6 + [2] * 3
    assert sorted(order) == list(range(21))
    assert [cluster[i] for i in order[:2]] == [0, 1]  # the densest region, then another


def test_typical_skips_regions_the_labeled_set_covers():
    vectors = clusters([12, 6, 3])
    labeled = clusters([4], seed=1)  # in the first region
    order = queues.typical_order(vectors, labeled=labeled, k=3)
    cluster = [0] * 12 + [1] * 6 + [2] * 3
    assert cluster[order[0]] == 1


def test_typical_on_tiny_pools():
    assert queues.typical_order(np.zeros((0, 4))) == []
    assert queues.typical_order(np.ones((1, 4))) == [0]
    assert queues.typical_order(np.ones((3, 4))) == [0, 1, 2]  # all equal: ties by position


def test_hybrid_takes_typical_items_then_margin():
    vectors = clusters([6, 3])
    distributions = [[0.5, 0.5]] + [[0.9, 0.1]] * 8
    order = queues.hybrid_order(vectors, distributions, switch=2)
    typical = queues.typical_order(vectors)[:2]
    assert order[:2] == typical
    rest = [i for i in queues.margin_order(distributions) if i not in typical]
    assert order[2:] == rest and sorted(order) == list(range(9))


# -- the focus queue over a stored round ----------------------------------------------------------
@pytest.fixture
def voted_pool(pool):
    ws, rid, items = pool
    rows = []
    for n, item in enumerate(items[:8]):
        p = [1.0 - n / 10, n / 10, 0.0]
        for c in range(3):
            answer = "billing" if (c < 2 or n % 2) else "outage"
            rows.append((rid, item, c, f"k{item}{c}", answer, json.dumps(p)))
    with ws.transaction() as conn:
        conn.executemany("INSERT INTO responses(round_id, item_id, collaborator, cache_key, "
                         "answer, option_probs) VALUES(?,?,?,?,?,?)", rows)
    return ws, rid, items


@pytest.mark.parametrize("order", list(FOCUS_ORDERS))
def test_every_order_lists_every_pool_item_once(voted_pool, order):
    ws, rid, items = voted_pool
    queue = focus_queue(ws, rid, order)
    assert sorted(queue) == sorted(items)


def test_margin_queue_reads_the_collaborators_mean_distribution(voted_pool):
    ws, rid, items = voted_pool
    distributions, answers = collaborator_votes(ws, rid, items)
    assert distributions[8] is None and answers[8] == []  # the ninth has no responses
    queue = focus_queue(ws, rid, "margin")
    assert queue[0] == items[8]  # no scores first
    assert queue[1] == items[5]  # 0.5 / 0.5: the closest call
    assert focus_queue(ws, rid, "disagreement")[0] == items[8]


def test_typical_queue_needs_stored_embeddings(pool):
    ws, rid, items = pool
    with ws.transaction() as conn:  # an item the index has not embedded yet
        new = conn.execute("INSERT INTO items(external_id, split, question) VALUES "
                           "('NEW', 'unlabeled', 'not embedded')").lastrowid
        conn.execute("INSERT INTO pseudo_labels(round_id, item_id, label, path, agreement) "
                     "VALUES(?, ?, 'billing', 'agreed', 1.0)", (rid, new))
    with pytest.raises(SemiEvolError, match="index the workspace"):
        focus_queue(ws, rid, "typical")


def test_review_lists_a_queue_from_the_cli(voted_pool):
    from test_engine_cli import semievol

    ws, rid, items = voted_pool
    external = dict(ws.query("SELECT id, external_id FROM items"))
    listed = json.loads(semievol("review", ws.path, "--order", "margin", "--json").stdout)
    assert [r["item_id"] for r in listed["rows"]] == focus_queue(ws, rid, "margin")
    text = semievol("review", ws.path, "--order", "margin", "--limit", "2").stdout
    assert text.splitlines()[1].startswith(external[items[8]])
    bad = semievol("review", ws.path, "--order", "nonsense", check=False)
    assert bad.returncode == 2 and "invalid choice" in bad.stderr


def test_selection_says_how_much_of_it_the_student_answers_already(voted_pool):
    from semievol.config import SelectionConfig
    from semievol.curation.selection_state import compute_selection
    from test_engine_cli import semievol

    ws, rid, items = voted_pool
    everything = SelectionConfig(policy="percentile", theta=100.0, class_floor=0.0)
    summary = compute_selection(ws, rid, everything).summary()
    # The student (collaborator 0, the warm-up alone) finds billing likeliest for the first
    # six items, outage for the last two; the pseudo-labels are 4 billing then 4 outage.
    assert summary["student"] == {"known": 8, "same": 6, "share": 0.75}
    out = semievol("select", ws.path, "--preview", "--theta", "100").stdout
    assert "already answers" in out and "selected pseudo-label(s)" in out
    compared = out.split("every policy on the same scores")[1].splitlines()[1:]
    assert [line[2:].split()[0] for line in compared] == ["percentile", "per_class",
                                                      "agreement_only", "teach"]
    assert compared[0].startswith("* percentile θ=100")  # the one previewed
    assert "selects     8 of 9" in compared[0]
