"""Each metric against values computed by hand."""

import math

import numpy as np
import pytest

from bench import metrics


def test_truth_ratio_averages_perturbed_losses_first():
    # correct mean log-prob -1; perturbed mean log-probs -2 and -4 -> mean -3 -> R = exp(-3 - -1) = e^-2
    r = metrics.truth_ratio([-1.0, -2.0], [[-2.0, -4.0], [-1.0, -1.0]])
    assert r == pytest.approx([math.exp(-2.0), math.exp(1.0)])


def test_truth_ratio_aggregates():
    r = [0.5, 2.0, 1.0, 4.0]
    assert metrics.truth_ratio_forget(r) == pytest.approx((0.5 + 0.5 + 1.0 + 0.25) / 4)
    assert metrics.truth_ratio_retain(r) == pytest.approx((0.5 + 0 + 0 + 0) / 4)


def test_forget_quality_is_ks_pvalue():
    a, b = [0.1, 0.2, 0.3, 0.4], [0.1, 0.2, 0.3, 0.4]
    assert metrics.forget_quality(a, b) == pytest.approx(1.0)
    # Fully separated samples of 4 and 4: exact two-sided p = 2 / C(8, 4) = 2/70
    assert metrics.forget_quality([1, 2, 3, 4], [5, 6, 7, 8]) == pytest.approx(2 / 70)


def test_model_utility_is_harmonic_mean():
    assert metrics.model_utility([0.5, 1.0]) == pytest.approx(2 / (1 / 0.5 + 1 / 1.0))
    assert metrics.model_utility([0.2, 0.4, 0.8]) == pytest.approx(3 / (5 + 2.5 + 1.25))
    assert metrics.model_utility([0.0, 1.0]) == 0.0


def test_min_k_takes_lowest_fraction():
    lp = [-0.1, -3.0, -0.5, -2.0, -1.0]
    # k = 40% of 5 tokens -> 2 lowest: -3, -2
    assert metrics.min_k_score(lp, 0.4) == pytest.approx(-2.5)
    # at least one token
    assert metrics.min_k_score([-0.7, -0.2], 0.1) == pytest.approx(-0.7)


def test_mia_auc_by_hand():
    # members 3, 1; non-members 2, 0: pairs (3>2)(3>0)(1<2)(1>0) -> 3/4
    assert metrics.mia_auc([3.0, 1.0], [2.0, 0.0]) == pytest.approx(0.75)
    assert metrics.mia_auc([5.0, 6.0], [1.0, 2.0]) == pytest.approx(1.0)


def test_privleak():
    assert metrics.privleak(0.75, 0.5) == pytest.approx(50.0)
    assert metrics.privleak(0.5, 0.5) == 0.0
    with pytest.raises(ValueError):
        metrics.privleak(0.5, 0.0)


def test_rouge_l_recall():
    assert metrics.rouge_l_recall(["the cat sat", "dog"], ["the cat", "big dog ran"]) == pytest.approx([1.0, 1 / 3])


@pytest.mark.parametrize("fn", [metrics.truth_ratio_forget, metrics.truth_ratio_retain, metrics.model_utility])
def test_empty_input_raises_instead_of_default(fn):
    with pytest.raises(ValueError):
        fn([])


def test_mia_auc_needs_both_classes():
    with pytest.raises(ValueError):
        metrics.mia_auc([], [1.0])
    assert np.isfinite(metrics.mia_auc([1.0], [0.0]))
