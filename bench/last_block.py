"""The last decoder block computed only where logits are read (teacher-forced scoring's forward).

In a packed scoring pass (``bench.scoring``) about one position in six predicts a scored label; the
rest are prompt tokens whose last-block output nothing reads. Every earlier block must run at every
position (its outputs become the last block's keys and values), but the last block's queries,
attention output, MLP, and everything after it only matter where logits are kept. ``logits_read_at``
calls a Llama's own forward with its last block computed there alone; the embedding, the mask, the
rotary tables, the earlier blocks, the final norm and the output head stay the model's own code, and
hooks on the whole model's output still run. On the default 2-block model an em pass is ~1.4× faster,
with logits bitwise equal to the whole forward on the CPU it was measured on (elsewhere float
rounding: a GEMM over fewer rows may sum in another order; tests/test_fast_paths.py checks to 1e-5
and argmax equality).

Only a model for which this is the same function takes it (``eligible_last_block``); any other runs whole:
- exactly transformers' ``LlamaForCausalLM``, ``LlamaModel``, ``LlamaDecoderLayer`` and ``LlamaAttention``
  forwards (a subclass may read other positions), sdpa or eager attention, in eval mode, gradients off
  (scoring only: training keeps the whole forward), not compiled, no bitsandbytes layer in the last block
  (LLM.int8 picks outlier columns from every row of the batch);
- no hook on the last block, the decoder, the norm or the head (a method's hook there, e.g. MRP projecting
  the last block's output, would be skipped or would read positions left unset), none on the model's inputs
  (it could change the kept positions), no global module hook. transformers' own output-capturing hooks are
  inactive unless hidden states or attentions are asked for, which the config must not do.
``_block_at`` repeats transformers 5.x's Llama block operation by operation; the class checks pass for whatever
version is installed, so the equality tests are what guard an upgrade.
"""

from __future__ import annotations

import torch
from torch.nn.modules import module as nn_module
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.llama import modeling_llama as llama


def _hooks_of(module: torch.nn.Module) -> bool:
    """Whether ``module`` itself has a forward hook or pre-hook that can act (not transformers' output capture)."""
    return any(getattr(hook, "__name__", "") != "output_capturing_hook"
               for hooks in (module._forward_hooks, module._forward_pre_hooks) for hook in hooks.values())


def _hooked(module: torch.nn.Module) -> bool:
    return any(_hooks_of(m) for m in module.modules())


def eligible_last_block(model: torch.nn.Module) -> torch.nn.Module | None:
    """``model``'s last decoder block where ``logits_read_at`` computes the whole forward's logits, else None."""
    if (torch.is_grad_enabled() or type(model).forward is not llama.LlamaForCausalLM.forward
            or type(getattr(model, "model", None)).forward is not llama.LlamaModel.forward):
        return None
    config, decoder = model.config, model.model
    layers = decoder.layers
    if (config._attn_implementation not in ("sdpa", "eager") or not layers or len(layers) != config.num_hidden_layers
            or config.output_hidden_states or config.output_attentions):
        return None
    block = layers[-1]
    if (type(block).forward is not llama.LlamaDecoderLayer.forward
            or type(block.self_attn).forward is not llama.LlamaAttention.forward
            or block.training or "forward" in vars(block)
            or any(getattr(m, "_compiled_call_impl", None) is not None for m in (model, decoder, block))
            or any(type(m).__module__.startswith("bitsandbytes") for m in block.modules())):
        return None
    if nn_module._global_forward_hooks or nn_module._global_forward_pre_hooks:
        return None
    if any(_hooked(m) for m in (block, decoder.norm, model.lm_head)) or _hooks_of(decoder) or model._forward_pre_hooks:
        return None
    return block


def logits_read_at(model: torch.nn.Module, keep: torch.Tensor, **inputs) -> tuple[torch.Tensor, bool]:
    """``model(**inputs, logits_to_keep=keep).logits`` on a [rows, width] input, with the last decoder block
    computed only at the positions ``keep`` [rows, width] marks where the model allows it; and whether it did.
    Elsewhere the block's output is its input, which only logits outside ``keep`` would read."""
    block = eligible_last_block(model)
    if block is None:
        return model(**inputs, logits_to_keep=keep).logits, False
    used = []

    def forward(hidden_states, attention_mask=None, position_embeddings=None, **kwargs):
        del block.forward  # one call: a second forward (a hook's, a retry's) runs the block whole
        if kwargs.get("cache") is not None or not _fits(hidden_states, attention_mask, keep):
            return llama.LlamaDecoderLayer.forward(block, hidden_states, attention_mask=attention_mask,
                                                   position_embeddings=position_embeddings, **kwargs)
        used.append(True)
        return _block_at(block, hidden_states, attention_mask, position_embeddings, keep)

    block.forward = forward
    try:
        return model(**inputs, logits_to_keep=keep).logits, bool(used)
    finally:
        vars(block).pop("forward", None)


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
