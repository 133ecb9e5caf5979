"""Negative preference optimisation (NPO; Zhang et al. 2024), "+ retain" variant.

L = (2/β)·mean_f log(1 + exp(β·(log π_θ(y|x) − log π_ref(y|x)))) + α·R, R = NLL_r (``retain_loss: nll``,
default) or KL(π_ref ‖ π_θ) on the retain answer positions (``retain_loss: kl``; ``bench.retain``).

π_ref is the model before unlearning. Its log-probabilities on the forget examples never
change, so they are computed once in ``prepare`` (``bench.reference``) instead of keeping a second
model in memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F

from bench.data import pad_id
from bench.method import LossMethod
from bench.retain import RetainTerm
from bench.reference import reference_logprobs
from bench.scoring import sequence_logprob


@dataclass
class NPO(RetainTerm, LossMethod):
    """lr: peak learning rate. beta: inverse temperature (> 0). alpha: retain weight (0: plain NPO).
    retain_loss: ``nll`` (default) or ``kl`` (``bench.retain``)."""
    shardable: ClassVar[bool] = True  # loss only: verified across processes (tests/test_distributed.py)

    lr: float = 1e-4
    beta: float = 0.1
    alpha: float = 1.0
    _ref_logprob: torch.Tensor | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.beta > 0:
            raise ValueError(f"NPO: beta must be positive, got {self.beta}")
        if self.alpha < 0:
            raise ValueError(f"NPO: alpha must be >= 0, got {self.alpha}")

    def prepare(self, model, data, ctx):
        # Indexed by example position: forget batches carry those positions in ``index``.
        self._ref_logprob = reference_logprobs(model, data.examples("forget"), pad_id(data.tokenizer))
        return super().prepare(model, data, ctx)

    def loss(self, model, batch):
        if self._ref_logprob is None:
            raise RuntimeError("NPO.loss called before prepare(): reference log-probabilities are missing")
        logp, _ = sequence_logprob(model, batch.forget)
        ratio = logp - self._ref_logprob[batch.forget.index]
        npo = (2.0 / self.beta) * F.softplus(self.beta * ratio).mean()
        return npo + self.alpha * self.retain_term(model, batch.retain) if self.alpha else npo
