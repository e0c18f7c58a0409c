import math

import numpy as np
import pytest

from semievol.method.scoring import (agreement, classification_report, entropy, mean_nll,
                                     precision_coverage, sample_index, softmax, wilson_interval)

# entropy -------------------------------------------------------------------------------

def test_entropy_uniform_is_log_k_and_one_hot_is_zero():
    assert entropy(np.full(4, 0.25)) == pytest.approx(math.log(4))
    assert entropy(np.array([0.0, 1.0, 0.0])) == 0.0
    assert isinstance(entropy(np.full(4, 0.25)), np.ndarray)


def test_entropy_rows_of_a_matrix():
    p = np.array([[0.5, 0.5], [1.0, 0.0], [0.9, 0.1]])
    expected = [math.log(2), 0.0, -(0.9 * math.log(0.9) + 0.1 * math.log(0.1))]
    np.testing.assert_allclose(entropy(p), expected)
    np.testing.assert_allclose(entropy(p.T, axis=0), expected)


# softmax -------------------------------------------------------------------------------

def test_softmax_temperatures():
    logits = np.array([1.0, 2.0, 3.0])
    e = np.exp(logits)
    np.testing.assert_allclose(softmax(logits), e / e.sum())
    e2 = np.exp(logits / 2)
    np.testing.assert_allclose(softmax(logits, temperature=2), e2 / e2.sum())
    np.testing.assert_array_equal(softmax(logits, temperature=0), [0, 0, 1])


def test_softmax_is_stable_and_handles_minus_inf():
    out = softmax(np.array([[1000.0, 1000.0, -np.inf]]))
    np.testing.assert_allclose(out, [[0.5, 0.5, 0.0]])
    np.testing.assert_array_equal(softmax(np.array([[3.0, 1.0], [0.0, 5.0]]), temperature=0),
                                  [[1, 0], [0, 1]])
    with pytest.raises(ValueError):
        softmax(np.zeros(2), temperature=-1)


# mean_nll ------------------------------------------------------------------------------

def test_mean_nll_per_sequence_and_empty_is_nan():
    out = mean_nll([[-1.0, -3.0], [0.0], []])
    assert out[0] == pytest.approx(2.0)
    assert out[1] == 0.0
    assert np.isnan(out[2])
    assert mean_nll([]).shape == (0,)


# agreement -----------------------------------------------------------------------------

def test_agreement_cases():
    assert agreement(["A", "A", "A", "A"]) == ("A", 1.0, True)
    assert agreement(["B", "A", "B", "B"]) == ("B", 0.75, False)
    assert agreement(["C", "A", "A", "C"]) == ("C", 0.5, False)  # tie: first seen wins
    assert agreement(["A", None, "A", "A"]) == ("A", 0.75, False)  # None disagrees
    assert agreement([None, None]) == (None, 0.0, False)
    assert agreement([]) == (None, 0.0, False)


# sample_index --------------------------------------------------------------------------

def test_sample_index_temperature_zero_is_argmax():
    rng = np.random.default_rng(0)
    assert all(sample_index(np.array([0.2, 0.5, 0.3]), temperature=0, rng=rng) == 1
               for _ in range(20))


def test_sample_index_is_deterministic_with_a_seed():
    p = np.array([0.25, 0.25, 0.25, 0.25])
    a = [sample_index(p, temperature=1, rng=np.random.default_rng(7)) for _ in range(5)]
    rng1, rng2 = np.random.default_rng(7), np.random.default_rng(7)
    seq1 = [sample_index(p, temperature=1, rng=rng1) for _ in range(50)]
    seq2 = [sample_index(p, temperature=1, rng=rng2) for _ in range(50)]
    assert len(set(a)) == 1 and seq1 == seq2 and len(set(seq1)) > 1


def test_sample_index_follows_probs_at_temperature_one():
    p = np.array([0.7, 0.2, 0.1, 0.0])
    rng = np.random.default_rng(123)
    draws = np.array([sample_index(p, temperature=1, rng=rng) for _ in range(2000)])
    freq = np.bincount(draws, minlength=4) / draws.size
    np.testing.assert_allclose(freq, p, atol=0.04)
    assert freq[3] == 0.0  # a zero-probability option is never drawn


def test_sample_index_high_temperature_flattens():
    p = np.array([0.9, 0.1])
    rng = np.random.default_rng(1)
    draws = np.array([sample_index(p, temperature=100, rng=rng) for _ in range(2000)])
    assert 0.4 < draws.mean() < 0.6


# classification_report -----------------------------------------------------------------

def test_classification_report_hand_example():
    labels = ["a", "b", "c"]
    gold = ["a", "a", "a", "b", "b", "c"]
    pred = ["a", "a", "b", "b", None, "a"]
    r = classification_report(gold, pred, labels)
    assert r["n"] == 6
    assert r["accuracy"] == pytest.approx(3 / 6)
    assert r["confusion"] == [[2, 1, 0], [0, 1, 0], [1, 0, 0]]
    a, b, c = (r["per_class"][k] for k in labels)
    assert (a["precision"], a["recall"]) == (pytest.approx(2 / 3), pytest.approx(2 / 3))
    assert a["f1"] == pytest.approx(2 / 3)
    assert (a["support"], a["predicted"]) == (3, 3)
    assert (b["precision"], b["recall"], b["f1"]) == (0.5, 0.5, 0.5)
    assert (c["precision"], c["recall"], c["f1"], c["predicted"]) == (0.0, 0.0, 0.0, 0)
    assert r["macro_f1"] == pytest.approx((2 / 3 + 0.5 + 0.0) / 3)
    assert r["predicted_distribution"] == {"a": 3, "b": 2, "c": 0, "(none)": 1}
    assert r["majority_label"] == "a"
    assert r["majority_baseline"] == pytest.approx(0.5)


def test_classification_report_unknown_prediction_and_errors():
    r = classification_report(["x", "y"], ["x", "zzz"], ["x", "y"])
    assert r["confusion"] == [[1, 0], [0, 0]]
    assert r["accuracy"] == 0.5
    assert "(none)" not in r["predicted_distribution"]
    with pytest.raises(ValueError):
        classification_report(["x"], ["x", "y"], ["x", "y"])
    with pytest.raises(ValueError):
        classification_report(["q"], ["x"], ["x", "y"])


def test_classification_report_empty():
    r = classification_report([], [], ["x"])
    assert r["n"] == 0 and r["accuracy"] == 0.0 and r["majority_label"] is None


# precision_coverage --------------------------------------------------------------------

def test_precision_coverage_hand_example():
    scores = np.array([0.3, 0.1, 0.2, 0.2, 0.9, np.nan])
    correct = np.array([False, True, True, False, True, True])
    pc = precision_coverage(scores, correct)
    assert pc["threshold"] == pytest.approx([0.1, 0.2, 0.3, 0.9])
    assert pc["count"] == [1, 3, 4, 5]
    assert pc["coverage"] == pytest.approx([1 / 6, 3 / 6, 4 / 6, 5 / 6])
    assert pc["precision"] == pytest.approx([1.0, 2 / 3, 2 / 4, 3 / 5])
    assert np.all(np.diff(pc["coverage"]) > 0)
    assert all(type(v) is float for v in pc["coverage"] + pc["precision"] + pc["threshold"])
    assert all(type(v) is int for v in pc["count"])


def test_precision_coverage_empty():
    empty = {"threshold": [], "coverage": [], "precision": [], "count": []}
    assert precision_coverage(np.array([]), np.array([], dtype=bool)) == empty
    assert precision_coverage(np.array([np.nan]), np.array([True])) == empty


# wilson --------------------------------------------------------------------------------

def test_wilson_interval():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    lo, hi = wilson_interval(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)
    lo, hi = wilson_interval(0, 20)
    assert lo == 0.0 and 0 < hi < 0.2
    lo, hi = wilson_interval(20, 20)
    assert hi == pytest.approx(1.0) and 0.8 < lo < 1.0
    narrow = wilson_interval(500, 1000)
    assert narrow[1] - narrow[0] < 0.07  # more evidence, tighter interval
    with pytest.raises(ValueError):
        wilson_interval(11, 10)
