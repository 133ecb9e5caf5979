"""ScienceQA (Lu et al. 2022; hub ``derek-thomas/ScienceQA``) in the MRP paper's setting.

Fields read (the real dataset's): question, choices (list), answer (index into choices), hint,
image, subject, topic. MRP (arXiv 2508.15449, public code) unlearns natural-science topics
(chemistry, biology, physics, earth-science, one continual request each) and keeps every other
subject (social and language science), as letter-answer multiple choice.

Mapping onto the harness:
- Questions with an image are dropped (a text-only model cannot answer them); so are questions
  whose number of choices is not ``n_choices`` (one k keeps chance at 1/k; MRP's code handles
  A–D only). Natural-science questions of topics not in ``forget_topics`` are not used.
- forget = the ``forget_topics`` questions, topic by topic in the listed order (so
  ``continual.requests=len(forget_topics)`` with an equal ``max_per_topic`` gives one topic per
  request); holdout = the last ``holdout_fraction`` of each forget topic (never trained: the
  membership-inference reference); retain = the other subjects (at most ``max_retain``).
- Each question is its own group (facts are independent). The question shown is the hint
  (if ``include_hint``), the question and "(A) ..." lines; the answer is the letter; options are
  the letters; perturbed answers are the wrong letters. No paraphrases exist: the paraphrase
  views are not scored.
"""

from __future__ import annotations

import math
from typing import Sequence

from bench.benchmark import Benchmark, BenchmarkError, QAItem
from bench.benign import with_instructions
from bench.benchmarks._rows import LETTERS, Rows, lettered_question, load_rows, require
from bench.settings import is_int

FIELDS = ("question", "choices", "answer", "subject", "topic")
MRP_TOPICS = ("chemistry", "biology", "physics", "earth-science")


def _check_row(rows: Rows, i: int, n_choices: int) -> bool:
    """True if row i is usable (text-only, n_choices choices); raises on a malformed row."""
    row = rows.rows[i]
    choices, answer = row["choices"], row["answer"]
    if not (isinstance(choices, list) and all(isinstance(c, str) for c in choices)):
        raise BenchmarkError(f"{rows.source}: row {i}: field 'choices' must be a list of strings, got {choices!r}")
    if not is_int(answer) or not 0 <= answer < len(choices):
        raise BenchmarkError(f"{rows.source}: row {i}: field 'answer' must index 'choices' (0..{len(choices) - 1}), "
                             f"got {answer!r}")
    return not row.get("image") and len(choices) == n_choices


def load_scienceqa(path: str | None = "derek-thomas/ScienceQA", data_dir: str | None = None, split: str = "train",
                   forget_topics: Sequence[str] = MRP_TOPICS, n_choices: int = 4, max_per_topic: int | None = None,
                   max_retain: int | None = None, holdout_fraction: float = 0.1, include_hint: bool = True,
                   prompt_template: str = "Question: {question}\nAnswer:", instructions: str | None = None) -> Benchmark:
    """ScienceQA as a ``Benchmark`` (see the module docstring).

    split: dataset split (local file ``<data_dir>/<split>.json``). forget_topics: natural-science
    topics to forget, in request order. n_choices: keep questions with exactly this many choices
    (2..5). max_per_topic / max_retain: first N usable questions per forget topic / of retain
    (None: all). holdout_fraction: share of each forget topic held out, in [0, 1).
    instructions: the benign attack's Alpaca-style .jsonl (``bench.benign``); null: generated offline.
    """
    if not forget_topics:
        raise BenchmarkError("benchmark.forget_topics is empty; list natural-science topics, e.g. [chemistry, biology]")
    if not is_int(n_choices) or not 2 <= n_choices <= 5:
        raise BenchmarkError(f"benchmark.n_choices={n_choices!r}: use an integer from 2 to 5 (ScienceQA has 2-5 choices)")
    if not 0 <= holdout_fraction < 1:
        raise BenchmarkError(f"benchmark.holdout_fraction={holdout_fraction} must be in [0, 1)")
    for name, v in (("max_per_topic", max_per_topic), ("max_retain", max_retain)):
        if v is not None and (not is_int(v) or v < 1):
            raise BenchmarkError(f"benchmark.{name}={v!r} must be null or an integer >= 1")
    rows = load_rows(path, None, split, data_dir, file_stem=split)
    require(rows, FIELDS)
    usable = [i for i in range(len(rows.rows)) if _check_row(rows, i, n_choices)]

    def item(i: int, split_name: str) -> QAItem:
        row = rows.rows[i]
        letters = tuple(LETTERS[:n_choices])
        question = lettered_question(row["question"], row["choices"], (row.get("hint") or "") if include_hint else "")
        return QAItem(id=f"sqa/{i}", group=f"sqa/{i}", split=split_name, relation=row["topic"], question=question,
                      answer=letters[row["answer"]], paraphrase="",
                      perturbed=tuple(x for j, x in enumerate(letters) if j != row["answer"]), options=letters,
                      answer_index=row["answer"])

    items: list[QAItem] = []
    for topic in forget_topics:
        chosen = [i for i in usable if rows.rows[i]["subject"] == "natural science" and rows.rows[i]["topic"] == topic]
        chosen = chosen[:max_per_topic] if max_per_topic else chosen
        if not chosen:
            raise BenchmarkError(f"{rows.source}: no text-only natural-science question with {n_choices} choices on "
                                 f"topic {topic!r}; check benchmark.forget_topics and benchmark.n_choices")
        n_hold = min(math.floor(holdout_fraction * len(chosen) + 0.5), len(chosen) - 1)  # keep >= 1 to forget
        items += [item(i, "forget") for i in chosen[: len(chosen) - n_hold]]
        items += [item(i, "holdout") for i in chosen[len(chosen) - n_hold:]]
    retain = [i for i in usable if rows.rows[i]["subject"] != "natural science"]
    items += [item(i, "retain") for i in (retain[:max_retain] if max_retain else retain)]
    try:
        return with_instructions(Benchmark(name="scienceqa", items=items, prompt_template=prompt_template), instructions)
    except BenchmarkError as e:
        raise BenchmarkError(f"ScienceQA ({rows.source}): {e}") from None
