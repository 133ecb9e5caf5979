"""Ssiuu: attribution-regularised unlearning (Yang et al., ICLR 2026, arXiv 2509.22263), Algorithm 1.

Unlearning with a plain loss (GA, GradDiff, NPO) often *hides* a fact: it grows new negative
contributions ("spurious unlearning neurons") that push the answer down while the neurons that
carry it stay intact, and a little relearning undoes the hiding. Ssiuu adds a penalty that keeps
negative attributions from growing. Per step t, on the attribution set S:

    g   = ∂/∂φ Σ_{(x,y)∈S} P_φ(y|x)          (sequence probability, not log-probability)
    A_t = φ ⊙ g                               (per-parameter attribution)
    M_t = {j : A_t[j] < 0}
    R_t = Σ_{j∈M_t} (A_{t−1}[j] − A_t[j])²    (A_{t−1} stored detached; R_1 = 0)
    L   = L_base + λ·R_t

``attribution_set``: ``forget`` (default, the paper's Appendix B): S = the whole forget set (or a
fixed subset of ``attribution_max`` examples drawn once from the run's seed when it is larger),
the same facts at every step, so R_t measures how the attribution of those facts changes;
``batch``: S = the step's forget batch (the earlier reading: consecutive steps see disjoint
batches, so R_t mostly measures batch-to-batch noise).

``penalty_grad``: ``surrogate`` (the paper's): g held constant, ∂R_t/∂φ ≈ 2(A_t − A_{t−1})⊙g on
M_t; ``exact``: the true gradient of R_t with A_{t−1} fixed, which adds the Hessian term
2·H(m⊙Δ⊙φ) (H = ∂²ΣP/∂φ², Δ = A_t − A_{t−1}, m the mask, piecewise constant), computed as one
Hessian-vector product by double backward. The surrogate's term vanishes where g does; the
exact one need not (a saturated P has a tiny g but not a tiny H). ``after_backward`` adds λ times
the chosen gradient to ``p.grad`` after the base loss's backward (before clipping and the step);
tests/test_ssiuu.py checks both against autograd. Cost per step (``python -m bench.perf.step_cost``):
one forward and backward of ΣP on S (plus a double backward for ``exact``) and one
parameter-sized buffer for A_{t−1}.

Reading of the paper kept here: the anchor is the previous step (not the model before
unlearning), P includes the end token (the answer as the scorer sees it), and P vanishes for
long answers (keep them short).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

import contextlib

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from bench.data import batches_in_order, pad_id
from bench.method import LossMethod, UnlearnBatch
from bench.scoring import sequence_logprob
from bench.settings import bounded
from methods.graddiff import GradDiff
from methods.npo import NPO

BASES = ("graddiff", "npo")
CHUNK = 64  # examples per forward pass of the attribution (bounds activation memory on the forget set)


@dataclass
class Ssiuu(LossMethod):
    """lr: peak learning rate. lam: weight λ of the attribution penalty (≥ 0; 0 gives the base
    method exactly); its scale depends on the model and on the size of the attribution set (ΣP
    sums over it, so R grows with its square), so sweep it (README "Ssiuu's λ").
    attribution_set: ``forget`` (the paper's: the whole forget set, or a fixed subset of
    ``attribution_max`` examples) or ``batch`` (the step's forget batch).
    attribution_max: the budget of the ``forget`` set in examples (one per trained phrasing);
    128 covers the default world's 96 forget examples; a larger forget set uses a fixed
    seeded subset of this size at every step.
    penalty_grad: ``surrogate`` (g held constant, the paper's) or ``exact`` (adds the Hessian term
    by one double backward). base: the base loss, ``graddiff`` (the paper's, default) or ``npo``.
    alpha: retain weight of the base loss. beta: NPO's inverse temperature (base=npo only).
    """
    unshardable_reason: ClassVar[str] = "its gradient edit (after_backward) needs whole gradients, a rank holds a shard"

    lr: float = 1e-4
    lam: float = 1.0
    attribution_set: Literal["forget", "batch"] = "forget"
    attribution_max: int = bounded(128, ge=1)
    penalty_grad: Literal["surrogate", "exact"] = "surrogate"
    base: Literal["graddiff", "npo"] = "graddiff"
    alpha: float = 1.0
    beta: float = 0.1
    penalties: list[float] = field(default_factory=list, init=False, repr=False)  # R_t per step (R_1 = 0)
    _base: LossMethod = field(init=False, repr=False)
    _prev: list[torch.Tensor] | None = field(default=None, init=False, repr=False)
    _attribution_batches: list = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.lam >= 0:
            raise ValueError(f"Ssiuu: lam must be >= 0, got {self.lam}; e.g. method.lam=1.0")
        if self.base not in BASES:
            raise ValueError(f"Ssiuu: base must be one of {BASES}, got {self.base!r}; e.g. method.base=npo")
        if self.attribution_set not in ("forget", "batch"):
            raise ValueError(f"Ssiuu: attribution_set must be 'forget' or 'batch', got {self.attribution_set!r}")
        if self.penalty_grad not in ("surrogate", "exact"):
            raise ValueError(f"Ssiuu: penalty_grad must be 'surrogate' or 'exact', got {self.penalty_grad!r}")
        if self.attribution_max < 1:
            raise ValueError(f"Ssiuu: attribution_max must be >= 1, got {self.attribution_max}")
        # The base method validates its own weights (alpha >= 0, beta > 0).
        if self.base == "graddiff":
            self._base = GradDiff(lr=self.lr, optimizer=self.optimizer, alpha=self.alpha)
        else:
            self._base = NPO(lr=self.lr, optimizer=self.optimizer, beta=self.beta, alpha=self.alpha)

    def prepare(self, model, data, ctx):
        self._prev = None
        self.penalties = []
        self._attribution_batches = []
        if self.attribution_set == "forget":
            examples = data.examples("forget")
            if len(examples) > self.attribution_max:  # a fixed subset: the same facts at every step
                g = torch.Generator().manual_seed(ctx.seed)
                keep = sorted(torch.randperm(len(examples), generator=g)[: self.attribution_max].tolist())
                examples = [examples[i] for i in keep]
            self._attribution_batches = [b.to(ctx.device) for b in batches_in_order(examples, CHUNK, pad_id(data.tokenizer))]
        self._base.prepare(model, data, ctx)

    def loss(self, model, batch):
        return self._base.loss(model, batch)

    def attribution_batches(self, batch: UnlearnBatch) -> list:
        return self._attribution_batches if self.attribution_set == "forget" else [batch.forget]

    @staticmethod
    def attribution(model: torch.nn.Module, batches, create_graph: bool = False) -> tuple[list[torch.nn.Parameter], list[torch.Tensor], list[torch.Tensor]]:
        """Trainable parameters φ, g = ∂ΣP/∂φ summed over ``batches``, and A = φ ⊙ g (detached).

        With ``create_graph`` the returned g keep their graph (for the Hessian-vector product); attention
        then runs on the math kernel (the fused CPU/CUDA kernels have no double backward)."""
        params = [p for p in model.parameters() if p.requires_grad]
        with sdpa_kernel([SDPBackend.MATH]) if create_graph else contextlib.nullcontext():
            total = Ssiuu._summed_grads(model, params, batches, create_graph)
        # fp32 attributions whatever the weights' dtype: the penalty differences A_t − A_{t−1} vanish in bf16.
        return params, total, [p.detach().float() * g.detach().float() for p, g in zip(params, total)]

    @staticmethod
    def _summed_grads(model, params, batches, create_graph: bool) -> list[torch.Tensor]:
        total: list[torch.Tensor] | None = None
        for b in batches:
            logp, _ = sequence_logprob(model, b)
            grads = torch.autograd.grad(logp.exp().sum(), params, allow_unused=True, create_graph=create_graph)
            grads = [torch.zeros_like(p) if g is None else (g if create_graph else g.detach()) for p, g in zip(params, grads)]
            total = grads if total is None else [t + g for t, g in zip(total, grads)]
        return total

    def after_backward(self, model, batch):
        """Add λ·∂R_t/∂φ (surrogate: 2(A_t − A_{t−1})⊙g on M_t; exact: plus 2·H(m⊙Δ⊙φ)) to the base gradient."""
        exact = self.penalty_grad == "exact" and self.lam > 0 and self._prev is not None
        params, grads, attr = self.attribution(model, self.attribution_batches(batch), create_graph=exact)
        penalty = 0.0
        if self._prev is not None:
            extras, masked_diffs = [], []
            for g, a, a_prev in zip(grads, attr, self._prev):
                diff = torch.where(a < 0, a - a_prev, torch.zeros_like(a))  # m ⊙ Δ
                penalty += float(diff.pow(2).sum())
                extras.append(2.0 * self.lam * diff * g.detach())
                masked_diffs.append(diff)
            if exact:  # H(m⊙Δ⊙φ) = ∂/∂φ <g, m⊙Δ⊙φ> with the vector held fixed
                dot = sum((g * (d * p.detach())).sum() for g, d, p in zip(grads, masked_diffs, params))
                with sdpa_kernel([SDPBackend.MATH]):
                    hvp = torch.autograd.grad(dot, params, allow_unused=True) if dot.requires_grad else [None] * len(params)
                extras = [e if h is None else e + (2.0 * self.lam) * h.detach() for e, h in zip(extras, hvp)]
            if self.lam:
                for p, extra in zip(params, extras):
                    extra = extra.to(p.dtype)  # the fp32 attributions' edit, in the weights' dtype
                    p.grad = extra if p.grad is None else p.grad.add_(extra)
        self.penalties.append(penalty)
        self._prev = attr
