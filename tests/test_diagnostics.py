"""Diagnostics suite (bench/suites/diagnostics.py): D± by hand, attributions, logit lens, wrapped models."""

import copy

import numpy as np
import pytest
import torch

from bench.data import encode_qa, pad_id
from bench.suites import SuiteContext, available_suites
from bench.suites import diagnostics as diag


def _extremes(s, valid):
    hi, lo = diag.token_extremes(torch.tensor(s, dtype=torch.float64), torch.tensor(valid))
    return diag.NeuronExtremes(hi, lo, np.zeros(2), np.array(["up_proj"] * 2))


def test_d_plus_d_minus_by_hand_on_two_neurons():
    # Two facts, three token positions (the last of fact 2 is padding), two neurons: s[fact][token][neuron].
    valid = [[True, True, True], [True, True, False]]
    before = [[[0.5, -0.1], [0.2, -0.4], [0.1, 0.0]],
              [[0.3, 0.2], [-0.2, -0.1], [9.0, -9.0]]]  # padding values must be ignored
    after = [[[0.1, -0.9], [-0.3, -0.2], [0.0, 0.1]],
             [[-0.1, 0.4], [-0.5, -0.6], [9.0, -9.0]]]
    b, a = _extremes(before, valid), _extremes(after, valid)
    # Neuron 1: max before 0.5, 0.3; max after (clamped at 0) 0.1, 0  -> D+ = ((0.5-0.1) + (0.3-0)) / 2 = 0.35
    #           min before 0.1, -0.2; min after -0.3, -0.5          -> D- = ((0.1+0.3) + (-0.2+0.5)) / 2 = 0.35
    # Neuron 2: max before 0.0, 0.2; max after 0.1, 0.4             -> D+ = ((0-0.1) + (0.2-0.4)) / 2 < 0 -> 0
    #           min before -0.4, -0.1; min after -0.9, -0.6         -> D- = ((-0.4+0.9) + (-0.1+0.6)) / 2 = 0.5
    d_plus, d_minus = diag.influence_variation(b, a)
    np.testing.assert_allclose(d_plus, [0.35, 0.0], atol=1e-12)
    np.testing.assert_allclose(d_minus, [0.35, 0.5], atol=1e-12)
    assert diag.top_sum(d_minus, 1) == pytest.approx(0.5)
    assert diag.top_sum(d_minus, 100) == pytest.approx(0.85)
    assert diag.hide_ratio(diag.top_sum(d_minus, 1), diag.top_sum(d_plus, 1)) == pytest.approx(0.5 / 0.35)
    assert diag.hide_ratio(0.0, 0.0) == 0.0


@pytest.mark.parametrize("objective", ["prob", "logprob"])
def test_attribution_matches_manual_gradient_times_activation(trained_micro, micro_bench, tokenizer, objective):
    items = micro_bench.split("forget")[:3]
    examples = [encode_qa(tokenizer, micro_bench.prompt(it.question), it.answer) for it in items]
    ext = diag.neuron_extremes(trained_micro, examples, pad_id(tokenizer), batch_size=2, objective=objective)  # batched, padded
    mods = diag.projection_modules(trained_micro)
    assert ext.max.shape == (3, sum(m.out_features for *_, m in mods))
    # One fact alone, one module (up_proj of layer 0), by hand.
    offset = sum(m.out_features for name, *_, m in mods[: [k for _, _, k, _ in mods].index("up_proj")])
    module = next(m for _, _, k, m in mods if k == "up_proj")
    ids, labels = examples[1]
    store = {}
    handle = module.register_forward_hook(lambda _m, _i, out: store.setdefault("a", out))
    try:
        logits = trained_micro(input_ids=torch.tensor([ids])).logits[0, :-1]
        target = torch.tensor(labels[1:])
        keep = target != -100
        logp = torch.log_softmax(logits, -1)[keep.nonzero()[:, 0], target[keep]].sum()
        (grad,) = torch.autograd.grad(logp.exp() if objective == "prob" else logp, store["a"])
    finally:
        handle.remove()
    s = (store["a"] * grad)[0, : len(ids) - 1].detach().double()  # every position but the final end token
    width = module.out_features
    torch.testing.assert_close(ext.max[1, offset : offset + width], s.amax(0), rtol=1e-4, atol=1e-9)
    torch.testing.assert_close(ext.min[1, offset : offset + width], s.amin(0), rtol=1e-4, atol=1e-9)


def test_choice_attribution_matches_manual_forced_choice_gradient(trained_micro, micro_bench, tokenizer):
    items = micro_bench.split("forget")[:3]
    k = micro_bench.n_options
    options = [(it.answer, *[o for o in it.options if o != it.answer]) for it in items]
    examples = [encode_qa(tokenizer, micro_bench.prompt(it.question), a) for it, opts in zip(items, options) for a in opts]
    ext = diag.neuron_extremes(trained_micro, examples, pad_id(tokenizer), batch_size=2, objective="choice", group=k)
    mods = diag.projection_modules(trained_micro)
    assert ext.max.shape == (3, sum(m.out_features for *_, m in mods))
    offset = sum(m.out_features for name, *_, m in mods[: [kd for _, _, kd, _ in mods].index("up_proj")])
    module = next(m for _, _, kd, m in mods if kd == "up_proj")
    rows = examples[k: 2 * k]  # fact 1's options: single-token answers, so no padding
    store = {}
    handle = module.register_forward_hook(lambda _m, _i, out: store.setdefault("a", out))
    try:
        ids = torch.tensor([r[0] for r in rows])
        labels = torch.tensor([r[1] for r in rows])[:, 1:]
        logp = torch.log_softmax(trained_micro(input_ids=ids).logits[:, :-1], -1)
        keep = labels != -100
        seq = (torch.gather(logp, 2, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1) * keep).sum(-1)
        (grad,) = torch.autograd.grad(torch.softmax(seq, 0)[0], store["a"])
    finally:
        handle.remove()
    s = (store["a"] * grad).sum(0)[: ids.shape[1] - 1].detach().double()  # shared prompt: the rows' s add up
    width = module.out_features
    torch.testing.assert_close(ext.max[1, offset : offset + width], s.amax(0), rtol=1e-4, atol=1e-9)
    torch.testing.assert_close(ext.min[1, offset : offset + width], s.amin(0), rtol=1e-4, atol=1e-9)
    ctx = _ctx(micro_bench, tokenizer, trained_micro, top_m=[10], objectives=["choice"])
    assert {r.metric for r in diag.evaluate(trained_micro, "target", ctx).rows} >= {"hide_ratio_choice@10", "erase_top_choice@10"}


def _ctx(micro_bench, tokenizer, target, **settings):
    return SuiteContext(bench=micro_bench, tokenizer=tokenizer, oracle=target, target=target,
                        settings={"diagnostics": settings} if settings else {})


def test_suite_rows_zero_at_target_and_positive_after_change(trained_micro, micro_bench, tokenizer):
    assert "diagnostics" in available_suites()
    ctx = _ctx(micro_bench, tokenizer, trained_micro, top_m=[10, 100], objectives=["prob", "logprob"])
    rows = {r.metric: r.value for r in diag.evaluate(trained_micro, "target", ctx).rows}
    assert rows["hide_top_logp@10"] == rows["erase_top_logp@10"] == 0.0
    assert rows["erase_top@10"] == rows["hide_top@10"] == rows["hide_ratio@10"] == 0.0
    changed = copy.deepcopy(trained_micro)
    with torch.no_grad():
        torch.manual_seed(0)
        for p in changed.parameters():
            p.add_(0.05 * torch.randn_like(p))
    out = diag.evaluate(changed, "unlearned", ctx)
    rows = {r.metric: r.value for r in out.rows}
    assert rows["erase_top@100"] > 0 and rows["hide_top@100"] > 0 and rows["hide_top_logp@100"] > 0
    assert rows["erase_top@100"] >= rows["erase_top@10"]
    assert rows["hide_ratio@10"] == pytest.approx(rows["hide_top@10"] / rows["erase_top@10"])
    assert {"logit_lens_acc@layer0"} <= rows.keys()
    modules = [e for e in out.examples if e.get("kind") == "hide_erase_module" and e["stage"] == "unlearned"]
    assert {e["module"] for e in modules} == set(diag.MODULES)


def test_logit_lens_of_trained_model_on_its_training_facts_is_above_chance(trained_micro, micro_bench, tokenizer):
    ctx = _ctx(micro_bench, tokenizer, None, lens_splits=["forget", "retain"])
    rows = diag.evaluate(trained_micro, "target", ctx).rows
    acc = {(r.split, r.metric): r.value for r in rows}
    assert acc[("forget", "logit_lens_acc@layer0")] >= 0.75
    assert acc[("retain", "logit_lens_acc@layer0")] >= 0.75
    # The last layer's lens is the model's own output: same verdict as comparing full-model scores.


class _Wrapper(torch.nn.Module):
    """A stand-in for MRP: wraps the model and edits the residual stream with block hooks."""

    def __init__(self, model, scale):
        super().__init__()
        self.model = model
        self.handles = [b.register_forward_hook(lambda _m, _i, out: (out[0] * scale,) + tuple(out[1:])
                                                if isinstance(out, tuple) else out * scale)
                        for b in model.model.layers]

    def forward(self, **kwargs):
        return self.model(**kwargs)


def test_works_on_wrapped_models(trained_micro, micro_bench, tokenizer):
    ctx = _ctx(micro_bench, tokenizer, trained_micro, top_m=[10])
    wrapped = _Wrapper(copy.deepcopy(trained_micro), scale=1.0)
    try:
        rows = {r.metric: r.value for r in diag.evaluate(wrapped, "unlearned", ctx).rows}
        assert rows["erase_top@10"] == pytest.approx(0.0, abs=1e-9) and rows["hide_top@10"] == pytest.approx(0.0, abs=1e-9)
    finally:
        [h.remove() for h in wrapped.handles]
    # A hook that edits the residual stream is seen by the lens.
    wrapped = _Wrapper(copy.deepcopy(trained_micro), scale=-1.0)
    try:
        rows = {r.metric: r.value for r in diag.evaluate(wrapped, "unlearned", ctx).rows}
        plain = {r.metric: r.value for r in diag.evaluate(trained_micro, "target", ctx).rows}
        assert rows["logit_lens_acc@layer0"] != plain["logit_lens_acc@layer0"] or rows["hide_top@10"] > 0
    finally:
        [h.remove() for h in wrapped.handles]
