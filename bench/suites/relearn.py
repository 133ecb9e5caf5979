"""Relearn suite: is the knowledge erased, or only hidden? (PROTOCOLS.md, "Relearn suite")

For a stage listed in ``suite_settings.relearn.stages`` (default: unlearned), every
attack of the run config (``attack: [...]``, specs in ``conf/attack/``, see ``bench.attacks``)
fine-tunes a copy of that stage's model, and, as control, a copy of the oracle with the same
data, seeds and budget (computed once per run). Without an oracle (``model.inject: null``, see
``bench.pretrained``) the control is the attacked target (the base model): stage
``target_attacked/<attack>``, and no ``recovery`` rows (they are defined against the oracle).

Each attack runs ``repeats`` times (people and batch order redrawn); a repeat's score is its
maximum over the trajectory, the attack's score the mean over repeats (the Ssiuu paper's "run 3
times, mean reported"), at the worst-case lr of the grid for that mean. Per attack, for split
``forget_heldout`` (the forget facts the attack did not train on):

- ``mcq_acc``, ``em``: that score; ``attack_lr@<m>``: its lr; ``<m>@repeat_std|min|max``: the spread
  of the per-repeat maxima at that lr (repeats > 1);
- ``mcq_acc@wrong_only``, ``em@wrong_only``: the same over the held-out facts the attacked model got
  wrong (forced choice) before the attack, the paper's FaithUn pool; ``n_items@wrong_only``: that
  subset's mean size per repeat (the row's n: its total);
- ``mcq_acc@step<N>``, ``em@step<N>``: the relearn curve (mean over repeats, pooled over folds) at the
  worst-case lr; ``mcq_acc@lr<lr>``, ``em@lr<lr>``: the score per lr;
- ``recovered_share``: Deeb & Roger's share of the pre-unlearning accuracy recovered, (mcq_acc − the
  attacked model's mcq_acc before the attack) / (the target's mcq_acc − that), on the same facts;
  NaN with the reason logged when the denominator is under one fact;
- ``recovery``, ``recovery@em``, ``recovery@wrong_only``, ``recovery@em@wrong_only``: attacked −
  oracle-attacked (not on the control's own rows); ``wall_s``.
Split ``forget_trained`` (data=forget_*) or ``retain`` (benign QA sources): mcq_acc and em of the
trained facts (at most 64, an even subsample) at the end of the worst-case-lr attack (did the
attack learn what it was shown?); an instruction-only attack has none.

Summary rows on the evaluated stage itself (``unlearned``, ``target``; the control's stage for the
control), split ``forget_heldout``: ``mcq_acc@<attack>``, ``em@<attack>``, ``mcq_acc@<attack>@wrong_only``,
``mcq_acc_repeat_std@<attack>``, ``recovered_share@<attack>``, ``recovery@<attack>``,
``recovery@<attack>@wrong_only`` and ``recovery@worst`` (the largest recovery over the attacks), so that
``bench.report`` puts them in each method's table row.

The oracle control depends only on the oracle, the attack settings and the seed, so it is the
same for every method of a sweep: it is cached on disk (``<cache_dir>/relearn_control/``) under a
hash of the oracle's model-cache key (which covers the benchmark's items and texts), the attack
settings, the relearn seed and batch size, the harness code version, the library versions and
the runtime (``bench.record.runtime_identity``: device type, and torch's thread count on CPU); any change
there computes it afresh.

Stages: ``attacked/<attack>`` for the unlearned model, ``oracle_attacked/<attack>`` for the
control, ``target_attacked/<attack>`` for the target (a no-op check: it knows every fact
already), ``<stage>/attacked/<attack>`` for any other stage. Relearn curves for every lr, the
per-repeat scores, the recovered share's parts and per-item trajectories at the worst-case lr go
to examples.jsonl (suite ``relearn``).

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

from bench.attacks import (AttackConfigError, AttackSpec, attack_folds, nan_mean, parse_attacks, pooled_curve, repeat_maxima,
                           run_attack, score_facts, train_eval_items, worst_of, wrong_before)
from bench.benchmark import Benchmark
from bench.disk_cache import digest, pickled
from bench.record import code_version, package_versions, runtime_identity
from bench.scoring import model_device
from bench.settings import bounded
from bench.stages import ORACLE, TARGET, UNLEARNED
from bench.suites import Row, SuiteContext, SuiteOutput, check_control_stages


SUITE = "relearn"

# Which way is better (bench.directions): how much comes back after an attack.
DIRECTIONS = [
    (r".*", r"attack_lr@.*", None),
    (r".*", r".*repeat_(std|min|max).*", None),  # spread over repeats, not a score
    (r".*", r"n_items@.*", None),
    (r".*", r"recovered_share(@.*)?", "lower"),
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
    seed: int = bounded(0, ge=0)
    batch_size: int = bounded(256, ge=1)


def check(settings: Settings, bench: Benchmark) -> None:
    """Attack specs and their fit to the world; the attacked stages."""
    parse_attacks(settings.attacks, bench)
    check_control_stages(SUITE, settings.stages, "attacked", example="[unlearned]", error=AttackConfigError)


def stage_label(stage: str, attack: str) -> str:
    return {UNLEARNED: f"attacked/{attack}", ORACLE: f"oracle_attacked/{attack}",
            TARGET: f"target_attacked/{attack}"}.get(stage, f"{stage}/attacked/{attack}")


@dataclass
class Outcome:
    """One attack (one variant) on one model: per lr, per repeat curves over the spec's checkpoints.

    ``curves[key][lr]``: array [repeats, checkpoints], key one of ``KEYS`` (all held-out facts, or only
    those the model got wrong before the attack). ``before`` and ``reference``: per repeat, the held-out
    mcq_acc of the attacked model before the attack and of the reference model (the target, before
    unlearning) on the same facts. ``n_wrong``: per repeat, the size of the wrong-before subset."""

    attack: str
    spec: AttackSpec
    curves: dict[str, dict[float, np.ndarray]] = field(default_factory=dict)
    trained: dict[str, dict[float, float]] = field(default_factory=dict)       # metric -> lr -> final score
    items: dict[float, list[dict[str, Any]]] = field(default_factory=dict)     # lr -> per-item trajectories
    n_heldout: int = 0
    n_trained: int = 0
    n_wrong: list[int] = field(default_factory=list)
    before: list[float] = field(default_factory=list)
    reference: list[float] = field(default_factory=list)
    diverged: int = 0
    wall_s: float = 0.0

    def scores(self, key: str, lr: float) -> np.ndarray:
        """Per repeat, the maximum over the trajectory at ``lr``."""
        return repeat_maxima(self.curves[key][lr])

    def worst(self, key: str) -> tuple[float, float]:
        """(lr, mean over repeats of the per-repeat maximum) at the lr where that mean is highest."""
        return worst_of({lr: nan_mean(self.scores(key, lr)) for lr in self.curves[key]})

    def mean_curve(self, key: str, lr: float) -> np.ndarray:
        return np.array([nan_mean(col) for col in self.curves[key][lr].T])

    def recovered_share(self) -> tuple[float, str]:
        """Deeb & Roger's share of the pre-unlearning accuracy recovered, (after − before) / (reference − before)
        on the held-out facts' mcq_acc; nan with the reason when the denominator is under one fact's worth."""
        before, reference, after = nan_mean(self.before), nan_mean(self.reference), self.worst("mcq_acc")[1]
        gap = reference - before
        if not np.isfinite(gap):
            return float("nan"), "no reference (target) accuracy"
        if gap < 1.0 / max(self.n_heldout, 1):
            return float("nan"), (f"the attacked model's held-out mcq_acc before the attack ({before:.3f}) is within one fact "
                                  f"of the target's ({reference:.3f}): nothing to recover")
        return (after - before) / gap, ""


KEYS = ("mcq_acc", "em", "mcq_acc@wrong_only", "em@wrong_only")


def attack(model, spec: AttackSpec, attack_name: str, fraction: float | None, ctx: SuiteContext) -> Outcome:
    seed, batch_size = ctx.settings_of(SUITE).seed, ctx.settings_of(SUITE).batch_size
    out = Outcome(attack_name, spec)
    start = time.perf_counter()
    points = spec.checkpoints
    for key in KEYS:
        out.curves[key] = {}
    for m in METRICS:
        out.trained[m] = {}
    initial: dict[tuple[int, int], Any] = {}  # (repeat, fold) -> held-out scores before the attack (same for every lr)
    for lr in spec.lrs:
        per_repeat: dict[str, list[np.ndarray]] = {key: [] for key in KEYS}
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
            wrong = [wrong_before(t) for t in trajs]
            for m, attr in (("mcq_acc", "mcq"), ("em", "em")):
                per_repeat[m].append(pooled_curve(trajs, points, attr))
                per_repeat[f"{m}@wrong_only"].append(pooled_curve(trajs, points, attr, wrong))
            trained["mcq_acc"].append(float(np.mean([t.train_mcq for t in trajs])))
            trained["em"].append(float(np.mean([t.train_em for t in trajs])))
            if lr == spec.lrs[0]:  # what the attack starts from does not depend on the lr
                out.n_wrong.append(int(sum(w.sum() for w in wrong)))
                out.before.append(float(np.concatenate([t.mcq[0] for t in trajs]).mean()))
                out.reference.append(reference_accuracy(folds, ctx))
        for key in KEYS:
            out.curves[key][lr] = np.vstack(per_repeat[key])
        for m in METRICS:
            out.trained[m][lr] = nan_mean(trained[m])
    out.wall_s = time.perf_counter() - start
    if out.diverged:
        log.warning("relearn %s: %d trajectories diverged (non-finite loss); their later steps are missing", attack_name, out.diverged)
    return out


def reference_accuracy(folds: list, ctx: SuiteContext) -> float:
    """The target's (pre-unlearning) mcq_acc on the folds' held-out facts, pooled; nan without a target."""
    if ctx.target is None:
        return float("nan")
    heldout = [it for fold in folds for it in fold.heldout]
    return float(score_facts(ctx.target, ctx.tokenizer, ctx.bench, heldout, ctx.settings_of(SUITE).batch_size)[0].mean())


def attack_all(model, ctx: SuiteContext) -> list[Outcome]:
    specs = parse_attacks(ctx.settings_of(SUITE).attacks, ctx.bench)
    return [attack(model, spec, name, fraction, ctx) for spec in specs for name, fraction in spec.variants()]


def control_key(ctx: SuiteContext) -> str:
    """Hash of everything the oracle control depends on (see the module docstring)."""
    s = ctx.settings_of(SUITE)
    return digest({"oracle": ctx.oracle_key, "attacks": s.attacks, "seed": s.seed, "batch_size": s.batch_size,
                   "code": code_version(), "packages": package_versions(),
                   "runtime": runtime_identity(model_device(ctx.oracle))})


def oracle_control(ctx: SuiteContext) -> list[Outcome]:
    """The attacked-oracle outcomes: from the disk cache when an identical control was computed before
    (concurrent runs of one seed compute it once)."""
    if ctx.cache_dir is None or ctx.oracle_key is None:
        return attack_all(ctx.oracle, ctx)
    path = Path(ctx.cache_dir) / "relearn_control" / f"{control_key(ctx)}.pkl"
    controls, reused = pickled(path, lambda: attack_all(ctx.oracle, ctx))
    log.info("relearn: oracle control %s %s", "reused from" if reused else "cached at", path)
    return controls


RECOVERY = {"mcq_acc": "recovery", "em": "recovery@em", "mcq_acc@wrong_only": "recovery@wrong_only",
            "em@wrong_only": "recovery@em@wrong_only"}
SPREAD = (("repeat_std", lambda v: float(np.std(v, ddof=1))), ("repeat_min", np.min), ("repeat_max", np.max))


def spread_rows(label: str, key: str, scores: np.ndarray, n: int) -> list[Row]:
    """The spread over repeats of the per-repeat maxima (std with ddof 1, min, max); none for a single repeat."""
    finite = scores[np.isfinite(scores)]
    if len(scores) < 2:
        return []
    return [Row(label, SUITE, SPLIT, f"{key}@{name}", float(fn(finite)) if len(finite) > 1 else float("nan"), n)
            for name, fn in SPREAD]


def outcome_rows(stage: str, out: Outcome, control: Outcome | None) -> list[Row]:
    label = stage_label(stage, out.attack)
    rows: list[Row] = []
    n = out.n_heldout * out.spec.repeats
    n_wrong = sum(out.n_wrong)
    trained_split = "retain" if out.spec.data == "benign" else "forget_trained"
    for key in KEYS:
        lr, worst = out.worst(key)
        k = n_wrong if key.endswith("@wrong_only") else n
        rows.append(Row(label, SUITE, SPLIT, key, worst, k))
        rows.append(Row(label, SUITE, SPLIT, f"attack_lr@{key}", lr, k))
        rows += spread_rows(label, key, out.scores(key, lr), k)
        if control is not None:
            rows.append(Row(label, SUITE, SPLIT, RECOVERY[key], worst - control.worst(key)[1], k))
        if key in METRICS:
            rows += [Row(label, SUITE, SPLIT, f"{key}@step{s}", v, n) for s, v in zip(out.spec.checkpoints, out.mean_curve(key, lr))]
            rows += [Row(label, SUITE, SPLIT, f"{key}@lr{g:g}", nan_mean(out.scores(key, g)), n) for g in out.curves[key]]
            if out.n_trained:
                rows.append(Row(label, SUITE, trained_split, key, out.trained[key][lr], out.n_trained * out.spec.repeats))
    rows.append(Row(label, SUITE, SPLIT, "n_items@wrong_only", float(np.mean(out.n_wrong)), n))
    if np.isfinite(out.reference).any():  # a suite context without a target (unit tests) has no reference
        share, reason = out.recovered_share()
        if reason:
            log.warning("relearn %s (%s): recovered_share is undefined: %s", out.attack, label, reason)
        rows.append(Row(label, SUITE, SPLIT, "recovered_share", share, n))
    rows.append(Row(label, SUITE, SPLIT, "wall_s", out.wall_s, n))
    if out.diverged:
        rows.append(Row(label, SUITE, SPLIT, "diverged", out.diverged, n))
    return rows


def outcome_examples(stage: str, out: Outcome) -> list[dict[str, Any]]:
    label = stage_label(stage, out.attack)
    base = {"stage": label, "suite": SUITE, "split": SPLIT, "attack": out.attack}
    ex = [{**base, "kind": "curve", "lr": lr, "step": s, **{key: float(out.mean_curve(key, lr)[i]) for key in KEYS}}
          for lr in out.spec.lrs for i, s in enumerate(out.spec.checkpoints)]
    ex += [{**base, "kind": "repeat", "lr": lr, "repeat": r, "before_mcq_acc": out.before[r], "reference_mcq_acc": out.reference[r],
            "n_wrong_before": out.n_wrong[r], **{key: float(out.scores(key, lr)[r]) for key in KEYS}}
           for lr in out.spec.lrs for r in range(out.spec.repeats)]
    share, reason = out.recovered_share()
    ex.append({**base, "kind": "recovered_share", "value": share, "before": nan_mean(out.before),
               "reference": nan_mean(out.reference), "after": out.worst("mcq_acc")[1], "undefined_because": reason or None})
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
        rows.append(Row(stage, SUITE, SPLIT, f"mcq_acc@{out.attack}@wrong_only", out.worst("mcq_acc@wrong_only")[1], sum(out.n_wrong)))
        if out.spec.repeats > 1:
            lr, _ = out.worst("mcq_acc")
            rows += [Row(stage, SUITE, SPLIT, f"mcq_acc_{r.metric.split('@')[-1]}@{out.attack}", r.value, n)
                     for r in spread_rows(stage, "mcq_acc", out.scores("mcq_acc", lr), n)]
        if np.isfinite(out.reference).any():
            rows.append(Row(stage, SUITE, SPLIT, f"recovered_share@{out.attack}", out.recovered_share()[0], n))
        if controls is not None:
            recoveries.append(out.worst("mcq_acc")[1] - controls[i].worst("mcq_acc")[1])
            rows.append(Row(stage, SUITE, SPLIT, f"recovery@{out.attack}", recoveries[-1], n))
            rows.append(Row(stage, SUITE, SPLIT, f"recovery@{out.attack}@wrong_only",
                            out.worst("mcq_acc@wrong_only")[1] - controls[i].worst("mcq_acc@wrong_only")[1], sum(out.n_wrong)))
    if recoveries:
        rows.append(Row(stage, SUITE, SPLIT, "recovery@worst", float(np.nanmax(recoveries)), len(recoveries)))
    return rows


def control_outcomes(ctx: SuiteContext) -> tuple[str, list[Outcome]]:
    """(stage, outcomes) of the control: the attacked oracle; without an oracle (``model.inject: null``: the
    target is a pretrained model, nothing was withheld from it) the attacked target, the no-op control."""
    if ctx.oracle is None:
        return TARGET, ctx.reference((SUITE, "target_attacked"), lambda: attack_all(ctx.target, ctx))
    return ORACLE, ctx.reference((SUITE, "oracle_attacked"), lambda: oracle_control(ctx))


def evaluate(model, stage: str, ctx: SuiteContext) -> SuiteOutput:
    s = ctx.settings_of(SUITE)
    control_stage = ORACLE if ctx.oracle is not None else TARGET
    if not s.attacks or not s.stages or stage not in (control_stage, *s.stages):
        return SuiteOutput()
    control_stage, controls = control_outcomes(ctx)
    out = SuiteOutput()
    emitted = ctx.reference((SUITE, "control_rows_emitted"), lambda: [False])
    if not emitted[0]:  # the control's rows, once per run, whichever stage asks first
        emitted[0] = True
        for c in controls:
            out.rows += outcome_rows(control_stage, c, None)
            out.examples += outcome_examples(control_stage, c)
        out.rows += summary_rows(control_stage, controls, None)
    if stage == control_stage:
        return out
    outs = attack_all(model, ctx)
    oracle_controls = controls if control_stage == ORACLE else None  # recovery is defined against the oracle only
    for i, attacked in enumerate(outs):
        out.rows += outcome_rows(stage, attacked, oracle_controls[i] if oracle_controls else None)
        out.examples += outcome_examples(stage, attacked)
    out.rows += summary_rows(stage, outs, oracle_controls)
    return out
