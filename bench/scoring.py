"""Batched, teacher-forced scoring of answers, and greedy generation for ROUGE and examples.

Exact match is computed teacher-forced: the greedy answer equals the gold answer (followed by
the end token) exactly when the argmax at every gold answer position is the gold token, so one
batched forward pass gives greedy decoding's verdict (tests/test_scoring.py checks this
against ``model.generate``). The answers of one prompt (gold, perturbed, options) are scored from a
single pass over the prompt (``score_answers``, shared prefix; tests/test_fast_paths.py checks it
against scoring each pair on its own).
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from bench.data import IGNORE, Batch, answer_text, batches_in_order, encode_prompt, pad_id
from bench.last_block import logits_read_at
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


KEEP_MASK_FIX = "needs transformers>=5.21, whose logits_to_keep takes a boolean mask (pip install -U transformers)"


@contextmanager
def boolean_keep_supported() -> Iterator[None]:
    """Turns the IndexError an older transformers raises for a boolean ``logits_to_keep`` into the fix."""
    try:
        yield
    except IndexError as err:
        import transformers
        from packaging.version import Version

        if Version(transformers.__version__) < Version("5.21"):
            raise RuntimeError(f"transformers {transformers.__version__}: the harness {KEEP_MASK_FIX}") from err
        raise


def _flat_logits_checked(model: torch.nn.Module, logits: torch.Tensor, keep: torch.Tensor, n: int,
                         what: str) -> torch.Tensor:
    """``logits`` as a boolean ``logits_to_keep`` mask ``keep`` (n positions) returns them, [n, V]; a model that
    ignores the mask (returns every position, [*keep.shape, V]) is read at the kept positions; any other shape
    fails with the fix."""
    if logits.dim() == 3 and logits.shape[:2] == keep.shape:
        logits = logits[keep]
    if logits.dim() != 2 or logits.shape[0] != n:
        raise RuntimeError(f"{type(model).__name__} returned logits of shape {tuple(logits.shape)} for a boolean "
                           f"logits_to_keep; {what} {KEEP_MASK_FIX}")
    return logits


def _gold_logprobs(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-prob (fp32) of each row's target token in flat logits [N, V], and whether it is the argmax."""
    logits = logits.float()
    return torch.gather(F.log_softmax(logits, dim=-1), 1, target[:, None]).squeeze(1), logits.argmax(-1) == target


def token_logprobs(model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Log-prob of each label token, whether it is the argmax, and the loss mask; shapes [B, T−f],
    where f ≥ 1 is the batch's first labelled position (0 log-prob and a hit where masked).

    Logits are computed only at the positions that predict a label (a boolean ``logits_to_keep``,
    transformers ≥ 5.21): in a QA batch the prompts and the padding are most positions, and the
    vocabulary projection over them, forward and backward, was ~10% of a training step. The values
    equal the full projection's up to float rounding (bitwise on the CPU it was measured on, where a
    GEMM row does not depend on the row count); the output layer's weight gradient sums fewer rows, so
    it too equals the full one up to float rounding (tests/test_fast_paths.py).
    """
    labelled = batch.labels[:, 1:] != IGNORE  # position p predicts label p + 1
    keep = F.pad(labelled, (0, 1))
    with boolean_keep_supported():
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False,
                       logits_to_keep=keep).logits
    where = labelled.nonzero(as_tuple=True)  # row-major: the order of the model's flattened logits
    n = where[0].numel()
    logp, hit = _gold_logprobs(_flat_logits_checked(model, logits, keep, n, "answer scoring"),
                               batch.labels[:, 1:][labelled])
    first = int(where[1].min()) if n else max(labelled.shape[1] - 1, 0)
    logp_full = torch.zeros(labelled.shape, dtype=logp.dtype, device=logp.device).index_put(where, logp)
    hit_full = torch.ones(labelled.shape, dtype=torch.bool, device=hit.device).index_put(where, hit)
    return logp_full[:, first:], hit_full[:, first:], labelled[:, first:]


def paired_token_logprobs(model: torch.nn.Module, first: Batch, second: Batch
                          ) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """``token_logprobs``' log-probs and mask of two batches from one forward over both (the forget and
    retain halves of a step: one pass instead of two; on the tiny CPU model it saves under 2% of a step,
    more where per-call overhead matters, e.g. small batches on an accelerator). Each row is right-padded
    to the wider batch; padding changes no row's values beyond float noise (tests/test_fast_paths.py
    checks losses and gradients against two forwards)."""
    width = max(first.input_ids.shape[1], second.input_ids.shape[1])

    def widen(t: torch.Tensor, fill: int) -> torch.Tensor:
        return F.pad(t, (0, width - t.shape[1]), value=fill)

    # Padding is right of every real token and masked, so its token id (0) never reaches a scored position.
    both = Batch(torch.cat([widen(first.input_ids, 0), widen(second.input_ids, 0)]),
                 torch.cat([widen(first.attention_mask, 0), widen(second.attention_mask, 0)]),
                 torch.cat([widen(first.labels, IGNORE), widen(second.labels, IGNORE)]),
                 torch.cat([first.index, second.index]))
    logp, _, mask = token_logprobs(model, both)
    n = first.input_ids.shape[0]
    return (logp[:n], mask[:n]), (logp[n:], mask[n:])


def paired_mean_nll(model: torch.nn.Module, first: Batch, second: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """``mean_nll`` of each of two batches, from one forward (``paired_token_logprobs``)."""
    return tuple(-logp.sum() / mask.sum().clamp(min=1) for logp, mask in paired_token_logprobs(model, first, second))


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
    unshared: int = 0  # pairs scored without sharing their prompt's pass (a model without the packed layout)

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


class _Encodings:
    """Token ids of prompts and answers, each text tokenised once per tokenizer (the stopping rule
    scores the same options every few steps; re-tokenising them was a fifth of a scoring call).

    ``pair(p, a)`` is ``(encode_prompt(p), answer ids + end token)``, exactly ``encode_qa``'s two halves."""

    _by_tokenizer: "weakref.WeakKeyDictionary[object, _Encodings]" = weakref.WeakKeyDictionary()

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.prompts: dict[tuple[str, str | None], tuple[int, ...]] = {}
        self.answers: dict[tuple[str, str | None], tuple[int, ...]] = {}

    @classmethod
    def of(cls, tokenizer) -> "_Encodings":
        try:
            return cls._by_tokenizer.setdefault(tokenizer, cls(tokenizer))
        except TypeError:  # a tokenizer that cannot be weakly referenced: no cache across calls
            return cls(tokenizer)

    def prompt(self, prompt: str) -> tuple[int, ...]:
        # The chat template decides how both halves are encoded, and a tokenizer may gain or lose it.
        key = (prompt, getattr(self.tokenizer, "chat_template", None))
        ids = self.prompts.get(key)
        if ids is None:
            ids = self.prompts[key] = tuple(encode_prompt(self.tokenizer, prompt))
        return ids

    def answer(self, answer: str) -> tuple[int, ...]:
        key = (answer, getattr(self.tokenizer, "chat_template", None))
        ids = self.answers.get(key)
        if ids is None:
            text = self.tokenizer(answer_text(self.tokenizer, answer), add_special_tokens=False).input_ids
            ids = self.answers[key] = (*text, self.tokenizer.eos_token_id)
        return ids

    def pair(self, prompt: str, answer: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
        return self.prompt(prompt), self.answer(answer)


def shares_prefix(model: torch.nn.Module) -> bool:
    """Whether ``model`` takes the packed layout of ``_score_packed``: a Llama with eager or SDPA
    attention, which honours a custom 4D attention mask and explicit position ids (other
    architectures may drop the mask, e.g. sliding-window or flash attention; they take the plain path)."""
    config = getattr(model, "config", None)
    return (getattr(config, "model_type", None) == "llama"
            and getattr(config, "_attn_implementation", None) in ("sdpa", "eager"))


Pairs = Sequence[tuple[tuple[int, ...], tuple[int, ...]]]


def _tree_rows(pairs: Pairs, batch_size: int) -> list[list[list[int]]]:
    """Batches of rows of pair indices. Pairs are sorted by their token sequence, so sequences with a
    common start (a prompt's answers; prompts that begin alike) are neighbours, and a row takes pairs
    while its prefix tree stays within ``max(128, 2 × the longest pair)`` nodes (dense attention over a
    row costs its width squared). A batch takes rows while rows × widest row stays within
    ``batch_size`` × the longest pair, the plain path's largest batch (a row too), so no forward holds
    more positions than a plain one."""
    seqs = {i: p + a[:-1] for i, (p, a) in enumerate(pairs)}
    longest = max(len(p) + len(a) for p, a in pairs)
    budget = batch_size * longest
    row_cap = min(max(128, 2 * longest), budget)  # >= longest: every pair fits a row of its own
    rows: list[tuple[list[int], int]] = []
    prev: tuple[int, ...] = ()
    for i in sorted(seqs, key=seqs.__getitem__):
        seq = seqs[i]
        shared = 0  # in sorted order, the longest prefix shared with any earlier sequence is with the last one
        while shared < min(len(seq), len(prev)) and seq[shared] == prev[shared]:
            shared += 1
        if rows and rows[-1][1] + len(seq) - shared <= row_cap:
            rows[-1][0].append(i)
            rows[-1] = (rows[-1][0], rows[-1][1] + len(seq) - shared)
        else:
            rows.append(([i], len(seq)))
        prev = seq
    batches: list[list[list[int]]] = []
    batch: list[list[int]] = []
    width = 0
    for idx, n in rows:
        if batch and (len(batch) + 1) * max(width, n) > budget:
            batches.append(batch)
            batch, width = [], 0
        batch.append(idx)
        width = max(width, n)
    if batch:
        batches.append(batch)
    return batches


@dataclass(frozen=True)
class _PackedBatch:
    """One forward of the shared-prefix layout (CPU tensors): token ids and positions per row, which positions
    each one attends to (exactly its ancestors; the model's additive mask is built from it per call, in the model's
    dtype), the positions whose logits are read, and per pair where its labels are in the flat logits."""

    ids: torch.Tensor        # [rows, width] long
    pos: torch.Tensor        # [rows, width] long
    allowed: torch.Tensor    # [rows, 1, width, width] bool: who sees whom (the model's additive mask is built per call)
    keep: torch.Tensor       # [rows, width] bool: logits_to_keep
    picked: torch.Tensor     # [labels] long: each label's row of the flat logits
    targets: torch.Tensor    # [labels] long
    owners: tuple[tuple[int, int], ...]  # (pair index, its label count), in label order

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.ids, self.pos, self.allowed, self.keep, self.picked,
                                                          self.targets))


def _packed_layout(pairs: Pairs, batch_size: int, pad: int) -> Iterator[_PackedBatch]:
    """The batches of ``_score_packed``, one at a time: a prefix tree per row of each row's sequences (prompt +
    answer without its end token, whose successor is never scored), each distinct prefix one position at its
    depth, attending to exactly its ancestors. It depends only on the token ids, not on the weights."""
    for batch in _tree_rows(pairs, batch_size):
        trees = []  # per row: tokens, depths, parents (-1: none), and per pair the node predicting each label
        for idx in batch:
            children: list[dict[int, int]] = [{}]  # node 0 is the empty prefix (not a position)
            tokens, depths, parents, reads = [], [], [], []
            for i in idx:
                p, a = pairs[i]
                node, path = 0, []
                for depth, t in enumerate(p + a[:-1]):
                    nxt = children[node].get(t)
                    if nxt is None:
                        nxt = len(children)
                        children.append({})
                        children[node][t] = nxt
                        tokens.append(t)
                        depths.append(depth)
                        parents.append(node - 1)
                    path.append(nxt - 1)
                    node = nxt
                reads.append((i, path[len(p) - 1 :], a))  # the prompt's last position predicts the first label
            trees.append((tokens, depths, parents, reads))
        width = max(len(t[0]) for t in trees)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        pos = torch.zeros((len(batch), width), dtype=torch.long)
        allowed = np.zeros((len(batch), width, width), dtype=bool)
        allowed[:, np.arange(width), np.arange(width)] = True  # every position (padding too) sees itself
        rows, cols, targets, owners = [], [], [], []
        for r, (tokens, depths, parents, reads) in enumerate(trees):
            n = len(tokens)
            ids[r, :n] = torch.tensor(tokens)
            pos[r, :n] = torch.tensor(depths)
            for node, parent in enumerate(parents):  # parents precede children: ancestors are complete
                if parent >= 0:
                    allowed[r, node, :node] = allowed[r, parent, :node]
            for i, path, a in reads:
                rows += [r] * len(a)
                cols += path
                targets += a
                owners.append((i, len(a)))
        # Logits only where a label is read (a boolean ``logits_to_keep``: the model returns them flattened,
        # row-major): a packed row is mostly other prompts' nodes, and the vocabulary projection over every
        # node was ~15% of an em pass. Position p's row of the flat logits is keep[:p+1].sum() − 1.
        keep = np.zeros((len(batch), width), dtype=bool)
        keep[rows, cols] = True
        flat = np.cumsum(keep.ravel()) - 1
        yield _PackedBatch(ids, pos, torch.from_numpy(allowed)[:, None], torch.from_numpy(keep),
                           torch.from_numpy(flat[np.ravel_multi_index((rows, cols), keep.shape)]),
                           torch.tensor(targets, dtype=torch.long), tuple(owners))


class _LayoutCache:
    """The last layouts built, least recently used dropped first, within ``max_bytes``. The same token ids are
    scored again and again with other weights (every stage's knowledge suite, every stopping check, every
    checkpoint of every relearning attack), and building a layout was about a quarter of a relearn suite's
    scoring time (Python over every token). A layout is a function of its key, so a hit gives the same numbers.
    A layout is built one batch at a time as it is scored; one larger than the whole budget is not kept."""

    def __init__(self, max_bytes: int = 256 * 2**20) -> None:
        self.max_bytes = max_bytes
        self.entries: "OrderedDict[tuple, list[_PackedBatch]]" = OrderedDict()
        self.bytes = 0

    def get(self, pairs: Pairs, batch_size: int, pad: int, keep: bool = True) -> Iterator[_PackedBatch]:
        """The layout of ``pairs``, from the cache if there; built and kept unless ``keep=False`` (a one-off
        subset, which would only push out layouts that are scored again)."""
        key = (tuple(pairs), batch_size, pad)
        hit = self.entries.get(key)
        if hit is not None:
            self.entries.move_to_end(key)
            yield from hit
            return
        kept: list[_PackedBatch] | None = [] if keep else None
        size = 0
        for b in _packed_layout(pairs, batch_size, pad):
            if kept is not None:
                size += b.nbytes()
                if size <= self.max_bytes:
                    kept.append(b)
                else:
                    kept = None
            yield b
        if kept is not None:  # scored to the end (an out-of-memory retry abandons the generator first)
            self.entries[key] = kept
            self.bytes += size
            while self.bytes > self.max_bytes:
                _, old = self.entries.popitem(last=False)
                self.bytes -= sum(b.nbytes() for b in old)

    def clear(self) -> None:
        self.entries.clear()
        self.bytes = 0


LAYOUTS = _LayoutCache()


def _score_packed(model, pairs: Pairs, batch_size: int, pad: int, logp_out: list, hit_out: list,
                  keep_layout: bool = True, read_only_last_block: bool = True) -> None:
    """Score every pair from a prefix tree of its row (``_packed_layout``, cached in ``LAYOUTS``): a prompt
    runs once for all its answers, prompts that begin alike share that beginning, and every token still sees
    exactly the sequence ``encode_qa`` builds. Fills ``logp_out[i]``/``hit_out[i]`` per pair; ``keep_layout=False``
    leaves a layout built here out of the cache. The last decoder block runs only at the read positions where
    the model allows it (``bench.last_block``; ``read_only_last_block=False``: the whole forward)."""
    device = model_device(model)
    dtype = next(model.parameters()).dtype
    for b in LAYOUTS.get(pairs, batch_size, pad, keep=keep_layout):
        keep = b.keep.to(device)
        mask = torch.zeros(b.allowed.shape, dtype=dtype, device=device).masked_fill_(~b.allowed.to(device),
                                                                                    torch.finfo(dtype).min)
        inputs = dict(input_ids=b.ids.to(device), attention_mask=mask, position_ids=b.pos.to(device), use_cache=False)
        with boolean_keep_supported():
            logits = (logits_read_at(model, keep, **inputs)[0] if read_only_last_block
                      else model(**inputs, logits_to_keep=keep).logits)
        logits = _flat_logits_checked(model, logits, keep, int(b.keep.sum()), "shared-prefix scoring")
        logp, hit = (t.cpu() for t in _gold_logprobs(logits[b.picked.to(device)], b.targets.to(device)))
        at = 0
        for i, n in b.owners:
            logp_out[i], hit_out[i] = logp[at : at + n], hit[at : at + n]
            at += n


def _score_plain(model, pairs: Pairs, batch_size: int, pad: int, logp_out: list, hit_out: list) -> None:
    """Score each pair as one right-padded sequence (any causal LM)."""
    examples = [(list(p) + list(a), [IGNORE] * len(p) + list(a)) for p, a in pairs]
    device = model_device(model)
    for batch in batches_in_order(examples, batch_size, pad):
        logp, hit, mask = token_logprobs(model, batch.to(device))
        for i, lp, h, m in zip(batch.index.tolist(), logp.cpu(), hit.cpu(), mask.cpu()):
            logp_out[i], hit_out[i] = lp[m], h[m]


@torch.no_grad()
def score_answers(model, tokenizer, prompts: Sequence[str], answers: Sequence[str], batch_size: int = 64,
                  shared_prefix: bool = True, keep_layout: bool = True, read_only_last_block: bool = True
                  ) -> AnswerScores:
    """Teacher-forced scores of ``answers[i]`` after ``prompts[i]``, in batches of ``batch_size`` pairs.

    Each pair is the token ids ``encode_qa`` builds (prompt and answer tokenised separately, so the
    prompt's ids are always a true prefix of the pair's). With ``shared_prefix`` (and a model that
    takes the packed layout, ``shares_prefix``) the answers of one prompt are scored from a single
    pass over the prompt; otherwise each pair is its own sequence. Both give the same numbers to
    float tolerance (tests/test_scoring.py); ``AnswerScores.unshared`` counts the pairs scored the
    plain way. ``keep_layout=False``: pairs scored once (a partial stopping check's subset) do not enter the
    layout cache (``LAYOUTS``); the numbers are the same either way. ``read_only_last_block=False`` runs the
    packed path's last decoder block at every position (``bench.last_block``; a benchmark's baseline).
    """
    enc = _Encodings.of(tokenizer)
    pairs = [enc.pair(p, a) for p, a in zip(prompts, answers, strict=True)]
    n = len(pairs)
    logp: list = [None] * n
    hit: list = [None] * n
    packed = shared_prefix and shares_prefix(model) and all(len(p) > 0 for p, _ in pairs)

    def scored(size: int) -> None:  # the whole pass at one batch size (bench.memory: retried smaller on OOM)
        with eval_mode(model):
            if packed:
                _score_packed(model, pairs, size, pad_id(tokenizer), logp, hit, keep_layout, read_only_last_block)
            else:
                _score_plain(model, pairs, size, pad_id(tokenizer), logp, hit)

    fitting(scored, batch_size)
    per_token = [lp.numpy() for lp in logp]
    return AnswerScores(np.array([float(lp.sum()) for lp in logp], dtype=np.float64),
                        np.array([len(lp) for lp in logp], dtype=np.int64),
                        np.array([bool(h.all()) for h in hit], dtype=bool), per_token, unshared=0 if packed else n)


@torch.no_grad()
def greedy_answers(model, tokenizer, prompts: Sequence[str], max_new_tokens: int = 8, batch_size: int = 64,
                   strip: bool = True) -> list[str]:
    """Greedy generation (left-padded batches); the text up to the end token, stripped unless ``strip=False``
    (MUSE's KnowMem cuts the raw text at its stop strings first: a generation that opens with one is empty)."""
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
                    text = tokenizer.decode(row, skip_special_tokens=True)
                    out.append(text.strip() if strip else text)
        return out

    return fitting(generated, batch_size)


def exact_generation(tokenizer, answer: str, max_new_tokens: int) -> str | None:
    """What ``greedy_answers`` returns for a prompt after which ``answer`` scored ``exact``, without
    generating: greedy decoding then emits the answer's tokens and the end token (the definition of
    ``exact``), so its text is their decoding. None where that is not provably so: the answer is
    longer than ``max_new_tokens`` (the generation would be cut) or holds the end token itself."""
    ids = _Encodings.of(tokenizer).answer(answer)[:-1]
    if len(ids) > max_new_tokens or tokenizer.eos_token_id in ids:
        return None
    return tokenizer.decode(list(ids), skip_special_tokens=True).strip()
