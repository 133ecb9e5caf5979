"""RMU: representation misdirection for unlearning (Li et al. 2024, "The WMDP benchmark", arXiv 2403.03218).

Scrambles the residual stream at one decoder block on forget tokens, keeps it on retain tokens:

    L = (1/(d·N_f)) Σ_{t∈F} ‖h_θ^ℓ(t) − c·u‖²  +  α · (1/(d·N_r)) Σ_{t∈R} ‖h_θ^ℓ(t) − h_ref^ℓ(t)‖²

h^ℓ: the output of decoder block ℓ (the residual stream after it); u: a fixed random unit vector,
drawn once per run from the run's seed as in the WMDP code (uniform in [0, 1)^d, then normalised:
all components ≥ 0); c: the steering coefficient; h_ref: a frozen copy of the model before unlearning
(``bench.reference.frozen_copy``). Only the MLPs (gate, up and down projections) of the blocks in
``layers`` are trained (default ℓ−2..ℓ clipped at 0, as in WMDP's ℓ−2..ℓ; WMDP and OpenUnlearning
train only their down projections).

Tokens (``tokens=read``, default): F and R are the positions the answer is read from, i.e. the positions whose *next* token is
an answer token (or the end token). OpenUnlearning masks the answer tokens' own positions
(labels ≠ −100); with the default world's one-token answers that mask leaves out the one position
the answer is predicted from, so it is not used here. The squared error is averaged over all masked
tokens of the batch (OpenUnlearning averages per example first; equal when answers have one length).
``tokens=all``: every real token of the sequences (prompt included), as WMDP steers its forget corpus.

On the tiny model RMU does not reach the default stopping target (forced-choice accuracy ≤ 0.30):
the forget states reach c·u almost exactly, but the remaining error still ranks the gold option first
(forget mcq ≈ 0.48 after 300 steps; conf/method/rmu.yaml lists the runs).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch

from bench.data import IGNORE, Batch
from bench.method import LossMethod, ModelShape
from bench.reference import frozen_copy
from methods.mrp import decoder_layers


def read_positions(batch: Batch) -> torch.Tensor:
    """[B, T] bool: positions whose next token is labelled (an answer or end token)."""
    mask = torch.zeros_like(batch.labels, dtype=torch.bool)
    mask[:, :-1] = batch.labels[:, 1:] != IGNORE
    return mask


def block_output(model: torch.nn.Module, batch: Batch, layer: int) -> torch.Tensor:
    """[B, T, d] output of decoder block ``layer`` (differentiable if grads are enabled)."""
    seen: list[torch.Tensor] = []

    def hook(module, args, output):
        seen.append(output[0] if isinstance(output, tuple) else output)

    handle = decoder_layers(model)[layer].register_forward_hook(hook)
    try:
        model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, logits_to_keep=1)
    finally:
        handle.remove()
    return seen[0]


def token_mask(batch: Batch, tokens: str) -> torch.Tensor:
    """The positions a term covers: ``read`` (see ``read_positions``) or ``all`` real tokens (WMDP)."""
    return read_positions(batch) if tokens == "read" else batch.attention_mask.bool()


def masked_mse(h: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Σ over masked tokens of ‖h − target‖² / (d · number of masked tokens)."""
    sq = (h.float() - target.float()).pow(2).sum(-1)
    return (sq * mask).sum() / (mask.sum().clamp(min=1) * h.shape[-1])


@dataclass
class RMU(LossMethod):
    """lr: peak learning rate. layer: block ℓ whose output is steered. layers: blocks whose MLPs are
    trained (null: ℓ−2..ℓ clipped at 0; each must be ≤ ℓ). steering: c, the norm of the target
    activation c·u (compare with the residual norm at ℓ). alpha: weight of the retain activation
    term. tokens: positions of both terms, ``read`` (default) or ``all`` real tokens (WMDP's
    choice on its forget corpus). Defaults: conf/method/rmu.yaml (12 runs on the tiny model; none
    reaches the default forget target within 300 steps, see there)."""
    unshardable_reason: ClassVar[str] = "it trains a chosen layer through forward hooks on hidden states"

    lr: float = 3e-3
    layer: int = 1
    layers: list[int] | None = None
    steering: float = 300.0
    alpha: float = 1.0
    tokens: Literal["read", "all"] = "read"
    _ref: torch.nn.Module | None = field(default=None, init=False, repr=False)
    _u: torch.Tensor | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (isinstance(self.layer, int) and self.layer >= 0):
            raise ValueError(f"RMU: method.layer must be a block index >= 0, got {self.layer!r}; e.g. method.layer=1")
        if self.layers is not None:
            bad = [i for i in self.layers if not (isinstance(i, int) and 0 <= i <= self.layer)]
            if bad or not self.layers:
                raise ValueError(f"RMU: method.layers must be a non-empty list of blocks in 0..layer={self.layer} "
                                 f"(later blocks cannot move block {self.layer}'s output), got {self.layers}; "
                                 f"e.g. method.layers=[0,1] or null")
        if not self.steering > 0:
            raise ValueError(f"RMU: method.steering must be > 0, got {self.steering}; e.g. method.steering=20")
        if not self.alpha >= 0:
            raise ValueError(f"RMU: method.alpha must be >= 0, got {self.alpha}; e.g. method.alpha=10")
        if self.tokens not in ("read", "all"):
            raise ValueError(f"RMU: method.tokens must be 'read' or 'all', got {self.tokens!r}; e.g. method.tokens=all")

    @property
    def trained_layers(self) -> list[int]:
        return list(self.layers) if self.layers is not None else list(range(max(0, self.layer - 2), self.layer + 1))

    def check_plan(self, n_requests: int, shape: ModelShape) -> None:
        if self.layer >= shape.num_layers:
            raise ValueError(f"RMU: method.layer={self.layer}, but the model has {shape.num_layers} decoder blocks; "
                             f"use 0..{shape.num_layers - 1}")

    def prepare(self, model, data, ctx):
        self._ref = frozen_copy(model)
        d = int(model.config.hidden_size)
        gen = torch.Generator().manual_seed(ctx.seed)
        u = torch.rand(d, generator=gen)
        self._u = (u / u.norm()).to(next(model.parameters()).device)

    def trainable_parameters(self, model):
        blocks = decoder_layers(model)
        return [p for i in self.trained_layers for p in blocks[i].mlp.parameters()]

    def loss(self, model, batch):
        if self._ref is None or self._u is None:
            raise RuntimeError("RMU.loss called before prepare(): the frozen reference and u are missing")
        h_f = block_output(model, batch.forget, self.layer)
        loss = masked_mse(h_f, self.steering * self._u, token_mask(batch.forget, self.tokens))
        if self.alpha:
            h_r = block_output(model, batch.retain, self.layer)
            with torch.no_grad():
                h_ref = block_output(self._ref, batch.retain, self.layer)
            loss = loss + self.alpha * masked_mse(h_r, h_ref, token_mask(batch.retain, self.tokens))
        return loss

