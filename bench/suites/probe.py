"""Probe suite: can a linear read-out of the hidden states still pick the forgotten answers?

The logit lens reads hidden states through the model's own output head; a probe learns its own
read-out, so it finds knowledge that is present but no longer aligned with the head.

Formulation. Each multiple-choice fact gives k sequences, prompt + option (answer tokens, no end
token); the feature of an option at layer i is the residual stream after decoder block i at the
option's last token, read with forward hooks that run after any a method attached (the model as
deployed). A binary logistic probe (scikit-learn, standardised features, balanced classes, L2 with
inverse strength ``c``) learns gold-vs-not from the options of the retain facts; on a test fact
the option with the highest probe score is the probe's choice (ties count wrong, chance 1/k).
Trained on retain, tested on forget: the facts never meet, so the probe reads a general "this is
the answer I know" direction, not the facts themselves. The oracle's probe is the control: it
knows the retain facts as well as the target does and never saw the forget facts, so its forget
accuracy is what the read-out gives without the knowledge.

Rows (metric ``probe_acc@layer<i>``): split ``forget``, the trained probe's accuracy on the forget
facts; split ``retain``, cross-validated accuracy on retain facts of held-out people (GroupKFold,
5 folds by person: does the probe read known facts at all?); ``forget probe_acc@max_over_layers``,
the best layer's forget accuracy (a maximum over layers: the oracle's is above chance by selection
alone, so compare it with the oracle's, never with chance).

Settings (``suite_settings.probe``): layers (null = every decoder block; out of range fails before
compute), c (1.0), stages ([target, unlearned]; the oracle always runs), batch_size (64).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from bench.benchmark import Benchmark, QAItem
from bench.data import answer_text, collate, encode_prompt, pad_id
from bench.errors import ConfigError
from bench.items import forced_choice
from bench.model_parts import block_outputs
from bench.scoring import eval_mode, model_device
from bench.settings import bounded
from bench.stages import ORACLE, TARGET, UNLEARNED
from bench.suites import Row, SuiteContext, SuiteOutput, check_control_stages

SUITE = "probe"
CV_FOLDS = 5

DIRECTIONS = [(r".*", r"probe_acc@.*", "knows")]


@dataclass(frozen=True)
class Settings:
    """layers: decoder blocks probed (null: all). c: inverse L2 strength of the logistic probe.
    stages: stages probed besides the oracle control. batch_size: sequences per forward pass."""

    layers: tuple[int, ...] | None = bounded(None, ge=0, nonempty=True, unique=True)
    c: float = bounded(1.0, gt=0)
    stages: tuple[str, ...] = bounded((TARGET, UNLEARNED), unique=True)
    batch_size: int = bounded(64, ge=1)


def check(settings: Settings, bench: Benchmark) -> None:
    check_control_stages(SUITE, settings.stages, "probed")
    if len(bench.groups("retain")) < 2:
        raise ConfigError("suite_settings.probe: the retain split needs at least 2 people (the probe's cross-validation "
                          "holds people out); use a larger benchmark or drop the probe suite")


def check_model(settings: Settings, bench: Benchmark, tokenizer, shape, max_positions: int | None) -> None:
    if settings.layers is not None and max(settings.layers) >= shape.num_layers:
        raise ConfigError(f"suite_settings.probe.layers={list(settings.layers)} is out of range: the model has "
                          f"{shape.num_layers} decoder blocks (layers 0..{shape.num_layers - 1}); e.g. "
                          f"suite_settings.probe.layers=[{shape.num_layers - 1}] or null (all)")


def option_sequences(tokenizer, bench: Benchmark, items: Sequence[QAItem]) -> list[list[int]]:
    """Per fact, its k options after the prompt (answer tokens only), fact by fact, options in order."""
    out = []
    for it in items:
        prompt = encode_prompt(tokenizer, bench.prompt(it.question))
        out += [prompt + tokenizer(answer_text(tokenizer, o), add_special_tokens=False).input_ids for o in it.options]
    return out


@torch.no_grad()
def last_token_states(model, sequences: Sequence[list[int]], pad: int, batch_size: int,
                      layers: Sequence[int] | None = None) -> np.ndarray:
    """The residual stream after each decoder block at each sequence's last token: [layers, sequences, d]."""
    device = model_device(model)
    out: list[torch.Tensor] = []
    with block_outputs(model) as states, eval_mode(model):
        for start in range(0, len(sequences), batch_size):
            batch = collate([(s, s) for s in sequences[start : start + batch_size]], pad).to(device)
            states.clear()
            model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
            last = batch.attention_mask.sum(1) - 1  # right-padded
            rows = torch.arange(len(last), device=device)
            picked = [states[i] for i in (layers if layers is not None else range(len(states)))]
            out.append(torch.stack([h[rows, last].float().cpu() for h in picked]))
    return torch.cat(out, dim=1).numpy()


def _probe(c: float):
    return make_pipeline(StandardScaler(), LogisticRegression(C=c, class_weight="balanced", max_iter=5000))


def probe_choice(features_train: np.ndarray, train: Sequence[QAItem], features_test: np.ndarray,
                 test: Sequence[QAItem], c: float) -> np.ndarray:
    """Fit gold-vs-not on the train facts' options ([facts·k, d]); per test fact, is the probe's top option gold?"""
    k = len(train[0].options)
    labels = np.array([i == it.answer_index for it in train for i in range(k)])
    probe = _probe(c).fit(features_train, labels)
    scores = probe.decision_function(features_test).reshape(len(test), k)
    return forced_choice(scores, test)


def cross_validated(features: np.ndarray, items: Sequence[QAItem], c: float) -> np.ndarray:
    """Held-out-person accuracy on ``items``: GroupKFold by person, each fold scored by a probe fit on the rest."""
    k = len(items[0].options)
    groups = np.array([it.group for it in items])
    correct = np.zeros(len(items), dtype=bool)
    folds = GroupKFold(n_splits=min(CV_FOLDS, len(set(groups))))
    for train_idx, test_idx in folds.split(np.zeros(len(items)), groups=groups):
        rows = lambda idx: (idx[:, None] * k + np.arange(k)).ravel()  # noqa: E731 - the facts' option rows
        correct[test_idx] = probe_choice(features[rows(train_idx)], [items[i] for i in train_idx],
                                         features[rows(test_idx)], [items[i] for i in test_idx], c)
    return correct


def probe_rows(model, stage: str, ctx: SuiteContext) -> SuiteOutput:
    s = ctx.settings_of(SUITE)
    retain, forget = ctx.bench.split("retain"), ctx.bench.split("forget")
    pad = pad_id(ctx.tokenizer)
    feats_retain = last_token_states(model, option_sequences(ctx.tokenizer, ctx.bench, retain), pad, s.batch_size, s.layers)
    feats_forget = last_token_states(model, option_sequences(ctx.tokenizer, ctx.bench, forget), pad, s.batch_size, s.layers)
    layers = list(s.layers) if s.layers is not None else list(range(len(feats_retain)))
    rows: list[Row] = []
    examples: list[dict] = []
    forget_acc = []
    for j, layer in enumerate(layers):
        on_forget = probe_choice(feats_retain[j], retain, feats_forget[j], forget, s.c)
        on_retain = cross_validated(feats_retain[j], retain, s.c)
        forget_acc.append(float(on_forget.mean()))
        rows += [Row(stage, SUITE, "forget", f"probe_acc@layer{layer}", forget_acc[-1], len(forget)),
                 Row(stage, SUITE, "retain", f"probe_acc@layer{layer}", float(on_retain.mean()), len(retain))]
        examples += [{"stage": stage, "suite": SUITE, "split": "forget", "kind": "probe", "layer": layer, "id": it.id,
                      "correct": bool(ok)} for it, ok in zip(forget, on_forget)]
    rows.append(Row(stage, SUITE, "forget", "probe_acc@max_over_layers", max(forget_acc), len(forget)))
    return SuiteOutput(rows, examples)


def evaluate(model, stage: str, ctx: SuiteContext) -> SuiteOutput:
    s = ctx.settings_of(SUITE)
    if stage != ORACLE and stage not in s.stages:
        return SuiteOutput()
    return probe_rows(model, stage, ctx)
