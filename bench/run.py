"""``python -m bench.run``: one unlearning run, evaluated at every stage, written as one record.

``Run`` is the recipe (torchtune style): its constructor checks the whole config without
compute and without touching the disk; ``execute`` runs the phases in order:

    config ─► checks (schema, suites, method, benchmark, stopping rule, model shape)
           ─► skip if run_dir holds a complete record of this config and code
           ─► tokenizer + sequence-length checks ─► move a stale record aside
           ─► target and oracle models (cached) ─► suites on the oracle and the target
           ─► method.unlearn on a copy of the target (continual: one request after another)
           ─► suites on the unlearned model ─► record.json + examples.jsonl

A bad input is a ``UserError``: ``main`` prints its one line and exits 2 (traceback only with
HYDRA_FULL_ERROR=1).
"""

from __future__ import annotations

import copy
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import huggingface_hub
import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_class, get_method
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from transformers import AutoConfig, LlamaConfig

from bench import distributed, stages
from bench.benchmark import Benchmark, QAItem
from bench.continual import check_request_suites, evaluate_request, split_requests
from bench.data import check_lengths
from bench.errors import ConfigError, UserError, exit_with
from bench.method import Method, ModelShape, UnlearnContext, UnlearnData
from bench.disk_cache import digest
from bench.models import (ModelConfigError, build_base_model, obtain_models, pretrained_source, resolve_device,
                          underfit_target, validate_model_spec)
from bench.pretrained import RULE, known_forget
from bench.record import (code_version, config_hash, move_aside, provenance, read_record, runtime_identity, same_identity,
                          write_record)
from bench.run_config import RunConfig, UnlearnSettings, check_model_block
from bench.settings import did_you_mean, parse_arguments, parse_settings
from bench.items import mcq_correct
from bench.stage_cache import cached_stage, stage_identity
from bench.stopping import StopCheck
from bench.suites import (Row, SuiteContext, available_suites, check_suites_against_model, evaluate_suites,
                          validate_settings)
from bench.tokenizer import load_model_tokenizer
from bench.train import TrainResult
from bench.tune import apply_tuned, parse_space, split_tune
from bench.unlearning import unlearn_rows

log = logging.getLogger("bench.run")


def resolve(cfg: DictConfig) -> dict[str, Any]:
    """The config as plain data; a missing required value (``???``) or a broken interpolation is a ConfigError."""
    try:
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "?"
        raise ConfigError(f"config key {key!r} has no usable value ({type(e).__name__}: {str(e).splitlines()[0]}); "
                          f"set it on the command line, e.g. {key}=...") from None


def method_class(block: dict[str, Any]) -> type[Method]:
    target = block.get("_target_")
    try:
        cls = get_class(target) if isinstance(target, str) else None
    except Exception:  # noqa: BLE001 - hydra wraps import failures in several types
        cls = None
    if cls is None or not (isinstance(cls, type) and issubclass(cls, Method)):
        raise ConfigError(f"method._target_ {target!r} is not an importable bench.method.Method subclass; "
                          "pick a method with method=<name> (conf/method/)")
    return cls


def build_method(block: dict[str, Any]) -> Method:
    """A method instance from the ``method`` block: its dataclass fields, typed and range-checked. The block's
    ``tune:`` search space (bench.tune) is checked here too, for every run, and is not a hyperparameter."""
    cls = method_class(block)
    block, space = split_tune(block)
    method = parse_settings(cls, block, "method", ignore=("_target_",))  # the block's own errors name method.<key>
    parse_space(cls, block, space)
    return method


def instantiate_method(cfg: DictConfig) -> Method:
    return build_method(resolve(cfg.method))


def build_benchmark(block: dict[str, Any]) -> Benchmark:
    """The benchmark from its loader (``benchmark._target_``), arguments checked against its signature."""
    target = block.get("_target_")
    try:
        loader = get_method(target) if isinstance(target, str) else None
    except Exception:  # noqa: BLE001
        loader = None
    if loader is None:
        raise ConfigError(f"benchmark._target_ {target!r} is not an importable loader; pick one with benchmark=<name>")
    kwargs = parse_arguments(loader, block, "benchmark", ignore=("_target_",))
    try:
        bench = loader(**kwargs)
    except UserError:
        raise
    except (ValueError, TypeError) as e:
        raise ConfigError(f"benchmark: {e}") from None
    if not isinstance(bench, Benchmark):
        raise ConfigError(f"benchmark._target_ {target!r} returned {type(bench).__name__}, not a Benchmark")
    return bench


@dataclass
class StopRule:
    """The fair-comparison stopping rule: stop once forget mcq_acc <= target (None: fixed steps).

    ``rule``: auto | oracle | chance | fixed | a number as given. For ``oracle`` the target is
    the oracle's forget mcq_acc on the items being unlearned plus the margin, known once the
    oracle is trained (``target_for``)."""

    rule: str
    margin: float
    chance: float
    value: float | None = None

    @classmethod
    def from_settings(cls, u: UnlearnSettings, bench: Benchmark) -> "StopRule":
        if u.stop_at is None:
            return cls("fixed", u.stop_margin, bench.chance)
        if u.stop_at == "auto":
            return cls("auto", u.stop_margin, bench.chance, bench.chance + u.stop_margin)
        if u.stop_at == "chance":
            return cls("chance", u.stop_margin, bench.chance, bench.chance)
        if u.stop_at == "oracle":
            return cls("oracle", u.stop_margin, bench.chance)
        return cls("value", u.stop_margin, bench.chance, float(u.stop_at))

    def target_for(self, oracle_mcq: float | None) -> float | None:
        """The target for one unlearning call; ``oracle_mcq``: the oracle's forget mcq_acc on its items."""
        if self.rule == "oracle":
            assert oracle_mcq is not None
            return oracle_mcq + self.margin
        return self.value


@dataclass
class Outcome:
    """What one unlearning call (or a continual sequence) produced."""

    model: torch.nn.Module
    result: TrainResult
    trace: list[dict[str, Any]] = field(default_factory=list)
    target: float | None = None
    reached: bool | None = None
    requests: list[dict[str, Any]] | None = None


class Run:
    """One run, phase by phase; every check happens in the constructor, before compute."""

    def __init__(self, cfg: DictConfig, run_dir: str | Path, method_name: str, overridden: Sequence[str] = ()):
        """``overridden``: the method keys set on the command line (a tuned file must not silently replace them)."""
        self.run_dir = Path(run_dir)
        self.method_name = method_name
        self.resolved = resolve(cfg)
        tunable, controls = True, None
        if isinstance(self.resolved.get("method"), dict):
            build_method(self.resolved["method"])  # the tune: block is checked, then left out of the record and hash
            controls = method_class(self.resolved["method"]).controls
            self.resolved["method"], space = split_tune(self.resolved["method"])
            tunable = space is not None
        self.tuning = apply_tuned(self.resolved, method_name, overridden, tunable=tunable, controls=controls)
        self.settings = RunConfig.parse(self.resolved)
        s = self.settings
        self.suites = list(dict.fromkeys(s.suites))
        self.method = build_method(s.method)  # checked here; every unlearning call gets a fresh instance
        self.bench = build_benchmark(s.benchmark)
        self.stop = StopRule.from_settings(s.unlearn, self.bench)
        self.n_requests = s.continual.requests
        people = len(self.bench.groups("forget"))
        if self.n_requests > people:
            raise ConfigError(f"continual.requests={self.n_requests} but the forget split has only {people} people; "
                              f"use at most {people} requests (requests are cut by person)")
        self.request_suites = list(s.continual.suites) if self.n_requests > 1 else []
        unknown = [name for name in self.request_suites if name not in available_suites()]
        if unknown:
            raise ConfigError(f"continual.suites: unknown suite {unknown[0]!r}; "
                              f"{did_you_mean(unknown[0], available_suites())}available suites: {available_suites()}")
        self.model_spec = check_model_block(s.model)
        validate_model_spec(self.model_spec)
        self.inject = self.model_spec.get("inject") is not None  # null: the target is the base model as loaded
        if not self.inject and not (self.model_spec.get("pretrained") or self.model_spec.get("gguf")):
            raise ConfigError("model.inject=null keeps the base model as loaded, but a model built from model.arch knows "
                              "nothing; set model.pretrained (or model=smollm2), or give model.inject settings")
        if not self.inject and s.unlearn.stop_at == "oracle":
            raise ConfigError("unlearn.stop_at=oracle needs an oracle, and model.inject=null has none (nothing was "
                              "withheld from a pretrained model); use unlearn.stop_at=auto, chance or a number")
        self.world = distributed.world()
        problem = distributed.check_plan(self.world, resolve_device(self.model_spec.get("device", "auto")),
                                         s.unlearn.batch_size, self.method, method_name)
        if problem:
            raise ConfigError(problem)
        if not (self.model_spec.get("pretrained") or self.model_spec.get("gguf")):  # a fresh model: shape known now
            try:
                arch = LlamaConfig(**self.model_spec["arch"])
            except (ValueError, TypeError) as e:  # transformers' own validation of the config
                raise ConfigError(f"model.arch: {' '.join(str(e).split())}") from None
            self.shape: ModelShape | None = ModelShape(arch.hidden_size, arch.num_hidden_layers)
            self.max_positions: int | None = arch.max_position_embeddings
            self.check_plan(self.shape)
        else:
            self.shape, self.max_positions = None, None  # known from the pretrained config in prepare
        self.suite_settings = validate_settings([*self.suites, *self.request_suites], s.suite_settings, self.bench)
        privacy = self.suite_settings.get("privacy")
        if (not self.inject and "privacy" in [*self.suites, *self.request_suites]
                and "reference" in privacy.attacks and privacy.reference == "oracle"):
            raise ConfigError("suite_settings.privacy.reference=oracle needs an oracle, and model.inject=null has none; "
                              "set suite_settings.privacy.reference=target (the model before unlearning) or drop "
                              "reference from suite_settings.privacy.attacks")
        # A tuned run's identity includes its tuning provenance (seeds, file digest), not only the merged values.
        self.cfg_hash = config_hash(self.resolved if self.tuning is None else {**self.resolved, "tuning": self.tuning})
        self.code = code_version()
        check_request_suites(self.bench, self.n_requests, self.request_suites, s.suite_settings)
        self.selected_settings = {name: self.suite_settings[name] for name in dict.fromkeys([*self.suites, *self.request_suites])}
        self.rows: list[Row] = []
        self.examples: list[dict[str, Any]] = []
        self.timings: dict[str, float] = {}
        self.reused_stages: list[str] = []

    def check_plan(self, shape: ModelShape) -> None:
        try:
            self.method.check_plan(self.n_requests, shape)
        except ValueError as e:
            raise ConfigError(f"method: {e}") from None

    # -- phases -------------------------------------------------------------------------------
    def execute(self) -> dict[str, Any]:
        """Run every phase and write the record; a complete record of this config and code is returned as is.

        Several processes (``bench.distributed``): every rank unlearns (sharded); rank 0 alone evaluates
        and writes, into its run folder; the others return None."""
        distributed.init(resolve_device(self.model_spec.get("device", "auto")))
        self.run_dir = Path(distributed.broadcast(str(self.run_dir)))  # Hydra may stamp each rank's folder apart
        existing = distributed.broadcast(read_record(self.run_dir))
        if existing is not None and same_identity(existing, self.cfg_hash, self.code):
            log.info("record in %s is complete for this config and code version: skipped", self.run_dir)
            return existing if self.world.is_main else None
        self.prepare()
        if existing is not None and self.world.is_main:  # nothing moves before every check has passed
            log.warning("record in %s has another config or code version: moved to %s", self.run_dir, move_aside(self.run_dir))
        t0 = time.perf_counter()
        self.load_models()
        if self.oracle is not None:
            self.evaluate(self.oracle, stages.ORACLE)
        self.evaluate(self.target, stages.TARGET)
        if self.inject and self.world.is_main and (warning := underfit_target(self.rows)):
            log.warning(warning)
        outcome = self.unlearn()
        self.rows += unlearn_rows(stages.UNLEARNED, outcome.result, outcome.reached, len(self.bench.split("forget")))
        if outcome.result.diverged:
            log.error("unlearning diverged (non-finite loss, weights or scores) at step %d: the unlearned stage is not evaluated",
                      outcome.result.steps)
        else:
            self.evaluate(outcome.model, stages.UNLEARNED)
            self.evaluate_hook_controls(outcome.model)
        self.timings["total"] = round(time.perf_counter() - t0, 3)
        record = self.write(outcome) if self.world.is_main else None
        distributed.barrier()  # the next run of a sweep starts together on every rank
        return record

    def prepare(self) -> None:
        """Cheap setup that still can reject the config: threads, base-model source, tokenizer, sequence lengths."""
        if self.settings.threads:
            torch.set_num_threads(self.settings.threads)
        self.source = pretrained_source(self.model_spec, self.settings.cache_dir)  # a GGUF model is converted once (cached)
        try:
            self.tokenizer = load_model_tokenizer(self.model_spec, self.source)
            if self.source:  # a pretrained model: its shape comes from its config (cheap, no weights)
                local = Path(self.source).is_dir()
                config = AutoConfig.from_pretrained(self.source, local_files_only=local,
                                                    revision=None if local else self.model_spec.get("revision"),
                                                    trust_remote_code=bool(self.model_spec.get("trust_remote_code", False)))
                self.shape = ModelShape(int(config.hidden_size), int(config.num_hidden_layers))
                self.max_positions = getattr(config, "max_position_embeddings", None)
                self.check_plan(self.shape)
        except ValueError as e:  # an unknown model type, or code the checkpoint ships that may not run
            raise ModelConfigError(f"model.pretrained={self.source!r}: {' '.join(str(e).split())[:300]} "
                                   "(model.trust_remote_code=true runs code shipped with the checkpoint)") from None
        except OSError as e:
            name = self.model_spec.get("tokenizer") or self.source
            key = "model.tokenizer" if self.model_spec.get("tokenizer") else "model.pretrained"
            offline = " with HF_HUB_OFFLINE=1" if huggingface_hub.constants.HF_HUB_OFFLINE else ""
            raise ModelConfigError(f"{key}={name!r} could not be loaded{offline}: not a local folder and not in the hub "
                                   f"cache ({type(e).__name__}); set {key} to a local folder saved with save_pretrained, "
                                   "or download it on a connected machine first") from None
        arch = self.model_spec.get("arch") or {}
        if not self.model_spec.get("pretrained") and arch.get("max_position_embeddings"):
            # A model built from `arch` has a known position range: check every sequence against it now.
            check_lengths(self.tokenizer, self.bench, int(arch["max_position_embeddings"]))
        if self.shape is not None:
            check_suites_against_model(self.selected_settings, self.bench, self.tokenizer, self.shape, self.max_positions)
        self.device = distributed.rank_device(resolve_device(self.model_spec.get("device", "auto")))
        self.forget_filter: dict[str, Any] | None = None
        if not self.inject:  # the forget split is what the base model knows: known before any record moves
            self.base = build_base_model(self.model_spec, self.tokenizer, self.settings.seed, self.source).to(self.device).eval()
            self.bench, self.forget_filter = known_forget(self.base, self.tokenizer, self.bench)
            log.info("model.inject=null: the base model knows %d of %d forget items (%s)", self.forget_filter["kept"],
                     self.forget_filter["forget_items"], RULE)
            self.suite_settings = validate_settings([*self.suites, *self.request_suites], self.settings.suite_settings, self.bench)

    def load_models(self) -> None:
        start = time.perf_counter()
        s = self.settings

        def obtain() -> None:
            models = obtain_models(self.model_spec, self.bench, self.tokenizer, s.cache_dir, s.seed, self.source)
            self.target, self.target_info = models[stages.TARGET]
            self.oracle, self.oracle_info = models[stages.ORACLE]

        if self.inject:
            # Several processes: rank 0 trains what the cache lacks, the others then read the cache.
            if self.world.is_main:
                obtain()
            distributed.barrier()
            if not self.world.is_main:
                obtain()
        else:  # the base model as loaded (prepare); no oracle exists for what it learned in pretraining
            self.target = self.base
            self.target_info = {"key": digest({"model": self.model_spec, "base": self.source}, 20), "path": self.source,
                                "reused": False, "inject": None}
            self.oracle, self.oracle_info = None, None
        self.clock("models", start)
        oracle_key = self.oracle_info["key"] if self.oracle_info else None
        self.ctx = SuiteContext(bench=self.bench, tokenizer=self.tokenizer, oracle=self.oracle, target=self.target,
                                settings=self.suite_settings, cache_dir=str(s.cache_dir), oracle_key=oracle_key)
        model_keys = {stages.TARGET: self.target_info["key"], **({stages.ORACLE: oracle_key} if oracle_key else {})}
        self.identity = (stage_identity(model_keys,
                                        self.bench, list(self.suites), self.suite_settings,
                                        runtime_identity(self.device))
                         if s.reuse_stages else None)

    def evaluate(self, model: torch.nn.Module, stage: str) -> None:
        if not self.world.is_main:  # rank 0 evaluates (and writes the stage cache) for the whole run
            return
        start = time.perf_counter()

        out, reused = cached_stage(stage, self.identity, self.settings.cache_dir, self.ctx,
                                   lambda: evaluate_suites(self.suites, model, stage, self.ctx))
        self.rows.extend(out.rows)
        self.examples.extend(out.examples)
        if reused:
            self.reused_stages.append(stage)
        self.clock(stage, start)

    def evaluate_hook_controls(self, unlearned: torch.nn.Module) -> None:
        """For a method that keeps its edit in hooks: the oracle with those hooks attached and the unlearned
        model with them removed, each a copy evaluated like any stage (``bench.stages.HOOK_STAGES``)."""
        hooks = self.method.hooks(unlearned)
        if hooks is None:
            return
        oracle = copy.deepcopy(self.oracle)
        hooks.attach(oracle)
        self.evaluate(oracle, stages.ORACLE_WITH_HOOKS)
        del oracle
        bare = copy.deepcopy(unlearned)
        hooks.remove(bare)
        self.evaluate(bare, stages.UNLEARNED_HOOKS_REMOVED)

    def unlearn(self) -> Outcome:
        forget, retain = self.bench.split("forget"), self.bench.split("retain")
        model = copy.deepcopy(self.target)
        if self.n_requests == 1:
            start = time.perf_counter()
            outcome = self.unlearn_request(self.method, model, forget, retain)
            self.clock("unlearn", start)
            return outcome
        return self.unlearn_continual(model, split_requests(self.bench, self.n_requests), retain)

    def unlearn_request(self, method: Method, model: torch.nn.Module, forget: list[QAItem],
                        retain: list[QAItem]) -> Outcome:
        """One unlearning call on ``forget``; the stopping rule watches ``forget`` (and records retain em)."""
        target = self.stop.target_for(self.oracle_mcq(forget) if self.stop.rule == "oracle" else None)
        trace: list[dict[str, Any]] = []
        bench, tok = self.bench, self.tokenizer

        u = self.settings.unlearn
        check = StopCheck(bench, tok, forget, retain, u.check_retain, target=target, trace_every=u.trace_every,
                          max_steps=u.max_steps)

        verdicts: list[bool] = []

        def should_stop(model, step: int) -> bool:
            verdict = check.check(model, step)
            trace.append({"step": step, **verdict.entry})
            verdicts.append(verdict.stop)
            return verdict.stop

        uctx = UnlearnContext(seed=self.settings.seed, device=self.device, max_steps=u.max_steps, batch_size=u.batch_size,
                              warmup_steps=u.warmup_steps, check_every=u.check_every, grad_clip=u.grad_clip,
                              should_stop=should_stop if target is not None else None, requests=self.n_requests)
        torch.manual_seed(self.settings.seed)
        unlearned, result = method.unlearn(model, UnlearnData(bench=bench, tokenizer=tok, forget=forget, retain=retain), uctx)
        reached = None
        if target is not None:
            reached = bool(verdicts and verdicts[-1] and not result.diverged)
            if not result.diverged:
                check.finish(unlearned, trace)
        return Outcome(unlearned, result, trace, target, reached)

    def oracle_mcq(self, items: list[QAItem]) -> float:
        """The oracle's forget mcq_acc on ``items`` (the ``oracle`` stopping target)."""
        return float(mcq_correct(self.oracle, self.tokenizer, self.bench, items).mean())

    def unlearn_continual(self, model: torch.nn.Module, requests: list[list[QAItem]], retain: list[QAItem]) -> Outcome:
        """Continual unlearning: request i unlearns its people from request i−1's model.

        A fresh method instance per request (a method keeps its state on the model, as MRP's frozen
        directions do). After request i: ``unlearn`` rows and the evaluation of stage ``request/<i>``.
        A diverged request ends the sequence."""
        total = TrainResult(steps=0)
        trace: list[dict[str, Any]] = []
        log_: list[dict[str, Any]] = []
        reached_all: bool | None = None if self.stop.rule == "fixed" else True
        done: list[list[QAItem]] = []
        for i, forget in enumerate(requests, 1):
            start = time.perf_counter()
            out = self.unlearn_request(build_method(self.settings.method), model, forget, retain)
            model = out.model
            self.clock(f"unlearn/request{i}", start)
            done.append(forget)
            total.steps += out.result.steps
            total.losses += out.result.losses
            total.wall_s += out.result.wall_s
            total.diverged |= out.result.diverged
            total.stopped_by_check = out.result.stopped_by_check
            trace += [{"request": i, **t} for t in out.trace]
            if reached_all is not None:
                reached_all = reached_all and bool(out.reached)
            stage = stages.request_stage(i)
            self.rows.extend(unlearn_rows(stage, out.result, out.reached, len(forget)))
            log_.append({"request": i, "groups": list(dict.fromkeys(it.group for it in forget)), "n_items": len(forget),
                         "steps": out.result.steps, "wall_s": round(out.result.wall_s, 3), "diverged": out.result.diverged,
                         "stop_target": out.target, "reached_target": out.reached})
            if out.result.diverged:
                log.error("request %d diverged at step %d: later requests are not run", i, out.result.steps)
                break
            if self.world.is_main:  # evaluation is rank 0's (bench.distributed)
                start = time.perf_counter()
                out = evaluate_request(model, stage, done, self.request_suites, self.ctx)
                self.rows.extend(out.rows)
                self.examples.extend(out.examples)
                self.clock(stage, start)
        targets = [r["stop_target"] for r in log_]
        return Outcome(model, total, trace, targets[0] if len(set(targets)) == 1 else None, reached_all, log_)

    def write(self, outcome: Outcome) -> dict[str, Any]:
        result = outcome.result
        record = {
            "status": "diverged" if result.diverged else "complete",
            "method": self.method_name,
            "config_hash": self.cfg_hash,
            "code_version": self.code,
            "config": self.resolved,
            "tuning": self.tuning,
            "provenance": {**provenance(self.settings.seed, str(self.device)), "wall_s": self.timings,
                           "processes": self.world.size,
                           "models": {stages.TARGET: self.target_info,
                                      **({stages.ORACLE: self.oracle_info} if self.oracle_info else {})},
                           "reused_stages": self.reused_stages},
            "unlearn": {"steps": result.steps, "diverged": result.diverged, "stop_rule": self.stop.rule,
                        "stop_target": outcome.target, "reached_target": outcome.reached, "final_loss": result.final_loss,
                        "stop_trace": outcome.trace, "losses": result.losses,
                        **({"requests": outcome.requests} if outcome.requests is not None else {})},
            **({"forget_filter": self.forget_filter} if self.forget_filter else {}),
            "rows": [r.as_dict() for r in self.rows],
        }
        path = write_record(self.run_dir, record, self.examples)
        log.info("record written: %s", path)
        return record

    def clock(self, name: str, start: float) -> None:
        self.timings[name] = round(time.perf_counter() - start, 3)
        log.info("stage %-10s done in %6.1fs", name, self.timings[name])


def run(cfg: DictConfig, run_dir: str | Path, method_name: str, overridden: Sequence[str] = ()) -> dict[str, Any]:
    """Execute one run into ``run_dir`` and return its record (or the existing one if complete)."""
    return Run(cfg, run_dir, method_name, overridden).execute()


def method_overrides(task_overrides: Sequence[str]) -> list[str]:
    """The method keys a command line sets (``method.lr=3e-4`` -> ``lr``)."""
    keys = [o.split("=", 1)[0].lstrip("+~") for o in task_overrides]
    return [k[len("method."):] for k in keys if k.startswith("method.")]


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    hc = HydraConfig.get()
    try:
        record = run(cfg, hc.runtime.output_dir, hc.runtime.choices.get("method", "?"), method_overrides(hc.overrides.task))
    except UserError as err:
        exit_with(err, "bench.run")
    if record is None:  # a rank other than 0 of a multi-process run: rank 0 prints
        return
    from bench.report import summary_table

    print(summary_table(record))


CONF = Path(__file__).resolve().parent.parent / "conf"


def check_group_choices(args: list[str]) -> None:
    """Config-group choices on the command line (``attack=[harmful,rtt]``, ``method=ga,npo``) must name a
    file of ``conf/<group>/``: Hydra says so for a single choice but not for a list (attack)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        overrides = OverridesParser.create().parse_overrides([a for a in args if "=" in a and not a.startswith("-")])
    except HydraException:
        return  # Hydra reports its own syntax errors
    from hydra.core.override_parser.types import Glob

    for o in overrides:
        group = o.key_or_group
        folder = CONF / group
        if group.startswith("hydra") or not folder.is_dir() or isinstance(o.value(), Glob):
            continue  # a glob() names only files that exist
        value = o.value()
        names = (list(o.sweep_string_iterator()) if o.is_sweep_override()
                 else [str(v) for v in value] if isinstance(value, list) else [] if value is None else [str(value)])
        options = sorted(p.stem for p in folder.glob("*.yaml"))
        for name in names:
            if name not in options:
                raise ConfigError(f"unknown {group} {name!r}: {did_you_mean(name, options)}available in conf/{group}/: {options}")
    check_override_keys(overrides)


_ABSENT = object()


def check_override_keys(overrides: list) -> None:
    """A plain ``key=value`` must name a key of the config its job composes (Hydra's own message for a typo
    is several lines and suggests ``+key``, which would add the typo). Each choice of a config group on the
    command line (``method=ga,graddiff``) is composed in turn, the other groups at their first choice."""
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.types import Glob
    from hydra.errors import HydraException
    from omegaconf import DictConfig

    def is_group(o) -> bool:
        return (CONF / o.key_or_group).is_dir()

    def choices(o) -> list[str]:
        if isinstance(o.value(), Glob):  # its first match (glob needs Hydra's config loader to expand)
            return sorted(p.stem for p in (CONF / o.key_or_group).glob("*.yaml") if o.value().filter([p.stem]))[:1] or ["?"]
        if o.is_sweep_override():
            return list(o.sweep_string_iterator())
        value = o.value()
        return [str(value)] if not isinstance(value, list) else [o.get_value_element_as_str()]

    plain = [o for o in overrides if not (o.is_add() or o.is_delete() or o.is_force_add() or is_group(o)
                                          or o.key_or_group.startswith("hydra"))]
    if not plain:
        return
    # Group choices and additions: what the config is composed from (hydra.* settings shape the launch, not the job).
    fixed = [o for o in overrides if o not in plain and (is_group(o) or not o.key_or_group.startswith("hydra"))]

    def line(o, choice: str) -> str:
        return f"{'+' if o.is_add() else ''}{o.key_or_group}={choice}"

    variants = [[line(o, choices(o)[0]) for o in fixed]]
    for i, o in enumerate(fixed):
        if is_group(o):
            variants += [variants[0][:i] + [line(o, c)] + variants[0][i + 1:] for c in choices(o)[1:]]
    for variant in variants:
        try:
            with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
                cfg = compose("config", overrides=variant)
        except HydraException:
            return  # Hydra reports what is wrong with the groups itself
        for o in plain:
            key = o.key_or_group
            parent, _, leaf = key.rpartition(".")
            node = OmegaConf.select(cfg, parent, default=None) if parent else cfg
            # A key's existence, not its value: select() says "absent" for a mandatory `???` (benchmark.path).
            if (isinstance(node, DictConfig) and leaf in node.keys()) or OmegaConf.select(cfg, key, default=_ABSENT) is not _ABSENT:
                continue
            allowed = sorted(node.keys()) if isinstance(node, DictConfig) else []
            groups = [v for f, v in zip(fixed, variant) if is_group(f)]
            under = f" with {' '.join(groups)}" if groups else ""
            raise ConfigError(f"unknown config key {key!r}{under}: {did_you_mean(leaf, [str(a) for a in allowed])}"
                              f"keys of {parent or 'the config'}: {allowed}")


MULTIRUN_FLAGS = ("-m", "--multirun")
# Launchers whose jobs run on this machine: their jobs are checked here before launch. A cluster launcher's jobs
# run elsewhere (a GPU node's device and dtype are not this machine's): they check themselves as they start.
LOCAL_LAUNCHERS = ("hydra._internal.core_plugins.basic_launcher.BasicLauncher",
                   "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher")
BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


def check_jobs(args: list[str]) -> int:
    """Every job of the command checked before Hydra starts: each job's config composed and its ``Run`` built
    (the constructor holds every check a run makes before compute; nothing is computed and no run or sweep folder is
    written). A bad value in a sweep's 7th job stops the sweep before the first job computes, and a bad single run
    leaves no run folder. The jobs are Hydra's basic-sweep product of ``hydra.sweeper.params`` and the command line,
    as Hydra expands it; a tune sweep (``hydra/sweeper=tune``) checks its own plan, and a cluster launcher's jobs
    check themselves where they run. Returns the number of jobs checked (0: not checked, e.g. under ``--cfg`` or
    ``--help``, or a case left to Hydra's own message). Checks that need model files (a tokenizer, a pretrained
    config) run in each job."""
    from hydra import compose, initialize_config_dir
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from omegaconf import open_dict

    from bench.sweep_report import check_plan_half_width

    if any(a.startswith("-") and a not in MULTIRUN_FLAGS for a in args):
        return 0  # --cfg, --help, -cn ...: Hydra's own modes
    multirun = any(a in MULTIRUN_FLAGS for a in args)
    given = [a for a in args if a not in MULTIRUN_FLAGS]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        try:
            parser = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())  # glob() needs it
            line = parser.parse_overrides(given)
            if not multirun and any(o.is_sweep_override() for o in line):
                return 0  # Hydra says "add --multirun"
            jobs = [given]
            if multirun:
                # As Hydra: the sweep's own config is composed without the sweep overrides (+experiment=a,b sweeps
                # over presets; each preset's hydra.sweeper.params do not multiply the others').
                sweep_cfg = compose("config", overrides=[o.input_line for o in line if not o.is_sweep_override()],
                                    return_hydra_config=True)
                check_plan_half_width(OmegaConf.select(sweep_cfg, "hydra.callbacks.report.plan_half_width"))
                if (OmegaConf.select(sweep_cfg, "hydra.sweeper._target_") != BASIC_SWEEPER
                        or OmegaConf.select(sweep_cfg, "hydra.launcher._target_") not in LOCAL_LAUNCHERS):
                    return 0
                params = [f"{k}={v}" for k, v in (OmegaConf.select(sweep_cfg, "hydra.sweeper.params") or {}).items()]
                jobs = [job for batch in BasicSweeper.split_arguments(parser.parse_overrides([*params, *given]), None)
                        for job in batch]
            composed = []
            for i, job in enumerate(jobs):
                cfg = compose("config", overrides=job, return_hydra_config=True)
                with open_dict(cfg):
                    cfg.hydra.job.num = i
                composed.append(cfg)
        except HydraException:
            return 0  # Hydra reports what is wrong with the overrides or the composition itself
        saved = HydraConfig.instance().cfg
        try:
            check_composed(jobs, composed)
        finally:
            HydraConfig.instance().cfg = saved
    return len(jobs)


def check_composed(jobs: list[list[str]], composed: list[DictConfig]) -> None:
    """``Run`` of each composed job (``check_jobs``); a UserError names the job when there are several."""
    for i, (job, cfg) in enumerate(zip(jobs, composed)):
        HydraConfig.instance().set_config(cfg)  # ${hydra:...} in a job's keys resolves as in the job
        task = OmegaConf.to_container(cfg, resolve=False)
        task.pop("hydra", None)
        logging.disable(logging.WARNING)  # the job logs its own warnings when it runs
        try:
            Run(OmegaConf.create(task), "(checked before launch)", str(cfg.hydra.runtime.choices.get("method", "?")),
                method_overrides(job))
        except UserError as err:
            if len(jobs) == 1:
                raise
            shown = " ".join(o for o in job if not o.lstrip("+~").startswith("hydra"))
            message = f"sweep job #{i} ({shown}): {err}"
            try:
                named = type(err)(message)
            except TypeError:  # a subclass with another constructor
                named = UserError(message)
            raise named from None
        finally:
            logging.disable(logging.NOTSET)


if __name__ == "__main__":
    try:
        check_group_choices(sys.argv[1:])
        check_jobs(sys.argv[1:])
    except UserError as err:
        exit_with(err, "bench.run")
    if distributed.world().rank > 0:  # rank 0 alone writes the run folder (Hydra's config copy and log included)
        sys.argv += [o for o in ("hydra.output_subdir=null", "hydra/job_logging=stdout")
                     if not any(a.startswith(o.split("=")[0] + "=") for a in sys.argv)]
    main()
