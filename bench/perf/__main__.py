"""The harness's speed ratios (issue 13): ``python -m bench.perf [--threads 1] [overrides...]``.

A benchmark, not a test: it prints timings and ratios of the default world (any Hydra override of
the run config may follow) and checks nothing. Ratios of things timed alternately in this one
process are robust to other load on the machine; absolute times are upper bounds on a busy one.

1. step: a GradDiff unlearning step of the harness (``bench.train.train_loop``) against Hugging
   Face ``Trainer`` minimising the same loss on the same batches (AdamW, grad clip 1, no schedule),
   the loss written two ways: the usual way (``−model(**forget).loss + α·model(**retain).loss``, two
   forwards with every position's logits, as OpenUnlearning's GradDiff computes it) and with the
   harness's own loss code (one forward over both halves, logits only at answer positions, no key/value
   cache), which leaves only the loop itself (optimiser, clipping, batches) to compare.
2. scoring: teacher-forced scoring of a stage's answers against per-item greedy ``generate`` (one
   prompt at a time, ``max_new_tokens`` of the benchmark), per prompt: em alone (gold answers),
   em + forced choice (gold + options) and every pair the knowledge suite scores (gold, perturbed,
   options), with the disagreements between teacher-forced em and generation. Shared-prefix against
   plain scoring of the same pairs, interleaved. The scoring lines reuse the packed layout (as every
   stage, check and attack checkpoint after the first does); one em line builds it afresh each call.
3. evaluation: the knowledge suite's item scores over every split view (ms per prompt), with and
   without skipping the generations em already decides, and the privacy suite.
4. stopping check (``bench.stopping.StopCheck``): a full check and a partial one (the target model,
   far above the target: the checks between full ones) against ``check_every`` training steps, on
   this world and on one with ``--people`` people (4× the default: the check grows with the world,
   a step does not); then whole GradDiff unlearning runs to the stopping target (lr 1e-3, α 3),
   every check full (``trace_every`` null) against the default, interleaved: the time in checks,
   and whether both stopped at the same step.

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
from bench.models import obtain_model
from bench.perf.setup import load
from bench.run import build_benchmark, build_method, resolve
from bench.stopping import StopCheck
from bench.scoring import LAYOUTS, greedy_answers, score_answers
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


def trainer_steps(loss_fn, model, batches: list, lr: float, steps: int, seed: int) -> float:
    """Seconds of ``Trainer.train`` for ``steps`` steps of ``loss_fn(model, batch)`` on precomputed batches."""
    from transformers import Trainer, TrainingArguments
    from transformers.trainer_callback import PrinterCallback

    class LossTrainer(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            return loss_fn(model, batches[int(inputs["i"][0])])

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


def usual_graddiff_loss(alpha: float) -> Callable:
    """GradDiff's loss written the usual Hugging Face way, as OpenUnlearning's ``GradDiff.compute_loss`` does:
    a forward per half, the model's own label loss (every position's logits, the key/value cache the
    config asks for). The same value as the harness's ``GradDiff.loss`` (retain_loss: nll) up to float
    rounding: both are the mean NLL over each half's answer tokens."""
    def loss(model, batch):
        f, r = batch.forget, batch.retain
        forget = model(input_ids=f.input_ids, attention_mask=f.attention_mask, labels=f.labels).loss
        retain = model(input_ids=r.input_ids, attention_mask=r.attention_mask, labels=r.labels).loss
        return -forget + alpha * retain
    return loss


def step_ratio(setup, model, steps: int, warmup: int, repeats: int) -> None:
    bench, cfg = setup.bench, setup.cfgs["graddiff"]
    u = cfg.unlearn
    data = UnlearnData(bench=bench, tokenizer=setup.tokenizer, forget=bench.split("forget"), retain=bench.split("retain"))
    ctx_kwargs = dict(seed=setup.seed, device=setup.device, batch_size=u.batch_size, grad_clip=u.grad_clip)
    factory = lambda: setup.method("graddiff")  # noqa: E731
    method = factory()
    if method.retain_loss != "nll":
        raise SystemExit(f"bench.perf: the step section compares GradDiff with retain_loss nll, got {method.retain_loss!r}")
    harness_loss = method.loss
    usual_loss = usual_graddiff_loss(method.alpha)
    stream = paired_batches(data, UnlearnContext(max_steps=0, **ctx_kwargs))
    batches = [next(stream) for _ in range(warmup + steps)]
    with torch.no_grad():
        gap = abs(float(harness_loss(model, batches[0])) - float(usual_loss(model, batches[0])))
    per: dict[str, list[float]] = {"harness": [], "usual": [], "same code": []}
    for _ in range(repeats):  # each: (warmup + steps) − warmup, so start-up costs cancel
        per["harness"].append(harness_steps(factory, model, data, ctx_kwargs, warmup + steps)
                              - harness_steps(factory, model, data, ctx_kwargs, warmup))
        for name, loss_fn in (("usual", usual_loss), ("same code", harness_loss)):
            per[name].append(trainer_steps(loss_fn, model, batches, method.lr, warmup + steps, setup.seed)
                             - trainer_steps(loss_fn, model, batches, method.lr, warmup, setup.seed))
    h, usual, same = (statistics.median(per[k]) / steps for k in ("harness", "usual", "same code"))
    print(f"1. GradDiff step (batch {u.batch_size} forget + {u.batch_size} retain, {steps} steps x {repeats}, interleaved):"
          f" harness {1e3 * h:.2f} ms; HF Trainer, the loss written the usual way (two forwards, model(...).loss, as"
          f" OpenUnlearning) {1e3 * usual:.2f} ms -> harness {usual / h:.2f}x faster; HF Trainer running the harness's"
          f" loss code (the loop alone) {1e3 * same:.2f} ms -> {same / h:.2f}x; the two losses differ by {gap:.1e}"
          f" on the first batch")


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
                         "em_cold": lambda: (LAYOUTS.clear(), score_answers(model, tok, gold_p, gold_a)),
                         "em_whole": lambda: score_answers(model, tok, gold_p, gold_a, read_only_last_block=False),
                         "em+fc": lambda: score_answers(model, tok, gold_p + fc_p, gold_a + fc_a),
                         "all": lambda: score_answers(model, tok, all_p, all_a),
                         "all_plain": lambda: score_answers(model, tok, all_p, all_a, shared_prefix=False)}, repeats)
    per_item = times["generate"] / len(picked)
    read = score_answers(model, tok, gold_p, gold_a)
    exact = read.exact
    disagree = int(sum(bool(e) != (g == a) for e, g, a in zip(exact, gens, gold_a)))
    n_tokens = sum(len(tok(p).input_ids) for p in dict.fromkeys(all_p))
    print(f"2. scoring: {n} prompts ({n_tokens} prompt tokens), {len(all_p)} distinct prompt-answer pairs; "
          f"per-item generate {1e3 * per_item:.2f} ms/prompt (sample of {len(picked)}, interleaved with the scoring below)")
    for key, label in (("em", "em (gold answers)"), ("em+fc", "em + forced choice"), ("all", "every pair of the stage")):
        print(f"   teacher-forced {label}: {1e3 * times[key] / n:.3f} ms/prompt -> {per_item * n / times[key]:.1f}x faster "
              "than per-item generate")
    print(f"   teacher-forced em, its packed layout built afresh (a first call; every later stage, check and attack "
          f"checkpoint reuses it): {1e3 * times['em_cold'] / n:.3f} ms/prompt -> {per_item * n / times['em_cold']:.1f}x")
    print(f"   teacher-forced em, the last block at every position (before bench.last_block): "
          f"{1e3 * times['em_whole'] / n:.3f} ms/prompt -> {per_item * n / times['em_whole']:.1f}x; the last block at "
          f"read positions only is {times['em_whole'] / times['em']:.2f}x faster")
    whole = score_answers(model, tok, gold_p, gold_a, read_only_last_block=False)
    print(f"   em vs greedy generation: {disagree} disagreements of {n}; the last block at read positions vs at every "
          f"position: {int((whole.exact != exact).sum())} em disagreements, largest token log-prob difference "
          f"{max(abs(a - b).max() for a, b in zip(whole.token_logprobs, read.token_logprobs)):.2g}")
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


def check_costs(setup, bench, model, label: str, step_s: float, repeats: int, target: float) -> None:
    """A full check and a partial one (``model`` far above ``target``) against the steps between checks."""
    forget, retain = bench.split("forget"), bench.split("retain")
    check = StopCheck(bench, setup.tokenizer, forget, retain, target=target, trace_every=10**9)
    first = check.check(model, 0)  # full: tokenises and sets the margins; later checks at step 5 are partial
    times = interleaved({"full": lambda: check(model), "partial": lambda: check.check(model, 5)}, repeats)
    scored = check.check(model, 5).entry.get("forget_items_scored", len(forget))
    every = setup.cfgs["graddiff"].unlearn.check_every
    share = lambda t: f"{1e3 * t:.1f} ms = {100 * t / (every * step_s):.0f}%"  # noqa: E731
    print(f"   {label}: {len(forget)} forget, {len(retain)} retain items; model at forget mcq "
          f"{first.entry['forget_mcq_acc']:.3f}, target {target:.3f}: full check {share(times['full'])}, partial check "
          f"{share(times['partial'])} ({scored} forget items scored) of the {every} training steps between checks")


def checks_in_a_run(setup, model, repeats: int) -> None:
    """GradDiff unlearning to the stopping target, every check full against the default, interleaved."""
    bench, cfg = setup.bench, setup.cfgs["graddiff"]
    u = cfg.unlearn
    forget, retain = bench.split("forget"), bench.split("retain")
    data = UnlearnData(bench=bench, tokenizer=setup.tokenizer, forget=forget, retain=retain)
    target = bench.chance + u.stop_margin

    def run(trace_every):
        check = StopCheck(bench, setup.tokenizer, forget, retain, u.check_retain, target=target,
                          trace_every=trace_every, max_steps=u.max_steps)
        spent = []

        def should_stop(m, step):
            start = time.perf_counter()
            stop = check.check(m, step).stop
            spent.append(time.perf_counter() - start)
            return stop

        ctx = UnlearnContext(seed=setup.seed, device=setup.device, max_steps=u.max_steps, batch_size=u.batch_size,
                             check_every=u.check_every, grad_clip=u.grad_clip, should_stop=should_stop)
        method = build_method({**resolve(cfg.method), "lr": 1e-3, "alpha": 3.0})
        start = time.perf_counter()
        _, result = method.unlearn(copy.deepcopy(model), data, ctx)
        return time.perf_counter() - start, sum(spent), len(spent), result.steps

    runs: dict[str, list[tuple]] = {"every check full": [], f"trace_every {u.trace_every}": []}
    for _ in range(repeats):
        runs["every check full"].append(run(None))
        runs[f"trace_every {u.trace_every}"].append(run(u.trace_every))
    print(f"   GradDiff (lr 1e-3, alpha 3) to forget mcq <= {target:.2f}, {repeats} runs each, interleaved:")
    for name, rs in runs.items():
        wall, checks, n, steps = (statistics.median(x) for x in zip(*rs))
        print(f"     {name}: {steps:.0f} steps, {n:.0f} checks: {wall:.1f} s, of it checks {checks:.1f} s "
              f"= {100 * checks / (wall - checks):.0f}% of the training time")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--steps", type=int, default=20, help="timed training steps per repeat")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sample", type=int, default=96, help="prompts timed with per-item generate")
    ap.add_argument("--people", type=int, default=320, help="people of the bigger world for the check's share")
    ap.add_argument("--run-repeats", type=int, default=1, help="GradDiff unlearning runs per check mode (section 4)")
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
    stop_target = bench.chance + u.stop_margin
    check_costs(setup, bench, target, "this world", step_s, args.repeats, stop_target)
    big = build_benchmark({**resolve(cfg.benchmark), "n_people": args.people})
    # The bigger world's target model: trained like the default one (the model cache keeps it for the next run).
    big_target, _ = obtain_model("target", setup.spec, big, tok, setup.cache_dir, setup.seed, setup.source)
    check_costs(setup, big, big_target.to(setup.device).eval(), f"{args.people} people", step_s, args.repeats,
                big.chance + u.stop_margin)
    checks_in_a_run(setup, target, args.run_repeats)


if __name__ == "__main__":
    main()
