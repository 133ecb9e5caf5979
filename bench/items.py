"""Per-item scoring of QA items: shared by the knowledge, privacy and continual scores, the relearning
attacks and the stopping rule (a public module: every layer may import it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np

from bench.benchmark import Benchmark, QAItem
from bench.metrics import prob_normalised, rouge_l_recall, truth_ratio
from bench.scoring import exact_generation, greedy_answers, score_answers

# Record split name -> (benchmark split, phrasing). Paraphrases were never trained.
SPLIT_VIEWS: dict[str, tuple[str, Literal["question", "paraphrase"]]] = {
    "forget": ("forget", "question"),
    "forget_paraphrase": ("forget", "paraphrase"),
    "retain": ("retain", "question"),
    "retain_paraphrase": ("retain", "paraphrase"),
    "holdout": ("holdout", "question"),
    "general": ("general", "question"),
}


@dataclass
class ItemScores:
    """Per-item scores. mcq_correct, truth_ratio and prob_normalised are None for answer-only
    items (no options or wrong answers exist to score them against)."""

    ids: list[str]
    em: np.ndarray
    answer_prob: np.ndarray  # exp(mean answer-token log-prob): length-normalised probability
    token_logprobs: list[np.ndarray]
    mcq_correct: np.ndarray | None
    truth_ratio: np.ndarray | None
    generations: list[str]
    rouge_recall: np.ndarray
    prob_normalised: np.ndarray | None = None  # P(answer) / (P(answer) + Σ P(perturbed)), OpenUnlearning's


def prompts(bench: Benchmark, items: Sequence[QAItem], phrasing: str) -> list[str]:
    return [bench.prompt(getattr(it, phrasing)) for it in items]


def forced_choice(option_logprobs: np.ndarray, items: Sequence[QAItem]) -> np.ndarray:
    """Forced choice from summed option log-probs [items, k] (answer tokens, end token excluded:
    ``AnswerScores.option_logprob``): the best option wins, ties count wrong."""
    gold = np.array([it.answer_index for it in items])
    best = option_logprobs.max(axis=1)
    unique_best = (option_logprobs == best[:, None]).sum(axis=1) == 1
    return (option_logprobs.argmax(axis=1) == gold) & unique_best


def option_pairs(bench: Benchmark, items: Sequence[QAItem], phrasing: str = "question") -> tuple[list[str], list[str]]:
    """(prompts, answers) of every option of every item, item by item: what forced choice scores."""
    ps = prompts(bench, items, phrasing)
    return [p for p, it in zip(ps, items) for _ in it.options], [o for it in items for o in it.options]


def mcq_correct(model, tokenizer, bench: Benchmark, items: Sequence[QAItem], phrasing: str = "question", batch_size: int = 64) -> np.ndarray:
    """Forced choice: the option whose answer tokens (end token excluded) have the highest summed
    log-probability wins (ties count wrong)."""
    k = len(items[0].options)
    flat = score_answers(model, tokenizer, *option_pairs(bench, items, phrasing), batch_size).option_logprob
    return forced_choice(flat.reshape(len(items), k), items)


def score_items(model, tokenizer, bench: Benchmark, items: Sequence[QAItem], phrasing: str, batch_size: int = 64,
                max_new_tokens: int | None = None, skip_exact_generations: bool = True) -> ItemScores:
    """Score ``items`` asked in ``phrasing``; greedy generations get ``bench.max_new_tokens`` unless given.

    Where em is already true, greedy decoding provably gives the gold answer, so its generation is
    taken from the answer's tokens instead of generated (``bench.scoring.exact_generation``;
    ``skip_exact_generations=False`` generates every item, for the equality tests and bench/perf).

    Each distinct (prompt, answer) pair (gold, paraphrased answer, perturbed, options) is scored
    once. The truth ratio's true side is the paraphrased answer where an item has one (TOFU),
    else the gold answer; answer-only items get no mcq, truth ratio or normalised probability.
    """
    if any(it.answer_only for it in items) and not all(it.answer_only for it in items):
        raise ValueError("score_items: mix of answer-only and multiple-choice items; score them separately")
    ps = prompts(bench, items, phrasing)
    pairs: dict[tuple[str, str], int] = {}
    for p, it in zip(ps, items):
        for a in (it.answer, it.paraphrased_answer or it.answer, *it.perturbed, *it.options):
            pairs.setdefault((p, a), len(pairs))
    scored = score_answers(model, tokenizer, [p for p, _ in pairs], [a for _, a in pairs], batch_size)
    gold_idx = [pairs[(p, it.answer)] for p, it in zip(ps, items)]
    gold_mean = scored.mean_logprob[gold_idx]
    em = scored.exact[gold_idx].astype(bool)
    budget = max_new_tokens or bench.max_new_tokens
    known = [exact_generation(tokenizer, it.answer, budget) if e and skip_exact_generations else None
             for it, e in zip(items, em)]
    todo = [i for i, g in enumerate(known) if g is None]
    generated = iter(greedy_answers(model, tokenizer, [ps[i] for i in todo], budget, batch_size))
    gens = [g if g is not None else next(generated) for g in known]
    scores = ItemScores(
        ids=[it.id for it in items],
        em=em,
        answer_prob=np.exp(gold_mean),
        token_logprobs=[scored.token_logprobs[i] for i in gold_idx],
        mcq_correct=None,
        truth_ratio=None,
        generations=gens,
        rouge_recall=np.asarray(rouge_l_recall(gens, [it.answer for it in items])),
    )
    if all(it.answer_only for it in items):
        return scores
    pert_by_item = [scored.mean_logprob[[pairs[(p, a)] for a in it.perturbed]] for p, it in zip(ps, items)]
    true_side = scored.mean_logprob[[pairs[(p, it.paraphrased_answer or it.answer)] for p, it in zip(ps, items)]]
    option_lp = scored.option_logprob
    options = np.array([[option_lp[pairs[(p, o)]] for o in it.options] for p, it in zip(ps, items)])
    scores.mcq_correct = forced_choice(options, items)
    scores.truth_ratio = truth_ratio(true_side, pert_by_item)
    scores.prob_normalised = prob_normalised(gold_mean, pert_by_item)
    return scores
