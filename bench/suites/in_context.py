"""In-context suite: do forgotten facts come back when other forgotten facts are in the prompt?

In-context relearning: no weight changes, only a prompt. Before each forget question, ``k`` other
forget facts are written as solved demonstrations (``<prompt> <answer>``, joined by a blank line,
the question's own fact never among them); the forget question is then scored by forced choice
(``bench.items.forced_choice``: summed answer-token log-probs of the options, chance 1 over the number of options). As
control, the same question after ``k`` retain facts: what any context of solved questions does to
the model (the tiny model was trained on single questions only, so a long prompt alone moves its
scores). The oracle, asked the same prompts, is the control for knowledge that is not there.

Demonstrations are drawn per question from the seed (``numpy.random.default_rng([seed, i, c])``,
i the question's position in the forget split, c 0 for forget and 1 for retain demonstrations),
the same at every stage; ``same_person: false`` keeps the question's own person out of its
demonstrations (only other people's forgotten facts). Before any compute: k larger than the
number of other forget facts a question can draw from (or than the retain split), or prompts
longer than the model's position range, fail with the largest k that works.

Rows (split ``forget``): ``mcq_acc@forget_context``, ``mcq_acc@retain_context``, and
``context_gain`` (their difference: what the forgotten facts in context add beyond a context);
on non-oracle stages, ``recovery`` = mcq_acc@forget_context minus the oracle's. Examples hold the
per-question demonstration ids and correctness.

Settings (``suite_settings.in_context``): k (4), same_person (true), seed (the run's seed in
conf/config.yaml), stages ([target, unlearned]; the oracle always runs), batch_size (64).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np

from bench.benchmark import Benchmark, QAItem
from bench.data import answer_text, encode_prompt
from bench.errors import ConfigError
from bench.items import forced_choice
from bench.scoring import score_answers
from bench.settings import bounded
from bench.stages import ORACLE, TARGET, UNLEARNED
from bench.suites import Row, SuiteContext, SuiteOutput, check_control_stages

SUITE = "in_context"
SEPARATOR = "\n\n"
CONTEXTS = ("forget", "retain")  # where the demonstrations come from

DIRECTIONS = [
    (r".*", r"recovery", "lower"),
    (r".*", r"context_gain", "zero"),  # facts are independent: a model without them gains nothing from seeing others
    (r".*", r"mcq_acc@.*", "knows"),
]


@dataclass(frozen=True)
class Settings:
    """k: demonstrations per question. same_person: may they include other facts of the question's
    person. seed: which demonstrations. stages: stages scored besides the oracle control.
    batch_size: (prompt, option) pairs per forward pass."""

    k: int = bounded(4, ge=1)
    same_person: bool = True
    seed: int = bounded(0, ge=0)
    stages: tuple[str, ...] = bounded((TARGET, UNLEARNED), unique=True)
    batch_size: int = bounded(64, ge=1)


def candidates(question: QAItem, pool: Sequence[QAItem], same_person: bool) -> list[QAItem]:
    """Facts that may precede ``question``: never itself; with ``same_person`` false, no fact of its person."""
    return [it for it in pool if it.id != question.id and (same_person or it.group != question.group)]


def available(settings: Settings, bench: Benchmark) -> dict[str, int]:
    """Per context, the most demonstrations every forget question can draw."""
    forget = bench.split("forget")
    return {"forget": min(len(candidates(q, forget, settings.same_person)) for q in forget),
            "retain": len(bench.split("retain"))}


def check(settings: Settings, bench: Benchmark) -> None:
    check_control_stages(SUITE, settings.stages, "scored")
    for context, n in available(settings, bench).items():
        if settings.k > n:
            facts = ("other forget facts" + ("" if settings.same_person else " of other people")
                     if context == "forget" else "retain facts")
            raise ConfigError(f"suite_settings.in_context.k={settings.k} but a forget question has only {n} {facts} "
                              f"to draw demonstrations from; use k <= {n}")


def demonstrations(question: QAItem, index: int, context: str, bench: Benchmark, settings: Settings) -> list[QAItem]:
    """The question's k demonstrations from ``context``, drawn from the seed (same at every stage)."""
    pool = candidates(question, bench.split(context), settings.same_person) if context == "forget" else bench.split(context)
    rng = np.random.default_rng([settings.seed, index, CONTEXTS.index(context)])
    return [pool[i] for i in sorted(rng.choice(len(pool), size=settings.k, replace=False))]


def context_prompt(tokenizer, bench: Benchmark, question: QAItem, demos: Sequence[QAItem]) -> str:
    solved = [bench.prompt(d.question) + answer_text(tokenizer, d.answer) for d in demos]
    return SEPARATOR.join([*solved, bench.prompt(question.question)])


def prompts_for(context: str, ctx_tokenizer, bench: Benchmark, settings: Settings) -> tuple[list[str], list[list[str]]]:
    """Per forget question, its prompt with ``context`` demonstrations and their ids."""
    prompts, ids = [], []
    for i, q in enumerate(bench.split("forget")):
        demos = demonstrations(q, i, context, bench, settings)
        prompts.append(context_prompt(ctx_tokenizer, bench, q, demos))
        ids.append([d.id for d in demos])
    return prompts, ids


def longest_sequence(settings: Settings, bench: Benchmark, tokenizer) -> int:
    """Positions the longest prompt (either context) plus the longest option takes."""
    option = max(len(tokenizer(answer_text(tokenizer, o), add_special_tokens=False).input_ids)
                 for it in bench.split("forget") for o in it.options)
    return option + max(len(encode_prompt(tokenizer, p)) for c in CONTEXTS for p in prompts_for(c, tokenizer, bench, settings)[0])


def check_model(settings: Settings, bench: Benchmark, tokenizer, shape, max_positions: int | None) -> None:
    """Every prompt + option must fit the model's positions; the message names the largest k that fits."""
    if max_positions is None:
        return
    need = longest_sequence(settings, bench, tokenizer)
    if need > max_positions:
        fits = next((k for k in range(settings.k - 1, 0, -1)
                     if longest_sequence(replace(settings, k=k), bench, tokenizer) <= max_positions), 0)
        fix = f"use k <= {fits}" if fits else "no k fits: use a model with more positions"
        raise ConfigError(f"suite_settings.in_context.k={settings.k}: prompts with {settings.k} demonstrations need up to "
                          f"{need} positions but the model has max_position_embeddings={max_positions}; {fix}")


def context_scores(model, ctx: SuiteContext) -> dict[str, tuple[np.ndarray, list[list[str]]]]:
    """Per context, forced-choice correctness of each forget question and its demonstration ids."""
    s = ctx.settings_of(SUITE)
    forget = ctx.bench.split("forget")
    k = len(forget[0].options)
    out = {}
    for context in CONTEXTS:
        prompts, ids = prompts_for(context, ctx.tokenizer, ctx.bench, s)
        scored = score_answers(model, ctx.tokenizer, [p for p in prompts for _ in range(k)],
                               [o for it in forget for o in it.options], s.batch_size)
        out[context] = (forced_choice(scored.option_logprob.reshape(len(forget), k), forget), ids)
    return out


def evaluate(model, stage: str, ctx: SuiteContext) -> SuiteOutput:
    s = ctx.settings_of(SUITE)
    if stage != ORACLE and stage not in s.stages:
        return SuiteOutput()
    control = ctx.reference((SUITE, "oracle"), lambda: context_scores(ctx.oracle, ctx))
    scores = control if stage == ORACLE else context_scores(model, ctx)
    forget = ctx.bench.split("forget")
    n = len(forget)
    acc = {c: float(scores[c][0].mean()) for c in CONTEXTS}
    rows = [Row(stage, SUITE, "forget", f"mcq_acc@{c}_context", acc[c], n) for c in CONTEXTS]
    rows.append(Row(stage, SUITE, "forget", "context_gain", acc["forget"] - acc["retain"], n))
    if stage != ORACLE:
        rows.append(Row(stage, SUITE, "forget", "recovery", acc["forget"] - float(control["forget"][0].mean()), n))
    examples = [{"stage": stage, "suite": SUITE, "split": "forget", "kind": f"{c}_context", "id": it.id,
                 "demonstrations": scores[c][1][i], "mcq_correct": bool(scores[c][0][i])}
                for c in CONTEXTS for i, it in enumerate(forget)]
    return SuiteOutput(rows, examples)
