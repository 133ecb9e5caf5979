"""The benchmark scripts of bench/perf/ still run (on the micro config; their figures are not checked)."""

from __future__ import annotations

from bench.perf import end_token_check, step_cost


def test_step_cost_runs(tmp_path, capsys):
    step_cost.main(["--methods", "graddiff", "npo", "--steps", "1", "--warmup", "0", "--repeats", "1", "--threads", "1",
                    "+experiment=micro", f"cache_dir={tmp_path}"])
    out = capsys.readouterr().out
    assert "graddiff" in out and "npo" in out and "ratio" in out


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


def test_speed_ratios_run(tmp_path, capsys):
    from bench.perf.__main__ import main

    main(["--steps", "1", "--warmup", "0", "--repeats", "1", "--sample", "2", "--people", "12", "+experiment=micro",
          f"cache_dir={tmp_path}"])
    out = capsys.readouterr().out
    for part in ("HF Trainer", "per-item generate", "disagreements", "ms/prompt", "12 people"):
        assert part in out
