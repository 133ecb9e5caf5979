"""SAM-NPO: sharpness-aware NPO (Fan et al. 2025, "Towards LLM unlearning resilient to relearning
attacks: a sharpness-aware minimization perspective and beyond", arXiv 2502.05374).

Relearning undoes unlearning when the forget loss sits in a sharp basin; SAM minimises the worst
forget loss in a ρ-ball instead (first-order inner maximisation, as in Foret et al. 2021):

    min_θ  max_{‖δ‖≤ρ} L_f(θ+δ) + α·NLL_r(θ),   δ* = ρ·∇L_f(θ)/‖∇L_f(θ)‖₂
    update direction = ∇L_f(θ+δ*) + α·∇NLL_r(θ)

L_f = (2/β)·mean log(1 + exp(β·(log π_θ(y|x) − log π_ref(y|x)))) is NPO's forget loss
(``methods.npo``), ‖·‖₂ the norm over all trainable parameters. One step costs two forward/backward
passes on the forget batch and one on the retain batch (``loss_and_grad``): the weights are moved to
θ+δ*, the forget gradient taken there, and restored bit-exactly before the retain term and the
optimiser step. ρ = 0 gives NPO exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from bench.method import LossMethod
from bench.scoring import mean_nll
from methods.npo import NPO


def grads(loss: torch.Tensor, params: list[torch.nn.Parameter]) -> list[torch.Tensor]:
    return [g if g is not None else torch.zeros_like(p)
            for p, g in zip(params, torch.autograd.grad(loss, params, allow_unused=True))]


def forget_grad_at(model, params, offsets, forget_fn, batch) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """L_f and ∇L_f at θ + offsets; the weights are restored exactly afterwards."""
    saved = [p.detach().clone() for p in params]
    try:
        with torch.no_grad():
            for p, e in zip(params, offsets):
                p.add_(e)
        lf = forget_fn(model, batch)
        return lf.detach(), grads(lf, params) if torch.isfinite(lf) else []
    finally:
        with torch.no_grad():
            for p, s in zip(params, saved):
                p.copy_(s)


def add_retain(model, params, batch, alpha: float, forget_grads: list[torch.Tensor], lf: torch.Tensor) -> torch.Tensor:
    """p.grad = forget gradient + α·∇NLL_r(θ); returns L_f + α·NLL_r for the log."""
    total = lf
    if alpha:
        lr_ = alpha * mean_nll(model, batch.retain)
        lr_.backward()
        total = lf + lr_.detach()
    for p, g in zip(params, forget_grads):
        p.grad = g if p.grad is None else p.grad.add_(g)
    return total


@dataclass
class SAMNPO(LossMethod):
    """lr: peak learning rate. beta: NPO inverse temperature. alpha: retain weight. rho: radius of the
    weight perturbation (L2 over all trainable parameters; 0 gives NPO). Defaults: conf/method/sam_npo.yaml."""
    unshardable_reason: ClassVar[str] = "its perturbed second pass scales by the whole gradient's norm, a rank holds a shard"

    lr: float = 1e-4
    beta: float = 0.1
    alpha: float = 1.0
    rho: float = 0.05
    _npo: NPO = field(init=False, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.beta > 0:
            raise ValueError(f"SAMNPO: method.beta must be > 0, got {self.beta}; e.g. method.beta=0.1")
        if not self.alpha >= 0:
            raise ValueError(f"SAMNPO: method.alpha must be >= 0, got {self.alpha}; e.g. method.alpha=1.0")
        if not self.rho >= 0:
            raise ValueError(f"SAMNPO: method.rho must be >= 0, got {self.rho}; e.g. method.rho=0.05")
        self._npo = NPO(lr=self.lr, beta=self.beta, alpha=0.0)

    def prepare(self, model, data, ctx):
        self._npo.prepare(model, data, ctx)

    def loss(self, model, batch):
        """NPO + retain at θ (no perturbation): the objective SAM sharpens."""
        lf = self._npo.loss(model, batch)
        return lf + self.alpha * mean_nll(model, batch.retain) if self.alpha else lf

    def loss_and_grad(self, model, batch):
        params = [p for p in model.parameters() if p.requires_grad]
        lf0 = self._npo.loss(model, batch)
        if not torch.isfinite(lf0):
            return lf0
        g0 = grads(lf0, params)
        norm = torch.sqrt(sum(g.double().pow(2).sum() for g in g0))
        scale = float(self.rho / norm) if norm > 0 else 0.0
        lf, g = forget_grad_at(model, params, [scale * x for x in g0], self._npo.loss, batch)
        if not torch.isfinite(lf):
            return lf
        return add_retain(model, params, batch, self.alpha, g, lf)
