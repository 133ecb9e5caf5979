"""Random projection: MRP's capacity control (issue 14).

Projects the same number of directions out of the residual stream at the same blocks as MRP
(``methods/mrp.py``: h ← h(I − QᵀQ), the same hook, the same rank rule), but the directions are
random (Gaussian rows, i.e. a uniformly random k-dim subspace after the QR) and never trained:
no forget or retain data is used. What MRP does beyond this row is the learned directions; what
this row does is what removing k of d dimensions costs by itself.

One request draws k directions per layer from a generator seeded by the run's seed and the
number of requests already on the model (continual requests get fresh directions). Zero
training steps; the stopping rule is consulted once on the projected model so the record says
where forced choice lands (``reached_target`` is usually false: a random subspace forgets little).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from bench.method import Method, ModelShape, UnlearnContext, UnlearnData
from bench.train import TrainResult
from methods.mrp import ProjectionHooks, attach_projection, check_rank_plan, projection_hooks, request_rank


@dataclass
class RandomProjection(Method):
    """layers, k, rank_budget: as MRP's (``method=mrp``), and they must match it for the control to
    mean anything: the defaults are MRP's (layer 0; k from 25% of d over the run's requests)."""

    # Under a tuned file (the paper/compare presets) layers, k and rank_budget follow MRP's tuned values
    # wherever MRP's tune grid set them (bench.tune.apply_tuned), so the control keeps MRP's rank.
    controls: ClassVar[str] = "mrp"

    layers: list[int] = field(default_factory=lambda: [0])
    k: int | None = None
    rank_budget: float = 0.25

    def __post_init__(self) -> None:
        self.layers = [int(i) for i in self.layers]
        if not self.layers:
            raise ValueError("RandomProjection: layers must name at least one decoder block, e.g. method.layers=[0]")
        if self.k is not None and self.k < 1:
            raise ValueError(f"RandomProjection: k must be >= 1 or null (from rank_budget), got {self.k}")
        if not 0 < self.rank_budget < 1:
            raise ValueError(f"RandomProjection: rank_budget is a fraction of d in (0, 1), got {self.rank_budget}")

    def check_plan(self, n_requests: int, shape: ModelShape) -> None:
        check_rank_plan(self.layers, self.k, self.rank_budget, n_requests, shape)

    def hooks(self, model: nn.Module) -> ProjectionHooks | None:
        return projection_hooks(model)

    def unlearn(self, model: nn.Module, data: UnlearnData, ctx: UnlearnContext) -> tuple[nn.Module, TrainResult]:
        start = time.perf_counter()
        proj = attach_projection(model, self.layers)
        d = proj.hidden_size
        k = request_rank(self.k, self.rank_budget, d, ctx.requests)
        generator = torch.Generator().manual_seed(ctx.seed * 1009 + len(proj.request_sizes))
        for i in proj.layer_ids:
            lp = proj.per_layer[str(i)]
            if lp.rank + k >= d:
                raise ValueError(f"RandomProjection: layer {i} would reach rank {lp.rank + k} >= d = {d}; use a smaller method.k")
            lp.start_request(torch.randn(k, d, generator=generator))
        proj.freeze()
        stopped = bool(ctx.should_stop(model, 0)) if ctx.should_stop is not None else False
        return model, TrainResult(steps=0, stopped_by_check=stopped, wall_s=time.perf_counter() - start)
