"""Privacy suite: the membership-inference family and MUSE's privleak, per attack.

Members are the forget split (and, as a check that the attack works at all, the retain split);
non-members the holdout split, never trained. Each attack turns a model's teacher-forced token
statistics (bench/token_stats.py) into one score per item, higher = looks like a member
(bench/metrics.py holds the formulas and the OpenUnlearning class each matches):

- ``loss``: mean log-prob of every labelled token, end token included (LOSS; OpenUnlearning ``LOSSAttack``);
- ``zlib``: that over the zlib-compressed length of the scored text (``ZLIBAttack``);
- ``mink``: mean of the lowest max(1, ⌊k·n⌋) answer-token log-probs, end token excluded (``MinKProbAttack``,
  MUSE's Min-40%);
- ``minkpp``: the same over (log p(x_t) − μ_t) / σ_t, μ_t and σ_t² the mean and variance of log p over the
  vocabulary (``MinKPlusPlusAttack``);
- ``reference``: loss_reference − loss_model (``ReferenceAttack``); the reference model is the oracle
  (``reference: oracle``, the retrained model OpenUnlearning points ``reference_model_path`` at) or
  the target before unlearning (``reference: target``: where no retrained model exists, it calibrates
  away what the model knew before it learned the forget set, pre-existing knowledge).

Rows: ``mia_auc@<attack>`` on split forget (forget vs holdout) and retain (retain vs holdout), ROC AUC
with members as the positive class (OpenUnlearning's orientation: 1 when forget is much likelier than
holdout); ``privleak@<attack>`` on split forget: (AUC_oracle − AUC) / (1 − AUC_oracle) × 100, the oracle's
AUC under the same attack (MUSE's published privleak; bench.metrics.privleak). MUSE's PrivLeak is
``privleak@mink``. With ``reference: oracle`` the oracle scores every item 0 under ``reference``, so its
AUC there is 0.5.

What is scored: a question-answer benchmark's items (prompt, answer: the answer's tokens); a benchmark
with ``membership_text`` (MUSE's privleak sets) its whole passages instead, as MUSE scores them.

Settings (``suite_settings.privacy``): min_k (Min-K% and Min-K%++ fraction, 0.4), attacks (which to run),
reference (oracle | target), batch_size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from bench.benchmark import Benchmark
from bench.data import encode_qa, encode_text, pad_id
from bench.errors import ConfigError
from bench.metrics import (loss_score, mia_auc, min_k_plus_plus_score, min_k_score, privleak, reference_score,
                           zlib_score)
from bench.settings import bounded
from bench.suites import Row, SuiteContext, SuiteOutput
from bench.token_stats import TokenStats, token_stats

SUITE = "privacy"
ATTACKS = ("loss", "zlib", "mink", "minkpp", "reference")
MEMBER_SPLITS = ("forget", "retain")

# Which way is better (bench.directions): the forget split should look like unseen data.
DIRECTIONS = [
    (r"forget", r"mia_auc@.+", "half"),
    (r"forget", r"privleak@.+", "zero"),
    (r".*", r"mia_auc@.+", None),  # retain vs holdout: shows the attack works
]


@dataclass(frozen=True)
class Settings:
    """min_k: fraction of lowest-scoring answer tokens Min-K% and Min-K%++ average, in (0, 1].
    attacks: the attacks to run. reference: the reference attack's reference model (oracle | target).
    batch_size: examples per scoring forward pass."""

    min_k: float = bounded(0.4, gt=0, le=1)
    attacks: tuple[Literal["loss", "zlib", "mink", "minkpp", "reference"], ...] = bounded(ATTACKS, nonempty=True,
                                                                                           unique=True)
    reference: Literal["oracle", "target"] = "oracle"
    batch_size: int = bounded(64, ge=1)


@dataclass(frozen=True)
class MemberSet:
    """What one split contributes to the attack: ids, tokenised examples, and the text they spell."""

    ids: list[str]
    examples: list[tuple[list[int], list[int]]]
    texts: list[str]


def _has(bench: Benchmark, split: str) -> bool:
    return bool(bench.membership_text.get(split)) if bench.membership_text else bool(bench.split(split))


def check(settings: Settings, bench: Benchmark) -> None:
    if not _has(bench, "holdout"):
        raise ConfigError("privacy suite needs a non-empty holdout split (non-members); set benchmark.holdout_fraction > 0 "
                          "or drop privacy from suites")


def member_set(split: str, ctx: SuiteContext) -> MemberSet:
    bench, tok = ctx.bench, ctx.tokenizer
    if bench.membership_text:
        texts = list(bench.membership_text[split])
        return MemberSet([f"{split}/text{i}" for i in range(len(texts))], [encode_text(tok, t) for t in texts], texts)
    items = bench.split(split)
    return MemberSet([it.id for it in items], [encode_qa(tok, bench.prompt(it.question), it.answer) for it in items],
                     [it.answer for it in items])


def _stats(model, split: str, ctx: SuiteContext) -> TokenStats:
    return token_stats(model, member_set(split, ctx).examples, pad_id(ctx.tokenizer), ctx.settings_of(SUITE).batch_size)


def reference_model(ctx: SuiteContext):
    which = ctx.settings_of(SUITE).reference
    if which == "oracle" and ctx.oracle is None:  # Run rejects this plan before compute; a direct caller lands here
        raise ConfigError("suite_settings.privacy.reference=oracle needs an oracle, and model.inject=null has none; "
                          "set suite_settings.privacy.reference=target")
    if which == "target" and ctx.target is None:
        raise ValueError("privacy: reference=target needs the target model in the suite context; none was given")
    return ctx.oracle if which == "oracle" else ctx.target


def attack_scores(model, ctx: SuiteContext, splits) -> dict[str, dict[str, np.ndarray]]:
    """attack -> split -> per-item membership scores (higher = member) of ``model``."""
    s = ctx.settings_of(SUITE)
    out: dict[str, dict[str, np.ndarray]] = {a: {} for a in s.attacks}
    ref = reference_model(ctx) if "reference" in s.attacks else None
    for split in splits:
        st, texts = _stats(model, split, ctx), member_set(split, ctx).texts
        fn = {
            "loss": lambda i: loss_score(st.logprobs[i]),
            "zlib": lambda i: zlib_score(st.logprobs[i], texts[i]),
            "mink": lambda i: min_k_score(st.answer_logprobs[i], s.min_k),
            "minkpp": lambda i: min_k_plus_plus_score(st.answer_logprobs[i], st.answer_vocab_mean[i],
                                                      st.answer_vocab_var[i], s.min_k),
        }
        if ref is not None:
            # The reference model's statistics are the same at every stage: computed once per run.
            ref_st = st if ref is model else ctx.reference((SUITE, "reference_stats", s.reference, split),
                                                           lambda: _stats(ref, split, ctx))
            fn["reference"] = lambda i: reference_score(st.logprobs[i], ref_st.logprobs[i])
        for a in s.attacks:
            out[a][split] = np.array([fn[a](i) for i in range(len(texts))])
    return out


def _splits(ctx: SuiteContext) -> list[str]:
    return [sp for sp in (*MEMBER_SPLITS, "holdout") if _has(ctx.bench, sp)]


def _aucs(scores: dict[str, dict[str, np.ndarray]]) -> dict[str, float]:
    return {a: mia_auc(by_split["forget"], by_split["holdout"]) for a, by_split in scores.items()}


def evaluate(model, stage: str, ctx: SuiteContext) -> SuiteOutput:
    check(ctx.settings_of(SUITE), ctx.bench)
    splits = _splits(ctx)
    scores = attack_scores(model, ctx, splits)
    # The oracle's AUC per attack normalises privleak at every stage; scoring the oracle stage gives it.
    # No oracle (model.inject: null, pre-existing knowledge): no privleak rows, only the AUCs.
    oracle_auc = None if ctx.oracle is None else ctx.reference(
        (SUITE, "oracle_auc", ctx.settings_of(SUITE).attacks),
        (lambda: _aucs(scores)) if model is ctx.oracle else lambda: _aucs(attack_scores(ctx.oracle, ctx, splits)))
    holdout = {a: scores[a]["holdout"] for a in scores}
    rows: list[Row] = []
    for split in [sp for sp in MEMBER_SPLITS if sp in splits]:
        for a in scores:
            members = scores[a][split]
            n = len(members) + len(holdout[a])
            auc = mia_auc(members, holdout[a])
            rows.append(Row(stage, SUITE, split, f"mia_auc@{a}", auc, n))
            if split == "forget" and oracle_auc is not None:
                rows.append(Row(stage, SUITE, split, f"privleak@{a}", privleak(auc, oracle_auc[a]), n))
    examples = [{"stage": stage, "suite": SUITE, "split": split, "id": item_id,
                 "membership_scores": {a: float(scores[a][split][i]) for a in scores}}
                for split in splits for i, item_id in enumerate(member_set(split, ctx).ids)]
    return SuiteOutput(rows, examples)
