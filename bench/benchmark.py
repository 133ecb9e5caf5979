"""Typed QA items and the benchmark container every suite, method and loader shares.

A benchmark is a list of short-answer facts (``QAItem``), each in exactly one split, plus
free text the models also learn (``general_text``) and text they never see (``heldout_text``).
Splits are by group (person): a group never spans two splits, so forgetting one person's
facts cannot be undone by what the model keeps about another.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from bench.errors import UserError

SPLITS = ("forget", "retain", "holdout", "general")


class BenchmarkError(UserError):
    """Malformed benchmark data: the message names the file, the item and the fix."""


@dataclass(frozen=True)
class QAItem:
    """One fact: a question with a short answer, its phrasings, wrong answers and options.

    ``question`` is the phrasing the model is trained and scored on; ``train_questions`` are all
    trained phrasings (``question`` first); ``paraphrase`` is a held-out phrasing never trained
    (``""`` where a benchmark has none: the ``*_paraphrase`` views are then not scored).
    ``perturbed`` are wrong answers of the same type (truth ratio); ``options`` are the k
    multiple-choice options, ``options[answer_index] == answer``.

    ``paraphrased_answer`` (TOFU) is a rewording of the gold answer; where set, the truth ratio
    compares the perturbed answers with it instead of with ``answer``, as TOFU and OpenUnlearning
    do. An *answer-only* item has no ``perturbed`` and no ``options`` (``answer_index = -1``):
    only answer-based metrics (em, answer_prob, ROUGE, Min-K%) exist for it; TOFU's holdout
    authors are such items.
    """

    id: str
    group: str
    split: str
    relation: str
    question: str
    answer: str
    paraphrase: str
    perturbed: tuple[str, ...]
    options: tuple[str, ...]
    answer_index: int
    train_questions: tuple[str, ...] = ()
    paraphrased_answer: str = ""

    def __post_init__(self) -> None:
        if not self.train_questions:
            object.__setattr__(self, "train_questions", (self.question,))
        for name in ("perturbed", "options", "train_questions"):
            object.__setattr__(self, name, tuple(getattr(self, name)))

    @property
    def answer_only(self) -> bool:
        """No wrong answers and no options: truth ratio and forced choice do not exist for it."""
        return not self.perturbed and not self.options

    def validate(self, where: str = "") -> None:
        loc = f"{where}item {self.id!r}"
        if self.split not in SPLITS:
            raise BenchmarkError(f"{loc}: split {self.split!r} is not one of {SPLITS}")
        for name in ("id", "group", "question", "answer"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name).strip():
                raise BenchmarkError(f"{loc}: field {name!r} must be a non-empty string")
        for name in ("paraphrase", "paraphrased_answer"):
            value = getattr(self, name)
            if not isinstance(value, str) or (value and not value.strip()):
                raise BenchmarkError(f"{loc}: field {name!r} must be a string, non-blank where given ('' = none)")
        if self.question != self.train_questions[0]:
            raise BenchmarkError(f"{loc}: train_questions must start with 'question'")
        if self.answer_only:
            if self.answer_index != -1:
                raise BenchmarkError(f"{loc}: an answer-only item (no perturbed, no options) needs answer_index = -1")
            return
        if not self.perturbed:
            raise BenchmarkError(f"{loc}: field 'perturbed' needs at least one wrong answer")
        if self.answer in self.perturbed:
            raise BenchmarkError(f"{loc}: the gold answer also appears in 'perturbed'")
        if len(self.options) < 2 or len(set(self.options)) != len(self.options):
            raise BenchmarkError(f"{loc}: 'options' needs at least 2 distinct options")
        if not 0 <= self.answer_index < len(self.options) or self.options[self.answer_index] != self.answer:
            raise BenchmarkError(f"{loc}: options[answer_index] must equal the answer {self.answer!r}")

    @classmethod
    def from_dict(cls, raw: dict, where: str = "") -> "QAItem":
        names = {f.name for f in fields(cls)}
        required = names - {"train_questions", "paraphrased_answer"}
        missing = sorted(required - raw.keys())
        if missing:
            raise BenchmarkError(f"{where}missing required field(s) {missing}; each item needs {sorted(required)}")
        unknown = sorted(raw.keys() - names)
        if unknown:
            raise BenchmarkError(f"{where}unknown field(s) {unknown}; allowed: {sorted(names)}")
        for name in ("perturbed", "options", "train_questions"):
            if name in raw and not (isinstance(raw[name], list) and all(isinstance(v, str) for v in raw[name])):
                raise BenchmarkError(f"{where}field {name!r} must be a list of strings, got {raw[name]!r}")
        if isinstance(raw["answer_index"], bool) or not isinstance(raw["answer_index"], int):
            raise BenchmarkError(f"{where}field 'answer_index' must be an integer, got {raw['answer_index']!r}")
        item = cls(**raw)
        item.validate(where)
        return item


#: How the knowledge suite aggregates model utility (see bench/suites/knowledge.py).
METRIC_PROTOCOLS = ("harness", "tofu")


@dataclass
class Benchmark:
    """Items by split plus the free text models learn. ``n_options`` fixes MCQ chance = 1/k.

    ``general_text`` is learned by target and oracle; ``forget_text`` (e.g. WMDP's forget
    corpus) by the target only; ``heldout_text`` by neither. ``max_new_tokens`` bounds greedy
    generation (ROUGE): 8 suits one-word answers, sentence answers (TOFU) need more.
    ``metric_protocol``: ``harness`` pools the general split into model utility; ``tofu`` scores
    each relation of the general split (real authors, world facts) separately with an
    option-normalised answer probability, as OpenUnlearning's 9-part model utility does.
    ``membership_text`` (MUSE's privleak sets): passages by split (forget and holdout required,
    retain optional) that the privacy suite scores whole instead of the QA items; empty = score the items.
    ``instructions``: (instruction, response) pairs unrelated to every fact, learned by no model: the
    benign relearning attack's data (``bench.benign``; empty: that attack has no data here).
    """

    name: str
    items: list[QAItem]
    general_text: list[str] = field(default_factory=list)
    heldout_text: list[str] = field(default_factory=list)
    prompt_template: str = "Question: {question}\nAnswer:"
    forget_text: list[str] = field(default_factory=list)
    max_new_tokens: int = 8
    metric_protocol: str = "harness"
    membership_text: dict[str, list[str]] = field(default_factory=dict)
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.validate()

    # -- views --------------------------------------------------------------------------
    def split(self, name: str) -> list[QAItem]:
        if name not in SPLITS:
            raise KeyError(f"unknown split {name!r}; splits are {SPLITS}")
        return [it for it in self.items if it.split == name]

    @property
    def n_options(self) -> int:
        return len(next(it for it in self.items if not it.answer_only).options)

    @property
    def chance(self) -> float:
        return 1.0 / self.n_options

    def groups(self, split: str) -> list[str]:
        """Group ids of a split in first-seen order (stable, used to cut folds and requests)."""
        return list(dict.fromkeys(it.group for it in self.split(split)))

    def prompt(self, question: str) -> str:
        return self.prompt_template.format(question=question)

    def instruction_prompt(self, instruction: str) -> str:
        """The prompt of a benign instruction example (Alpaca's layout, without its preamble)."""
        return f"Instruction: {instruction}\nResponse:"

    # -- checks -------------------------------------------------------------------------
    def validate(self, where: str = "") -> None:
        if not self.items:
            raise BenchmarkError(f"{where}benchmark {self.name!r} has no items")
        ids = [it.id for it in self.items]
        if len(set(ids)) != len(ids):
            dup = sorted({i for i in ids if ids.count(i) > 1})[:5]
            raise BenchmarkError(f"{where}duplicate item ids {dup}; ids must be unique")
        for it in self.items:
            it.validate(where)
        for s in ("forget", "retain"):
            bare = [it.id for it in self.split(s) if it.answer_only]
            if bare:
                raise BenchmarkError(f"{where}{s} items {bare[:3]} have no perturbed answers or options; forget and "
                                     "retain items need them (stopping rule, truth ratio, attacks)")
        for s in SPLITS:
            kinds = {it.answer_only for it in self.split(s)}
            if len(kinds) > 1:
                raise BenchmarkError(f"{where}split {s!r} mixes answer-only items with multiple-choice items; "
                                     "give every item of a split options and perturbed answers, or none")
        for s in SPLITS:
            if len({bool(it.paraphrase) for it in self.split(s)}) > 1:
                raise BenchmarkError(f"{where}split {s!r}: some items have a 'paraphrase' and some do not; "
                                     "give every item of a split one, or none (its paraphrase view is then skipped)")
        if self.metric_protocol not in METRIC_PROTOCOLS:
            raise BenchmarkError(f"{where}metric_protocol {self.metric_protocol!r} is not one of {METRIC_PROTOCOLS}")
        if self.metric_protocol == "tofu" and (not self.split("general") or self.split("general")[0].answer_only):
            raise BenchmarkError(f"{where}metric_protocol 'tofu' scores model utility on the general split's relations "
                                 "(real authors, world facts): it needs general items with perturbed answers")
        for i, pair in enumerate(self.instructions):
            if (not isinstance(pair, (tuple, list)) or len(pair) != 2
                    or not all(isinstance(t, str) and t.strip() for t in pair)):
                raise BenchmarkError(f"{where}instructions[{i}] must be an (instruction, response) pair of non-empty strings")
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise BenchmarkError(f"{where}max_new_tokens must be an integer >= 1, got {self.max_new_tokens!r}")
        for s in ("forget", "retain"):
            if not self.split(s):
                raise BenchmarkError(f"{where}split {s!r} is empty; unlearning needs forget and retain items")
        k = self.n_options  # forget items always have options (checked above)
        for it in self.items:
            if not it.answer_only and len(it.options) != k:
                raise BenchmarkError(f"{where}item {it.id!r} has {len(it.options)} options, others have {k}: "
                                     "use the same number of options everywhere (chance = 1/k)")
        self._validate_membership_text(where)
        owner: dict[str, str] = {}
        for it in self.items:
            prev = owner.setdefault(it.group, it.split)
            if prev != it.split:
                raise BenchmarkError(
                    f"{where}group {it.group!r} appears in splits {prev!r} and {it.split!r}; splits overlap. "
                    "Assign each group (person) to exactly one split.")

    def _validate_membership_text(self, where: str) -> None:
        if not self.membership_text:
            return
        allowed = ("forget", "retain", "holdout")
        unknown = sorted(set(self.membership_text) - set(allowed))
        if unknown:
            raise BenchmarkError(f"{where}membership_text has split(s) {unknown}; use {list(allowed)}")
        for s in ("forget", "holdout"):
            if not self.membership_text.get(s):
                raise BenchmarkError(f"{where}membership_text needs non-empty 'forget' (members) and 'holdout' "
                                     f"(non-members) passages; {s!r} is missing or empty")
        seen: dict[str, str] = {}
        for s, texts in self.membership_text.items():
            for i, t in enumerate(texts):
                if not isinstance(t, str) or not t.strip():
                    raise BenchmarkError(f"{where}membership_text[{s!r}][{i}] must be a non-blank string")
                prev = seen.setdefault(t, s)
                if prev != s:
                    raise BenchmarkError(f"{where}membership_text: passage {t[:50]!r} is in both {prev!r} and {s!r}; "
                                         "members and non-members overlap. Keep each passage in one split.")

    def scored_sequences(self) -> list[tuple[str, str, int]]:
        """(description, text, tokens generated after it) of the free texts scored besides the QA items;
        ``bench.data.check_lengths`` checks them against the model's positions. A benchmark with its
        own evaluation prompts (MUSE) adds them."""
        return [(f"membership_text[{s!r}][{i}]", t, 1) for s, texts in self.membership_text.items()
                for i, t in enumerate(texts)]

    # -- files --------------------------------------------------------------------------
    def to_json(self, path: str | Path) -> None:
        data = {"name": self.name, "prompt_template": self.prompt_template,
                "general_text": self.general_text, "heldout_text": self.heldout_text,
                "forget_text": self.forget_text, "max_new_tokens": self.max_new_tokens,
                "metric_protocol": self.metric_protocol, "membership_text": self.membership_text,
                "instructions": [{"instruction": i, "response": r} for i, r in self.instructions],
                "items": [asdict(it) for it in self.items]}
        Path(path).write_text(json.dumps(data, indent=1))

    @classmethod
    def from_json(cls, path: str | Path) -> "Benchmark":
        path = Path(path)
        if not path.exists():
            raise BenchmarkError(f"benchmark file {path} does not exist")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise BenchmarkError(f"benchmark file {path} is not valid JSON (line {e.lineno}, column {e.colno}): "
                                 f"{e.msg}. Fix the file or regenerate it.") from None
        if not isinstance(data, dict) or not isinstance(data.get("items"), list):
            raise BenchmarkError(f"benchmark file {path}: expected an object with a list under 'items'")
        items = []
        for i, raw in enumerate(data["items"]):
            if not isinstance(raw, dict):
                raise BenchmarkError(f"{path}: items[{i}] is not an object")
            items.append(QAItem.from_dict(raw, where=f"{path}: items[{i}]: "))
        try:
            return cls(name=data.get("name", path.stem), items=items,
                       general_text=list(data.get("general_text", [])),
                       heldout_text=list(data.get("heldout_text", [])),
                       prompt_template=data.get("prompt_template", cls.prompt_template),
                       forget_text=list(data.get("forget_text", [])),
                       max_new_tokens=data.get("max_new_tokens", cls.max_new_tokens),
                       metric_protocol=data.get("metric_protocol", cls.metric_protocol),
                       membership_text={k: list(v) for k, v in data.get("membership_text", {}).items()},
                       instructions=_instruction_pairs(data.get("instructions", []), path))
        except BenchmarkError as e:
            raise BenchmarkError(f"{path}: {e}") from None


def _instruction_pairs(rows, path: Path) -> list[tuple[str, str]]:
    if not isinstance(rows, list) or not all(isinstance(r, dict) and set(r) == {"instruction", "response"} for r in rows):
        raise BenchmarkError(f"benchmark file {path}: 'instructions' must be a list of objects with exactly the keys "
                             "'instruction' and 'response'")
    return [(r["instruction"], r["response"]) for r in rows]
