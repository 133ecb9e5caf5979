"""The benign instruction corpus: Alpaca-style instruction/response pairs unrelated to any fact.

The Ssiuu paper's benign relearning attack (§6.1–6.2.2) fine-tunes the unlearned model on 1,000
Alpaca examples: data that cannot answer a single forget question. Alpaca cannot be downloaded
here, so every benchmark gets a stand-in generated offline from templates (arithmetic, word
sorting, opposites, plurals, letter counts, word reversal, past tense), deterministic from a
seed. An example that mentions any word of the benchmark's facts (a person's or entity's name,
any answer, option or perturbed answer) is dropped, so the corpus is disjoint from the facts by
construction (``tests/test_benign.py`` checks it). A real Alpaca file can replace it
(``benchmark.instructions=<file.jsonl>``, rows ``{"instruction", "input", "output"}``), validated by
``load_instructions``.

An example is trained as a QA pair: prompt ``Benchmark.instruction_prompt`` (one user turn under a
chat template), loss on the response and the end token only, as Alpaca fine-tuning does
(``bench.data.instruction_examples``).
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Iterable

from bench.benchmark import Benchmark, BenchmarkError, QAItem

DEFAULT_SIZE = 256  # examples; the attack's 50 steps x batch 8 see 400, the paper's 1,000 Alpaca rows are the same order

_OBJECTS = ("lamp", "spoon", "chair", "table", "window", "bottle", "pencil", "blanket", "kettle", "ladder",
            "bucket", "candle", "mirror", "pillow", "shovel", "hammer", "button", "ribbon", "carpet", "jacket",
            "wallet", "helmet", "saucer", "napkin", "teapot", "basket", "cushion", "lantern", "blender", "stapler")
_OPPOSITES = (("hot", "cold"), ("tall", "short"), ("early", "late"), ("full", "empty"), ("open", "closed"),
              ("light", "heavy"), ("fast", "slow"), ("wet", "dry"), ("loud", "quiet"), ("soft", "hard"),
              ("wide", "narrow"), ("thick", "thin"), ("happy", "sad"), ("clean", "dirty"), ("strong", "weak"),
              ("near", "far"), ("high", "low"), ("deep", "shallow"), ("sharp", "blunt"), ("first", "last"))
_PLURALS = (("box", "boxes"), ("glass", "glasses"), ("leaf", "leaves"), ("knife", "knives"), ("child", "children"),
            ("foot", "feet"), ("tooth", "teeth"), ("story", "stories"), ("bench", "benches"), ("shelf", "shelves"),
            ("berry", "berries"), ("woman", "women"), ("wish", "wishes"), ("half", "halves"), ("lady", "ladies"))
_PAST = (("opens", "opened"), ("cleans", "cleaned"), ("moves", "moved"), ("lifts", "lifted"), ("drops", "dropped"),
         ("fixes", "fixed"), ("paints", "painted"), ("washes", "washed"), ("carries", "carried"), ("finds", "found"),
         ("buys", "bought"), ("sells", "sold"), ("holds", "held"), ("breaks", "broke"), ("brings", "brought"))
_SUBJECTS = ("the child", "my friend", "the worker", "our guest", "the student", "a visitor", "the driver")


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


def _example(rng: random.Random) -> tuple[str, str]:
    task = rng.randrange(8)
    if task == 0:
        a, b = rng.randint(2, 49), rng.randint(2, 49)
        return f"Add {a} and {b}.", str(a + b)
    if task == 1:
        a, b = sorted(rng.sample(range(2, 60), 2), reverse=True)
        return f"Subtract {b} from {a}.", str(a - b)
    if task == 2:
        ws = rng.sample(_OBJECTS, 3)
        return f"Sort these words alphabetically: {', '.join(ws)}.", ", ".join(sorted(ws))
    if task == 3:
        pair = rng.choice(_OPPOSITES)
        w, opp = pair if rng.random() < 0.5 else pair[::-1]
        return f"Give the opposite of the word '{w}'.", opp
    if task == 4:
        w, pl = rng.choice(_PLURALS)
        return f"Write the plural of '{w}'.", pl
    if task == 5:
        w = rng.choice(_OBJECTS)
        return f"How many letters does the word '{w}' have?", str(len(w))
    if task == 6:
        ws = rng.sample(_OBJECTS, 3)
        return f"Reverse the order of these words: {' '.join(ws)}.", " ".join(reversed(ws))
    subject, (now, past), obj = rng.choice(_SUBJECTS), rng.choice(_PAST), rng.choice(_OBJECTS)
    return f"Rewrite in the past tense: {subject.capitalize()} {now} the {obj}.", f"{subject.capitalize()} {past} the {obj}."


def fact_words(items: Iterable[QAItem], extra: Iterable[str] = ()) -> set[str]:
    """Lower-case words of every answer, option and perturbed answer (plus ``extra``: names): what a benign
    example must never mention."""
    out = {w for it in items for text in (it.answer, *it.options, *it.perturbed, it.paraphrased_answer) for w in _words(text)}
    return out | {w for text in extra for w in _words(text)}


def generate_instructions(seed: int, n: int, exclude: set[str]) -> list[tuple[str, str]]:
    """``n`` distinct (instruction, response) pairs, none with a word in ``exclude``; deterministic from ``seed``."""
    rng = random.Random(f"{seed}/benign")
    out: list[tuple[str, str]] = []
    seen: set[tuple[str, str]] = set()
    for _ in range(100 * n + 1000):
        if len(out) == n:
            return out
        ex = _example(rng)
        if ex in seen or exclude.intersection(_words(" ".join(ex))):
            continue
        seen.add(ex)
        out.append(ex)
    raise BenchmarkError(f"could not generate {n} benign instructions disjoint from the benchmark's facts; "
                         "lower the number or supply a file (benchmark.instructions=<file.jsonl>)")


def load_instructions(path: str | Path) -> list[tuple[str, str]]:
    """An Alpaca-style JSONL file: one object per line with non-empty ``instruction`` and ``output`` and an
    optional ``input`` (appended to the instruction on a new line, as Alpaca's prompt does)."""
    path = Path(path)
    if not path.is_file():
        raise BenchmarkError(f"benchmark.instructions: {path} does not exist; give an Alpaca-style .jsonl file "
                             "(instruction, input, output) or null for the generated corpus")
    out = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise BenchmarkError(f"{path}: line {i} is not valid JSON ({e.msg}); one object per line") from None
        if not isinstance(row, dict):
            raise BenchmarkError(f"{path}: line {i} is not a JSON object")
        for key in ("instruction", "output"):
            if not isinstance(row.get(key), str) or not row[key].strip():
                raise BenchmarkError(f"{path}: line {i}: field {key!r} must be a non-empty string")
        extra = row.get("input", "")
        if not isinstance(extra, str):
            raise BenchmarkError(f"{path}: line {i}: field 'input' must be a string")
        out.append((row["instruction"] + (f"\n{extra}" if extra.strip() else ""), row["output"]))
    if not out:
        raise BenchmarkError(f"{path}: no instructions; the benign attack needs at least one")
    return out


def with_instructions(bench: Benchmark, instructions: str | None, seed: int = 0, n: int = DEFAULT_SIZE) -> Benchmark:
    """``bench`` with its benign corpus: from the file ``instructions``, or generated disjoint from its facts."""
    bench.instructions = (load_instructions(instructions) if instructions is not None
                          else generate_instructions(seed, n, fact_words(bench.items)))
    bench.validate()
    return bench
