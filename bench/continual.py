"""Continual unlearning: the forget split as a sequence of requests, and per-request forget scores.

``split_requests`` cuts the forget split into N requests by person (``Benchmark.groups`` order,
contiguous, sizes differing by at most one person). ``continual_rows`` scores the model on every
request so far; ``evaluate_request`` adds the ordinary suites: ``bench.run`` calls it after each
request, as stage ``request/<i>`` (``bench.stages.request_stage``).

Row names (suite ``continual``, split ``forget``, the request as a qualifier of the metric):
``em@request<j>``, ``mcq_acc@request<j>``, ``answer_prob@request<j>`` for each request j ≤ i,
n = that request's number of facts; plus ``mcq_acc@seen`` and ``em@seen`` over requests 1..i
together. Retain, general and the whole forget split come from the ordinary suites
(``continual.suites``, default ``[knowledge]``) under the same ``request/<i>`` stage.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from bench.benchmark import Benchmark, QAItem
from bench.items import score_items
from bench.suites import Row, SuiteContext, SuiteOutput, evaluate_suites

SUITE = "continual"

# Which way is better (bench.directions): forget scores on earlier requests.
DIRECTIONS = [(r".*", r"(em|mcq_acc|answer_prob)@.*", "knows")]


def split_requests(bench: Benchmark, n: int) -> list[list[QAItem]]:
    """The forget items in ``n`` requests of whole people (earlier requests get the extra person)."""
    groups = bench.groups("forget")
    if not 1 <= n <= len(groups):
        raise ValueError(f"cannot cut {len(groups)} forget people into {n} requests (1 <= requests <= people)")
    cuts = np.array_split(np.arange(len(groups)), n)
    items = bench.split("forget")
    return [[it for it in items if it.group in {groups[g] for g in cut}] for cut in cuts]


def continual_rows(model, stage: str, requests: Sequence[Sequence[QAItem]], ctx: SuiteContext) -> list[Row]:
    """Forget scores on each request so far (and on all of them together) at ``stage``."""
    rows: list[Row] = []
    em_all, mcq_all = [], []
    batch_size = ctx.settings_of("knowledge").batch_size  # the knowledge suite's scoring batch
    for j, items in enumerate(requests, 1):
        s = score_items(model, ctx.tokenizer, ctx.bench, list(items), "question", batch_size)
        rows += [Row(stage, SUITE, "forget", f"em@request{j}", float(s.em.mean()), len(items)),
                 Row(stage, SUITE, "forget", f"mcq_acc@request{j}", float(s.mcq_correct.mean()), len(items)),
                 Row(stage, SUITE, "forget", f"answer_prob@request{j}", float(s.answer_prob.mean()), len(items))]
        em_all.append(s.em)
        mcq_all.append(s.mcq_correct)
    n = int(sum(len(x) for x in em_all))
    rows += [Row(stage, SUITE, "forget", "em@seen", float(np.concatenate(em_all).mean()), n),
             Row(stage, SUITE, "forget", "mcq_acc@seen", float(np.concatenate(mcq_all).mean()), n)]
    return rows


def evaluate_request(model: torch.nn.Module, stage: str, requests: Sequence[Sequence[QAItem]], suites: Sequence[str],
                     ctx: SuiteContext) -> SuiteOutput:
    """Stage ``request/<i>``: the ``continual.suites`` (in order), then the per-request forget scores
    on ``requests`` (every request done so far)."""
    out = evaluate_suites(suites, model, stage, ctx)
    out.rows += continual_rows(model, stage, requests, ctx)
    return out
