"""Knowledge suite: does the model still know each split's facts? (PROTOCOLS.md)

Per split view (forget, forget_paraphrase, retain, retain_paraphrase, holdout, general):
em (greedy answer exact), mcq_acc (forced choice, chance 1/k), answer_prob (length-normalised
answer probability), truth_ratio (forget side: mean min(R, 1/R); otherwise mean max(0, 1 − R)),
rougeL_recall (greedy generation vs gold). forget_quality: KS p-value of the stage's forget
truth ratios against the oracle's. model_utility: harmonic mean of retain and general
answer_prob, rougeL_recall and truth_ratio.
"""

from __future__ import annotations

import numpy as np

from bench.metrics import forget_quality, model_utility, truth_ratio_forget, truth_ratio_retain
from bench.suites import Row, SuiteContext
from bench.suites._items import SPLIT_VIEWS, ItemScores, score_items

SUITE = "knowledge"


def split_scores(model, split: str, ctx: SuiteContext) -> ItemScores | None:
    source, phrasing = SPLIT_VIEWS[split]
    items = ctx.bench.split(source)
    if not items:
        return None
    return score_items(model, ctx.tokenizer, ctx.bench, items, phrasing, ctx.setting(SUITE, "batch_size", 64))


def evaluate(model, stage: str, ctx: SuiteContext) -> list[Row]:
    rows: list[Row] = []
    aggregates: dict[tuple[str, str], float] = {}
    for split in SPLIT_VIEWS:
        if stage == "oracle":
            scores = ctx.reference((SUITE, split), lambda: split_scores(ctx.oracle, split, ctx))
        else:
            scores = split_scores(model, split, ctx)
        if scores is None:
            continue
        n = len(scores.ids)
        tr = truth_ratio_forget(scores.truth_ratio) if split.startswith("forget") else truth_ratio_retain(scores.truth_ratio)
        values = {"em": scores.em.mean(), "mcq_acc": scores.mcq_correct.mean(), "answer_prob": scores.answer_prob.mean(),
                  "truth_ratio": tr, "rougeL_recall": scores.rouge_recall.mean()}
        if split.startswith("forget"):
            oracle = ctx.reference((SUITE, split), lambda: split_scores(ctx.oracle, split, ctx))
            values["forget_quality"] = forget_quality(scores.truth_ratio, oracle.truth_ratio)
        rows += [Row(stage, SUITE, split, m, float(v), n) for m, v in values.items()]
        aggregates.update({(split, m): float(v) for m, v in values.items()})
        item_split = SPLIT_VIEWS[split][0]
        for i, item_id in enumerate(scores.ids):
            ctx.examples.append({"stage": stage, "suite": SUITE, "split": split, "id": item_id, "source_split": item_split,
                                 "generation": scores.generations[i], "em": bool(scores.em[i]),
                                 "mcq_correct": bool(scores.mcq_correct[i]), "answer_prob": float(scores.answer_prob[i]),
                                 "truth_ratio": float(scores.truth_ratio[i]), "rougeL_recall": float(scores.rouge_recall[i])})
    parts = [aggregates[(s, m)] for s in ("retain", "general") for m in ("answer_prob", "rougeL_recall", "truth_ratio")
             if (s, m) in aggregates]
    if parts:
        rows.append(Row(stage, SUITE, "retain", "model_utility", model_utility(parts), len(parts)))
    return rows
