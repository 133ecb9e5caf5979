"""SimNPO (Fan et al. 2024, "Simplicity prevails: rethinking negative preference optimization"), + retain.

L = −(2/β)·mean_f log σ(−(β/|y|)·log π_θ(y|x) − γ) + α·R

|y| is the number of labelled answer tokens (the answer tokens and the end token, as every loss
here); R = NLL_r (``retain_loss: nll``, default) or KL(π_ref ‖ π_θ) on the retain answer positions
(``retain_loss: kl``; ``bench.retain``). No reference model: the length-normalised log-likelihood
replaces NPO's log-ratio.

OpenUnlearning (``SimNPO.compute_loss``) writes the forget term with the mean token NLL
ℓ̄ = −log π_θ(y|x)/|y| and a margin δ: −(2/β)·log σ(β·(ℓ̄ − δ)). Since β·(ℓ̄ − δ) =
−(β/|y|)·log π_θ(y|x) − β·δ, the two agree with γ = β·δ (δ = γ/β); both default to no margin
(γ = δ = 0). OpenUnlearning also weights the forget term by its ``gamma`` (0.125 in its TOFU config)
against ``alpha`` = 1 on retain; here the forget weight is 1, so its setting is α = alpha/gamma = 8 (with
AdamW the common scale of the loss hardly matters).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch.nn.functional as F

from bench.method import LossMethod
from bench.retain import RetainTerm
from bench.scoring import sequence_logprob


@dataclass
class SimNPO(RetainTerm, LossMethod):
    """lr: peak learning rate. beta: inverse temperature β (> 0). Defaults for the tiny model (default
    world, seed 0, measured): OpenUnlearning's β = 4.5 saturates (the forget term's weight σ(−β·ℓ̄)
    vanishes once the mean NLL is ~1 nat, before forced choice moves): lr 1e-4 / 1e-3 stop at forget
    mcq 0.90 / 0.77 after 300 steps; β = 1: lr 1e-4 0.46, 3e-4 0.35, 1e-3 reaches it in 80 steps
    (retain em 0.99, general em 0.83); β = 0.5, lr 3e-4 reaches it in 100 steps (retain em 0.995,
    general em 0.90).
    gamma: reward margin γ of the paper (≥ 0; OpenUnlearning's delta = γ/β; default 0 as both).
    alpha: retain weight (≥ 0; 0: forget term only). retain_loss: ``nll`` (default) or ``kl``."""
    shardable: ClassVar[bool] = True  # loss only: verified across processes (tests/test_distributed.py)

    lr: float = 3e-4
    beta: float = 0.5
    gamma: float = 0.0
    alpha: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.beta > 0:
            raise ValueError(f"SimNPO: method.beta must be > 0, got {self.beta}; e.g. method.beta=4.5")
        if not self.gamma >= 0:
            raise ValueError(f"SimNPO: method.gamma must be >= 0, got {self.gamma}; e.g. method.gamma=0")
        if not self.alpha >= 0:
            raise ValueError(f"SimNPO: method.alpha must be >= 0, got {self.alpha}; e.g. method.alpha=1.0")

    def forget_term(self, model, batch):
        logp, n = sequence_logprob(model, batch)
        return -(2.0 / self.beta) * F.logsigmoid(-(self.beta / n.clamp(min=1)) * logp - self.gamma).mean()

    def loss(self, model, batch):
        forget = self.forget_term(model, batch.forget)
        return forget + self.alpha * self.retain_term(model, batch.retain) if self.alpha else forget
