"""The last decoder block computed only where logits are read (teacher-forced scoring's forward).

In a packed scoring pass (``bench.scoring``) about one position in six predicts a scored label; the
rest are prompt tokens whose last-block output nothing reads. Every earlier block must run at every
position (its outputs become the last block's keys and values), but the last block's queries,
attention output, MLP, and everything after it only matter where logits are kept. ``last_block_at``
makes a Llama's own forward compute its last block there alone; the embedding, the mask, the rotary
tables, the earlier blocks, the final norm and the output head stay the model's own code, and hooks
on the whole model still run. On the default 2-block model an em pass is ~1.4× faster, with logits
bitwise equal to the whole forward on the CPU it was measured on (float rounding elsewhere: a GEMM
over fewer rows may sum in another order; tests/test_fast_paths.py checks to 1e-5 and argmax equality).

Only a model this is provably the same function for takes it: a ``LlamaForCausalLM`` whose last block
and its attention are transformers' own classes, with sdpa or eager attention, nothing hooked on the
last block, the decoder, the norm or the head (a method's hook there, e.g. MRP projecting the last
block's output, would be skipped or read unset positions) nor on the model's inputs, no global module hooks, and gradients off
(scoring only: training keeps the whole forward). Any other model runs whole.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch.nn.modules import module as nn_module
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.llama import modeling_llama as llama


def _hooked(module: torch.nn.Module) -> bool:
    return any(getattr(m, name) for m in module.modules()
               for name in ("_forward_hooks", "_forward_pre_hooks"))


def eligible_last_block(model: torch.nn.Module) -> torch.nn.Module | None:
    """``model``'s last decoder block where ``last_block_at`` computes the same function, else None."""
    if torch.is_grad_enabled() or not isinstance(model, llama.LlamaForCausalLM):
        return None
    config, decoder = model.config, model.model
    layers = getattr(decoder, "layers", None)
    if (config._attn_implementation not in ("sdpa", "eager") or not layers
            or len(layers) != config.num_hidden_layers):
        return None
    block = layers[-1]
    if (type(block).forward is not llama.LlamaDecoderLayer.forward
            or type(block.self_attn).forward is not llama.LlamaAttention.forward
            or "forward" in vars(block)):
        return None
    if nn_module._global_forward_hooks or nn_module._global_forward_pre_hooks:
        return None
    # A hook on the whole model's output sees only the kept logits (the same either way); one on its inputs could
    # change which positions are kept, so it, like any hook on what reads the last block's output, keeps it whole.
    if (any(_hooked(m) for m in (block, decoder.norm, model.lm_head)) or decoder._forward_hooks
            or decoder._forward_pre_hooks or model._forward_pre_hooks):
        return None
    return block


@contextmanager
def last_block_at(model: torch.nn.Module, keep: torch.Tensor) -> Iterator[bool]:
    """Inside the block, ``model``'s forward on a [rows, width] input computes its last decoder block only
    at the positions ``keep`` [rows, width] marks (elsewhere the block's output is its input: read only
    through logits kept at ``keep`` alone, i.e. called with ``logits_to_keep=keep``). Yields whether the
    model takes the shortcut (``eligible_last_block``); one that does not runs whole."""
    block = eligible_last_block(model)
    if block is None:
        yield False
        return

    def forward(hidden_states, attention_mask=None, position_embeddings=None, **kwargs):
        if not _fits(hidden_states, attention_mask, keep):
            return llama.LlamaDecoderLayer.forward(block, hidden_states, attention_mask=attention_mask,
                                                   position_embeddings=position_embeddings, **kwargs)
        return _block_at(block, hidden_states, attention_mask, position_embeddings, keep)

    block.forward = forward
    try:
        yield True
    finally:
        del block.forward


def _fits(hidden: torch.Tensor, mask: torch.Tensor | None, keep: torch.Tensor) -> bool:
    rows, width = hidden.shape[:2]
    return (mask is not None and mask.dim() == 4 and tuple(mask.shape[-2:]) == (width, width)
            and mask.shape[0] in (1, rows) and tuple(keep.shape) == (rows, width) and bool(keep.any()))


def _rotary(t: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``apply_rotary_pos_emb``'s operations on one tensor (queries and keys take different tables here)."""
    return (t * cos.unsqueeze(1)) + (llama.rotate_half(t) * sin.unsqueeze(1))


def _block_at(block, hidden: torch.Tensor, mask: torch.Tensor, position_embeddings, keep: torch.Tensor) -> torch.Tensor:
    """``LlamaDecoderLayer.forward`` at ``keep`` only (the same operations, on fewer query rows)."""
    attn = block.self_attn
    rows, width, _ = hidden.shape
    head_dim = attn.head_dim
    counts = keep.sum(1)
    n_q = int(counts.max())
    # Each row's kept positions in order, then unkept ones as filler (computed, then dropped).
    at = torch.sort((~keep).to(torch.uint8), dim=1, stable=True).indices[:, :n_q]
    filled = torch.arange(n_q, device=keep.device)[None, :] < counts[:, None]

    def take(t: torch.Tensor) -> torch.Tensor:  # [rows or 1, width, d] -> [rows, n_q, d]
        return t.expand(rows, *t.shape[1:]).gather(1, at[..., None].expand(-1, -1, t.shape[-1]))

    x = block.input_layernorm(hidden)  # every position: the keys and values
    keys = attn.k_proj(x).view(rows, width, -1, head_dim).transpose(1, 2)
    values = attn.v_proj(x).view(rows, width, -1, head_dim).transpose(1, 2)
    queries = attn.q_proj(take(x)).view(rows, n_q, -1, head_dim).transpose(1, 2)
    cos, sin = position_embeddings
    keys, queries = _rotary(keys, cos, sin), _rotary(queries, take(cos), take(sin))
    mask = mask.expand(rows, *mask.shape[1:])
    mask = mask.gather(2, at[:, None, :, None].expand(-1, mask.shape[1], -1, width))
    attention = ALL_ATTENTION_FUNCTIONS.get_interface(attn.config._attn_implementation, llama.eager_attention_forward)
    out, _ = attention(attn, queries, keys, values, mask, dropout=0.0, scaling=attn.scaling)
    out = attn.o_proj(out.reshape(rows, n_q, -1).contiguous())
    read = take(hidden) + out
    read = read + block.mlp(block.post_attention_layernorm(read))
    where = keep.nonzero(as_tuple=True)  # row-major, as ``read[filled]``
    return hidden.index_put(where, read[filled])
