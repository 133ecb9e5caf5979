"""The retain term of loss-based methods, in one place: NLL (the default) or KL to the model before unlearning.

``retain_loss: nll`` (default): the mean cross-entropy of the retain batch's answer tokens
(``bench.scoring.mean_nll``), exactly what GradDiff and NPO always used; no second model.

``retain_loss: kl``: KL(π_ref ‖ π_θ) = Σ_v π_ref(v) (log π_ref(v) − log π_θ(v)), the full next-token
distributions at each answer position of the retain batch (answer tokens and the end token),
averaged over those positions. π_ref is a frozen copy of the model before unlearning
(``bench.reference.frozen_copy``), made in ``prepare`` only when this option is set (or when the
method needs the copy anyway, e.g. UNDIAL's teacher) and dropped when ``unlearn`` returns.
Direction as OpenUnlearning (``compute_kl_divergence``: ``kl_div(log π_θ, log π_ref, log_target=True)``
= KL(π_ref ‖ π_θ)); it averages over every position of the padded batch (prompt and padding
included, ``batchmean`` over B·T rows), this harness over answer positions only, as every other
loss here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F

from bench.data import Batch
from bench.reference import frozen_copy
from bench.distributions import answer_logits
from bench.scoring import mean_nll, paired_mean_nll

RETAIN_LOSSES = ("nll", "kl")


def kl_to_reference(model: torch.nn.Module, ref: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """Mean over the batch's answer positions of KL(π_ref ‖ π_θ) between next-token distributions."""
    logits, _, mask = answer_logits(model, batch)
    with torch.no_grad():
        ref_logits, _, _ = answer_logits(ref, batch)
    logq = F.log_softmax(logits, dim=-1)
    logp = F.log_softmax(ref_logits, dim=-1)
    kl = (logp.exp() * (logp - logq)).sum(-1)
    return (kl * mask).sum() / mask.sum().clamp(min=1)


@dataclass
class RetainTerm:
    """Mixin for a ``LossMethod`` with a retain term: put it before ``LossMethod`` in the bases.

    retain_loss: ``nll`` (default: answer-token cross-entropy, no second model) or ``kl``
    (KL(π_ref ‖ π_θ) on the retain answer positions against a frozen copy of the model before
    unlearning; one more copy of the weights while unlearning).
    """

    retain_loss: Literal["nll", "kl"] = "nll"
    _frozen: torch.nn.Module | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.retain_loss not in RETAIN_LOSSES:
            raise ValueError(f"{type(self).__name__}: method.retain_loss must be one of {RETAIN_LOSSES}, "
                             f"got {self.retain_loss!r}; e.g. method.retain_loss=kl")

    def needs_frozen_copy(self) -> bool:
        """Whether ``prepare`` makes the frozen copy (a method whose loss needs it anyway returns True)."""
        return self.retain_loss == "kl"

    def prepare(self, model, data, ctx):
        self._frozen = frozen_copy(model) if self.needs_frozen_copy() else None
        return super().prepare(model, data, ctx)

    def unlearn(self, model, data, ctx):
        try:
            return super().unlearn(model, data, ctx)
        finally:
            self._frozen = None  # the copy lives only while unlearning

    def retain_term(self, model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        """The unweighted retain loss on ``batch`` (the retain half of an ``UnlearnBatch``)."""
        if self.retain_loss == "nll":
            return mean_nll(model, batch)
        if self._frozen is None:
            raise RuntimeError(f"{type(self).__name__}.retain_term(kl) called before prepare(): no frozen copy")
        return kl_to_reference(model, self._frozen, batch)

    def forget_nll_and_retain_term(self, model: torch.nn.Module, forget: Batch, retain: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """``mean_nll`` of the forget batch and the retain term; with ``retain_loss: nll`` both come from
        one forward over the two batches (``bench.scoring.paired_mean_nll``)."""
        if self.retain_loss == "nll":
            return paired_mean_nll(model, forget, retain)
        return mean_nll(model, forget), self.retain_term(model, retain)
