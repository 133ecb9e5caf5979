"""Relearning attacks: typed specs, data cut by person, and one attack trajectory.

An attack fine-tunes a *copy* of a model (the object as given, wrappers and hooks included)
with the shared training loop and scores the held-out forget facts at chosen steps. The
relearn suite (``bench/suites/relearn.py``) runs every spec over its learning-rate grid,
repeats and folds, on the stage's model and, as control, on the oracle.

Data sources (``data`` in ``conf/attack/<name>.yaml``):
- ``forget_fraction`` (harmful relearning): train on a fraction p of the forget people, score
  the disjoint rest. One attack per p, named ``<name>_p<p>`` (``harmful_p0.1``).
- ``forget_folds`` (RTT, Deeb & Roger): k folds of forget people; train on k−1, score the
  held-out fold, rotate; every forget fact is scored exactly once per repeat.
- ``benign``: train on data that cannot answer the forget questions (``sources`` among retain
  facts, general facts, general text, and the benchmark's instruction corpus, ``bench.benign``);
  score the whole forget split.
``finetune: lora`` trains peft LoRA adapters only (the base weights stay frozen).

People are shuffled once per (seed, repeat); fractions take a prefix of that order (so the
p=0.1 people are among the p=0.3 people) and folds deal it round-robin. Repeats redraw the
people and the batch order.
"""

from __future__ import annotations

import copy
import math
import random
import time
from dataclasses import dataclass, field, fields
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from bench.benchmark import Benchmark, QAItem
from bench.data import BatchStream, encode_text, instruction_examples, pad_id, qa_examples
from bench.errors import UserError
from bench.settings import is_number, parse_settings
from bench.scoring import mean_nll, model_device, score_answers
from bench.items import forced_choice, prompts
from bench.train import TrainConfig, train_loop

DATA_SOURCES = ("forget_fraction", "forget_folds", "benign")
BENIGN_SOURCES = ("retain", "general", "general_text", "instructions")
TEXT_SOURCES = ("general_text", "instructions")  # benign sources that are not QA splits
DEFAULT_EVAL_STEPS = (0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
LLAMA_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class AttackConfigError(UserError):
    """An attack config that cannot work; the message names the attack, the key and the fix."""


@dataclass(frozen=True)
class LoraSpec:
    """peft LoRA adapters: rank r, scaling alpha/r, dropout, and the Linear module names to adapt."""

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] = LLAMA_LINEARS

    def __post_init__(self) -> None:
        object.__setattr__(self, "target_modules", tuple(self.target_modules))
        if self.r < 1:
            raise AttackConfigError(f"lora.r must be >= 1, got {self.r}")
        if not self.alpha > 0:
            raise AttackConfigError(f"lora.alpha must be positive, got {self.alpha}")
        if not 0 <= self.dropout < 1:
            raise AttackConfigError(f"lora.dropout must lie in [0, 1), got {self.dropout}")
        if not self.target_modules:
            raise AttackConfigError("lora.target_modules is empty; name Linear modules, e.g. [q_proj, v_proj]")


@dataclass(frozen=True)
class AttackSpec:
    """One attack config (``conf/attack/<name>.yaml``), validated before any compute.

    lrs: learning-rate grid (the attacker keeps the worst case for the defender). steps: step
    budget per trajectory. batch_size: examples per step. repeats: independent draws of people
    and batch order (each repeat scores its maximum over the trajectory; the attack's score is
    the mean over repeats, the Ssiuu paper's "each attack is run 3 times and the mean is reported",
    with the spread recorded beside it). eval_steps: steps at which held-out
    facts are scored (0 = before the attack; ``steps`` is always added; empty: 0, 1, 2, 5, 10, 20,
    50, 100, ... up to ``steps``). fractions: for
    ``forget_fraction``. folds: for ``forget_folds``. sources: for ``benign``. warmup_steps,
    optimizer, grad_clip: as in ``bench.train.TrainConfig`` (constant schedule after warmup).
    finetune: ``full`` or ``lora`` (then ``lora`` holds the adapter settings).
    """

    name: str
    data: str
    lrs: tuple[float, ...]
    steps: int
    batch_size: int = 8
    repeats: int = 3
    eval_steps: tuple[int, ...] = ()
    fractions: tuple[float, ...] = ()
    folds: int = 0
    sources: tuple[str, ...] = ("retain", "general", "general_text")
    warmup_steps: int = 0
    optimizer: str = "adamw"
    grad_clip: float | None = 1.0
    finetune: str = "full"
    lora: LoraSpec = field(default_factory=LoraSpec)

    def __post_init__(self) -> None:
        for name in ("lrs", "eval_steps", "fractions", "sources"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        where = f"attack {self.name!r}"
        if self.data not in DATA_SOURCES:
            raise AttackConfigError(f"{where}: data must be one of {DATA_SOURCES}, got {self.data!r}")
        if not self.lrs or not all(is_number(lr) and lr > 0 for lr in self.lrs):
            raise AttackConfigError(f"{where}: lrs must be a non-empty list of positive learning rates, got {list(self.lrs)}")
        if len(set(self.lrs)) != len(self.lrs):
            raise AttackConfigError(f"{where}: lrs has duplicates: {list(self.lrs)}")
        if self.steps < 1:
            raise AttackConfigError(f"{where}: steps must be >= 1, got {self.steps}")
        if self.batch_size < 1 or self.repeats < 1:
            raise AttackConfigError(f"{where}: batch_size and repeats must be >= 1, got {self.batch_size}, {self.repeats}")
        bad = [s for s in self.eval_steps if not 0 <= s <= self.steps]
        if bad:
            raise AttackConfigError(f"{where}: eval_steps {bad} lie outside [0, steps={self.steps}]")
        if self.warmup_steps < 0 or self.warmup_steps > self.steps:
            raise AttackConfigError(f"{where}: warmup_steps must lie in [0, steps], got {self.warmup_steps}")
        if self.optimizer not in ("adamw", "sgd"):
            raise AttackConfigError(f"{where}: optimizer must be 'adamw' or 'sgd', got {self.optimizer!r}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise AttackConfigError(f"{where}: grad_clip must be positive or null, got {self.grad_clip}")
        if self.finetune not in ("full", "lora"):
            raise AttackConfigError(f"{where}: finetune must be 'full' or 'lora', got {self.finetune!r}")
        if self.data == "forget_fraction":
            if not self.fractions or not all(0 < p < 1 for p in self.fractions) or len(set(self.fractions)) != len(self.fractions):
                raise AttackConfigError(f"{where}: fractions must be distinct values in (0, 1), e.g. [0.1, 0.3]; got {list(self.fractions)}")
        elif self.fractions:
            raise AttackConfigError(f"{where}: fractions only apply to data=forget_fraction")
        if self.data == "forget_folds" and self.folds < 2:
            raise AttackConfigError(f"{where}: data=forget_folds needs folds >= 2, got {self.folds}")
        if self.data != "forget_folds" and self.folds:
            raise AttackConfigError(f"{where}: folds only apply to data=forget_folds")
        if self.data == "benign":
            unknown = [s for s in self.sources if s not in BENIGN_SOURCES]
            if not self.sources or unknown:
                raise AttackConfigError(f"{where}: sources must be a non-empty subset of {BENIGN_SOURCES}, got {list(self.sources)}")

    @classmethod
    def from_config(cls, name: str, raw: dict[str, Any] | None) -> "AttackSpec":
        raw = dict(raw or {})
        allowed = {f.name for f in fields(cls)} - {"name"}
        unknown = sorted(raw.keys() - allowed)
        if unknown:
            raise AttackConfigError(f"attack {name!r}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")
        missing = sorted({"data", "lrs", "steps"} - raw.keys())
        if missing:
            raise AttackConfigError(f"attack {name!r}: missing required key(s) {missing}")
        lora = raw.pop("lora", None)
        if lora is not None and not isinstance(lora, LoraSpec):
            lora_allowed = {f.name for f in fields(LoraSpec)}
            if not isinstance(lora, Mapping) or not set(lora.keys()) <= lora_allowed:
                raise AttackConfigError(f"attack {name!r}: lora must be a mapping with keys among {sorted(lora_allowed)}, got {lora!r}")
            try:
                lora = LoraSpec(**dict(lora))
            except AttackConfigError as e:
                raise AttackConfigError(f"attack {name!r}: {e}") from None
        # Types first (attack.<name>.steps=abc: one line naming the key), then the checks above (__post_init__).
        return parse_settings(cls, {"name": name, **raw, **({"lora": lora} if lora is not None else {})}, f"attack.{name}")

    @property
    def checkpoints(self) -> tuple[int, ...]:
        """Steps at which held-out facts are scored: eval_steps plus 0 and the last step."""
        chosen = self.eval_steps or [s for s in DEFAULT_EVAL_STEPS if s <= self.steps]
        return tuple(sorted(set(chosen) | {0, self.steps}))

    def variants(self) -> list[tuple[str, float | None]]:
        """(attack name as it appears in stage names, fraction): one per fraction for forget_fraction."""
        if self.data == "forget_fraction":
            return [(f"{self.name}_p{p:g}", p) for p in self.fractions]
        return [(self.name, None)]

    def check_world(self, bench: Benchmark) -> None:
        """Checks that need the benchmark: enough forget people for every fraction and fold."""
        n = len(bench.groups("forget"))
        if self.data == "forget_fraction":
            for p in self.fractions:
                k = n_train_people(n, p)
                if not 1 <= k <= n - 1:
                    raise AttackConfigError(f"attack {self.name!r}: fraction {p} of {n} forget people trains on {k}; "
                                            "it must leave at least one person on each side")
        if self.data == "forget_folds" and self.folds > n:
            raise AttackConfigError(f"attack {self.name!r}: {self.folds} folds but only {n} forget people; "
                                    f"set folds <= {n}")
        if self.data == "benign" and not any(benign_sources_present(bench, self.sources)):
            raise AttackConfigError(f"attack {self.name!r}: none of the benign sources {list(self.sources)} has data")


def parse_attacks(raw: dict[str, Any] | None, bench: Benchmark | None = None) -> list[AttackSpec]:
    """Attack specs from the composed ``attack`` config node (name -> fields), in config order."""
    specs = [AttackSpec.from_config(name, body) for name, body in (raw or {}).items()]
    names = [n for s in specs for n, _ in s.variants()]
    if len(set(names)) != len(names):
        raise AttackConfigError(f"attack names collide: {names}")
    if bench is not None:
        for s in specs:
            s.check_world(bench)
    return specs


# -- data ------------------------------------------------------------------------------------


def n_train_people(n_people: int, fraction: float) -> int:
    return max(1, int(math.floor(fraction * n_people + 0.5)))


def shuffled_people(bench: Benchmark, seed: int, repeat: int) -> list[str]:
    people = bench.groups("forget")
    random.Random(f"relearn/{seed}/{repeat}").shuffle(people)
    return people


def person_folds(people: Sequence[str], k: int) -> list[list[str]]:
    """Deal people round-robin into k folds: disjoint, covering, sizes differ by at most one."""
    return [list(people[i::k]) for i in range(k)]


def benign_sources_present(bench: Benchmark, sources: Sequence[str]) -> list[bool]:
    return [bool(getattr(bench, s)) if s in TEXT_SOURCES else bool(bench.split(s)) for s in sources]


@dataclass(frozen=True)
class Fold:
    """What one trajectory trains on and what it scores (forget items of other people)."""

    train_items: tuple[QAItem, ...]
    heldout: tuple[QAItem, ...]
    train_text: tuple[str, ...] = ()
    train_instructions: tuple[tuple[str, str], ...] = ()


def attack_folds(spec: AttackSpec, bench: Benchmark, seed: int, repeat: int, fraction: float | None = None) -> list[Fold]:
    forget = bench.split("forget")
    if spec.data == "benign":
        items = tuple(it for s in spec.sources if s not in TEXT_SOURCES for it in bench.split(s))
        text = tuple(bench.general_text) if "general_text" in spec.sources else ()
        instructions = tuple(map(tuple, bench.instructions)) if "instructions" in spec.sources else ()
        return [Fold(items, tuple(forget), text, instructions)]
    people = shuffled_people(bench, seed, repeat)
    if spec.data == "forget_fraction":
        assert fraction is not None
        trained = set(people[: n_train_people(len(people), fraction)])
        return [Fold(tuple(it for it in forget if it.group in trained), tuple(it for it in forget if it.group not in trained))]
    folds = []
    for held in person_folds(people, spec.folds):
        held_set = set(held)
        folds.append(Fold(tuple(it for it in forget if it.group not in held_set), tuple(it for it in forget if it.group in held_set)))
    return folds


def fold_examples(fold: Fold, bench: Benchmark, tokenizer) -> list[tuple[list[int], list[int]]]:
    return (qa_examples(tokenizer, bench, fold.train_items) + [encode_text(tokenizer, t) for t in fold.train_text]
            + instruction_examples(tokenizer, bench, fold.train_instructions))


# -- one trajectory -----------------------------------------------------------------------------


@dataclass
class Trajectory:
    """Per-item scores of the held-out facts at each evaluated step (rows follow ``steps``)."""

    steps: list[int]
    mcq: np.ndarray  # [len(steps), n_heldout] bool
    em: np.ndarray
    train_mcq: float  # mean over trained QA items (up to TRAIN_EVAL_MAX) after the attack (nan if none)
    train_em: float
    losses: list[float]
    diverged: bool
    wall_s: float


def add_lora(model: torch.nn.Module, spec: LoraSpec) -> list[torch.nn.Parameter]:
    """Inject LoRA adapters into ``model`` in place (any nn.Module, wrapped or not); freeze the rest.

    Returns the adapter parameters, the only ones left trainable.
    """
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout, target_modules=list(spec.target_modules),
                        bias="none")
    inject_adapter_in_model(config, model)
    adapters = []
    for name, p in model.named_parameters():
        is_adapter = "lora_" in name
        p.requires_grad_(is_adapter)
        if is_adapter:
            adapters.append(p)
    if not adapters:
        raise AttackConfigError(f"LoRA found no module among {list(spec.target_modules)}; set lora.target_modules")
    return adapters


def score_facts(model, tokenizer, bench: Benchmark, items: Sequence[QAItem], batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(mcq correct, exact match) per item, trained phrasing, from one teacher-forced pass over the options.

    The gold answer is one of the options, so its exact-match verdict comes with the option
    scores (``bench.items.forced_choice``, as ``mcq_correct``: highest answer log-prob wins, ties
    count wrong).
    """
    if not items:
        return np.zeros(0, bool), np.zeros(0, bool)
    k = len(items[0].options)
    ps = prompts(bench, items, "question")
    scores = score_answers(model, tokenizer, [p for p in ps for _ in range(k)], [o for it in items for o in it.options], batch_size)
    mcq = forced_choice(scores.option_logprob.reshape(len(items), k), items)
    gold = np.array([it.answer_index for it in items])
    em = scores.exact.reshape(len(items), k)[np.arange(len(items)), gold]
    return np.asarray(mcq, bool), np.asarray(em, bool)


TRAIN_EVAL_MAX = 64  # trained facts scored after an attack (an even subsample of larger sets, e.g. benign)


def train_eval_items(fold: Fold) -> tuple[QAItem, ...]:
    items = fold.train_items
    if len(items) <= TRAIN_EVAL_MAX:
        return items
    return tuple(items[i] for i in np.linspace(0, len(items) - 1, TRAIN_EVAL_MAX).round().astype(int))


def run_attack(model: torch.nn.Module, spec: AttackSpec, fold: Fold, lr: float, seed: int, bench: Benchmark, tokenizer,
               eval_batch_size: int = 256, initial: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[Trajectory, torch.nn.Module]:
    """Fine-tune a deep copy of ``model`` on ``fold`` (shared loop) and score its held-out facts.

    ``model`` itself is never modified. ``initial``: the held-out scores before the attack if
    already known (they do not depend on the lr). Returns the trajectory and the attacked copy.
    """
    attacked = copy.deepcopy(model)
    # Full fine-tuning trains what the deployed model leaves trainable: a method's frozen parts
    # (MRP's projection directions) stay as deployed, so the wrapping stays on.
    if spec.finetune == "lora":
        torch.manual_seed(seed)  # adapter init draws from the global RNG: make it a function of the attack's seed
    params = add_lora(attacked, spec.lora) if spec.finetune == "lora" else None
    device = model_device(attacked)
    stream = BatchStream(fold_examples(fold, bench, tokenizer), spec.batch_size, pad_id(tokenizer), seed=seed)
    cfg = TrainConfig(lr=lr, max_steps=spec.steps, batch_size=spec.batch_size, warmup_steps=spec.warmup_steps,
                      schedule="constant", optimizer=spec.optimizer, grad_clip=spec.grad_clip, check_every=0, seed=seed)
    steps: list[int] = []
    mcq: list[np.ndarray] = []
    em: list[np.ndarray] = []

    def check(step: int) -> bool:
        if step == 0 and initial is not None:
            m, e = initial
        else:
            m, e = score_facts(attacked, tokenizer, bench, fold.heldout, eval_batch_size)
        steps.append(step)
        mcq.append(m)
        em.append(e)
        return False

    start = time.perf_counter()
    result = train_loop(attacked, lambda b: mean_nll(attacked, b.to(device)), stream, cfg, params=params, check=check,
                        check_at=spec.checkpoints, desc=f"attack {spec.name}")
    train_mcq, train_em = score_facts(attacked, tokenizer, bench, train_eval_items(fold), eval_batch_size)
    traj = Trajectory(steps=steps, mcq=np.array(mcq, bool).reshape(len(steps), len(fold.heldout)),
                      em=np.array(em, bool).reshape(len(steps), len(fold.heldout)),
                      train_mcq=float(train_mcq.mean()) if len(train_mcq) else float("nan"),
                      train_em=float(train_em.mean()) if len(train_em) else float("nan"),
                      losses=result.losses, diverged=result.diverged, wall_s=time.perf_counter() - start)
    return traj, attacked


# -- aggregation --------------------------------------------------------------------------------


def wrong_before(trajectory: Trajectory) -> np.ndarray:
    """Held-out facts the attacked model got wrong (forced choice) before the attack: the Ssiuu paper's pool."""
    return ~trajectory.mcq[0]


def pooled_curve(trajectories: Sequence[Trajectory], checkpoints: Sequence[int], metric: str,
                 masks: Sequence[np.ndarray] | None = None) -> np.ndarray:
    """Score at each checkpoint over the items of all folds together (nan where any fold lacks it, or no item
    is left); ``masks``: per trajectory, the held-out items to keep (e.g. ``wrong_before``)."""
    out = np.full(len(checkpoints), np.nan)
    for i, step in enumerate(checkpoints):
        parts = []
        for j, t in enumerate(trajectories):
            if step not in t.steps:
                break
            row = getattr(t, metric)[t.steps.index(step)]
            parts.append(row if masks is None else row[masks[j]])
        else:
            values = np.concatenate(parts) if parts else np.zeros(0)
            out[i] = values.mean() if values.size else np.nan
    return out


def max_over_trajectory(curve: Sequence[float]) -> float:
    """The attacker's best moment: the highest score seen at any evaluated step (nan-safe)."""
    arr = np.asarray(curve, float)
    return float(np.nanmax(arr)) if np.isfinite(arr).any() else float("nan")


def worst_over_grid(curves: dict[float, Sequence[float]]) -> tuple[float, float]:
    """(lr, score) of the grid point whose max-over-trajectory is highest (worst for the defender).

    Ties go to the first lr in grid order.
    """
    return worst_of({lr: max_over_trajectory(curve) for lr, curve in curves.items()})


def worst_of(scores: dict[float, float]) -> tuple[float, float]:
    """(lr, score) of the highest finite score over the grid; ties go to the first lr; (first lr, nan) if none."""
    best_lr, best = None, -math.inf
    for lr, value in scores.items():
        if math.isfinite(value) and value > best:
            best_lr, best = lr, value
    if best_lr is None:
        return next(iter(scores)), float("nan")
    return best_lr, best


def repeat_maxima(curves: np.ndarray) -> np.ndarray:
    """Per repeat (rows of ``curves``), the maximum over the trajectory: each run's attacker's best moment."""
    return np.array([max_over_trajectory(c) for c in np.atleast_2d(curves)])


def nan_mean(values: Sequence[float]) -> float:
    """Mean over the finite values; nan (not a warning and a default) when there is none."""
    arr = np.asarray(values, float)
    return float(arr[np.isfinite(arr)].mean()) if np.isfinite(arr).any() else float("nan")
