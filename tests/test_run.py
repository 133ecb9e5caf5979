"""End to end on the micro config: stages, record contents, determinism, resume, divergence."""

import json
import subprocess
import sys

import torch

from bench.record import EXAMPLES, RECORD
from bench.run import run
from tests.conftest import ROOT, compose_config


def _rows(record):
    return [(r["stage"], r["suite"], r["split"], r["metric"], r["value"]) for r in record["rows"] if r["metric"] != "wall_s"]


def test_end_to_end_determinism_and_resume(tmp_path):
    cache = f"cache_dir={tmp_path / 'cache'}"
    first = run(compose_config(cache, "method=npo"), tmp_path / "a", "npo")
    assert not first["provenance"]["models"]["target"]["reused"]
    stages = {r["stage"] for r in first["rows"]}
    assert {"target", "oracle", "unlearned"} <= stages
    metrics = {(r["stage"], r["suite"], r["split"], r["metric"]) for r in first["rows"]}
    for needed in [("unlearned", "knowledge", "forget", "em"), ("unlearned", "knowledge", "forget", "mcq_acc"),
                   ("unlearned", "knowledge", "forget", "truth_ratio"), ("unlearned", "knowledge", "forget", "forget_quality"),
                   ("unlearned", "knowledge", "retain", "model_utility"), ("unlearned", "privacy", "forget", "privleak@mink"),
                   ("target", "privacy", "forget", "mia_auc@mink"), ("unlearned", "unlearn", "forget", "steps")]:
        assert needed in metrics
    on_disk = json.loads((tmp_path / "a" / RECORD).read_text())
    assert on_disk["config"]["method"]["_target_"] == "methods.npo.NPO"
    assert on_disk["provenance"]["code_version"] and on_disk["provenance"]["packages"]["torch"]
    # The host's vector kernels change float results: a record says which ones it was computed with.
    assert on_disk["provenance"]["cpu"]["capability"] == torch.backends.cpu.get_cpu_capability()
    examples = [json.loads(line) for line in (tmp_path / "a" / EXAMPLES).read_text().splitlines()]
    assert {e["stage"] for e in examples} == {"target", "oracle", "unlearned"}

    # Same seed, warm model cache, new directory, every stage evaluated afresh: identical rows.
    second = run(compose_config(cache, "method=npo", "reuse_stages=false"), tmp_path / "b", "npo")
    assert second["provenance"]["models"]["target"]["reused"] and second["provenance"]["reused_stages"] == []
    assert _rows(first) == _rows(second)

    # Rerun into a finished directory: skipped, file untouched; also with the caches elsewhere (where caches live
    # changes no number, so a sweep resumed with another cache_dir keeps its finished runs).
    mtime = (tmp_path / "a" / RECORD).stat().st_mtime_ns
    run(compose_config(cache, "method=npo"), tmp_path / "a", "npo")
    run(compose_config(f"cache_dir={tmp_path / 'moved'}", "method=npo"), tmp_path / "a", "npo")
    assert (tmp_path / "a" / RECORD).stat().st_mtime_ns == mtime and not (tmp_path / "moved").exists()

    # A changed config in the same directory: recomputed, the old record kept aside.
    third = run(compose_config(cache, "method=npo", "method.beta=0.2"), tmp_path / "a", "npo")
    assert third["config"]["method"]["beta"] == 0.2
    assert len(list((tmp_path / "a" / "superseded").rglob(RECORD))) == 1


def test_divergence_is_recorded_not_crashed(tmp_path):
    cfg = compose_config(f"cache_dir={tmp_path / 'cache'}", "method=ga", "method.lr=1e30", "unlearn.stop_at=null",
                         "unlearn.max_steps=6")
    record = run(cfg, tmp_path / "run", "ga")
    assert record["status"] == "diverged"
    assert record["unlearn"]["diverged"]
    rows = {(r["stage"], r["metric"]): r["value"] for r in record["rows"]}
    assert rows[("unlearned", "diverged")] == 1.0
    assert 0 < rows[("unlearned", "steps")] < 6
    assert (tmp_path / "run" / RECORD).exists()


def test_fixed_step_mode_runs_all_steps(tmp_path):
    cfg = compose_config(f"cache_dir={tmp_path / 'cache'}", "unlearn.stop_at=null", "unlearn.max_steps=4")
    record = run(cfg, tmp_path / "run", "ga")
    assert record["unlearn"]["steps"] == 4 and record["unlearn"]["reached_target"] is None


def test_cli_multirun_writes_records_and_table(tmp_path):
    sweep = tmp_path / "sweep"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.run", "-m", "+experiment=micro", "method=ga,graddiff", "suites=[knowledge]",
         f"cache_dir={tmp_path / 'cache'}", f"hydra.sweep.dir={sweep}"],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env={**__import__("os").environ, "TQDM_DISABLE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(list(sweep.rglob(RECORD))) == 2
    for ext in ("md", "csv", "tex"):
        assert (sweep / f"table.{ext}").exists()
    assert "graddiff" in proc.stdout and "oracle" in proc.stdout


def test_oracle_and_target_stages_are_reused_across_methods_until_something_changes(tmp_path):
    cache = f"cache_dir={tmp_path / 'cache'}"
    npo = run(compose_config(cache, "method=npo"), tmp_path / "npo", "npo")
    assert npo["provenance"]["reused_stages"] == []
    ga = run(compose_config(cache, "method=ga"), tmp_path / "ga", "ga")
    assert ga["provenance"]["reused_stages"] == ["oracle", "target"]

    def fixed(record):
        return [r for r in _rows(record) if r[0] in ("oracle", "target")]

    assert fixed(ga) == fixed(npo)
    stages = {json.loads(line)["stage"] for line in (tmp_path / "ga" / EXAMPLES).read_text().splitlines()}
    assert stages == {"oracle", "target", "unlearned"}  # the reused stages' examples are written too
    # The unlearned stage's privleak reads the oracle's AUC from the restored references.
    fresh = run(compose_config(cache, "method=ga", "reuse_stages=false"), tmp_path / "ga-fresh", "ga")
    assert _rows(fresh) == _rows(ga)
    changed = run(compose_config(cache, "method=ga", "suite_settings.privacy.min_k=0.2"), tmp_path / "ga-k", "ga")
    assert changed["provenance"]["reused_stages"] == []
    # Held-out text shapes no model (same model keys) but is scored (utility perplexity): not reused either.
    other_text = run(compose_config(cache, "method=ga", "benchmark.n_heldout_text=1"), tmp_path / "ga-t", "ga")
    assert other_text["provenance"]["models"]["target"]["key"] == ga["provenance"]["models"]["target"]["key"]
    assert other_text["provenance"]["reused_stages"] == []


def test_underfit_target_is_named_in_one_line():
    from bench.models import UNDERFIT_ANSWER_PROB, underfit_target
    from bench.suites import Row

    def rows(prob, stage="target", split="forget"):
        return [Row(stage, "knowledge", split, "answer_prob", prob, 10), Row(stage, "knowledge", split, "em", 0.9, 10)]

    line = underfit_target(rows(0.884))
    assert "0.884" in line and "em 0.900" in line and "model.inject.max_steps" in line and "\n" not in line
    assert underfit_target(rows(UNDERFIT_ANSWER_PROB)) is None and underfit_target(rows(0.99)) is None
    # only the target's forget split counts; no knowledge rows at all: nothing to say
    assert underfit_target(rows(0.5, stage="oracle") + rows(0.5, split="retain") + rows(0.99)) is None
    assert underfit_target([]) is None


def test_run_warns_when_the_target_barely_learned_the_forget_split(tmp_path, caplog):
    cfg = compose_config(f"cache_dir={tmp_path / 'cache'}", "model.inject.max_steps=3", "unlearn.stop_at=null",
                         "unlearn.max_steps=1", "suites=[knowledge]")
    with caplog.at_level("WARNING", logger="bench.run"):
        record = run(cfg, tmp_path / "run", "ga")
    prob = next(r["value"] for r in record["rows"]
                if (r["stage"], r["split"], r["metric"]) == ("target", "forget", "answer_prob"))
    assert prob < 0.5
    assert any("knows the forget split only loosely" in m and "model.inject.max_steps" in m for m in caplog.messages)
