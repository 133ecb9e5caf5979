"""The model before unlearning, for methods that compare with it (NPO, DPO, KL retain, RMU, UNDIAL ...).

Two ways, one per kind of need:

- ``reference_logprobs``: where the data is fixed (the forget or retain examples), the reference's
  per-example answer log-probability is computed once before training, in example order, and a
  batch looks its rows up by ``batch.index``. Memory: one float per example; no second model.
- ``frozen_copy``: where a method needs the reference on something that changes during training
  or is too large to store per example (logits over the vocabulary for a KL term, hidden states of
  a layer), a frozen eval-mode copy of the model. Memory: one more copy of the weights (the tiny
  model: 2.4 MB; a 1B model in bfloat16: ~2 GB), no optimiser state.
"""

from __future__ import annotations

import copy
from typing import Sequence

import torch

from bench.data import batches_in_order
from bench.scoring import eval_mode, model_device, sequence_logprob


@torch.no_grad()
def reference_logprobs(model: torch.nn.Module, examples: Sequence[tuple[list[int], list[int]]], pad: int,
                       batch_size: int = 64) -> torch.Tensor:
    """Summed answer log-probability of each example under ``model`` as it is now, in example order
    (index it with ``batch.index``)."""
    device = model_device(model)
    with eval_mode(model):
        parts = [sequence_logprob(model, b.to(device))[0] for b in batches_in_order(examples, batch_size, pad)]
    return torch.cat(parts).detach()


def frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A frozen copy of ``model`` in eval mode (no gradients, never trained)."""
    ref = copy.deepcopy(model).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref
