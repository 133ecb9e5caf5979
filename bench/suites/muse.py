"""MUSE suite: VerbMem and KnowMem as MUSE computes them (``benchmark=muse`` only).

- ``verbmem`` (split forget): greedy continuation of each ``verbmem/forget.json`` prompt, up to
  ``benchmark.verbmem_max_new_tokens`` (MUSE: 128) tokens, scored by ROUGE-L F1 against the true
  continuation cut to the same number of tokens (MUSE cuts the tokenised gt, BOS included, to the
  budget); mean over prompts (MUSE's ``mean_rougeL``; MUSE prints it × 100).
- ``knowmem`` (splits forget and retain): greedy answer, up to ``benchmark.knowmem_max_new_tokens``
  (32), to MUSE's few-shot prompt (the split's ICL pairs, then "Question: …\\nAnswer: "), cut at
  "\\n\\n", "\\nQuestion" or "Question:", scored by ROUGE-L F1 against the answer; mean over questions.
- ``extraction_strength`` and ``exact_memorization`` (split forget): OpenUnlearning's MUSE rows, on
  the verbmem prompt + " " + gt, teacher-forced (bench.metrics).

ROUGE-L F1 is rouge-score's without a stemmer (MUSE's ``RougeEvalLogger``; OpenUnlearning's port uses
the Porter stemmer). MUSE's PrivLeak is the privacy suite's ``privleak@mink`` on its privleak passages.
Prompts are encoded as every harness prompt is (BOS, a chat template only for a chat model).

Settings (``suite_settings.muse``): batch_size (prompts per generation or scoring batch).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bench.benchmark import Benchmark
from bench.benchmarks.muse import KNOWMEM_STOP, MuseBenchmark, knowmem_prompt
from bench.data import encode_qa, pad_id
from bench.errors import ConfigError
from bench.metrics import exact_memorization, extraction_strength, rouge_l_f1
from bench.scoring import greedy_answers
from bench.settings import bounded
from bench.suites import Row, SuiteContext, SuiteOutput
from bench.token_stats import token_stats

SUITE = "muse"

DIRECTIONS = [(r".*", r"verbmem|knowmem|extraction_strength|exact_memorization", "knows")]


@dataclass(frozen=True)
class Settings:
    """batch_size: prompts per generation or scoring batch."""

    batch_size: int = bounded(16, ge=1)


def check(settings: Settings, bench: Benchmark) -> None:
    if not isinstance(bench, MuseBenchmark):
        raise ConfigError(f"suite muse scores MUSE's VerbMem and KnowMem and needs benchmark=muse (this run's benchmark "
                          f"is {bench.name!r}); drop muse from suites or set benchmark=muse benchmark.data_dir=...")


def truncated_gt(tokenizer, gt: str, budget: int) -> str:
    """MUSE's VerbMem reference: the gt tokenised with special tokens (BOS counts), cut to ``budget``
    tokens, decoded without them."""
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    ids = (bos + tokenizer(gt, add_special_tokens=False).input_ids)[:budget]
    return tokenizer.decode(ids, skip_special_tokens=True)


def cut_at_stop(text: str) -> str:
    """MUSE's ``get_prefix_before_words_occur``: the text before the first of each stop string, in order."""
    for stop in KNOWMEM_STOP:
        text = text.split(stop)[0]
    return text


def evaluate(model, stage: str, ctx: SuiteContext) -> SuiteOutput:
    bench: MuseBenchmark = ctx.bench  # type: ignore[assignment]
    check(ctx.settings_of(SUITE), bench)
    tok, batch = ctx.tokenizer, ctx.settings_of(SUITE).batch_size
    rows: list[Row] = []
    examples: list[dict] = []

    prompts, gts = [p for p, _ in bench.verbmem], [g for _, g in bench.verbmem]
    gens = greedy_answers(model, tok, prompts, bench.verbmem_max_new_tokens, batch)
    refs = [truncated_gt(tok, g, bench.verbmem_max_new_tokens) for g in gts]
    verbmem = rouge_l_f1(gens, refs)
    hits = token_stats(model, [encode_qa(tok, p, g) for p, g in bench.verbmem], pad_id(tok), batch).answer_hits
    es = [extraction_strength(h) for h in hits]
    em = [exact_memorization(h) for h in hits]
    n = len(prompts)
    rows += [Row(stage, SUITE, "forget", "verbmem", float(np.mean(verbmem)), n),
             Row(stage, SUITE, "forget", "extraction_strength", float(np.mean(es)), n),
             Row(stage, SUITE, "forget", "exact_memorization", float(np.mean(em)), n)]
    examples += [{"stage": stage, "suite": SUITE, "split": "forget", "id": f"verbmem/{i}", "generation": gens[i],
                  "reference": refs[i], "verbmem": verbmem[i], "extraction_strength": es[i],
                  "exact_memorization": em[i]} for i in range(n)]

    for split in ("forget", "retain"):
        items = bench.split(split)
        qa_prompts = [knowmem_prompt(bench.knowmem_icl[split], it.question) for it in items]
        # Cut the raw generation, then strip (MUSE's and OpenUnlearning's order): "\n\nParis" is an empty answer.
        raw = greedy_answers(model, tok, qa_prompts, bench.knowmem_max_new_tokens, batch, strip=False)
        answers = [cut_at_stop(g).strip() for g in raw]
        knowmem = rouge_l_f1(answers, [it.answer for it in items])
        rows.append(Row(stage, SUITE, split, "knowmem", float(np.mean(knowmem)), len(items)))
        examples += [{"stage": stage, "suite": SUITE, "split": split, "id": it.id, "generation": answers[i],
                      "knowmem": knowmem[i]} for i, it in enumerate(items)]
    return SuiteOutput(rows, examples)
