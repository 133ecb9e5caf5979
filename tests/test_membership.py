"""The membership-inference family, extraction strength and exact memorisation against hand values.

Scores on scripted log-probs (no model) equal the numbers worked out by hand from the published
formulas (OpenUnlearning's attack classes, signs flipped so that members score higher); the vocabulary
moments behind Min-K%++ come from a model whose logits are scripted; the privacy suite turns scripted
token statistics into exactly the AUCs and privleaks computed by hand.
"""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest
import torch

from bench import metrics
from bench.data import encode_qa, encode_text
from bench.token_stats import TokenStats, token_stats


def test_loss_zlib_reference_scores_by_hand():
    lp = [-1.0, -2.0, -3.0]  # answer tokens then the end token: LOSS averages all three
    assert metrics.loss_score(lp) == pytest.approx(-2.0)
    text = "Juno Tread"
    assert metrics.zlib_compressed_length(text) == len(zlib.compress(b"Juno Tread"))
    assert metrics.zlib_score(lp, text) == pytest.approx(-2.0 / len(zlib.compress(b"Juno Tread")))
    # reference: loss_ref - loss_model = 3.5 - 2 = 1.5 (the model finds it likelier than the reference)
    assert metrics.reference_score(lp, [-3.0, -4.0]) == pytest.approx(1.5)
    with pytest.raises(ValueError):
        metrics.zlib_score(lp, "")
    with pytest.raises(ValueError):
        metrics.loss_score([])


def test_min_k_plus_plus_by_hand():
    lp = [-0.5, -2.0, -1.0, -4.0, -3.0]
    mu = [-1.0, -1.0, -2.0, -2.0, -1.0]
    var = [0.25, 1.0, 4.0, 1e-9, 4.0]  # the fourth is clamped at 1e-6 (OpenUnlearning's clamp)
    z = [(-0.5 + 1) / 0.5, (-2 + 1) / 1.0, (-1 + 2) / 2.0, (-4 + 2) / 1e-3, (-3 + 1) / 2.0]  # 1, -1, .5, -2000, -1
    # k = 0.4: floor(0.4 * 5) = 2 lowest: -2000 and -1
    assert metrics.min_k_plus_plus_score(lp, mu, var, 0.4) == pytest.approx((z[3] + z[1]) / 2)
    # k small: max(1, floor(k n)) = 1 token
    assert metrics.min_k_plus_plus_score(lp, mu, var, 0.1) == pytest.approx(-2000.0)
    assert metrics.min_k_plus_plus_score(lp, mu, var, 1.0) == pytest.approx(np.mean(z))
    with pytest.raises(ValueError, match="one vocabulary mean"):
        metrics.min_k_plus_plus_score(lp, mu[:2], var, 0.4)


def test_exact_memorization_and_extraction_strength_by_hand():
    assert metrics.exact_memorization([True, False, True, True]) == pytest.approx(0.75)
    # smallest k with hits[k:] all true: [F, T, T, T] -> k = 1 -> 1 - 1/4
    assert metrics.extraction_strength([False, True, True, True]) == pytest.approx(0.75)
    assert metrics.extraction_strength([True, True, True, True]) == 1.0
    assert metrics.extraction_strength([True, False, True, True]) == pytest.approx(0.5)
    # Last token missed: nothing short of the whole answer (k = n) reproduces it -> 0 (OpenUnlearning: 1/n)
    assert metrics.extraction_strength([True, True, False]) == 0.0
    assert metrics.extraction_strength([False]) == 0.0 and metrics.extraction_strength([True]) == 1.0
    with pytest.raises(ValueError):
        metrics.extraction_strength([])


def _openunlearning_es(hits):
    """OpenUnlearning's loop (memorization.py ``_extraction_strength``), written out for comparison."""
    n = len(hits)
    for k in range(n):
        if all(hits[k:]):
            break
    return 1 - k / n


def test_extraction_strength_equals_openunlearning_wherever_the_last_token_is_predicted():
    rng = np.random.default_rng(0)
    for _ in range(200):
        hits = list(rng.random(rng.integers(1, 8)) < 0.6)
        if hits[-1]:
            assert metrics.extraction_strength(hits) == pytest.approx(_openunlearning_es(hits))
        else:
            assert metrics.extraction_strength(hits) == 0.0 and _openunlearning_es(hits) == pytest.approx(1 / len(hits))


class ScriptedLM(torch.nn.Module):
    """Logits fixed per position (the same for every row), so every statistic can be computed by hand."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.table = logits  # [T, V]
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask=None, logits_to_keep=0, use_cache=None):
        b, t = input_ids.shape
        out = self.table[:t].unsqueeze(0).expand(b, -1, -1)
        return type("Out", (), {"logits": out[:, -logits_to_keep:] if logits_to_keep else out})()


def test_token_stats_by_hand():
    V, T = 5, 6
    g = torch.Generator().manual_seed(0)
    table = torch.randn(T, V, generator=g) * 2
    model = ScriptedLM(table)
    # input: BOS(0) prompt(1) then labelled 3, 4, 2 (the last one plays the end token)
    ids, labels = [0, 1, 3, 4, 2], [-100, -100, 3, 4, 2]
    st = token_stats(model, [(ids, labels)], pad=0)
    logp = torch.log_softmax(table.double(), -1)
    for j, (pos, tok) in enumerate([(1, 3), (2, 4), (3, 2)]):  # position pos predicts token at pos + 1
        p = logp[pos].exp()
        assert st.logprobs[0][j] == pytest.approx(float(logp[pos, tok]), abs=1e-5)
        assert st.vocab_mean[0][j] == pytest.approx(float((p * logp[pos]).sum()), abs=1e-5)
        assert st.vocab_var[0][j] == pytest.approx(float((p * logp[pos] ** 2).sum() - (p * logp[pos]).sum() ** 2), abs=1e-4)
        assert bool(st.hits[0][j]) == (int(table[pos].argmax()) == tok)
    assert len(st.answer_logprobs[0]) == 2  # end token dropped


def test_encoders_label_what_the_attacks_score(tokenizer):
    ids, labels = encode_text(tokenizer, "hello world")
    assert labels[0] == -100 and labels[-1] == tokenizer.eos_token_id and all(l != -100 for l in labels[1:])
    ids, labels = encode_qa(tokenizer, "Question: q\nAnswer:", "a")
    assert labels[-1] == tokenizer.eos_token_id


# -- the privacy suite on scripted statistics -----------------------------------------------------------


def _scripted_stats(model: str, split: str, n: int) -> TokenStats:
    """Deterministic per (model, split, item) statistics: 3 labelled tokens (2 answer tokens + end)."""
    rows = []
    for i in range(n):
        h = zlib.crc32(f"{model}|{split}|{i}".encode()) % 997
        base = -0.2 - (h % 50) / 10.0 - (0.0 if (model != "oracle" and split != "holdout") else 1.0)
        rows.append(np.array([base, base - 0.5, base - 1.0]))
    mean = [r - 0.3 for r in rows]
    var = [np.full(3, 0.25 + 0.01 * i) for i in range(n)]
    return TokenStats(rows, [r > -1 for r in rows], mean, var)


def test_privacy_suite_rows_equal_hand_values(monkeypatch, micro_bench, tokenizer):
    import bench.suites.privacy as privacy
    from bench.suites import SuiteContext

    models = {"target": object(), "oracle": object(), "unlearned": object()}
    name_of = {id(m): k for k, m in models.items()}
    monkeypatch.setattr(privacy, "token_stats",
                        lambda model, examples, pad, batch_size: _scripted_stats(
                            name_of[id(model)], _current_split[0], len(examples)))
    _current_split = [""]
    real_member_set = privacy.member_set

    def member_set(split, ctx):
        _current_split[0] = split
        return real_member_set(split, ctx)

    monkeypatch.setattr(privacy, "member_set", member_set)
    ctx = SuiteContext(bench=micro_bench, tokenizer=tokenizer, oracle=models["oracle"], target=models["target"])
    oracle_rows = {(r.split, r.metric): r.value for r in privacy.evaluate(models["oracle"], "oracle", ctx).rows}
    rows = {(r.split, r.metric): r.value for r in privacy.evaluate(models["unlearned"], "unlearned", ctx).rows}

    def hand(model: str, split: str, attack: str) -> list[float]:
        items = micro_bench.split(split)
        st = _scripted_stats(model, split, len(items))
        ref = _scripted_stats("oracle", split, len(items))
        out = []
        for i, it in enumerate(items):
            lp = st.logprobs[i]
            if attack == "loss":
                out.append(lp.mean())
            elif attack == "zlib":
                out.append(lp.mean() / len(zlib.compress(it.answer.encode())))
            elif attack == "mink":  # floor(0.4 * 2) = 0 -> 1 lowest answer token (end token excluded)
                out.append(lp[:2].min())
            elif attack == "minkpp":
                z = (lp[:2] - st.vocab_mean[i][:2]) / np.sqrt(st.vocab_var[i][:2])
                out.append(z.min())
            else:  # reference = loss_oracle - loss_model
                out.append(lp.mean() - ref.logprobs[i].mean())
        return out

    from sklearn.metrics import roc_auc_score

    def auc(model, split, attack):
        m, h = hand(model, split, attack), hand(model, "holdout", attack)
        return roc_auc_score([1] * len(m) + [0] * len(h), m + h)

    for attack in ("loss", "zlib", "mink", "minkpp", "reference"):
        for split in ("forget", "retain"):
            assert rows[(split, f"mia_auc@{attack}")] == pytest.approx(auc("unlearned", split, attack)), (split, attack)
        a, a_oracle = auc("unlearned", "forget", attack), auc("oracle", "forget", attack)
        assert oracle_rows[("forget", f"mia_auc@{attack}")] == pytest.approx(a_oracle)
        if a_oracle < 1:
            assert rows[("forget", f"privleak@{attack}")] == pytest.approx((a_oracle - a) / (1 - a_oracle) * 100)
    assert oracle_rows[("forget", "mia_auc@reference")] == 0.5  # the oracle is its own reference: every score 0
    assert ("retain", "privleak@loss") not in rows


def test_privacy_attacks_and_reference_settings(micro_bench, tokenizer, trained_micro, fresh_micro):
    import bench.suites.privacy as privacy
    from bench.suites import SuiteContext

    ctx = SuiteContext(bench=micro_bench, tokenizer=tokenizer, oracle=fresh_micro, target=trained_micro,
                       settings={"privacy": {"attacks": ["mink", "reference"], "reference": "target"}})
    rows = {(r.split, r.metric): r.value for r in privacy.evaluate(trained_micro, "target", ctx).rows}
    assert {m for _, m in rows} == {"mia_auc@mink", "mia_auc@reference", "privleak@mink", "privleak@reference"}
    assert rows[("forget", "mia_auc@reference")] == 0.5  # the target is its own reference here
    assert all(math.isfinite(v) or math.isnan(v) for v in rows.values())
