"""MRP (methods/mrp.py): projection algebra, frozen base, hook removal, init, gradients, continual append, save/load."""

import copy

import pytest
import torch

from bench.method import UnlearnContext, UnlearnData
from methods.mrp import (MRP, LayerProjection, attach_projection, init_directions, load_projected, projection_of,
                         remove_projection, retain_basis, save_projected)


def _data(bench, tokenizer, forget=None):
    return UnlearnData(bench, tokenizer, forget if forget is not None else bench.split("forget"), bench.split("retain"))


def _ctx(steps=6):
    return UnlearnContext(seed=0, device=torch.device("cpu"), max_steps=steps, batch_size=4, check_every=0)


def _logits(model, ids=((1, 40, 41, 42, 43, 44),)):
    with torch.no_grad():
        return model(input_ids=torch.tensor(ids)).logits


@pytest.fixture(scope="module")
def unlearned_micro(trained_micro, micro_bench, tokenizer):
    model, result = MRP(layers=[0], k=2, lr=0.5).unlearn(copy.deepcopy(trained_micro), _data(micro_bench, tokenizer), _ctx())
    assert result.steps == 6 and not result.diverged
    return model


def test_base_frozen_hooks_removed_restore_target_exactly(trained_micro, unlearned_micro):
    target = dict(trained_micro.named_parameters())
    base = {n: p for n, p in unlearned_micro.named_parameters()}
    assert set(base) == set(target)  # no trainable W_t left on the model after the request
    assert all(torch.equal(base[n], target[n]) for n in target)  # bit-identical
    assert not torch.equal(_logits(unlearned_micro), _logits(trained_micro))  # the projection acts
    plain = copy.deepcopy(unlearned_micro)
    assert remove_projection(plain) is not None and projection_of(plain) is None
    assert torch.equal(_logits(plain), _logits(trained_micro))
    assert projection_of(unlearned_micro) is not None  # removing from a copy leaves the original projected
    assert not torch.equal(_logits(unlearned_micro), _logits(trained_micro))


def test_projector_idempotent_and_removes_exactly_the_span():
    torch.manual_seed(0)
    d, m = 16, 3
    lp = LayerProjection(d)
    lp.directions = torch.randn(m, d)
    p = lp.project(torch.eye(d))  # rows: e_i (I − QᵀQ), i.e. the projector matrix
    assert torch.allclose(p @ p, p, atol=1e-5)
    assert torch.allclose(p, p.T, atol=1e-5)
    assert int(torch.linalg.matrix_rank(p)) == d - m
    assert torch.allclose(lp.directions @ p, torch.zeros(m, d), atol=1e-5)  # the span is removed
    ortho = torch.randn(5, d)
    q, _ = torch.linalg.qr(lp.directions.T)
    ortho = ortho - (ortho @ q) @ q.T
    assert torch.allclose(lp.project(ortho), ortho, atol=1e-5)  # its complement is untouched


def test_init_never_collapses_with_more_tokens_than_dims():
    torch.manual_seed(0)
    d, n = 32, 500  # far more tokens than dimensions: a full-span retain basis would be the identity
    mix = torch.randn(d, d)
    retain = torch.randn(n, d) @ mix
    forget = torch.randn(n, d) @ mix + 3.0 * torch.randn(1, d)
    u = retain_basis(retain, energy=0.999999, max_rank=d // 2)
    assert u.shape[0] == d // 2 < d
    w0, r = init_directions(forget, retain, k=2, energy=0.9, max_rank=d // 2)
    assert 1 <= r < d and w0.shape == (2, d)
    assert torch.allclose(w0.norm(dim=1), torch.ones(2), atol=1e-4)
    ur = retain_basis(retain, 0.9, d // 2)
    assert (w0 @ ur.T).abs().max() < 1e-4  # found outside the protected retain subspace
    residual = forget - (forget @ ur.T) @ ur
    assert (residual @ w0.T).norm() > 0.3 * residual.norm()  # captures real forget energy, not noise


def test_gradients_reach_w_through_qr():
    torch.manual_seed(0)
    lp = LayerProjection(8)
    lp.directions = torch.randn(2, 8)  # an earlier request, frozen
    w = lp.start_request(torch.randn(2, 8))
    h = torch.randn(5, 8)
    (lp.project(h) ** 2).sum().backward()
    assert w.grad is not None and torch.isfinite(w.grad).all() and w.grad.abs().sum() > 0
    assert lp.rank == 4


def test_directions_append_across_requests(trained_micro, micro_bench, tokenizer, unlearned_micro):
    model = copy.deepcopy(unlearned_micro)
    first = projection_of(model).per_layer["0"].directions.clone()
    assert projection_of(model).ranks() == {0: 2}
    model, _ = MRP(layers=[0], k=2, lr=0.5).unlearn(model, _data(micro_bench, tokenizer), _ctx(3))
    proj = projection_of(model)
    assert proj.ranks() == {0: 4} and proj.request_sizes == [2, 2]
    assert torch.equal(proj.per_layer["0"].directions[:2], first)  # earlier request frozen
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), trained_micro.parameters()))
    with pytest.raises(ValueError, match="out of range"):
        MRP(layers=[1], k=1).unlearn(model, _data(micro_bench, tokenizer), _ctx(1))


def test_save_and_load_keep_the_projection(unlearned_micro, tmp_path):
    save_projected(unlearned_micro, tmp_path / "m")
    loaded = load_projected(tmp_path / "m", dtype=torch.float32)
    assert projection_of(loaded).ranks() == projection_of(unlearned_micro).ranks()
    assert torch.allclose(_logits(loaded), _logits(unlearned_micro), atol=1e-6)
    assert projection_of(unlearned_micro) is not None  # saving does not take it off


def test_hyperparameters_validated():
    for bad in ({"k": 0}, {"retain_energy": 1.0}, {"lam": -1}, {"lr": 0}, {"layers": []}, {"init_tokens": "x"},
                {"max_retain_rank": 1.0}, {"epochs": 0}):
        with pytest.raises(ValueError):
            MRP(**bad)


def test_attach_is_reused_and_negative_layers_resolve(trained_micro):
    model = copy.deepcopy(trained_micro)
    proj = attach_projection(model, [-1])
    assert proj.layer_ids == [0] and attach_projection(model, [0]) is proj
    assert torch.equal(_logits(model), _logits(trained_micro))  # no directions yet: identity


def test_layer_choice_is_fixed_across_requests(tokenizer):
    from bench.models import build_base_model
    from tests.conftest import MICRO_ARCH

    model = build_base_model({"arch": {**MICRO_ARCH, "num_hidden_layers": 2}}, tokenizer, seed=0)
    attach_projection(model, [0, 1])
    with pytest.raises(ValueError, match="already projected"):
        attach_projection(model, [1])


def test_mrp_runs_on_the_shared_loss_method_path(trained_micro, micro_bench, tokenizer):
    """MRP is a LossMethod (hooks, not its own loop): only W_t is trained, and every base flag is restored."""
    from bench.method import LossMethod

    assert issubclass(MRP, LossMethod) and MRP().optimizer == "sgd"
    model = copy.deepcopy(trained_micro)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    data = _data(micro_bench, tokenizer)
    model, result = MRP(layers=[0], k=2, lr=0.5, epochs=1).unlearn(model, data, _ctx(50))
    n = len(data.examples("forget"))
    assert result.steps == min(50, max(1, n // min(4, n))) < 50  # the epochs cap (train_config hook) applies
    assert {n: p.requires_grad for n, p in model.named_parameters() if n in flags} == flags
    assert projection_of(model).current_parameters() == []  # frozen into the directions after the request


# ---- rank budget, the random-projection control, the hook controls (issue 14) ----------------
def test_rank_budget_fits_continual_runs():
    from bench.method import ModelShape
    from methods.mrp import check_rank_plan, request_rank

    tiny = ModelShape(hidden_size=128, num_layers=2)
    assert request_rank(None, 0.25, 128, 1) == 32 and request_rank(None, 0.25, 128, 4) == 8  # the defaults
    assert request_rank(5, 0.25, 128, 4) == 5  # an explicit k is kept
    for requests in (1, 4, 8):
        MRP().check_plan(requests, tiny)  # the default k (null) fits any number of requests up to the budget
        assert request_rank(None, 0.25, 128, requests) * requests <= 32
    with pytest.raises(ValueError, match="method.k <="):
        MRP(k=32).check_plan(4, tiny)
    with pytest.raises(ValueError, match="rank_budget"):
        check_rank_plan([0], None, 0.01, 4, ModelShape(hidden_size=32, num_layers=1))


def test_default_k_follows_the_requests_of_the_context(trained_micro, micro_bench, tokenizer):
    model = copy.deepcopy(trained_micro)
    ctx = UnlearnContext(seed=0, device=torch.device("cpu"), max_steps=1, batch_size=4, check_every=0, requests=2)
    model, _ = MRP().unlearn(model, _data(micro_bench, tokenizer), ctx)  # micro d = 32: floor(0.25·32 / 2) = 4
    assert projection_of(model).ranks() == {0: 4}


def test_random_projection_has_the_rank_and_keeps_the_weights(trained_micro, micro_bench, tokenizer):
    from methods.random_projection import RandomProjection

    d = trained_micro.config.hidden_size
    runs = []
    for seed in (0, 0, 1):
        ctx = UnlearnContext(seed=seed, device=torch.device("cpu"), max_steps=50, batch_size=4)
        model, result = RandomProjection(layers=[0], k=3).unlearn(copy.deepcopy(trained_micro), _data(micro_bench, tokenizer), ctx)
        runs.append(model)
    assert result.steps == 0  # nothing is trained
    proj = projection_of(runs[0])
    assert proj.ranks() == {0: 3} and proj.request_sizes == [3] and proj.current_parameters() == []
    p = proj.per_layer["0"].project(torch.eye(d))
    assert int(torch.linalg.matrix_rank(p)) == d - 3  # exactly k dimensions of d removed
    assert all(torch.equal(a, b) for a, b in zip(runs[0].parameters(), trained_micro.parameters()))
    assert not torch.equal(_logits(runs[0]), _logits(trained_micro))
    d0, d1, d2 = (projection_of(m).per_layer["0"].directions for m in runs)
    assert torch.equal(d0, d1) and not torch.equal(d0, d2)  # seeded by the run's seed
    # default k follows MRP's rule (micro d = 32: 8 for one request); a second request appends fresh directions
    model, _ = RandomProjection().unlearn(copy.deepcopy(trained_micro), _data(micro_bench, tokenizer), _ctx(1))
    model, _ = RandomProjection().unlearn(model, _data(micro_bench, tokenizer), _ctx(1))
    dirs = projection_of(model).per_layer["0"].directions
    assert projection_of(model).request_sizes == [8, 8] and int(torch.linalg.matrix_rank(dirs)) == 16


def test_hooks_attach_to_the_oracle_and_come_off(trained_micro, fresh_micro, unlearned_micro):
    hooks = MRP().hooks(unlearned_micro)
    assert hooks is not None and MRP().hooks(trained_micro) is None
    oracle = copy.deepcopy(fresh_micro)
    hooks.attach(oracle)
    assert all(torch.equal(a, b) for a, b in zip(oracle.parameters(), fresh_micro.parameters()))  # weights kept
    assert projection_of(oracle).ranks() == projection_of(unlearned_micro).ranks()
    assert not torch.equal(_logits(oracle), _logits(fresh_micro))  # the projection acts on it
    bare = copy.deepcopy(unlearned_micro)
    hooks.remove(bare)
    assert torch.equal(_logits(bare), _logits(trained_micro))
    assert projection_of(unlearned_micro) is not None  # the unlearned model itself keeps its hooks


@pytest.mark.slow  # moved out of the default run to keep it under 10 minutes on 2 cores; ~40 s
def test_run_evaluates_the_hook_control_stages(tmp_path_factory):
    from bench.report import build_table, records_frame
    from bench.run import run
    from tests.conftest import compose_config

    cache = tmp_path_factory.getbasetemp() / "continual-cache"
    records = {}
    for method in ("mrp", "random_projection", "ga"):
        records[method] = run(compose_config(f"cache_dir={cache}", f"method={method}", "unlearn.max_steps=4", "threads=1",
                                             "suites=[knowledge]"), tmp_path_factory.mktemp(method), method)
    value = {m: {(r["stage"], r["split"], r["metric"]): r["value"] for r in rec["rows"]} for m, rec in records.items()}
    for m in ("mrp", "random_projection"):
        stages = {k[0] for k in value[m]}
        assert {"oracle_with_hooks", "unlearned_hooks_removed"} <= stages
        # The base weights are frozen: without its hooks the unlearned model is the target, row for row.
        for (stage, split, metric), v in value[m].items():
            if stage == "target" and split != "forget" or stage == "target" and metric in ("em", "mcq_acc"):
                assert value[m][("unlearned_hooks_removed", split, metric)] == pytest.approx(v, abs=1e-6)
    assert not any(k[0].startswith(("oracle_with", "unlearned_hooks")) for k in value["ga"])
    assert value["random_projection"][("unlearned", "forget", "steps")] == 0
    table = build_table(records_frame(records.values()))
    assert {"mrp oracle_with_hooks", "mrp unlearned_hooks_removed", "random_projection oracle_with_hooks"} <= set(table.infos)
    assert table.infos["mrp oracle_with_hooks"].control and not table.infos["mrp"].control
    assert not any("*" in str(table.text.loc["mrp oracle_with_hooks", c]) for c in table.text.columns)
