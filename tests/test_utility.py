"""Utility suite: lm-eval on the live micro model with local offline tasks (HF offline variables set)."""

from __future__ import annotations

import os

import pytest

from bench.data import encode_qa, encode_text
from bench.models import build_base_model, inject_knowledge
from bench.errors import ConfigError
from bench.suites import SuiteContext, utility, validate_settings
from bench.suites.knowledge import evaluate as knowledge_evaluate
from bench.train import TrainConfig
from bench.world import synthetic_world
from tests.conftest import MICRO_ARCH

assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["HF_DATASETS_OFFLINE"] == "1"


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def general_world():
    """A small world with 16 general facts, so general_mcq accuracy separates knowing from guessing."""
    return synthetic_world(seed=0, n_people=3, forget_fraction=0.3, holdout_fraction=0.3, n_relations=1,
                           n_general_facts=16, n_general_text=2, n_heldout_text=4)


@pytest.fixture(scope="module")
def knowing(general_world, tokenizer):
    """A micro model trained on the general facts and text (the target role learns them)."""
    model = build_base_model({"arch": MICRO_ARCH}, tokenizer, seed=0)
    inject_knowledge(model, general_world, tokenizer, "target",
                     TrainConfig(lr=1e-2, max_steps=120, batch_size=16, warmup_steps=10, schedule="cosine", check_every=0))
    return model.eval()


def _ctx(bench, tokenizer, oracle, tmp_path=None, **settings):
    return SuiteContext(bench=bench, tokenizer=tokenizer, oracle=oracle, settings={"utility": settings},
                        cache_dir=str(tmp_path) if tmp_path else None)


def _values(out):
    return {r.metric: r.value for r in out.rows}


def test_rows_present_named_and_in_range(general_world, tokenizer, knowing, fresh_micro, tmp_path):
    ctx = _ctx(general_world, tokenizer, fresh_micro, tmp_path)
    out = utility.evaluate(knowing, "target", ctx)
    rows = out.rows
    assert {(r.stage, r.suite, r.split) for r in rows} == {("target", "utility", "utility")}
    v = _values(out)
    assert set(v) == {"general_mcq/acc", "general_mcq/acc_norm", "heldout_ppl/word_perplexity",
                      "heldout_ppl/byte_perplexity", "heldout_ppl/bits_per_byte"}  # stderr "N/A" (bootstrap 0): no row
    n = {r.metric.split("/")[0]: r.n for r in rows}
    assert n == {"general_mcq": 16, "heldout_ppl": 4}
    assert 0 <= v["general_mcq/acc"] <= 1 and 0 <= v["general_mcq/acc_norm"] <= 1
    assert v["heldout_ppl/word_perplexity"] >= 1 and v["heldout_ppl/byte_perplexity"] >= 1 and v["heldout_ppl/bits_per_byte"] > 0
    # per-document results traced to items in examples.jsonl
    ex = [e for e in out.examples if e["task"] == "general_mcq"]
    assert len(ex) == 16 and {e["id"] for e in ex} == {it.id for it in general_world.split("general")}
    assert all(e["acc"] in (0.0, 1.0) for e in ex)


def test_knowing_model_beats_chance_random_model_does_not(general_world, tokenizer, knowing, fresh_micro):
    ctx = _ctx(general_world, tokenizer, fresh_micro)
    good = _values(utility.evaluate(knowing, "target", ctx))
    rand = _values(utility.evaluate(fresh_micro, "unlearned", ctx))
    chance = general_world.chance
    assert good["general_mcq/acc"] >= 0.75 > chance
    assert rand["general_mcq/acc"] <= 0.5
    # the knowledge suite's forced choice on the same items agrees that the facts are known
    k = {(r.split, r.metric): r.value for r in knowledge_evaluate(knowing, "target", ctx).rows}
    assert k[("general", "mcq_acc")] >= 0.75


def test_hooks_stay_on_model_scored_as_deployed(general_world, tokenizer, knowing, fresh_micro):
    """A forward hook (as MRP adds) is part of the model lm-eval scores: zeroing the only block's output
    erases what the model knows; removing the hook restores the scores exactly."""
    ctx = _ctx(general_world, tokenizer, fresh_micro)
    before = _values(utility.evaluate(knowing, "target", ctx))
    block = knowing.model.layers[0]
    handle = block.register_forward_hook(lambda mod, args, out: (out[0] * 0.0, *out[1:]) if isinstance(out, tuple) else out * 0.0)
    try:
        hooked = _values(utility.evaluate(knowing, "unlearned", ctx))
    finally:
        handle.remove()
    after = _values(utility.evaluate(knowing, "unlearned", ctx))
    assert before["general_mcq/acc"] >= 0.75 and hooked["general_mcq/acc"] <= 0.5
    assert hooked["heldout_ppl/word_perplexity"] != pytest.approx(before["heldout_ppl/word_perplexity"], rel=1e-3)
    assert after == pytest.approx(before, rel=1e-6)


def test_oracle_scored_once_through_reference(general_world, tokenizer, knowing, fresh_micro):
    ctx = _ctx(general_world, tokenizer, knowing, limit=2)
    first = utility.evaluate(knowing, "oracle", ctx).rows
    assert ("utility", "oracle") in ctx.references
    ctx.references[("utility", "oracle")]["results"]["general_mcq"]["acc,none"] = -1.0  # a memo hit would show this
    second = _values(utility.evaluate(fresh_micro, "oracle", ctx))
    assert second["general_mcq/acc"] == -1.0
    assert {r.n for r in first if r.metric.startswith("general_mcq/")} == {2}  # limit applies per task


def test_harness_bos_encoding_matches_bench_data(micro_bench, tokenizer, fresh_micro):
    """bos=harness: lm-eval sees the same token sequences as the knowledge suite and injection."""
    s = utility.Settings()
    lm = utility.harness_lm(fresh_micro, tokenizer, s)
    it = micro_bench.split("general")[0]
    prompt = micro_bench.prompt(it.question)
    ctx_enc, cont_enc = lm._encode_pair(prompt, " " + it.answer)
    ids, _ = encode_qa(tokenizer, prompt, it.answer)
    assert ctx_enc + cont_enc == ids[:-1]  # everything but the end token, which lm-eval does not score
    text = micro_bench.heldout_text[0]
    ids, _ = encode_text(tokenizer, text)
    assert [lm.prefix_token_id] + lm.tok_encode(text) == ids[:-1]
    # lm-eval's own encoding gives the context no BOS with this tokenizer (it adds no special tokens)
    plain = utility.harness_lm(fresh_micro, tokenizer, utility.Settings(bos="lm_eval"))
    assert plain._encode_pair(prompt, " " + it.answer)[0] == ctx_enc[1:]


@pytest.mark.parametrize("settings, needle", [
    ({"bogus": 1}, "unknown config key"),
    ({"tasks": []}, "tasks must not be empty"),
    ({"tasks": ["general_mcq", "general_mcq"]}, "twice"),
    ({"limit": 0}, "limit"),
    ({"limit": 1.5}, "limit"),
    ({"bootstrap_iters": -1}, "bootstrap_iters"),
    ({"batch_size": "8"}, "batch_size"),
    ({"bos": "yes"}, "bos"),
    ({"log_samples": "no"}, "log_samples"),
])
def test_bad_settings_rejected_with_fix(settings, needle, micro_bench):
    with pytest.raises(ConfigError, match=needle):
        validate_settings(["utility"], {"utility": settings}, micro_bench)


def test_local_task_without_data_rejected():
    bench = synthetic_world(seed=0, n_people=5, forget_fraction=0.2, holdout_fraction=0.2, n_relations=1,
                            n_general_facts=0, n_general_text=2, n_heldout_text=0)
    with pytest.raises(utility.UtilityConfigError, match="general"):
        validate_settings(["utility"], {"utility": {"tasks": ["general_mcq"]}}, bench)
    with pytest.raises(utility.UtilityConfigError, match="n_heldout_text"):
        validate_settings(["utility"], {"utility": {"tasks": ["heldout_ppl"]}}, bench)


def test_metric_names():
    assert utility._metric_name("acc,none") == "acc"
    assert utility._metric_name("exact_match,strict-match") == "exact_match@strict-match"
    assert utility._metric_name("alias") is None


@pytest.mark.slow  # indexing lm-eval's stock tasks takes ~15 s
def test_stock_task_names_checked_before_compute(micro_bench):
    validate_settings(["utility"], {"utility": {"tasks": ["general_mcq", "arc_easy"]}}, micro_bench)
    with pytest.raises(utility.UtilityConfigError, match="arc_easyy.*close matches"):
        validate_settings(["utility"], {"utility": {"tasks": ["arc_easyy"]}}, micro_bench)
