"""MRP: metamorphosis representation projection (Wu et al. 2025, arXiv 2508.15449).

An input-independent linear map after chosen decoder blocks removes a small learned subspace
from the residual stream at every token: h ← h(I − QᵀQ), where Q's rows are an orthonormal basis
(float32 QR) of the stacked directions Z = [W_1; …; W_t] of all forget requests so far. Only the
current request's W_t (k × d per chosen layer) is trained, with plain SGD on
J = −CE_forget + λ·CE_retain (answer tokens); gradients flow through the QR. Base weights stay
frozen (bit-identical). See METHODS.md "MRP" and docs/research/mrp.md for where this departs from
the public code (init direction, truncated retain subspace, no zero row, no inert LoRA).

Initialisation of W_t (per chosen layer): hidden states at the block output of the model as it
is (earlier requests' projections active; pad and BOS positions dropped), U_r = top-r right
singular vectors of the retain states with r the smallest rank reaching ``retain_energy`` of
their (uncentred) energy, capped at ``max_retain_rank`` and never the full span;
W_t⁰ = top-k right singular vectors of F(I − U_rᵀU_r).

The projection lives on the model itself: ``model.mrp_projection`` (an ``MRPProjection``
module whose per-layer ``LayerProjection`` submodules hold the frozen directions as buffers and
are registered as forward hooks on the decoder blocks). The model stays an ordinary
``transformers`` model that every suite can score, attack (``copy.deepcopy`` copies the hooks
with it) and fine-tune. ``remove_projection(model)`` takes it off (the target model again),
``save_projected`` / ``load_projected`` keep it across save and load (a plain
``from_pretrained`` of the folder would load the model without the projection).

Continual unlearning: calling ``unlearn`` on a model that already carries a projection appends
the new W_t after the frozen directions of earlier requests: the rank grows by k per request.
Rank budget (``request_rank``): with ``k: null`` (the default) each request gets
k = floor(rank_budget·d / requests), so the projector's final rank stays within rank_budget·d
however many requests the run makes (d = 128, rank_budget 0.25: k = 32 for one request, 8 each for
four); an explicit ``k`` is used as given and must keep k·requests < d.

Controls (``Method.hooks``): the run evaluates the oracle with the unlearned model's projection
attached (stage ``oracle_with_hooks``) and the unlearned model with it removed
(``unlearned_hooks_removed``: the target itself, the base weights being frozen); the method
``random_projection`` (methods/random_projection.py) projects out random directions of the same
rank at the same layers, untrained.
"""

from __future__ import annotations

import copy
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

import torch
from torch import nn

from bench.data import IGNORE, batches_in_order, pad_id
from bench.method import LossMethod, ModelShape, UnlearnBatch, UnlearnContext, UnlearnData
from bench.scoring import eval_mode, mean_nll
from bench.train import TrainConfig, TrainResult

log = logging.getLogger(__name__)

ATTR = "mrp_projection"
PROJECTION_FILE = "mrp_projection.safetensors"
PROJECTION_META = "mrp_projection.json"


# --------------------------------------------------------------------------------------------
# The projection module
# --------------------------------------------------------------------------------------------
class LayerProjection(nn.Module):
    """h ← h(I − QᵀQ) on one decoder block's output; registered on the block as a forward hook.

    ``directions`` (buffer, m × d): the frozen rows of all earlier requests, as trained (not
    orthonormalised). ``current`` (parameter, k × d, or None): the request being trained.
    """

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.register_buffer("directions", torch.zeros(0, hidden_size))
        self.current: nn.Parameter | None = None

    @property
    def rank(self) -> int:
        return int(self.directions.shape[0] + (0 if self.current is None else self.current.shape[0]))

    def stacked(self) -> torch.Tensor:
        parts = [self.directions] + ([self.current] if self.current is not None else [])
        return torch.cat([p.float() for p in parts], dim=0)

    def basis(self) -> torch.Tensor | None:
        """Q (m × d, float32, orthonormal rows) spanning the stacked directions; None if none."""
        z = self.stacked()
        if z.shape[0] == 0:
            return None
        q, _ = torch.linalg.qr(z.T, mode="reduced")  # differentiable: gradients reach ``current``
        return q.T

    def project(self, h: torch.Tensor) -> torch.Tensor:
        q = self.basis()
        if q is None:
            return h
        q = q.to(h.dtype)
        return h - (h @ q.T) @ q

    def forward(self, module: nn.Module, args, output):  # forward-hook signature
        if isinstance(output, tuple):
            return (self.project(output[0]),) + tuple(output[1:])
        return self.project(output)

    def start_request(self, init: torch.Tensor) -> nn.Parameter:
        if self.current is not None:
            raise RuntimeError("MRP: a request is already being trained on this layer")
        self.current = nn.Parameter(init.detach().to(self.directions.device, torch.float32).clone())
        return self.current

    def freeze(self) -> None:
        """Append the trained rows to the frozen directions (request done)."""
        if self.current is not None:
            self.directions = torch.cat([self.directions, self.current.detach().to(self.directions.dtype)], dim=0)
            self.current = None


class MRPProjection(nn.Module):
    """The per-layer projections of one model (``model.mrp_projection``)."""

    def __init__(self, layers: list[int], hidden_size: int) -> None:
        super().__init__()
        self.layer_ids = [int(i) for i in layers]
        self.hidden_size = int(hidden_size)
        self.per_layer = nn.ModuleDict({str(i): LayerProjection(hidden_size) for i in self.layer_ids})
        self.request_sizes: list[int] = []  # k of each frozen request (informational)

    def ranks(self) -> dict[int, int]:
        return {i: self.per_layer[str(i)].rank for i in self.layer_ids}

    def current_parameters(self) -> list[nn.Parameter]:
        return [p.current for p in self.per_layer.values() if p.current is not None]

    def freeze(self) -> None:
        k = {p.current.shape[0] for p in self.per_layer.values() if p.current is not None}
        for p in self.per_layer.values():
            p.freeze()
        if k:
            self.request_sizes.append(k.pop())


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder blocks of a causal LM (``model.model.layers`` for Llama-like models)."""
    inner = getattr(model, "model", None)
    if inner is not None and hasattr(inner, "layers"):
        return inner.layers
    if hasattr(model, "get_decoder") and hasattr(model.get_decoder(), "layers"):
        return model.get_decoder().layers
    raise ValueError(f"MRP: cannot find the decoder blocks of {type(model).__name__} (expected model.model.layers)")


def projection_of(model: nn.Module) -> MRPProjection | None:
    return getattr(model, ATTR, None)


def _hidden_size(model: nn.Module) -> int:
    return int(model.config.hidden_size)


def attach_projection(model: nn.Module, layers: list[int]) -> MRPProjection:
    """The model's projection, created (and hooked onto the blocks) on first use.

    Negative layer indices count from the end. A model already projected at other layers is an
    error: continual requests must use the same layers.
    """
    blocks = decoder_layers(model)
    bad = [i for i in layers if not -len(blocks) <= i < len(blocks)]
    if bad:
        raise ValueError(f"MRP: layers {bad} out of range for a {len(blocks)}-block model")
    resolved = sorted({i % len(blocks) for i in layers})
    existing = projection_of(model)
    if existing is not None:
        if existing.layer_ids != resolved:
            raise ValueError(f"MRP: the model is already projected at layers {existing.layer_ids}, "
                             f"this request asks for {resolved}; keep method.layers fixed across requests")
        return existing
    proj = MRPProjection(resolved, _hidden_size(model))
    device = next(model.parameters()).device
    proj.to(device)
    setattr(model, ATTR, proj)  # a registered submodule: .to(), deepcopy and state_dict see it
    for i in resolved:
        blocks[i].register_forward_hook(proj.per_layer[str(i)])
    return proj


def _is_projection_hook(hook) -> bool:
    return isinstance(hook, LayerProjection)


def remove_projection(model: nn.Module) -> MRPProjection | None:
    """Take the projection off (hooks and submodule); returns it. The base weights are untouched.

    Hooks are found by type, not by stored handles, so this also works on ``deepcopy`` copies.
    """
    for block in decoder_layers(model):
        for key in [k for k, h in block._forward_hooks.items() if _is_projection_hook(h)]:
            del block._forward_hooks[key]
    proj = projection_of(model)
    if proj is not None:
        delattr(model, ATTR)
    return proj


def save_projected(model: nn.Module, path: str | Path) -> None:
    """``model.save_pretrained(path)`` plus the projection (``mrp_projection.safetensors`` + json)."""
    from safetensors.torch import save_file

    path = Path(path)
    proj = projection_of(model)
    if proj is not None and proj.current_parameters():
        raise RuntimeError("MRP: save after the request is frozen (a W_t is still being trained)")
    if proj is None:
        model.save_pretrained(path)
        return
    detached = remove_projection(model)
    try:
        model.save_pretrained(path)  # a clean checkpoint of the (unchanged) base weights
    finally:
        _reattach(model, detached)
    save_file({f"layer{i}": proj.per_layer[str(i)].directions.float().contiguous().cpu() for i in proj.layer_ids},
              str(path / PROJECTION_FILE))
    (path / PROJECTION_META).write_text(json.dumps(
        {"layers": proj.layer_ids, "hidden_size": proj.hidden_size, "request_sizes": proj.request_sizes,
         "loader": "methods.mrp.load_projected"}, indent=1))


def _reattach(model: nn.Module, proj: MRPProjection) -> None:
    setattr(model, ATTR, proj)
    blocks = decoder_layers(model)
    for i in proj.layer_ids:
        blocks[i].register_forward_hook(proj.per_layer[str(i)])


class ProjectionHooks:
    """A model's projection as ``bench.method.Hooks``: attach a copy to another model, or remove it."""

    def __init__(self, proj: MRPProjection) -> None:
        self.proj = proj

    def attach(self, model: nn.Module) -> None:
        if projection_of(model) is not None:
            raise ValueError("MRP: the model already carries a projection")
        proj = copy.deepcopy(self.proj).to(next(model.parameters()).device)
        _reattach(model, proj)

    def remove(self, model: nn.Module) -> None:
        remove_projection(model)


def projection_hooks(model: nn.Module) -> ProjectionHooks | None:
    proj = projection_of(model)
    return None if proj is None else ProjectionHooks(proj)


def request_rank(k: int | None, rank_budget: float, hidden_size: int, requests: int) -> int:
    """Directions per layer for one request: ``k`` as given, or (k None) floor(rank_budget·d / requests)."""
    return int(k) if k is not None else int(rank_budget * hidden_size) // max(1, requests)


def check_rank_plan(layers: list[int], k: int | None, rank_budget: float, n_requests: int, shape: ModelShape) -> None:
    """The chosen blocks exist and the projector's rank, growing by k per request, stays below d."""
    missing = [i for i in layers if not 0 <= i < shape.num_layers]
    if missing:
        raise ValueError(f"method.layers={layers} names block(s) {missing}, but the model has "
                         f"{shape.num_layers} decoder blocks; use indices in 0..{shape.num_layers - 1}")
    d = shape.hidden_size
    if k is None:
        if request_rank(None, rank_budget, d, n_requests) < 1:
            raise ValueError(f"method.rank_budget={rank_budget} of d = {d} is {int(rank_budget * d)} directions, fewer "
                             f"than the {n_requests} requests; raise method.rank_budget to at least "
                             f"{math.ceil(n_requests / d * 1000) / 1000} or set method.k")
        return
    if k * n_requests >= d:
        raise ValueError(f"method.k={k} directions x {n_requests} requests = {k * n_requests} >= d = {d}: "
                         f"the projection would remove the whole residual stream; use method.k <= "
                         f"{max(1, (d - 1) // n_requests)}, or method.k=null (k from method.rank_budget per request)")


def load_projected(path: str | Path, **kwargs) -> nn.Module:
    """Load a model saved by ``save_projected`` with its projection in place.

    kwargs go to ``AutoModelForCausalLM.from_pretrained`` (e.g. ``dtype=torch.float32``).
    A folder without a projection file loads as a plain model.
    """
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    path = Path(path)
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if not (path / PROJECTION_META).exists():
        return model
    meta = json.loads((path / PROJECTION_META).read_text())
    tensors = load_file(str(path / PROJECTION_FILE))
    proj = attach_projection(model, meta["layers"])
    for i in proj.layer_ids:
        lp = proj.per_layer[str(i)]
        lp.directions = tensors[f"layer{i}"].to(lp.directions.device)
    proj.request_sizes = list(meta.get("request_sizes", []))
    return model


# --------------------------------------------------------------------------------------------
# Initialisation
# --------------------------------------------------------------------------------------------
@torch.no_grad()
def collect_states(model: nn.Module, tokenizer, examples, layers: list[int], tokens: str,
                   batch_size: int = 64) -> dict[int, torch.Tensor]:
    """Block-output hidden states (float32, N × d) at ``layers`` of the model as it is.

    Pad and BOS positions are dropped; ``tokens='answer'`` keeps only positions whose next
    token is an answer token (where the answer is read out).
    """
    blocks = decoder_layers(model)
    device = next(model.parameters()).device
    bos = tokenizer.bos_token_id
    keep: dict[str, torch.Tensor] = {}
    out: dict[int, list[torch.Tensor]] = {i: [] for i in layers}

    def capture(i):
        def hook(module, args, output):
            h = output[0] if isinstance(output, tuple) else output
            out[i].append(h[keep["mask"]].float().cpu())
        return hook

    handles = [blocks[i].register_forward_hook(capture(i)) for i in layers]  # after the projection hooks
    try:
        with eval_mode(model):
            for batch in batches_in_order(examples, batch_size, pad_id(tokenizer)):
                batch = batch.to(device)
                mask = batch.attention_mask.bool()
                if bos is not None:
                    mask &= batch.input_ids != bos
                if tokens == "answer":
                    nxt = torch.zeros_like(mask)
                    nxt[:, :-1] = batch.labels[:, 1:] != IGNORE
                    mask &= nxt
                keep["mask"] = mask
                model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    finally:
        for h in handles:
            h.remove()
    return {i: torch.cat(v) for i, v in out.items()}


def retain_basis(retain: torch.Tensor, energy: float, max_rank: int) -> torch.Tensor:
    """U_r (r × d): top-r right singular vectors of the (uncentred) retain states.

    r is the smallest rank whose squared singular values reach ``energy`` of the total, capped at
    ``max_rank``. Never the full span, so the init cannot collapse to the identity however many
    tokens there are.
    """
    _, s, vh = torch.linalg.svd(retain.double(), full_matrices=False)
    share = torch.cumsum(s**2, 0) / (s**2).sum().clamp_min(1e-30)
    r = int(torch.searchsorted(share, torch.tensor(energy, dtype=share.dtype)).item()) + 1
    return vh[: min(r, max_rank)].float()


def init_directions(forget: torch.Tensor, retain: torch.Tensor, k: int, energy: float, max_rank: int) -> tuple[torch.Tensor, int]:
    """W⁰ (k × d, unit rows): top-k principal directions of the forget states after removing U_r."""
    u = retain_basis(retain, energy, max_rank)
    f = forget.double() - (forget.double() @ u.double().T) @ u.double()
    _, _, vh = torch.linalg.svd(f, full_matrices=False)
    return vh[:k].float(), int(u.shape[0])


# --------------------------------------------------------------------------------------------
# The method
# --------------------------------------------------------------------------------------------
@dataclass
class MRP(LossMethod):
    """Hyperparameters. Defaults tuned on the tiny 2-block d=128 model and the default world by a
    small grid under the shared stopping rule (forget mcq <= chance + 0.05, cap 300 steps): layer 0
    beat layer 1 and both layers; k = 2 or 8 plateaued (forget mcq 0.83 / 0.50); k = 16, lr = 0.5
    reached the target in 100 steps. Retune k with d and the size of a request.

    layers: decoder blocks whose output is projected (negative counts from the end).
    k: directions per layer per request (the projector's rank grows by k per request); null (default):
    floor(rank_budget·d / requests), so continual runs fit (``request_rank``).
    rank_budget: with k null, the share of d the projector may take over all requests of a run, in (0, 1).
    retain_energy: share of the retain states' energy the protected subspace U_r keeps, in (0, 1).
    max_retain_rank: cap on r as a fraction of d, in (0, 1): r ≤ floor(fraction·d) and r ≤ d − k.
    init_tokens: hidden states used for the init: ``all`` real tokens or ``answer`` read-out positions.
    lam: λ, weight of the retain cross-entropy in J = −CE_forget + λ·CE_retain (≥ 0).
    lr: learning rate of W_t (rows start unit-norm; the shared grad_clip bounds each step).
    optimizer: ``sgd`` (plain SGD, as the paper) or ``adamw``.
    epochs: cap on passes over the forget examples (None: only the shared step cap and stopping rule).
    """
    unshardable_reason: ClassVar[str] = "its projection directions train outside the sharded decoder blocks (forward hooks)"

    layers: list[int] = field(default_factory=lambda: [0])
    k: int | None = None
    rank_budget: float = 0.25
    retain_energy: float = 0.9
    max_retain_rank: float = 0.5
    init_tokens: Literal["all", "answer"] = "all"
    lam: float = 1.2
    lr: float = 1.0
    optimizer: Literal["adamw", "sgd"] = "sgd"
    epochs: float | None = None
    init_info: dict = field(default_factory=dict, init=False, repr=False)

    def check_plan(self, n_requests: int, shape: ModelShape) -> None:
        """The chosen blocks must exist, and the projector's rank grows by k per request: it must stay
        below d or nothing is left."""
        check_rank_plan(self.layers, self.k, self.rank_budget, n_requests, shape)

    def hooks(self, model: nn.Module) -> ProjectionHooks | None:
        return projection_hooks(model)

    def __post_init__(self) -> None:
        super().__post_init__()  # lr > 0, optimizer
        name = type(self).__name__
        self.layers = [int(i) for i in self.layers]
        if not self.layers:
            raise ValueError(f"{name}: layers must name at least one decoder block, e.g. method.layers=[0]")
        if self.k is not None and self.k < 1:
            raise ValueError(f"{name}: k must be >= 1 or null (from rank_budget), got {self.k}")
        if not 0 < self.rank_budget < 1:
            raise ValueError(f"{name}: rank_budget is a fraction of d in (0, 1), got {self.rank_budget}")
        if not 0 < self.retain_energy < 1:
            raise ValueError(f"{name}: retain_energy must lie in (0, 1) (never the full span), got {self.retain_energy}")
        if not 0 < self.max_retain_rank < 1:
            raise ValueError(f"{name}: max_retain_rank is a fraction of d in (0, 1), got {self.max_retain_rank}")
        if self.init_tokens not in ("all", "answer"):
            raise ValueError(f"{name}: init_tokens must be 'all' or 'answer', got {self.init_tokens!r}")
        if self.lam < 0:
            raise ValueError(f"{name}: lam must be >= 0, got {self.lam}")
        if self.epochs is not None and not self.epochs > 0:
            raise ValueError(f"{name}: epochs must be positive or null, got {self.epochs}")

    def initialise(self, model: nn.Module, data: UnlearnData, proj: MRPProjection, requests: int = 1) -> None:
        d = proj.hidden_size
        k = request_rank(self.k, self.rank_budget, d, requests)
        forget = collect_states(model, data.tokenizer, data.examples("forget"), proj.layer_ids, self.init_tokens)
        retain = collect_states(model, data.tokenizer, data.examples("retain"), proj.layer_ids, self.init_tokens)
        for i in proj.layer_ids:
            lp = proj.per_layer[str(i)]
            if lp.rank + k >= d:
                raise ValueError(f"MRP: layer {i} would reach rank {lp.rank + k} >= d = {d}: the projection would "
                                 f"remove the whole residual stream; use a smaller method.k")
            max_rank = max(1, min(int(self.max_retain_rank * d), d - k - lp.rank))
            w0, r = init_directions(forget[i], retain[i], k, self.retain_energy, max_rank)
            lp.start_request(w0)
            self.init_info[i] = {"k": k, "retain_rank": r, "forget_tokens": int(forget[i].shape[0]),
                                 "retain_tokens": int(retain[i].shape[0]), "prior_rank": lp.rank - k}
        log.info("MRP init: %s", self.init_info)

    def prepare(self, model: nn.Module, data: UnlearnData, ctx: UnlearnContext) -> None:
        """Attach the projection (or reuse the one earlier requests left) and start this request's W_t."""
        self.initialise(model, data, attach_projection(model, self.layers), ctx.requests)

    def trainable_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        """Only this request's W_t: the base weights and earlier requests' directions stay frozen."""
        return projection_of(model).current_parameters()

    def train_config(self, data: UnlearnData, ctx: UnlearnContext) -> TrainConfig:
        cfg = super().train_config(data, ctx)
        if self.epochs is not None:
            n = len(data.examples("forget"))
            per_epoch = max(1, n // min(ctx.batch_size, n))
            cfg.max_steps = min(cfg.max_steps, max(1, math.ceil(self.epochs * per_epoch)))
        return cfg

    def loss(self, model: nn.Module, batch: UnlearnBatch) -> torch.Tensor:
        return -mean_nll(model, batch.forget) + self.lam * mean_nll(model, batch.retain)

    def unlearn(self, model, data, ctx: UnlearnContext) -> tuple[nn.Module, TrainResult]:
        """The shared loop; whatever happens, this request's W_t is frozen into the directions after."""
        try:
            model, result = super().unlearn(model, data, ctx)
        finally:
            proj = projection_of(model)
            if proj is not None:
                proj.freeze()
        log.info("MRP: projector ranks %s after %d steps", proj.ranks(), result.steps)
        return model, result
