"""Gradient ascent (GA): raise the forget answers' cross-entropy.

L = −NLL_f. Unbounded below: run long or at a high learning rate it collapses the model, which
is why the shared stopping rule (stop at the forget target) matters most for GA.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from bench.method import LossMethod
from bench.scoring import mean_nll


@dataclass
class GradientAscent(LossMethod):
    """lr: peak learning rate (tiny-model default; smaller for bigger models)."""
    shardable: ClassVar[bool] = True  # loss only: verified across processes (tests/test_distributed.py)

    lr: float = 1e-4

    def loss(self, model, batch):
        return -mean_nll(model, batch.forget)
