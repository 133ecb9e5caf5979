"""Per-step cost of unlearning methods on one model: ``python -m bench.perf.step_cost``.

Runs each method for a fixed number of steps through the shared loop (no stopping checks) on
copies of one model, interleaving methods over repeats, and prints the median seconds per step
and the ratio to the first method (default: GradDiff, then every method in ``conf/method/``).
Any Hydra override of the run config can follow (``model.arch.hidden_size=256``, ``unlearn.batch_size=32``). A benchmark, not a test:
timings depend on the machine and on whatever else runs on it.

    python -m bench.perf.step_cost --steps 20 --repeats 3 --threads 1 --methods graddiff ssiuu
    python -m bench.perf.step_cost --methods graddiff ssiuu:attribution_set=batch ssiuu:penalty_grad=exact

A method may carry ``:key=value,...`` (method keys): variants of one method side by side.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time

os.environ.setdefault("TQDM_DISABLE", "1")

import torch

from bench.method import UnlearnContext, UnlearnData
from bench.models import build_base_model
from bench.perf.setup import all_methods, load


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--methods", nargs="+", default=None,
                    help="conf/method names, optionally name:key=value,... (method keys); the first is the baseline "
                         "(default: graddiff, then every other conf/method/*.yaml)")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per run")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per run (not counted)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides of the run config")
    args = ap.parse_args(argv)
    setup = load(args.methods or all_methods(), args.overrides, args.threads)
    args.methods = list(setup.cfgs)
    cfg = setup.cfgs[args.methods[0]]
    bench, device = setup.bench, setup.device
    model = build_base_model(setup.spec, setup.tokenizer, setup.seed, setup.source).to(device)
    data = UnlearnData(bench=bench, tokenizer=setup.tokenizer, forget=bench.split("forget"), retain=bench.split("retain"))
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params / 1e6:.2f}M parameters, device {device}, threads {torch.get_num_threads()}, "
          f"batch {cfg.unlearn.batch_size} forget + {cfg.unlearn.batch_size} retain, {args.steps} timed steps x {args.repeats}")

    per_step: dict[str, list[float]] = {m: [] for m in args.methods}
    for _ in range(args.repeats):
        for name in args.methods:
            method = setup.method(name)
            total = args.warmup + args.steps
            # Time the steps after warmup: run warmup and warmup+steps, take the difference.
            walls = []
            for steps in (args.warmup, total):
                ctx = UnlearnContext(seed=setup.seed, device=device, max_steps=steps, batch_size=cfg.unlearn.batch_size,
                                     grad_clip=cfg.unlearn.grad_clip, check_every=steps)
                start = time.perf_counter()
                method.unlearn(copy.deepcopy(model), data, ctx) if steps else None
                walls.append(time.perf_counter() - start)
            per_step[name].append((walls[1] - walls[0]) / args.steps)

    base = statistics.median(per_step[args.methods[0]])
    width = max(12, *(len(m) for m in per_step))
    print(f"{'method':<{width}} {'ms/step (median)':>17} {'min':>8} {'max':>8} {'ratio':>7}")
    for name, values in per_step.items():
        med = statistics.median(values)
        print(f"{name:<{width}} {1e3 * med:>17.1f} {1e3 * min(values):>8.1f} {1e3 * max(values):>8.1f} {med / base:>7.2f}")


if __name__ == "__main__":
    main()
