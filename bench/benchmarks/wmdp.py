"""WMDP (Li et al. 2024; hub ``cais/wmdp``, configs wmdp-bio / wmdp-cyber / wmdp-chem, split test).

Fields read (the real dataset's): question, choices (4 strings), answer (index into choices).
The forget corpora (``cais/wmdp-corpora``, field ``text``) are gated on the hub, so they are read
from local jsonl files named by ``forget_corpus`` / ``retain_corpus`` (same ``text`` field).

Mapping onto the harness:
- forget = questions of ``forget_subsets`` (default bio), minus the last ``holdout_fraction``
  of each, which become holdout (never trained: membership-inference reference); retain =
  questions of ``retain_subsets`` (default cyber: "forget one hazard domain, keep another").
  Each question is its own group. ``max_per_subset`` keeps the first N questions per subset.
- Format: letter-answer multiple choice, as lm-eval's ``wmdp_*`` tasks: the question then
  "(A) ..." lines; the answer is the letter; the wrong letters are the perturbed answers.
  No paraphrases exist: the paraphrase views are not scored.
- ``forget_corpus`` text is learned by the target only (``Benchmark.forget_text``), so the oracle
  never sees it; ``retain_corpus`` text by both (``general_text``). Unlearning methods use the
  forget questions, as for every benchmark.
- lm-eval's own ``wmdp_bio``/``wmdp_cyber``/``wmdp_chem`` and ``mmlu`` tasks score real models
  utility-style through the utility suite, independently of this loader.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Sequence

from bench.benchmark import Benchmark, BenchmarkError, QAItem
from bench.benign import with_instructions
from bench.benchmarks._rows import LETTERS, Rows, lettered_question, load_file, load_rows, require
from bench.settings import is_int

SUBSETS = ("wmdp-bio", "wmdp-cyber", "wmdp-chem")
FIELDS = ("question", "choices", "answer")


def _subset_items(rows: Rows, subset: str, split: str) -> list[QAItem]:
    items = []
    for i, row in enumerate(rows.rows):
        choices, answer = row["choices"], row["answer"]
        if not (isinstance(choices, list) and len(choices) >= 2 and all(isinstance(c, str) for c in choices)):
            raise BenchmarkError(f"{rows.source}: row {i}: field 'choices' must be a list of >= 2 strings, got {choices!r}")
        if not is_int(answer) or not 0 <= answer < len(choices):
            raise BenchmarkError(f"{rows.source}: row {i}: field 'answer' must index 'choices' (0..{len(choices) - 1}), "
                                 f"got {answer!r}")
        letters = tuple(LETTERS[: len(choices)])
        items.append(QAItem(id=f"{subset}/{i}", group=f"{subset}/{i}", split=split, relation=subset,
                            question=lettered_question(row["question"], choices), answer=letters[answer], paraphrase="",
                            perturbed=tuple(x for j, x in enumerate(letters) if j != answer), options=letters,
                            answer_index=answer))
    return items


def _corpus(path: str | None) -> list[str]:
    if path is None:
        return []
    rows = load_file(path)
    require(rows, ("text",))
    return [r["text"] for r in rows.rows]


def load_wmdp(path: str | None = "cais/wmdp", data_dir: str | None = None, split: str = "test",
              forget_subsets: Sequence[str] = ("wmdp-bio",), retain_subsets: Sequence[str] = ("wmdp-cyber",),
              holdout_fraction: float = 0.1, max_per_subset: int | None = None, forget_corpus: str | None = None,
              retain_corpus: str | None = None, prompt_template: str = "Question: {question}\nAnswer:",
              instructions: str | None = None) -> Benchmark:
    """WMDP as a ``Benchmark`` (see the module docstring).

    forget_subsets / retain_subsets: disjoint lists from wmdp-bio, wmdp-cyber, wmdp-chem (local
    files ``<data_dir>/<subset>.json``). holdout_fraction in [0, 1). forget_corpus /
    retain_corpus: local jsonl files with a ``text`` field (cais/wmdp-corpora's schema), or null.
    instructions: the benign attack's Alpaca-style .jsonl (``bench.benign``); null: generated offline.
    """
    for name, subsets in (("forget_subsets", forget_subsets), ("retain_subsets", retain_subsets)):
        if not subsets or any(s not in SUBSETS for s in subsets):
            raise BenchmarkError(f"benchmark.{name}={list(subsets)!r}: give one or more of {SUBSETS}")
    both = sorted(set(forget_subsets) & set(retain_subsets))
    if both:
        raise BenchmarkError(f"benchmark.forget_subsets and benchmark.retain_subsets share {both}: forget and retain "
                             "would overlap; list each subset on one side only")
    if not 0 <= holdout_fraction < 1:
        raise BenchmarkError(f"benchmark.holdout_fraction={holdout_fraction} must be in [0, 1)")
    if max_per_subset is not None and (not is_int(max_per_subset) or max_per_subset < 1):
        raise BenchmarkError(f"benchmark.max_per_subset={max_per_subset!r} must be null or an integer >= 1")

    def subset_rows(subset: str) -> Rows:
        rows = load_rows(path, subset, split, data_dir)
        require(rows, FIELDS)
        return Rows(rows.rows[:max_per_subset] if max_per_subset else rows.rows, rows.source)

    items: list[QAItem] = []
    for subset in forget_subsets:
        sub = _subset_items(subset_rows(subset), subset, "forget")
        n_hold = min(math.floor(holdout_fraction * len(sub) + 0.5), len(sub) - 1)  # keep >= 1 to forget
        items += sub[: len(sub) - n_hold] + [replace(it, split="holdout") for it in sub[len(sub) - n_hold:]]
    for subset in retain_subsets:
        items += _subset_items(subset_rows(subset), subset, "retain")
    try:
        return with_instructions(Benchmark(name="wmdp", items=items, prompt_template=prompt_template,
                                           forget_text=_corpus(forget_corpus), general_text=_corpus(retain_corpus)), instructions)
    except BenchmarkError as e:
        raise BenchmarkError(f"WMDP ({data_dir or path}): {e}") from None
