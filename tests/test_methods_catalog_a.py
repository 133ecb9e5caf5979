"""SimNPO, IdkDPO, UNDIAL, WGA, SatImp, CE-U and the KL retain term (issue 12, part A).

Each loss is pinned, value and gradient, to its formula written here from raw logits with plain
torch ops (no bench.scoring, no method code), on a micro model that has moved away from its
reference (so log-ratios, KL and distillation targets are not trivially zero).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from bench.data import BatchStream, collate, encode_qa, pad_id, qa_examples
from bench.errors import ConfigError
from bench.method import UnlearnBatch, UnlearnContext, UnlearnData
from bench.run import build_method
from methods.ceu import CEU
from methods.graddiff import GradDiff
from methods.idkdpo import IdkDPO, load_refusals, refusal_examples
from methods.npo import NPO
from methods.satimp import SatImp
from methods.simnpo import SimNPO
from methods.undial import UNDIAL
from methods.wga import WGA
from tests.conftest import compose_config

CPU = torch.device("cpu")


# -- fixtures and hand-written formulas --------------------------------------------------------

@pytest.fixture
def data(micro_bench, tokenizer):
    return UnlearnData(micro_bench, tokenizer, micro_bench.split("forget"), micro_bench.split("retain"))


@pytest.fixture
def batch(data, tokenizer):
    pad = pad_id(tokenizer)
    f = next(iter(BatchStream(data.examples("forget"), 4, pad, 0)))
    r = next(iter(BatchStream(data.examples("retain"), 4, pad, 0)))
    return UnlearnBatch(f, r)


@pytest.fixture
def moved(trained_micro):
    """The micro model with every weight nudged (seeded): the model 'during' unlearning."""
    m = copy.deepcopy(trained_micro)
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in m.parameters():
            p += 0.05 * p.std().nan_to_num(0.0) * torch.randn(p.shape, generator=gen)
    return m.eval()


def ctx(seed=0):
    return UnlearnContext(seed=seed, device=CPU, max_steps=2, batch_size=4, check_every=0)


def shifted(model, b):
    """Full-sequence next-token log-softmax, labels and mask, shifted by one: [B, T-1, V], [B, T-1], [B, T-1]."""
    logits = model(input_ids=b.input_ids, attention_mask=b.attention_mask).logits[:, :-1].float()
    labels = b.labels[:, 1:]
    return F.log_softmax(logits, -1), labels, labels != -100


def tok_logp(model, b):
    logp, labels, mask = shifted(model, b)
    return logp.gather(-1, labels.clamp(min=0)[..., None])[..., 0] * mask, mask


def seq_logp(model, b):
    lp, mask = tok_logp(model, b)
    return lp.sum(1), mask.sum(1)


def nll(model, b):
    lp, mask = tok_logp(model, b)
    return -lp.sum() / mask.sum()


def kl_ref_model(model, ref, b):
    logq, _, mask = shifted(model, b)
    with torch.no_grad():
        logp, _, _ = shifted(ref, b)
    kl = (logp.exp() * (logp - logq)).sum(-1)
    return kl[mask].mean()


def value_and_grad(model, fn):
    m = copy.deepcopy(model)
    for p in m.parameters():
        p.requires_grad_(True)
        p.grad = None
    loss = fn(m)
    loss.backward()
    return loss.detach(), torch.cat([p.grad.flatten() for p in m.parameters()])


def assert_pinned(model, method_loss, expected_loss, rtol=1e-4):
    v1, g1 = value_and_grad(model, method_loss)
    v2, g2 = value_and_grad(model, expected_loss)
    assert v1.item() == pytest.approx(v2.item(), rel=rtol, abs=1e-6)
    assert g2.norm() > 0
    torch.testing.assert_close(g1, g2, rtol=rtol, atol=1e-6 * g2.abs().max().item())


# -- SimNPO -------------------------------------------------------------------------------------

@pytest.mark.parametrize("retain_loss", ["nll", "kl"])
def test_simnpo_pinned_to_formula(trained_micro, moved, data, batch, retain_loss):
    beta, gamma, alpha = 2.5, 0.3, 0.7
    m = SimNPO(beta=beta, gamma=gamma, alpha=alpha, retain_loss=retain_loss)
    m.prepare(trained_micro, data, ctx())

    def expected(model):
        logp, n = seq_logp(model, batch.forget)
        forget = -(2 / beta) * F.logsigmoid(-(beta / n) * logp - gamma).mean()
        retain = nll(model, batch.retain) if retain_loss == "nll" else kl_ref_model(model, trained_micro, batch.retain)
        return forget + alpha * retain

    assert_pinned(moved, lambda mod: m.loss(mod, batch), expected)


def test_simnpo_equals_openunlearning_form_with_delta(moved, batch):
    """OpenUnlearning: −(2/β)·log σ(β·(mean token NLL − δ)); the same as the paper's with δ = γ/β."""
    beta, gamma = 4.5, 1.2
    m = SimNPO(beta=beta, gamma=gamma, alpha=0.0)
    with torch.no_grad():
        logp, n = seq_logp(moved, batch.forget)
        ou = -(2 / beta) * F.logsigmoid(beta * (-logp / n - gamma / beta)).mean()
        assert m.loss(moved, batch).item() == pytest.approx(ou.item(), rel=1e-5)


# -- retain term: KL for GradDiff and NPO; nll keeps no copy ------------------------------------

def test_graddiff_kl_retain_pinned_and_zero_at_reference(trained_micro, moved, data, batch):
    gd = GradDiff(alpha=1.5, retain_loss="kl")
    gd.prepare(trained_micro, data, ctx())
    assert gd._frozen is not None
    with torch.no_grad():  # at θ = θ_ref the KL vanishes: GradDiff(kl) is GA there
        assert gd.loss(trained_micro, batch).item() == pytest.approx(-nll(trained_micro, batch.forget).item(), rel=1e-5)
    assert_pinned(moved, lambda mod: gd.loss(mod, batch),
                  lambda mod: -nll(mod, batch.forget) + 1.5 * kl_ref_model(mod, trained_micro, batch.retain))


def test_npo_kl_retain_pinned(trained_micro, moved, data, batch):
    npo = NPO(beta=0.5, alpha=2.0, retain_loss="kl")
    npo.prepare(trained_micro, data, ctx())

    def expected(model):
        with torch.no_grad():
            ref, _ = seq_logp(trained_micro, batch.forget)
        logp, _ = seq_logp(model, batch.forget)
        return (2 / 0.5) * F.softplus(0.5 * (logp - ref)).mean() + 2.0 * kl_ref_model(model, trained_micro, batch.retain)

    assert_pinned(moved, lambda mod: npo.loss(mod, batch), expected)


@pytest.mark.parametrize("cls", [GradDiff, NPO, SimNPO, WGA, SatImp, IdkDPO])
def test_nll_retain_makes_no_copy_and_kl_copy_is_dropped_after_unlearn(cls, trained_micro, data):
    m = cls()
    m.prepare(trained_micro, data, ctx())
    assert m.retain_loss == "nll" and m._frozen is None
    k = cls(retain_loss="kl")
    model, result = k.unlearn(copy.deepcopy(trained_micro), data, ctx())
    assert result.steps == 2 and k._frozen is None


# -- IdkDPO -------------------------------------------------------------------------------------

def test_idkdpo_refusals_encoded_as_harness_answers_and_drawn_from_seed(micro_bench, tokenizer, data):
    refusals = load_refusals()
    assert len(refusals) >= 10 and len(set(refusals)) == len(refusals)
    forget = data.examples("forget")
    ex0 = refusal_examples(tokenizer, forget, refusals, seed=0)
    prompts = [micro_bench.prompt(q) for it in data.forget for q in it.train_questions]
    assert len(prompts) == len(ex0)
    chosen = []
    for prompt, example in zip(prompts, ex0):  # each is encode_qa(prompt, one of the refusals)
        hits = [r for r in refusals if encode_qa(tokenizer, prompt, r) == example]
        assert len(hits) == 1
        chosen.append(hits[0])
    assert len(set(chosen)) > 1
    assert refusal_examples(tokenizer, forget, refusals, seed=0) == ex0
    assert refusal_examples(tokenizer, forget, refusals, seed=1) != ex0


def test_idkdpo_pinned_to_formula(trained_micro, moved, data, batch, tokenizer):
    beta, alpha = 0.4, 0.5
    m = IdkDPO(beta=beta, alpha=alpha)
    m.prepare(trained_micro, data, ctx(seed=3))
    idx = batch.forget.index.tolist()
    refusal = collate([refusal_examples(tokenizer, data.examples("forget"), load_refusals(), 3)[i] for i in idx],
                      pad_id(tokenizer), idx)
    with torch.no_grad():
        ref_y, _ = seq_logp(trained_micro, batch.forget)
        ref_r, _ = seq_logp(trained_micro, refusal)
        # At θ = θ_ref the margin is 0: (2/β)·log 2 + α·NLL_r.
        at_ref = m.loss(trained_micro, batch).item()
        assert at_ref == pytest.approx((2 / beta) * 0.6931472 + alpha * nll(trained_micro, batch.retain).item(), rel=1e-4)

    def expected(model):
        lp_y, _ = seq_logp(model, batch.forget)
        lp_r, _ = seq_logp(model, refusal)
        margin = (lp_r - ref_r) - (lp_y - ref_y)
        return -(2 / beta) * F.logsigmoid(beta * margin).mean() + alpha * nll(model, batch.retain)

    assert_pinned(moved, lambda mod: m.loss(mod, batch), expected)


# -- UNDIAL -------------------------------------------------------------------------------------

@pytest.mark.parametrize("alpha", [0.0, 0.5])
def test_undial_pinned_to_formula(trained_micro, moved, data, batch, alpha):
    gamma = 3.0
    m = UNDIAL(gamma=gamma, alpha=alpha)
    m.prepare(trained_micro, data, ctx())
    assert m._frozen is not None

    def expected(model):
        logq, labels, mask = shifted(model, batch.forget)
        with torch.no_grad():
            z = trained_micro(input_ids=batch.forget.input_ids,
                              attention_mask=batch.forget.attention_mask).logits[:, :-1].float()
            z = z - gamma * F.one_hot(labels.clamp(min=0), z.shape[-1])
            q = z.softmax(-1)
        ce = -(q * logq).sum(-1)
        return ce[mask].mean() + alpha * nll(model, batch.retain)

    assert_pinned(moved, lambda mod: m.loss(mod, batch), expected)


# -- WGA, SatImp --------------------------------------------------------------------------------

def test_wga_pinned_to_formula(moved, batch):
    beta, alpha = 1.5, 0.8
    m = WGA(beta=beta, alpha=alpha)

    def expected(model):
        lp, mask = tok_logp(model, batch.forget)
        w = lp.detach().exp() ** beta
        return -(w * -lp)[mask].mean() + alpha * nll(model, batch.retain)

    assert_pinned(moved, lambda mod: m.loss(mod, batch), expected)
    with torch.no_grad():  # β = 0: GradDiff
        assert WGA(beta=0.0, alpha=alpha).loss(moved, batch).item() == pytest.approx(
            GradDiff(alpha=alpha).loss(moved, batch).item(), rel=1e-5)


def test_satimp_pinned_to_formula(moved, batch):
    b1, b2, alpha = 2.0, 1.5, 0.3
    m = SatImp(beta1=b1, beta2=b2, alpha=alpha)

    def expected(model):
        lp, mask = tok_logp(model, batch.forget)
        p = lp.detach().exp()
        w = p ** b1 * (1 - p) ** b2
        return -(w * -lp)[mask].mean() + alpha * nll(model, batch.retain)

    assert_pinned(moved, lambda mod: m.loss(mod, batch), expected)
    with torch.no_grad():  # β₂ = 0: WGA with β = β₁
        assert SatImp(beta1=b1, beta2=0.0, alpha=alpha).loss(moved, batch).item() == pytest.approx(
            WGA(beta=b1, alpha=alpha).loss(moved, batch).item(), rel=1e-5)


# -- CE-U ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("ignore_first", [0, 1])
def test_ceu_pinned_to_formula(moved, batch, ignore_first):
    m = CEU(ignore_first=ignore_first)

    def expected(model):
        logp, labels, mask = shifted(model, batch.forget)
        if ignore_first:  # drop the first labelled token of each row
            mask = mask & (mask.cumsum(1) > ignore_first)
        p = logp.detach().exp()
        gold = F.one_hot(labels.clamp(min=0), p.shape[-1]).bool()
        q = p.masked_fill(gold, 0.0)
        q = q / q.sum(-1, keepdim=True)  # p(v) / (1 − p(y)) off the gold token
        ce = -(q * logp.masked_fill(gold, 0.0)).sum(-1)
        return ce[mask].mean()

    assert_pinned(moved, lambda mod: m.loss(mod, batch), expected)
    with torch.no_grad():  # per position L = H(q) − log(1 − p(y))
        logp, labels, mask = shifted(moved, batch.forget)
        p = logp.exp()
        pg = p.gather(-1, labels.clamp(min=0)[..., None])[..., 0]
        q = p.scatter(-1, labels.clamp(min=0)[..., None], 0.0) / (1 - pg)[..., None]
        h = -(q * q.clamp(min=1e-30).log()).sum(-1)
        keep = mask & (mask.cumsum(1) > ignore_first)
        assert m.loss(moved, batch).item() == pytest.approx((h - torch.log1p(-pg))[keep].mean().item(), rel=1e-4)


# -- configs and hyperparameter checks ----------------------------------------------------------

NAMES = ["simnpo", "idkdpo", "undial", "wga", "satimp", "ceu"]


@pytest.mark.parametrize("name", NAMES)
def test_config_builds_and_one_step_runs(name, trained_micro, data):
    cfg = compose_config(f"method={name}")
    from omegaconf import OmegaConf
    m = build_method(OmegaConf.to_container(cfg.method, resolve=True))
    _, result = m.unlearn(copy.deepcopy(trained_micro), data, ctx())
    assert result.steps == 2 and not result.diverged


@pytest.mark.parametrize("name", ["graddiff", "npo", "simnpo"])
def test_retain_loss_kl_is_a_config_choice(name):
    from omegaconf import OmegaConf
    cfg = compose_config(f"method={name}", "method.retain_loss=kl")
    assert build_method(OmegaConf.to_container(cfg.method, resolve=True)).retain_loss == "kl"
    bad = OmegaConf.to_container(compose_config(f"method={name}", "method.retain_loss=mse").method, resolve=True)
    with pytest.raises(ConfigError, match="method.retain_loss"):
        build_method(bad)


@pytest.mark.parametrize("cls,kwargs,key", [
    (SimNPO, {"beta": 0.0}, "beta"), (SimNPO, {"gamma": -1.0}, "gamma"), (SimNPO, {"alpha": -1.0}, "alpha"),
    (SimNPO, {"retain_loss": "mse"}, "retain_loss"), (SimNPO, {"lr": 0.0}, "lr"),
    (IdkDPO, {"beta": -0.1}, "beta"), (IdkDPO, {"alpha": -1.0}, "alpha"),
    (UNDIAL, {"gamma": 0.0}, "gamma"), (UNDIAL, {"alpha": -0.5}, "alpha"),
    (WGA, {"beta": -1.0}, "beta"), (WGA, {"alpha": -1.0}, "alpha"),
    (SatImp, {"beta1": -1.0}, "beta1"), (SatImp, {"beta2": -1.0}, "beta2"), (SatImp, {"alpha": -1.0}, "alpha"),
    (CEU, {"ignore_first": -1}, "ignore_first"),
    (GradDiff, {"retain_loss": "kl2"}, "retain_loss"), (NPO, {"retain_loss": "KL"}, "retain_loss"),
])
def test_bad_hyperparameters_name_the_key(cls, kwargs, key):
    with pytest.raises(ValueError, match=f"method.{key}" if key != "lr" else "lr"):
        cls(**kwargs)
    # Through the harness: one line naming the key, before any compute.
    block = {"_target_": f"{cls.__module__}.{cls.__name__}", **kwargs}
    with pytest.raises(ConfigError, match=key):
        build_method(block)


def test_answer_logits_line_up_with_token_logprobs(moved, batch):
    from bench.distributions import answer_logits
    from bench.scoring import token_logprobs
    with torch.no_grad():
        logits, target, mask = answer_logits(moved, batch.forget)
        lp, _, mask2 = token_logprobs(moved, batch.forget)
    assert torch.equal(mask, mask2)
    gathered = F.log_softmax(logits, -1).gather(-1, target.clamp(min=0)[..., None])[..., 0] * mask
    torch.testing.assert_close(gathered, lp)
