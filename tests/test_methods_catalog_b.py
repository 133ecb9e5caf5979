"""RMU, GRU, PDU, SAM-NPO and RS-NPO pinned against their formulas, computed here by hand (log-probs
from raw logits, block outputs from ``output_hidden_states``), and their hyperparameter checks."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from bench.data import IGNORE, BatchStream, pad_id, qa_examples
from bench.method import LossMethod, ModelShape, UnlearnBatch, UnlearnContext, UnlearnData
from bench.models import build_base_model
from bench.train import TrainConfig, train_loop
from methods.gru import GRU
from methods.pdu import PDU
from methods.rmu import RMU
from methods.rs_npo import RSNPO
from methods.sam_npo import SAMNPO
from tests.conftest import MICRO_ARCH, compose_config

CPU = torch.device("cpu")


@pytest.fixture
def data(micro_bench, tokenizer):
    return UnlearnData(micro_bench, tokenizer, micro_bench.split("forget"), micro_bench.split("retain"))


@pytest.fixture
def batches(micro_bench, tokenizer):
    pad = pad_id(tokenizer)
    f = iter(BatchStream(qa_examples(tokenizer, micro_bench, micro_bench.split("forget")), 4, pad, 0))
    r = iter(BatchStream(qa_examples(tokenizer, micro_bench, micro_bench.split("retain")), 4, pad, 1))
    return [UnlearnBatch(next(f), next(r)) for _ in range(3)]


def ctx(seed=0):
    return UnlearnContext(seed=seed, device=CPU, max_steps=1)


# -- by-hand pieces (independent of bench.scoring and the methods) ------------------------------
def hand_token_logp(model, b):
    """log p(label_t | < t) at labelled positions: [B, T-1] and its mask."""
    logits = model(input_ids=b.input_ids, attention_mask=b.attention_mask).logits.float()
    lp = F.log_softmax(logits[:, :-1], -1)
    tgt = b.labels[:, 1:]
    mask = tgt != IGNORE
    return torch.gather(lp, 2, tgt.clamp(min=0).unsqueeze(-1)).squeeze(-1) * mask, mask


def hand_nll(model, b):
    lp, mask = hand_token_logp(model, b)
    return -lp.sum() / mask.sum()


def hand_npo_forget(model, ref_logp, b, beta):
    lp, _ = hand_token_logp(model, b)
    return (2 / beta) * torch.log1p(torch.exp(beta * (lp.sum(-1) - ref_logp))).mean()


def flat_grad(loss, params):
    return torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)])


def flat(ts):
    return torch.cat([t.flatten() for t in ts])


def grads_after(method, model, batch):
    """p.grad after the method's step computation (what the shared loop would clip and apply)."""
    for p in model.parameters():
        p.grad = None
    method.loss_and_grad(model, batch)
    return flat([p.grad if p.grad is not None else torch.zeros_like(p) for p in model.parameters()])


# -- the shared loop's loss_and_grad hook --------------------------------------------------------
def test_train_loop_loss_and_grad_hook_sets_the_gradient_and_stops_on_nonfinite():
    model = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 2.0]]))
    calls = []

    def loss_and_grad(_):
        calls.append(model.weight.grad)  # cleared on entry
        model.weight.grad = torch.tensor([[0.5, -1.0]])
        return torch.tensor(3.0)

    cfg = TrainConfig(lr=0.1, max_steps=2, batch_size=1, optimizer="sgd", grad_clip=None, check_every=0)
    res = train_loop(model, lambda _: pytest.fail("loss_fn is not used"), iter(range(9)), cfg, loss_and_grad=loss_and_grad)
    assert res.steps == 2 and res.losses == [3.0, 3.0] and calls == [None, None]
    assert torch.allclose(model.weight, torch.tensor([[0.9, 2.2]]))
    res = train_loop(model, None, iter(range(9)), cfg, loss_and_grad=lambda _: torch.tensor(float("nan")))
    assert res.diverged and res.steps == 0 and torch.allclose(model.weight, torch.tensor([[0.9, 2.2]]))


# -- RMU -------------------------------------------------------------------------------------------
@pytest.fixture
def two_block(tokenizer):
    return build_base_model({"arch": {**MICRO_ARCH, "num_hidden_layers": 2}}, tokenizer, seed=0).eval()


def test_rmu_loss_value_gradient_and_trained_parameters(two_block, data, batches):
    b = batches[0]
    rmu = RMU(lr=1e-3, layer=0, steering=5.0, alpha=3.0)
    rmu.prepare(two_block, data, ctx(seed=7))
    params = rmu.trainable_parameters(two_block)
    names = {id(p): n for n, p in two_block.named_parameters()}
    assert sorted(names[id(p)] for p in params) == sorted(f"model.layers.0.mlp.{k}_proj.weight" for k in ("down", "gate", "up"))
    assert RMU(layer=1).trained_layers == [0, 1] and RMU(layer=4).trained_layers == [2, 3, 4]
    # Perturb the trained MLP so the retain term is not zero.
    model = copy.deepcopy(two_block).train()
    with torch.no_grad():
        for p in rmu.trainable_parameters(model):
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    u = torch.rand(32, generator=torch.Generator().manual_seed(7))
    u = u / u.norm()

    def by_hand(m):
        def term(batch, target):
            h = m(input_ids=batch.input_ids, attention_mask=batch.attention_mask, output_hidden_states=True).hidden_states[1]
            read = torch.zeros_like(batch.labels, dtype=torch.bool)
            read[:, :-1] = batch.labels[:, 1:] != IGNORE  # positions whose next token is labelled
            diff = h[read] - (target[read] if target.dim() == 3 else target)
            return diff.pow(2).sum() / (read.sum() * 32)
        with torch.no_grad():
            ref_h = two_block(input_ids=b.retain.input_ids, attention_mask=b.retain.attention_mask,
                              output_hidden_states=True).hidden_states[1]
        return term(b.forget, 5.0 * u) + 3.0 * term(b.retain, ref_h)

    got, want = rmu.loss(model, b), by_hand(model)
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    mp = rmu.trainable_parameters(model)
    assert torch.allclose(flat_grad(got, mp), flat_grad(by_hand(model), mp), rtol=1e-4, atol=1e-7)
    # At the reference the retain term vanishes.
    at_ref = copy.deepcopy(two_block)
    no_retain = RMU(layer=0, steering=5.0, alpha=0.0)
    no_retain.prepare(two_block, data, ctx(seed=7))
    assert rmu.loss(at_ref, b).item() == pytest.approx(no_retain.loss(at_ref, b).item(), rel=1e-6)


def test_rmu_all_tokens_covers_every_real_position(two_block, data, batches):
    b = batches[0]
    rmu = RMU(layer=0, steering=2.0, alpha=0.0, tokens="all")
    rmu.prepare(two_block, data, ctx(seed=3))
    u = torch.rand(32, generator=torch.Generator().manual_seed(3))
    u = u / u.norm()
    with torch.no_grad():
        h = two_block(input_ids=b.forget.input_ids, attention_mask=b.forget.attention_mask,
                      output_hidden_states=True).hidden_states[1]
        real = b.forget.attention_mask.bool()
        want = (h[real] - 2.0 * u).pow(2).sum() / (real.sum() * 32)
        assert rmu.loss(two_block, b).item() == pytest.approx(want.item(), rel=1e-5)


def test_rmu_unlearn_trains_only_the_chosen_mlps(two_block, data):
    model = copy.deepcopy(two_block)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    RMU(lr=1e-2, layer=1, layers=[1], steering=5.0, alpha=1.0).unlearn(model, data, UnlearnContext(seed=0, device=CPU, max_steps=2))
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(n.startswith("model.layers.1.mlp.") for n in changed)
    assert all(p.requires_grad for p in model.parameters())  # flags restored


# -- GRU ---------------------------------------------------------------------------------------------
def test_gru_update_is_the_rectified_forget_gradient_with_ema(trained_micro, data, batches):
    gamma = 0.8
    gru = GRU(lr=1e-4, gamma=gamma)
    gru.prepare(trained_micro, data, ctx())
    model = copy.deepcopy(trained_micro).train()
    params = list(model.parameters())
    avg = None
    b0, b1, b2 = batches
    # The paired batch, then retain batches of other forget examples (whose gradient conflicts more).
    pairs = [b0, UnlearnBatch(b1.forget, b2.forget), UnlearnBatch(b2.forget, b1.forget)]
    for step, b in enumerate(pairs):
        g_f = flat_grad(-hand_nll(model, b.forget), params)
        g_r = flat_grad(hand_nll(model, b.retain), params)
        avg = gamma * g_r if avg is None else gamma * g_r + (1 - gamma) * avg
        dot = torch.dot(g_f.double(), avg.double())
        want = g_f - (dot / avg.double().pow(2).sum()).float() * avg if dot < 0 else g_f
        got = grads_after(gru, model, b)
        assert gru.projected[step] == bool(dot < 0)
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-7)
        if dot < 0:  # rectified: orthogonal to the smoothed retain gradient
            assert abs(torch.dot(got.double(), avg.double())) < 1e-4 * got.norm() * avg.norm()
    assert any(gru.projected)  # both branches are exercised
    assert not all(gru.projected)


def test_gru_with_identical_batches_makes_no_update_and_alpha_adds_retain(trained_micro, data, batches):
    b = UnlearnBatch(batches[0].forget, batches[0].forget)
    model = copy.deepcopy(trained_micro).train()
    gru = GRU(gamma=1.0)  # g_f = -g_r exactly: the projection removes it all
    gru.prepare(model, data, ctx())
    assert grads_after(gru, model, b).abs().max() < 1e-6
    gru2 = GRU(gamma=1.0, alpha=2.0)
    gru2.prepare(model, data, ctx())
    want = 2.0 * flat_grad(hand_nll(model, b.retain), list(model.parameters()))
    assert torch.allclose(grads_after(gru2, model, b), want, rtol=1e-4, atol=1e-6)


# -- PDU -----------------------------------------------------------------------------------------------
def test_pdu_primal_loss_gradient_and_dual_ascent(trained_micro, data, batches):
    b = batches[0]
    pdu = PDU(lr=1e-4, eps=0.05, lam=0.7, dual_lr=2.0, gamma=1.5)
    pdu.prepare(trained_micro, data, ctx())
    model = copy.deepcopy(trained_micro).train()

    def by_hand(m):
        logits = m(input_ids=b.forget.input_ids, attention_mask=b.forget.attention_mask).logits.float()
        rows, cols = (b.forget.labels[:, 1:] != IGNORE).nonzero(as_tuple=True)
        z = logits[rows, cols]  # positions whose next token is labelled
        margin = (z.max(-1).values - z.mean(-1)).pow(2).mean()
        return 1.5 * margin + 0.7 * (hand_nll(m, b.retain) - 0.05)

    got = pdu.loss(model, b)
    assert got.item() == pytest.approx(by_hand(model).item(), rel=1e-5)
    params = list(model.parameters())
    assert torch.allclose(flat_grad(got, params), flat_grad(by_hand(model), params), rtol=1e-4, atol=1e-6)
    nll_r = hand_nll(model, b.retain).item()
    pdu.after_backward(model, b)
    assert pdu.lambdas == [0.7] and pdu.multiplier == pytest.approx(max(0.0, 0.7 + 2.0 * (nll_r - 0.05)), rel=1e-5)
    # A loose constraint drives λ down to 0 (projection onto λ ≥ 0).
    loose = PDU(eps=100.0, lam=0.5)
    loose.prepare(model, data, ctx())
    loose.loss(model, b)
    loose.after_backward(model, b)
    assert loose.multiplier == 0.0


# -- SAM-NPO and RS-NPO ----------------------------------------------------------------------------
def _ref_logp(model, b):
    with torch.no_grad():
        return hand_token_logp(model, b)[0].sum(-1)


def test_sam_npo_update_is_the_forget_gradient_at_the_perturbed_point(trained_micro, data, batches):
    b, beta, alpha, rho = batches[0], 0.5, 1.5, 0.05
    sam = SAMNPO(lr=1e-4, beta=beta, alpha=alpha, rho=rho)
    sam.prepare(trained_micro, data, ctx())
    # Move away from the reference so NPO's gradient is not GA's.
    model = copy.deepcopy(trained_micro).train()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=torch.Generator().manual_seed(3)))
    ref = _ref_logp(trained_micro, b.forget)
    hand = copy.deepcopy(model)
    params = list(hand.parameters())
    g0 = flat_grad(hand_npo_forget(hand, ref, b.forget, beta), params)
    g_r = flat_grad(alpha * hand_nll(hand, b.retain), params)
    eps = rho * g0 / g0.norm()
    with torch.no_grad():
        torch.nn.utils.vector_to_parameters(torch.nn.utils.parameters_to_vector(params) + eps, params)
    g_sam = flat_grad(hand_npo_forget(hand, ref, b.forget, beta), params)
    before = [p.detach().clone() for p in model.parameters()]
    got = grads_after(sam, model, b)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))  # restored exactly
    assert torch.allclose(got, g_sam + g_r, rtol=1e-3, atol=1e-6)
    assert not torch.allclose(got, g0 + g_r, rtol=1e-2, atol=1e-5)  # the perturbation matters
    # rho = 0 is NPO + retain exactly.
    npo = SAMNPO(beta=beta, alpha=alpha, rho=0.0)
    npo.prepare(trained_micro, data, ctx())
    assert torch.allclose(grads_after(npo, model, b), g0 + g_r, rtol=1e-4, atol=1e-6)
    assert sam.loss(model, b).item() == pytest.approx(
        (hand_npo_forget(model, ref, b.forget, beta) + alpha * hand_nll(model, b.retain)).item(), rel=1e-5)


def test_rs_npo_update_is_the_forget_gradient_at_seeded_gaussian_noise(trained_micro, data, batches):
    b, beta, alpha, sigma = batches[1], 0.1, 1.0, 0.02
    rs = RSNPO(lr=1e-4, beta=beta, alpha=alpha, sigma=sigma)
    rs.prepare(trained_micro, data, ctx(seed=5))
    model = copy.deepcopy(trained_micro).train()
    ref = _ref_logp(trained_micro, b.forget)
    hand = copy.deepcopy(model)
    params = list(hand.parameters())
    g_r = flat_grad(alpha * hand_nll(hand, b.retain), params)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in params:
            p.add_(sigma * torch.randn(p.shape, generator=gen))
    want = flat_grad(hand_npo_forget(hand, ref, b.forget, beta), params) + g_r
    before = [p.detach().clone() for p in model.parameters()]
    got = grads_after(rs, model, b)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))
    assert torch.allclose(got, want, rtol=1e-3, atol=1e-6)
    # the next step draws fresh noise
    assert not torch.allclose(grads_after(rs, model, b), got)


# -- hyperparameter validation --------------------------------------------------------------------------
@pytest.mark.parametrize("cls,kwargs,key", [
    (RMU, {"layer": -1}, "method.layer"), (RMU, {"layer": 1, "layers": [2]}, "method.layers"),
    (RMU, {"layers": []}, "method.layers"), (RMU, {"steering": 0.0}, "method.steering"), (RMU, {"alpha": -1.0}, "method.alpha"),
    (RMU, {"tokens": "some"}, "method.tokens"),
    (GRU, {"gamma": 0.0}, "method.gamma"), (GRU, {"gamma": 1.5}, "method.gamma"), (GRU, {"forget_loss": "x"}, "method.forget_loss"),
    (GRU, {"alpha": -1.0}, "method.alpha"), (GRU, {"beta": 0.0}, "method.beta"),
    (PDU, {"eps": -0.1}, "method.eps"), (PDU, {"lam": -1.0}, "method.lam"), (PDU, {"dual_lr": 0.0}, "method.dual_lr"),
    (PDU, {"gamma": 0.0}, "method.gamma"),
    (SAMNPO, {"rho": -0.1}, "method.rho"), (SAMNPO, {"beta": 0.0}, "method.beta"), (SAMNPO, {"alpha": -1.0}, "method.alpha"),
    (RSNPO, {"sigma": -1.0}, "method.sigma"), (RSNPO, {"beta": -1.0}, "method.beta"), (RSNPO, {"alpha": -2.0}, "method.alpha"),
    (SAMNPO, {"lr": 0.0}, "lr"),
])
def test_invalid_hyperparameters_name_the_key(cls, kwargs, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        cls(**kwargs)


def test_rmu_layer_outside_the_model_is_rejected_before_compute():
    with pytest.raises(ValueError, match=r"method\.layer=2"):
        RMU(layer=2).check_plan(1, ModelShape(hidden_size=128, num_layers=2))


@pytest.mark.parametrize("name,cls", [("rmu", RMU), ("gru", GRU), ("pdu", PDU), ("sam_npo", SAMNPO), ("rs_npo", RSNPO)])
def test_configs_instantiate(name, cls):
    # The harness's one method parser (a method YAML also holds its tune: search space, which is no argument).
    from bench.run import instantiate_method
    assert isinstance(instantiate_method(compose_config(f"method={name}")), cls)
