"""GRU: gradient-rectified unlearning (Wang et al. 2025, "GRU: Mitigating the trade-off between
unlearning and retention for large language models", arXiv 2503.09117), as OpenUnlearning runs it.

Per step, two backward passes on the trainable parameters θ:

    g_f = ∇ L_f(θ)                 forget loss: GA (−NLL_f, default) or NPO
    g_r = ∇ NLL_r(θ)               retain cross-entropy
    ĝ_r ← γ·g_r + (1−γ)·ĝ_r        exponential moving average (ĝ_r = 0 before the first step)
    if g_f·ĝ_r < 0:  g_f ← g_f − (g_f·ĝ_r / ‖ĝ_r‖²)·ĝ_r
    update direction = g_f + α·g_r

so the forget step never increases the retain loss to first order (dot products over all trainable
parameters at once). The reference (OpenUnlearning ``GRU``) applies the rectified forget gradient
alone: the retain gradient only sets the constraint direction, α = 0 (the default here);
α > 0 adds the retain gradient of the current batch as well, GradDiff-style.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch

from bench.method import LossMethod
from bench.scoring import mean_nll
from methods.npo import NPO


def _dot(a: list[torch.Tensor], b: list[torch.Tensor]) -> torch.Tensor:
    return sum((x.double() * y.double()).sum() for x, y in zip(a, b))


@dataclass
class GRU(LossMethod):
    """lr: peak learning rate. gamma: weight of the current retain gradient in its moving average
    (0 < γ ≤ 1; 1: no smoothing; OpenUnlearning 0.8). forget_loss: ``ga`` (OpenUnlearning's
    default) or ``npo``. beta: NPO inverse temperature. alpha: weight of the retain gradient added
    to the update (0: the reference's update, the rectified forget gradient alone)."""
    unshardable_reason: ClassVar[str] = "its gradient projection (dot products over every gradient) needs whole gradients, a rank holds a shard"

    lr: float = 1e-4
    gamma: float = 0.8
    forget_loss: Literal["ga", "npo"] = "ga"
    beta: float = 0.1
    alpha: float = 0.0
    projected: list[bool] = field(default_factory=list, init=False, repr=False)  # per step: was g_f rectified
    _npo: NPO | None = field(default=None, init=False, repr=False)
    _avg: list[torch.Tensor] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.gamma <= 1:
            raise ValueError(f"GRU: method.gamma must be in (0, 1], got {self.gamma}; e.g. method.gamma=0.8")
        if self.forget_loss not in ("ga", "npo"):
            raise ValueError(f"GRU: method.forget_loss must be 'ga' or 'npo', got {self.forget_loss!r}")
        if not self.beta > 0:
            raise ValueError(f"GRU: method.beta must be > 0, got {self.beta}; e.g. method.beta=0.1")
        if not self.alpha >= 0:
            raise ValueError(f"GRU: method.alpha must be >= 0, got {self.alpha}; e.g. method.alpha=0")

    def prepare(self, model, data, ctx):
        self._avg = None
        self.projected = []
        if self.forget_loss == "npo":
            self._npo = NPO(lr=self.lr, beta=self.beta, alpha=0.0)
            self._npo.prepare(model, data, ctx)

    def forget(self, model, batch) -> torch.Tensor:
        return self._npo.loss(model, batch) if self.forget_loss == "npo" else -mean_nll(model, batch.forget)

    def loss(self, model, batch):
        """L_f + α·NLL_r: the objective whose gradient GRU follows when nothing conflicts."""
        lf = self.forget(model, batch)
        return lf + self.alpha * mean_nll(model, batch.retain) if self.alpha else lf

    def loss_and_grad(self, model, batch):
        params = [p for p in model.parameters() if p.requires_grad]
        lf = self.forget(model, batch)
        if not torch.isfinite(lf):
            return lf
        g_f = [g if g is not None else torch.zeros_like(p)
               for p, g in zip(params, torch.autograd.grad(lf, params, allow_unused=True))]
        lr_ = mean_nll(model, batch.retain)
        g_r = [g if g is not None else torch.zeros_like(p)
               for p, g in zip(params, torch.autograd.grad(lr_, params, allow_unused=True))]
        if self._avg is None:
            self._avg = [self.gamma * g for g in g_r]
        else:
            self._avg = [self.gamma * g + (1 - self.gamma) * a for g, a in zip(g_r, self._avg)]
        dot = _dot(g_f, self._avg)
        conflict = bool(dot < 0)
        if conflict:
            scale = (dot / _dot(self._avg, self._avg).clamp(min=1e-30)).to(g_f[0].dtype)
            g_f = [g - scale * a for g, a in zip(g_f, self._avg)]
        self.projected.append(conflict)
        for p, g, r in zip(params, g_f, g_r):
            p.grad = g + self.alpha * r if self.alpha else g.clone()
        return (lf + self.alpha * lr_).detach()
