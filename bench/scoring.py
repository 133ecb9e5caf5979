"""Batched, teacher-forced scoring of answers, and greedy generation for ROUGE and examples.

Exact match is computed teacher-forced: the greedy answer equals the gold answer (followed by
the end token) exactly when the argmax at every gold answer position is the gold token, so one
batched forward pass gives greedy decoding's verdict (tests/test_scoring.py checks this
against ``model.generate``).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from bench.data import Batch, batches_in_order, encode_prompt, encode_qa, pad_id
from bench.distributions import answer_logits
from bench.memory import fitting


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """The model in eval mode inside the block, its own training flag restored after (even on error)."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def token_logprobs(model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Log-prob of each label token, whether it is the argmax, and the loss mask; shapes [B, T−f],
    where f ≥ 1 is the batch's first labelled position.

    Logits are computed only from the position before the first label on (``logits_to_keep``):
    for QA pairs the prompt is most of the sequence and the vocabulary projection and log-softmax
    over the prompt would be wasted (a third of a tiny model's scoring time).
    """
    logits, target, mask = answer_logits(model, batch)
    safe = target.clamp(min=0)
    logp = torch.gather(F.log_softmax(logits, dim=-1), 2, safe.unsqueeze(-1)).squeeze(-1)
    hit = logits.argmax(-1) == safe
    return logp * mask, hit | ~mask, mask


def sequence_logprob(model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of answer-token log-probs per row and the number of answer tokens (differentiable)."""
    logp, _, mask = token_logprobs(model, batch)
    return logp.sum(-1), mask.sum(-1)


def mean_nll(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """Mean cross-entropy over all answer tokens of the batch (the usual fine-tuning loss)."""
    logp, _, mask = token_logprobs(model, batch)
    return -logp.sum() / mask.sum().clamp(min=1)


@dataclass
class AnswerScores:
    """Per-item scores of one answer string per prompt."""

    sum_logprob: np.ndarray
    n_tokens: np.ndarray
    exact: np.ndarray  # bool: greedy decoding would produce exactly this answer then stop
    token_logprobs: list[np.ndarray]  # every labelled token: the answer tokens, then the end token

    @property
    def mean_logprob(self) -> np.ndarray:
        return self.sum_logprob / self.n_tokens

    @property
    def answer_logprobs(self) -> list[np.ndarray]:
        """Per-token log-probs of the answer tokens only, without the final end token.

        ``encode_qa`` labels the answer tokens and then one end token, so this drops the last
        entry of each row. Membership attacks score these (OpenUnlearning's ``tokenwise_logprobs``
        drops the end-token prediction too); every other metric keeps the end token.
        """
        return [lp[:-1] for lp in self.token_logprobs]

    @property
    def option_logprob(self) -> np.ndarray:
        """Summed log-prob of the answer tokens without the end token: the forced-choice score of an
        option (as lm-eval scores multiple choice). With the end token, a method could pass the
        stopping rule by making the end token after the gold option unlikely (GradDiff and NPO
        lower it by ~1 nat on the default world; bench/perf/end_token_check.py)."""
        return np.array([lp.sum(dtype=np.float64) for lp in self.answer_logprobs])


@torch.no_grad()
def score_answers(model, tokenizer, prompts: Sequence[str], answers: Sequence[str], batch_size: int = 64) -> AnswerScores:
    """Teacher-forced scores of ``answers[i]`` after ``prompts[i]``, in batches."""
    examples = [encode_qa(tokenizer, p, a) for p, a in zip(prompts, answers, strict=True)]
    device = model_device(model)

    def scored(size: int) -> AnswerScores:  # the whole pass at one batch size (bench.memory)
        sums, counts, exact, per_token = [], [], [], []
        with eval_mode(model):
            for batch in batches_in_order(examples, size, pad_id(tokenizer)):
                logp, hit, mask = token_logprobs(model, batch.to(device))
                sums.append(logp.sum(-1).cpu())
                counts.append(mask.sum(-1).cpu())
                exact.append(hit.all(-1).cpu())
                per_token += [row[m].cpu().numpy() for row, m in zip(logp, mask)]
        return AnswerScores(torch.cat(sums).double().numpy(), torch.cat(counts).numpy(), torch.cat(exact).numpy(), per_token)

    return fitting(scored, batch_size)


@torch.no_grad()
def greedy_answers(model, tokenizer, prompts: Sequence[str], max_new_tokens: int = 8, batch_size: int = 64) -> list[str]:
    """Greedy generation (left-padded batches); the text up to the end token, stripped."""
    device = model_device(model)
    pad = pad_id(tokenizer)

    def generated(size: int) -> list[str]:  # the whole pass at one batch size (bench.memory)
        out: list[str] = []
        with eval_mode(model):
            for start in range(0, len(prompts), size):
                chunk = [encode_prompt(tokenizer, p) for p in prompts[start : start + size]]
                width = max(map(len, chunk))
                ids = torch.tensor([[pad] * (width - len(c)) + c for c in chunk], device=device)
                mask = torch.tensor([[0] * (width - len(c)) + [1] * len(c) for c in chunk], device=device)
                gen = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                                     pad_token_id=pad, eos_token_id=tokenizer.eos_token_id)
                for row in gen[:, width:].tolist():
                    if tokenizer.eos_token_id in row:
                        row = row[: row.index(tokenizer.eos_token_id)]
                    out.append(tokenizer.decode(row, skip_special_tokens=True).strip())
        return out

    return fitting(generated, batch_size)
