"""Tuning as a sweep: each method's search space, the selection rule, and the tuned-settings file.

A method YAML declares its search space in a ``tune:`` block (hyperparameter -> grid):

    tune:
      lr: [3.0e-5, 1.0e-4, 3.0e-4]
      beta: [0.05, 0.1, 0.5]

``python -m bench.run -m +experiment=tune`` (the ``tune`` sweeper, ``hydra_plugins/unlearn_bench_tune``)
runs the cross product of each method's grid on the *tuning seeds* (``hydra.sweeper.seeds``, default
1000-1002: worlds and models disjoint from the reported seeds 0-4) through the configured launcher,
then ``select`` picks one setting per method:

- ``utility`` (default): among the settings that reached the forget target on every tuning seed,
  the highest mean model utility; ties -> fewer mean steps -> lower lr.
- ``lowest_lr`` (the Ssiuu paper's protocol): the lowest lr among those settings; ties -> highest
  utility -> fewer steps.

"Reached" means within ``reach_within`` x ``unlearn.max_steps`` steps (``hydra.sweeper.reach_within``, default
0.5): a pick that needs the whole step cap on the tuning seeds misses it on about half the reported seeds (the
winner's curse of a cap-edge pick), so the rule asks for headroom; 1.0 counts any run that stops at the target.

A method none of whose settings reached the target gets a row "no setting reached the target" and
no values: a run that loads the file for it stops before compute (never a silent pick). The sweep
writes ``tuned.yaml`` (chosen values, tuning seeds, rule, the config they were tuned under) and
``tune_table.{md,csv}`` (every setting searched) into the sweep folder, and the tuned file also to
``hydra.sweeper.out``; ``tuned=<file>`` loads it into a run (``apply_tuned``), which refuses a seed
used for tuning and a config the values were not tuned under. ``python -m bench.tune SWEEP_DIR
[--rule lowest_lr] [--reach-within 1]`` redoes the selection from a finished sweep's records.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from bench.disk_cache import atomic_write, digest
from bench.errors import ConfigError, UserError, exit_with
from bench.record import CLOSEST_MARK, ROOT, TUNED_CLOSEST
from bench.settings import did_you_mean, is_int, is_number, parse_settings

log = logging.getLogger(__name__)

TUNE_KEY = "tune"          # the search-space block inside a method's config
RULES = ("utility", "lowest_lr")
PLAN = "tune_plan.yaml"    # written into the sweep folder before any job runs
TUNED = "tuned.yaml"
TABLE = "tune_table"
NO_SETTING = "no setting reached the target"
CLOSEST = TUNED_CLOSEST
# Keys of the run config the tuned values depend on (beyond the method): a run loading the file must match them.
CONTEXT_KEYS = ("benchmark", "model", "unlearn", "continual")
# What full stopping checks record, not when a run stops (bench.stopping): a tuned file holds for any value.
TRACE_ONLY_KEYS = {"unlearn": ("check_retain", "trace_every")}


class TuneError(ConfigError):
    """A bad ``tune:`` block, tuning setting or tuned file; the message names the key or file and the fix."""


# ---- the search space -------------------------------------------------------------------------

def split_tune(block: Any) -> tuple[Any, Any]:
    """(the method block without its ``tune:`` key, the raw ``tune:`` value or None)."""
    if not isinstance(block, Mapping) or TUNE_KEY not in block:
        return block, None
    rest = {k: v for k, v in block.items() if k != TUNE_KEY}
    return rest, block[TUNE_KEY]


def hyperparameters(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if f.init]


def parse_space(cls: type, block: Mapping[str, Any], raw: Any, where: str = "method.tune") -> dict[str, tuple]:
    """The checked search space of method class ``cls`` (``block``: its config without ``tune``).

    Every key must be a hyperparameter of the method (did-you-mean), every grid a non-empty list
    without repeats, and every grid point a valid method config (each value typed and range-checked
    by the method's own parser, so a bad value fails here, before compute, naming ``method.tune.<key>``)."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise TuneError(f"{where} must map hyperparameters to lists of values, got {raw!r}; "
                        f"e.g. {where}.lr=[1e-4,3e-4]")
    names = hyperparameters(cls)
    space: dict[str, tuple] = {}
    for key, values in raw.items():
        if key not in names:
            raise TuneError(f"{where}.{key} names no hyperparameter of {cls.__name__}: {did_you_mean(str(key), names)}"
                            f"its hyperparameters: {names}")
        if not isinstance(values, (list, tuple)):
            raise TuneError(f"{where}.{key} must be a list of values to try, got {values!r}; e.g. {where}.{key}=[{values}]")
        if not values:
            raise TuneError(f"{where}.{key} is an empty grid: nothing to try; list at least one value, "
                            f"e.g. {where}.{key}=[{block.get(key)}]")
        shown = [json.dumps(v, sort_keys=True) for v in values]
        if len(set(shown)) != len(shown):
            raise TuneError(f"{where}.{key} lists a value twice: {list(values)}; list each value once")
        space[str(key)] = tuple(values)
    for point in grid(space):
        try:
            parse_settings(cls, {**block, **point}, where, ignore=("_target_",))
        except ConfigError as e:
            raise TuneError(f"{e} (grid point {point_label(point)})") from None
    return space


def grid(space: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Every combination of the space's values, in declaration order (the first key varies slowest)."""
    keys = list(space)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(space[k] for k in keys))]


def override_value(value: Any) -> str:
    """``value`` in Hydra's override syntax (``method.lr=1e-05``, ``method.layers=[0,1]``)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(override_value(v) for v in value) + "]"
    if isinstance(value, str):
        return value if value.replace("_", "").replace("-", "").replace(".", "").isalnum() else json.dumps(value)
    raise TuneError(f"cannot write {value!r} as a command-line value; tune scalars or lists")


def point_label(point: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={override_value(v)}" for k, v in point.items()) or "(defaults)"


def check_seeds(seeds: Any, where: str = "hydra.sweeper.seeds") -> list[int]:
    if not isinstance(seeds, (list, tuple)) or not seeds:
        raise TuneError(f"{where} must be a non-empty list of seeds, got {seeds!r}; e.g. {where}=[1000,1001,1002]")
    if not all(is_int(s) for s in seeds) or len(set(seeds)) != len(seeds):
        raise TuneError(f"{where} must list distinct integers, got {list(seeds)}; e.g. {where}=[1000,1001,1002]")
    return [int(s) for s in seeds]


def check_rule(rule: Any) -> str:
    if rule not in RULES:
        raise TuneError(f"hydra.sweeper.rule={rule!r} is not a selection rule: {did_you_mean(str(rule), list(RULES))}"
                        f"choose one of {list(RULES)}")
    return rule


def check_reach_within(value: Any, where: str = "hydra.sweeper.reach_within") -> float:
    """The share of the step cap within which a setting must reach the target to count (0 < value <= 1)."""
    if not is_number(value) or not 0 < value <= 1:
        raise TuneError(f"{where}={value!r} must be a share of unlearn.max_steps in (0, 1]; e.g. 0.5 (a pick "
                        "reaches the target within half the step cap) or 1.0 (anywhere below the cap)")
    return float(value)


def parse_metric(metric: Any) -> tuple[str, str, str]:
    parts = metric.split("/") if isinstance(metric, str) else []
    if len(parts) != 3 or not all(parts):
        raise TuneError(f"hydra.sweeper.utility={metric!r} must be suite/split/metric, "
                        "e.g. knowledge/retain/model_utility")
    return parts[0], parts[1], parts[2]


def check_run_config(resolved: Mapping[str, Any], utility: str) -> None:
    """A tuning run must have a stopping target (selection is among settings that reach it) and the suite
    that reports the utility metric."""
    if (resolved.get("unlearn") or {}).get("stop_at", "auto") is None:
        raise TuneError("unlearn.stop_at=null is fixed-step mode, but tuning selects among settings that reach the "
                        "forget target; set unlearn.stop_at=oracle (or auto, chance, a number)")
    suite = parse_metric(utility)[0]
    if suite not in (resolved.get("suites") or []):
        raise TuneError(f"hydra.sweeper.utility={utility!r} comes from suite {suite!r}, which suites="
                        f"{list(resolved.get('suites') or [])} does not run; add it, e.g. suites=[{suite}]")


# ---- the plan ---------------------------------------------------------------------------------

@dataclass
class Plan:
    """What a tuning sweep runs: per method its space, the tuning seeds, the rule; the job override lists."""

    methods: dict[str, dict[str, list]]
    seeds: list[int]
    rule: str
    utility: str
    fixed: list[str] = field(default_factory=list)   # overrides every job gets
    context: dict[str, Any] = field(default_factory=dict)  # the CONTEXT_KEYS blocks the jobs run under (seed-free)
    reach_within: float = 1.0  # share of unlearn.max_steps within which a run must reach the target to count

    @property
    def step_limit(self) -> float:
        """The last step (of each continual request) at which a run counts as reaching the target; inf for
        reach_within 1 (any stop at the target counts). A TuneError when a lower share has no cap to apply to."""
        if self.reach_within >= 1:
            return math.inf
        cap = (self.context.get("unlearn") or {}).get("max_steps")
        if not is_number(cap):
            raise TuneError(f"reach_within={self.reach_within:g} needs the step cap the sweep ran under, and its plan "
                            "has no unlearn.max_steps (a sweep older than the key); reselect with --reach-within 1")
        return self.reach_within * cap

    def jobs(self) -> list[list[str]]:
        out = []
        for method, space in self.methods.items():
            for point in grid(space):
                for seed in self.seeds:
                    out.append([*self.fixed, f"method={method}",
                                *(f"method.{k}={override_value(v)}" for k, v in point.items()), f"seed={seed}"])
        return out

    def as_dict(self) -> dict[str, Any]:
        return {"methods": self.methods, "seeds": self.seeds, "rule": self.rule, "utility": self.utility,
                "reach_within": self.reach_within, "fixed": self.fixed, "context": self.context}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str) -> "Plan":
        try:
            return cls(methods={m: {k: list(v) for k, v in s.items()} for m, s in d["methods"].items()},
                       seeds=check_seeds(d["seeds"]), rule=check_rule(d["rule"]), utility=str(d["utility"]),
                       fixed=list(d.get("fixed") or []), context=dict(d.get("context") or {}),
                       # plans written before the key existed counted any run that stopped at the target
                       reach_within=check_reach_within(d.get("reach_within", 1.0), f"{where}: reach_within"))
        except (KeyError, TypeError, AttributeError) as e:
            raise TuneError(f"{where}: not a tuning plan ({type(e).__name__}: {e}); rerun the tune sweep") from None


def context_of(resolved: Mapping[str, Any]) -> dict[str, Any]:
    """The blocks the tuned values depend on, without the seed-following keys (they differ by seed) and the
    keys that shape only the stop trace (``TRACE_ONLY_KEYS``: a run stops at the same step whatever they are)."""
    seed = resolved.get("seed")
    ctx = {}
    for key in CONTEXT_KEYS:
        block = _without_trace_keys(key, resolved.get(key))
        if isinstance(block, Mapping):
            block = {k: v for k, v in block.items() if not (k == "seed" and v == seed)}
        ctx[key] = block
    return ctx


def _without_trace_keys(name: str, block: Any) -> Any:
    """The config block ``name`` without its ``TRACE_ONLY_KEYS``."""
    if not isinstance(block, Mapping):
        return block
    return {k: v for k, v in block.items() if k not in TRACE_ONLY_KEYS.get(name, ())}


def write_plan(plan: Plan, sweep_dir: Path) -> None:
    atomic_write(Path(sweep_dir) / PLAN, yaml.safe_dump(plan.as_dict(), sort_keys=False))


def read_plan(sweep_dir: Path) -> Plan:
    path = Path(sweep_dir) / PLAN
    if not path.is_file():
        raise TuneError(f"{path}: no tuning plan here; give the folder of a `python -m bench.run -m +experiment=tune` sweep")
    try:
        return Plan.from_dict(yaml.safe_load(path.read_text()), str(path))
    except yaml.YAMLError as e:
        raise TuneError(f"{path}: corrupt tuning plan ({type(e).__name__}); rerun the tune sweep") from None


# ---- selection --------------------------------------------------------------------------------

@dataclass
class Setting:
    """One grid point of one method, over the tuning seeds."""

    method: str
    values: dict[str, Any]
    seeds: list[int] = field(default_factory=list)
    reached: list[bool] = field(default_factory=list)  # within the plan's step limit
    reached_late: list[bool] = field(default_factory=list)  # reached, but after the step limit
    diverged: list[bool] = field(default_factory=list)
    utility: list[float] = field(default_factory=list)
    steps: list[float] = field(default_factory=list)
    forget_mcq: list[float] = field(default_factory=list)

    def ok(self, n_seeds: int) -> bool:
        """Reached the target on every tuning seed (a missing or diverged run counts as not reached)."""
        return len(self.reached) == n_seeds and all(self.reached) and not any(self.diverged)

    @staticmethod
    def mean(xs: list[float]) -> float:
        xs = [x for x in xs if x is not None and not math.isnan(x)]
        return sum(xs) / len(xs) if xs else float("nan")


def _metric(rec: Mapping[str, Any], key: tuple[str, str, str]) -> float:
    for r in rec.get("rows", []):
        if r.get("stage") == "unlearned" and (r.get("suite"), r.get("split"), r.get("metric")) == key:
            v = r.get("value")
            return float("nan") if v is None else float(v)
    return float("nan")


def _same(a: Any, b: Any) -> bool:
    if is_number(a) and is_number(b):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=0.0)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def settings_from_records(plan: Plan, records: Sequence[Mapping[str, Any]]) -> list[Setting]:
    """Every planned grid point with the tuning-seed records that ran it (in plan order)."""
    utility = parse_metric(plan.utility)
    out: list[Setting] = []
    for method, space in plan.methods.items():
        for point in grid(space):
            s = Setting(method, point)
            for seed in plan.seeds:
                rec = next((r for r in records if r.get("method") == method and r["config"].get("seed") == seed
                            and all(_same(r["config"].get("method", {}).get(k), v) for k, v in point.items())), None)
                if rec is None:
                    continue
                u = rec.get("unlearn") or {}
                diverged = rec.get("status") == "diverged" or bool(u.get("diverged"))
                s.seeds.append(seed)
                stopped = bool(u.get("reached_target")) and not diverged
                late = stopped and _steps_past(u, plan.step_limit)
                s.reached.append(stopped and not late)
                s.reached_late.append(late)
                s.diverged.append(diverged)
                s.utility.append(_metric(rec, utility))
                s.steps.append(float(u.get("steps", float("nan"))))
                s.forget_mcq.append(_metric(rec, ("knowledge", "forget", "mcq_acc")))
            out.append(s)
    return out


def _steps_past(unlearn: Mapping[str, Any], limit: float) -> bool:
    """Whether a run that stopped at the target needed more than ``limit`` steps: of any request in a continual run
    (the cap is per request; ``unlearn.steps`` sums them), else of the run. An unknown count is not past it."""
    if math.isinf(limit):
        return False
    parts = [r.get("steps") for r in unlearn.get("requests") or []] or [unlearn.get("steps")]
    return any(is_number(n) and n > limit for n in parts)


def _lr(s: Setting) -> float:
    v = s.values.get("lr")
    return float(v) if is_number(v) else math.inf


def choose(settings: Sequence[Setting], rule: str, n_seeds: int) -> Setting | None:
    """The rule's pick among the settings that reached the target on every tuning seed; None if none did."""
    ok = [s for s in settings if s.ok(n_seeds)]
    if not ok:
        return None

    def nan_last(x: float) -> float:
        return -math.inf if math.isnan(x) else x

    if rule == "utility":
        key = lambda s: (-nan_last(Setting.mean(s.utility)), Setting.mean(s.steps), _lr(s))  # noqa: E731
    else:
        key = lambda s: (_lr(s), -nan_last(Setting.mean(s.utility)), Setting.mean(s.steps))  # noqa: E731
    return min(ok, key=key)  # min is stable: equal keys keep grid order


@dataclass
class Selection:
    plan: Plan
    settings: list[Setting]
    chosen: dict[str, Setting | None]

    def tuned_file(self, sweep_dir: str | Path) -> dict[str, Any]:
        methods: dict[str, Any] = {}
        for method, s in self.chosen.items():
            if s is None:
                methods[method] = {"values": None, "status": NO_SETTING}
                near = self.closest(method)
                if near is not None:  # how far the grid fell short; a tuned run uses it, marked (apply_tuned)
                    methods[method]["closest"] = {"values": near.values, "reached": self.reached_label(near),
                                                  "forget_mcq": round(Setting.mean(near.forget_mcq), 6),
                                                  "utility": round(Setting.mean(near.utility), 6)}
                    edges = grid_edges(self.plan.methods[method], near.values)
                    if edges:
                        methods[method]["closest"]["grid_edge"] = edges
            else:
                methods[method] = {"values": s.values, "status": "chosen", "utility": round(Setting.mean(s.utility), 6),
                                   "steps": Setting.mean(s.steps)}
                edges = grid_edges(self.plan.methods[method], s.values)
                if edges:
                    methods[method]["grid_edge"] = edges
        return {"rule": self.plan.rule, "utility": self.plan.utility, "seeds": self.plan.seeds,
                "reach_within": self.plan.reach_within,
                "sweep": str(sweep_dir), "context": self.plan.context, "methods": methods}

    def reached_label(self, s: Setting) -> str:
        """``k/n`` tuning seeds reached within the step limit, and how many more reached it only later."""
        late = f" (+{sum(s.reached_late)} after step {self.plan.step_limit:g})" if any(s.reached_late) else ""
        return f"{sum(s.reached)}/{len(self.plan.seeds)}{late}"

    def closest(self, method: str) -> Setting | None:
        """For a method none of whose settings reached the target: the one that came nearest, or None when no run
        of it has a number. Nearest: reached on the most tuning seeds (within the step limit, then after it), then
        the lowest mean forget mcq, then the most utility (a diverged seed counts as not reached)."""
        ran = [s for s in self.settings if s.method == method and not math.isnan(Setting.mean(s.forget_mcq))]
        if not ran:
            return None
        util = lambda s: -math.inf if math.isnan(Setting.mean(s.utility)) else Setting.mean(s.utility)  # noqa: E731
        # s.reached is already False for a diverged seed (settings_from_records)
        return min(ran, key=lambda s: (-sum(s.reached), -sum(s.reached_late), Setting.mean(s.forget_mcq), -util(s)))

    def table(self):
        import pandas as pd

        n = len(self.plan.seeds)
        nearest = {m: self.closest(m) for m, pick in self.chosen.items() if pick is None}
        rows = []
        for s in self.settings:
            pick = self.chosen.get(s.method)
            chosen = "✓" if pick is s else ""
            note = NO_SETTING if pick is None else ""
            edges = grid_edges(self.plan.methods[s.method], s.values) if pick is s or nearest.get(s.method) is s else []
            if pick is None and nearest.get(s.method) is s:
                note = f"{NO_SETTING}; closest to it" + (f", at the grid edge ({'; '.join(edges)})" if edges else "")
            if pick is s:
                note = f"at the grid edge ({'; '.join(edges)}): widen and retune" if edges else ""
            rows.append({"method": s.method, "setting": point_label(s.values), "chosen": chosen,
                         "reached": self.reached_label(s) + ("" if len(s.seeds) == n else f" ({n - len(s.seeds)} missing)"),
                         "model utility": Setting.mean(s.utility), "steps": Setting.mean(s.steps),
                         "forget mcq": Setting.mean(s.forget_mcq), "note": note})
        return pd.DataFrame(rows, columns=["method", "setting", "chosen", "reached", "model utility", "steps",
                                           "forget mcq", "note"])

    def markdown(self) -> str:
        t = self.table()
        shown = t.copy()
        for col in ("model utility", "forget mcq"):
            shown[col] = [f"{v:.3f}" if not math.isnan(v) else "n/a" for v in t[col]]
        shown["steps"] = [f"{v:.0f}" if not math.isnan(v) else "n/a" for v in t["steps"]]
        p = self.plan
        legend = (f"search on tuning seeds {', '.join(map(str, p.seeds))} (reported seeds must differ); rule `{p.rule}`: "
                  + ("among settings that reached the forget target on every tuning seed, the highest mean "
                     f"{p.utility}; ties: fewer steps, then lower lr" if p.rule == "utility" else
                     "the lowest lr among settings that reached the forget target on every tuning seed; ties: higher "
                     f"{p.utility}, then fewer steps")
                  + (f"; reached: the forget target by step {p.step_limit:g} ({p.reach_within:g} of the step cap; "
                     "\"+n after step ...\": seeds that reached it later, which do not count)" if p.reach_within < 1 else "")
                  + f"; cells: mean over tuning seeds; ✓ chosen; \"{NO_SETTING}\": the method has no tuned value (\"closest to it\": reached on the most tuning seeds, then on the most after the step limit, then the lowest forget mcq; a tuned run uses it and its row is labelled {CLOSEST_MARK.strip()}); "
                  "\"at the grid edge\": the pick is an end of a grid axis, so a better value may lie outside the grid")
        return shown.to_markdown(index=False) + "\n\n" + legend + "\n"


def grid_edges(space: Mapping[str, Sequence[Any]], values: Mapping[str, Any]) -> list[str]:
    """The chosen values that sit at an end of a numeric grid axis (of 2+ values): the best setting may lie
    beyond the grid, so the table says which end and the fix is to widen that axis and retune."""
    out = []
    for key, axis in space.items():
        nums = [v for v in axis if is_number(v)]
        v = values.get(key)
        if len(nums) < 2 or len(nums) != len(axis) or not is_number(v):
            continue
        if _same(v, max(nums)):
            out.append(f"{key}={override_value(v)} is the grid's top")
        elif _same(v, min(nums)):
            out.append(f"{key}={override_value(v)} is the grid's bottom")
    return out


def select(plan: Plan, records: Sequence[Mapping[str, Any]]) -> Selection:
    settings = settings_from_records(plan, records)
    chosen = {m: choose([s for s in settings if s.method == m], plan.rule, len(plan.seeds)) for m in plan.methods}
    return Selection(plan, settings, chosen)


def write_selection(sel: Selection, sweep_dir: str | Path, out: str | Path | None = None) -> str:
    """tuned.yaml and tune_table.{md,csv} into the sweep folder (and the tuned file to ``out``); returns the Markdown."""
    sweep_dir = Path(sweep_dir)
    text = yaml.safe_dump(sel.tuned_file(sweep_dir), sort_keys=False)
    md = sel.markdown()
    atomic_write(sweep_dir / f"{TABLE}.md", md)
    atomic_write(sweep_dir / f"{TABLE}.csv", sel.table().to_csv(index=False))
    atomic_write(sweep_dir / TUNED, text)
    if out:
        atomic_write(Path(out), text)
    return md


def select_dir(sweep_dir: str | Path, rule: str | None = None, out: str | Path | None = None,
               reach_within: float | None = None) -> str:
    """Selection from a finished tuning sweep's folder (its plan and records)."""
    from bench.report import find_records, load_record

    plan = read_plan(Path(sweep_dir))
    if rule is not None:
        plan.rule = check_rule(rule)
    if reach_within is not None:
        plan.reach_within = check_reach_within(reach_within, "--reach-within")
    records = [load_record(p) for p in find_records([sweep_dir])]
    return write_selection(select(plan, records), sweep_dir, out)


# ---- loading a tuned file into a run ----------------------------------------------------------

def load_tuned(path: str | Path) -> dict[str, Any]:
    """A tuned file as ``write_selection`` writes it, or a TuneError naming the file and the fix."""
    p = Path(path)
    if not p.is_file() and not p.is_absolute() and (ROOT / p).is_file():
        p = ROOT / p  # a shipped file (bench/assets/...) named relative to the project, run from elsewhere
    if not p.is_file():
        raise TuneError(f"tuned={str(path)!r}: no such file; write it with `python -m bench.run -m +experiment=tune` "
                        "or set tuned=null to run the method YAMLs' own values")
    try:
        data = yaml.safe_load(p.read_text())
    except (yaml.YAMLError, OSError, UnicodeDecodeError) as e:
        raise TuneError(f"tuned={str(path)!r}: not readable YAML ({type(e).__name__}); rerun the tune sweep") from None
    if not isinstance(data, dict) or not isinstance(data.get("methods"), dict) or "seeds" not in data:
        raise TuneError(f"tuned={str(path)!r}: not a tuned-settings file (needs 'methods' and 'seeds'); "
                        "rerun the tune sweep")
    check_seeds(data["seeds"], f"tuned file {path} seeds")
    if "reach_within" in data:  # files written before the key counted every stop
        check_reach_within(data["reach_within"], f"tuned file {path} reach_within")
    return data


def _first_difference(a: Any, b: Any, where: str) -> str | None:
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        for k in sorted(set(a) | set(b)):
            d = _first_difference(a.get(k), b.get(k), f"{where}.{k}")
            if d:
                return d
        return None
    return None if _same(a, b) else f"{where}: {json.dumps(b, default=str)} here, {json.dumps(a, default=str)} when tuned"


def _check_tuned_under(data: Mapping[str, Any], resolved: Mapping[str, Any], path: Any) -> None:
    """The run's CONTEXT_KEYS blocks are the ones the file was tuned under (a file written before
    TRACE_ONLY_KEYS holds them: they are dropped on both sides)."""
    want = {k: _without_trace_keys(k, v) for k, v in (data.get("context") or {}).items()}
    have = context_of(resolved)
    for key in CONTEXT_KEYS:
        if key in want:
            diff = _first_difference(want[key], have.get(key), key)
            if diff:
                raise TuneError(f"tuned={path} was tuned under another config ({diff}); retune under this config, "
                                "run with the tuned config, or set tuned=null for the method YAMLs' values")


def _entry_values(entry: Any) -> tuple[Mapping[str, Any] | None, str]:
    """A tuned file's entry for one method: its chosen values ("chosen"), else the values of the setting that came
    closest (CLOSEST: no grid point reached the target on the tuning seeds), else (None, CLOSEST)."""
    values = entry.get("values") if isinstance(entry, Mapping) else None
    if isinstance(values, Mapping):
        return values, "chosen"
    near = entry.get("closest") if isinstance(entry, Mapping) else None
    values = near.get("values") if isinstance(near, Mapping) else None
    return (values if isinstance(values, Mapping) else None), CLOSEST


def apply_tuned(resolved: dict[str, Any], method_name: str, overridden: Sequence[str] = (),
                tunable: bool = True, controls: str | None = None) -> dict[str, Any] | None:
    """Merge the tuned values for ``method_name`` into ``resolved['method']`` (in place) when ``resolved['tuned']``
    names a file; returns the tuning provenance for the record (None without a file).

    ``controls``: the method a control without a ``tune:`` block stands beside (``Method.controls``, e.g.
    random_projection for mrp): it takes that method's tuned values (chosen, or closest) for the keys it has too,
    so the control keeps the rank of the MRP it is compared with, whatever the tune picked.

    Refused before compute, with the fix: a run seed (or world seed) among the tuning seeds, a method the file has
    no values for (or none reached the target; a method without a ``tune:`` block, ``tunable=False``, runs its YAML), a run config other than the one tuned under, and a
    command-line ``method.<key>`` override of a tuned key."""
    path = resolved.get("tuned")
    if path is None:
        return None
    if not isinstance(path, str):
        raise TuneError(f"tuned must be a path to a tuned-settings file or null, got {path!r}")
    data = load_tuned(path)
    seeds = list(data["seeds"])
    seed = resolved.get("seed")
    world_seed = (resolved.get("benchmark") or {}).get("seed")
    for name, value in (("seed", seed), ("benchmark.seed", world_seed)):
        if value in seeds:
            raise TuneError(f"{name}={value} is one of the tuning seeds {seeds} of tuned={path}: reporting on a tuning "
                            f"seed inflates the tuned method; report on other seeds (e.g. seed=0,1,2,3,4)")
    entry = data["methods"].get(method_name)
    provenance = {"file": str(path), "digest": digest(data, 16), "seeds": seeds, "rule": data.get("rule"),
                  "utility": data.get("utility"),
                  **({"reach_within": data["reach_within"]} if "reach_within" in data else {})}
    if entry is None and not tunable:  # no tune: block (a control such as random_projection): its YAML is its setting
        provenance.update(values={}, note="no tune: block: the method YAML's values")
        if controls is None:
            return provenance
        followed = data["methods"].get(controls)
        if not isinstance(followed, Mapping):
            raise TuneError(f"tuned={path} has no settings for {controls!r}, the method {method_name!r} is the control "
                            f"of (it takes {controls}'s tuned values); tune {controls} (python -m bench.run -m "
                            f"+experiment=tune method={controls}) or set tuned=null")
        values, status = _entry_values(followed)
        if values is None:
            raise TuneError(f"tuned={path}: {controls!r}, the method {method_name!r} is the control of, has no tuned "
                            f"or closest value; retune {controls} or set tuned=null")
        _check_tuned_under(data, resolved, path)  # the values hold only under the config they were tuned under
        shared = {k: v for k, v in values.items() if k in resolved["method"]}
        for key in overridden:
            if key in shared:
                raise TuneError(f"method.{key} is set on the command line, but {method_name} takes {controls}'s tuned "
                                f"{key} from tuned={path}; drop one of them (tuned=null to run your own value)")
        resolved["method"] = {**resolved["method"], **shared}
        provenance.update(values=shared, follows={"method": controls, "status": status},
                          note=f"no tune: block: {controls}'s tuned values for the keys they share "
                               f"({method_name} is its control), the method YAML's otherwise")
        return provenance
    if entry is None:
        raise TuneError(f"tuned={path} has no settings for method {method_name!r} (tuned: {sorted(data['methods'])}); "
                        f"tune it (python -m bench.run -m +experiment=tune method={method_name}) or set tuned=null")
    # No grid point reached the forget target on the tuning seeds: run the one that came closest, marked as such
    # in the record and the report (a clearly marked row, never a silent pick); without one, refuse.
    values, status = _entry_values(entry)
    if values is None:
        raise TuneError(f"tuned={path}: method {method_name!r} has no tuned value ({NO_SETTING} on seeds "
                        f"{seeds}); widen conf/method/{method_name}.yaml's tune: grid and retune, "
                        + (f"or reselect with a later step limit (python -m bench.tune <its tune sweep folder> "
                           f"--reach-within 1; this file counts only stops within {data['reach_within']:g} of the "
                           "step cap), "
                           if data.get("reach_within", 1) < 1 else "")
                        + f"or leave {method_name} out of this sweep")
    if status == CLOSEST:
        log.warning("tuned=%s: %s for %s on seeds %s; running the closest setting %s (forget mcq %s), marked in the "
                    "record and the report", path, NO_SETTING, method_name, seeds, point_label(values),
                    entry["closest"].get("forget_mcq"))
    for key in overridden:
        if key in values:
            raise TuneError(f"method.{key} is set on the command line and also tuned in tuned={path}; drop one of "
                            "them (tuned=null to run your own value)")
    _check_tuned_under(data, resolved, path)
    method = dict(resolved["method"])
    unknown = [k for k in values if k not in method]
    if unknown:
        raise TuneError(f"tuned={path}: method {method_name!r} has no key {unknown[0]!r} (tuned: {sorted(values)}); "
                        "the method changed since tuning: retune")
    method.update(values)
    resolved["method"] = method
    return {**provenance, "values": dict(values), "status": status}


# ---- command line -----------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench.tune",
                                     description="Select tuned settings from a finished tuning sweep's records.")
    parser.add_argument("sweep_dir", help="the folder of a `python -m bench.run -m +experiment=tune` sweep")
    parser.add_argument("--rule", default=None, help=f"selection rule {list(RULES)} (default: the sweep's)")
    parser.add_argument("--reach-within", type=float, default=None,
                        help="share of unlearn.max_steps within which a setting must reach the target (default: the sweep's)")
    parser.add_argument("--out", default=None, help="also write the tuned file here")
    args = parser.parse_args(argv)
    try:
        print(select_dir(args.sweep_dir, args.rule, args.out, args.reach_within))
    except UserError as err:
        exit_with(err, parser.prog)


if __name__ == "__main__":
    main()
