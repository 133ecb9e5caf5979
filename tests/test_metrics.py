"""Each metric against values computed by hand."""

import math

import numpy as np
import pytest

from bench import metrics


def test_truth_ratio_averages_perturbed_losses_first():
    # correct mean log-prob -1; perturbed mean log-probs -2 and -4 -> mean -3 -> R = e^-3 / (e^-1 + 1e-10) ≈ e^-2
    r = metrics.truth_ratio([-1.0, -2.0], [[-2.0, -4.0], [-1.0, -1.0]])
    assert r == pytest.approx([math.exp(-2.0), math.exp(1.0)], rel=1e-8)


def test_truth_ratio_epsilon_on_tiny_probabilities():
    # TOFU / OpenUnlearning: R = P(perturbed) / (P(correct) + 1e-10). A wrecked model: P(correct) = 1e-12,
    # P(perturbed) = 1e-6 -> R = 1e-6 / (1e-12 + 1e-10) = 1e-6 / 1.01e-10 = 9900.99 (not 1e-6 / 1e-12 = 1e6).
    r = metrics.truth_ratio([math.log(1e-12)], [[math.log(1e-6)]])
    assert r == pytest.approx([1e4 / 1.01], rel=1e-9)
    # Forget side: min(R, 1 / (R + 1e-10)): R = 2 -> 0.5; R = 0 (perturbed underflows) -> 0, no division by zero.
    assert metrics.truth_ratio_forget([2.0]) == pytest.approx(0.5)
    assert metrics.truth_ratio_forget([0.0]) == 0.0


def test_prob_normalised_by_hand():
    # P(correct) = 0.5, P(perturbed) = 0.25 and 0.25 -> 0.5 / (0.5 + 0.5 + 1e-10) ≈ 0.5
    assert metrics.prob_normalised([math.log(0.5)], [[math.log(0.25), math.log(0.25)]]) == pytest.approx([0.5])
    # OpenUnlearning's correct / (correct + Σ wrong + 1e-10) on tiny probabilities: 1e-12 / (1e-12 + 1e-12 + 1e-10)
    # = 1 / 102, where the formula without the epsilon would give 1/2.
    got = metrics.prob_normalised([math.log(1e-12)], [[math.log(1e-12)]])
    assert got == pytest.approx([1 / 102], rel=1e-9)


def test_truth_ratio_aggregates():
    r = [0.5, 2.0, 1.0, 4.0]
    assert metrics.truth_ratio_forget(r) == pytest.approx((0.5 + 0.5 + 1.0 + 0.25) / 4)
    assert metrics.truth_ratio_retain(r) == pytest.approx((0.5 + 0 + 0 + 0) / 4)


def test_forget_quality_sees_the_epsilon():
    # Two items whose P(correct) collapsed below 1e-10: with the epsilon their ratios are capped near
    # P(perturbed) * 1e10 = 1e4 and tie with nothing else; the KS statistic is on those capped values.
    tiny = metrics.truth_ratio([math.log(1e-14), math.log(1e-13)], [[math.log(1e-6)], [math.log(1e-6)]])
    assert tiny == pytest.approx([1e-6 / (1e-14 + 1e-10), 1e-6 / (1e-13 + 1e-10)], rel=1e-9)
    assert tiny.max() < 1e4  # without the epsilon: 1e8 and 1e7


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


def test_min_k_rounds_down():
    # OpenUnlearning / MUSE: max(1, int(k·n)). 4 tokens at k = 0.4 -> floor(1.6) = 1 token: the lowest, -3
    # (rounding up would take 2: (-3 - 2) / 2 = -2.5).
    assert metrics.min_k_score([-0.1, -3.0, -0.5, -2.0], 0.4) == pytest.approx(-3.0)
    # 9 tokens at k = 0.4 -> floor(3.6) = 3 lowest: -9, -8, -7 -> -8
    assert metrics.min_k_score([-float(i) for i in range(1, 10)], 0.4) == pytest.approx(-8.0)


def test_min_k_excludes_the_end_token():
    from bench.scoring import AnswerScores

    # Answer tokens -1, -2, then the end token at -5 (the least likely: it would be Min-K's pick).
    s = AnswerScores(sum_logprob=np.array([-8.0]), n_tokens=np.array([3]), exact=np.array([False]),
                     token_logprobs=[np.array([-1.0, -2.0, -5.0])])
    assert [lp.tolist() for lp in s.answer_logprobs] == [[-1.0, -2.0]]
    # k = 0.5 of the 2 answer tokens -> 1 token, -2 (with the end token: floor(1.5) = 1 token, -5)
    assert metrics.min_k_score(s.answer_logprobs[0], 0.5) == pytest.approx(-2.0)
    assert s.mean_logprob == pytest.approx([-8.0 / 3])  # other metrics keep the end token


def test_mia_auc_by_hand():
    # members 3, 1; non-members 2, 0: pairs (3>2)(3>0)(1<2)(1>0) -> 3/4
    assert metrics.mia_auc([3.0, 1.0], [2.0, 0.0]) == pytest.approx(0.75)
    assert metrics.mia_auc([5.0, 6.0], [1.0, 2.0]) == pytest.approx(1.0)


def test_privleak_on_the_published_scale():
    # Harness AUC: forget = positive class, members score higher. MUSE's AUC is 1 − ours, and
    # privleak = (AUC_MUSE − AUC_MUSE,oracle) / AUC_MUSE,oracle × 100 = (AUC_oracle − AUC) / (1 − AUC_oracle) × 100.
    # Memorising model: AUC 1 vs oracle 0.5 -> MUSE AUCs 0 and 0.5 -> (0 − 0.5) / 0.5 = −100.
    assert metrics.privleak(1.0, 0.5) == pytest.approx(-100.0)
    # Retrained-like: AUC equals the oracle's -> 0.
    assert metrics.privleak(0.5, 0.5) == 0.0
    assert metrics.privleak(0.62, 0.62) == 0.0
    # Over-unlearned: forget looks *less* likely than holdout, AUC 0.25 -> (0.5 − 0.25) / 0.5 = +50.
    assert metrics.privleak(0.25, 0.5) == pytest.approx(50.0)
    # Oracle off 0.5: AUC 0.75, oracle 0.6 -> (0.6 − 0.75) / 0.4 = −37.5. OpenUnlearning on the same inputs:
    # its AUC equals ours (negated score, flipped labels); score = 1 − 0.75 = 0.25, ref = 1 − 0.6 = 0.4,
    # (0.25 − 0.4) / (0.4 + 1e-10) × 100 = −37.5.
    assert metrics.privleak(0.75, 0.6) == pytest.approx(-37.5)
    # The oracle itself separates the sets (tiny splits): undefined in MUSE (division by 0), ~1e12 in
    # OpenUnlearning (division by 1e-10); recorded as NaN, not as a number that looks like a result.
    assert math.isnan(metrics.privleak(0.9, 1.0))
    with pytest.raises(ValueError):
        metrics.privleak(1.2, 0.5)


def test_rouge_l_recall():
    assert metrics.rouge_l_recall(["the cat sat", "dog"], ["the cat", "big dog ran"]) == pytest.approx([1.0, 1 / 3])


def test_rouge_l_recall_uses_the_porter_stemmer():
    # Reference "she runs home" -> stems she, run, home; prediction "she was running home" -> she, was, run, home.
    # LCS = she, run, home = 3 of 3 reference tokens -> recall 1.0 (without stemming: she, home -> 2/3).
    assert metrics.rouge_l_recall(["she was running home"], ["she runs home"]) == pytest.approx([1.0])
    # "studies" and "studied" both stem to "studi": 2/2; "wrote" / "written" do not share a stem: 1/2.
    assert metrics.rouge_l_recall(["he studied", "he written"], ["he studies", "he wrote"]) == pytest.approx([1.0, 0.5])


@pytest.mark.parametrize("fn", [metrics.truth_ratio_forget, metrics.truth_ratio_retain, metrics.model_utility])
def test_empty_input_raises_instead_of_default(fn):
    with pytest.raises(ValueError):
        fn([])


def test_mia_auc_needs_both_classes():
    with pytest.raises(ValueError):
        metrics.mia_auc([], [1.0])
    assert np.isfinite(metrics.mia_auc([1.0], [0.0]))
