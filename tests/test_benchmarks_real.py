"""Real-benchmark loaders (TOFU, ScienceQA, WMDP, FaithUn) on offline fixtures of the real schemas.

Each loader: loads its fixture into a valid Benchmark with the expected splits and counts, and
rejects a file missing a required field with a message naming the field and the file. TOFU's
truth ratio, forget quality and model utility are checked against OpenUnlearning's formulas
computed by hand on scripted probabilities (no model), and one full ``bench.run`` on the TOFU
fixture with a micro model checks that the TOFU metrics reach the record.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from rouge_score import rouge_scorer
from scipy import stats

from bench.benchmark import Benchmark, BenchmarkError
from bench.benchmarks.faithun import load_faithun
from bench.benchmarks.scienceqa import load_scienceqa
from bench.benchmarks.tofu import load_tofu
from bench.benchmarks.wmdp import load_wmdp
from bench.scoring import AnswerScores
from bench.suites import SuiteContext
from tests.conftest import ROOT, compose_config

FIX = ROOT / "tests" / "fixtures"


def _copy(name: str, tmp_path: Path) -> Path:
    dst = tmp_path / name
    shutil.copytree(FIX / name, dst)
    return dst


def _edit_jsonl(path: Path, row: int, edit) -> None:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    edit(rows[row])
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _counts(b):
    return {s: (len(b.split(s)), len(b.groups(s))) for s in ("forget", "retain", "holdout", "general")}


# -- TOFU ---------------------------------------------------------------------------------------


def tofu_fixture(**kw):
    return load_tofu(data_dir=str(FIX / "tofu"), questions_per_author=2, **kw)


def test_tofu_fixture_loads():
    b = tofu_fixture()
    assert _counts(b) == {"forget": (4, 2), "retain": (4, 2), "holdout": (4, 2), "general": (6, 6)}
    assert b.metric_protocol == "tofu" and b.n_options == 4 and b.max_new_tokens == 200
    assert b.groups("forget") == ["author004", "author005"] and b.groups("retain") == ["author000", "author001"]
    f = b.split("forget")[0]
    assert f.paraphrased_answer == "Rome is where Juno Tread was born."
    assert f.paraphrase == "In which city was Juno Tread born?"
    assert len(f.perturbed) == 3 and f.options[f.answer_index] == f.answer and set(f.perturbed) == set(f.options) - {f.answer}
    assert all(it.answer_only for it in b.split("holdout"))
    assert [it.relation for it in b.split("general")] == ["real_authors"] * 3 + ["world_facts"] * 3
    assert tofu_fixture(n_options=2).n_options == 2
    with pytest.raises(BenchmarkError, match="metric_protocol 'tofu' .* needs general items"):
        Benchmark(name="t", items=[it for it in b.items if it.split != "general"], metric_protocol="tofu")


def test_tofu_missing_field_names_field_and_file(tmp_path):
    d = _copy("tofu", tmp_path)
    _edit_jsonl(d / "forget10_perturbed.json", 1, lambda r: r.pop("paraphrased_answer"))
    with pytest.raises(BenchmarkError, match=r"forget10_perturbed\.json: row 1 is missing required field 'paraphrased_answer'"):
        load_tofu(data_dir=str(d), questions_per_author=2)
    d2 = _copy("tofu", tmp_path / "b")
    _edit_jsonl(d2 / "world_facts_perturbed.json", 0, lambda r: r.pop("perturbed_answer"))
    with pytest.raises(BenchmarkError, match=r"world_facts_perturbed\.json: row 0 is missing required field 'perturbed_answer'"):
        load_tofu(data_dir=str(d2), questions_per_author=2)
    with pytest.raises(BenchmarkError, match=r"no file forget05_perturbed\.json"):
        load_tofu(data_dir=str(FIX / "tofu"), forget_split="forget05", questions_per_author=2)


def test_tofu_overlapping_forget_and_retain_rejected(tmp_path):
    d = _copy("tofu", tmp_path)
    forget_row = json.loads((d / "forget10_perturbed.json").read_text().splitlines()[0])
    with open(d / "retain_perturbed.json", "a") as f:
        f.write(json.dumps(forget_row) + "\n")
    with open(d / "retain90.json", "a") as f:
        f.write(json.dumps({"question": forget_row["question"], "answer": forget_row["answer"]}) + "\n")
    with pytest.raises(BenchmarkError, match=r"authors \['author004'\] have questions in both .*forget and retain overlap"):
        load_tofu(data_dir=str(d), questions_per_author=2)


def test_tofu_retain_row_outside_retain_set_rejected(tmp_path):
    d = _copy("tofu", tmp_path)
    rows = (d / "retain90.json").read_text().splitlines()
    (d / "retain90.json").write_text("\n".join(rows[1:]) + "\n")
    with pytest.raises(BenchmarkError, match=r"retain_perturbed\.json: rows \[0\] are not in .*retain90\.json"):
        load_tofu(data_dir=str(d), questions_per_author=2)


# -- TOFU metrics against OpenUnlearning's formulas, on scripted probabilities --------------------


def _scripted_logprob(model: str, prompt: str, answer: str) -> float:
    """A fixed mean answer-token log-prob per (model, prompt, answer), in [-4.2, -0.2]."""
    h = int(hashlib.sha256(f"{model}|{prompt}|{answer}".encode()).hexdigest(), 16)
    return -0.2 - (h % 1000) / 250.0


def _generation(model: str, answer: str) -> str:
    """Scripted greedy output: the unlearned model says the first 2 words, the oracle the whole answer."""
    return answer if model == "oracle" else " ".join(answer.split()[:2])


@pytest.fixture
def scripted(monkeypatch):
    import bench.items as items_mod

    answers_of: dict[str, str] = {}

    def score_answers(model, tokenizer, prompts, answers, batch_size=64):
        lp = np.array([_scripted_logprob(model, p, a) for p, a in zip(prompts, answers, strict=True)])
        n = np.full(lp.size, 3)  # 3 tokens each: the suite must use the per-token mean
        return AnswerScores(sum_logprob=lp * n, n_tokens=n, exact=np.zeros(lp.size, bool),
                            token_logprobs=[np.full(3, v) for v in lp])

    def greedy_answers(model, tokenizer, prompts, max_new_tokens=8, batch_size=64):
        return [_generation(model, answers_of[p]) for p in prompts]

    monkeypatch.setattr(items_mod, "score_answers", score_answers)
    monkeypatch.setattr(items_mod, "greedy_answers", greedy_answers)
    import bench.suites.knowledge as knowledge_mod

    # The memorisation rows run their own forward pass (tests/test_membership.py checks them by hand).
    monkeypatch.setattr(knowledge_mod, "memorization_scores", lambda model, split, ctx: {
        m: np.zeros(len(ctx.bench.split(items_mod.SPLIT_VIEWS[split][0]))) for m in ("exact_memorization", "extraction_strength")})
    return answers_of


def _ou_truth_ratios(model, bench, items, use_paraphrased_answer: bool) -> np.ndarray:
    """OpenUnlearning's truth_ratio handler: wrong/(correct + 1e-10), each exp(-avg loss), the wrong side's
    avg losses averaged over the perturbations first (aggregate_to_1D)."""
    out = []
    for it in items:
        p = bench.prompt(it.question)
        correct = it.paraphrased_answer if use_paraphrased_answer else it.answer
        correct_loss = -_scripted_logprob(model, p, correct)
        wrong_loss = np.mean([-_scripted_logprob(model, p, a) for a in it.perturbed])
        out.append(np.exp(-wrong_loss) / (np.exp(-correct_loss) + 1e-10))
    return np.array(out)


def _ou_rouge_recall(model, items) -> float:
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    return float(np.mean([scorer.score(it.answer, _generation(model, it.answer))["rougeL"].recall for it in items]))


def test_tofu_metrics_match_openunlearning_by_hand(scripted):
    from bench.suites import knowledge

    bench = tofu_fixture()
    for it in bench.items:
        scripted[bench.prompt(it.question)] = it.answer
        if it.paraphrase:
            scripted[bench.prompt(it.paraphrase)] = it.answer
    ctx = SuiteContext(bench=bench, tokenizer=None, oracle="oracle")
    knowledge.evaluate("oracle", "oracle", ctx)
    rows = {(r.split, r.metric): r.value for r in knowledge.evaluate("unlearned", "unlearned", ctx).rows}

    forget, retain = bench.split("forget"), bench.split("retain")
    tr_u = _ou_truth_ratios("unlearned", bench, forget, True)
    tr_o = _ou_truth_ratios("oracle", bench, forget, True)
    # forget_truth_ratio: closer_to_1_better = mean(min(tr, 1/(tr + 1e-10)))
    assert rows[("forget", "truth_ratio")] == pytest.approx(np.mean(np.minimum(tr_u, 1 / (tr_u + 1e-10))), rel=1e-8)
    # forget_quality: KS test p-value between the stage's and the retain (here: oracle) model's forget truth ratios
    assert rows[("forget", "forget_quality")] == pytest.approx(stats.ks_2samp(tr_u, tr_o).pvalue, rel=1e-12)

    # model_utility: hmean of 9 (retain Q_A_Prob, ROUGE, Truth_Ratio; ra/wf Q_A_Prob_normalised, ROUGE, Truth_Ratio)
    parts = [np.mean([np.exp(_scripted_logprob("unlearned", bench.prompt(it.question), it.answer)) for it in retain]),
             _ou_rouge_recall("unlearned", retain),
             np.mean(np.maximum(0, 1 - _ou_truth_ratios("unlearned", bench, retain, True)))]
    for rel in ("real_authors", "world_facts"):
        sub = [it for it in bench.split("general") if it.relation == rel]
        probs = []
        for it in sub:
            p = bench.prompt(it.question)
            c = np.exp(_scripted_logprob("unlearned", p, it.answer))
            w = np.sum([np.exp(_scripted_logprob("unlearned", p, a)) for a in it.perturbed])
            probs.append(c / (c + w + 1e-10))
        norm, rouge = np.mean(probs), _ou_rouge_recall("unlearned", sub)
        tr = np.mean(np.maximum(0, 1 - _ou_truth_ratios("unlearned", bench, sub, False)))
        assert rows[(rel, "answer_prob_normalised")] == pytest.approx(norm, rel=1e-8)
        assert rows[(rel, "rougeL_recall")] == pytest.approx(rouge) and rows[(rel, "truth_ratio")] == pytest.approx(tr, rel=1e-8)
        parts += [norm, rouge, tr]
    assert rows[("retain", "answer_prob")] == pytest.approx(parts[0], rel=1e-12)
    assert rows[("retain", "rougeL_recall")] == pytest.approx(parts[1])
    assert rows[("retain", "model_utility")] == pytest.approx(stats.hmean(parts), rel=1e-8)
    # ROUGE-L recall by hand on one case: "Mira Olundo" recalls 2 of the 6 reference words.
    assert _ou_rouge_recall("unlearned", retain[:1]) == pytest.approx(2 / 6)
    # Holdout authors are answer-only: no mcq or truth ratio rows, the answer-based ones exist.
    assert ("holdout", "answer_prob") in rows and ("holdout", "truth_ratio") not in rows and ("holdout", "mcq_acc") not in rows


# -- ScienceQA, WMDP, FaithUn ------------------------------------------------------------------


def test_scienceqa_fixture_loads_in_mrp_setting():
    b = load_scienceqa(data_dir=str(FIX / "scienceqa"), holdout_fraction=0.5)
    # image row and 2-choice row dropped; units-and-measurement (natural science, not an MRP topic) unused
    assert _counts(b) == {"forget": (4, 4), "retain": (5, 5), "holdout": (4, 4), "general": (0, 0)}
    assert [it.relation for it in b.split("forget")] == ["chemistry", "biology", "physics", "earth-science"]
    it = b.split("forget")[0]
    assert it.answer == "B" and it.options == ("A", "B", "C", "D") and it.question.endswith("(B) water\n(C) salt\n(D) sand")
    assert it.paraphrase == "" and b.chance == 0.25
    ocean = next(x for x in b.split("retain") if "ocean" in x.question)
    assert ocean.question.startswith("Look at the map.\nWhich ocean")


def test_scienceqa_missing_field_names_field_and_file(tmp_path):
    d = _copy("scienceqa", tmp_path)
    _edit_jsonl(d / "train.json", 4, lambda r: r.pop("topic"))
    with pytest.raises(BenchmarkError, match=r"train\.json: row 4 is missing required field 'topic'"):
        load_scienceqa(data_dir=str(d))
    with pytest.raises(BenchmarkError, match="no text-only natural-science question .* 'optics'"):
        load_scienceqa(data_dir=str(FIX / "scienceqa"), forget_topics=["optics"])


def test_wmdp_fixture_loads_with_corpora():
    d = FIX / "wmdp"
    b = load_wmdp(data_dir=str(d), holdout_fraction=0.25, forget_corpus=str(d / "forget_corpus.jsonl"),
                  retain_corpus=str(d / "retain_corpus.jsonl"))
    assert _counts(b) == {"forget": (3, 3), "retain": (3, 3), "holdout": (1, 1), "general": (0, 0)}
    assert b.forget_text[0].startswith("The mitochondrion") and len(b.general_text) == 2
    it = b.split("forget")[0]
    assert it.answer == "B" and "(B) mitochondrion" in it.question and it.relation == "wmdp-bio"
    both = load_wmdp(data_dir=str(d), forget_subsets=["wmdp-bio", "wmdp-chem"], retain_subsets=["wmdp-cyber"],
                     holdout_fraction=0.0)
    assert _counts(both)["forget"] == (6, 6)


def test_wmdp_rejects_missing_field_and_overlap(tmp_path):
    d = _copy("wmdp", tmp_path)
    _edit_jsonl(d / "wmdp-cyber.json", 2, lambda r: r.pop("choices"))
    with pytest.raises(BenchmarkError, match=r"wmdp-cyber\.json: row 2 is missing required field 'choices'"):
        load_wmdp(data_dir=str(d))
    with pytest.raises(BenchmarkError, match="share \\['wmdp-bio'\\].*overlap"):
        load_wmdp(data_dir=str(FIX / "wmdp"), retain_subsets=["wmdp-bio"])
    with pytest.raises(BenchmarkError, match=r"forget_corpus\.jsonl: row 0 is missing required field 'text'"):
        (d / "forget_corpus.jsonl").write_text('{"body": "x"}\n')
        load_wmdp(data_dir=str(FIX / "wmdp"), forget_corpus=str(d / "forget_corpus.jsonl"))


def test_faithun_fixture_loads():
    b = load_faithun(data_dir=str(FIX / "faithun"), holdout_fraction=0.25)
    assert _counts(b) == {"forget": (2, 2), "retain": (2, 2), "holdout": (1, 1), "general": (3, 3)}
    assert b.n_options == 3 and b.chance == pytest.approx(1 / 3)
    it = b.split("forget")[0]
    assert it.id == "Q9001/cluster0" and it.paraphrase == "What is the birthplace of Alma Reyd?"
    assert set(it.options) == {"Oslo", "Lima", "Rome"} and it.perturbed == ("Lima", "Rome")


def test_faithun_rejects_missing_field_overlap_and_no_data_dir(tmp_path):
    d = _copy("faithun", tmp_path)
    _edit_jsonl(d / "FaithUnBench.jsonl", 3, lambda r: r.pop("false_options"))
    with pytest.raises(BenchmarkError, match=r"FaithUnBench\.jsonl: row 3 is missing required field 'false_options'"):
        load_faithun(data_dir=str(d))
    d2 = _copy("faithun", tmp_path / "b")
    (d2 / "retaining_set_split.txt").write_text("1\n2\n3\n")
    import bench.benchmarks.faithun as faithun

    def no_rows(*args, **kwargs):  # the overlap is found from the split files alone (datasets caches what it reads)
        raise AssertionError("rows read before the split files were checked")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(faithun, "load_rows", no_rows)
        with pytest.raises(BenchmarkError, match="cluster 1 is listed in forget_set_split.txt and retaining_set_split.txt"):
            load_faithun(data_dir=str(d2))
    with pytest.raises(BenchmarkError, match="not on the hub: set benchmark.data_dir"):
        load_faithun()


# -- configs and a full run ---------------------------------------------------------------------

MICRO = ["model.arch.hidden_size=32", "model.arch.num_hidden_layers=1", "model.arch.num_attention_heads=2",
         "model.arch.num_key_value_heads=2", "model.arch.intermediate_size=64", "model.inject.max_steps=20",
         "model.inject.warmup_steps=2", "model.inject.batch_size=8", "unlearn.max_steps=6", "unlearn.batch_size=4",
         "unlearn.check_every=2"]
TOFU_FIXTURE = ["benchmark=tofu", f"benchmark.data_dir={FIX / 'tofu'}", "benchmark.questions_per_author=2"]


@pytest.mark.parametrize("name, overrides", [
    ("scienceqa", ["benchmark.holdout_fraction=0.5"]), ("wmdp", []), ("faithun", []), ("tofu", TOFU_FIXTURE[2:])])
def test_benchmark_configs_instantiate(name, overrides):
    from hydra.utils import instantiate

    cfg = compose_config(f"benchmark={name}", f"benchmark.data_dir={FIX / name}", *overrides, micro=False)
    assert instantiate(cfg.benchmark, _convert_="all").split("forget")


def test_sequence_longer_than_the_model_is_rejected_before_compute(tmp_path):
    from bench.run import run

    cfg = compose_config(*TOFU_FIXTURE, *MICRO, f"cache_dir={tmp_path / 'cache'}", micro=False)  # 200 new tokens
    with pytest.raises(BenchmarkError, match="max_position_embeddings=128.*lower benchmark.max_new_tokens"):
        run(cfg, tmp_path / "run", "ga")
    assert not (tmp_path / "cache").exists()


def test_full_run_on_tofu_fixture(tmp_path):
    import torch

    from bench.run import run

    # threads=1: on 2 busy cores, torch's default 2 threads ran this 30x slower (oversubscription).
    cfg = compose_config(*TOFU_FIXTURE, "benchmark.max_new_tokens=8", *MICRO, f"cache_dir={tmp_path / 'cache'}",
                         "suites=[knowledge,privacy]", "threads=1", micro=False)
    threads = torch.get_num_threads()
    try:
        record = run(cfg, tmp_path / "run", "ga")
    finally:
        torch.set_num_threads(threads)  # run() sets it process-wide; later tests keep their own setting
    assert record["status"] == "complete"
    got = {(r["stage"], r["split"], r["metric"]): r["value"] for r in record["rows"]}
    for stage in ("oracle", "target", "unlearned"):
        for key in [("forget", "truth_ratio"), ("forget", "forget_quality"), ("forget", "rougeL_recall"),
                    ("retain", "model_utility"), ("real_authors", "answer_prob_normalised"),
                    ("world_facts", "truth_ratio"), ("forget_paraphrase", "em"), ("holdout", "answer_prob"),
                    ("forget", "mia_auc@mink"), ("forget", "privleak@mink"), ("forget", "extraction_strength")]:
            assert (stage, *key) in got, (stage, key)
            assert np.isfinite(got[(stage, *key)])
    assert ("unlearned", "holdout", "truth_ratio") not in got
    assert got[("oracle", "forget", "forget_quality")] == pytest.approx(1.0)  # the oracle against itself


@pytest.mark.parametrize("name, overrides", [
    pytest.param("scienceqa", ["benchmark.holdout_fraction=0.5", "continual.requests=4"], marks=pytest.mark.slow),  # ~23 s
    ("wmdp", ["benchmark.holdout_fraction=0.25", f"benchmark.forget_corpus={FIX / 'wmdp' / 'forget_corpus.jsonl'}"]),
    ("faithun", ["benchmark.holdout_fraction=0.25"])])
def test_full_run_on_other_fixtures(tmp_path, name, overrides):
    """Every other loader's benchmark also runs end to end (ScienceQA as MRP's 4 continual topic requests)."""
    import torch

    from bench.run import run

    cfg = compose_config(f"benchmark={name}", f"benchmark.data_dir={FIX / name}", *overrides, *MICRO,
                         f"cache_dir={tmp_path / 'cache'}", "suites=[knowledge,privacy]", "threads=1", micro=False)
    threads = torch.get_num_threads()
    try:
        record = run(cfg, tmp_path / "run", "ga")
    finally:
        torch.set_num_threads(threads)
    got = {(r["stage"], r["split"], r["metric"]) for r in record["rows"]}
    assert {("unlearned", "forget", "mcq_acc"), ("unlearned", "retain", "model_utility"),
            ("unlearned", "forget", "privleak@mink")} <= got
    assert (("unlearned", "forget_paraphrase", "em") in got) == (name == "faithun")  # only FaithUn has paraphrases
    if name == "scienceqa":
        assert [r["groups"] for r in record["unlearn"]["requests"]] == [["sqa/0"], ["sqa/3"], ["sqa/5"], ["sqa/8"]]


def test_forget_corpus_is_learned_by_the_target_only(tokenizer):
    from bench.models import injection_examples

    d = FIX / "wmdp"
    b = load_wmdp(data_dir=str(d), forget_corpus=str(d / "forget_corpus.jsonl"), retain_corpus=str(d / "retain_corpus.jsonl"))
    target, oracle = injection_examples(b, tokenizer, "target"), injection_examples(b, tokenizer, "oracle")
    assert len(target) - len(oracle) == len(b.split("forget")) + len(b.forget_text)
    text = tokenizer(b.forget_text[0], add_special_tokens=False).input_ids
    assert any(ids[1:1 + len(text)] == text for ids, _ in target)
    assert not any(ids[1:1 + len(text)] == text for ids, _ in oracle)


def test_real_benchmarks_roundtrip_through_benchmark_file(tmp_path):
    """A loaded benchmark saved with to_json loads back identical (benchmark=file can pin a loaded copy)."""
    d = FIX / "wmdp"
    for b in (tofu_fixture(), load_wmdp(data_dir=str(d), forget_corpus=str(d / "forget_corpus.jsonl")),
              load_faithun(data_dir=str(FIX / "faithun"))):
        b.to_json(tmp_path / f"{b.name}.json")
        assert Benchmark.from_json(tmp_path / f"{b.name}.json") == b
