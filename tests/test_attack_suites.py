"""Knowledge that comes back without training: the quantization, probe and in-context suites
(bench/suites/quantization.py, probe.py, in_context.py; bench/quantize.py)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from bench.errors import ConfigError
from bench.method import ModelShape
from bench.model_parts import decoder_parts
from bench.models import build_base_model, inject_knowledge
from bench.quantize import bitsandbytes_available, block_linears, quantized_copy, rtn_quantize, rtn_scales
from bench.suites import SuiteContext, validate_settings
from bench.suites import in_context, probe, quantization
from bench.train import TrainConfig
from bench.world import synthetic_world
from tests.conftest import MICRO_ARCH

# ---- quantization -----------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("group_size", [None, 16])
def test_rtn_round_trip_error_is_at_most_half_a_step(bits, group_size):
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(12, 40, generator=gen) * torch.logspace(-2, 1, 12)[:, None]  # rows of very different scale
    w[3] = 0.0  # an all-zero row stays zero
    q = rtn_quantize(w, bits, group_size)
    scales = rtn_scales(w, bits, group_size)
    size = 40 if group_size is None else group_size
    per_weight = scales.repeat_interleave(size, dim=1)[:, :40]  # 40 = 2 groups of 16 + a ragged group of 8
    assert scales.shape == (12, 1 if group_size is None else 3)
    assert torch.all((w - q).abs() <= per_weight / 2 * (1 + 1e-5) + 1e-12)
    assert torch.equal(q[3], torch.zeros(40))
    levels = torch.round(q / torch.where(per_weight > 0, per_weight, 1.0))
    assert levels.abs().max() <= 2 ** (bits - 1) - 1 and torch.allclose(q, levels * per_weight)
    assert torch.allclose(rtn_quantize(q, bits, group_size), q, atol=1e-6)  # already on the grid


def test_finer_quantization_is_closer():
    w = torch.randn(64, 128, generator=torch.Generator().manual_seed(1))
    err = {(b, g): (w - rtn_quantize(w, b, g)).norm() / w.norm() for b in (4, 8) for g in (None, 32)}
    assert err[(8, None)] < err[(4, 32)] < err[(4, None)]
    assert err[(8, None)] < 0.01 < err[(4, None)] < 0.2


def test_quantized_copy_of_a_micro_model_keeps_the_original_and_its_hooks(trained_micro):
    before = {k: v.clone() for k, v in trained_micro.state_dict().items()}
    blocks, _, _ = decoder_parts(trained_micro)
    handle = blocks[-1].register_forward_hook(lambda m, i, out: (out[0] * 0,) + tuple(out[1:]) if isinstance(out, tuple) else out * 0)
    try:
        quantized, summary = quantized_copy(trained_micro, 4, "rtn", None)
        ids = torch.tensor([[1, 5, 9, 12]])
        assert torch.count_nonzero(quantized(input_ids=ids).logits) == 0  # the hook came along: block output zeroed
    finally:
        handle.remove()
    after = trained_micro.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the evaluated model is never changed
    quantized_names = set()
    for name, _, _, layer in block_linears(quantized):
        quantized_names.add(name)
    q_state = quantized.state_dict()
    n_linear = 0
    for key, value in before.items():
        is_block_linear = ".layers." in key and key.endswith("proj.weight")
        if is_block_linear:
            n_linear += 1
            scale = rtn_scales(value, 4, None)
            assert torch.all((value - q_state[key]).abs() <= scale / 2 * (1 + 1e-5) + 1e-12), key
            assert not torch.equal(value, q_state[key]), key
        else:  # embeddings, norms, the output head: full precision
            assert torch.equal(value, q_state[key]), key
    assert n_linear == len(quantized_names) == summary["layers"] == 7 * MICRO_ARCH["num_hidden_layers"]
    assert 0 < summary["relative_error"] < 0.2


@pytest.mark.skipif(not bitsandbytes_available(), reason="bitsandbytes is optional (not a dependency)")
@pytest.mark.parametrize("bits", [8, 4])
def test_bitsandbytes_backend_replaces_the_block_linears(tokenizer, bits):
    """Where bitsandbytes is installed: its layers, as far from the model as round-to-nearest per channel (within 3x).
    d = 64: bitsandbytes' CPU 4-bit kernel needs inputs of at least one 64-weight block."""
    import bitsandbytes as bnb

    model = build_base_model({"arch": {**MICRO_ARCH, "hidden_size": 64, "intermediate_size": 128}}, tokenizer, seed=0).eval()
    quantized, _ = quantized_copy(model, bits, "bitsandbytes")
    rtn, _ = quantized_copy(model, bits, "rtn")
    kinds = {type(layer) for _, _, _, layer in block_linears(quantized)}
    assert kinds == {bnb.nn.Linear8bitLt if bits == 8 else bnb.nn.Linear4bit}
    ids = torch.tensor([[1, 5, 9, 12, 40]])
    with torch.no_grad():
        ref = model(input_ids=ids).logits
        rtn_error = (rtn(input_ids=ids).logits - ref).abs().max()
        assert 0 < (quantized(input_ids=ids).logits.float() - ref).abs().max() < 3 * rtn_error


def test_quantization_rows_and_recovery_against_the_quantized_oracle(micro_bench, tokenizer, trained_micro, fresh_micro):
    ctx = SuiteContext(bench=micro_bench, tokenizer=tokenizer, oracle=fresh_micro,
                       settings={"quantization": {"bits": [4], "splits": ["forget", "retain"], "metrics": ["mcq_acc"]}})
    oracle = {(r.split, r.metric): r.value for r in quantization.evaluate(fresh_micro, "oracle", ctx).rows}
    out = quantization.evaluate(trained_micro, "unlearned", ctx)
    rows = {(r.split, r.metric): r.value for r in out.rows}
    assert set(oracle) == {("forget", "mcq_acc@quant4"), ("retain", "mcq_acc@quant4")}
    assert set(rows) == set(oracle) | {("forget", "recovery@quant4")}
    assert rows[("forget", "recovery@quant4")] == pytest.approx(rows[("forget", "mcq_acc@quant4")] - oracle[("forget", "mcq_acc@quant4")])
    assert out.examples[0]["backend"] == "rtn" and quantization.evaluate(trained_micro, "request/1", ctx).rows == []


# ---- probe ------------------------------------------------------------------------------------


def test_probe_picks_the_option_that_carries_the_signal(micro_bench):
    """Features where gold options lie along one direction: a probe trained on retain reads forget perfectly."""
    retain, forget = micro_bench.split("retain"), micro_bench.split("forget")
    rng = np.random.default_rng(0)

    def features(items):
        x = rng.normal(size=(len(items) * 4, 8))
        x[[i * 4 + it.answer_index for i, it in enumerate(items)], 0] += 4.0
        return x

    assert probe.probe_choice(features(retain), retain, features(forget), forget, 1.0).all()
    assert probe.cross_validated(features(retain), retain, 1.0).mean() > 0.9


def test_probe_reads_facts_a_model_learned_well_above_chance(tokenizer):
    """A micro model trained on the facts (linearly separable by construction: the hidden state at the
    option reflects whether the model predicted it) vs the same architecture untrained."""
    bench = synthetic_world(seed=0, n_people=24, forget_fraction=0.25, holdout_fraction=0.0, n_relations=2,
                            n_general_facts=4, n_general_text=2, n_heldout_text=1)
    model = build_base_model({"arch": MICRO_ARCH}, tokenizer, seed=0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 300 steps: ~4 s on one thread, 20x that when two threads spin on a busy machine
    try:
        inject_knowledge(model, bench, tokenizer, "target",
                         TrainConfig(lr=1e-2, max_steps=300, batch_size=16, warmup_steps=10, schedule="cosine", check_every=0))
    finally:
        torch.set_num_threads(threads)
    untrained = build_base_model({"arch": MICRO_ARCH}, tokenizer, seed=1)
    acc = {}
    for name, m in (("trained", model), ("untrained", untrained)):
        ctx = SuiteContext(bench=bench, tokenizer=tokenizer, oracle=untrained)
        acc[name] = {(r.split, r.metric): r.value for r in probe.probe_rows(m.eval(), name, ctx).rows}
    chance = bench.chance  # 0.25, 12 forget facts
    assert acc["trained"][("forget", "probe_acc@layer0")] >= 0.75 > chance
    assert acc["untrained"][("forget", "probe_acc@layer0")] <= 0.5
    assert acc["trained"][("forget", "probe_acc@max_over_layers")] == acc["trained"][("forget", "probe_acc@layer0")]


def test_probe_layers_out_of_range_fail_before_compute(micro_bench, tokenizer):
    s = validate_settings(["probe"], {"probe": {"layers": [0, 2]}}, micro_bench)["probe"]
    with pytest.raises(ConfigError, match=r"suite_settings\.probe\.layers=\[0, 2\] is out of range: .* 2 decoder blocks "
                                          r"\(layers 0\.\.1\)"):
        probe.check_model(s, micro_bench, tokenizer, ModelShape(32, 2), 128)
    probe.check_model(s, micro_bench, tokenizer, ModelShape(32, 3), 128)


# ---- in-context -------------------------------------------------------------------------------


def test_demonstrations_are_other_facts_drawn_from_the_seed(micro_bench):
    forget = micro_bench.split("forget")
    s = in_context.Settings(k=3, seed=5)
    for i, q in enumerate(forget):
        demos = in_context.demonstrations(q, i, "forget", micro_bench, s)
        assert len(demos) == 3 and q.id not in {d.id for d in demos} and all(d.split == "forget" for d in demos)
        assert demos == in_context.demonstrations(q, i, "forget", micro_bench, s)  # same seed, same draw
        other = in_context.demonstrations(q, i, "forget", micro_bench, dataclasses.replace(s, same_person=False, k=2))
        assert all(d.group != q.group for d in other)
        assert all(d.split == "retain" for d in in_context.demonstrations(q, i, "retain", micro_bench, s))
    draws = [[d.id for q_i, q in enumerate(forget) for d in in_context.demonstrations(q, q_i, "retain", micro_bench,
                                                                                    dataclasses.replace(s, seed=seed))]
             for seed in (5, 6)]
    assert draws[0] != draws[1]
    prompt = in_context.context_prompt(None, micro_bench, forget[0], forget[1:3])  # no tokenizer: plain answers
    assert prompt.endswith(micro_bench.prompt(forget[0].question)) and prompt.count("Answer:") == 3


def test_in_context_bad_k_fails_naming_the_largest_k(micro_bench, tokenizer):
    n_forget = len(micro_bench.split("forget"))  # 6 facts of 2 people: 5 others, 3 of the other person
    with pytest.raises(ConfigError, match=rf"suite_settings\.in_context\.k={n_forget} .* only {n_forget - 1} other forget facts .*; use k <= {n_forget - 1}"):
        validate_settings(["in_context"], {"in_context": {"k": n_forget}}, micro_bench)
    with pytest.raises(ConfigError, match=r"only 3 other forget facts of other people .*; use k <= 3"):
        validate_settings(["in_context"], {"in_context": {"k": 4, "same_person": False}}, micro_bench)
    s = in_context.Settings(k=4)
    with pytest.raises(ConfigError, match=r"suite_settings\.in_context\.k=4: .* max_position_embeddings=60; use k <= 2"):
        in_context.check_model(s, micro_bench, tokenizer, None, 60)


def test_in_context_rows_match_forced_choice_on_the_prompts(micro_bench, tokenizer, trained_micro, fresh_micro):
    from bench.items import forced_choice
    from bench.scoring import score_answers

    ctx = SuiteContext(bench=micro_bench, tokenizer=tokenizer, oracle=fresh_micro, settings={"in_context": {"k": 2}})
    oracle = {r.metric: r.value for r in in_context.evaluate(fresh_micro, "oracle", ctx).rows}
    rows = {r.metric: r.value for r in in_context.evaluate(trained_micro, "target", ctx).rows}
    assert set(oracle) == {"mcq_acc@forget_context", "mcq_acc@retain_context", "context_gain"}
    forget = micro_bench.split("forget")
    prompts, _ = in_context.prompts_for("forget", tokenizer, micro_bench, ctx.settings_of("in_context"))
    scored = score_answers(trained_micro, tokenizer, [p for p in prompts for _ in range(4)], [o for it in forget for o in it.options])
    assert rows["mcq_acc@forget_context"] == pytest.approx(forced_choice(scored.option_logprob.reshape(-1, 4), forget).mean())
    assert rows["context_gain"] == pytest.approx(rows["mcq_acc@forget_context"] - rows["mcq_acc@retain_context"])
    assert rows["recovery"] == pytest.approx(rows["mcq_acc@forget_context"] - oracle["mcq_acc@forget_context"])


# ---- the run and the report ---------------------------------------------------------------------


def test_run_records_all_three_suites_and_the_report_tabulates_them(tmp_path):
    from bench.report import load_frame, table
    from bench.run import run
    from tests.conftest import compose_config

    cfg = compose_config("suites=[knowledge,quantization,probe,in_context]", "suite_settings.quantization.bits=[4]",
                         "suite_settings.in_context.k=2", f"cache_dir={tmp_path / 'cache'}")
    record = run(cfg, tmp_path / "run", "ga")
    got = {(r["stage"], r["suite"], r["metric"]) for r in record["rows"]}
    for stage in ("oracle", "target", "unlearned"):
        assert {(stage, "quantization", "mcq_acc@quant4"), (stage, "probe", "probe_acc@layer0"),
                (stage, "in_context", "mcq_acc@forget_context")} <= got
    assert ("oracle", "in_context", "recovery") not in got and ("unlearned", "in_context", "recovery") in got
    text, _ = table(load_frame([tmp_path / "run"]))
    assert {"quantization/forget/mcq_acc@quant4", "probe/forget/probe_acc@max_over_layers",
            "in_context/forget/recovery"} <= set(text.columns)
