"""FaithUn (Yang et al. 2025, arXiv 2502.19207), the Ssiuu paper's main benchmark (arXiv 2509.22263).

What is public (github.com/yny0506/faithun): FaithUnBench.json holds Wikidata facts about 200
people; each question of the ``hop1_unlearn`` category is a *cluster* with evaluation variants
(``hop1_test`` paraphrases, ``hop2_test`` multi-hop, ``same_object`` same-answer questions), and
each question has an answer and false answer options (3-option multiple choice, chance 1/3).
The 664 clusters are split by index files ``forget_set_split.txt`` (5%),
``retaining_set_split.txt`` (10%) and ``test_set_split.txt`` (70%), one cluster index per line.

What is NOT public: the JSON file itself (absent from the repo snapshot) and so its exact field
names. This loader therefore reads a flat schema DEFINED HERE, one row per question:
``{"entity": "Q76", "cluster": 23, "category": "hop1_unlearn", "question": ..., "answer": ...,
"false_options": [..., ...]}`` in ``<data_dir>/FaithUnBench.json`` (or .jsonl), plus the three
split files in their real format. Converting the real JSON into it is a flattening step.

Mapping onto the harness:
- forget = forget clusters, retain = retaining clusters, general = test clusters (facts both
  models keep; the paper's retention score is test-set accuracy), holdout = the last
  ``holdout_fraction`` of the test clusters (never trained: the privacy suite's non-members; on a
  pretrained model these facts are known from pretraining, so read Min-K% AUC with care).
- Each cluster is one item and one group: question = its ``hop1_unlearn`` question, paraphrase =
  its first ``hop1_test`` question (same answer), options = answer + false options at an
  id-derived position, perturbed = the false options. ``hop2_test`` and ``same_object``
  questions are not loaded: the harness trains every item of the forget split, and these
  variants must stay evaluation-only.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from pathlib import Path

from bench.benchmark import Benchmark, BenchmarkError, QAItem
from bench.benign import with_instructions
from bench.benchmarks._rows import Rows, load_rows, options_with_gold, require
from bench.settings import is_int

log = logging.getLogger(__name__)

FIELDS = ("entity", "cluster", "category", "question", "answer", "false_options")
CATEGORIES = ("hop1_unlearn", "hop1_test", "hop2_test", "same_object")
SPLIT_FILES = {"forget": "forget_set_split.txt", "retain": "retaining_set_split.txt", "test": "test_set_split.txt"}


def read_split_file(path: Path) -> list[int]:
    """Cluster indices, one integer per line (the FaithUn repository's format)."""
    if not path.is_file():
        raise BenchmarkError(f"{path} does not exist; FaithUn needs {sorted(SPLIT_FILES.values())} in benchmark.splits_dir")
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                out.append(int(line))
            except ValueError:
                raise BenchmarkError(f"{path}:{n}: {line!r} is not a cluster index (one integer per line)") from None
    return out


def _clusters(rows: Rows) -> dict[int, dict[str, list[dict]]]:
    by: dict[int, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for i, row in enumerate(rows.rows):
        if row["category"] not in CATEGORIES:
            raise BenchmarkError(f"{rows.source}: row {i}: category {row['category']!r} is not one of {CATEGORIES}")
        if not is_int(row["cluster"]):
            raise BenchmarkError(f"{rows.source}: row {i}: field 'cluster' must be an integer, got {row['cluster']!r}")
        fo = row["false_options"]
        if not (isinstance(fo, list) and fo and all(isinstance(x, str) for x in fo)):
            raise BenchmarkError(f"{rows.source}: row {i}: field 'false_options' must be a non-empty list of strings")
        by[row["cluster"]][row["category"]].append({**row, "_row": i})
    return by


def load_faithun(data_dir: str | None = None, path: str | None = None, splits_dir: str | None = None,
                 file_stem: str = "FaithUnBench", holdout_fraction: float = 0.1,
                 prompt_template: str = "Question: {question}\nAnswer:", instructions: str | None = None) -> Benchmark:
    """FaithUn as a ``Benchmark`` (see the module docstring; the row schema is defined here).

    data_dir: folder with ``<file_stem>.json``/``.jsonl`` (and the split files unless
    ``splits_dir`` is set). path: a hub dataset of the same row schema instead (none is known).
    holdout_fraction: share of test clusters held out untrained, in [0, 1).
    instructions: the benign attack's Alpaca-style .jsonl (``bench.benign``); null: generated offline.
    """
    if not 0 <= holdout_fraction < 1:
        raise BenchmarkError(f"benchmark.holdout_fraction={holdout_fraction} must be in [0, 1)")
    if data_dir is None and path is None:
        raise BenchmarkError("FaithUn is not on the hub: set benchmark.data_dir to a folder with FaithUnBench.json "
                             "(schema in bench/benchmarks/faithun.py) and the three *_split.txt files")
    split_folder = Path(splits_dir or data_dir or "")
    if data_dir is not None and not Path(data_dir).is_dir():
        load_rows(path, None, "train", data_dir, file_stem=file_stem)  # raises: says what data_dir must hold
    # The split files first: an overlap stops before the rows are read (datasets writes its cache as it reads).
    owner: dict[int, str] = {}
    for split, fname in SPLIT_FILES.items():
        for c in read_split_file(split_folder / fname):
            if c in owner:
                raise BenchmarkError(f"cluster {c} is listed in {SPLIT_FILES[owner[c]]} and {fname} in {split_folder}: "
                                     "forget, retaining and test clusters must not overlap")
            owner[c] = split
    rows = load_rows(path, None, "train", data_dir, file_stem=file_stem)
    require(rows, FIELDS)
    clusters = _clusters(rows)
    test = sorted(c for c, s in owner.items() if s == "test")
    n_hold = math.floor(holdout_fraction * len(test) + 0.5)
    target = {c: ("general" if s == "test" else s) for c, s in owner.items()}
    target.update({c: "holdout" for c in test[len(test) - n_hold:]})

    items: list[QAItem] = []
    skipped = 0
    for c in sorted(target):
        if c not in clusters:
            raise BenchmarkError(f"cluster {c} ({target[c]}) is in the split files but has no rows in {rows.source}")
        cat = clusters[c]
        if len(cat["hop1_unlearn"]) != 1:
            raise BenchmarkError(f"{rows.source}: cluster {c} has {len(cat['hop1_unlearn'])} hop1_unlearn rows; "
                                 "each cluster needs exactly one (its base question)")
        base = cat["hop1_unlearn"][0]
        para = cat["hop1_test"][0] if cat["hop1_test"] else None
        if para is not None and para["answer"] != base["answer"]:
            raise BenchmarkError(f"{rows.source}: row {para['_row']}: the hop1_test answer {para['answer']!r} differs "
                                 f"from cluster {c}'s hop1_unlearn answer {base['answer']!r}")
        skipped += len(cat["hop2_test"]) + len(cat["same_object"])
        item_id = f"{base['entity']}/cluster{c}"
        options, index = options_with_gold(item_id, base["answer"], base["false_options"], len(base["false_options"]) + 1)
        try:
            items.append(QAItem(id=item_id, group=f"cluster{c}", split=target[c], relation="faithun",
                                question=base["question"], answer=base["answer"], paraphrase=para["question"] if para else "",
                                perturbed=tuple(base["false_options"]), options=options, answer_index=index))
        except Exception as e:  # noqa: BLE001 - a bad value in the data: say which file and row
            raise BenchmarkError(f"{rows.source}: row {base['_row']}: {e}") from None
    if skipped:
        log.info("FaithUn: %d hop2_test / same_object questions not loaded (evaluation-only variants)", skipped)
    try:
        return with_instructions(Benchmark(name="faithun", items=items, prompt_template=prompt_template), instructions)
    except BenchmarkError as e:
        raise BenchmarkError(f"FaithUn ({rows.source}): {e}") from None
