"""The parts of a (possibly wrapped) causal LM that suites read: decoder blocks, final norm, output head.

Suites reach them by structure, never by method name, so a model a method changed (MRP's forward
hooks on the blocks) is read as deployed: hooks registered here run after the method's own.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from transformers import PreTrainedModel


def decoder_parts(model: torch.nn.Module) -> tuple[list[torch.nn.Module], torch.nn.Module, torch.nn.Module]:
    """Decoder blocks, final norm and output embedding of the causal LM inside ``model``."""
    lm = next((m for m in model.modules() if isinstance(m, PreTrainedModel) and m.get_output_embeddings() is not None), None)
    if lm is None:
        raise ValueError("no causal LM with an output embedding inside the model; this suite needs one")
    decoder = lm.get_decoder() if hasattr(lm, "get_decoder") else lm.model
    layers, norm = getattr(decoder, "layers", None), getattr(decoder, "norm", None)
    if layers is None or norm is None:
        raise ValueError(f"{type(decoder).__name__} has no `layers`/`norm`; this suite needs a Llama-like decoder")
    return list(layers), norm, lm.get_output_embeddings()


@contextmanager
def block_outputs(model: torch.nn.Module) -> Iterator[list[torch.Tensor]]:
    """Inside the block, each forward pass appends the residual stream after every decoder block (in
    order) to the yielded list; the caller clears it between passes. The hooks are removed on exit."""
    blocks, _, _ = decoder_parts(model)
    states: list[torch.Tensor] = []

    def hook(_mod, _inp, out):
        states.append(out[0] if isinstance(out, tuple) else out)

    handles = [b.register_forward_hook(hook) for b in blocks]
    try:
        yield states
    finally:
        for h in handles:
            h.remove()
        states.clear()
