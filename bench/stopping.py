"""The stopping rule's check: is the forget mcq_acc at or below the target yet?

The rule compares the fraction of forget items answered correctly by forced choice with the target:
stop once ``correct / n <= target``. Two kinds of check decide it:

- a **full** check scores every forget item and the retain items (their em), and writes both to
  the stop trace (the trajectory the tradeoff plot draws). Step 0, the step budget, every check
  ``trace_every`` steps after the last full one, and every check that stops are full;
- the checks between score forget items **in order of their last margin** (gold option minus the
  best other option: the most confidently correct first), a batch at a time, and end as soon as
  more items are correct than the target allows: then "go on" is certain whatever the rest would
  score. Early in unlearning that takes about ``target × n`` items, not ``n``, and no retain item.

So the verdict is the full check's verdict at every check (up to float rounding: an item's
log-probs move by up to ~6e-6 nats with the batch it is packed in; README "Stopping rule"). The
partial entries of the trace carry a lower bound instead of the score.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from bench import distributed
from bench.benchmark import Benchmark, QAItem
from bench.items import forced_choice, option_pairs, prompts
from bench.scoring import score_answers

MIN_BATCH_ITEMS = 16  # a partial check scores at least this many items per call (a smaller pass costs ~as much)


def most_correct_allowed(target: float, n: int) -> int:
    """The largest count c of correct items with ``c / n <= target`` (the rule's own float comparison); −1: none."""
    return max((c for c in range(n + 1) if c / n <= target), default=-1)


@dataclass
class Verdict:
    stop: bool
    entry: dict[str, Any]  # the stop trace's entry for this check (without its step)


class StopCheck:
    """The stopping rule's check on ``forget`` (forced choice), with retain em for the trace.

    target: the forget mcq_acc at or below which training stops (None: no early exit; every check
    is full). retain_items: evenly spread retain items whose em full checks record (None: all).
    trace_every: steps between full checks (None: every check is full). max_steps: the step
    budget (its check is full, so the trace ends with the final score). min_batch_items: the fewest
    items a partial check scores per call."""

    def __init__(self, bench: Benchmark, tokenizer, forget: list[QAItem], retain: list[QAItem],
                 retain_items: int | None = None, *, target: float | None = None, trace_every: int | None = None,
                 max_steps: int | None = None, min_batch_items: int = MIN_BATCH_ITEMS):
        if retain_items is not None and retain_items < len(retain):  # evenly spread, so every part of the split counts
            retain = [retain[i] for i in sorted({round(x) for x in np.linspace(0, len(retain) - 1, retain_items)})]
        self.tokenizer, self.forget, self.retain = tokenizer, forget, retain
        self.option_prompts, self.option_answers = option_pairs(bench, forget)
        self.k = len(self.option_prompts) // len(forget) if forget else 0
        self.retain_prompts, self.retain_answers = prompts(bench, retain, "question"), [it.answer for it in retain]
        self.target = target
        self.allowed = None if target is None or not forget else most_correct_allowed(target, len(forget))
        self.trace_every, self.max_steps, self.min_batch_items = trace_every, max_steps, min_batch_items
        self.margins = np.zeros(len(forget))  # gold option − best other option, from the last score of each item
        self.last_full: int | None = None

    def __call__(self, model: torch.nn.Module) -> tuple[float, float]:
        """(forget mcq_acc, retain em; NaN without retain items) from scoring everything."""
        scored = score_answers(model, self.tokenizer, self.option_prompts + self.retain_prompts,
                               self.option_answers + self.retain_answers)
        options = scored.option_logprob[: len(self.option_prompts)]
        correct = self._forced_choice(np.arange(len(self.forget)), options)
        retain_em = float(scored.exact[len(self.option_prompts):].mean()) if self.retain else float("nan")
        return float(correct.mean()), retain_em

    def check(self, model: torch.nn.Module, step: int) -> Verdict:
        """The verdict at ``step`` (a full or a partial check, see the module docstring)."""
        full = (self.allowed is None or self.trace_every is None or self.last_full is None or step == 0
                or (self.max_steps is not None and step >= self.max_steps) or step - self.last_full >= self.trace_every)
        if not full:
            order = np.argsort(-self.margins, kind="stable")
            correct = scored = 0
            while scored < len(order):
                take = max(self.min_batch_items, self.allowed + 1 - correct)
                idx = order[scored: scored + take]
                correct += int(self._score_forget(model, idx).sum())
                scored += len(idx)
                if self._agreed(model, correct > self.allowed):  # more correct than the target allows: go on
                    n = len(self.forget)
                    return Verdict(False, {"forget_mcq_acc_at_least": correct / n, "forget_items_scored": scored})
            # Every item scored and the rule says stop: record the full entry (retain em too).
            retain_em = self._retain_em(model)
            self.last_full = step
            return Verdict(True, {"forget_mcq_acc": correct / len(self.forget), "retain_em": retain_em})
        acc, retain_em = self(model)
        self.last_full = step
        return Verdict(self.target is not None and acc <= self.target, {"forget_mcq_acc": acc, "retain_em": retain_em})

    def finish(self, model: torch.nn.Module, trace: list[dict[str, Any]]) -> None:
        """End the trace with a full entry: a method whose step budget is below the run's (MRP with ``epochs``)
        ends on a check that did not know it was the last. ``model``: the weights that check saw."""
        if trace and "forget_mcq_acc" not in trace[-1]:
            acc, retain_em = self(model)
            trace[-1] = {"step": trace[-1]["step"], "forget_mcq_acc": acc, "retain_em": retain_em}

    # ---- parts ----------------------------------------------------------------------------------

    @staticmethod
    def _agreed(model: torch.nn.Module, flag: bool) -> bool:
        """``flag`` on every rank of a sharded model (each rank must run the same forwards), else ``flag``."""
        params = list(model.parameters())
        if not distributed.is_sharded(params):
            return flag
        return not distributed.any_rank(not flag, params[0].device)

    def _forced_choice(self, idx: np.ndarray, option_logprobs: np.ndarray) -> np.ndarray:
        """Forced choice of the items ``idx`` from their options' log-probs (flat, item by item); updates margins."""
        options = option_logprobs.reshape(len(idx), self.k)
        items = [self.forget[i] for i in idx]
        gold = np.array([it.answer_index for it in items])
        others = options.copy()
        others[np.arange(len(idx)), gold] = -np.inf
        self.margins[idx] = options[np.arange(len(idx)), gold] - others.max(axis=1)
        return forced_choice(options, items)

    def _score_forget(self, model: torch.nn.Module, idx: np.ndarray) -> np.ndarray:
        pairs = [j for i in idx for j in range(i * self.k, (i + 1) * self.k)]
        # A partial check's subset depends on the last check's margins, so it rarely recurs: not cached
        scored = score_answers(model, self.tokenizer, [self.option_prompts[j] for j in pairs],
                               [self.option_answers[j] for j in pairs], keep_layout=False)
        return self._forced_choice(idx, scored.option_logprob)

    def _retain_em(self, model: torch.nn.Module) -> float:
        if not self.retain:
            return float("nan")
        return float(score_answers(model, self.tokenizer, self.retain_prompts, self.retain_answers).exact.mean())
