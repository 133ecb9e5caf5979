"""How large is Ssiuu's penalty gradient next to the base loss's? ``python -m bench.perf.ssiuu_penalty``

For each Ssiuu variant (``--variants``, method keys as in ``bench.perf.step_cost``), unlearns a copy
of the run's cached target (``obtain_model``: trained on a miss) for a few steps with the shared
batches and an AdamW step, and prints per step the penalty R_t, the norm of the base gradient and
the norm of the penalty's gradient divided by λ (so the printed ratio tells which λ makes the two
comparable). A measurement, not a test.

    python -m bench.perf.ssiuu_penalty --steps 6 --threads 1
"""

from __future__ import annotations

import argparse
import copy
import os

os.environ.setdefault("TQDM_DISABLE", "1")

import torch

from bench.method import UnlearnContext, UnlearnData, paired_batches
from bench.models import obtain_model
from bench.perf.setup import load

VARIANTS = ["ssiuu:attribution_set=batch", "ssiuu", "ssiuu:penalty_grad=exact"]


def grad_norm(grads) -> float:
    return float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads)))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variants", nargs="+", default=VARIANTS, help="ssiuu[:key=value,...] (method keys)")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("overrides", nargs="*", help="Hydra overrides of the run config")
    args = ap.parse_args(argv)
    setup = load(args.variants, args.overrides, args.threads)
    target, _ = obtain_model("target", setup.spec, setup.bench, setup.tokenizer, setup.cache_dir, setup.seed, setup.source)
    data = UnlearnData(setup.bench, setup.tokenizer, setup.bench.split("forget"), setup.bench.split("retain"))
    batch_size = setup.cfgs[args.variants[0]].unlearn.batch_size
    print(f"{'variant':<32} {'step':>4} {'R_t':>10} {'|grad base|':>12} {'|grad R|/lam':>13}")
    for name in args.variants:
        method = setup.method(name)
        lam = method.lam or 1.0
        model = copy.deepcopy(target).train()
        ctx = UnlearnContext(seed=setup.seed, device=setup.device, max_steps=args.steps, batch_size=batch_size)
        method.prepare(model, data, ctx)
        opt = torch.optim.AdamW(model.parameters(), lr=method.lr)
        for step, batch in zip(range(args.steps), paired_batches(data, ctx)):
            model.zero_grad(set_to_none=True)
            method.loss(model, batch).backward()
            base = [p.grad.clone() for p in model.parameters()]
            method.after_backward(model, batch)
            extra = [p.grad - b for p, b in zip(model.parameters(), base)]
            opt.step()
            print(f"{name:<32} {step:>4} {method.penalties[-1]:>10.3e} {grad_norm(base):>12.3e} {grad_norm(extra) / lam:>13.3e}")


if __name__ == "__main__":
    main()
