"""Ssiuu (methods/ssiuu.py): penalty at the first step, the extra gradient, λ = 0, base choice."""

import copy

import pytest
import torch

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
    ss = Ssiuu(lam=10.0)
    got = _backward(ss, model, batches[0])
    want = _backward(GradDiff(alpha=1.0), model, batches[0])
    assert ss.penalties == [0.0]
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=0, atol=0)


def test_extra_gradient_equals_autograd_on_surrogate(trained_micro, batches):
    lam = 0.7
    model = copy.deepcopy(trained_micro).train()
    ss = Ssiuu(lam=lam)
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


@pytest.mark.parametrize("kwargs,needle", [({"lam": -1.0}, "lam"), ({"base": "ga"}, "base"), ({"alpha": -1.0}, "alpha"),
                                           ({"base": "npo", "beta": 0.0}, "beta"), ({"lr": 0.0}, "lr")])
def test_invalid_hyperparameters_raise(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        Ssiuu(**kwargs)


def test_config_instantiates():
    method = instantiate_method(compose_config("method=ssiuu", "method.lam=0.5", "method.base=npo"))
    assert isinstance(method, Ssiuu) and method.lam == 0.5 and method.base == "npo"
