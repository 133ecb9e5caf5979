"""Does a method pass the stopping rule by making the end token unlikely rather than forgetting?

``python -m bench.perf.end_token_check [--methods ga graddiff npo] [--threads 1] [overrides...]``

The harness's forced choice (``bench.items.mcq_correct``) sums the log-probs of each
option's answer tokens *and* the end token after it. Unlearning trains on (question, gold answer,
end token), so a method can lower P(end | question, gold answer) alone and the gold option loses
the forced choice while the answer tokens are as likely as before. This script scores both
variants from one pass (the end token is the last labelled token of every option):

- ``with_end``: the harness's stopping-rule metric (sum over answer tokens + end token);
- ``answer_only``: the sum over the answer tokens only (``AnswerScores.answer_logprobs``).

For each method it unlearns the cached target (``obtain_model``: the run's own target, trained on
a miss) twice: once stopping when ``with_end`` reaches the run's stop target (the harness's rule),
once stopping when ``answer_only`` does; and prints both forget mcq accuracies at each stop, retain
mcq (both variants), and the mean end-token log-prob after the gold option and after the
distractors (forget split) for the target and each unlearned model. A measurement, not a test.
"""

from __future__ import annotations

import argparse
import copy
import os

os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np
import torch

from bench.items import forced_choice, prompts
from bench.method import UnlearnContext, UnlearnData
from bench.models import obtain_model
from bench.perf.setup import load
from bench.run import StopRule, resolve
from bench.run_config import RunConfig
from bench.scoring import score_answers


def option_scores(model, tokenizer, bench, items) -> dict[str, np.ndarray]:
    """[items, k] summed option log-probs with and without the end token, and the end token's log-prob."""
    ps = prompts(bench, items, "question")
    k = len(items[0].options)
    s = score_answers(model, tokenizer, [p for p in ps for _ in range(k)], [o for it in items for o in it.options])
    end = np.array([lp[-1] for lp in s.token_logprobs]).reshape(len(items), k)
    with_end = s.sum_logprob.reshape(len(items), k)
    return {"with_end": with_end, "answer_only": with_end - end, "end": end}


def summary(model, tokenizer, bench, items) -> dict[str, float]:
    sc = option_scores(model, tokenizer, bench, items)
    gold = np.array([it.answer_index for it in items])
    is_gold = np.arange(sc["end"].shape[1])[None, :] == gold[:, None]
    return {"mcq_with_end": float(forced_choice(sc["with_end"], items).mean()),
            "mcq_answer_only": float(forced_choice(sc["answer_only"], items).mean()),
            "end_lp_gold": float(sc["end"][is_gold].mean()),
            "end_lp_distractors": float(sc["end"][~is_gold].mean())}


def fmt(d: dict[str, float]) -> str:
    return "  ".join(f"{k} {v:7.3f}" for k, v in d.items())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--methods", nargs="+", default=["ga", "graddiff", "npo"], help="conf/method names")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides of the run config (cache_dir=..., seed=...)")
    args = ap.parse_args(argv)
    setup = load(args.methods, args.overrides, args.threads)
    cfg, bench, tokenizer, device = setup.cfgs[args.methods[0]], setup.bench, setup.tokenizer, setup.device
    spec, source = setup.spec, setup.source
    target, _ = obtain_model("target", spec, bench, tokenizer, setup.cache_dir, setup.seed, source)
    forget, retain = bench.split("forget"), bench.split("retain")
    rule = StopRule.from_settings(RunConfig.parse(resolve(cfg)).unlearn, bench)
    oracle_mcq = None
    if rule.rule == "oracle":
        oracle, _ = obtain_model("oracle", spec, bench, tokenizer, setup.cache_dir, setup.seed, source)
        oracle_mcq = summary(oracle, tokenizer, bench, forget)["mcq_answer_only"]
    goal = rule.target_for(oracle_mcq)
    if goal is None:
        raise SystemExit("end_token_check needs a stopping target: unlearn.stop_at=auto, oracle, chance or a number")
    print(f"benchmark {bench.name}: {len(forget)} forget, {len(retain)} retain items, chance {bench.chance:.3f}, "
          f"stop at forget mcq <= {goal:.3f}")
    print(f"target  forget: {fmt(summary(target, tokenizer, bench, forget))}")
    print(f"target  retain: {fmt(summary(target, tokenizer, bench, retain))}")

    for name, mcfg in setup.cfgs.items():
        for rule in ("with_end", "answer_only"):
            trace: list[tuple[int, float, float]] = []

            def should_stop(model, step: int) -> bool:
                sm = summary(model, tokenizer, bench, forget)
                trace.append((step, sm["mcq_with_end"], sm["mcq_answer_only"]))
                return sm[f"mcq_{rule}"] <= goal

            u = mcfg.unlearn
            uctx = UnlearnContext(seed=mcfg.seed, device=device, max_steps=u.max_steps, batch_size=u.batch_size,
                                  warmup_steps=u.warmup_steps, check_every=u.check_every, grad_clip=u.grad_clip,
                                  should_stop=should_stop)
            method = setup.method(name)
            torch.manual_seed(mcfg.seed)
            model, result = method.unlearn(copy.deepcopy(target), UnlearnData(bench, tokenizer, forget, retain), uctx)
            reached = bool(trace) and trace[-1][1 if rule == "with_end" else 2] <= goal
            print(f"\n{name}, stop on {rule}: {result.steps} steps (reached {reached}, diverged {result.diverged})")
            print(f"  forget: {fmt(summary(model, tokenizer, bench, forget))}")
            print(f"  retain: {fmt(summary(model, tokenizer, bench, retain))}")
            print("  trace (step, mcq_with_end, mcq_answer_only): "
                  + " ".join(f"({s},{a:.2f},{b:.2f})" for s, a, b in trace))


if __name__ == "__main__":
    main()
