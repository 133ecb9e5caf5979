"""Weight quantization of a model as deployed: the quantization attack's one operation.

``quantized_copy`` returns a deep copy of the model (forward hooks and attached modules a method
added, such as MRP's projection, come along) whose decoder-block ``nn.Linear`` weights are rounded
to ``bits``; the model passed in is never changed. What is quantized is what weight-only LLM
quantizers quantize (GPTQ, AWQ, bitsandbytes' ``load_in_4bit``/``load_in_8bit``, and Zhang et al.
2025, "Catastrophic failure of LLM unlearning via quantization"): the linear layers of the
transformer blocks. Embeddings, norms, biases, the output head and anything outside the blocks
stay in full precision.

Backends:
- ``rtn``: symmetric round-to-nearest, on any device. Per output channel (each weight row has
  one scale) or group-wise (each run of ``group_size`` consecutive input weights of a row has one
  scale; a row whose length is not a multiple keeps a shorter last group). scale = max|w| / (2^(b−1) − 1)
  over the channel or group, q(w) = scale · round(w / scale): integers in [−(2^(b−1) − 1), 2^(b−1) − 1],
  so |w − q(w)| ≤ scale / 2 for every weight.
- ``bitsandbytes`` (the package installed: never a dependency of the harness; chosen by ``auto`` on
  CUDA only, forced on CPU it works from bitsandbytes 0.46 on, checked with 0.50.2): the layers
  are replaced by ``bnb.nn.Linear8bitLt`` (LLM.int8, outlier threshold 6.0, as transformers'
  ``load_in_8bit``) or ``bnb.nn.Linear4bit`` (FP4 with blocks of 64, as ``load_in_4bit``).
"""

from __future__ import annotations

import copy
import importlib.util
from typing import Literal

import torch

from bench.model_parts import decoder_parts

Backend = Literal["rtn", "bitsandbytes"]
BNB_OUTLIER_THRESHOLD = 6.0  # transformers' BitsAndBytesConfig default (llm_int8_threshold)


def bitsandbytes_available() -> bool:
    return importlib.util.find_spec("bitsandbytes") is not None


def resolve_backend(requested: str, device: torch.device) -> Backend:
    """``auto``: bitsandbytes on CUDA when it is installed, else round-to-nearest."""
    if requested == "auto":
        return "bitsandbytes" if device.type == "cuda" and bitsandbytes_available() else "rtn"
    return requested  # type: ignore[return-value]


def rtn_scales(weight: torch.Tensor, bits: int, group_size: int | None) -> torch.Tensor:
    """Per-group scales, shape [out, n_groups] (one group per row when ``group_size`` is None)."""
    w = weight.detach().float()
    size = w.shape[1] if group_size is None else group_size
    n_groups = -(-w.shape[1] // size)
    padded = torch.nn.functional.pad(w.abs(), (0, n_groups * size - w.shape[1]))  # zeros never raise a max
    absmax = padded.view(w.shape[0], n_groups, size).amax(-1)
    return absmax / (2 ** (bits - 1) - 1)


def rtn_quantize(weight: torch.Tensor, bits: int, group_size: int | None = None) -> torch.Tensor:
    """Symmetric round-to-nearest of a [out, in] weight, per output channel (``group_size`` None) or
    per group of ``group_size`` input weights; returned dequantized, in the weight's dtype."""
    if weight.dim() != 2:
        raise ValueError(f"rtn_quantize: expected a 2-d weight, got shape {tuple(weight.shape)}")
    w = weight.detach().float()
    size = w.shape[1] if group_size is None else group_size
    scales = rtn_scales(w, bits, group_size)
    per_weight = scales.repeat_interleave(size, dim=1)[:, : w.shape[1]]
    safe = torch.where(per_weight > 0, per_weight, torch.ones_like(per_weight))  # an all-zero group stays zero
    limit = 2 ** (bits - 1) - 1
    q = torch.clamp(torch.round(w / safe), -limit, limit) * safe
    return q.to(weight.dtype)


def block_linears(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module, str, torch.nn.Linear]]:
    """(qualified name, parent module, attribute, layer) of every ``nn.Linear`` inside the decoder blocks."""
    blocks, _, _ = decoder_parts(model)
    found = []
    for b, block in enumerate(blocks):
        for name, parent in block.named_modules():
            for attr, child in parent.named_children():
                if isinstance(child, torch.nn.Linear):
                    found.append((f"block{b}.{name + '.' if name else ''}{attr}", parent, attr, child))
    if not found:
        raise ValueError("quantization: the model's decoder blocks hold no nn.Linear layer to quantize")
    return found


def _bnb_linear(layer: torch.nn.Linear, bits: int) -> torch.nn.Module:
    import bitsandbytes as bnb  # optional: only reached on CUDA with the package installed

    bias = layer.bias is not None
    if bits == 8:
        new = bnb.nn.Linear8bitLt(layer.in_features, layer.out_features, bias=bias, has_fp16_weights=False,
                                  threshold=BNB_OUTLIER_THRESHOLD)
        new.weight = bnb.nn.Int8Params(layer.weight.data.detach().cpu().half(), requires_grad=False, has_fp16_weights=False)
    else:
        new = bnb.nn.Linear4bit(layer.in_features, layer.out_features, bias=bias, compute_dtype=layer.weight.dtype,
                                quant_type="fp4")
        new.weight = bnb.nn.Params4bit(layer.weight.data.detach().cpu(), requires_grad=False, quant_type="fp4")
    if bias:
        new.bias = torch.nn.Parameter(layer.bias.data.detach().clone(), requires_grad=False)
    return new.to(layer.weight.device)  # bitsandbytes quantizes on the move to the device


@torch.no_grad()
def quantized_copy(model: torch.nn.Module, bits: int, backend: Backend = "rtn",
                   group_size: int | None = None) -> tuple[torch.nn.Module, dict[str, float]]:
    """A copy of ``model`` with its decoder-block linear weights quantized to ``bits``, and a summary
    of the change (``rtn``: relative Frobenius error over all quantized weights, number of layers)."""
    if bits not in (4, 8):
        raise ValueError(f"quantization: bits must be 4 or 8, got {bits}")
    quantized = copy.deepcopy(model)
    layers = block_linears(quantized)
    err = norm = 0.0
    for _, parent, attr, layer in layers:
        if backend == "bitsandbytes":
            setattr(parent, attr, _bnb_linear(layer, bits))
            continue
        q = rtn_quantize(layer.weight, bits, group_size)
        err += float((layer.weight.float() - q.float()).pow(2).sum())
        norm += float(layer.weight.float().pow(2).sum())
        layer.weight.copy_(q)
    summary = {"layers": float(len(layers))}
    if backend == "rtn":
        summary["relative_error"] = (err / norm) ** 0.5 if norm else 0.0
    return quantized.eval(), summary
