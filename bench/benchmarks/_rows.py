"""Reading rows of a real benchmark: from the hub by name, or from local files of the same schema.

Every loader goes through ``load_rows``, so offline use is the same code path as hub use: with
``data_dir`` set, ``<data_dir>/<name>.{json,jsonl,parquet,csv}`` is read with ``datasets``'
own builders (``json``, ``parquet``, ``csv``); without it, ``load_dataset(path, name,
split=...)``. ``require`` then checks the fields a loader needs, naming the field and the file.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from bench.benchmark import BenchmarkError

_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}


@dataclass(frozen=True)
class Rows:
    """The rows of one dataset config and where they came from (a file path or ``hub:path/name``)."""

    rows: list[dict[str, Any]]
    source: str


def load_rows(path: str | None, name: str | None, split: str, data_dir: str | None, file_stem: str | None = None) -> Rows:
    """Rows of ``path`` (hub dataset) config ``name``, split ``split``; or of a local file under ``data_dir``.

    ``file_stem`` names the local file (default: ``name``), e.g. TOFU's ``forget10_perturbed.json``.
    """
    import datasets

    stem = file_stem or name
    if data_dir is not None:
        folder = Path(data_dir)
        if not folder.is_dir():
            raise BenchmarkError(f"data_dir {folder} is not a folder; point benchmark.data_dir at the folder "
                                 f"holding {stem}.json (or .jsonl/.parquet/.csv)")
        found = [folder / f"{stem}{ext}" for ext in _BUILDERS if (folder / f"{stem}{ext}").exists()]
        if not found:
            raise BenchmarkError(f"{folder}: no file {stem}.json, .jsonl, .parquet or .csv; the benchmark needs "
                                 f"the '{stem}' data in that folder (same schema as the hub dataset)")
        return load_file(found[0])
    if not path:
        raise BenchmarkError(f"no hub dataset and no data_dir for '{stem}': set benchmark.data_dir to a folder "
                             f"holding {stem}.json")
    try:
        ds = datasets.load_dataset(path, name, split=split)
    except (OSError, ConnectionError, ValueError) as e:  # offline and not cached, a missing config, no network
        offline = " (HF_DATASETS_OFFLINE=1 is set)" if datasets.config.HF_DATASETS_OFFLINE else ""
        raise BenchmarkError(f"could not load hub dataset {path!r} config {name!r}{offline}: {type(e).__name__}; "
                             f"download its files on a connected machine and set benchmark.data_dir to the folder "
                             f"holding {stem}.json (same schema as the hub dataset)") from None
    return Rows(_plain_rows(ds), f"hub:{path}/{name or ''}:{split}")


def load_file(file: str | Path) -> Rows:
    """Rows of one local json/jsonl/parquet/csv file, read with the matching `datasets` builder."""
    import datasets

    file = Path(file)
    if file.suffix not in _BUILDERS:
        raise BenchmarkError(f"{file}: unsupported file type; use one of {sorted(_BUILDERS)}")
    if not file.is_file():
        raise BenchmarkError(f"{file} does not exist")
    try:
        ds = datasets.load_dataset(_BUILDERS[file.suffix], data_files=str(file), split="train")
    except Exception as e:  # datasets raises several types for a malformed file; keep the file in the message
        raise BenchmarkError(f"{file}: could not be read as {_BUILDERS[file.suffix]}: {e}") from None
    return Rows(_plain_rows(ds), str(file))


def _plain_rows(ds) -> list[dict[str, Any]]:
    """Rows as dicts; image columns stay undecoded (a loader only asks whether a row has an image)."""
    import datasets

    for name, feature in ds.features.items():
        if isinstance(feature, datasets.Image):
            ds = ds.cast_column(name, datasets.Image(decode=False))
    return [dict(r) for r in ds]


def require(rows: Rows, fields: Sequence[str], list_fields: Sequence[str] = ()) -> None:
    """Every row has every field (non-null); ``list_fields`` hold a string or a list of strings.

    The message names the field, the row and the file, so the fix is obvious.
    """
    if not rows.rows:
        raise BenchmarkError(f"{rows.source}: no rows")
    for i, row in enumerate(rows.rows):
        for f in fields:
            if row.get(f) is None:
                have = sorted(k for k, v in row.items() if v is not None)
                raise BenchmarkError(f"{rows.source}: row {i} is missing required field {f!r} "
                                     f"(it has {have}); add it or point data_dir at files of the real schema")
        for f in list_fields:
            v = row[f]
            if not (isinstance(v, str) or (isinstance(v, list) and v and all(isinstance(x, str) for x in v))):
                raise BenchmarkError(f"{rows.source}: row {i}: field {f!r} must be a string or a non-empty "
                                     f"list of strings, got {v!r}")


def as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def gold_position(item_id: str, k: int) -> int:
    """A fixed, item-specific position for the gold answer among k options (sha256 of the id).

    Why not always first: a scorer bug that prefers a position would then look like knowledge.
    Forced choice by log-probability is position-free, so this never changes an mcq verdict.
    """
    return int(hashlib.sha256(item_id.encode()).hexdigest(), 16) % k


def options_with_gold(item_id: str, answer: str, wrong: Sequence[str], k: int) -> tuple[tuple[str, ...], int]:
    """k options: the gold answer at ``gold_position`` among the first k − 1 wrong answers."""
    options = list(wrong[: k - 1])
    index = gold_position(item_id, k)
    options.insert(index, answer)
    return tuple(options), index


LETTERS = "ABCDEFGHIJ"


def lettered_question(question: str, choices: Sequence[str], context: str = "") -> str:
    """A letter-answer multiple-choice question: optional context, the question, then "(A) ..." lines.

    The answer is the letter, as in MRP's ScienceQA setup and lm-eval's WMDP tasks.
    """
    lines = [f"({LETTERS[j]}) {c}" for j, c in enumerate(choices)]
    return "\n".join(([context.strip()] if context and context.strip() else []) + [question.strip(), *lines])
