"""Utility suite: the live model scored through lm-evaluation-harness (PROTOCOLS.md "Utility suite").

The model a stage hands over (with any forward hooks a method added, e.g. MRP's projection) is
wrapped as ``HFLM(pretrained=model, tokenizer=...)``, so it is scored exactly as deployed; the
tokenizer is always passed because without it HFLM looks the model up on the hub.

Offline default tasks are written from the benchmark into local task YAMLs (``dataset_path: json``
with ``dataset_kwargs.data_files``) and loaded with ``TaskManager(include_path=...,
include_defaults=False)``:

- ``general_mcq``: the ``general`` split's facts as multiple choice over their k options
  (``acc``, chance 1/k; ``acc_norm`` normalises by option length in bytes);
- ``heldout_ppl``: the never-trained ``heldout_text`` sentences scored with
  ``loglikelihood_rolling`` (``word_perplexity``, ``byte_perplexity``, ``bits_per_byte``).

Any other name in ``suite_settings.utility.tasks`` is a stock lm-eval task or group (``mmlu``,
``arc_easy``, ``hellaswag``, ``wmdp``...): the stock index is then included too (those need their
datasets from the hub or its cache, so they are for real models on a connected machine).

Rows: suite ``utility``, split ``utility``, metric ``<task>/<metric>`` with lm-eval's own metric
name; the default ``none`` filter is dropped and any other filter follows ``@``
(``exact_match@strict-match``). Values lm-eval did not compute (stderr with bootstrap_iters=0 is
"N/A") are not rows. The oracle's scores are computed once per run through ``ctx.reference``.

BOS: the harness prepends BOS itself and never lets a tokenizer add special tokens
(``bench.data``). lm-eval's stock encoding gives a multiple-choice context no BOS unless the
tokenizer adds one, and with a tokenizer that adds one scores rolling perplexity after two BOS
tokens (lm-eval issue #3333). With ``bos: harness`` (default) the suite encodes as the harness
does: contexts are BOS + prompt tokens, rolling windows are lm-eval's BOS prefix + text tokens, so
the utility numbers describe the same token sequences the model was trained and scored on.
``bos: lm_eval`` keeps lm-eval's own encoding (to compare with published stock-task numbers).
"""

from __future__ import annotations

import difflib
import functools
import json
import logging
import math
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from bench.benchmark import Benchmark
from bench.disk_cache import digest, directory
from bench.errors import ConfigError
from bench.scoring import eval_mode
from bench.settings import SettingsError, bounded, is_int, is_number
from bench.stages import ORACLE
from bench.suites import Row, SuiteContext, SuiteOutput

log = logging.getLogger(__name__)

SUITE = "utility"

# Which way is better (bench.directions): lm-eval's <task>/<metric> names.
DIRECTIONS = [
    (r".*", r".*_stderr.*", None),
    (r".*", r".*(perplexity|bits_per_byte|ppl).*", "lower"),
    (r".*", r".*", "higher"),
]
SPLIT = "utility"
LOCAL_TASKS = ("general_mcq", "heldout_ppl")


class UtilityConfigError(ConfigError):
    """A ``suite_settings.utility`` value that does not fit the benchmark or lm-eval; names the key and the fix."""


@dataclass(frozen=True)
class Settings:
    """``suite_settings.utility`` (these are the defaults).

    tasks: local tasks (``general_mcq``, ``heldout_ppl``) and/or stock lm-eval task or group names.
    limit: per task, an int = the first N documents, a float in (0, 1) = that fraction, null = all.
    bootstrap_iters: lm-eval's bootstrap resamples for stderr; 0 = none (stderr rows omitted).
    batch_size: HFLM batch size (requests per forward pass).
    num_fewshot: few-shot examples for stock tasks (null: the task's default; local tasks are 0-shot).
    max_length: HFLM context length (null: from the model config).
    bos: ``harness`` (encode as bench.data does) or ``lm_eval`` (lm-eval's own BOS handling).
    log_samples: per-document results into examples.jsonl.
    """

    tasks: tuple[str, ...] = bounded(LOCAL_TASKS, nonempty=True, unique=True)
    limit: int | float | None = None
    bootstrap_iters: int = bounded(0, ge=0)
    batch_size: int = bounded(32, ge=1)
    num_fewshot: int | None = bounded(None, ge=0)
    max_length: int | None = bounded(None, ge=1)
    bos: Literal["harness", "lm_eval"] = "harness"
    log_samples: bool = True

    def __post_init__(self) -> None:
        limit = self.limit
        if limit is not None and not ((is_int(limit) and limit >= 1) or (isinstance(limit, float) and 0 < limit < 1)):
            raise SettingsError(f"suite_settings.utility.limit must be null, an integer >= 1 (documents per task) "
                                f"or a fraction in (0, 1); got {limit!r}")
        if not all(self.tasks):
            raise SettingsError(f"suite_settings.utility.tasks must name tasks, e.g. [{', '.join(LOCAL_TASKS)}] or "
                                f"[mmlu,arc_easy]; got {list(self.tasks)!r}")

    @property
    def local(self) -> list[str]:
        return [t for t in self.tasks if t in LOCAL_TASKS]

    @property
    def stock(self) -> list[str]:
        return [t for t in self.tasks if t not in LOCAL_TASKS]


@functools.cache
def stock_task_names() -> frozenset[str]:
    """lm-eval's stock task names (indexing its task YAMLs takes seconds: once per process, e.g. for a sweep's
    checks of every job before launch)."""
    from lm_eval.tasks import TaskManager

    return frozenset(TaskManager(include_defaults=True).all_tasks)


def check(s: Settings, bench: Benchmark) -> None:
    """Checks before compute: that local tasks have data, that stock task names exist."""
    if "general_mcq" in s.tasks and not bench.split("general"):
        raise UtilityConfigError("utility task general_mcq needs items in the benchmark's 'general' split, and it has "
                                 "none; drop it from suite_settings.utility.tasks (or use a benchmark with general facts)")
    if "heldout_ppl" in s.tasks and not bench.heldout_text:
        raise UtilityConfigError("utility task heldout_ppl needs the benchmark's heldout_text, which is empty; drop it "
                                 "from suite_settings.utility.tasks or set benchmark.n_heldout_text > 0")
    if s.stock:
        known = stock_task_names()
        missing = [t for t in s.stock if t not in known]
        if missing:
            hints = {t: difflib.get_close_matches(t, known, n=3) for t in missing}
            raise UtilityConfigError(f"suite_settings.utility.tasks: {missing} are neither local tasks {list(LOCAL_TASKS)} "
                                     f"nor lm-eval {_lm_eval_version()} task names (close matches: {hints}); "
                                     "`lm-eval ls tasks` lists them")


# -- local tasks ------------------------------------------------------------------------------

def _lm_eval_version() -> str:
    from importlib.metadata import version

    return version("lm_eval")


def local_task_files(bench: Benchmark) -> dict[str, tuple[list[dict[str, Any]], dict[str, Any]]]:
    """For each local task with data: its documents and its task config (without data paths).

    The MCQ document holds the prompt exactly as the knowledge suite builds it (bench.prompt), so
    both suites score the same strings; lm-eval adds its target delimiter " " before each option,
    as bench.data puts a space before the answer.
    """
    out: dict[str, tuple[list[dict[str, Any]], dict[str, Any]]] = {}
    general = bench.split("general")
    if general:
        docs = [{"id": it.id, "prompt": bench.prompt(it.question), "options": list(it.options),
                 "answer_index": it.answer_index} for it in general]
        out["general_mcq"] = (docs, {
            "task": "general_mcq", "output_type": "multiple_choice", "test_split": "test",
            "doc_to_text": "prompt", "doc_to_choice": "options", "doc_to_target": "answer_index",
            "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                            {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}],
            "metadata": {"version": 1.0, "chance": bench.chance},
        })
    if bench.heldout_text:
        docs = [{"id": f"heldout/{i}", "text": t} for i, t in enumerate(bench.heldout_text)]
        out["heldout_ppl"] = (docs, {
            "task": "heldout_ppl", "output_type": "loglikelihood_rolling", "test_split": "test",
            "doc_to_text": "", "doc_to_target": "text",
            "metric_list": [{"metric": "word_perplexity"}, {"metric": "byte_perplexity"}, {"metric": "bits_per_byte"}],
            "metadata": {"version": 1.0},
        })
    return out


def write_local_tasks(bench: Benchmark, root: str | Path) -> Path:
    """Write the local task YAMLs and JSONL data under ``root/<content hash>/``; returns that folder.

    Keyed by content, so runs on the same benchmark share one folder; built once by
    ``bench.disk_cache.directory`` (locked, temporary folder renamed, orphans of killed runs
    removed). The ``datasets`` cache of these files lives inside the folder, not in ~/.cache.
    """
    specs = local_task_files(bench)
    final = (Path(root) / digest({"tasks": specs, "lm_eval": _lm_eval_version()}, 16)).resolve()

    def write(tmp: Path) -> None:
        for name, (docs, config) in specs.items():
            (tmp / f"{name}.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
            config = {**config, "dataset_path": "json",
                      "dataset_kwargs": {"data_files": {"test": str(final / f"{name}.jsonl")},
                                         "cache_dir": str(final / "hf_datasets")}}
            # JSON is valid YAML: no YAML writer dependency and no quoting surprises.
            (tmp / f"{name}.yaml").write_text(json.dumps(config, indent=1))

    return directory(final, write, marker="done")[0]


def _task_dir(ctx: SuiteContext) -> Path:
    if ctx.cache_dir:
        # Not memoised: a stage restored from bench.stage_cache must find its folder on disk (the call
        # is a lock and an existence check once the folder is written).
        return write_local_tasks(ctx.bench, Path(ctx.cache_dir) / "lm_eval_tasks")
    # No cache: a temporary folder that lives (in the context's memo) as long as the run's context.
    holder = ctx.reference((SUITE, "tempdir"), lambda: tempfile.TemporaryDirectory(prefix="ub-lm-eval-"))
    return ctx.reference((SUITE, "task_dir"), lambda: write_local_tasks(ctx.bench, holder.name))


# -- lm-eval model wrapper --------------------------------------------------------------------

def harness_lm(model: torch.nn.Module, tokenizer, s: Settings):
    """HFLM around the live model; with ``bos: harness`` it encodes as bench.data does."""
    from lm_eval.models.huggingface import HFLM

    class HarnessHFLM(HFLM):
        """BOS as the harness adds it: never by the tokenizer, always first in a context."""

        def tok_encode(self, string, add_special_tokens=None, left_truncate_len=None, **kwargs):
            # None means "the tokenizer's default", which for some tokenizers adds BOS (double BOS
            # in rolling windows, whose first input is already lm-eval's BOS prefix).
            return super().tok_encode(string, add_special_tokens=bool(add_special_tokens),
                                      left_truncate_len=left_truncate_len, **kwargs)

        def _encode_pair(self, context, continuation):
            context_enc, continuation_enc = super()._encode_pair(context, continuation)
            bos = self.tokenizer.bos_token_id
            if bos is not None and context_enc[:1] != [bos]:  # a chat template may already start with it
                context_enc = [bos] + context_enc
            return context_enc, continuation_enc

    cls = HarnessHFLM if s.bos == "harness" else HFLM
    device = str(next(model.parameters()).device)
    return cls(pretrained=model, tokenizer=tokenizer, batch_size=s.batch_size, device=device, max_length=s.max_length)


# -- evaluation -------------------------------------------------------------------------------

def run_lm_eval(model: torch.nn.Module, ctx: SuiteContext, s: Settings) -> dict[str, Any]:
    """lm-eval's ``simple_evaluate`` on the live model; global RNG state is left as it was.

    lm-eval seeds python, numpy and torch globally (for reproducible few-shot sampling); the
    run's own random streams (unlearning, attacks) must not depend on whether this suite ran.
    """
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    include = str(_task_dir(ctx)) if s.local else None
    # Indexing lm-eval's ~15k stock task YAMLs takes ~15 s: once per run, not once per stage.
    tm = ctx.reference((SUITE, "task_manager", include, bool(s.stock)),
                       lambda: TaskManager(include_path=include, include_defaults=bool(s.stock)))
    lm = harness_lm(model, ctx.tokenizer, s)
    chat = bool(getattr(ctx.tokenizer, "chat_template", None))  # as the harness formats prompts (bench.data)
    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    try:
        with eval_mode(model):
            results = simple_evaluate(model=lm, tasks=list(s.tasks), task_manager=tm, limit=s.limit,
                                      bootstrap_iters=s.bootstrap_iters, num_fewshot=s.num_fewshot,
                                      log_samples=s.log_samples, apply_chat_template=chat)
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])
    if results is None:
        raise RuntimeError("lm_eval.simple_evaluate returned nothing (non-zero rank?); the utility suite runs in one process")
    return results


def _metric_name(key: str) -> str | None:
    """``acc,none`` -> ``acc``; ``exact_match,strict-match`` -> ``exact_match@strict-match``."""
    if "," not in key:
        return None  # alias, sample_len and other bookkeeping
    metric, filt = key.split(",", 1)
    return metric if filt == "none" else f"{metric}@{filt}"


def _n_docs(results: dict[str, Any], name: str) -> int:
    """Documents scored for a task, or summed over a group's subtasks."""
    n = results.get("n-samples", {}).get(name)
    if n is not None:
        return int(n["effective"])
    subtasks = results.get("group_subtasks", {}).get(name, [])
    return sum(_n_docs(results, t) for t in subtasks)


def result_rows(results: dict[str, Any], stage: str, tasks: tuple[str, ...]) -> list[Row]:
    rows: list[Row] = []
    for task in tasks:
        metrics = results["results"].get(task)
        if metrics is None:
            raise RuntimeError(f"lm-eval returned no results for utility task {task!r}; got {sorted(results['results'])}")
        n = _n_docs(results, task)
        for key, value in metrics.items():
            name = _metric_name(key)
            if name is None or not is_number(value):
                continue  # "N/A" stderr (bootstrap_iters=0) is not a number: no row rather than a made-up one
            rows.append(Row(stage, SUITE, SPLIT, f"{task}/{name}", float(value), n))
        if not any(r.metric.startswith(f"{task}/") for r in rows):
            raise RuntimeError(f"lm-eval computed no numeric metric for utility task {task!r}: {metrics}")
    return rows


def _jsonable(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v if isinstance(v, (str, int, float, bool)) or v is None else str(v)


def sample_examples(results: dict[str, Any], stage: str) -> list[dict[str, Any]]:
    """Per-document metric values (and the item id for local tasks) for examples.jsonl."""
    out = []
    for task, samples in (results.get("samples") or {}).items():
        for smp in samples:
            doc = smp.get("doc") or {}
            metrics = {m: _jsonable(smp[m]) for m in smp.get("metrics", []) if m in smp}
            out.append({"stage": stage, "suite": SUITE, "split": SPLIT, "task": task, "doc_id": smp.get("doc_id"),
                        **({"id": doc["id"]} if isinstance(doc, dict) and "id" in doc else {}), **metrics})
    return out


def evaluate(model, stage: str, ctx: SuiteContext) -> SuiteOutput:
    s = ctx.settings_of(SUITE)
    start = time.perf_counter()
    if stage == ORACLE:
        results = ctx.reference((SUITE, "oracle"), lambda: run_lm_eval(ctx.oracle, ctx, s))
    else:
        results = run_lm_eval(model, ctx, s)
    rows = result_rows(results, stage, s.tasks)
    log.info("utility %s: %s in %.1fs", stage, ", ".join(f"{r.metric}={r.value:.4g}" for r in rows), time.perf_counter() - start)
    return SuiteOutput(rows, sample_examples(results, stage))
