"""Ssiuu: attribution-regularised unlearning (Yang et al., ICLR 2026, arXiv 2509.22263), Algorithm 1.

Unlearning with a plain loss (GA, GradDiff, NPO) often *hides* a fact: it grows new negative
contributions ("spurious unlearning neurons") that push the answer down while the neurons that
carry it stay intact, and a little relearning undoes the hiding. Ssiuu adds a penalty that keeps
negative attributions from growing. Per step t, on the forget batch B_f:

    g   = ∂/∂φ Σ_{(x,y)∈B_f} P_φ(y|x)         (sequence probability, not log-probability)
    A_t = φ ⊙ g                                (per-parameter attribution)
    M_t = {j : A_t[j] < 0}
    R_t = Σ_{j∈M_t} (A_{t−1}[j] − A_t[j])²     (A_{t−1} stored detached; R_1 = 0)
    L   = L_base + λ·R_t

The gradient of R_t is taken with g held constant (no Hessian term), as in the paper:
∂R_t/∂φ_j ≈ 2 (A_t[j] − A_{t−1}[j]) g_j on M_t, 0 elsewhere. ``after_backward`` adds λ times
that to ``p.grad`` after the base loss's backward (before clipping and the optimiser step); it
equals autograd on the surrogate λ·Σ_{M_t}(A_{t−1} − φ⊙stopgrad(g))² (tests/test_ssiuu.py).
Cost per step: one extra forward and backward of Σ P on the forget batch, and one
parameter-sized buffer for A_{t−1} (``python -m bench.perf.step_cost`` measures it).

Reading of the paper kept here: the anchor is the previous step (not the model before
unlearning), consecutive steps use different forget batches, P includes the end token (the
answer as the scorer sees it), and P vanishes for long answers (keep them short).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch

from bench.method import LossMethod, UnlearnBatch
from bench.scoring import sequence_logprob
from methods.graddiff import GradDiff
from methods.npo import NPO

BASES = ("graddiff", "npo")


@dataclass
class Ssiuu(LossMethod):
    """lr: peak learning rate. lam: weight λ of the attribution penalty (≥ 0; 0 gives the base
    method exactly); its scale depends on the model (parameter count, size of ∂P/∂φ), so sweep it.
    Default 1 from a sweep on the tiny model (default world, seed 0, GradDiff base, lr 1e-4,
    λ ∈ {0, 1, 10, 30, 100}): λ ≤ 30 reach the forget target (170–270 steps), λ = 100 does not
    within 300; λ = 1 keeps the most utility (model utility 0.86 vs 0.85 at λ = 0 and 0.68 at
    λ = 10) and the lowest harmful-relearn recovery (+0.36 at p = 0.1), though no λ makes the
    recovery small. At λ = 1 the extra gradient's norm is about half the base gradient's. The paper's
    1e-3 / 1e-4 are for 3B models.
    base: the base loss, ``graddiff`` (the paper's, default) or ``npo``. alpha: retain weight of
    the base loss. beta: NPO's inverse temperature (used only with base=npo).
    """
    unshardable_reason: ClassVar[str] = "its gradient edit (after_backward) needs whole gradients, a rank holds a shard"

    lr: float = 1e-4
    lam: float = 1.0
    base: Literal["graddiff", "npo"] = "graddiff"
    alpha: float = 1.0
    beta: float = 0.1
    penalties: list[float] = field(default_factory=list, init=False, repr=False)  # R_t per step (R_1 = 0)
    _base: LossMethod = field(init=False, repr=False)
    _prev: list[torch.Tensor] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.lam >= 0:
            raise ValueError(f"Ssiuu: lam must be >= 0, got {self.lam}; e.g. method.lam=1.0")
        if self.base not in BASES:
            raise ValueError(f"Ssiuu: base must be one of {BASES}, got {self.base!r}; e.g. method.base=npo")
        # The base method validates its own weights (alpha >= 0, beta > 0).
        if self.base == "graddiff":
            self._base = GradDiff(lr=self.lr, optimizer=self.optimizer, alpha=self.alpha)
        else:
            self._base = NPO(lr=self.lr, optimizer=self.optimizer, beta=self.beta, alpha=self.alpha)

    def prepare(self, model, data, ctx):
        self._prev = None
        self.penalties = []
        self._base.prepare(model, data, ctx)

    def loss(self, model, batch):
        return self._base.loss(model, batch)

    @staticmethod
    def attribution(model: torch.nn.Module, batch: UnlearnBatch) -> tuple[list[torch.nn.Parameter], list[torch.Tensor], list[torch.Tensor]]:
        """Trainable parameters φ, g = ∂ΣP/∂φ on the forget batch, and A = φ ⊙ g (all detached)."""
        params = [p for p in model.parameters() if p.requires_grad]
        logp, _ = sequence_logprob(model, batch.forget)
        grads = torch.autograd.grad(logp.exp().sum(), params, allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g.detach() for p, g in zip(params, grads)]
        # fp32 attributions whatever the weights' dtype: the penalty differences A_t − A_{t−1} vanish in bf16.
        return params, grads, [p.detach().float() * g.float() for p, g in zip(params, grads)]

    def after_backward(self, model, batch):
        """Add λ·∂R_t/∂φ ≈ 2λ(A_t − A_{t−1})⊙g on M_t = {A_t < 0} to the base loss's gradient."""
        params, grads, attr = self.attribution(model, batch)
        penalty = 0.0
        if self._prev is not None:
            for p, g, a, a_prev in zip(params, grads, attr, self._prev):
                mask = a < 0
                diff = torch.where(mask, a - a_prev, torch.zeros_like(a))
                penalty += float(diff.pow(2).sum())
                if self.lam:
                    extra = ((2.0 * self.lam) * diff * g).to(p.dtype)
                    p.grad = extra if p.grad is None else p.grad.add_(extra)
        self.penalties.append(penalty)
        self._prev = attr
