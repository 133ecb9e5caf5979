"""The harness's speed ratios (issue 13): ``python -m bench.perf [--threads 1] [overrides...]``.

A benchmark, not a test: it prints timings and ratios of the default world (any Hydra override of
the run config may follow) and checks nothing. Ratios of things timed alternately in this one
process are robust to other load on the machine; absolute times are upper bounds on a busy one.

1. step: a GradDiff unlearning step of the harness (``bench.train.train_loop``) against Hugging
   Face ``Trainer`` minimising the same loss on the same batches (AdamW, grad clip 1, no schedule).
2. scoring: teacher-forced scoring of a stage's answers against per-item greedy ``generate`` (one
   prompt at a time, ``max_new_tokens`` of the benchmark), per prompt: em alone (gold answers),
   em + forced choice (gold + options) and every pair the knowledge suite scores (gold, perturbed,
   options), with the disagreements between teacher-forced em and generation. Shared-prefix against
   plain scoring of the same pairs, interleaved.
3. evaluation: the knowledge suite's item scores over every split view (ms per prompt), with and
   without skipping the generations em already decides, and the privacy suite.
4. stopping check: one check (``bench.run.StopCheck``) against ``check_every`` training steps, on
   this world and on one with ``--people`` people (4× the default: the check grows with the world,
   a step does not).

The trained target comes from the model cache (``obtain_model``: trained on a miss); the bigger
world's check is timed on an untrained model of the same shape (scoring cost does not depend on
the weights).
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import tempfile
import time
from typing import Callable

os.environ.setdefault("TQDM_DISABLE", "1")

import torch
from transformers import AutoModelForCausalLM

from bench.items import SPLIT_VIEWS, option_pairs, prompts, score_items
from bench.method import UnlearnContext, UnlearnData, paired_batches
from bench.models import build_base_model, obtain_model
from bench.perf.setup import load
from bench.run import StopCheck, build_benchmark, resolve
from bench.scoring import greedy_answers, score_answers
from bench.suites import SuiteContext, validate_settings
from bench.suites import privacy


def median_time(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds of each function, the functions run in turn ``repeats`` times (load hits all alike)."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def harness_steps(method_factory, model, data: UnlearnData, ctx_kwargs: dict, steps: int) -> float:
    ctx = UnlearnContext(max_steps=steps, check_every=steps, **ctx_kwargs)
    start = time.perf_counter()
    method_factory().unlearn(copy.deepcopy(model), data, ctx)
    return time.perf_counter() - start


def trainer_steps(method_factory, model, batches: list, lr: float, steps: int, seed: int) -> float:
    """Seconds of ``Trainer.train`` for ``steps`` steps of the method's loss on precomputed batches."""
    from transformers import Trainer, TrainingArguments
    from transformers.trainer_callback import PrinterCallback

    method = method_factory()

    class LossTrainer(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            return method.loss(model, batches[int(inputs["i"][0])])

    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(output_dir=out, max_steps=steps, per_device_train_batch_size=1, learning_rate=lr,
                                 lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
                                 optim="adamw_torch", logging_strategy="no", save_strategy="no", report_to=[],
                                 use_cpu=True, disable_tqdm=True, remove_unused_columns=False, dataloader_num_workers=0,
                                 seed=seed)
        trainer = LossTrainer(model=copy.deepcopy(model), args=args, train_dataset=[{"i": i} for i in range(len(batches))],
                              data_collator=lambda rows: {"i": torch.tensor([r["i"] for r in rows])})
        trainer.remove_callback(PrinterCallback)  # its end-of-training metrics line
        start = time.perf_counter()
        trainer.train()
        return time.perf_counter() - start


def step_ratio(setup, model, steps: int, warmup: int, repeats: int) -> None:
    bench, cfg = setup.bench, setup.cfgs["graddiff"]
    u = cfg.unlearn
    data = UnlearnData(bench=bench, tokenizer=setup.tokenizer, forget=bench.split("forget"), retain=bench.split("retain"))
    ctx_kwargs = dict(seed=setup.seed, device=setup.device, batch_size=u.batch_size, grad_clip=u.grad_clip)
    factory = lambda: setup.method("graddiff")  # noqa: E731
    lr = factory().lr
    stream = paired_batches(data, UnlearnContext(max_steps=0, **ctx_kwargs))
    batches = [next(stream) for _ in range(warmup + steps)]
    per: dict[str, list[float]] = {"harness": [], "trainer": []}
    for _ in range(repeats):  # each: (warmup + steps) − warmup, so start-up costs cancel
        per["harness"].append(harness_steps(factory, model, data, ctx_kwargs, warmup + steps)
                              - harness_steps(factory, model, data, ctx_kwargs, warmup))
        per["trainer"].append(trainer_steps(factory, model, batches, lr, warmup + steps, setup.seed)
                              - trainer_steps(factory, model, batches, lr, warmup, setup.seed))
    h, t = (statistics.median(per[k]) / steps for k in ("harness", "trainer"))
    print(f"1. GradDiff step (batch {u.batch_size} forget + {u.batch_size} retain, {steps} steps x {repeats}, interleaved):"
          f" harness {1e3 * h:.2f} ms, HF Trainer same loss {1e3 * t:.2f} ms -> harness {t / h:.2f}x faster")


def scoring_ratios(setup, model, repeats: int, sample: int) -> None:
    bench, tok = setup.bench, setup.tokenizer
    views = list(SPLIT_VIEWS.values())
    gold_p, gold_a, fc_p, fc_a, all_p, all_a = [], [], [], [], [], []
    for source, phrasing in views:
        items = bench.split(source)
        if not items or (phrasing == "paraphrase" and not items[0].paraphrase):
            continue
        ps = prompts(bench, items, phrasing)
        gold_p += ps
        gold_a += [it.answer for it in items]
        if not items[0].answer_only:
            op, oa = option_pairs(bench, items, phrasing)
            fc_p += op
            fc_a += oa
        pairs = dict.fromkeys((p, a) for p, it in zip(ps, items)
                              for a in (it.answer, it.paraphrased_answer or it.answer, *it.perturbed, *it.options))
        all_p += [p for p, _ in pairs]
        all_a += [a for _, a in pairs]
    n = len(gold_p)
    step = max(1, n // sample)
    picked = list(range(0, n, step))[:sample]
    budget = bench.max_new_tokens
    gens = greedy_answers(model, tok, gold_p, budget)
    times = interleaved({"generate": lambda: [greedy_answers(model, tok, [gold_p[i]], budget, batch_size=1) for i in picked],
                         "em": lambda: score_answers(model, tok, gold_p, gold_a),
                         "em+fc": lambda: score_answers(model, tok, gold_p + fc_p, gold_a + fc_a),
                         "all": lambda: score_answers(model, tok, all_p, all_a),
                         "all_plain": lambda: score_answers(model, tok, all_p, all_a, shared_prefix=False)}, repeats)
    per_item = times["generate"] / len(picked)
    exact = score_answers(model, tok, gold_p, gold_a).exact
    disagree = int(sum(bool(e) != (g == a) for e, g, a in zip(exact, gens, gold_a)))
    n_tokens = sum(len(tok(p).input_ids) for p in dict.fromkeys(all_p))
    print(f"2. scoring: {n} prompts ({n_tokens} prompt tokens), {len(all_p)} distinct prompt-answer pairs; "
          f"per-item generate {1e3 * per_item:.2f} ms/prompt (sample of {len(picked)}, interleaved with the scoring below)")
    for key, label in (("em", "em (gold answers)"), ("em+fc", "em + forced choice"), ("all", "every pair of the stage")):
        print(f"   teacher-forced {label}: {1e3 * times[key] / n:.3f} ms/prompt -> {per_item * n / times[key]:.1f}x faster "
              "than per-item generate")
    print(f"   em vs greedy generation: {disagree} disagreements of {n}")
    print(f"   shared-prefix vs plain scoring of every pair (interleaved): {times['all_plain'] / times['all']:.2f}x")


def evaluation_cost(setup, model, repeats: int) -> None:
    bench, tok = setup.bench, setup.tokenizer
    views = [(s, *SPLIT_VIEWS[s]) for s in SPLIT_VIEWS]
    views = [(s, src, ph) for s, src, ph in views
             if bench.split(src) and not (ph == "paraphrase" and not bench.split(src)[0].paraphrase)]
    n = sum(len(bench.split(src)) for _, src, _ in views)

    def knowledge(skip: bool):
        return [score_items(model, tok, bench, bench.split(src), ph, skip_exact_generations=skip) for _, src, ph in views]

    cfg = setup.cfgs["graddiff"]
    settings = validate_settings(["privacy"], resolve(cfg.suite_settings), bench)
    ctx = SuiteContext(bench=bench, tokenizer=tok, oracle=model, target=model, settings=settings,
                       cache_dir=None)
    times = interleaved({"skip": lambda: knowledge(True), "generate_all": lambda: knowledge(False),
                         "privacy": lambda: privacy.evaluate(model, "target", ctx)}, repeats)
    print(f"3. evaluation of the target ({n} prompts, {len(views)} split views): knowledge "
          f"{1e3 * times['skip'] / n:.2f} ms/prompt ({times['skip']:.2f} s); generating every item as well "
          f"{1e3 * times['generate_all'] / n:.2f} ms/prompt ({times['generate_all'] / times['skip']:.2f}x); "
          f"privacy {times['privacy']:.2f} s")


def check_share(setup, bench, model, label: str, step_s: float, repeats: int) -> None:
    check = StopCheck(bench, setup.tokenizer, bench.split("forget"), bench.split("retain"))
    check(model)  # the first call tokenises; later checks reuse it
    t = median_time(lambda: check(model), repeats)
    every = setup.cfgs["graddiff"].unlearn.check_every
    print(f"   {label}: {len(bench.split('forget'))} forget, {len(bench.split('retain'))} retain items: check "
          f"{1e3 * t:.1f} ms = {100 * t / (every * step_s):.0f}% of the {every} training steps between checks")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--steps", type=int, default=20, help="timed training steps per repeat")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sample", type=int, default=96, help="prompts timed with per-item generate")
    ap.add_argument("--people", type=int, default=320, help="people of the bigger world for the check's share")
    ap.add_argument("--target", default=None,
                    help="a saved model folder to time instead of the cached target (e.g. one trained by another "
                         "commit: two commits compared on the same weights)")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides of the run config")
    args = ap.parse_args(argv)
    setup = load(["graddiff"], args.overrides, args.threads)
    bench, tok = setup.bench, setup.tokenizer
    if args.target:
        target = AutoModelForCausalLM.from_pretrained(args.target, dtype=getattr(torch, setup.spec.get("dtype", "float32")))
    else:
        target, _ = obtain_model("target", setup.spec, bench, tok, setup.cache_dir, setup.seed, setup.source)
    target = target.to(setup.device).eval()
    print(f"world: {len(bench.items)} items; threads {torch.get_num_threads()}; device {setup.device}")
    step_ratio(setup, target, args.steps, args.warmup, args.repeats)
    scoring_ratios(setup, target, args.repeats, args.sample)
    evaluation_cost(setup, target, args.repeats)

    cfg = setup.cfgs["graddiff"]
    u = cfg.unlearn
    data = UnlearnData(bench=bench, tokenizer=tok, forget=bench.split("forget"), retain=bench.split("retain"))
    ctx_kwargs = dict(seed=setup.seed, device=setup.device, batch_size=u.batch_size, grad_clip=u.grad_clip)
    factory = lambda: setup.method("graddiff")  # noqa: E731
    step_s = statistics.median(
        (harness_steps(factory, target, data, ctx_kwargs, args.warmup + args.steps)
         - harness_steps(factory, target, data, ctx_kwargs, args.warmup)) / args.steps for _ in range(args.repeats))
    print(f"4. stopping check (GradDiff step {1e3 * step_s:.2f} ms):")
    check_share(setup, bench, target, "this world", step_s, args.repeats)
    big = build_benchmark({**resolve(cfg.benchmark), "n_people": args.people})
    fresh = build_base_model(setup.spec, tok, setup.seed, setup.source).to(setup.device).eval()
    check_share(setup, big, fresh, f"{args.people} people", step_s, args.repeats)


if __name__ == "__main__":
    main()
