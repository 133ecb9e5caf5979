"""Ssiuu (methods/ssiuu.py): penalty at the first step, the extra gradient (surrogate and exact) on the batch
and on the whole forget set, λ = 0, base choice."""

import copy

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from bench.data import BatchStream, pad_id, qa_examples
from bench.method import UnlearnBatch, UnlearnContext, UnlearnData
from bench.run import instantiate_method
from bench.scoring import sequence_logprob
from methods.graddiff import GradDiff
from methods.npo import NPO
from methods.ssiuu import Ssiuu
from tests.conftest import compose_config


@pytest.fixture
def batches(micro_bench, tokenizer):
    pad = pad_id(tokenizer)
    f = iter(BatchStream(qa_examples(tokenizer, micro_bench, micro_bench.split("forget")), 4, pad, 0))
    r = iter(BatchStream(qa_examples(tokenizer, micro_bench, micro_bench.split("retain")), 4, pad, 1))
    return [UnlearnBatch(next(f), next(r)) for _ in range(2)]


def _grads(model):
    return [p.grad.detach().clone() for p in model.parameters()]


def _backward(method, model, batch):
    model.zero_grad(set_to_none=True)
    method.loss(model, batch).backward()
    method.after_backward(model, batch)
    return _grads(model)


def test_penalty_is_zero_at_first_step(trained_micro, batches):
    model = copy.deepcopy(trained_micro).train()
    ss = Ssiuu(lam=10.0, attribution_set="batch")
    got = _backward(ss, model, batches[0])
    want = _backward(GradDiff(alpha=1.0), model, batches[0])
    assert ss.penalties == [0.0]
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=0, atol=0)


def test_extra_gradient_equals_autograd_on_surrogate(trained_micro, batches):
    lam = 0.7
    model = copy.deepcopy(trained_micro).train()
    ss = Ssiuu(lam=lam, attribution_set="batch")
    _backward(ss, model, batches[0])  # step 1 stores A_1
    with torch.no_grad():  # move φ so that A_2 differs from A_1 beyond the batch change
        for p in model.parameters():
            p -= 1e-2 * p.grad
    a_prev = [a.clone() for a in ss._prev]
    model.zero_grad(set_to_none=True)
    ss.after_backward(model, batches[1])  # with no base gradient, p.grad is the extra gradient alone
    got = _grads(model)
    assert ss.penalties[-1] > 0

    # Surrogate λ·Σ_{A<0} (A_prev − φ⊙stopgrad(g))², differentiated by autograd.
    params = list(model.parameters())
    g = torch.autograd.grad(sequence_logprob(model, batches[1].forget)[0].exp().sum(), params)
    g = [x.detach() for x in g]
    surrogate = sum(((ap - p * gi)[(p.detach() * gi) < 0] ** 2).sum() for p, gi, ap in zip(params, g, a_prev))
    want_extra = torch.autograd.grad(lam * surrogate, params)
    assert sum(float(w.abs().sum()) for w in want_extra) > 0
    for got_p, want_p in zip(got, want_extra):
        torch.testing.assert_close(got_p, want_p, rtol=1e-5, atol=1e-12)


def test_lambda_zero_reproduces_graddiff_step_for_step(trained_micro, micro_bench, tokenizer):
    data = UnlearnData(micro_bench, tokenizer, micro_bench.split("forget"), micro_bench.split("retain"))
    ctx = UnlearnContext(seed=0, device=torch.device("cpu"), max_steps=4, batch_size=4)
    gd_model, gd = GradDiff(lr=1e-3).unlearn(copy.deepcopy(trained_micro), data, ctx)
    ss_model, ss = Ssiuu(lr=1e-3, lam=0.0).unlearn(copy.deepcopy(trained_micro), data, ctx)
    assert ss.steps == gd.steps == 4
    assert ss.losses == gd.losses
    for a, b in zip(gd_model.parameters(), ss_model.parameters()):
        assert torch.equal(a, b)
    # And λ > 0 does change the trajectory.
    other, _ = Ssiuu(lr=1e-3, lam=1e4).unlearn(copy.deepcopy(trained_micro), data, ctx)
    assert any(not torch.equal(a, b) for a, b in zip(gd_model.parameters(), other.parameters()))


def test_npo_base_uses_npo_loss(trained_micro, micro_bench, tokenizer, batches):
    data = UnlearnData(micro_bench, tokenizer, micro_bench.split("forget"), micro_bench.split("retain"))
    ctx = UnlearnContext(seed=0, device=torch.device("cpu"), max_steps=1)
    ss, npo = Ssiuu(lam=1.0, base="npo", beta=0.5), NPO(beta=0.5)
    ss.prepare(trained_micro, data, ctx)
    npo.prepare(trained_micro, data, ctx)
    with torch.no_grad():
        assert ss.loss(trained_micro, batches[0]).item() == pytest.approx(npo.loss(trained_micro, batches[0]).item())


@pytest.mark.parametrize("kwargs,needle", [({"lam": -1.0}, "lam"), ({"attribution_set": "all"}, "attribution_set"),
                                           ({"penalty_grad": "hessian"}, "penalty_grad"), ({"attribution_max": 0}, "attribution_max"), ({"base": "ga"}, "base"), ({"alpha": -1.0}, "alpha"),
                                           ({"base": "npo", "beta": 0.0}, "beta"), ({"lr": 0.0}, "lr")])
def test_invalid_hyperparameters_raise(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        Ssiuu(**kwargs)


def test_config_instantiates():
    method = instantiate_method(compose_config("method=ssiuu", "method.lam=0.5", "method.base=npo"))
    assert isinstance(method, Ssiuu) and method.lam == 0.5 and method.base == "npo"


def _prepared(ss, model, micro_bench, tokenizer, seed=0):
    data = UnlearnData(micro_bench, tokenizer, micro_bench.split("forget"), micro_bench.split("retain"))
    ss.prepare(model, data, UnlearnContext(seed=seed, device=torch.device("cpu"), max_steps=1, batch_size=4))
    return data


def _penalty_autograd(model, attribution_batches, a_prev, lam):
    """R = λ·Σ_{A_t<0} (A_prev − φ⊙g(φ))² with g = ∂ΣP/∂φ kept differentiable, and its autograd gradient."""
    params = list(model.parameters())
    g = None
    with sdpa_kernel([SDPBackend.MATH]):  # the fused attention kernels have no double backward
        for b in attribution_batches:
            gb = torch.autograd.grad(sequence_logprob(model, b)[0].exp().sum(), params, create_graph=True)
            g = list(gb) if g is None else [x + y for x, y in zip(g, gb)]
        attr = [p * gi for p, gi in zip(params, g)]
        r = lam * sum(((ap - a)[a.detach() < 0] ** 2).sum() for a, ap in zip(attr, a_prev))
        return torch.autograd.grad(r, params), g


def _second_step(ss, model, batches):
    """Step 1 stores A_1; φ moves; the extra gradient of step 2 alone (no base gradient) is returned."""
    _backward(ss, model, batches[0])
    with torch.no_grad():
        for p in model.parameters():
            p -= 1e-2 * p.grad
    a_prev = [a.clone() for a in ss._prev]
    model.zero_grad(set_to_none=True)
    ss.after_backward(model, batches[1])
    return _grads(model), a_prev


@pytest.mark.parametrize("attribution_set", ["batch", "forget"])
def test_exact_penalty_gradient_equals_autograd_of_r(trained_micro, micro_bench, tokenizer, batches, attribution_set):
    lam = 0.7
    model = copy.deepcopy(trained_micro).train()
    ss = Ssiuu(lam=lam, attribution_set=attribution_set, penalty_grad="exact")
    _prepared(ss, model, micro_bench, tokenizer)
    got, a_prev = _second_step(ss, model, batches)
    assert ss.penalties[-1] > 0
    want, g = _penalty_autograd(model, ss.attribution_batches(batches[1]), a_prev, lam)
    scale = max(float(w.abs().max()) for w in want)
    for got_p, want_p in zip(got, want):  # float32 summation order differs (two passes vs one graph)
        torch.testing.assert_close(got_p, want_p, rtol=1e-3, atol=1e-5 * scale)
    # The Hessian term matters: the surrogate's gradient (g held constant) is not the exact one.
    surrogate = [2 * lam * torch.where(a < 0, a - ap, torch.zeros_like(a)) * gi.detach()
                 for a, ap, gi in zip([p.detach() * gi.detach() for p, gi in zip(model.parameters(), g)], a_prev, g)]
    gap = sum(float((w - s).abs().sum()) for w, s in zip(want, surrogate))
    assert gap > 1e-3 * sum(float(w.abs().sum()) for w in want)


def test_forget_set_attribution_uses_the_same_items_every_step(trained_micro, micro_bench, tokenizer, batches):
    """attribution_set=forget: A_t covers the whole forget set, whatever the step's batch; the penalty
    is then 0 when φ does not move, while the batch reading still sees the batch change."""
    model = copy.deepcopy(trained_micro).train()
    ss = Ssiuu(lam=1.0, attribution_set="forget")
    _prepared(ss, model, micro_bench, tokenizer)
    n_examples = sum(b.input_ids.shape[0] for b in ss._attribution_batches)
    assert n_examples == len(qa_examples(tokenizer, micro_bench, micro_bench.split("forget")))
    for b in batches:
        model.zero_grad(set_to_none=True)
        ss.after_backward(model, b)
    assert ss.penalties == [0.0, 0.0]  # same φ, same items: A_2 = A_1 exactly
    by_batch = Ssiuu(lam=1.0, attribution_set="batch")
    for b in batches:
        model.zero_grad(set_to_none=True)
        by_batch.after_backward(model, b)
    assert by_batch.penalties[1] > 0  # same φ, different items: batch-to-batch noise


def test_forget_set_budget_draws_a_fixed_seeded_subset(trained_micro, micro_bench, tokenizer):
    n = len(qa_examples(tokenizer, micro_bench, micro_bench.split("forget")))
    subsets = []
    for seed in (0, 0, 1):
        ss = Ssiuu(attribution_max=n - 3)
        _prepared(ss, trained_micro, micro_bench, tokenizer, seed=seed)
        subsets.append(torch.cat([b.input_ids.flatten() for b in ss._attribution_batches]))
    assert sum(b.input_ids.shape[0] for b in ss._attribution_batches) == n - 3
    assert torch.equal(subsets[0], subsets[1]) and not torch.equal(subsets[0], subsets[2])
