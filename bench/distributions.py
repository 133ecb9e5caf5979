"""Next-token distributions at answer positions, for losses over the whole vocabulary (KL retain,
UNDIAL, CE-U), where ``bench.scoring.token_logprobs`` gives only the gold token's log-prob.

``bench.scoring.token_logprobs`` computes the gold token's log-prob at the labelled positions only; its
rows line up with these (the same [B, T−f] layout). Logits here are computed from the position before
the first label on (``logits_to_keep``): for QA pairs the prompt is most of the sequence.
"""

from __future__ import annotations

import torch

from bench.data import IGNORE, Batch


def answer_logits(model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Float logits predicting each label token, the label tokens and the loss mask; shapes [B, T−f, V],
    [B, T−f] (−100 where masked) and [B, T−f], where f ≥ 1 is the batch's first labelled position."""
    labelled = (batch.labels[:, 1:] != IGNORE).any(0)
    first = int(labelled.nonzero()[0, 0]) + 1 if labelled.any() else max(1, batch.labels.shape[1] - 1)
    keep = batch.labels.shape[1] - first + 1
    # [-keep:] also covers a model that ignores logits_to_keep and returns every position.
    # use_cache=False: a training or scoring forward never reuses keys and values (building the
    # cache cost ~9% of a step).
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False,
                   logits_to_keep=keep).logits[:, -keep:][:, :-1].float()
    target = batch.labels[:, first:]
    return logits, target, target != IGNORE
