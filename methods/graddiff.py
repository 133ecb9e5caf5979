"""Gradient difference (GradDiff, "GD"): ascend on forget, descend on retain.

L = −NLL_f + α·NLL_r.
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.method import LossMethod
from bench.scoring import mean_nll


@dataclass
class GradDiff(LossMethod):
    """lr: peak learning rate. alpha: weight of the retain cross-entropy (≥ 0; 0 gives GA)."""

    lr: float = 1e-4
    alpha: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.alpha < 0:
            raise ValueError(f"GradDiff: alpha must be >= 0, got {self.alpha}")

    def loss(self, model, batch):
        return -mean_nll(model, batch.forget) + self.alpha * mean_nll(model, batch.retain)
