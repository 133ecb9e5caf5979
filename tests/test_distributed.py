"""One run across several processes (bench/distributed.py): 2 processes with gloo on the CPU give the
record of 1 process; plans that cannot run across processes fail before compute."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bench.errors import ConfigError, UserError
from bench.record import RECORD
from bench.run import Run
from tests.conftest import ROOT, compose_config

# Micro world and model as they are (60 injection steps: cheap, and the target's forget mcq is 1.0, so the
# stopping rule has something to watch), knowledge suite only: the comparison, not the suites, is under test.
ARGS = ["+experiment=micro", "suites=[knowledge]", "unlearn.max_steps=12", "unlearn.check_every=3", "method.lr=2e-3",
        "threads=1"]
# Tolerances, stated: gradients are averaged over the ranks' halves of each batch (with equal answer-token
# counts per row, as in the synthetic world, the same mean as one process's), so values differ only by float
# summation order: losses by < 1e-4 relative or 1e-5 absolute (GradDiff's loss crosses 0), every row value by
# < 1e-4 absolute (one forced-choice flip would move a score by 1/n >= 0.01, so this also means the same
# verdicts), steps and stopping exactly. Measured: losses within 8e-5 relative, unlearned rows within 3e-6.
LOSS_RTOL, LOSS_ATOL, ROW_ATOL = 1e-4, 1e-5, 1e-4
TIMING_METRICS = {"wall_s"}


def _launch(tmp_path: Path, name: str, processes: int, *overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    prefix = ([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(processes), "--standalone"]
              if processes > 1 else [sys.executable])
    cmd = [*prefix, "-m", "bench.run", "-m", *ARGS, *overrides, f"cache_dir={tmp_path / 'cache'}",
           f"hydra.sweep.dir={tmp_path / name}"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _run_dirs(sweep: Path) -> dict[str, Path]:
    return {json.loads(p.read_text())["method"]: p.parent for p in sweep.glob(f"*/{RECORD}")}


def _rows(record: dict) -> dict[tuple, float]:
    return {(r["stage"], r["split"], r["metric"]): r["value"] for r in record["rows"] if r["metric"] not in TIMING_METRICS}


def test_two_processes_give_the_one_process_record(tmp_path):
    _compare(tmp_path, ["ga", "npo"])  # a sweep: runs of a multi-process sweep stay in step


@pytest.mark.slow  # ~1-2 min: every other method marked shardable
def test_every_shardable_method_gives_the_one_process_record(tmp_path):
    from bench.run import method_class
    from tests.conftest import CONF

    shardable = sorted(p.stem for p in (CONF / "method").glob("*.yaml")
                       if method_class(yaml.safe_load(p.read_text())).shardable)
    assert {"ga", "npo", "graddiff"} <= set(shardable)
    _compare(tmp_path, [m for m in shardable if m not in ("ga", "npo")])


def _compare(tmp_path: Path, methods: list[str]) -> None:
    sweep = "method=" + ",".join(methods)
    one = _launch(tmp_path, "one", 1, sweep)
    two = _launch(tmp_path, "two", 2, sweep)
    assert two.stdout.count(f"| {methods[-1]}") == one.stdout.count(f"| {methods[-1]}"), "rank 0 alone prints the tables"
    one_dirs, two_dirs = _run_dirs(tmp_path / "one"), _run_dirs(tmp_path / "two")
    assert sorted(one_dirs) == sorted(two_dirs) == sorted(methods)
    for method in methods:
        one_dir, two_dir = one_dirs[method], two_dirs[method]
        a, b = json.loads((one_dir / RECORD).read_text()), json.loads((two_dir / RECORD).read_text())
        assert a["provenance"]["processes"] == 1 and b["provenance"]["processes"] == 2
        assert b["unlearn"]["steps"] == a["unlearn"]["steps"] and b["unlearn"]["reached_target"] == a["unlearn"]["reached_target"]
        assert len(a["unlearn"]["losses"]) > 1 and len({round(x, 3) for x in a["unlearn"]["losses"]}) > 1, "unlearning moved"
        assert b["unlearn"]["losses"] == pytest.approx(a["unlearn"]["losses"], rel=LOSS_RTOL, abs=LOSS_ATOL)
        assert [t.get("forget_mcq_acc") for t in b["unlearn"]["stop_trace"]] == [t.get("forget_mcq_acc") for t in a["unlearn"]["stop_trace"]]
        ra, rb = _rows(a), _rows(b)
        assert ra.keys() == rb.keys()
        for key, value in ra.items():
            if isinstance(value, float) and math.isnan(value):
                assert math.isnan(rb[key]), key
            else:
                assert rb[key] == pytest.approx(value, abs=ROW_ATOL), key
        assert {p.name for p in two_dir.iterdir()} == {p.name for p in one_dir.iterdir()}, "rank 1 wrote into the run folder"
    assert (tmp_path / "two" / "table.md").exists(), "rank 0 wrote the sweep's table"


def _as_rank(monkeypatch, rank: int = 0, size: int = 2) -> None:
    for key, value in {"RANK": rank, "WORLD_SIZE": size, "LOCAL_RANK": rank, "LOCAL_WORLD_SIZE": size}.items():
        monkeypatch.setenv(key, str(value))


@pytest.mark.parametrize("overrides,needles", [
    (["method=mrp"], ["method mrp", "MRP", "forward hooks", "one process"]),
    (["method=ssiuu"], ["method ssiuu", "whole gradients"]),
    (["method=ga", "unlearn.batch_size=5"], ["unlearn.batch_size=5", "multiple of 2"]),
    (["method=ga", "model.device=cuda"], ["2 processes", "CUDA device", "nproc-per-node"]),
])
def test_a_plan_that_cannot_run_across_processes_fails_before_compute(tmp_path, monkeypatch, overrides, needles):
    _as_rank(monkeypatch)
    if "model.device=cuda" in overrides:  # a CPU-only machine: 0 visible devices for 2 processes
        monkeypatch.setattr("torch.cuda.device_count", lambda: 0)
    cfg = compose_config(*overrides, f"cache_dir={tmp_path / 'cache'}")
    with pytest.raises(ConfigError) as info:
        Run(cfg, tmp_path / "run", overrides[0].split("=")[1])
    for needle in needles:
        assert needle in str(info.value), str(info.value)
    assert not (tmp_path / "cache").exists() and not (tmp_path / "run").exists()


def test_bf16_on_a_gpu_without_it_fails_before_compute(tmp_path, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_bf16_supported", lambda including_emulation=True: False)
    monkeypatch.setattr("torch.cuda.get_device_name", lambda device=None: "Tesla V100")
    cfg = compose_config("model.dtype=bf16", "model.device=cuda", f"cache_dir={tmp_path / 'cache'}")
    with pytest.raises(UserError) as info:
        Run(cfg, tmp_path / "run", "ga")
    assert "model.dtype=bf16" in str(info.value) and "Tesla V100" in str(info.value)


def test_scoring_batches_shrink_when_the_device_runs_out_of_memory(trained_micro, tokenizer, micro_bench):
    """An out-of-memory error at the configured scoring batch size reruns the pass with smaller batches,
    with the same scores (bench.memory), on the plain layout and on the shared-prefix (packed) one."""
    import torch

    from bench.items import prompts
    from bench.scoring import score_answers

    items = micro_bench.split("retain") * 4  # more rows than one batch of 64
    texts, answers = prompts(micro_bench, items, "question"), [it.answer for it in items]
    for shared in (False, True):
        expected = score_answers(trained_micro, tokenizer, texts, answers, batch_size=64, shared_prefix=shared)
        forward, seen = trained_micro.forward, []
        first = None

        def small_memory(*args, **kwargs):
            nonlocal first
            positions = kwargs["input_ids"].numel()
            first = positions if first is None else first
            seen.append(positions)
            if positions >= first * 0.5:  # only batches well below the first attempt's size fit
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return forward(*args, **kwargs)

        trained_micro.forward = small_memory
        try:
            got = score_answers(trained_micro, tokenizer, texts, answers, batch_size=64, shared_prefix=shared)
        finally:
            del trained_micro.forward
        assert len(seen) > 2 and seen[-1] < first * 0.5, (shared, seen)  # retried smaller until it fit
        assert got.exact.tolist() == expected.exact.tolist()
        assert got.sum_logprob == pytest.approx(expected.sum_logprob, abs=1e-5)


def test_world_from_torchrun_and_from_srun(monkeypatch):
    from bench.distributed import World, world

    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "SLURM_STEP_NUM_TASKS", "SLURM_PROCID",
                "SLURM_LOCALID", "SLURM_STEP_TASKS_PER_NODE"):
        monkeypatch.delenv(key, raising=False)
    assert world() == World() and not world().multi
    monkeypatch.setenv("SLURM_PROCID", "0")  # a batch script's shell: no step of several tasks, one process
    assert world() == World()
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "8")
    monkeypatch.setenv("SLURM_PROCID", "5")
    monkeypatch.setenv("SLURM_LOCALID", "1")
    monkeypatch.setenv("SLURM_STEP_TASKS_PER_NODE", "4(x2)")
    assert world() == World(rank=5, size=8, local_rank=1, local_size=4)
    _as_rank(monkeypatch, rank=1, size=2)  # torchrun's variables win
    assert world() == World(rank=1, size=2, local_rank=1, local_size=2)
