"""Evaluation suites: each module here is a suite, found by name (no registration list).

A suite module defines ``evaluate(model, stage, ctx) -> list[Row]``. Suites never train (the
relearn suite attacks a copy). They may use ``ctx.reference(...)``, the oracle's scores, which
are computed once per run and shared by every stage.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from bench.benchmark import Benchmark
from bench.errors import ConfigError


@dataclass
class Row:
    stage: str
    suite: str
    split: str
    metric: str
    value: float
    n: int

    def as_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "suite": self.suite, "split": self.split, "metric": self.metric,
                "value": float(self.value), "n": int(self.n)}


@dataclass
class SuiteContext:
    """What suites share within one run: data, the oracle, settings, and a per-run memo.

    target: the model before unlearning (the diagnostics suite compares every stage with it);
    None where a caller has none. cache_dir and oracle_key (the oracle's model-cache key) let a
    suite keep oracle-side results on disk across runs (the relearn control); None disables it.
    """

    bench: Benchmark
    tokenizer: Any
    oracle: torch.nn.Module
    settings: dict[str, Any] = field(default_factory=dict)
    examples: list[dict[str, Any]] = field(default_factory=list)
    target: torch.nn.Module | None = None
    cache_dir: str | None = None
    oracle_key: str | None = None
    _memo: dict[Any, Any] = field(default_factory=dict)

    def reference(self, key: Any, compute: Callable[[], Any]) -> Any:
        """Oracle-side values, computed on first use and reused by later stages of this run."""
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    def setting(self, suite: str, name: str, default: Any) -> Any:
        return (self.settings.get(suite) or {}).get(name, default)


def available_suites() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def load_suite(name: str):
    """The suite module ``bench.suites.<name>``; an unknown name lists the available ones."""
    if name not in available_suites():
        raise ConfigError(f"unknown suite {name!r}; available suites: {available_suites()}. "
                         "Select them with suites=[knowledge,privacy].")
    return importlib.import_module(f"{__name__}.{name}")
