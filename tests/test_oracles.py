"""Our pure scoring against the reference implementations it must agree with by definition:
softmax and entropy against scipy, the Wilson interval against scipy's binomial test, the
classification report against scikit-learn, and the learning-rate schedule against
transformers' cosine schedule with warm-up."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import special, stats
from sklearn import metrics

from semievol.method.scoring import classification_report, entropy, softmax, wilson_interval
from semievol.training.finetune import lr_at

RNG = np.random.default_rng(7)


@pytest.mark.parametrize("temperature", [0.3, 1.0, 2.5])
def test_softmax_is_scipys(temperature):
    logits = RNG.normal(scale=4.0, size=(20, 6))
    logits[3, 2] = -np.inf  # an impossible option
    np.testing.assert_allclose(softmax(logits, temperature=temperature),
                               special.softmax(logits / temperature, axis=-1), atol=1e-12)


def test_entropy_is_scipys_in_nats():
    probs = RNG.dirichlet(np.ones(5), size=30)
    probs[0] = [1.0, 0.0, 0.0, 0.0, 0.0]  # 0 log 0 = 0
    np.testing.assert_allclose(entropy(probs), stats.entropy(probs, axis=-1), atol=1e-12)


@pytest.mark.parametrize("successes,n", [(0, 5), (3, 10), (10, 10), (47, 120), (1, 1)])
def test_wilson_interval_is_scipys(successes, n):
    """scipy's 95 % interval uses the exact normal quantile (1.95996...); ours defaults to
    the usual 1.96 and agrees when given the same z."""
    reference = stats.binomtest(successes, n).proportion_ci(confidence_level=0.95,
                                                            method="wilson")
    z = stats.norm.ppf(0.975)
    assert wilson_interval(successes, n, z=z) == pytest.approx(
        (reference.low, reference.high), abs=1e-12)


def test_classification_report_is_sklearns():
    labels = ["billing", "outage", "equipment", "account"]
    gold = list(RNG.choice(labels[:3], size=60))          # "account" never occurs in gold
    predicted = list(RNG.choice(labels, size=60))
    report = classification_report(gold, predicted, labels)
    precision, recall, f1, support = metrics.precision_recall_fscore_support(
        gold, predicted, labels=labels, zero_division=0)
    assert report["accuracy"] == pytest.approx(metrics.accuracy_score(gold, predicted))
    assert report["macro_f1"] == pytest.approx(
        metrics.f1_score(gold, predicted, labels=labels, average="macro", zero_division=0))
    for k, label in enumerate(labels):
        row = report["per_class"][label]
        assert (row["precision"], row["recall"], row["f1"]) == pytest.approx(
            (precision[k], recall[k], f1[k]))
        assert row["support"] == support[k]
    assert report["confusion"] == metrics.confusion_matrix(gold, predicted,
                                                           labels=labels).tolist()


def test_learning_rate_follows_transformers_cosine_schedule():
    """transformers' schedule gives the rate *after* `step` optimizer steps, so its warm-up
    starts at 0; ours gives the rate *of* step `step` (counted from 0), so the first step
    already learns: during warm-up ours is theirs one step later, after it they are equal."""
    import torch
    from transformers import get_cosine_schedule_with_warmup

    peak, total, warmup = 1e-3, 37, 4
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=peak)
    schedule = get_cosine_schedule_with_warmup(optimizer, warmup, total)
    theirs = [peak * schedule.lr_lambdas[0](step) for step in range(total + 1)]
    for step in range(total):
        expected = theirs[step + 1] if step < warmup else theirs[step]
        assert lr_at(step, total, warmup, peak) == pytest.approx(expected, rel=1e-12), step
