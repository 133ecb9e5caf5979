"""Peak memory of unlearning methods: ``python -m bench.perf.peak_memory``.

Each method runs a fixed number of steps through the shared loop in its own fresh process (a
process's peak resident memory only grows, so methods cannot share one), on the same model and
batches. On a GPU (``model.device`` auto or cuda) the figures are the device's allocated memory
(torch.cuda.max_memory_allocated: weights, optimiser state, activations of one step), with
``model.dtype=bf16`` and ``model.gradient_checkpointing=true`` as set. Otherwise printed per
method: the peak resident set size minus the resident size just before
unlearning (what the method itself adds: optimiser state, a frozen copy, reference values,
activations), and the ratio of that to the first method's (default: GradDiff). A benchmark, not a
test: the allocator and the machine shape the figures; compare methods within one run.

    python -m bench.perf.peak_memory --methods graddiff npo --steps 10 model.arch.hidden_size=512
"""

from __future__ import annotations

import argparse
import copy
import multiprocessing as mp
import os
import resource

os.environ.setdefault("TQDM_DISABLE", "1")


def _peak_growth(method_name: str, overrides: list[str], steps: int, threads: int | None, out: mp.Queue) -> None:
    import psutil

    from bench.method import UnlearnContext, UnlearnData
    from bench.models import build_base_model
    from bench.perf.setup import load

    setup = load([method_name], overrides, threads)
    cfg = setup.cfgs[method_name]
    model = build_base_model(setup.spec, setup.tokenizer, setup.seed, setup.source).to(setup.device)
    data = UnlearnData(bench=setup.bench, tokenizer=setup.tokenizer, forget=setup.bench.split("forget"),
                       retain=setup.bench.split("retain"))
    ctx = UnlearnContext(seed=setup.seed, device=setup.device, max_steps=steps, batch_size=cfg.unlearn.batch_size,
                         grad_clip=cfg.unlearn.grad_clip, check_every=steps)
    method = setup.method(method_name)
    target = copy.deepcopy(model)
    if setup.device.type == "cuda":  # on a GPU: the device's allocated memory, the figure that must fit
        import torch

        torch.cuda.synchronize(setup.device)
        torch.cuda.reset_peak_memory_stats(setup.device)
        before = torch.cuda.memory_allocated(setup.device)
        method.unlearn(target, data, ctx)
        out.put((method_name, before, torch.cuda.max_memory_allocated(setup.device), "allocated"))
        return
    before = psutil.Process().memory_info().rss
    method.unlearn(target, data, ctx)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    out.put((method_name, before, peak, "rss"))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--methods", nargs="+", default=["graddiff", "npo"], help="conf/method names; the first is the baseline")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("overrides", nargs="*", help="Hydra overrides of the run config")
    args = ap.parse_args(argv)
    ctx = mp.get_context("spawn")
    rows = []
    for name in args.methods:
        queue = ctx.Queue()
        proc = ctx.Process(target=_peak_growth, args=(name, args.overrides, args.steps, args.threads, queue))
        proc.start()
        rows.append(queue.get())
        proc.join()
        if proc.exitcode:
            raise SystemExit(f"{name}: the measuring process failed (exit {proc.exitcode})")
    base = max(1, rows[0][2] - rows[0][1])
    print(f"{'method':<12} {rows[0][3] + ' before (MiB)':>17} {'peak (MiB)':>11} {'growth (MiB)':>13} {'ratio':>7}")
    for name, before, peak, _ in rows:
        growth = peak - before
        print(f"{name:<12} {before / 2**20:>17.1f} {peak / 2**20:>11.1f} {growth / 2**20:>13.1f} {growth / base:>7.2f}")


if __name__ == "__main__":
    main()
