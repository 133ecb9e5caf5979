"""The stopping check (bench.stopping): a partial check's verdict is the full check's, and the trace says which is which."""

import numpy as np
import pytest

from bench.items import mcq_correct
from bench.stopping import StopCheck, most_correct_allowed

pytestmark = pytest.mark.usefixtures("one_thread")


def test_most_correct_allowed_is_the_rules_own_comparison():
    for n in (1, 7, 48, 210):
        for target in (0.0, 0.1, 0.25, 0.3, 1 / 3, 0.5, 0.999, 1.0):
            c = most_correct_allowed(target, n)
            assert all((k / n <= target) == (k <= c) for k in range(n + 1))
    assert most_correct_allowed(-0.1, 5) == -1


def _forget(micro_bench):
    # Learned items and never-seen ones (holdout): some right, some wrong, and room for an early exit.
    forget = micro_bench.split("forget") + micro_bench.split("retain") + micro_bench.split("holdout")
    return forget, micro_bench.split("retain")


def test_partial_checks_give_the_full_checks_verdict(trained_micro, micro_bench, tokenizer):
    forget, retain = _forget(micro_bench)
    correct = mcq_correct(trained_micro, tokenizer, micro_bench, forget)
    acc, n = float(correct.mean()), len(forget)
    assert 0.2 < acc < 0.95, "the fixture must get some items right and some wrong"
    saved = False
    for target in sorted({0.0, 0.1, acc - 1 / n, acc - 0.5 / n, acc, acc + 1 / n, 0.97, 1.0}):
        check = StopCheck(micro_bench, tokenizer, forget, retain, target=target, trace_every=100, max_steps=300,
                          min_batch_items=1)
        first = check.check(trained_micro, 0)  # full: every item, and retain em
        assert first.entry["forget_mcq_acc"] == pytest.approx(acc) and first.stop == (acc <= target)
        assert "retain_em" in first.entry
        later = check.check(trained_micro, 5)  # partial
        assert later.stop == (acc <= target), target
        if later.stop:  # a stopping check records the full entry
            assert later.entry["forget_mcq_acc"] == pytest.approx(acc) and "retain_em" in later.entry
        else:
            lower, scored = later.entry["forget_mcq_acc_at_least"], later.entry["forget_items_scored"]
            assert "forget_mcq_acc" not in later.entry and "retain_em" not in later.entry
            assert target < lower <= acc + 1e-12 and 1 <= scored <= n
            saved |= scored < n
    assert saved, "far from the target a partial check ends before scoring every item"


def test_which_checks_are_full(trained_micro, micro_bench, tokenizer):
    forget, retain = _forget(micro_bench)
    check = StopCheck(micro_bench, tokenizer, forget, retain, target=0.0, trace_every=10, max_steps=23, min_batch_items=1)
    full = [s for s in (0, 5, 10, 15, 20, 23) if "forget_mcq_acc" in check.check(trained_micro, s).entry]
    assert full == [0, 10, 20, 23]  # step 0, every trace_every steps after the last full one, the step budget
    every = StopCheck(micro_bench, tokenizer, forget, retain, target=0.0, trace_every=None)
    assert all("forget_mcq_acc" in every.check(trained_micro, s).entry for s in (0, 5, 10))


def test_partial_checks_score_the_most_confident_items_first(trained_micro, micro_bench, tokenizer):
    forget, retain = _forget(micro_bench)
    check = StopCheck(micro_bench, tokenizer, forget, retain, target=0.0, trace_every=100, min_batch_items=1)
    check.check(trained_micro, 0)
    margins = check.margins.copy()
    assert ((margins > 0) == mcq_correct(trained_micro, tokenizer, micro_bench, forget)).all()
    verdict = check.check(trained_micro, 5)
    assert verdict.entry["forget_items_scored"] == 1  # target 0: the most confident item (correct) decides "go on"
    assert np.argmax(margins) == np.argsort(-margins, kind="stable")[0]


def test_partial_checks_leave_the_layout_cache_to_the_passes_that_recur(trained_micro, micro_bench, tokenizer,
                                                                       monkeypatch):
    """A partial check's subset depends on the last margins, so its layout would only push out the full pass's
    (scored again at every full check, every stage and every attack checkpoint)."""
    from bench import scoring

    forget, retain = _forget(micro_bench)
    cache = scoring._LayoutCache()
    monkeypatch.setattr(scoring, "LAYOUTS", cache)
    check = StopCheck(micro_bench, tokenizer, forget, retain, target=0.0, trace_every=100, min_batch_items=1)
    check.check(trained_micro, 0)
    full = list(cache.entries)
    assert len(full) == 1
    assert check.check(trained_micro, 5).entry["forget_items_scored"] < len(forget)  # partial
    assert list(cache.entries) == full


def test_finish_ends_the_trace_with_a_full_entry(trained_micro, micro_bench, tokenizer):
    """A method with a smaller step budget than the run's (MRP with epochs) ends on a partial check."""
    forget, retain = _forget(micro_bench)
    check = StopCheck(micro_bench, tokenizer, forget, retain, target=0.0, trace_every=100, max_steps=300, min_batch_items=1)
    trace = [{"step": s, **check.check(trained_micro, s).entry} for s in (0, 5)]
    assert "forget_mcq_acc" not in trace[-1]
    check.finish(trained_micro, trace)
    assert trace[-1]["step"] == 5 and trace[-1]["forget_mcq_acc"] == trace[0]["forget_mcq_acc"] and "retain_em" in trace[-1]
    before = list(trace)
    check.finish(trained_micro, trace)  # a full last entry stays as it is
    assert trace == before
