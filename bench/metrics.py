"""Pure metric formulas (PROTOCOLS.md), on plain arrays so each is testable by hand.

Every function raises on input it cannot score (empty arrays, a single class for AUC) rather
than returning a default: a missing number must be visible, never a silent 0 or 0.5. The one
exception is a formula the references leave undefined on valid data (privleak with an oracle AUC
of 1): NaN, with a warning.

Conventions are the published ones (TOFU, MUSE, OpenUnlearning): the same inputs give the same
value; each docstring names the reference it matches (METRICS_README_SECTION.md has the table).
"""

from __future__ import annotations

import logging
import math
import zlib
from typing import Sequence

import numpy as np
from scipy import stats
from sklearn.metrics import roc_auc_score

# Added to the denominators exactly where TOFU / OpenUnlearning add it (truth ratio, the forget-side
# 1/R, option-normalised probability, privleak). On a model wrecked by gradient ascent the answer's
# probability can fall far below 1e-10 and the ratio would otherwise explode to ~1e30.
EPS = 1e-10


def _nonempty(x: Sequence[float], what: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.size == 0:
        raise ValueError(f"{what}: no values to aggregate")
    return arr


def truth_ratio(correct_mean_logprob: Sequence[float], perturbed_mean_logprobs: Sequence[Sequence[float]]) -> np.ndarray:
    """TOFU truth ratio per item: R = P(perturbed) / (P(correct) + 1e-10), on the probability scale.

    P = exp(mean answer-token log-prob); the perturbed side averages the token losses over its
    perturbations first (geometric mean of their normalised probabilities). The 1e-10 is TOFU's and
    OpenUnlearning's (``truth_ratio``: ``wrong_prob / (correct_prob + 1e-10)``): it caps R at
    P(perturbed)·1e10 when the correct answer's probability collapses.
    """
    correct = _nonempty(correct_mean_logprob, "truth_ratio")
    pert = np.asarray([np.mean(p) for p in perturbed_mean_logprobs], dtype=np.float64)
    if pert.shape != correct.shape:
        raise ValueError("truth_ratio: one list of perturbed log-probs per item is required")
    return np.exp(pert) / (np.exp(correct) + EPS)


def prob_normalised(correct_mean_logprob: Sequence[float], perturbed_mean_logprobs: Sequence[Sequence[float]]) -> np.ndarray:
    """OpenUnlearning's option-normalised answer probability per item (``probability_w_options``):
    P(correct) / (P(correct) + Σ_j P(perturbed_j) + 1e-10), each P = exp(mean answer-token log-prob)
    (the 1e-10 as in OpenUnlearning).

    TOFU's model utility uses it for real authors and world facts, where a pretrained model's raw
    probability of one particular wording is tiny even when it knows the fact.
    """
    correct = np.exp(_nonempty(correct_mean_logprob, "prob_normalised"))
    if len(perturbed_mean_logprobs) != correct.size or any(len(p) == 0 for p in perturbed_mean_logprobs):
        raise ValueError("prob_normalised: one non-empty list of perturbed log-probs per item is required")
    wrong = np.asarray([np.exp(np.asarray(p, dtype=np.float64)).sum() for p in perturbed_mean_logprobs])
    return correct / (correct + wrong + EPS)


def truth_ratio_forget(ratios: Sequence[float]) -> float:
    """Forget-side aggregate: mean of min(R, 1/(R + 1e-10)) (OpenUnlearning's ``closer_to_1_better``);
    1 means true and false answers are equally likely."""
    r = _nonempty(ratios, "truth_ratio_forget")
    return float(np.mean(np.minimum(r, 1.0 / (r + EPS))))


def truth_ratio_retain(ratios: Sequence[float]) -> float:
    """Retain-side aggregate: mean of max(0, 1 − R); 1 means the true answer dominates."""
    r = _nonempty(ratios, "truth_ratio_retain")
    return float(np.mean(np.maximum(0.0, 1.0 - r)))


def forget_quality(unlearned_ratios: Sequence[float], oracle_ratios: Sequence[float]) -> float:
    """TOFU forget quality: p-value of the two-sample KS test between truth-ratio samples."""
    a = _nonempty(unlearned_ratios, "forget_quality")
    b = _nonempty(oracle_ratios, "forget_quality (oracle)")
    return float(stats.ks_2samp(a, b).pvalue)


def model_utility(values: Sequence[float]) -> float:
    """TOFU model utility: harmonic mean of retain-side scores (0 if any score is 0)."""
    v = _nonempty(values, "model_utility")
    if np.any(v < 0):
        raise ValueError("model_utility: harmonic mean needs non-negative values")
    if np.any(v == 0):
        return 0.0
    return float(stats.hmean(v))


def min_k_score(token_logprobs: Sequence[float], k: float = 0.4) -> float:
    """Min-K% probability (Shi et al. 2024): mean of the lowest max(1, floor(k·n)) token log-probs.

    Pass the answer tokens only, without the end token (``AnswerScores.answer_logprobs``), as
    OpenUnlearning's ``MinKProbAttack`` does (``tokenwise_logprobs`` drops the last labelled token,
    the EOS, and it keeps ``max(1, int(n·k))`` tokens). Higher = more likely a member; OpenUnlearning
    returns the negation and flips the AUC labels, which gives the same AUC.
    """
    lp = np.sort(_nonempty(token_logprobs, "min_k_score"))
    n = max(1, math.floor(k * lp.size))
    return float(np.mean(lp[:n]))


def loss_score(token_logprobs: Sequence[float]) -> float:
    """LOSS attack (Yeom et al. 2018) score: the mean log-prob of every labelled token, the end token
    included, i.e. minus OpenUnlearning's ``avg_loss`` (``evaluate_probability`` averages the loss over
    all labelled tokens). Higher = more likely a member; OpenUnlearning scores the loss and flips the
    AUC labels instead, which gives the same AUC."""
    return float(np.mean(_nonempty(token_logprobs, "loss_score")))


def zlib_compressed_length(text: str) -> int:
    """Bytes of zlib-compressed UTF-8 text at zlib's default level: the zlib attack's normaliser."""
    return len(zlib.compress(text.encode("utf-8")))


def zlib_score(token_logprobs: Sequence[float], text: str) -> float:
    """zlib attack (Carlini et al. 2021) score: ``loss_score`` / zlib-compressed length of the scored text
    (OpenUnlearning's ``ZLIBAttack``: avg_loss / len(zlib.compress(text)), sign flipped like loss_score).
    ``text`` is what the labelled tokens spell (the answer; MUSE: the whole passage)."""
    if not text:
        raise ValueError("zlib_score: empty text has no compressed length to normalise by")
    return loss_score(token_logprobs) / zlib_compressed_length(text)


def min_k_plus_plus_score(token_logprobs: Sequence[float], vocab_mean: Sequence[float], vocab_var: Sequence[float],
                          k: float = 0.4) -> float:
    """Min-K%++ (Zhang et al. 2024): per token z_t = (log p(x_t) − μ_t) / σ_t, where μ_t and σ_t² are the
    mean and variance of log p over the vocabulary under the model's own next-token distribution
    (μ_t = Σ_v p_v log p_v, σ_t² = Σ_v p_v (log p_v)² − μ_t², σ_t² clamped at 1e-6 as OpenUnlearning's
    ``MinKPlusPlusAttack`` does); the score is the mean of the lowest max(1, ⌊k·n⌋) z_t. Answer tokens
    only, end token excluded (as ``min_k_score``). Higher = more likely a member (OpenUnlearning
    returns the negation)."""
    lp = _nonempty(token_logprobs, "min_k_plus_plus_score")
    mu, var = np.asarray(vocab_mean, dtype=np.float64), np.asarray(vocab_var, dtype=np.float64)
    if mu.shape != lp.shape or var.shape != lp.shape:
        raise ValueError("min_k_plus_plus_score: one vocabulary mean and variance per token is required")
    z = np.sort((lp - mu) / np.sqrt(np.maximum(var, 1e-6)))
    n = max(1, math.floor(k * z.size))
    return float(np.mean(z[:n]))


def reference_score(token_logprobs: Sequence[float], reference_token_logprobs: Sequence[float]) -> float:
    """Reference attack (Carlini et al. 2022) score: loss_reference − loss_model over every labelled token
    (end token included), i.e. minus OpenUnlearning's ``ReferenceAttack`` score target_loss − ref_loss.
    Higher = the model finds the text likelier than the reference does: a member."""
    return loss_score(token_logprobs) - loss_score(reference_token_logprobs)


def exact_memorization(answer_hits: Sequence[bool]) -> float:
    """OpenUnlearning's ``exact_memorization`` of one item: the fraction of answer tokens (end token
    excluded) that are the teacher-forced argmax prediction."""
    hits = _nonempty(answer_hits, "exact_memorization")
    return float(hits.mean())


def extraction_strength(answer_hits: Sequence[bool]) -> float:
    """Extraction strength of one item (Carlini et al. 2021; OpenUnlearning's ``extraction_strength``):
    1 − k/n for the smallest k in 0..n such that, given the first k gold answer tokens, the model's
    argmax predictions reproduce the remaining n − k exactly (teacher-forced argmax = greedy
    continuation). n = answer tokens, end token excluded; k = n (nothing left to reproduce) gives 0.

    OpenUnlearning's loop stops at k = n − 1, so where even the last answer token is missed it reports
    1/n instead of 0: 1 for every one-token answer, right or wrong. That is the boundary bug this
    function does not copy; every other item gets OpenUnlearning's value (tests/test_metrics.py).
    """
    hits = _nonempty(answer_hits, "extraction_strength").astype(bool)
    n = hits.size
    k = next((k for k in range(n) if hits[k:].all()), n)
    return 1.0 - k / n


def mia_auc(member_scores: Sequence[float], nonmember_scores: Sequence[float]) -> float:
    """AUC of a membership score separating members (label 1) from non-members (label 0)."""
    m = _nonempty(member_scores, "mia_auc (members)")
    n = _nonempty(nonmember_scores, "mia_auc (non-members)")
    labels = np.r_[np.ones(m.size), np.zeros(n.size)]
    return float(roc_auc_score(labels, np.r_[m, n]))


def privleak(auc: float, oracle_auc: float) -> float:
    """MUSE privleak on this harness's AUC convention: (AUC_oracle − AUC) / (1 − AUC_oracle + 1e-10) × 100.

    ``auc`` and ``oracle_auc`` are ``mia_auc`` values: forget items are the positive class and score
    higher when memorised, so a memorising model has AUC → 1 and an oracle that never saw the
    forget set has AUC ≈ 0.5. MUSE (and OpenUnlearning's ``privleak``) define the AUC the other way
    round, AUC_MUSE = 1 − AUC, and report (AUC_MUSE − AUC_MUSE,retrain) / AUC_MUSE,retrain × 100
    (OpenUnlearning adds 1e-10 to the denominator); substituting gives the formula above, the same
    value on the same inputs. Published scale: a model that memorised the forget set scores near
    −100 (AUC 1 vs oracle 0.5), a retrained model 0, under-fitting the forget set (AUC below the
    oracle's) is positive. Near 0 is good.
    """
    if not (0.0 <= oracle_auc <= 1.0 and 0.0 <= auc <= 1.0):
        raise ValueError(f"privleak: AUCs must lie in [0, 1] (got {auc}, oracle {oracle_auc})")
    if oracle_auc == 1.0:
        # The oracle itself separates forget from holdout (a tiny split, or a leaky world): the
        # published formula has no value here (MUSE divides by 0, OpenUnlearning by 1e-10, giving
        # ~1e12). NaN keeps the row and shows it is undefined; no number that looks like a result.
        logging.getLogger(__name__).warning("privleak undefined: the oracle's AUC is 1 (forget and holdout "
                                            "fully separable without training on forget); recorded as NaN")
        return float("nan")
    return (oracle_auc - auc) / (1.0 - oracle_auc + EPS) * 100.0


def rouge_l_recall(predictions: Sequence[str], references: Sequence[str]) -> list[float]:
    """ROUGE-L recall of each prediction against its reference (rouge-score with the Porter stemmer,
    ``use_stemmer=True``, as TOFU and OpenUnlearning report it)."""
    from rouge_score import rouge_scorer

    logging.getLogger("absl").setLevel(logging.WARNING)  # rouge-score logs a line per scorer
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return [scorer.score(ref, pred)["rougeL"].recall for pred, ref in zip(predictions, references, strict=True)]


def rouge_l_f1(predictions: Sequence[str], references: Sequence[str]) -> list[float]:
    """ROUGE-L F1 of each prediction against its reference, ``rouge-score`` without a stemmer: MUSE's
    VerbMem and KnowMem (``RougeEvalLogger``: ``use_stemmer=False``, ``rougeL.fmeasure``; its default
    aggregate ``mean_rougeL``). OpenUnlearning's port scores ``rougeL_f1`` with the Porter stemmer."""
    from rouge_score import rouge_scorer

    logging.getLogger("absl").setLevel(logging.WARNING)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    return [scorer.score(ref, pred)["rougeL"].fmeasure for pred, ref in zip(predictions, references, strict=True)]
