"""Continual unlearning: the forget split as a sequence of requests, and per-request forget scores.

``split_requests`` cuts the forget split into N requests by person (``Benchmark.groups`` order,
contiguous, sizes differing by at most one person). ``continual_rows`` scores the model on every
request so far; ``evaluate_request`` adds the ordinary suites: ``bench.run`` calls it after each
request, as stage ``request/<i>`` (``bench.stages.request_stage``).

Relearning after each request (``relearn`` in ``continual.suites``): the attacks of the run
(``attack``) run on the model of request i against the people forgotten so far (requests 1..i:
the relearn suite sees a benchmark whose forget split holds only them, so held-out facts are
never facts of a later request, which the model still knows), with the oracle control attacked on
the same people (cached per set of people). Rows: the relearn suite's summary rows on stage
``request/<i>`` (``mcq_acc@<attack>``, ``recovery@<attack>``, ``recovery@worst``), its per-attack
stages under ``request/<i>/`` (``request/<i>/attacked/<attack>``, ``request/<i>/oracle_attacked/<attack>``,
``request/<i>/oracle``). Every attack must fit the people of request 1 (e.g. RTT folds ≤ people
so far), checked before any compute.

Row names (suite ``continual``, split ``forget``, the request as a qualifier of the metric):
``em@request<j>``, ``mcq_acc@request<j>``, ``answer_prob@request<j>`` for each request j ≤ i,
n = that request's number of facts; plus ``mcq_acc@seen`` and ``em@seen`` over requests 1..i
together. Retain, general and the whole forget split come from the ordinary suites
(``continual.suites``, default ``[knowledge]``) under the same ``request/<i>`` stage.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from bench.benchmark import Benchmark, QAItem
from bench.errors import ConfigError, UserError
from bench.items import score_items
from bench.suites import Row, SuiteContext, SuiteOutput, evaluate_suites, validate_settings

RELEARN = "relearn"  # attacks the forget split as a whole: run per request on the people forgotten so far

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


def forgotten_so_far(bench: Benchmark, requests: Sequence[Sequence[QAItem]]) -> Benchmark:
    """The benchmark with only the forget items of ``requests`` in its forget split (later requests' items dropped)."""
    seen = {it.id for items in requests for it in items}
    return dataclasses.replace(bench, items=[it for it in bench.items if it.split != "forget" or it.id in seen])


def check_request_suites(bench: Benchmark, n_requests: int, suites: Sequence[str], raw_settings: Mapping[str, Any] | None) -> None:
    """Before compute: a relearn suite run after each request must fit the people of every request so far."""
    if RELEARN not in suites or n_requests < 2:
        return
    requests = split_requests(bench, n_requests)
    for i in range(1, n_requests + 1):
        try:
            validate_settings([RELEARN], raw_settings, forgotten_so_far(bench, requests[:i]))
        except UserError as e:
            people = len(forgotten_so_far(bench, requests[:i]).groups("forget"))
            raise ConfigError(f"continual.suites runs relearn after each request on the people forgotten so far "
                              f"({people} after request {i}): {e}; change that attack, drop relearn from continual.suites, "
                              "or use fewer requests") from None


def relearn_after_request(model: torch.nn.Module, stage: str, requests: Sequence[Sequence[QAItem]],
                          ctx: SuiteContext) -> SuiteOutput:
    """The relearn suite on stage ``stage`` against the people of ``requests`` (see the module docstring)."""
    bench = forgotten_so_far(ctx.bench, requests)
    people = ",".join(bench.groups("forget"))
    sub = SuiteContext(bench=bench, tokenizer=ctx.tokenizer, oracle=ctx.oracle, target=ctx.target,
                       cache_dir=ctx.cache_dir, oracle_key=None if ctx.oracle_key is None else f"{ctx.oracle_key}/forget:{people}")
    sub.settings = {**ctx.settings, RELEARN: dataclasses.replace(ctx.settings_of(RELEARN), stages=(stage,))}
    out = evaluate_suites([RELEARN], model, stage, sub)
    # The control's rows (stages oracle, oracle_attacked/...) describe these people only: file them under the request.
    for r in out.rows:
        if r.stage != stage and not r.stage.startswith(f"{stage}/"):
            r.stage = f"{stage}/{r.stage}"
    for ex in out.examples:
        if "stage" in ex and ex["stage"] != stage and not str(ex["stage"]).startswith(f"{stage}/"):
            ex["stage"] = f"{stage}/{ex['stage']}"
    return out


def evaluate_request(model: torch.nn.Module, stage: str, requests: Sequence[Sequence[QAItem]], suites: Sequence[str],
                     ctx: SuiteContext) -> SuiteOutput:
    """Stage ``request/<i>``: the ``continual.suites`` (in order; relearn on the people forgotten so far),
    then the per-request forget scores on ``requests`` (every request done so far)."""
    out = SuiteOutput()
    for name in suites:
        out.extend(relearn_after_request(model, stage, requests, ctx) if name == RELEARN
                   else evaluate_suites([name], model, stage, ctx))
    out.rows += continual_rows(model, stage, requests, ctx)
    return out
