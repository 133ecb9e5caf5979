"""Relearn suite: is the knowledge erased, or only hidden? (PROTOCOLS.md, "Relearn suite")

For a stage listed in ``suite_settings.relearn.stages`` (default: unlearned), every
attack of the run config (``attack: [...]``, specs in ``conf/attack/``, see ``bench.attacks``)
fine-tunes a copy of that stage's model, and, as control, a copy of the oracle with the same
data, seeds and budget (computed once per run). Per attack, for split ``forget_heldout`` (the
forget facts the attack did not train on):

- ``mcq_acc@step<N>``, ``em@step<N>``: the relearn curve (mean over repeats, pooled over folds)
  at the grid's worst-case lr for that metric;
- ``mcq_acc@lr<lr>``, ``em@lr<lr>``: the maximum over the trajectory, per lr;
- ``mcq_acc``, ``em``: the worst case over the lr grid of the maximum over the trajectory;
- ``attack_lr@mcq_acc``, ``attack_lr@em``: the lr of that worst case;
- ``recovery`` (mcq_acc) and ``recovery@em``: attacked worst case − oracle-attacked worst case
  (not on the oracle's own rows); ``wall_s``.
Split ``forget_trained`` (data=forget_*) or ``retain`` (benign): mcq_acc and em of the trained
facts (at most 64, an even subsample) at the end of the worst-case-lr attack (did the attack
learn what it was shown?).

Summary rows on the evaluated stage itself (``unlearned``, ``target``; ``oracle`` for the
control), split ``forget_heldout``: ``mcq_acc@<attack>``, ``em@<attack>`` (the worst cases
above), ``recovery@<attack>`` and ``recovery@worst`` (the largest recovery over the attacks),
so that ``bench.report`` puts them in each method's table row.

The oracle control depends only on the oracle, the attack settings and the seed, so it is the
same for every method of a sweep: it is cached on disk (``<cache_dir>/relearn_control/``) under a
hash of the oracle's model-cache key (which covers the benchmark's items and texts), the attack
settings, the relearn seed and batch size, the harness code version, the library versions and
the torch thread count; any change there computes it afresh.

Stages: ``attacked/<attack>`` for the unlearned model, ``oracle_attacked/<attack>`` for the
control, ``target_attacked/<attack>`` for the target (a no-op check: it knows every fact
already), ``<stage>/attacked/<attack>`` for any other stage. Relearn curves for every lr and
per-item trajectories at the worst-case lr go to examples.jsonl (suite ``relearn``).

Settings (``suite_settings.relearn``, ``Settings`` below): attacks (conf/config.yaml fills it with
the run's ``attack`` node), stages, seed (the run's seed in conf/config.yaml), batch_size.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from bench.attacks import (AttackConfigError, AttackSpec, attack_folds, parse_attacks, pooled_curve, run_attack, train_eval_items,
                           worst_over_grid)
from bench.benchmark import Benchmark
from bench.disk_cache import digest, pickled
from bench.record import code_version, package_versions
from bench.settings import bounded
from bench.stages import ORACLE, TARGET, UNLEARNED
from bench.suites import Row, SuiteContext, SuiteOutput


SUITE = "relearn"

# Which way is better (bench.directions): how much comes back after an attack.
DIRECTIONS = [
    (r".*", r"attack_lr@.*", None),
    (r".*", r"recovery(@.*)?", "lower"),
    (r"forget_heldout", r"(mcq_acc|em)(@.*)?", "lower"),
    (r".*", r"(mcq_acc|em)(@.*)?", None),  # trained facts: did the attack learn what it saw?
    (r".*", r"wall_s|diverged", None),
]
SPLIT = "forget_heldout"
METRICS = ("mcq_acc", "em")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Settings:
    """attacks: attack name -> spec fields (``bench.attacks.AttackSpec``); empty: the suite does nothing.
    stages: stages whose model is attacked, besides the oracle control (add target for the no-op check).
    seed: draws of attacked people and batch order. batch_size: held-out scoring batch (the options of
    all held-out facts in one pass)."""

    attacks: dict[str, Any] = field(default_factory=dict)
    stages: tuple[str, ...] = bounded((UNLEARNED,))
    seed: int = 0
    batch_size: int = bounded(256, ge=1)


def check(settings: Settings, bench: Benchmark) -> None:
    """Attack specs and their fit to the world; the attacked stages."""
    parse_attacks(settings.attacks, bench)
    if ORACLE in settings.stages:
        raise AttackConfigError(f"suite_settings.relearn.stages must name stages other than 'oracle' (the oracle is "
                                f"always attacked as control), got {list(settings.stages)}; e.g. [unlearned]")


def stage_label(stage: str, attack: str) -> str:
    return {UNLEARNED: f"attacked/{attack}", ORACLE: f"oracle_attacked/{attack}",
            TARGET: f"target_attacked/{attack}"}.get(stage, f"{stage}/attacked/{attack}")


@dataclass
class Outcome:
    """One attack (one variant) on one model: curves per lr over the spec's checkpoints."""

    attack: str
    spec: AttackSpec
    curves: dict[str, dict[float, np.ndarray]] = field(default_factory=dict)   # metric -> lr -> curve
    trained: dict[str, dict[float, float]] = field(default_factory=dict)       # metric -> lr -> final score
    items: dict[float, list[dict[str, Any]]] = field(default_factory=dict)     # lr -> per-item trajectories
    n_heldout: int = 0
    n_trained: int = 0
    diverged: int = 0
    wall_s: float = 0.0

    def worst(self, metric: str) -> tuple[float, float]:
        return worst_over_grid(self.curves[metric])


def attack(model, spec: AttackSpec, attack_name: str, fraction: float | None, ctx: SuiteContext) -> Outcome:
    seed, batch_size = ctx.settings_of(SUITE).seed, ctx.settings_of(SUITE).batch_size
    out = Outcome(attack_name, spec)
    start = time.perf_counter()
    points = spec.checkpoints
    for metric in METRICS:
        out.curves[metric], out.trained[metric] = {}, {}
    initial: dict[tuple[int, int], Any] = {}  # (repeat, fold) -> held-out scores before the attack (same for every lr)
    for lr in spec.lrs:
        per_repeat: dict[str, list[np.ndarray]] = {m: [] for m in METRICS}
        trained: dict[str, list[float]] = {m: [] for m in METRICS}
        out.items[lr] = []
        for repeat in range(spec.repeats):
            folds = attack_folds(spec, ctx.bench, seed, repeat, fraction)
            trajs = []
            for f, fold in enumerate(folds):
                traj, _ = run_attack(model, spec, fold, lr, seed * 1000 + repeat * 100 + f, ctx.bench, ctx.tokenizer, batch_size,
                                     initial.get((repeat, f)))
                initial[(repeat, f)] = (traj.mcq[0], traj.em[0])
                trajs.append(traj)
                out.diverged += int(traj.diverged)
                out.items[lr] += [{"id": it.id, "repeat": repeat, "fold": f, "steps": traj.steps,
                                   "mcq_correct": traj.mcq[:, i].tolist(), "em": traj.em[:, i].tolist()}
                                  for i, it in enumerate(fold.heldout)]
            out.n_heldout = sum(len(fd.heldout) for fd in folds)
            out.n_trained = len(train_eval_items(folds[0]))
            per_repeat["mcq_acc"].append(pooled_curve(trajs, points, "mcq"))
            per_repeat["em"].append(pooled_curve(trajs, points, "em"))
            trained["mcq_acc"].append(float(np.mean([t.train_mcq for t in trajs])))
            trained["em"].append(float(np.mean([t.train_em for t in trajs])))
        for m in METRICS:
            stacked = np.vstack(per_repeat[m])
            out.curves[m][lr] = np.array([np.nanmean(c) if np.isfinite(c).any() else np.nan for c in stacked.T])
            out.trained[m][lr] = float(np.nanmean(trained[m])) if np.isfinite(trained[m]).any() else float("nan")
    out.wall_s = time.perf_counter() - start
    if out.diverged:
        log.warning("relearn %s: %d trajectories diverged (non-finite loss); their later steps are missing", attack_name, out.diverged)
    return out


def attack_all(model, ctx: SuiteContext) -> list[Outcome]:
    specs = parse_attacks(ctx.settings_of(SUITE).attacks, ctx.bench)
    return [attack(model, spec, name, fraction, ctx) for spec in specs for name, fraction in spec.variants()]


def control_key(ctx: SuiteContext) -> str:
    """Hash of everything the oracle control depends on (see the module docstring)."""
    s = ctx.settings_of(SUITE)
    return digest({"oracle": ctx.oracle_key, "attacks": s.attacks, "seed": s.seed, "batch_size": s.batch_size,
                   "code": code_version(), "packages": package_versions(), "threads": torch.get_num_threads()})


def oracle_control(ctx: SuiteContext) -> list[Outcome]:
    """The attacked-oracle outcomes: from the disk cache when an identical control was computed before
    (concurrent runs of one seed compute it once)."""
    if ctx.cache_dir is None or ctx.oracle_key is None:
        return attack_all(ctx.oracle, ctx)
    path = Path(ctx.cache_dir) / "relearn_control" / f"{control_key(ctx)}.pkl"
    controls, reused = pickled(path, lambda: attack_all(ctx.oracle, ctx))
    log.info("relearn: oracle control %s %s", "reused from" if reused else "cached at", path)
    return controls


def outcome_rows(stage: str, out: Outcome, control: Outcome | None) -> list[Row]:
    label = stage_label(stage, out.attack)
    rows: list[Row] = []
    n = out.n_heldout * out.spec.repeats
    trained_split = "retain" if out.spec.data == "benign" else "forget_trained"
    for m in METRICS:
        lr, worst = out.worst(m)
        rows.append(Row(label, SUITE, SPLIT, m, worst, n))
        rows.append(Row(label, SUITE, SPLIT, f"attack_lr@{m}", lr, n))
        rows += [Row(label, SUITE, SPLIT, f"{m}@step{s}", v, n) for s, v in zip(out.spec.checkpoints, out.curves[m][lr])]
        rows += [Row(label, SUITE, SPLIT, f"{m}@lr{g:g}", worst_over_grid({g: c})[1], n) for g, c in out.curves[m].items()]
        if out.n_trained:
            rows.append(Row(label, SUITE, trained_split, m, out.trained[m][lr], out.n_trained * out.spec.repeats))
        if control is not None:
            rows.append(Row(label, SUITE, SPLIT, "recovery" if m == "mcq_acc" else f"recovery@{m}", worst - control.worst(m)[1], n))
    rows.append(Row(label, SUITE, SPLIT, "wall_s", out.wall_s, n))
    if out.diverged:
        rows.append(Row(label, SUITE, SPLIT, "diverged", out.diverged, n))
    return rows


def outcome_examples(stage: str, out: Outcome) -> list[dict[str, Any]]:
    label = stage_label(stage, out.attack)
    base = {"stage": label, "suite": SUITE, "split": SPLIT, "attack": out.attack}
    ex = [{**base, "kind": "curve", "lr": lr, "step": s, **{m: float(out.curves[m][lr][i]) for m in METRICS}}
          for lr in out.spec.lrs for i, s in enumerate(out.spec.checkpoints)]
    lr, _ = out.worst("mcq_acc")
    ex += [{**base, "kind": "item", "lr": lr, **item} for item in out.items[lr]]
    return ex


def summary_rows(stage: str, outs: list[Outcome], controls: list[Outcome] | None) -> list[Row]:
    """Headline numbers on the evaluated stage itself (one table row per method in bench.report)."""
    rows: list[Row] = []
    recoveries = []
    for i, out in enumerate(outs):
        n = out.n_heldout * out.spec.repeats
        for m in METRICS:
            rows.append(Row(stage, SUITE, SPLIT, f"{m}@{out.attack}", out.worst(m)[1], n))
        if controls is not None:
            recoveries.append(out.worst("mcq_acc")[1] - controls[i].worst("mcq_acc")[1])
            rows.append(Row(stage, SUITE, SPLIT, f"recovery@{out.attack}", recoveries[-1], n))
    if recoveries:
        rows.append(Row(stage, SUITE, SPLIT, "recovery@worst", float(np.nanmax(recoveries)), len(recoveries)))
    return rows


def evaluate(model, stage: str, ctx: SuiteContext) -> SuiteOutput:
    s = ctx.settings_of(SUITE)
    if not s.attacks or (stage != ORACLE and stage not in s.stages) or not s.stages:
        return SuiteOutput()
    controls: list[Outcome] = ctx.reference((SUITE, "oracle_attacked"), lambda: oracle_control(ctx))
    out = SuiteOutput()
    emitted = ctx.reference((SUITE, "oracle_rows_emitted"), lambda: [False])
    if not emitted[0]:  # the control's rows, once per run, whichever stage asks first
        emitted[0] = True
        for c in controls:
            out.rows += outcome_rows(ORACLE, c, None)
            out.examples += outcome_examples(ORACLE, c)
        out.rows += summary_rows(ORACLE, controls, None)
    if stage == ORACLE:
        return out
    outs = attack_all(model, ctx)
    for attacked, control in zip(outs, controls, strict=True):
        out.rows += outcome_rows(stage, attacked, control)
        out.examples += outcome_examples(stage, attacked)
    out.rows += summary_rows(stage, outs, controls)
    return out
