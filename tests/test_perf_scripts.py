"""The benchmark scripts of bench/perf/ still run (on the micro config; their figures are not checked)."""

from __future__ import annotations

import json

import pytest

from bench.perf import end_token_check, step_cost


def test_step_cost_runs(tmp_path, capsys):
    step_cost.main(["--methods", "graddiff", "npo", "ssiuu:penalty_grad=exact", "--steps", "1", "--warmup", "0", "--repeats", "1", "--threads", "1",
                    "+experiment=micro", f"cache_dir={tmp_path}"])
    out = capsys.readouterr().out
    assert "graddiff" in out and "npo" in out and "ssiuu:penalty_grad=exact" in out and "ratio" in out


def test_end_token_check_runs(tmp_path, capsys):
    end_token_check.main(["--methods", "ga", "--threads", "1", "+experiment=micro", f"cache_dir={tmp_path}",
                          "unlearn.max_steps=2"])
    out = capsys.readouterr().out
    assert "stop on with_end" in out and "stop on answer_only" in out


def test_peak_memory_runs(tmp_path, capsys):
    from bench.perf import peak_memory

    peak_memory.main(["--methods", "graddiff", "npo", "--steps", "1", "+experiment=micro", f"cache_dir={tmp_path}"])
    out = capsys.readouterr().out
    assert "graddiff" in out and "npo" in out and "growth" in out


def test_ssiuu_penalty_runs(tmp_path, capsys):
    from bench.perf import ssiuu_penalty

    ssiuu_penalty.main(["--steps", "2", "--threads", "1", "+experiment=micro", f"cache_dir={tmp_path}"])
    out = capsys.readouterr().out
    assert "ssiuu:penalty_grad=exact" in out and "|grad R|/lam" in out


@pytest.mark.slow  # ~25-40 s: the whole smoke path twice (bf16 and fp32)
def test_device_check_smoke_mode_writes_its_report(tmp_path, monkeypatch):
    from bench.perf import device_check

    monkeypatch.setattr(device_check, "SMOKE", True)
    monkeypatch.setenv("OUT", str(tmp_path / "out"))
    monkeypatch.delenv("UNLEARN_BENCH_CACHE", raising=False)
    assert device_check.main() == 0
    report = json.loads((tmp_path / "out" / "device_check.json").read_text())
    assert [(c["model"], c["dtype"]) for c in report["cases"]] == [("micro", "bf16"), ("micro", "fp32")]
    for case in report["cases"]:
        assert case["s_per_step"] > 0 and case["tokens_per_s"] > 0 and case["mfu"] is None
        assert case["knowledge"]["unlearned/forget/mcq_acc"] >= 0 and case["relearn"], case["model"]
    assert report["bf16_vs_fp32"]["micro"]["rows"] > 0
    assert "tokens/s" in (tmp_path / "out" / "device_check.txt").read_text()


def test_speed_ratios_run(tmp_path, capsys):
    from bench.perf.__main__ import main

    main(["--steps", "1", "--warmup", "0", "--repeats", "1", "--sample", "2", "--people", "12", "+experiment=micro",
          f"cache_dir={tmp_path}"])
    out = capsys.readouterr().out
    for part in ("HF Trainer", "per-item generate", "disagreements", "ms/prompt", "12 people"):
        assert part in out


def test_steps_by_world_runs(tmp_path, capsys):
    from bench.perf import steps_by_world

    steps_by_world.main(["--people", "10", "12", "--methods", "ga:lr=1e-3", "--max-steps", "3", "+experiment=micro",
                         f"cache_dir={tmp_path}"])
    out = capsys.readouterr().out
    assert "10 people" in out and "12 people" in out and "ga:lr=1e-3" in out and "steps" in out
