"""RS-NPO: NPO with randomised smoothing of the forget loss (Fan et al. 2025, arXiv 2502.05374,
"... a sharpness-aware minimization perspective and beyond", the "beyond" part: randomised
smoothing is one of the smoothness optimisations they find to resist relearning attacks, besides
SAM, gradient penalty, curvature regularisation and weight averaging).

Minimise the forget loss averaged over Gaussian weight noise, one noise draw per step:

    min_θ  E_{δ∼N(0, σ²I)} L_f(θ+δ) + α·NLL_r(θ)
    update direction = ∇L_f(θ+δ_t) + α·∇NLL_r(θ),   δ_t ∼ N(0, σ²I) fresh each step

L_f is NPO's forget loss (``methods.npo``); δ covers every trainable parameter; the noise comes
from a generator seeded with the run's seed (reproducible). The weights are restored bit-exactly
before the retain term and the optimiser step. σ = 0 gives NPO exactly. Cost: one forward/backward
per batch, like NPO, plus drawing the noise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from bench.method import LossMethod
from bench.scoring import mean_nll
from methods.npo import NPO
from methods.sam_npo import add_retain, forget_grad_at


@dataclass
class RSNPO(LossMethod):
    """lr: peak learning rate. beta: NPO inverse temperature. alpha: retain weight. sigma: standard
    deviation of the Gaussian weight noise (absolute, per parameter; 0 gives NPO)."""
    unshardable_reason: ClassVar[str] = "its random smoothing passes are not verified under sharding"

    lr: float = 1e-4
    beta: float = 0.1
    alpha: float = 1.0
    sigma: float = 0.01
    _npo: NPO = field(init=False, repr=False)
    _gen: torch.Generator | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.beta > 0:
            raise ValueError(f"RSNPO: method.beta must be > 0, got {self.beta}; e.g. method.beta=0.1")
        if not self.alpha >= 0:
            raise ValueError(f"RSNPO: method.alpha must be >= 0, got {self.alpha}; e.g. method.alpha=1.0")
        if not self.sigma >= 0:
            raise ValueError(f"RSNPO: method.sigma must be >= 0, got {self.sigma}; e.g. method.sigma=0.01")
        self._npo = NPO(lr=self.lr, beta=self.beta, alpha=0.0)

    def prepare(self, model, data, ctx):
        self._npo.prepare(model, data, ctx)
        self._gen = torch.Generator().manual_seed(ctx.seed)

    def noise(self, params: list[torch.nn.Parameter]) -> list[torch.Tensor]:
        """One draw of δ ∼ N(0, σ²I) per parameter (CPU generator, then moved to the parameter)."""
        if self._gen is None:
            self._gen = torch.Generator().manual_seed(0)
        return [(self.sigma * torch.randn(p.shape, generator=self._gen)).to(p.device, p.dtype) for p in params]

    def loss(self, model, batch):
        """NPO + retain at θ (no noise)."""
        lf = self._npo.loss(model, batch)
        return lf + self.alpha * mean_nll(model, batch.retain) if self.alpha else lf

    def loss_and_grad(self, model, batch):
        params = [p for p in model.parameters() if p.requires_grad]
        lf, g = forget_grad_at(model, params, self.noise(params), self._npo.loss, batch)
        if not torch.isfinite(lf):
            return lf
        return add_retain(model, params, batch, self.alpha, g, lf)
