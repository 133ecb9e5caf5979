"""TOFU (Maini et al. 2024; hub ``locuslab/TOFU``) as a harness benchmark, scored as OpenUnlearning does.

Dataset configs read (field names are the real dataset's):
- ``full``: question, answer. 200 fictitious authors × 20 questions in author order; it fixes
  each question's author (row // ``questions_per_author``), the group every split is cut by.
- ``<forget_split>_perturbed`` (forget01/05/10) and ``retain_perturbed``: question, answer,
  paraphrased_answer, perturbed_answer (list), and ``paraphrased_question`` where present.
- ``retain90/95/99`` (the complement of the forget split): question, answer; only used to check
  that every retain_perturbed row belongs to the retain side.
- ``holdout01/05/10``: question, answer; authors never trained (membership-inference reference).
- ``real_authors_perturbed``, ``world_facts_perturbed``: question, answer, perturbed_answer.

Mapping onto the harness (state of the mapping, not of TOFU):
- forget = the forget split's rows; retain = ``retain_perturbed`` (the 400 rows OpenUnlearning
  scores retain metrics on). The other retain90 rows are not loaded: the harness trains and
  scores the same retain items, and TOFU ships perturbed answers only for retain_perturbed. So
  the harness's target learns forget + retain_perturbed authors (+ general facts), not all 200.
- holdout = holdout authors as answer-only items (no perturbed answers exist for them): em,
  answer_prob, ROUGE and the privacy suite's Min-K% AUC, no mcq or truth ratio.
- general = real authors + world facts (relations ``real_authors`` / ``world_facts``). The
  harness trains the general split into target and oracle alike; TOFU relies on pretraining.
- Truth ratio: P(perturbed) / P(paraphrased answer), length-normalised, perturbed side averaged
  over all perturbed answers (OpenUnlearning's forget/retain ``Truth_Ratio``; real authors and
  world facts use the answer itself, having no paraphrase). ``metric_protocol = "tofu"`` makes
  model utility OpenUnlearning's 9-part harmonic mean (bench/suites/knowledge.py).
- Multiple choice (TOFU has none): options = the answer plus the first ``n_options − 1``
  perturbed answers, the answer at a fixed, id-derived position; chance = 1/``n_options``.
  mcq_acc drives the harness's stopping rule; it is not a TOFU metric.
"""

from __future__ import annotations

import logging
from bench.benchmark import Benchmark, BenchmarkError, QAItem
from bench.benign import with_instructions
from bench.benchmarks._rows import Rows, as_list, load_rows, options_with_gold, require
from bench.settings import is_int

log = logging.getLogger(__name__)

FORGET_SPLITS = ("forget01", "forget05", "forget10")
PERTURBED_FIELDS = ("question", "answer", "paraphrased_answer", "perturbed_answer")


def _paraphrases(rows: Rows) -> list[str]:
    """``paraphrased_question`` per row if every row has one, else '' for all (view skipped, logged)."""
    values = [r.get("paraphrased_question") for r in rows.rows]
    if all(isinstance(v, str) and v.strip() for v in values):
        return values
    log.warning("%s: no paraphrased_question on every row; the paraphrased-question view is not scored", rows.source)
    return [""] * len(values)


def _item(rows: Rows, i: int, *, split: str, group: str, relation: str, n_options: int,
          paraphrase: str = "", paraphrased_answer: str = "") -> QAItem:
    """One multiple-choice item from row ``i``; a bad row raises naming the file and the row."""
    row = rows.rows[i]
    item_id = f"{relation}/{split}/{i}"
    perturbed = as_list(row["perturbed_answer"])
    # Options need distinct wrong answers; the truth ratio keeps every perturbed answer as given (as TOFU does).
    wrong = list(dict.fromkeys(p for p in perturbed if p != row["answer"]))
    if len(wrong) < n_options - 1:
        raise BenchmarkError(f"{rows.source}: row {i} has {len(wrong)} distinct perturbed answers other than the "
                             f"answer, fewer than n_options - 1 = {n_options - 1}; lower benchmark.n_options")
    options, index = options_with_gold(item_id, row["answer"], wrong, n_options)
    try:
        return QAItem(id=item_id, group=group, split=split, relation=relation, question=row["question"],
                      answer=row["answer"], paraphrase=paraphrase, perturbed=tuple(perturbed), options=options,
                      answer_index=index, paraphrased_answer=paraphrased_answer)
    except Exception as e:  # noqa: BLE001 - a bad value or type in the data: say which file and row
        raise BenchmarkError(f"{rows.source}: row {i}: {e}") from None


def _author_items(rows: Rows, split: str, author_of: dict[str, int], full_source: str, n_options: int) -> list[QAItem]:
    paraphrases = _paraphrases(rows)
    items = []
    for i, row in enumerate(rows.rows):
        if row["question"] not in author_of:
            raise BenchmarkError(f"{rows.source}: row {i} question {row['question'][:60]!r} is not in {full_source}; "
                                 "the author of every forget and retain question comes from the 'full' config")
        items.append(_item(rows, i, split=split, group=f"author{author_of[row['question']]:03d}", relation="tofu",
                           n_options=n_options, paraphrase=paraphrases[i], paraphrased_answer=row["paraphrased_answer"]))
    return items


def load_tofu(forget_split: str = "forget10", path: str | None = "locuslab/TOFU", data_dir: str | None = None,
              n_options: int = 4, questions_per_author: int = 20, max_new_tokens: int = 200,
              prompt_template: str = "Question: {question}\nAnswer:", instructions: str | None = None) -> Benchmark:
    """TOFU as a ``Benchmark`` (see the module docstring for the mapping).

    forget_split: forget01 / forget05 / forget10 (retain and holdout follow: retain99/95/90, holdout01/05/10).
    path: hub dataset; data_dir: a local folder with ``<config>.json`` files of the same schema instead.
    n_options: multiple-choice options per item (answer + n_options − 1 perturbed answers), 2..6.
    questions_per_author: rows per author in ``full`` (TOFU: 20); fixes the author groups.
    max_new_tokens: greedy-generation budget for ROUGE (OpenUnlearning generates up to 200).
    instructions: the benign attack's Alpaca-style .jsonl (``bench.benign``); null: generated offline.
    """
    if forget_split not in FORGET_SPLITS:
        raise BenchmarkError(f"benchmark.forget_split={forget_split!r}: use one of {FORGET_SPLITS}")
    if not is_int(n_options) or not 2 <= n_options <= 6:
        raise BenchmarkError(f"benchmark.n_options={n_options!r}: use an integer from 2 to 6 (TOFU has 5 perturbed answers)")
    if not is_int(questions_per_author) or questions_per_author < 1:
        raise BenchmarkError(f"benchmark.questions_per_author={questions_per_author!r} must be an integer >= 1 (TOFU: 20)")
    pct = int(forget_split[-2:])

    def rows(name: str, fields: tuple[str, ...], list_fields: tuple[str, ...] = ()) -> Rows:
        r = load_rows(path, name, "train", data_dir)
        require(r, fields, list_fields)
        return r

    full = rows("full", ("question", "answer"))
    author_of: dict[str, int] = {}
    for i, row in enumerate(full.rows):
        author_of.setdefault(row["question"], i // questions_per_author)
    forget = rows(f"{forget_split}_perturbed", PERTURBED_FIELDS, ("perturbed_answer",))
    retain = rows("retain_perturbed", PERTURBED_FIELDS, ("perturbed_answer",))
    retain_set = rows(f"retain{100 - pct:02d}", ("question", "answer"))
    holdout = rows(f"holdout{pct:02d}", ("question", "answer"))
    general = {rel: rows(f"{rel}_perturbed", ("question", "answer", "perturbed_answer"), ("perturbed_answer",))
               for rel in ("real_authors", "world_facts")}

    retain_questions = {r["question"] for r in retain_set.rows}
    outside = [i for i, r in enumerate(retain.rows) if r["question"] not in retain_questions]
    if outside:
        raise BenchmarkError(f"{retain.source}: rows {outside[:5]} are not in {retain_set.source}: retain_perturbed "
                             f"must lie on the retain side of {forget_split}")
    items = (_author_items(forget, "forget", author_of, full.source, n_options)
             + _author_items(retain, "retain", author_of, full.source, n_options))
    shared = sorted({it.group for it in items if it.split == "forget"} & {it.group for it in items if it.split == "retain"})
    if shared:
        raise BenchmarkError(f"authors {shared[:5]} have questions in both {forget.source} and {retain.source}: "
                             "forget and retain overlap. Use the matching forgetNN/retainNN files.")
    for i, row in enumerate(holdout.rows):
        items.append(QAItem(id=f"holdout/{i}", group=f"holdout_author{i // questions_per_author:03d}", split="holdout",
                            relation="tofu", question=row["question"], answer=row["answer"], paraphrase="",
                            perturbed=(), options=(), answer_index=-1))
    for rel, r in general.items():
        items += [_item(r, i, split="general", group=f"{rel}/{i}", relation=rel, n_options=n_options)
                  for i in range(len(r.rows))]
    try:
        return with_instructions(Benchmark(name=f"tofu_{forget_split}", items=items, prompt_template=prompt_template,
                                           max_new_tokens=max_new_tokens, metric_protocol="tofu"), instructions)
    except BenchmarkError as e:
        raise BenchmarkError(f"TOFU ({data_dir or path}): {e}") from None

