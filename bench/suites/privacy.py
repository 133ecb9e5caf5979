"""Privacy suite: membership inference with Min-K% probability, and MUSE's privleak.

mia_auc (split forget): AUC of the Min-K% score (mean of the lowest max(1, floor(k·n)) of the n
answer-token log-probs, end token excluded; k = 40%) separating forget items (members of the
target's training set) from holdout items (never trained). privleak, on MUSE's published scale:
(AUC_oracle − AUC) / (1 − AUC_oracle) × 100: near −100 for a model that memorised the forget set,
0 when the forget set looks as unseen as to the oracle (bench.metrics.privleak).
mia_auc on split retain (retain vs holdout) shows the attack works on what was kept.

Settings (``suite_settings.privacy``): min_k, the fraction of lowest-probability answer tokens
the Min-K% score averages.
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.benchmark import Benchmark
from bench.errors import ConfigError
from bench.items import prompts
from bench.metrics import mia_auc, min_k_score, privleak
from bench.scoring import score_answers
from bench.settings import bounded
from bench.suites import Row, SuiteContext, SuiteOutput

SUITE = "privacy"

# Which way is better (bench.directions): the forget split should look like unseen data.
DIRECTIONS = [
    (r"forget", r"mia_auc", "half"),
    (r"forget", r"privleak", "zero"),
    (r".*", r"mia_auc", None),  # retain vs holdout: shows the attack works
]


@dataclass(frozen=True)
class Settings:
    """min_k: Min-K% fraction of lowest-probability answer tokens, in (0, 1]."""

    min_k: float = bounded(0.4, gt=0, le=1)


def check(settings: Settings, bench: Benchmark) -> None:
    if not bench.split("holdout"):
        raise ConfigError("privacy suite needs a non-empty holdout split (non-members); set benchmark.holdout_fraction > 0 "
                          "or drop privacy from suites")


def min_k_scores(model, split: str, ctx: SuiteContext) -> list[float]:
    items = ctx.bench.split(split)
    k = ctx.settings_of(SUITE).min_k
    scores = score_answers(model, ctx.tokenizer, prompts(ctx.bench, items, "question"), [it.answer for it in items])
    return [min_k_score(lp, k) for lp in scores.answer_logprobs]  # answer tokens, end token excluded


def evaluate(model, stage: str, ctx: SuiteContext) -> SuiteOutput:
    check(ctx.settings_of(SUITE), ctx.bench)
    holdout = min_k_scores(model, "holdout", ctx)
    rows = []
    for split in ("forget", "retain"):
        members = min_k_scores(model, split, ctx)
        auc = mia_auc(members, holdout)
        rows.append(Row(stage, SUITE, split, "mia_auc", auc, len(members) + len(holdout)))
        if split == "forget" and ctx.oracle is not None:  # privleak is relative to the oracle (none with model.inject: null)
            # Scoring the oracle itself already gave its AUC: reuse it instead of scoring it twice.
            oracle_auc = ctx.reference((SUITE, "oracle_auc"), (lambda: auc) if model is ctx.oracle else
                                       lambda: mia_auc(min_k_scores(ctx.oracle, "forget", ctx), min_k_scores(ctx.oracle, "holdout", ctx)))
            rows.append(Row(stage, SUITE, split, "privleak", privleak(auc, oracle_auc), len(members) + len(holdout)))
    return SuiteOutput(rows)
