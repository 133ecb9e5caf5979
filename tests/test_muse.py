"""MUSE: the loader on the fixture (MUSE's real layout, fictional content), its errors on malformed
files, VerbMem / KnowMem against hand-computed ROUGE-L F1 on scripted generations, and one full
``bench.run`` with ``benchmark=muse`` on a micro model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from rouge_score import rouge_scorer

from bench.benchmark import BenchmarkError
from bench.benchmarks.muse import MuseBenchmark, knowmem_prompt, load_muse
from bench.errors import ConfigError
from tests.conftest import ROOT, compose_config

FIX = ROOT / "tests" / "fixtures" / "muse"
MICRO = ["model.arch.hidden_size=32", "model.arch.num_hidden_layers=1", "model.arch.num_attention_heads=2",
         "model.arch.num_key_value_heads=2", "model.arch.intermediate_size=64", "model.inject.max_steps=20",
         "model.inject.warmup_steps=2", "model.inject.batch_size=8", "unlearn.max_steps=6", "unlearn.batch_size=4",
         "unlearn.check_every=2"]
MUSE = ["+experiment=muse", f"benchmark.data_dir={FIX}", "benchmark.verbmem_max_new_tokens=16",
        "benchmark.knowmem_max_new_tokens=8", "benchmark.max_new_tokens=8"]


def _copy(tmp_path: Path) -> Path:
    dst = tmp_path / "muse"
    shutil.copytree(FIX, dst)
    return dst


def test_fixture_loads_in_muse_layout():
    b = load_muse(str(FIX))
    assert isinstance(b, MuseBenchmark) and b.name == "muse_news"
    assert [len(b.split(s)) for s in ("forget", "retain", "holdout", "general")] == [4, 4, 0, 0]
    assert len(b.forget_text) == 4 and len(b.general_text) == 5 and len(b.heldout_text) == 3
    assert {s: len(t) for s, t in b.membership_text.items()} == {"forget": 3, "retain": 3, "holdout": 3}
    assert b.verbmem[0] == ("The Marrowdale council voted to rename", "the old mill after Ada Venn.")
    assert b.knowmem_icl["forget"] == [("Where is the lantern school?", "Marrowdale")]
    f = b.split("forget")[0]
    # options: the answer plus the next answers of the same file, cyclically
    assert f.answer == "Ada Venn" and set(f.options) == {"Ada Venn", "forty", "nine days", "the old mill"}
    assert f.options[f.answer_index] == f.answer and b.n_options == 4
    assert knowmem_prompt(b.knowmem_icl["forget"], "Q?") == "Question: Where is the lantern school?\nAnswer: Marrowdale\n\nQuestion: Q?\nAnswer: "


@pytest.mark.parametrize("edit, needle", [
    (lambda d: (d / "verbmem" / "forget.json").write_text(json.dumps([{"prompt": "x"}])),
     r"verbmem/forget\.json: row 0 is missing required field 'gt'"),
    (lambda d: (d / "knowmem" / "retain_qa.json").write_text("[]"), r"knowmem/retain_qa\.json is empty"),
    (lambda d: (d / "privleak" / "holdout.json").write_text("[1, 2"), r"privleak/holdout\.json is not valid JSON"),
    (lambda d: (d / "raw" / "retain2.txt").write_text("\n\n"), r"raw/retain2\.txt is empty"),
    (lambda d: (d / "knowmem" / "forget_qa_icl.json").unlink(), r"knowmem/forget_qa_icl\.json does not exist"),
    (lambda d: (d / "knowmem" / "retain_qa.json").write_text(json.dumps(
        [{"question": "Who opened the lantern school?", "answer": "x"}] + json.loads((d / "knowmem" / "retain_qa.json").read_text()))),
     r"question 'Who opened the lantern school\?' is in both forget_qa\.json and retain_qa\.json"),
    (lambda d: (d / "privleak" / "holdout.json").write_text(json.dumps(json.loads((d / "privleak" / "forget.json").read_text())[:1])),
     r"holdout passage .* is also in a trained corpus"),
    (lambda d: (d / "privleak" / "retain.json").write_text(json.dumps(json.loads((d / "privleak" / "forget.json").read_text())[:1])),
     r"membership_text: passage .* is in both 'forget' and 'retain'"),
])
def test_malformed_files_fail_with_the_file_and_the_fix(tmp_path, edit, needle):
    d = _copy(tmp_path)
    edit(d)
    with pytest.raises(BenchmarkError, match=needle):
        load_muse(str(d))


def test_bad_arguments():
    with pytest.raises(BenchmarkError, match="benchmark.corpus='novels'"):
        load_muse(str(FIX), corpus="novels")
    with pytest.raises(BenchmarkError, match="benchmark.n_options=5.*Lower benchmark.n_options|only 3 distinct"):
        load_muse(str(FIX), n_options=5)
    with pytest.raises(BenchmarkError, match="is not a folder"):
        load_muse(str(FIX / "nope"))


def test_muse_suite_needs_the_muse_benchmark(micro_bench):
    from bench.suites import validate_settings

    with pytest.raises(ConfigError, match="suite muse .* needs benchmark=muse"):
        validate_settings(["muse"], None, micro_bench)


def test_verbmem_and_knowmem_equal_hand_rouge(monkeypatch, tokenizer, fresh_micro):
    """Scripted generations: the suite's rows are MUSE's mean ROUGE-L F1 (no stemmer), gt cut to the budget."""
    import bench.suites.muse as muse
    from bench.suites import SuiteContext

    b = load_muse(str(FIX), verbmem_max_new_tokens=6, knowmem_max_new_tokens=8)
    scripted = {"The Marrowdale council voted to rename": "the old mills after Venn",
                "Ada Venn opened the first": "lantern school",
                **{knowmem_prompt(b.knowmem_icl["forget"], it.question): out for it, out in
                   zip(b.split("forget"), ["Ada Venn\n\nQuestion: more", "forty two", "days", "\n\nthe old mill"])},
                **{knowmem_prompt(b.knowmem_icl["retain"], it.question): it.answer for it in b.split("retain")}}
    # as greedy_answers: the decoded text, stripped unless strip=False
    monkeypatch.setattr(muse, "greedy_answers", lambda model, tok, prompts, n, batch, strip=True:
                        [scripted[p].strip() if strip else scripted[p] for p in prompts])
    rows = {(r.split, r.metric): r.value for r in
            muse.evaluate(fresh_micro, "target", SuiteContext(bench=b, tokenizer=tokenizer, oracle=fresh_micro)).rows}

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    f1 = lambda ref, pred: scorer.score(ref, pred)["rougeL"].fmeasure  # noqa: E731
    bos = [tokenizer.bos_token_id]
    refs = [tokenizer.decode((bos + tokenizer(g, add_special_tokens=False).input_ids)[:6], skip_special_tokens=True)
            for _, g in b.verbmem]
    assert refs[0] != b.verbmem[0][1]  # the budget of 6 tokens (BOS included) really cuts the gt
    assert rows[("forget", "verbmem")] == pytest.approx(np.mean([f1(refs[0], "the old mills after Venn"),
                                                                 f1(refs[1], "lantern school")]))
    # KnowMem: outputs cut at "\n\n" / "\nQuestion" / "Question:"; "Ada Venn" exact, "forty two" vs "forty" = 2/3,
    # "days" vs "nine days" = 2/3; "\n\nthe old mill" is cut before it is stripped (MUSE's order): "" = 0, not 1
    assert rows[("forget", "knowmem")] == pytest.approx(np.mean([1.0, 2 / 3, 2 / 3, 0.0]))
    assert rows[("retain", "knowmem")] == 1.0
    assert 0 <= rows[("forget", "extraction_strength")] <= 1 and 0 <= rows[("forget", "exact_memorization")] <= 1


def test_verbmem_budget_longer_than_the_model_is_rejected_before_compute(tmp_path):
    from bench.run import run

    cfg = compose_config(*MUSE[:2], *MICRO, f"cache_dir={tmp_path / 'cache'}", micro=False)  # MUSE's 128 tokens
    with pytest.raises(BenchmarkError, match=r"verbmem\[\d\] prompt .*max_position_embeddings=128"):
        run(cfg, tmp_path / "run", "ga")
    assert not (tmp_path / "cache").exists()


def test_full_run_on_muse_fixture(tmp_path):
    """benchmark=muse end to end through bench.run on a micro model: every MUSE row reaches the record."""
    import torch

    from bench.run import run

    cfg = compose_config(*MUSE, *MICRO, f"cache_dir={tmp_path / 'cache'}", "threads=1", micro=False)
    threads = torch.get_num_threads()
    try:
        record = run(cfg, tmp_path / "run", "ga")
    finally:
        torch.set_num_threads(threads)
    assert record["status"] == "complete"
    got = {(r["stage"], r["suite"], r["split"], r["metric"]): r["value"] for r in record["rows"]}
    for stage in ("oracle", "target", "unlearned"):
        for key in [("muse", "forget", "verbmem"), ("muse", "forget", "knowmem"), ("muse", "retain", "knowmem"),
                    ("muse", "forget", "extraction_strength"), ("privacy", "forget", "mia_auc@mink"),
                    ("privacy", "retain", "mia_auc@minkpp"), ("knowledge", "forget", "mcq_acc")]:
            assert np.isfinite(got[(stage, *key)]), (stage, key)
        assert (stage, "privacy", "forget", "privleak@mink") in got
        assert 0 <= got[(stage, "muse", "forget", "verbmem")] <= 1
    assert got[("oracle", "privacy", "forget", "privleak@mink")] in (0.0,) or np.isnan(got[("oracle", "privacy", "forget", "privleak@mink")])
    # the privacy suite scored MUSE's privleak passages (3 + 3), not QA items
    n = {r["metric"]: r["n"] for r in record["rows"] if r["stage"] == "target" and r["split"] == "forget" and r["suite"] == "privacy"}
    assert n["mia_auc@mink"] == 6


def test_membership_text_is_validated_and_kept_by_benchmark_files(tmp_path, micro_bench):
    from dataclasses import replace

    b = replace(micro_bench, membership_text={"forget": ["a b"], "holdout": ["c d"]})
    b.to_json(tmp_path / "w.json")
    from bench.benchmark import Benchmark

    assert Benchmark.from_json(tmp_path / "w.json").membership_text == {"forget": ["a b"], "holdout": ["c d"]}
    with pytest.raises(BenchmarkError, match="'holdout' is missing or empty"):
        replace(micro_bench, membership_text={"forget": ["a"]})
    with pytest.raises(BenchmarkError, match=r"membership_text has split\(s\) \['general'\]"):
        replace(micro_bench, membership_text={"forget": ["a"], "holdout": ["b"], "general": ["c"]})
