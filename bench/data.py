"""Tokenised examples and batches: the one place prompts, answers and loss masks meet tokens.

An example is (input_ids, labels) with labels = -100 wherever no loss is taken: on the prompt
of a QA item (only answer tokens and the end token are learned and scored) and on padding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import torch

from bench.benchmark import Benchmark, BenchmarkError, QAItem

IGNORE = -100


@dataclass
class Batch:
    """A padded batch. ``index`` maps rows back to positions in the source example list."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    index: torch.Tensor

    def to(self, device: torch.device | str) -> "Batch":
        return Batch(*(t.to(device) for t in (self.input_ids, self.attention_mask, self.labels, self.index)))


def _bos(tokenizer) -> list[int]:
    return [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []


def uses_chat_template(tokenizer) -> bool:
    """Prompts go through the tokenizer's chat template iff it has one.

    ``bench.tokenizer.load_model_tokenizer`` applies the model config's ``chat_template`` flag by
    keeping or dropping the template on the loaded tokenizer, so this one attribute decides it
    everywhere (the committed tiny tokenizer has none: plain prompts).
    """
    return bool(getattr(tokenizer, "chat_template", None))


def encode_prompt(tokenizer, prompt: str) -> list[int]:
    """BOS + prompt tokens; for a chat model, the prompt as one user turn plus the assistant header.

    Special tokens are never added by the tokenizer (the harness adds BOS itself); a chat template
    that already starts with BOS is not given a second one.
    """
    if uses_chat_template(tokenizer):
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                               add_generation_prompt=True)
    ids = tokenizer(prompt, add_special_tokens=False).input_ids
    return ids if ids[:1] == _bos(tokenizer) else _bos(tokenizer) + ids


def answer_text(tokenizer, answer: str) -> str:
    """The answer as it follows the prompt: after "Answer:" a space; after a chat template's
    assistant header nothing (what lm-eval also does under a chat template)."""
    return answer if uses_chat_template(tokenizer) else " " + answer


def encode_qa(tokenizer, prompt: str, answer: str) -> tuple[list[int], list[int]]:
    """Prompt and answer are tokenised separately so the answer boundary never merges tokens.

    Answers may be several tokens (always with a real model's tokenizer): every answer token and
    the end token carry labels, and scores sum or average over all of them.
    """
    p = encode_prompt(tokenizer, prompt)
    a = tokenizer(answer_text(tokenizer, answer), add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
    return p + a, [IGNORE] * len(p) + a


def encode_text(tokenizer, text: str) -> tuple[list[int], list[int]]:
    """Free text: a language-modelling loss on every token after BOS."""
    ids = _bos(tokenizer) + tokenizer(text, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
    return ids, [IGNORE] * len(_bos(tokenizer)) + ids[len(_bos(tokenizer)):]


def collate(examples: Sequence[tuple[list[int], list[int]]], pad_id: int, index: Sequence[int] | None = None) -> Batch:
    """Right-pad to the longest example (causal scoring needs no left padding)."""
    width = max(len(ids) for ids, _ in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, (x, y) in enumerate(examples):
        ids[row, : len(x)] = torch.tensor(x)
        labels[row, : len(y)] = torch.tensor(y)
        mask[row, : len(x)] = 1
    idx = torch.tensor(list(index) if index is not None else range(len(examples)), dtype=torch.long)
    return Batch(ids, mask, labels, idx)


def pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def qa_examples(tokenizer, bench: Benchmark, items: Sequence[QAItem], all_phrasings: bool = True) -> list[tuple[list[int], list[int]]]:
    """Training examples for items: every training phrasing (knowledge injection) or only the first."""
    out = []
    for it in items:
        for q in it.train_questions if all_phrasings else (it.question,):
            out.append(encode_qa(tokenizer, bench.prompt(q), it.answer))
    return out


def instruction_examples(tokenizer, bench: Benchmark, pairs: Sequence[tuple[str, str]]) -> list[tuple[list[int], list[int]]]:
    """Benign instruction examples: loss on the response (and end token) only, as in Alpaca fine-tuning."""
    return [encode_qa(tokenizer, bench.instruction_prompt(i), r) for i, r in pairs]


class BatchStream:
    """An endless stream of shuffled batches over fixed examples, reproducible from a seed.

    Each epoch is a fresh permutation from a private generator, so two streams with the same
    seed yield the same batches whatever else draws random numbers.
    """

    def __init__(self, examples: Sequence[tuple[list[int], list[int]]], batch_size: int, pad: int, seed: int):
        if not examples:
            raise ValueError("BatchStream: no examples to draw batches from")
        self.examples = list(examples)
        self.batch_size = min(batch_size, len(self.examples))
        self.pad = pad
        self.gen = torch.Generator().manual_seed(seed)

    def __iter__(self) -> Iterator[Batch]:
        while True:
            order = torch.randperm(len(self.examples), generator=self.gen).tolist()
            for start in range(0, len(order) - self.batch_size + 1, self.batch_size):
                idx = order[start : start + self.batch_size]
                yield collate([self.examples[i] for i in idx], self.pad, idx)


def batches_in_order(examples: Sequence[tuple[list[int], list[int]]], batch_size: int, pad: int) -> Iterator[Batch]:
    """One pass in order (for scoring)."""
    for start in range(0, len(examples), batch_size):
        idx = range(start, min(start + batch_size, len(examples)))
        yield collate([examples[i] for i in idx], pad, idx)


def check_lengths(tokenizer, bench: Benchmark, max_positions: int) -> int:
    """Raise before any compute if a sequence the harness builds exceeds ``max_positions``.

    Covers every (phrasing, answer) pair an item is trained or scored with (gold, paraphrased,
    perturbed answers and options, each after each phrasing), greedy generation (prompt +
    ``bench.max_new_tokens``) and the free text. Why: a position past the model's range is a
    silent failure (garbage or an index error deep in a forward pass), and a tokenizer trained on
    another vocabulary (the committed one on TOFU text: bytes) makes sequences far longer than
    their character count suggests. Returns the longest length found.
    """
    def n_tokens(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False).input_ids)

    bos = len(_bos(tokenizer))
    longest, worst = 0, ""
    for it in bench.items:
        phrasings = dict.fromkeys((*it.train_questions, *((it.paraphrase,) if it.paraphrase else ())))
        prompt = max(len(encode_prompt(tokenizer, bench.prompt(q))) for q in phrasings)  # BOS and any chat template
        answers = dict.fromkeys((it.answer, *((it.paraphrased_answer,) if it.paraphrased_answer else ()),
                                 *it.perturbed, *it.options))
        answer = max(n_tokens(answer_text(tokenizer, a)) + 1 for a in answers)  # + end token
        n = prompt + max(answer, bench.max_new_tokens)
        if n > longest:
            longest, worst = n, f"item {it.id!r} (prompt {prompt} tokens, answer up to {answer}, " \
                                f"generation budget {bench.max_new_tokens})"
    for i, (instruction, response) in enumerate(bench.instructions):
        n = len(encode_prompt(tokenizer, bench.instruction_prompt(instruction))) + n_tokens(answer_text(tokenizer, response)) + 1
        if n > longest:
            longest, worst = n, f"instructions[{i}] ({n} tokens)"
    for kind in ("general_text", "forget_text"):
        for i, t in enumerate(getattr(bench, kind)):
            n = bos + n_tokens(t) + 1
            if n > longest:
                longest, worst = n, f"{kind}[{i}] ({n} tokens)"
    for what, text, generated in bench.scored_sequences():
        n = bos + n_tokens(text) + generated
        if n > longest:
            longest, worst = n, f"{what} ({n} tokens with the {generated} generated or end token(s))"
    if longest > max_positions:
        raise BenchmarkError(
            f"benchmark {bench.name!r}: {worst} needs {longest} positions but the model has "
            f"max_position_embeddings={max_positions}. Raise model.arch.max_position_embeddings, lower "
            "benchmark.max_new_tokens, shorten the data, or use a tokenizer that covers its vocabulary.")
    return longest
