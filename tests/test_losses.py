"""Sign and gradient direction of each method's loss on a micro model."""

import copy

import pytest
import torch

from bench.data import BatchStream, pad_id, qa_examples
from bench.method import UnlearnBatch, UnlearnContext, UnlearnData
from bench.scoring import mean_nll, sequence_logprob
from methods.ga import GradientAscent
from methods.graddiff import GradDiff
from methods.npo import NPO


@pytest.fixture
def batch(micro_bench, tokenizer):
    pad = pad_id(tokenizer)
    f = next(iter(BatchStream(qa_examples(tokenizer, micro_bench, micro_bench.split("forget")), 4, pad, 0)))
    r = next(iter(BatchStream(qa_examples(tokenizer, micro_bench, micro_bench.split("retain")), 4, pad, 0)))
    return UnlearnBatch(f, r)


def _sgd_step(model, loss_fn, lr=1e-2):
    model = copy.deepcopy(model).train()
    loss = loss_fn(model)
    loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            p -= lr * p.grad
    return model.eval()


def test_ga_loss_is_negative_forget_nll_and_step_raises_it(trained_micro, batch):
    ga = GradientAscent(lr=1e-3)
    assert ga.loss(trained_micro, batch).item() == pytest.approx(-mean_nll(trained_micro, batch.forget).item(), rel=1e-6)
    after = _sgd_step(trained_micro, lambda m: ga.loss(m, batch))
    with torch.no_grad():
        assert mean_nll(after, batch.forget) > mean_nll(trained_micro, batch.forget)


def test_graddiff_combines_and_descends_on_retain(trained_micro, batch):
    gd = GradDiff(lr=1e-3, alpha=2.0)
    with torch.no_grad():
        expected = -mean_nll(trained_micro, batch.forget) + 2.0 * mean_nll(trained_micro, batch.retain)
    assert gd.loss(trained_micro, batch).item() == pytest.approx(expected.item(), rel=1e-5)
    # The retain term alone moves retain NLL down; the full step moves forget NLL up.
    after = _sgd_step(trained_micro, lambda m: gd.loss(m, batch))
    retain_only = _sgd_step(trained_micro, lambda m: mean_nll(m, batch.retain))
    with torch.no_grad():
        assert mean_nll(after, batch.forget) > mean_nll(trained_micro, batch.forget)
        assert mean_nll(retain_only, batch.retain) < mean_nll(trained_micro, batch.retain)


def test_npo_at_reference_and_direction(trained_micro, micro_bench, tokenizer, batch):
    npo = NPO(lr=1e-3, beta=0.5, alpha=0.0)
    data = UnlearnData(micro_bench, tokenizer, micro_bench.split("forget"), micro_bench.split("retain"))
    npo.prepare(trained_micro, data, UnlearnContext(seed=0, device=torch.device("cpu"), max_steps=1))
    # At θ = θ_ref the log-ratio is 0 and each term is (2/β)·log 2.
    assert npo.loss(trained_micro, batch).item() == pytest.approx(2 / 0.5 * torch.log(torch.tensor(2.0)).item(), rel=1e-4)
    after = _sgd_step(trained_micro, lambda m: npo.loss(m, batch))
    with torch.no_grad():
        before_lp = sequence_logprob(trained_micro, batch.forget)[0]
        after_lp = sequence_logprob(after, batch.forget)[0]
    assert after_lp.sum() < before_lp.sum()
    # NPO's gradient at the reference is GA's on the summed log-likelihood, scaled: same direction.
    m1 = copy.deepcopy(trained_micro).train()
    npo.loss(m1, batch).backward()
    m2 = copy.deepcopy(trained_micro).train()
    sequence_logprob(m2, batch.forget)[0].mean().backward()
    g1 = torch.cat([p.grad.flatten() for p in m1.parameters()])
    g2 = torch.cat([p.grad.flatten() for p in m2.parameters()])
    assert torch.nn.functional.cosine_similarity(g1, g2, dim=0) > 0.999


@pytest.mark.parametrize("cls,kwargs", [(GradientAscent, {"lr": -1.0}), (GradDiff, {"lr": 0.0}), (GradDiff, {"alpha": -1.0}),
                                        (NPO, {"beta": 0.0}), (NPO, {"lr": -1e-4})])
def test_invalid_hyperparameters_raise(cls, kwargs):
    with pytest.raises(ValueError):
        cls(**kwargs)
