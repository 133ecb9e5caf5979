"""Evaluation suites: each module here is a suite, found by name (no registration list).

The suite contract. A suite module ``bench/suites/<name>.py`` defines

- ``Settings``: a frozen dataclass, the suite's ``suite_settings.<name>`` block; its field
  defaults are the only defaults (``bench.settings.parse_settings`` validates raw config into it);
- ``check(settings, bench) -> None``: checks that need the benchmark, raising a ``UserError``
  before any compute;
- optionally ``check_model(settings, bench, tokenizer, shape, max_positions) -> None``: checks that
  need the tokenizer or the model's shape (``bench.method.ModelShape``; ``max_positions`` the
  model's position range, None if unbounded), called once both are known and still before any
  model is trained or loaded (``Run.prepare``);
- ``evaluate(model, stage, ctx) -> SuiteOutput``: the stage's rows and per-item examples.

Suites never train (the relearn suite attacks a copy). They read their settings with
``ctx.settings_of(SUITE)`` and may use ``ctx.reference(...)``, oracle-side values computed once per
run and shared by every stage. The harness calls ``validate_settings`` before compute and
``evaluate_suites`` per stage.
"""

from __future__ import annotations

import importlib
import pkgutil
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch

from bench.benchmark import Benchmark
from bench.errors import ConfigError, UserError
from bench.settings import did_you_mean, parse_settings, unknown_key_error


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
class SuiteOutput:
    """What evaluating suites on a stage produced: record rows and examples.jsonl entries."""

    rows: list[Row] = field(default_factory=list)
    examples: list[dict[str, Any]] = field(default_factory=list)

    def extend(self, other: "SuiteOutput") -> "SuiteOutput":
        self.rows += other.rows
        self.examples += other.examples
        return self


@dataclass
class SuiteContext:
    """What suites share within one run: data, the oracle, typed settings, and the references.

    settings: suite name -> its ``Settings`` (from ``validate_settings``); a raw mapping given here
    is parsed (not checked against the benchmark), a suite without an entry gets its defaults.
    target: the model before unlearning (the diagnostics suite compares every stage with it);
    None where a caller has none. cache_dir and oracle_key (the oracle's model-cache key) let a
    suite keep oracle-side results on disk across runs (the relearn control); None disables it.
    references: oracle-side values by key (``reference``); ``capture_references`` and
    ``restore_references`` are what the stage cache saves and restores.
    """

    bench: Benchmark
    tokenizer: Any
    oracle: torch.nn.Module | None  # None with model.inject: null (a pretrained target: nothing was withheld)
    settings: dict[str, Any] = field(default_factory=dict)
    target: torch.nn.Module | None = None
    cache_dir: str | None = None
    oracle_key: str | None = None
    references: dict[Any, Any] = field(default_factory=dict)
    _capturing: list[set] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        self.settings = {name: parse_suite_settings(name, raw) for name, raw in (self.settings or {}).items()}

    def settings_of(self, suite: str) -> Any:
        """The suite's typed settings (its defaults if none were given)."""
        if suite not in self.settings:
            self.settings[suite] = parse_suite_settings(suite, None)
        return self.settings[suite]

    def reference(self, key: Any, compute: Callable[[], Any]) -> Any:
        """Oracle-side values, computed on first use and reused by later stages of this run."""
        if key not in self.references:
            self.references[key] = compute()
            for keys in self._capturing:
                keys.add(key)
        return self.references[key]

    @contextmanager
    def capture_references(self) -> Iterator[dict[Any, Any]]:
        """Yields a dict that, when the block ends, holds the references first computed inside it."""
        keys: set = set()
        captured: dict[Any, Any] = {}
        self._capturing.append(keys)
        try:
            yield captured
        finally:
            self._capturing.remove(keys)
            captured.update({k: self.references[k] for k in keys})

    def restore_references(self, saved: Mapping[Any, Any]) -> None:
        """References captured by an earlier, identical stage (the stage cache)."""
        self.references.update(saved)


def check_control_stages(suite: str, stages: Sequence[str], verb: str, example: str = "[target,unlearned]",
                         error: type[UserError] = ConfigError) -> None:
    """A suite that always runs the oracle as its control takes the other stages in ``stages``:
    naming the oracle there is an error (one line, before compute)."""
    from bench.stages import ORACLE

    if ORACLE in stages:
        raise error(f"suite_settings.{suite}.stages must name stages other than 'oracle' (the oracle is always "
                    f"{verb} as control), got {list(stages)}; e.g. {example}")


def available_suites() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def suite_module(name: str) -> ModuleType:
    """The suite module ``bench.suites.<name>``; an unknown name lists the available ones."""
    available = available_suites()
    if name not in available:
        raise ConfigError(f"suites: unknown suite {name!r}; {did_you_mean(name, available)}available suites: "
                          f"{available}. Select them with suites=[knowledge,privacy].")
    return importlib.import_module(f"{__name__}.{name}")


def parse_suite_settings(name: str, raw: Mapping[str, Any] | None) -> Any:
    """``suite_settings.<name>`` as the suite's typed ``Settings`` (no benchmark checks)."""
    available = available_suites()
    if name not in available:
        raise unknown_key_error("suite_settings", name, available, kind="suite")
    return parse_settings(suite_module(name).Settings, raw, f"suite_settings.{name}")


def validate_settings(suites: Sequence[str], raw: Mapping[str, Any] | None, bench: Benchmark) -> dict[str, Any]:
    """Check the ``suites`` list and the whole ``suite_settings`` block before any compute.

    Every block in ``raw`` is parsed (unknown suite names and keys fail with the closest names);
    the selected ``suites`` are also checked against the benchmark. Returns suite name -> typed
    ``Settings`` for every suite in ``raw`` or ``suites`` (defaults where ``raw`` has no block).
    """
    for name in suites:
        suite_module(name)
    raw = dict(raw or {})
    settings = {name: parse_suite_settings(name, raw.get(name)) for name in dict.fromkeys([*raw, *suites])}
    for name in dict.fromkeys(suites):
        suite_module(name).check(settings[name], bench)
    return settings


def check_suites_against_model(settings: Mapping[str, Any], bench: Benchmark, tokenizer: Any, shape: Any,
                               max_positions: int | None) -> None:
    """Each selected suite's optional ``check_model``; ``settings``: suite name -> typed ``Settings``."""
    for name, s in settings.items():
        hook = getattr(suite_module(name), "check_model", None)
        if hook is not None:
            hook(s, bench, tokenizer, shape, max_positions)


def evaluate_suites(suites: Sequence[str], model: torch.nn.Module, stage: str, ctx: SuiteContext) -> SuiteOutput:
    """Evaluate ``suites`` in order on ``model`` as ``stage``; their rows and examples concatenated."""
    out = SuiteOutput()
    for name in suites:
        result = suite_module(name).evaluate(model, stage, ctx)
        if not isinstance(result, SuiteOutput):
            raise TypeError(f"suite {name!r}: evaluate must return a SuiteOutput, got {type(result).__name__}")
        out.extend(result)
    return out


