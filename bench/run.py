"""``python -m bench.run``: one unlearning run, evaluated at every stage, written as one record.

config -> benchmark + tokenizer -> target and oracle models (cached) -> suites on the oracle and
the target -> method.unlearn on a copy of the target -> suites on the unlearned model ->
``record.json`` + ``examples.jsonl`` in Hydra's run directory. Everything that can be checked
without compute (suites, method hyperparameters, stopping rule, benchmark) is checked first.
"""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path
from typing import Any, Callable

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from bench.benchmark import Benchmark, QAItem
from bench.continual import continual_rows, split_requests
from bench.data import check_lengths
from bench.errors import ConfigError
from bench.method import Method, UnlearnContext, UnlearnData
from bench.models import obtain_model, pretrained_source, resolve_device, validate_model_spec
from bench.stage_cache import evaluate_stage, stage_identity
from bench.record import code_version, config_hash, move_aside, provenance, read_record, same_identity, write_record
from bench.suites import Row, SuiteContext, load_suite
from bench.suites._items import mcq_correct
from bench.tokenizer import load_model_tokenizer
from bench.train import TrainResult

log = logging.getLogger("bench.run")


def stop_target(cfg: DictConfig, bench: Benchmark) -> float | None:
    """The forget mcq_acc at which unlearning stops: ``auto`` = chance + margin, a number, or null."""
    stop_at = cfg.unlearn.stop_at
    if stop_at is None:
        return None
    if stop_at == "auto":
        return bench.chance + float(cfg.unlearn.stop_margin)
    try:
        value = float(stop_at)
    except (TypeError, ValueError):
        raise ConfigError(f"unlearn.stop_at must be 'auto', a number in [0, 1] or null, got {stop_at!r}") from None
    if not 0 <= value <= 1:
        raise ConfigError(f"unlearn.stop_at must lie in [0, 1] (it is a forget mcq_acc), got {value}")
    return value


def validate_unlearn(cfg: DictConfig) -> None:
    u = cfg.unlearn
    if u.max_steps < 1:
        raise ConfigError(f"unlearn.max_steps must be >= 1, got {u.max_steps}")
    if u.batch_size < 1:
        raise ConfigError(f"unlearn.batch_size must be >= 1, got {u.batch_size}")
    if u.check_every < 1:
        raise ConfigError(f"unlearn.check_every must be >= 1, got {u.check_every}")
    if not 0 <= float(u.stop_margin) < 1:
        raise ConfigError(f"unlearn.stop_margin must lie in [0, 1), got {u.stop_margin}")


def instantiate_method(cfg: DictConfig) -> Method:
    method = instantiate(cfg.method, _convert_="all")
    if not isinstance(method, Method):
        raise ConfigError(f"method._target_ {cfg.method._target_!r} is not a bench.method.Method subclass")
    return method


def validate_continual(cfg: DictConfig, bench: Benchmark) -> dict[str, Any]:
    """Check the ``continual`` block; returns the suites evaluated after each request."""
    c = cfg.get("continual") or {}
    n = c.get("requests", 1)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"continual.requests must be an integer >= 1 (1 = an ordinary single run), got {n!r}")
    people = len(bench.groups("forget"))
    if n > people:
        raise ConfigError(f"continual.requests={n} but the forget split has only {people} people; "
                          f"use at most {people} requests (requests are cut by person)")
    return {name: load_suite(name) for name in (c.get("suites") or [])} if n > 1 else {}


def unlearn_request(method: Method, model: torch.nn.Module, forget: list[QAItem], retain: list[QAItem], cfg: DictConfig,
                    bench: Benchmark, tokenizer, device: torch.device,
                    target_acc: float | None) -> tuple[torch.nn.Module, TrainResult, list[dict[str, float]], bool | None]:
    """One unlearning call on ``forget`` with the shared context; the stopping rule watches ``forget``.

    Returns the unlearned model, the training result, the stopping-rule trace and whether the
    target was reached (None in fixed-step mode).
    """
    trace: list[dict[str, float]] = []

    def should_stop(model, step: int) -> bool:
        acc = float(mcq_correct(model, tokenizer, bench, forget).mean())
        trace.append({"step": step, "forget_mcq_acc": acc})
        return acc <= target_acc

    uctx = UnlearnContext(seed=cfg.seed, device=device, max_steps=cfg.unlearn.max_steps, batch_size=cfg.unlearn.batch_size,
                          warmup_steps=cfg.unlearn.warmup_steps, check_every=cfg.unlearn.check_every,
                          grad_clip=cfg.unlearn.grad_clip, should_stop=should_stop if target_acc is not None else None)
    data = UnlearnData(bench=bench, tokenizer=tokenizer, forget=forget, retain=retain)
    torch.manual_seed(cfg.seed)
    unlearned, result = method.unlearn(model, data, uctx)
    reached = bool(trace and trace[-1]["forget_mcq_acc"] <= target_acc) if target_acc is not None else None
    return unlearned, result, trace, reached


def unlearn_rows(stage: str, result: TrainResult, reached: bool | None, n: int) -> list[Row]:
    rows = [Row(stage, "unlearn", "forget", "steps", result.steps, n),
            Row(stage, "unlearn", "forget", "wall_s", result.wall_s, n),
            Row(stage, "unlearn", "forget", "diverged", float(result.diverged), n)]
    if reached is not None:
        rows.append(Row(stage, "unlearn", "forget", "reached_target", float(reached), n))
    return rows


def run_requests(cfg: DictConfig, requests: list[list[QAItem]], retain: list[QAItem], model: torch.nn.Module,
                 bench: Benchmark, tokenizer, device: torch.device, target_acc: float | None, rows: list[Row],
                 evaluate_request: Callable[[torch.nn.Module, str, list[list[QAItem]]], None],
                 stage_clock: Callable[[str, float], None]):
    """Continual unlearning: request i unlearns its people from request i−1's model.

    A fresh method instance per request (a method keeps its state on the model, as MRP's frozen
    directions do). After request i: ``unlearn`` rows and the evaluation of stage ``request/<i>``.
    A diverged request ends the sequence. Returns the final model, the summed TrainResult, the
    concatenated stopping trace (with a ``request`` field), whether every request reached the
    target, and a per-request log for the record.
    """
    total = TrainResult(steps=0)
    trace: list[dict[str, float]] = []
    log_: list[dict[str, Any]] = []
    reached_all: bool | None = None if target_acc is None else True
    done: list[list[QAItem]] = []
    for i, forget in enumerate(requests, 1):
        start = time.perf_counter()
        model, result, tr, reached = unlearn_request(instantiate_method(cfg), model, forget, retain, cfg, bench,
                                                     tokenizer, device, target_acc)
        stage_clock(f"unlearn/request{i}", start)
        done.append(forget)
        total.steps += result.steps
        total.losses += result.losses
        total.wall_s += result.wall_s
        total.diverged |= result.diverged
        total.stopped_by_check = result.stopped_by_check
        trace += [{"request": i, **t} for t in tr]
        if reached_all is not None:
            reached_all = reached_all and bool(reached)
        stage = f"request/{i}"
        rows.extend(unlearn_rows(stage, result, reached, len(forget)))
        log_.append({"request": i, "groups": list(dict.fromkeys(it.group for it in forget)), "n_items": len(forget),
                     "steps": result.steps, "wall_s": round(result.wall_s, 3), "diverged": result.diverged,
                     "reached_target": reached})
        if result.diverged:
            log.error("request %d diverged at step %d: later requests are not run", i, result.steps)
            break
        evaluate_request(model, stage, done)
    return model, total, trace, reached_all, log_


def run(cfg: DictConfig, run_dir: str | Path, method_name: str) -> dict[str, Any]:
    """Execute one run into ``run_dir`` and return its record (or the existing one if complete)."""
    run_dir = Path(run_dir)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    cfg_hash, version = config_hash(resolved), code_version()
    existing = read_record(run_dir)
    if existing is not None:
        if same_identity(existing, cfg_hash, version):
            log.info("record in %s is complete for this config and code version: skipped", run_dir)
            return existing
        log.warning("record in %s has another config or code version: moved to %s", run_dir, move_aside(run_dir))

    # -- checks before compute -----------------------------------------------------------
    suites = {name: load_suite(name) for name in cfg.suites}
    validate_unlearn(cfg)
    method = instantiate_method(cfg)
    bench: Benchmark = instantiate(cfg.benchmark, _convert_="all")
    target_acc = stop_target(cfg, bench)
    request_suites = validate_continual(cfg, bench)
    n_requests = int((cfg.get("continual") or {}).get("requests", 1))
    method.check_plan(n_requests, (cfg.model.get("arch") or {}).get("hidden_size") if not cfg.model.get("pretrained") else None)
    model_spec = OmegaConf.to_container(cfg.model, resolve=True)
    validate_model_spec(model_spec)
    settings = OmegaConf.to_container(cfg.suite_settings, resolve=True) or {}
    for name, suite in suites.items():  # a suite may check its settings against the benchmark
        if hasattr(suite, "validate"):
            suite.validate(settings.get(name) or {}, bench)
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    source = pretrained_source(model_spec, cfg.cache_dir)  # a GGUF model is converted here, once (cached)
    tokenizer = load_model_tokenizer(model_spec, source)
    if not model_spec.get("pretrained") and (model_spec.get("arch") or {}).get("max_position_embeddings"):
        # A model built from `arch` has a known position range: check every sequence against it now.
        # (A pretrained model's range lives in its own config; it is not checked here.)
        check_lengths(tokenizer, bench, int(model_spec["arch"]["max_position_embeddings"]))
    device = resolve_device(model_spec.get("device", "auto"))
    prov = provenance(cfg.seed, str(device))
    timings: dict[str, float] = {}
    t0 = time.perf_counter()

    def stage_clock(name: str, start: float) -> None:
        timings[name] = round(time.perf_counter() - start, 3)
        log.info("stage %-10s done in %6.1fs", name, timings[name])

    # -- models ---------------------------------------------------------------------------
    start = time.perf_counter()
    target, target_info = obtain_model("target", model_spec, bench, tokenizer, cfg.cache_dir, cfg.seed, source)
    oracle, oracle_info = obtain_model("oracle", model_spec, bench, tokenizer, cfg.cache_dir, cfg.seed, source)
    stage_clock("models", start)

    ctx = SuiteContext(bench=bench, tokenizer=tokenizer, oracle=oracle, target=target, settings=settings,
                       cache_dir=str(cfg.cache_dir), oracle_key=oracle_info["key"])
    rows: list[Row] = []

    identity = (stage_identity({"target": target_info["key"], "oracle": oracle_info["key"]}, bench, list(suites), settings,
                               {"threads": torch.get_num_threads(), "device": str(device)})
                if cfg.get("reuse_stages", True) else None)
    reused_stages: list[str] = []

    def evaluate(model, stage: str) -> None:
        start = time.perf_counter()

        def compute() -> list[Row]:
            return [row for suite in suites.values() for row in suite.evaluate(model, stage, ctx)]

        stage_rows, reused = evaluate_stage(stage, identity, cfg.cache_dir, ctx, compute)
        rows.extend(stage_rows)
        if reused:
            reused_stages.append(stage)
        stage_clock(stage, start)

    evaluate(oracle, "oracle")
    evaluate(target, "target")

    # -- unlearning -----------------------------------------------------------------------
    forget_items = bench.split("forget")
    retain_items = bench.split("retain")
    if n_requests == 1:
        start = time.perf_counter()
        unlearned, result, trace, reached = unlearn_request(method, copy.deepcopy(target), forget_items, retain_items,
                                                            cfg, bench, tokenizer, device, target_acc)
        stage_clock("unlearn", start)
        requests_log = None
    else:
        def evaluate_request(model, stage: str, done: list[list[QAItem]]) -> None:
            start = time.perf_counter()
            for suite in request_suites.values():
                rows.extend(suite.evaluate(model, stage, ctx))
            rows.extend(continual_rows(model, stage, done, ctx))
            stage_clock(stage, start)

        unlearned, result, trace, reached, requests_log = run_requests(
            cfg, split_requests(bench, n_requests), retain_items, copy.deepcopy(target), bench, tokenizer, device,
            target_acc, rows, evaluate_request, stage_clock)
    rows += unlearn_rows("unlearned", result, reached, len(forget_items))
    if result.diverged:
        log.error("unlearning diverged (non-finite loss) at step %d: the unlearned stage is not evaluated", result.steps)
    else:
        evaluate(unlearned, "unlearned")

    timings["total"] = round(time.perf_counter() - t0, 3)
    record = {
        "status": "diverged" if result.diverged else "complete",
        "method": method_name,
        "config_hash": cfg_hash,
        "code_version": version,
        "config": resolved,
        "provenance": {**prov, "wall_s": timings,
                       "models": {"target": target_info, "oracle": oracle_info}, "reused_stages": reused_stages},
        "unlearn": {"steps": result.steps, "diverged": result.diverged, "stop_target": target_acc,
                    "reached_target": reached, "final_loss": result.final_loss, "stop_trace": trace,
                    "losses": result.losses, **({"requests": requests_log} if requests_log is not None else {})},
        "rows": [r.as_dict() for r in rows],
    }
    path = write_record(run_dir, record, ctx.examples)
    log.info("record written: %s", path)
    return record


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    hc = HydraConfig.get()
    record = run(cfg, hc.runtime.output_dir, hc.runtime.choices.get("method", "?"))
    from bench.report import summary_table

    print(summary_table(record))


if __name__ == "__main__":
    main()
