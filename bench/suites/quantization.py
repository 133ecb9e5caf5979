"""Quantization suite: does rounding the weights bring forgotten knowledge back? (Zhang et al. 2025,
"Catastrophic failure of LLM unlearning via quantization")

Unlearning that moves weights by less than a quantization step is undone when the model is
deployed quantized. For each stage in ``stages`` (default target and unlearned) and, as control,
the oracle, each bit width in ``bits`` quantizes a copy of the stage's model as deployed (forward
hooks a method attached stay on; ``bench.quantize``: decoder-block linear weights, symmetric
round-to-nearest per output channel or group-wise on CPU, bitsandbytes on CUDA when installed)
and scores it with the knowledge suite's per-split metrics. The evaluated model is never changed.

Rows (split = a knowledge split view of ``splits``, metric = ``<metric>@quant<bits>`` for each of
``metrics``): ``forget mcq_acc@quant4`` is the forget split's forced-choice accuracy of the 4-bit
model. On non-oracle stages, ``recovery@quant<bits>`` (forget-side splits): the stage's quantized
forget mcq_acc minus the quantized oracle's, what quantization recovers beyond what a model that
never saw the facts reaches. The target's rows show what quantization costs a model that knows.
Examples (``kind: quantized``): backend, layers quantized, relative weight error per bit width.

Settings (``suite_settings.quantization``): bits ([8, 4]), granularity (``channel``: one scale per
output row; ``group``: one per ``group_size`` inputs of a row; 128 is the usual group for real
LLMs, and is per-channel for most layers of the d = 128 tiny model, hence the default 32 there),
backend (``auto``: bitsandbytes on CUDA when installed, else ``rtn``; ``bitsandbytes`` forces it, which
runs on CPU too from bitsandbytes 0.46 on), splits ([forget, retain]),
metrics ([em, mcq_acc]), stages ([target, unlearned]), batch_size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from bench.benchmark import Benchmark
from bench.errors import ConfigError
from bench.items import SPLIT_VIEWS, score_items
from bench.quantize import bitsandbytes_available, quantized_copy, resolve_backend
from bench.scoring import model_device
from bench.settings import bounded
from bench.stages import ORACLE, TARGET, UNLEARNED
from bench.suites import Row, SuiteContext, SuiteOutput, check_control_stages
from bench.suites.knowledge import split_values

SUITE = "quantization"
BITS = (4, 8)
METRICS = ("em", "mcq_acc", "answer_prob", "truth_ratio", "rougeL_recall")

DIRECTIONS = [
    (r".*", r"recovery@quant\d+", "lower"),
    (r".*", r"truth_ratio@quant\d+", "higher"),
    (r".*", r"(em|mcq_acc|answer_prob|rougeL_recall)@quant\d+", "knows"),
]


@dataclass(frozen=True)
class Settings:
    """bits: bit widths (4, 8). granularity: one scale per output channel, or per group of group_size
    inputs (rtn). backend: auto | rtn | bitsandbytes. splits: knowledge split views scored. metrics:
    knowledge metrics reported per split. stages: stages quantized besides the oracle control.
    batch_size: scoring batch."""

    bits: tuple[int, ...] = bounded((8, 4), choices=BITS, nonempty=True, unique=True)
    granularity: Literal["channel", "group"] = "channel"
    group_size: int = bounded(32, ge=1)
    backend: Literal["auto", "rtn", "bitsandbytes"] = "auto"
    splits: tuple[str, ...] = bounded(("forget", "retain"), choices=tuple(SPLIT_VIEWS), nonempty=True, unique=True)
    metrics: tuple[str, ...] = bounded(("em", "mcq_acc"), choices=METRICS, nonempty=True, unique=True)
    stages: tuple[str, ...] = bounded((TARGET, UNLEARNED), unique=True)
    batch_size: int = bounded(64, ge=1)


def check(settings: Settings, bench: Benchmark) -> None:
    check_control_stages(SUITE, settings.stages, "quantized")
    if settings.backend == "bitsandbytes" and not bitsandbytes_available():
        raise ConfigError("suite_settings.quantization.backend=bitsandbytes but the bitsandbytes package is not installed; "
                          "install it or use backend=rtn")
    answer_only = [s for s in settings.splits if any(it.answer_only for it in bench.split(SPLIT_VIEWS[s][0]))]
    if answer_only and {"mcq_acc", "truth_ratio"} & set(settings.metrics):
        raise ConfigError(f"suite_settings.quantization.splits: {answer_only} have answer-only items (no options: no "
                          f"mcq_acc or truth_ratio); drop them from splits or use metrics=[em]")


def _group_size(s: Settings) -> int | None:
    return s.group_size if s.granularity == "group" else None


def quantized_values(model, bits: int, ctx: SuiteContext) -> tuple[dict[str, dict[str, float]], dict[str, int], dict]:
    """split -> metric -> value, split -> items, and the quantization summary, for ``model`` at ``bits``."""
    s = ctx.settings_of(SUITE)
    backend = resolve_backend(s.backend, model_device(model))
    quantized, summary = quantized_copy(model, bits, backend, _group_size(s))
    values, sizes = {}, {}
    for split in s.splits:
        source, phrasing = SPLIT_VIEWS[split]
        items = ctx.bench.split(source)
        if not items or (phrasing == "paraphrase" and not items[0].paraphrase):
            continue
        scores = score_items(quantized, ctx.tokenizer, ctx.bench, items, phrasing, s.batch_size)
        values[split] = split_values(scores, split.startswith("forget"))
        sizes[split] = len(items)
    return values, sizes, {"backend": backend, **summary}


def evaluate(model, stage: str, ctx: SuiteContext) -> SuiteOutput:
    s = ctx.settings_of(SUITE)
    if stage != ORACLE and stage not in s.stages:
        return SuiteOutput()
    rows: list[Row] = []
    examples: list[dict] = []
    for bits in s.bits:
        control = ctx.reference((SUITE, "oracle", bits), lambda: quantized_values(ctx.oracle, bits, ctx))
        values, sizes, summary = control if stage == ORACLE else quantized_values(model, bits, ctx)
        for split, by_metric in values.items():
            rows += [Row(stage, SUITE, split, f"{m}@quant{bits}", by_metric[m], sizes[split]) for m in s.metrics
                     if m in by_metric]
            if stage != ORACLE and split.startswith("forget") and "mcq_acc" in by_metric:
                rows.append(Row(stage, SUITE, split, f"recovery@quant{bits}",
                                by_metric["mcq_acc"] - control[0][split]["mcq_acc"], sizes[split]))
        examples.append({"stage": stage, "suite": SUITE, "kind": "quantized", "bits": bits, "granularity": s.granularity,
                         "group_size": _group_size(s), **summary})
    return SuiteOutput(rows, examples)
