"""Steps to the stopping target as the world grows: ``python -m bench.perf.steps_by_world``.

A stopping check costs in proportion to the forget split, a training step does not, so whether checking
every fixed fraction of an epoch (``check_every`` proportional to the forget split) would keep the stop as
fine as today depends on whether runs get longer with the world. This prints, per world size and
method, the steps to forget mcq <= chance + ``unlearn.stop_margin`` with a check at every step (each world's
target trained by the run config's injection recipe and kept in the model cache). A benchmark, not a
test: the step counts depend on the seed, the settings and the trained targets.

    python -m bench.perf.steps_by_world --people 100 200 320 --threads 1 \\
        --methods graddiff:lr=3e-4,alpha=1 npo:lr=1e-3,beta=0.5 ga:lr=1e-4

A method may carry ``:key=value,...`` (method keys, e.g. the tuned settings). Any Hydra override of the
run config can follow.
"""

from __future__ import annotations

import argparse
import copy
import os
import time

os.environ.setdefault("TQDM_DISABLE", "1")

from bench.method import UnlearnContext, UnlearnData
from bench.models import obtain_model
from bench.perf.setup import load
from bench.run import build_benchmark, resolve
from bench.stopping import StopCheck


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--people", type=int, nargs="+", default=[100, 200, 320], help="world sizes (benchmark.n_people)")
    ap.add_argument("--methods", nargs="+", default=["graddiff"], help="method[:key=value,...] each")
    ap.add_argument("--max-steps", type=int, default=2000, help="step budget of each run")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides of the run config")
    args = ap.parse_args(argv)
    setup = load(args.methods, args.overrides, args.threads)
    cfg = setup.cfgs[args.methods[0]]
    u = cfg.unlearn
    print(f"steps to forget mcq <= chance + {u.stop_margin} (a check every step; batch {u.batch_size}, seed {setup.seed})")
    for people in args.people:
        bench = build_benchmark({**resolve(cfg.benchmark), "n_people": people})
        target, _ = obtain_model("target", setup.spec, bench, setup.tokenizer, setup.cache_dir, setup.seed, setup.source)
        forget, retain = bench.split("forget"), bench.split("retain")
        goal = bench.chance + u.stop_margin
        start_mcq = StopCheck(bench, setup.tokenizer, forget, [])(target)[0]
        for name in args.methods:
            check = StopCheck(bench, setup.tokenizer, forget, retain, u.check_retain, target=goal, trace_every=None,
                              max_steps=args.max_steps)
            ctx = UnlearnContext(seed=setup.seed, device=setup.device, max_steps=args.max_steps, batch_size=u.batch_size,
                                 check_every=1, grad_clip=u.grad_clip,
                                 should_stop=lambda model, step: check.check(model, step).stop)
            data = UnlearnData(bench=bench, tokenizer=setup.tokenizer, forget=forget, retain=retain)
            start = time.perf_counter()
            _, result = setup.method(name).unlearn(copy.deepcopy(target).to(setup.device), data, ctx)
            reached = "" if result.steps < args.max_steps else " (budget: not reached)"
            print(f"  {people} people ({len(forget)} forget items, target's forget mcq {start_mcq:.3f}) {name}: "
                  f"{result.steps} steps{reached}, {time.perf_counter() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
