"""Knowledge suite: does the model still know each split's facts? (PROTOCOLS.md)

Per split view (forget, forget_paraphrase, retain, retain_paraphrase, holdout, general):
em (greedy answer exact), mcq_acc (forced choice, chance 1/k), answer_prob (length-normalised
answer probability), truth_ratio (forget side: mean min(R, 1/R); otherwise mean max(0, 1 − R)),
rougeL_recall (greedy generation vs gold), exact_memorization (fraction of answer tokens that are
the teacher-forced argmax) and extraction_strength (1 − k/n for the fewest k gold answer tokens after
which greedy decoding reproduces the rest), both OpenUnlearning's, end token excluded.
forget_quality: KS p-value of the stage's forget truth ratios against the oracle's. A paraphrase view is skipped when the benchmark has no
paraphrased questions; mcq_acc and truth_ratio are not reported for answer-only splits (no
options or wrong answers exist to score them).

model_utility depends on ``bench.metric_protocol``:
- ``harness``: harmonic mean of retain and general answer_prob, rougeL_recall and truth_ratio.
- ``tofu`` (OpenUnlearning's 9-part utility): the general split is scored per relation (TOFU:
  ``real_authors``, ``world_facts``; rows use the relation as split name, with
  ``answer_prob_normalised`` = P(answer) / (P(answer) + Σ P(perturbed))); utility is the harmonic
  mean of retain answer_prob, rougeL_recall, truth_ratio and, per relation,
  answer_prob_normalised, rougeL_recall, truth_ratio.

Settings (``suite_settings.knowledge``): batch_size, the scoring batch (also used by the
continual per-request scores).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bench.benchmark import Benchmark
from bench.data import encode_qa, pad_id
from bench.items import SPLIT_VIEWS, ItemScores, prompts, score_items
from bench.metrics import (exact_memorization, extraction_strength, forget_quality, model_utility, truth_ratio_forget,
                           truth_ratio_retain)
from bench.settings import bounded
from bench.stages import ORACLE
from bench.suites import Row, SuiteContext, SuiteOutput
from bench.token_stats import token_stats

SUITE = "knowledge"

# Which way is better, per (split pattern, metric pattern); read by bench.directions (the report's ranking).
# "knows": lower on a forget-side split, higher elsewhere.
DIRECTIONS = [
    (r".*", r"forget_quality", "higher"),  # KS p-value against the oracle
    (r".*", r"model_utility", "higher"),
    (r".*", r"truth_ratio", "higher"),  # forget side mean min(R, 1/R): 1 = indifferent; elsewhere mean max(0, 1 - R)
    (r".*", r"em|mcq_acc|answer_prob|answer_prob_normalised|rougeL_recall|exact_memorization|extraction_strength",
     "knows"),
]


@dataclass(frozen=True)
class Settings:
    """batch_size: (prompt, answer) pairs per scoring forward pass."""

    batch_size: int = bounded(64, ge=1)


def check(settings: Settings, bench: Benchmark) -> None:
    """Nothing here depends on the benchmark (``Benchmark.validate`` checks what metric_protocol needs)."""


def split_scores(model, split: str, ctx: SuiteContext) -> ItemScores | None:
    source, phrasing = SPLIT_VIEWS[split]
    items = ctx.bench.split(source)
    if not items or (phrasing == "paraphrase" and not items[0].paraphrase):
        return None  # Benchmark.validate guarantees a split has paraphrases for all items or for none
    return score_items(model, ctx.tokenizer, ctx.bench, items, phrasing, ctx.settings_of(SUITE).batch_size)


def _scores(model, stage: str, split: str, ctx: SuiteContext) -> ItemScores | None:
    if stage == ORACLE:
        return ctx.reference((SUITE, split), lambda: split_scores(ctx.oracle, split, ctx))
    return split_scores(model, split, ctx)


def _subset(scores: ItemScores, keep: np.ndarray) -> ItemScores:
    """The scores of the items where ``keep`` is true (a relation of the general split)."""
    pick = lambda a: None if a is None else a[keep]  # noqa: E731
    idx = np.flatnonzero(keep)
    return ItemScores(ids=[scores.ids[i] for i in idx], em=scores.em[keep], answer_prob=scores.answer_prob[keep],
                      token_logprobs=[scores.token_logprobs[i] for i in idx], mcq_correct=pick(scores.mcq_correct),
                      truth_ratio=pick(scores.truth_ratio), generations=[scores.generations[i] for i in idx],
                      rouge_recall=scores.rouge_recall[keep], prob_normalised=pick(scores.prob_normalised))


def split_values(scores: ItemScores, forget_side: bool) -> dict[str, float]:
    """Split aggregates in the record's usual order; metrics an answer-only split lacks are left out."""
    tr = None
    if scores.truth_ratio is not None:
        tr = (truth_ratio_forget if forget_side else truth_ratio_retain)(scores.truth_ratio)
    values = {"em": scores.em.mean(), "mcq_acc": None if scores.mcq_correct is None else scores.mcq_correct.mean(),
              "answer_prob": scores.answer_prob.mean(), "truth_ratio": tr, "rougeL_recall": scores.rouge_recall.mean()}
    return {m: float(v) for m, v in values.items() if v is not None}


def memorization_scores(model, split: str, ctx: SuiteContext) -> dict[str, np.ndarray]:
    """Per item of a split view: OpenUnlearning's exact_memorization and extraction_strength, from the
    teacher-forced argmax at each gold answer token (one forward pass; end token excluded)."""
    source, phrasing = SPLIT_VIEWS[split]
    items = ctx.bench.split(source)
    examples = [encode_qa(ctx.tokenizer, p, it.answer) for p, it in zip(prompts(ctx.bench, items, phrasing), items)]
    hits = token_stats(model, examples, pad_id(ctx.tokenizer), ctx.settings_of(SUITE).batch_size).answer_hits
    return {"exact_memorization": np.array([exact_memorization(h) for h in hits]),
            "extraction_strength": np.array([extraction_strength(h) for h in hits])}


def _opt(a: np.ndarray | None, i: int):
    return None if a is None else (bool(a[i]) if a.dtype == bool else float(a[i]))


def evaluate(model, stage: str, ctx: SuiteContext) -> SuiteOutput:
    rows: list[Row] = []
    examples: list[dict] = []
    aggregates: dict[tuple[str, str], float] = {}
    general_scores: ItemScores | None = None
    for split in SPLIT_VIEWS:
        scores = _scores(model, stage, split, ctx)
        if scores is None:
            continue
        n = len(scores.ids)
        values = split_values(scores, split.startswith("forget"))
        memorization = memorization_scores(model, split, ctx)
        values.update({m: float(v.mean()) for m, v in memorization.items()})
        if split.startswith("forget") and ctx.oracle is not None:  # no oracle (model.inject: null): no forget quality
            oracle = ctx.reference((SUITE, split), lambda: split_scores(ctx.oracle, split, ctx))
            values["forget_quality"] = forget_quality(scores.truth_ratio, oracle.truth_ratio)
        if split == "general":
            general_scores = scores
        rows += [Row(stage, SUITE, split, m, v, n) for m, v in values.items()]
        aggregates.update({(split, m): v for m, v in values.items()})
        item_split = SPLIT_VIEWS[split][0]
        for i, item_id in enumerate(scores.ids):
            examples.append({"stage": stage, "suite": SUITE, "split": split, "id": item_id, "source_split": item_split,
                                 "generation": scores.generations[i], "em": bool(scores.em[i]),
                                 "mcq_correct": _opt(scores.mcq_correct, i), "answer_prob": float(scores.answer_prob[i]),
                                 "truth_ratio": _opt(scores.truth_ratio, i), "rougeL_recall": float(scores.rouge_recall[i]),
                                 **{m: float(v[i]) for m, v in memorization.items()}})
    if ctx.bench.metric_protocol == "tofu":
        parts = [aggregates[("retain", m)] for m in ("answer_prob", "rougeL_recall", "truth_ratio")]
        rows_, parts_ = _tofu_general_rows(stage, general_scores, ctx)
        rows += rows_
        parts += parts_
    else:
        parts = [aggregates[(s, m)] for s in ("retain", "general") for m in ("answer_prob", "rougeL_recall", "truth_ratio")
                 if (s, m) in aggregates]
    if parts:
        rows.append(Row(stage, SUITE, "retain", "model_utility", model_utility(parts), len(parts)))
    return SuiteOutput(rows, examples)


def _tofu_general_rows(stage: str, scores: ItemScores | None, ctx: SuiteContext) -> tuple[list[Row], list[float]]:
    """Per-relation rows of the general split and their 3 model-utility parts each (OpenUnlearning)."""
    general = ctx.bench.split("general")
    if scores is None or scores.prob_normalised is None:
        raise ValueError("metric_protocol 'tofu' needs a general split of multiple-choice items (TOFU: real "
                         "authors and world facts with perturbed answers); this benchmark has none")
    relations = list(dict.fromkeys(it.relation for it in general))
    rows: list[Row] = []
    parts: list[float] = []
    for rel in relations:
        sub = _subset(scores, np.array([it.relation == rel for it in general]))
        values = split_values(sub, forget_side=False)
        values["answer_prob_normalised"] = float(sub.prob_normalised.mean())
        rows += [Row(stage, SUITE, rel, m, v, len(sub.ids)) for m, v in values.items()]
        parts += [values["answer_prob_normalised"], values["rougeL_recall"], values["truth_ratio"]]
    return rows, parts
