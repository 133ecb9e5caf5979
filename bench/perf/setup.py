"""What every benchmark script in bench/perf/ starts from: run configs per method, the benchmark,
the model spec, tokenizer and device, built the way ``bench.run`` builds them (same checks)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from bench.benchmark import Benchmark
from bench.models import pretrained_source, resolve_device
from bench.method import Method
from bench.run import build_benchmark, build_method, resolve
from bench.tokenizer import load_model_tokenizer

CONF = Path(__file__).resolve().parents[2] / "conf"


@dataclass
class PerfSetup:
    cfgs: dict[str, DictConfig]  # method name -> its composed run config
    seed: int
    cache_dir: str
    bench: Benchmark
    spec: dict[str, Any]
    source: str | None
    tokenizer: Any
    device: torch.device

    def method(self, name: str) -> Method:
        """A fresh, checked instance of the method ``name``."""
        return build_method(resolve(self.cfgs[name].method))


def all_methods(first: str = "graddiff") -> list[str]:
    """``first``, then every other method of conf/method/."""
    return [first, *sorted(p.stem for p in (CONF / "method").glob("*.yaml") if p.stem != first)]


def method_overrides(spec: str) -> list[str]:
    """``name`` or ``name:key=value,key=value`` (a variant: ``ssiuu:penalty_grad=exact``) as Hydra overrides."""
    name, _, keys = spec.partition(":")
    return [f"method={name}", *(f"method.{kv}" for kv in keys.split(",") if kv)]


def load(methods: list[str], overrides: list[str], threads: int | None = None) -> PerfSetup:
    """Run configs per method spec (see ``method_overrides``), the benchmark, model spec, tokenizer, device."""
    if threads:
        torch.set_num_threads(threads)
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfgs = {m: compose("config", overrides=[*method_overrides(m), *overrides]) for m in methods}
    cfg = cfgs[methods[0]]
    spec = resolve(cfg.model)
    source = pretrained_source(spec, cfg.cache_dir)
    return PerfSetup(cfgs, int(cfg.seed), str(cfg.cache_dir), build_benchmark(resolve(cfg.benchmark)), spec, source,
                     load_model_tokenizer(spec, source), resolve_device(spec.get("device", "auto")))
