import numpy as np
import pytest

from semievol.config import SELECTION_POLICIES as POLICIES
from semievol.method.selection import (class_counts, reducible_loss, select, teach_mask,
                                      threshold_for)

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
        out = select(np.array([]), [], np.array([], bool), policy=policy, threshold=1.0,
                     reducible=np.array([]), reference_agrees=np.array([], bool))
        assert out.dtype == bool and out.shape == (0,)
    assert np.isnan(threshold_for(np.array([NAN, NAN]), theta=50))
    assert not select(np.array([NAN, NAN]), ["a", "b"], np.zeros(2, bool)).any()


def test_unknown_policy_and_length_mismatch():
    with pytest.raises(ValueError, match="percentile, per_class, agreement_only, absolute"):
        select(E, LABELS, AGREED, policy="random")
    with pytest.raises(ValueError):
        select(E, LABELS[:3], AGREED)



# teach: reducible loss over the reference's agreement ------------------------------------

def test_reducible_loss_is_the_students_loss_minus_the_references():
    rl = reducible_loss(np.array([0.5, 0.9, 0.0, NAN, 0.0]), np.array([0.9, 0.5, 0.8, 0.9, 0.0]))
    assert rl[0] == pytest.approx(np.log(0.9 / 0.5)) and rl[0] > 0
    assert rl[1] == pytest.approx(np.log(0.5 / 0.9)) and rl[1] < 0  # the student is surer
    assert rl[2] == np.inf        # the student gives the label no chance: most to learn
    assert np.isnan(rl[3]) and np.isnan(rl[4])  # no student score / nobody gives it a chance
    with pytest.raises(ValueError):
        reducible_loss(np.array([0.5]), np.array([0.5, 0.5]))


def test_teach_keeps_only_what_the_reference_agrees_on_and_the_student_does_not_know():
    rl = np.array([0.8, 0.4, 0.2, -0.3, 1.5, NAN])
    agrees = np.array([True, True, True, True, False, True])
    # theta 100: every teachable item (agreed, positive), not the disputed 1.5 nor the known
    np.testing.assert_array_equal(teach_mask(rl, agrees, theta=100),
                                  [True, True, True, False, False, False])
    # theta 50: the largest half of the teachable reducible losses (0.8, 0.4 >= median 0.4)
    np.testing.assert_array_equal(teach_mask(rl, agrees, theta=50),
                                  [True, True, False, False, False, False])
    assert not teach_mask(rl, agrees, theta=0).any()


def test_teach_keeps_a_student_that_gives_no_chance_and_ties_at_the_bound():
    rl = np.array([np.inf, 0.5, 0.5, 0.1])
    agrees = np.ones(4, bool)
    np.testing.assert_array_equal(teach_mask(rl, agrees, theta=10), [True, True, True, False])
    # only infinities: all kept whatever theta above 0
    np.testing.assert_array_equal(teach_mask(np.array([np.inf, np.inf]), np.ones(2, bool),
                                             theta=1), [True, True])


def test_teach_with_nothing_teachable_single_class_and_the_floor():
    labels = ["a", "a", "a"]
    known = np.array([-0.2, -0.1, -0.5])  # the student is surer than the reference everywhere
    agrees = np.ones(3, bool)
    assert not select(E[:3], labels, agrees, policy="teach", theta=100, reducible=known,
                      reference_agrees=agrees).any()
    # the class floor then adds the agreed items, most teachable (largest loss) first
    np.testing.assert_array_equal(
        select(E[:3], labels, agrees, policy="teach", reducible=known, reference_agrees=agrees,
               class_floor=0.3), [False, True, False])
    # a disputed item is never added by the floor
    np.testing.assert_array_equal(
        select(E[:3], labels, agrees, policy="teach", reducible=known,
               reference_agrees=np.array([True, False, True]), class_floor=0.5),
        [True, False, False])


def test_teach_needs_its_evidence():
    with pytest.raises(ValueError, match="reducible"):
        select(E, LABELS, AGREED, policy="teach")
    with pytest.raises(ValueError, match="same length"):
        select(E, LABELS, AGREED, policy="teach", reducible=np.zeros(2),
               reference_agrees=np.ones(2, bool))
