"""MUSE (Shi et al. 2024; hub ``muse-bench/MUSE-News`` and ``MUSE-Books``) from local files in MUSE's layout.

Files read, as MUSE's ``load_data.py`` writes them under ``data/<corpus>/`` (``data_dir`` points at that
folder); field names are the real dataset's:
- ``raw/forget.txt``, ``raw/retain1.txt``, ``raw/retain2.txt``, ``raw/holdout.txt``: the corpora, passages
  joined by a blank line ("\\n\\n"), split back into passages on blank lines;
- ``verbmem/forget.json``: list of ``{"prompt", "gt"}`` (a forget-passage prefix and its true continuation);
- ``knowmem/forget_qa.json``, ``knowmem/retain_qa.json`` and the few-shot ``knowmem/forget_qa_icl.json``,
  ``knowmem/retain_qa_icl.json``: lists of ``{"question", "answer"}``;
- ``privleak/forget.json``, ``privleak/retain.json``, ``privleak/holdout.json``: lists of passages.

Mapping onto the harness (state of the mapping, not of MUSE):
- The target learns the forget corpus (``forget_text``, target only), retain1 + retain2 (``general_text``,
  target and oracle) and the knowmem QA pairs; the oracle (MUSE's retrained model) everything but the
  forget corpus and the forget QA. raw/holdout is never trained (``heldout_text``). MUSE fine-tunes a
  pretrained Llama on the corpora only and asks the QA as a test of what the text taught; the harness's
  models are trained from scratch, so they are taught the QA pairs too (a 2-layer model does not
  answer questions about text it read). Knowledge-suite rows on split forget are therefore a
  harness-side view; the MUSE numbers are the ``muse`` suite's rows and ``privleak@mink``.
- forget / retain items = knowmem forget_qa / retain_qa, one group per question. MUSE has no wrong
  answers: the options (and the truth ratio's "perturbed" answers) are the answers of the next
  ``n_options − 1`` distinct questions of the same file, cyclically; forced choice over them exists
  only for the harness's stopping rule (chance 1/n_options) and is not a MUSE metric.
- No holdout or general QA items. The privacy suite scores MUSE's privleak passages whole
  (``Benchmark.membership_text``): ``privleak@mink`` on split forget is MUSE's PrivLeak (Min-40%,
  forget vs holdout, normalised by the oracle's AUC on the same passages, where MUSE uses its
  retrained model's published AUC).
- VerbMem and KnowMem: the ``muse`` suite (bench/suites/muse.py), from ``verbmem`` and the ICL files.

Before any compute the loader rejects a missing file, invalid JSON, an empty file, a row missing a
field (naming the file, the row and the field) and overlapping splits (a knowmem question in both
forget and retain, a passage in two privleak sets, a holdout passage that is also trained).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from bench.benchmark import Benchmark, BenchmarkError, QAItem
from bench.benchmarks._rows import options_with_gold
from bench.settings import is_int

CORPORA = ("news", "books")
RAW = ("forget", "retain1", "retain2", "holdout")
PRIVLEAK = ("forget", "retain", "holdout")
# MUSE's KnowMem prompt and the strings its answers are cut at (metrics/knowmem.py).
KNOWMEM_STOP = ("\n\n", "\nQuestion", "Question:")


def knowmem_prompt(icl: list[tuple[str, str]], question: str) -> str:
    """MUSE's KnowMem prompt: the few-shot pairs, then the question (note the space after "Answer:")."""
    shots = "".join(f"Question: {q}\nAnswer: {a}\n\n" for q, a in icl)
    return shots + f"Question: {question}\nAnswer: "


@dataclass
class MuseBenchmark(Benchmark):
    """A ``Benchmark`` plus what the ``muse`` suite scores: VerbMem's (prompt, gt) pairs, KnowMem's
    few-shot pairs per split, and MUSE's generation budgets."""

    verbmem: list[tuple[str, str]] = field(default_factory=list)
    knowmem_icl: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    verbmem_max_new_tokens: int = 128
    knowmem_max_new_tokens: int = 32

    def scored_sequences(self) -> list[tuple[str, str, int]]:
        seqs = super().scored_sequences()
        # VerbMem generates after the prompt and scores prompt + " " + gt teacher-forced (extraction strength).
        seqs += [(f"verbmem[{i}] prompt", p, self.verbmem_max_new_tokens) for i, (p, _) in enumerate(self.verbmem)]
        seqs += [(f"verbmem[{i}] prompt + gt", f"{p} {g}", 1) for i, (p, g) in enumerate(self.verbmem)]
        for split, icl in self.knowmem_icl.items():
            seqs += [(f"knowmem {split} prompt of {it.id!r}", knowmem_prompt(icl, it.question),
                      self.knowmem_max_new_tokens) for it in self.split(split)]
        return seqs


def _read_json(path: Path) -> list:
    if not path.is_file():
        raise BenchmarkError(f"{path} does not exist; benchmark.data_dir must hold MUSE's layout "
                             "(raw/, verbmem/, knowmem/, privleak/ as MUSE's load_data.py writes them)")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise BenchmarkError(f"{path} is not valid JSON (line {e.lineno}, column {e.colno}): {e.msg}") from None
    if not isinstance(data, list):
        raise BenchmarkError(f"{path}: expected a JSON list, got {type(data).__name__}")
    if not data:
        raise BenchmarkError(f"{path} is empty; MUSE files hold at least one entry")
    return data


def _text(value, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise BenchmarkError(f"{where} must be a non-blank string, got {value!r}")
    return value


def _pairs(path: Path, keys: tuple[str, str]) -> list[tuple[str, str]]:
    out = []
    for i, row in enumerate(_read_json(path)):
        if not isinstance(row, dict):
            raise BenchmarkError(f"{path}: row {i} is not an object with fields {list(keys)}")
        missing = [k for k in keys if k not in row]
        if missing:
            raise BenchmarkError(f"{path}: row {i} is missing required field {missing[0]!r} (it has {sorted(row)}); "
                                 f"each row needs {list(keys)}")
        out.append(tuple(_text(row[k], f"{path}: row {i}: field {k!r}") for k in keys))
    return out


def _passages(path: Path) -> list[str]:
    """A JSON list of passages (privleak)."""
    return [_text(t, f"{path}: entry {i}") for i, t in enumerate(_read_json(path))]


def _corpus(path: Path) -> list[str]:
    """A raw corpus: passages separated by blank lines, as MUSE's load_data.py joins them."""
    if not path.is_file():
        raise BenchmarkError(f"{path} does not exist; benchmark.data_dir must hold MUSE's raw/{{forget,retain1,"
                             "retain2,holdout}.txt")
    passages = [p.strip() for p in path.read_text().split("\n\n") if p.strip()]
    if not passages:
        raise BenchmarkError(f"{path} is empty; a MUSE corpus holds at least one passage")
    return passages


def _qa_items(pairs: list[tuple[str, str]], split: str, source: str, n_options: int) -> list[QAItem]:
    answers = [a for _, a in pairs]
    items = []
    for i, (q, a) in enumerate(pairs):
        # Distractors: the next distinct answers of the same file, cyclically (deterministic, of the same type).
        wrong = [w for w in dict.fromkeys(answers[(i + j) % len(answers)] for j in range(1, len(answers))) if w != a]
        if len(wrong) < n_options - 1:
            raise BenchmarkError(f"{source}: only {len(wrong)} distinct other answers to draw options from for row {i}; "
                                 f"need n_options - 1 = {n_options - 1}. Lower benchmark.n_options or add questions.")
        item_id = f"knowmem/{split}/{i}"
        options, index = options_with_gold(item_id, a, wrong, n_options)
        items.append(QAItem(id=item_id, group=item_id, split=split, relation="knowmem", question=q, answer=a,
                            paraphrase="", perturbed=tuple(wrong[: n_options - 1]), options=options, answer_index=index))
    return items


def load_muse(data_dir: str, corpus: str = "news", n_options: int = 4, max_new_tokens: int = 32,
              verbmem_max_new_tokens: int = 128, knowmem_max_new_tokens: int = 32,
              prompt_template: str = "Question: {question}\nAnswer:") -> MuseBenchmark:
    """MUSE from ``data_dir`` (MUSE's ``data/<corpus>`` folder; see the module docstring).

    corpus: news | books (the benchmark's name). n_options: forced-choice options per QA item (stopping
    rule only). max_new_tokens: the knowledge suite's generation budget. verbmem_max_new_tokens /
    knowmem_max_new_tokens: MUSE's budgets (128 / 32), also the length VerbMem's gt is cut to.
    """
    if corpus not in CORPORA:
        raise BenchmarkError(f"benchmark.corpus={corpus!r}: use one of {CORPORA}")
    for name, v in (("n_options", n_options), ("max_new_tokens", max_new_tokens),
                    ("verbmem_max_new_tokens", verbmem_max_new_tokens), ("knowmem_max_new_tokens", knowmem_max_new_tokens)):
        if not is_int(v) or v < (2 if name == "n_options" else 1):
            raise BenchmarkError(f"benchmark.{name}={v!r} must be an integer >= {2 if name == 'n_options' else 1}")
    root = Path(data_dir)
    if not root.is_dir():
        raise BenchmarkError(f"benchmark.data_dir={data_dir!r} is not a folder; point it at MUSE's data/{corpus} "
                             "(raw/, verbmem/, knowmem/, privleak/)")
    raw = {s: _corpus(root / "raw" / f"{s}.txt") for s in RAW}
    privleak = {s: _passages(root / "privleak" / f"{s}.json") for s in PRIVLEAK}
    verbmem = _pairs(root / "verbmem" / "forget.json", ("prompt", "gt"))
    qa = {s: _pairs(root / "knowmem" / f"{s}_qa.json", ("question", "answer")) for s in ("forget", "retain")}
    icl = {s: _pairs(root / "knowmem" / f"{s}_qa_icl.json", ("question", "answer")) for s in ("forget", "retain")}

    shared = sorted({q for q, _ in qa["forget"]} & {q for q, _ in qa["retain"]})
    if shared:
        raise BenchmarkError(f"{root / 'knowmem'}: question {shared[0][:60]!r} is in both forget_qa.json and "
                             "retain_qa.json; forget and retain overlap. Keep each question in one file.")
    trained = {p for s in ("forget", "retain1", "retain2") for p in raw[s]}
    leaked = [p for p in raw["holdout"] + privleak["holdout"] if p in trained]
    if leaked:
        raise BenchmarkError(f"{root}: holdout passage {leaked[0][:60]!r} is also in a trained corpus (raw/forget, "
                             "retain1 or retain2); holdout must never be trained. Remove it from one side.")
    items = (_qa_items(qa["forget"], "forget", str(root / "knowmem" / "forget_qa.json"), n_options)
             + _qa_items(qa["retain"], "retain", str(root / "knowmem" / "retain_qa.json"), n_options))
    try:
        return MuseBenchmark(name=f"muse_{corpus}", items=items, general_text=raw["retain1"] + raw["retain2"],
                             heldout_text=raw["holdout"], forget_text=raw["forget"], prompt_template=prompt_template,
                             max_new_tokens=max_new_tokens, membership_text=privleak, verbmem=verbmem,
                             knowmem_icl=icl, verbmem_max_new_tokens=verbmem_max_new_tokens,
                             knowmem_max_new_tokens=knowmem_max_new_tokens)
    except BenchmarkError as e:
        raise BenchmarkError(f"MUSE ({root}): {e}") from None
