"""Gradient difference (GradDiff, "GD"): ascend on forget, descend on retain.

L = −NLL_f + α·R, R = NLL_r (``retain_loss: nll``, default) or KL(π_ref ‖ π_θ) on the retain answer
positions (``retain_loss: kl``, against a frozen copy of the model before unlearning; ``bench.retain``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from bench.method import LossMethod
from bench.retain import RetainTerm


@dataclass
class GradDiff(RetainTerm, LossMethod):
    """lr: peak learning rate. alpha: weight of the retain term (≥ 0; 0 gives GA).
    retain_loss: ``nll`` (default) or ``kl`` (``bench.retain``)."""
    shardable: ClassVar[bool] = True  # loss only: verified across processes (tests/test_distributed.py)

    lr: float = 1e-4
    alpha: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.alpha < 0:
            raise ValueError(f"GradDiff: alpha must be >= 0, got {self.alpha}")

    def loss(self, model, batch):
        forget, retain = self.forget_nll_and_retain_term(model, batch.forget, batch.retain)
        return -forget + self.alpha * retain
