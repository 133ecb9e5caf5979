"""The one training loop: knowledge injection, loss-based unlearning and relearning attacks.

Kept in one visible function (nanoGPT style). A caller supplies the loss on a batch and,
optionally, a check that runs at chosen steps and may stop training (the stopping rule of the
fair comparison, or an attack's evaluation schedule). A broken model stops training and is
reported as ``diverged`` with the step it reached; it never raises. Broken means any of: a
non-finite loss (tested before each update), non-finite trained weights (tested before every
check call and at the end of training, so a check never scores a NaN model: forced-choice mcq
would call it perfectly unlearned, ties counting wrong), or a check that saw non-finite model
outputs (the model's logits are watched while a check runs; a check may also raise ``Diverged``).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Literal

import torch
from tqdm.auto import tqdm

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Optimiser and budget of one training phase.

    lr: peak learning rate (must be > 0). max_steps: step budget (cap). batch_size: examples per
    batch (the caller builds batches with it). warmup_steps: linear warmup from 0 (a tiny model
    memorises 10x faster with warmup). schedule: after warmup, ``constant`` or ``cosine`` decay to
    0 at max_steps. optimizer: ``adamw`` or ``sgd``. grad_clip: max global grad norm (None: off).
    check_every: steps between stopping checks (0 disables them, except at step 0 and the end).
    """

    lr: float
    max_steps: int
    batch_size: int = 32
    warmup_steps: int = 0
    schedule: Literal["constant", "cosine"] = "constant"
    optimizer: Literal["adamw", "sgd"] = "adamw"
    weight_decay: float = 0.0
    grad_clip: float | None = 1.0
    check_every: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ValueError(f"learning rate must be positive, got lr={self.lr}; set a value like 1e-4")
        if self.max_steps < 0:
            raise ValueError(f"max_steps must be >= 0, got {self.max_steps}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.schedule not in ("constant", "cosine"):
            raise ValueError(f"schedule must be 'constant' or 'cosine', got {self.schedule!r}")
        if self.optimizer not in ("adamw", "sgd"):
            raise ValueError(f"optimizer must be 'adamw' or 'sgd', got {self.optimizer!r}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip must be positive or null, got {self.grad_clip}")

    def lr_factor(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.schedule == "cosine":
            span = max(1, self.max_steps - self.warmup_steps)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - self.warmup_steps) / span)))
        return 1.0


class Diverged(Exception):
    """Raised by a check (or the output watch) that saw a broken model; ``train_loop`` records it."""


def nonfinite_weights(params: Iterable[torch.Tensor]) -> bool:
    """Whether any of ``params`` holds a NaN or inf (one fused norm per tensor; exact fallback).

    A norm is inf also for huge finite weights (its square overflows), so only then is every
    element looked at.
    """
    params = [p.detach() for p in params]
    if not params:
        return False
    with torch.no_grad():
        norms = torch._foreach_norm(params)
        if all(bool(torch.isfinite(n)) for n in norms):
            return False
        return not all(bool(torch.isfinite(p).all()) for p in params)


def _raise_on_nonfinite_output(module, args, output) -> None:
    logits = getattr(output, "logits", output)
    if isinstance(logits, torch.Tensor) and logits.is_floating_point() and not bool(torch.isfinite(logits).all()):
        raise Diverged("the model's logits hold NaN or inf")


@dataclass
class TrainResult:
    steps: int
    losses: list[float] = field(default_factory=list)
    diverged: bool = False
    stopped_by_check: bool = False  # the check said stop (e.g. the forget target was reached)
    wall_s: float = 0.0

    @property
    def final_loss(self) -> float:
        return self.losses[-1] if self.losses else float("nan")


def train_loop(
    model: torch.nn.Module,
    loss_fn: Callable[[object], torch.Tensor],
    batches: Iterable,
    cfg: TrainConfig,
    *,
    params: Iterable[torch.nn.Parameter] | None = None,
    check: Callable[[int], bool] | None = None,
    check_at: Iterable[int] | None = None,
    after_backward: Callable[[object], None] | None = None,
    loss_and_grad: Callable[[object], torch.Tensor] | None = None,
    desc: str = "train",
) -> TrainResult:
    """Minimise ``loss_fn(batch)`` for up to ``cfg.max_steps`` steps.

    check(step) -> stop?: runs before the first step (step 0), at ``check_at`` steps or every
    ``cfg.check_every`` steps, and after the last step. after_backward(batch) may edit gradients
    (a method's gradient adjustment) before clipping and the optimiser step.
    loss_and_grad(batch) -> loss: replaces ``loss_fn(batch).backward()`` for methods that need
    several forward/backward passes per step (SAM, GRU): it is called with every ``p.grad`` cleared,
    leaves the step's gradient in ``p.grad`` and returns the loss to log (a non-finite one stops
    training as diverged before the update, as with ``loss_fn``).
    """
    torch.manual_seed(cfg.seed)
    params = [p for p in (params if params is not None else model.parameters()) if p.requires_grad]
    if not params:
        raise ValueError(f"{desc}: no trainable parameters")
    if cfg.optimizer == "adamw":
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.SGD(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, cfg.lr_factor)
    if check_at is not None:
        checkpoints = set(check_at)
    elif cfg.check_every > 0:
        checkpoints = set(range(0, cfg.max_steps + 1, cfg.check_every))
    else:
        checkpoints = {0}
    checkpoints.add(cfg.max_steps)

    result = TrainResult(steps=0)

    def broken(step: int) -> bool:
        """Trained weights non-finite: record the divergence (the check is not consulted)."""
        if nonfinite_weights(params):
            log.error("%s: non-finite weights at step %d: diverged", desc, step)
            result.diverged = True
        return result.diverged

    def consult(step: int) -> bool:
        """The check's verdict, unless the model is broken (then ``result.diverged`` is set)."""
        if broken(step):
            return False
        handle = model.register_forward_hook(_raise_on_nonfinite_output)
        try:
            return bool(check(step))
        except Diverged as err:
            log.error("%s: %s at step %d: diverged", desc, err, step)
            result.diverged = True
            return False
        finally:
            handle.remove()

    start = time.perf_counter()
    model.train()
    if check is not None and (consult(0) or result.diverged):
        result.stopped_by_check = not result.diverged
        result.wall_s = time.perf_counter() - start
        model.eval()
        return result
    stream = iter(batches)
    bar = tqdm(total=cfg.max_steps, desc=desc, leave=False, dynamic_ncols=True, mininterval=1.0)
    checked = 0  # the last step whose weights were tested
    try:
        for step in range(1, cfg.max_steps + 1):
            batch = next(stream)
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(batch) if loss_and_grad is None else loss_and_grad(batch).detach()
            if not torch.isfinite(loss):
                result.diverged = True
                result.losses.append(float(loss.detach()))
                break
            if loss_and_grad is None:
                loss.backward()
            if after_backward is not None:
                after_backward(batch)
            if cfg.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            sched.step()
            result.steps = step
            result.losses.append(float(loss.detach()))
            bar.update(1)
            bar.set_postfix(loss=f"{result.losses[-1]:.4f}", refresh=False)
            if step in checkpoints:
                checked = step
                if check is None:
                    if broken(step):
                        break
                elif consult(step):
                    result.stopped_by_check = True
                    break
                elif result.diverged:
                    break
        if not result.diverged and checked != result.steps:
            broken(result.steps)  # the end of training is always tested
    finally:
        bar.close()
        model.eval()
        opt.zero_grad(set_to_none=True)
    result.wall_s = time.perf_counter() - start
    return result
