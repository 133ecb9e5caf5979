"""The one training loop: knowledge injection, loss-based unlearning and relearning attacks.

Kept in one visible function (nanoGPT style). A caller supplies the loss on a batch and,
optionally, a check that runs at chosen steps and may stop training (the stopping rule of the
fair comparison, or an attack's evaluation schedule). A non-finite loss stops training and is
reported as ``diverged`` with the step it reached; it never raises.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Literal

import torch
from tqdm.auto import tqdm


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
    desc: str = "train",
) -> TrainResult:
    """Minimise ``loss_fn(batch)`` for up to ``cfg.max_steps`` steps.

    check(step) -> stop?: runs before the first step (step 0), at ``check_at`` steps or every
    ``cfg.check_every`` steps, and after the last step. after_backward(batch) may edit gradients
    (a method's gradient adjustment) before clipping and the optimiser step.
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
    start = time.perf_counter()
    model.train()
    if check is not None and check(0):
        result.stopped_by_check = True
        result.wall_s = time.perf_counter() - start
        return result
    stream = iter(batches)
    bar = tqdm(total=cfg.max_steps, desc=desc, leave=False, dynamic_ncols=True, mininterval=1.0)
    try:
        for step in range(1, cfg.max_steps + 1):
            batch = next(stream)
            loss = loss_fn(batch)
            if not torch.isfinite(loss):
                result.diverged = True
                result.losses.append(float(loss.detach()))
                break
            opt.zero_grad(set_to_none=True)
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
            if check is not None and step in checkpoints and check(step):
                result.stopped_by_check = True
                break
    finally:
        bar.close()
        model.eval()
        opt.zero_grad(set_to_none=True)
    result.wall_s = time.perf_counter() - start
    return result
