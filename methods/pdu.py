"""PDU: primal-dual unlearning (Entesari et al. 2025, "Constrained entropic unlearning: a primal-dual
framework for large language models", arXiv 2506.05314), as OpenUnlearning's ``PDU`` with
``primal_dual=True`` and per-step dual updates.

Unlearning as a constrained problem: min_θ L_f(θ) s.t. NLL_r(θ) ≤ ε, solved by gradient descent on
the Lagrangian in θ and projected dual ascent in λ, one step each per batch:

    primal:  L_t = γ·L_f(θ_t) + λ_t·(NLL_r(θ_t) − ε)                    (θ takes an optimiser step)
    dual:    λ_{t+1} = max(0, λ_t + η·(NLL_r(θ_t) − ε))                  (same batch's retain loss)

λ_0 = ``lam`` (OpenUnlearning's ``alpha``). The forget loss is the reference's logit-margin
flattening loss L_f = mean_t (max_v z_t,v − mean_v z_t,v)² over the logits z_t at the positions
the answer is read from (positions whose next token is an answer or end token): at its minimum
every logit is equal, i.e. the prediction is uniform. OpenUnlearning takes that mean over every
position of the padded batch, prompt and padding included; here it is restricted to the answer's
read positions, like every other forget loss of the harness. ε only shifts the loss (not its
gradient); it moves λ. ``lambdas`` records λ_t per step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from bench.data import Batch
from bench.method import LossMethod
from bench.scoring import mean_nll
from methods.rmu import read_positions


def logit_margin(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """mean over the read positions of (max logit − mean logit)²."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.float()
    z = logits[read_positions(batch)]
    return (z.max(-1).values - z.mean(-1)).pow(2).mean()


@dataclass
class PDU(LossMethod):
    """lr: peak learning rate. eps: the retain constraint NLL_r ≤ ε (nats per answer token; the
    tiny target's retain NLL is ~0.015). lam: initial multiplier λ_0 ≥ 0. dual_lr: η > 0, the dual
    ascent step. gamma: weight of the forget loss (> 0)."""
    unshardable_reason: ClassVar[str] = "its gradient edit (after_backward) needs whole gradients, a rank holds a shard"

    lr: float = 3e-3
    eps: float = 0.1
    lam: float = 1.0
    dual_lr: float = 1.0
    gamma: float = 1.0
    lambdas: list[float] = field(default_factory=list, init=False, repr=False)
    _lam: float = field(default=0.0, init=False, repr=False)
    _retain: float | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.eps >= 0:
            raise ValueError(f"PDU: method.eps must be >= 0, got {self.eps}; e.g. method.eps=0.1")
        if not self.lam >= 0:
            raise ValueError(f"PDU: method.lam must be >= 0, got {self.lam}; e.g. method.lam=1.0")
        if not self.dual_lr > 0:
            raise ValueError(f"PDU: method.dual_lr must be > 0, got {self.dual_lr}; e.g. method.dual_lr=1.0")
        if not self.gamma > 0:
            raise ValueError(f"PDU: method.gamma must be > 0, got {self.gamma}; e.g. method.gamma=1.0")
        self._lam = float(self.lam)

    def prepare(self, model, data, ctx):
        self._lam = float(self.lam)
        self._retain = None
        self.lambdas = []

    @property
    def multiplier(self) -> float:
        """λ_t: the multiplier the next loss uses."""
        return self._lam

    def loss(self, model, batch):
        retain = mean_nll(model, batch.retain)
        self._retain = float(retain.detach())
        return self.gamma * logit_margin(model, batch.forget) + self._lam * (retain - self.eps)

    def after_backward(self, model, batch):
        """Dual ascent with the retain loss of the step's primal loss (at θ_t, before the update)."""
        self.lambdas.append(self._lam)
        if self._retain is not None:
            self._lam = max(0.0, self._lam + self.dual_lr * (self._retain - self.eps))
            self._retain = None
