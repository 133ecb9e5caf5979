"""Teacher-forced statistics of every labelled token, from one forward pass: what membership attacks
and memorisation metrics read (bench/metrics.py turns them into scores).

Per token: the gold token's log-prob, whether it is the argmax prediction, and the mean and
variance of log p over the vocabulary under the model's own next-token distribution (Min-K%++).
Examples are (input_ids, labels) pairs from ``bench.data`` (``encode_qa`` for a question and its
answer, ``encode_text`` for a whole passage); both label the end token last, which the
``answer_*`` views drop, as OpenUnlearning's ``tokenwise_logprobs`` does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from bench.data import batches_in_order
from bench.distributions import answer_logits
from bench.scoring import eval_mode, model_device


@dataclass
class TokenStats:
    """Per example, one array entry per labelled token (the content tokens, then the end token)."""

    logprobs: list[np.ndarray]
    hits: list[np.ndarray]  # bool: the teacher-forced argmax is the gold token
    vocab_mean: list[np.ndarray]  # μ_t = Σ_v p_v log p_v
    vocab_var: list[np.ndarray]  # σ_t² = Σ_v p_v (log p_v)² − μ_t²

    @staticmethod
    def _content(rows: list[np.ndarray]) -> list[np.ndarray]:
        return [r[:-1] for r in rows]

    @property
    def answer_logprobs(self) -> list[np.ndarray]:
        return self._content(self.logprobs)

    @property
    def answer_hits(self) -> list[np.ndarray]:
        return self._content(self.hits)

    @property
    def answer_vocab_mean(self) -> list[np.ndarray]:
        return self._content(self.vocab_mean)

    @property
    def answer_vocab_var(self) -> list[np.ndarray]:
        return self._content(self.vocab_var)


@torch.no_grad()
def token_stats(model: torch.nn.Module, examples: Sequence[tuple[list[int], list[int]]], pad: int,
                batch_size: int = 64) -> TokenStats:
    """``TokenStats`` of ``examples`` in order, batched (float32 logits, as OpenUnlearning scores them)."""
    device = model_device(model)
    out = TokenStats([], [], [], [])
    with eval_mode(model):
        for batch in batches_in_order(examples, batch_size, pad):
            logits, target, mask = answer_logits(model, batch.to(device))
            logp_all = F.log_softmax(logits, dim=-1)
            gold = torch.gather(logp_all, 2, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
            hit = logits.argmax(-1) == target
            plogp = logp_all.exp() * logp_all  # one [B, T, V] temporary: real vocabularies are large
            mean = plogp.sum(-1)
            var = (plogp * logp_all).sum(-1) - mean.square()
            del plogp
            for i in range(target.shape[0]):
                m = mask[i]
                out.logprobs.append(gold[i][m].cpu().numpy())
                out.hits.append(hit[i][m].cpu().numpy())
                out.vocab_mean.append(mean[i][m].cpu().numpy())
                out.vocab_var.append(var[i][m].cpu().numpy())
    return out
