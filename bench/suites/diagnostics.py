"""Diagnostics suite: did a method erase the forget facts or hide them? (PROTOCOLS.md "Diagnostics")

Hide vs erase (Ssiuu paper §4). A neuron is one output coordinate of a q/k/v/o/gate/up/down
projection (every ``nn.Linear`` with one of those names, in every layer). For each forget fact
(x, y), with P(y|x) the sequence probability of the answer and its end token, the attribution at
token position k is s_k = a_k · ∂P/∂a_k (one backward pass per batch of facts: rows are
independent). Positions k are every real token that predicts an answer token or precedes one
(prompt and answer, not the final end token, not padding). With θ0 the target model and θ1 the
stage's model, per neuron:

    D+ = mean_f [ max_k s(θ0) − max(max_k s(θ1), 0) ]    (positive influence removed: erasing)
    D− = mean_f [ min_k s(θ0) − min_k s(θ1) ]            (negative influence added: hiding)

each clipped at 0. S+(m), S−(m) are the sums of the m largest values; rows ``erase_top@m`` =
S+(m), ``hide_top@m`` = S−(m) and ``hide_ratio@m`` = S−(m)/S+(m) for m in ``top_m`` (default 100
and 1000). Hiding shows as hide_ratio ≫ 1. The target stage scores 0 (θ1 = θ0); the oracle stage
(never saw the facts) is the reference for what genuine absence looks like. Per (layer, module)
sums and top-10 means of D± go to examples (``kind: hide_erase_module``).

Logit lens: the residual stream after each decoder block, through the final norm and the output
embedding, scores the gold answer against one random distractor option (fixed per item by
``seed``); ``logit_lens_acc@layer<i>`` is the share of facts where the gold answer's log-probability
(answer tokens, teacher-forced) is higher. Chance 0.5; below chance means the answer is being
pushed down (still recognisable). The last layer's lens is the model's own output.

Settings (``suite_settings.diagnostics``, ``Settings`` below): batch_size (32), top_m ([100, 1000]),
seed (0), lens_splits ([forget]), objectives ([prob]). ``objectives: [prob, logprob]`` adds a variant
with s = a·∂log P/∂a (rows ``erase_top_logp@m``, ``hide_top_logp@m``, ``hide_ratio_logp@m``);
``choice`` one with P = the gold option's forced-choice probability among the k options
(rows ``*_choice@m``), the quantity an MCQ benchmark such as the paper's FaithUn scores.
Read both against the oracle stage: the paper's s carries a factor P(y|x), so when unlearning
drives P near 0 the after-model attributions shrink with it (D− → 0, ratio deflated); the log P
variant's gradients grow as P falls (ratio inflated: the oracle itself scores ≫ 1 on the tiny
model). The oracle has the same low P on the forget facts as a method stopped at chance, so a
method's ratio is only meaningful next to the oracle's.

The suite knows no method by name; it finds modules by name and reads activations with forward
hooks, so it works on wrapped models whose hooks edit the residual stream or projection outputs
(ours run after hooks registered earlier). Needs the target model
in the context (``SuiteContext.target``) for hide vs erase; without it only the logit lens runs.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from bench.benchmark import SPLITS, Benchmark
from bench.data import IGNORE, batches_in_order, encode_qa, pad_id
from bench.errors import ConfigError
from bench.model_parts import block_outputs, decoder_parts
from bench.scoring import eval_mode, model_device
from bench.settings import bounded
from bench.suites import Row, SuiteContext, SuiteOutput

SUITE = "diagnostics"

# Which way is better (bench.directions): hiding shows as hide_ratio >> 1.
DIRECTIONS = [
    (r".*", r"hide_ratio.*", "lower"),
    (r".*", r"logit_lens_acc@.*", "knows"),
]
MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
OBJECTIVES = {"prob": "", "logprob": "_logp", "choice": "_choice"}  # attribution objective -> metric-name suffix
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Settings:
    """batch_size: facts per forward/backward pass. top_m: m of the hide_ratio@m rows (the m most-changed
    neurons). objectives: attribution objectives (see the module docstring). lens_splits: benchmark splits
    the logit lens scores. seed: the logit lens's random distractor per fact."""

    batch_size: int = bounded(32, ge=1)
    top_m: tuple[int, ...] = bounded((100, 1000), ge=1, nonempty=True, unique=True)
    objectives: tuple[Literal["prob", "logprob", "choice"], ...] = bounded(("prob",), unique=True)
    lens_splits: tuple[str, ...] = bounded(("forget",), choices=SPLITS, unique=True)
    seed: int = bounded(0, ge=0)


def check(settings: Settings, bench: Benchmark) -> None:
    if "choice" in settings.objectives and any(it.answer_only for it in bench.split("forget")):
        raise ConfigError("suite_settings.diagnostics.objectives: 'choice' needs multiple-choice forget items and this "
                          "benchmark's are answer-only; use objectives=[prob]")
    answer_only = [s for s in settings.lens_splits if any(it.answer_only for it in bench.split(s))]
    if answer_only:
        raise ConfigError(f"suite_settings.diagnostics.lens_splits: {answer_only} have answer-only items (the logit lens "
                          f"needs a distractor option); drop them, e.g. lens_splits=[forget]")


# ---- neurons and attributions -----------------------------------------------------------------

def projection_modules(model: torch.nn.Module) -> list[tuple[str, int, str, torch.nn.Linear]]:
    """(name, layer, module kind, module) for every q/k/v/o/gate/up/down ``nn.Linear``, in model order."""
    found = []
    for name, mod in model.named_modules():
        kind = name.rsplit(".", 1)[-1]
        if kind in MODULES and isinstance(mod, torch.nn.Linear):
            layer = re.search(r"(?:^|\.)(\d+)(?:\.|$)", name)
            found.append((name, int(layer.group(1)) if layer else -1, kind, mod))
    if not found:
        raise ValueError(f"diagnostics: the model has no nn.Linear named one of {MODULES}; hide vs erase needs them")
    return found


@dataclass
class NeuronExtremes:
    """Per fact and neuron, max_k and min_k of s = a·∂P/∂a over token positions; shapes [facts, neurons]."""

    max: torch.Tensor
    min: torch.Tensor
    layers: np.ndarray  # [neurons] layer of each neuron
    kinds: np.ndarray  # [neurons] module kind of each neuron


def token_extremes(s: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """max_k and min_k of s [B, T, N] over the positions where valid [B, T] is true -> [B, N] each."""
    v = valid.unsqueeze(-1)
    return s.masked_fill(~v, float("-inf")).amax(1), s.masked_fill(~v, float("inf")).amin(1)


def neuron_extremes(model: torch.nn.Module, examples: Sequence[tuple[list[int], list[int]]], pad: int,
                    batch_size: int = 32, objective: str = "prob", group: int = 1) -> NeuronExtremes:
    """Token-aggregated attributions of every projection neuron on each fact:
    s = a·∂P/∂a (``prob``, the paper's) or s = a·∂log P/∂a (``logprob``, scale-free), with P the
    answer's sequence probability; or ``choice``: P = the gold option's share of the softmax over
    the k options' sequence log-probs (the forced-choice probability of an MCQ benchmark, which
    stays near 1/k instead of 0 after unlearning). For ``choice`` the examples are ``group`` = k
    consecutive rows per fact, gold first; a fact's rows share the prompt, so their s are summed
    position by position (the exact attribution of a shared prompt activation) before max/min."""
    if objective not in OBJECTIVES:
        raise ValueError(f"diagnostics: objective must be one of {sorted(OBJECTIVES)}, got {objective!r}")
    if objective != "choice":
        group = 1
    if len(examples) % group:
        raise ValueError(f"diagnostics: {len(examples)} examples do not split into groups of {group} options")
    batch_size = max(1, batch_size) * group  # whole facts per batch
    mods = projection_modules(model)
    device = model_device(model)
    captured: list[torch.Tensor] = []

    def hook(_mod, _inp, out):
        captured.append(out)

    handles = [m.register_forward_hook(hook) for _, _, _, m in mods]
    maxs, mins = [], []
    try:
        with eval_mode(model), torch.enable_grad():
            for batch in batches_in_order(examples, batch_size, pad):
                batch = batch.to(device)
                captured.clear()
                logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1].float()
                target = batch.labels[:, 1:]
                mask = target != IGNORE
                logp = torch.gather(F.log_softmax(logits, -1), 2, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
                seq = (logp * mask).sum(-1)  # log P(y|x) per row; facts do not interact
                if objective == "prob":
                    total = seq.exp().sum()
                elif objective == "logprob":
                    total = seq.sum()
                else:  # gold (first row of each group) share of the softmax over the fact's options
                    total = F.softmax(seq.view(-1, group), -1)[:, 0].sum()
                grads = torch.autograd.grad(total, captured)
                # Positions that predict an answer token or precede one: 0 .. last predicting position.
                last = torch.where(mask, torch.arange(mask.shape[1], device=device), -1).amax(1)
                valid = torch.arange(batch.input_ids.shape[1], device=device)[None, :] <= last[:, None]
                s = torch.cat([(a.detach() * g).float() for a, g in zip(captured, grads)], dim=-1)
                if group > 1:
                    s = s.view(-1, group, *s.shape[1:]).sum(1)
                    valid = valid.view(-1, group, valid.shape[1]).any(1)
                hi, lo = token_extremes(s, valid)
                maxs.append(hi.cpu())
                mins.append(lo.cpu())
    finally:
        for h in handles:
            h.remove()
        captured.clear()
    layers = np.concatenate([np.full(m.out_features, layer) for _, layer, _, m in mods])
    kinds = np.concatenate([np.full(m.out_features, kind) for _, _, kind, m in mods])
    return NeuronExtremes(torch.cat(maxs).double(), torch.cat(mins).double(), layers, kinds)


def influence_variation(before: NeuronExtremes, after: NeuronExtremes) -> tuple[np.ndarray, np.ndarray]:
    """Clipped D+ (erasing) and D− (hiding) per neuron, averaged over facts (PROTOCOLS.md)."""
    if before.max.shape != after.max.shape:
        raise ValueError(f"diagnostics: models differ in shape ({tuple(before.max.shape)} vs {tuple(after.max.shape)})")
    d_plus = (before.max - after.max.clamp(min=0)).mean(0).clamp(min=0)
    d_minus = (before.min - after.min).mean(0).clamp(min=0)
    return d_plus.numpy(), d_minus.numpy()


def top_sum(d: np.ndarray, m: int) -> float:
    """S(m): the sum of the m largest values."""
    return float(np.sort(d)[::-1][:m].sum())


def hide_ratio(s_minus: float, s_plus: float) -> float:
    return s_minus / s_plus if s_plus > 0 else (0.0 if s_minus == 0 else float("inf"))


# ---- logit lens -----------------------------------------------------------------------------------

@torch.no_grad()
def lens_logprobs(model: torch.nn.Module, examples: Sequence[tuple[list[int], list[int]]], pad: int,
                  batch_size: int = 32) -> np.ndarray:
    """Per layer and example, the summed log-prob of the answer tokens (end token excluded) read
    through the logit lens after each decoder block; shape [layers, examples]."""
    _, norm, head = decoder_parts(model)
    device = model_device(model)
    out = []
    with block_outputs(model) as states:
        with eval_mode(model):
            for batch in batches_in_order(examples, batch_size, pad):
                batch = batch.to(device)
                states.clear()
                model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
                target = batch.labels[:, 1:]
                # Answer tokens only: drop each row's last labelled token (the end token).
                mask = target != IGNORE
                last = torch.where(mask, torch.arange(mask.shape[1], device=device), -1).amax(1)
                mask &= torch.arange(mask.shape[1], device=device)[None, :] != last[:, None]
                per_layer = []
                for h in states:
                    logp = F.log_softmax(head(norm(h))[:, :-1].float(), -1)
                    tok = torch.gather(logp, 2, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
                    per_layer.append((tok * mask).sum(-1).cpu())
                out.append(torch.stack(per_layer))
    return torch.cat(out, dim=1).double().numpy()


def distractors(items, seed: int) -> list[str]:
    """One random wrong option per item, fixed by the seed (the same at every stage)."""
    rng = np.random.default_rng(seed)
    return [str(rng.choice([o for o in it.options if o != it.answer])) for it in items]


# ---- the suite ------------------------------------------------------------------------------------

def _fact_examples(ctx: SuiteContext, items, answers=None):
    answers = answers if answers is not None else [it.answer for it in items]
    return [encode_qa(ctx.tokenizer, ctx.bench.prompt(it.question), a) for it, a in zip(items, answers)]


def _choice_examples(ctx: SuiteContext, items):
    """Per fact, its k options as answers, gold first (the ``choice`` objective's groups)."""
    return [encode_qa(ctx.tokenizer, ctx.bench.prompt(it.question), a)
            for it in items for a in (it.answer, *[o for o in it.options if o != it.answer])]


def evaluate(model, stage: str, ctx: SuiteContext) -> SuiteOutput:
    rows: list[Row] = []
    examples: list[dict] = []
    settings = ctx.settings_of(SUITE)
    bs = settings.batch_size
    pad = pad_id(ctx.tokenizer)
    seed = settings.seed
    forget = ctx.bench.split("forget")

    # Hide vs erase, against the target model.
    target = ctx.target
    if target is None:
        log.warning("diagnostics: no target model in the suite context; hide vs erase skipped")
    elif forget:
        n = len(forget)
        for objective in settings.objectives:
            sfx = OBJECTIVES[objective]
            group = ctx.bench.n_options if objective == "choice" else 1
            facts = _choice_examples(ctx, forget) if objective == "choice" else _fact_examples(ctx, forget)
            before = ctx.reference((SUITE, "extremes", objective),
                                   lambda: neuron_extremes(target, facts, pad, bs, objective, group))
            after = before if model is target else neuron_extremes(model, facts, pad, bs, objective, group)
            d_plus, d_minus = influence_variation(before, after)
            for m in settings.top_m:
                s_plus, s_minus = top_sum(d_plus, m), top_sum(d_minus, m)
                rows += [Row(stage, SUITE, "forget", f"erase_top{sfx}@{m}", s_plus, n),
                         Row(stage, SUITE, "forget", f"hide_top{sfx}@{m}", s_minus, n),
                         Row(stage, SUITE, "forget", f"hide_ratio{sfx}@{m}", hide_ratio(s_minus, s_plus), n)]
            for layer in np.unique(before.layers):
                for kind in MODULES:
                    sel = (before.layers == layer) & (before.kinds == kind)
                    if not sel.any():
                        continue
                    dp, dm = np.sort(d_plus[sel])[::-1], np.sort(d_minus[sel])[::-1]
                    examples.append({"stage": stage, "suite": SUITE, "split": "forget", "kind": "hide_erase_module",
                                     "objective": objective, "layer": int(layer), "module": kind,
                                     "neurons": int(sel.sum()), "erase_sum": float(dp.sum()), "hide_sum": float(dm.sum()),
                                     "erase_top10_mean": float(dp[:10].mean()), "hide_top10_mean": float(dm[:10].mean())})

    # Logit lens: gold answer vs one random distractor, per layer.
    for split in settings.lens_splits:
        items = ctx.bench.split(split)
        if not items:
            continue
        wrong = distractors(items, seed)
        gold = lens_logprobs(model, _fact_examples(ctx, items), pad, bs)
        other = lens_logprobs(model, _fact_examples(ctx, items, wrong), pad, bs)
        wins = gold > other
        for layer, w in enumerate(wins):
            rows.append(Row(stage, SUITE, split, f"logit_lens_acc@layer{layer}", float(w.mean()), len(items)))
        for i, it in enumerate(items):
            examples.append({"stage": stage, "suite": SUITE, "split": split, "kind": "logit_lens", "id": it.id,
                             "distractor": wrong[i], "gold_logprob": [float(v) for v in gold[:, i]],
                             "distractor_logprob": [float(v) for v in other[:, i]]})
    return SuiteOutput(rows, examples)
