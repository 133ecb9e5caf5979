"""IdkDPO (TOFU's "IdkPO": DPO with an "I don't know" answer preferred to the forget answer), + retain.

L = −(2/β)·mean_f log σ(β·[(log π_θ(r|x) − log π_ref(r|x)) − (log π_θ(y|x) − log π_ref(y|x))]) + α·R

y: the forget answer (rejected); r: a refusal (preferred), one line of ``bench/assets/idk_answers.txt``
(16 short "I don't know"-style answers written for this harness), drawn per forget example,
deterministically from the run's seed and the example's position (``refusal_for``), and fixed for the
whole run. log π(·|x) is the summed log-probability of the labelled answer tokens (and the end token);
the refusal example is the forget example's own prompt tokens followed by the refusal encoded as
``bench.data.encode_qa`` encodes an answer. π_ref is the model before unlearning: its log-probabilities
of both the forget answers and the refusals never change, so they are computed once in ``prepare``
(``bench.reference.reference_logprobs``; no second model). R = NLL_r (``retain_loss: nll``, default)
or KL(π_ref ‖ π_θ) (``bench.retain``).

Scaling as OpenUnlearning (``compute_dpo_loss``, ``DPO`` trainer with the TOFU_QA_forget_idk data):
the 2/β factor in front (NPO's convention; the DPO paper has none, so a plain-DPO loss is this one
times β/2, which AdamW's step hardly sees), summed (not length-normalised) log-probabilities,
β = 0.1, retain weight 1. Differences: OpenUnlearning draws a fresh refusal from its ``idk.jsonl``
every time an example is loaded; here each example keeps one refusal, so its reference
log-probability can be precomputed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Sequence

import torch
import torch.nn.functional as F

from bench.data import IGNORE, answer_text, collate, pad_id
from bench.method import LossMethod
from bench.reference import reference_logprobs
from bench.retain import RetainTerm
from bench.scoring import sequence_logprob
from bench.tokenizer import TOKENIZER_DIR

REFUSALS_FILE = TOKENIZER_DIR.parent / "idk_answers.txt"  # bench/assets/


def load_refusals(path: Path = REFUSALS_FILE) -> list[str]:
    """The refusal answers, one per non-empty line."""
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def refusal_for(seed: int, index: int, n: int) -> int:
    """Which of ``n`` refusals example ``index`` gets in a run with ``seed`` (deterministic, platform-independent)."""
    return random.Random(f"idkdpo:{seed}:{index}").randrange(n)


def refusal_examples(tokenizer, examples: Sequence[tuple[list[int], list[int]]], refusals: Sequence[str],
                     seed: int) -> list[tuple[list[int], list[int]]]:
    """For each QA example, the same prompt tokens followed by its drawn refusal (answer tokens + end token,
    labelled), encoded as ``encode_qa`` encodes an answer."""
    out = []
    for i, (ids, labels) in enumerate(examples):
        n_prompt = next(j for j, y in enumerate(labels) if y != IGNORE)
        text = refusals[refusal_for(seed, i, len(refusals))]
        answer = tokenizer(answer_text(tokenizer, text), add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
        out.append((list(ids[:n_prompt]) + answer, [IGNORE] * n_prompt + answer))
    return out


@dataclass
class IdkDPO(RetainTerm, LossMethod):
    """lr: peak learning rate. beta: DPO inverse temperature β (> 0). alpha: retain weight (≥ 0).
    retain_loss: ``nll`` (default) or ``kl``.

    Defaults for the tiny model (default world, seed 0, measured): OpenUnlearning's β = 0.1 does not
    reach the forget target in 300 steps (lr 1e-4: forget mcq 1.00; lr 1e-3: 0.92): the refusals'
    log-probabilities (9-16 byte-level tokens) rise by tens of nats, the sigmoid saturates and the
    forget answer barely moves. β = 0.01 keeps the margin in the sigmoid's linear range longer:
    with lr 1e-3 it reaches the target in 30 steps (retain em 0.79)."""
    shardable: ClassVar[bool] = True  # loss only: verified across processes (tests/test_distributed.py)

    lr: float = 1e-3
    beta: float = 0.01
    alpha: float = 1.0
    _refusals: list[tuple[list[int], list[int]]] | None = field(default=None, init=False, repr=False)
    _ref_forget: torch.Tensor | None = field(default=None, init=False, repr=False)
    _ref_refusal: torch.Tensor | None = field(default=None, init=False, repr=False)
    _pad: int = field(default=0, init=False, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.beta > 0:
            raise ValueError(f"IdkDPO: method.beta must be > 0, got {self.beta}; e.g. method.beta=0.1")
        if not self.alpha >= 0:
            raise ValueError(f"IdkDPO: method.alpha must be >= 0, got {self.alpha}; e.g. method.alpha=1.0")

    def prepare(self, model, data, ctx):
        forget = data.examples("forget")
        self._pad = pad_id(data.tokenizer)
        self._refusals = refusal_examples(data.tokenizer, forget, load_refusals(), ctx.seed)
        # Indexed by example position: forget batches carry those positions in ``index``.
        self._ref_forget = reference_logprobs(model, forget, self._pad)
        self._ref_refusal = reference_logprobs(model, self._refusals, self._pad)
        return super().prepare(model, data, ctx)

    def refusal_batch(self, forget):
        """The refusal examples of a forget batch's rows (same order and ``index``), on its device."""
        idx = forget.index.tolist()
        return collate([self._refusals[i] for i in idx], self._pad, idx).to(forget.input_ids.device)

    def forget_term(self, model, forget):
        if self._refusals is None:
            raise RuntimeError("IdkDPO.loss called before prepare(): refusals and reference log-probabilities are missing")
        logp_y, _ = sequence_logprob(model, forget)
        logp_r, _ = sequence_logprob(model, self.refusal_batch(forget))
        i = forget.index
        margin = (logp_r - self._ref_refusal[i]) - (logp_y - self._ref_forget[i])
        return -(2.0 / self.beta) * F.logsigmoid(self.beta * margin).mean()

    def loss(self, model, batch):
        forget = self.forget_term(model, batch.forget)
        return forget + self.alpha * self.retain_term(model, batch.retain) if self.alpha else forget
