import numpy as np
import pytest

from semievol.config import SELECTION_POLICIES as POLICIES
from semievol.method.selection import class_counts, select, threshold_for

NAN = np.nan
E = np.array([0.4, 0.1, 0.3, 0.2, NAN])
LABELS = ["a", "a", "b", "b", "a"]
AGREED = np.array([True, False, False, True, True])


# select ---------------------------------------------------------------------------------

def test_percentile_keeps_at_or_below_median_of_finite():
    assert threshold_for(E, theta=50) == pytest.approx(0.25)
    np.testing.assert_array_equal(select(E, LABELS, AGREED), [False, True, False, True, False])


def test_percentile_theta_edges():
    np.testing.assert_array_equal(select(E, LABELS, AGREED, theta=0),
                                  [False, True, False, False, False])
    np.testing.assert_array_equal(select(E, LABELS, AGREED, theta=100),
                                  [True, True, True, True, False])  # nan never kept
    with pytest.raises(ValueError):
        select(E, LABELS, AGREED, theta=101)


def test_percentile_keeps_ties_at_the_threshold():
    e = np.array([0.5, 0.5, 0.5, 0.9])
    assert select(e, ["x"] * 4, np.zeros(4, bool), theta=50).tolist() == [True] * 3 + [False]


def test_per_class_keeps_minority_class_that_global_percentile_drops():
    e = np.array([0.1, 0.2, 0.3, 0.4, 0.8, 0.9])
    labels = ["A", "A", "A", "A", "B", "B"]
    agreed = np.zeros(6, bool)
    global_keep = select(e, labels, agreed, policy="percentile")
    assert global_keep.tolist() == [True, True, True, False, False, False]
    per_class = select(e, labels, agreed, policy="per_class")
    assert per_class.tolist() == [True, True, False, False, True, False]
    assert class_counts(labels, per_class) == {"A": 2, "B": 1}
    assert class_counts(labels, global_keep) == {"A": 3, "B": 0}


def test_per_class_nan_and_all_nan_group():
    e = np.array([0.1, NAN, 0.3, NAN, NAN])
    labels = ["a", "a", "a", "b", "b"]
    keep = select(e, labels, np.ones(5, bool), policy="per_class", theta=100)
    assert keep.tolist() == [True, False, True, False, False]


def test_agreement_only_keeps_exactly_the_agreed_even_with_nan():
    keep = select(E, LABELS, AGREED, policy="agreement_only")
    assert keep.tolist() == AGREED.tolist()
    assert keep is not AGREED


def test_absolute_threshold():
    keep = select(E, LABELS, AGREED, policy="absolute", threshold=0.3)
    assert keep.tolist() == [False, True, True, True, False]
    with pytest.raises(ValueError, match="threshold"):
        select(E, LABELS, AGREED, policy="absolute")


def test_empty_input_and_all_nan():
    for policy in POLICIES:
        out = select(np.array([]), [], np.array([], bool), policy=policy, threshold=1.0)
        assert out.dtype == bool and out.shape == (0,)
    assert np.isnan(threshold_for(np.array([NAN, NAN]), theta=50))
    assert not select(np.array([NAN, NAN]), ["a", "b"], np.zeros(2, bool)).any()


def test_unknown_policy_and_length_mismatch():
    with pytest.raises(ValueError, match="percentile, per_class, agreement_only, absolute"):
        select(E, LABELS, AGREED, policy="random")
    with pytest.raises(ValueError):
        select(E, LABELS[:3], AGREED)

