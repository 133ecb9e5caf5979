"""The fast paths give the numbers of the plain ones: shared-prefix scoring, cached tokenisation,
one forward over forget + retain, skipped generations, the stopping check's single call."""

import copy

import numpy as np
import pytest
import torch

from bench.data import BatchStream, encode_qa, pad_id, qa_examples
from bench.items import SPLIT_VIEWS, forced_choice, mcq_correct, option_pairs, prompts, score_items
from bench.scoring import _Encodings, exact_generation, greedy_answers, mean_nll, paired_mean_nll, score_answers, token_logprobs


def _all_pairs(bench, items):
    """Every (prompt, answer) pair the knowledge suite scores, duplicates kept (the gold answer is an option)."""
    ps, ans = [], []
    for it in items:
        for a in (it.answer, *it.perturbed, *it.options):
            ps.append(bench.prompt(it.question))
            ans.append(a)
    return ps, ans


@pytest.mark.parametrize("batch_size", [64, 3])  # 3 < options per prompt: a prompt's answers span rows and batches
def test_shared_prefix_scores_equal_plain_scores(trained_micro, micro_bench, tokenizer, batch_size):
    ps, ans = _all_pairs(micro_bench, micro_bench.items)
    shared = score_answers(trained_micro, tokenizer, ps, ans, batch_size=batch_size)
    plain = score_answers(trained_micro, tokenizer, ps, ans, batch_size=batch_size, shared_prefix=False)
    assert shared.unshared == 0 and plain.unshared == len(ps)
    assert (shared.n_tokens == plain.n_tokens).all()
    assert (shared.exact == plain.exact).all() and 0 < shared.exact.sum() < len(ps)  # both verdicts occur
    assert np.abs(shared.option_logprob - plain.option_logprob).max() < 1e-5
    assert np.abs(shared.sum_logprob - plain.sum_logprob).max() < 1e-5
    assert max(np.abs(a - b).max() for a, b in zip(shared.token_logprobs, plain.token_logprobs)) < 1e-5
    items = micro_bench.items
    k = len(items[0].options)
    picks = [forced_choice(s.option_logprob.reshape(len(items), -1)[:, -k:], items) for s in (shared, plain)]
    assert (picks[0] == picks[1]).all()


def test_shared_prefix_exact_equals_greedy_generation(trained_micro, micro_bench, tokenizer):
    # Every answer a greedy decoder could give (gold and perturbed), one per prompt position: 0 disagreements.
    items = micro_bench.items
    ps, ans = _all_pairs(micro_bench, items)
    exact = score_answers(trained_micro, tokenizer, ps, ans, batch_size=16).exact
    generated = dict(zip(dict.fromkeys(ps), greedy_answers(trained_micro, tokenizer, list(dict.fromkeys(ps)), max_new_tokens=6)))
    greedy = np.array([generated[p] == a for p, a in zip(ps, ans)])
    assert greedy.any() and (exact == greedy).all()


def test_a_model_without_the_packed_layout_falls_back_and_counts_it(trained_micro, micro_bench, tokenizer):
    ps, ans = _all_pairs(micro_bench, micro_bench.items[:4])

    class Wrapper(torch.nn.Module):  # a model the packed layout does not know (no Llama config): plain path
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, **kwargs):
            return self.inner(**kwargs)

    fallback = score_answers(Wrapper(trained_micro), tokenizer, ps, ans)
    shared = score_answers(trained_micro, tokenizer, ps, ans)
    assert fallback.unshared == len(ps) and shared.unshared == 0
    assert np.abs(fallback.sum_logprob - shared.sum_logprob).max() < 1e-5


def test_packed_scoring_of_a_model_that_ignores_the_keep_mask(trained_micro, micro_bench, tokenizer):
    """A Llama that takes the packed layout but returns every position's logits (ignoring the boolean
    logits_to_keep) is scored packed, to the same numbers; one returning another shape fails with the fix."""
    ps, ans = _all_pairs(micro_bench, micro_bench.items[:4])

    class IgnoresKeep(torch.nn.Module):
        def __init__(self, inner, broken=False):
            super().__init__()
            self.inner, self.config, self.broken = inner, inner.config, broken

        def forward(self, logits_to_keep=None, **kwargs):
            logits = self.inner(**kwargs).logits
            return type("Out", (), {"logits": logits[:, :3] if self.broken else logits})()

    ignoring = score_answers(IgnoresKeep(trained_micro), tokenizer, ps, ans)
    shared = score_answers(trained_micro, tokenizer, ps, ans)
    assert ignoring.unshared == 0 and shared.unshared == 0
    assert np.abs(ignoring.sum_logprob - shared.sum_logprob).max() < 1e-5
    assert (ignoring.exact == shared.exact).all()
    with pytest.raises(RuntimeError, match="transformers>=5.21"):
        score_answers(IgnoresKeep(trained_micro, broken=True), tokenizer, ps, ans)


def test_a_reused_layout_gives_the_numbers_of_a_fresh_one(trained_micro, micro_bench, tokenizer, monkeypatch):
    """The packed layout depends only on the token ids: scoring the same pairs again (another stage, check or
    attack checkpoint) reuses it, with bitwise the same scores as a layout built afresh, for other weights too."""
    from bench import scoring

    ps, ans = _all_pairs(micro_bench, micro_bench.items)
    scoring.LAYOUTS.clear()
    built = []
    real = scoring._packed_layout
    monkeypatch.setattr(scoring, "_packed_layout", lambda *a: built.append(1) or real(*a))
    first = score_answers(trained_micro, tokenizer, ps, ans, batch_size=16)
    again = score_answers(trained_micro, tokenizer, ps, ans, batch_size=16)
    assert len(built) == 1 and len(scoring.LAYOUTS.entries) == 1
    other = copy.deepcopy(trained_micro)
    with torch.no_grad():
        for prm in other.parameters():
            prm.mul_(0.9)
    reused = score_answers(other, tokenizer, ps, ans, batch_size=16)
    scoring.LAYOUTS.clear()
    fresh = score_answers(other, tokenizer, ps, ans, batch_size=16)
    assert len(built) == 2
    for a, b in ((first, again), (reused, fresh)):
        assert (a.sum_logprob == b.sum_logprob).all() and (a.exact == b.exact).all()
        assert all((x == y).all() for x, y in zip(a.token_logprobs, b.token_logprobs))
    assert (first.sum_logprob != reused.sum_logprob).any()  # the weights changed, the layout did not
    score_answers(trained_micro, tokenizer, ps[:5], ans[:5], batch_size=16)  # other pairs: a layout of their own
    assert len(built) == 3 and len(scoring.LAYOUTS.entries) == 2
    half = score_answers(other.to(torch.bfloat16), tokenizer, ps, ans, batch_size=16)  # another dtype: same layout
    assert len(built) == 3 and half.exact.shape == fresh.exact.shape


def test_the_layout_cache_keeps_within_its_byte_budget(trained_micro, micro_bench, tokenizer, monkeypatch):
    from bench import scoring

    ps, ans = _all_pairs(micro_bench, micro_bench.items)
    cache = scoring._LayoutCache()
    monkeypatch.setattr(scoring, "LAYOUTS", cache)
    score_answers(trained_micro, tokenizer, ps, ans)
    one = cache.bytes
    assert one > 0 and cache.bytes == sum(b.nbytes() for layout in cache.entries.values() for b in layout)
    pairs = lambda n: tuple(_Encodings.of(tokenizer).pair(p, a) for p, a in zip(ps[:n], ans[:n]))  # noqa: E731
    score_answers(trained_micro, tokenizer, ps[:3], ans[:3])
    score_answers(trained_micro, tokenizer, ps, ans)  # a hit: now the most recently used
    cache.max_bytes = cache.bytes  # full: the next layout pushes out the least recently used, the 3 pairs'
    score_answers(trained_micro, tokenizer, ps[:2], ans[:2])
    assert [key[0] for key in cache.entries] == [pairs(len(ps)), pairs(2)] and cache.bytes <= cache.max_bytes
    cache.max_bytes = one + 1  # room for one layout of this size: the least recently used goes
    score_answers(trained_micro, tokenizer, ps[:-1], ans[:-1])
    assert len(cache.entries) == 1 and cache.bytes <= cache.max_bytes
    assert next(iter(cache.entries))[0] == pairs(len(ps) - 1)
    cache.max_bytes = 1  # a layout larger than the budget is used, not kept
    score_answers(trained_micro, tokenizer, ps, ans)
    assert len(cache.entries) == 1


def test_cached_tokenisation_is_encode_qa(micro_bench, tokenizer):
    enc = _Encodings.of(tokenizer)
    assert _Encodings.of(tokenizer) is enc  # one cache per tokenizer
    for p, a in zip(*_all_pairs(micro_bench, micro_bench.items)):
        ids, labels = encode_qa(tokenizer, p, a)
        prompt, answer = enc.pair(p, a)
        assert list(prompt) + list(answer) == ids and labels == [-100] * len(prompt) + list(answer)


def test_paired_forward_gives_the_losses_and_gradients_of_two(trained_micro, micro_bench, tokenizer):
    forget = next(iter(BatchStream(qa_examples(tokenizer, micro_bench, micro_bench.split("forget")), 5, pad_id(tokenizer), 0)))
    retain = next(iter(BatchStream(qa_examples(tokenizer, micro_bench, micro_bench.split("retain")), 7, pad_id(tokenizer), 1)))
    model = copy.deepcopy(trained_micro).train()
    grads = []
    for paired in (False, True):
        model.zero_grad()
        f, r = paired_mean_nll(model, forget, retain) if paired else (mean_nll(model, forget), mean_nll(model, retain))
        (-f + 0.7 * r).backward()
        grads.append(([float(f.detach()), float(r.detach())], [p.grad.clone() for p in model.parameters()]))
    assert grads[0][0] == pytest.approx(grads[1][0], abs=1e-6)
    assert max(float((a - b).abs().max()) for a, b in zip(grads[0][1], grads[1][1])) < 1e-5


def _full_logits_token_logprobs(model, batch):
    """token_logprobs computed the plain way: every position's logits, then the labelled ones read."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits[:, :-1].float()
    target = batch.labels[:, 1:]
    mask = target != -100
    logp = torch.gather(torch.log_softmax(logits, -1), 2, target.clamp(min=0)[..., None]).squeeze(-1)
    return logp * mask, (logits.argmax(-1) == target.clamp(min=0)) | ~mask, mask


class _AllPositions(torch.nn.Module):
    """A causal LM that ignores ``logits_to_keep`` (returns every position), or returns a wrong shape."""

    def __init__(self, inner, broken=False):
        super().__init__()
        self.inner, self.broken = inner, broken

    def forward(self, input_ids, attention_mask=None, use_cache=None, logits_to_keep=0):
        out = self.inner(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        return type("Out", (), {"logits": out.logits[:, :3] if self.broken else out.logits})()


def _assert_same_window(fast, plain):
    """fast: token_logprobs' [B, T−f] tensors; plain: the [B, T−1] ones; the window is plain's last T−f columns."""
    width = fast[0].shape[1]
    for got, want in zip(fast, plain):
        assert got.shape == (want.shape[0], width)
        torch.testing.assert_close(got, want[:, want.shape[1] - width:])
    assert not plain[2][:, : plain[2].shape[1] - width].any(), "nothing labelled left of the window"


@pytest.mark.parametrize("labels, width", [
    ([[-100, -100, -100, -100, -100], [-100, -100, -100, -100, -100]], 1),  # nothing labelled: one masked column
    ([[-100, -100, -100, 7, 9], [-100, -100, -100, -100, -100]], 2),  # a row without labels
    ([[-100, 5, 6, 7, -100], [-100, -100, -100, -100, 9]], 4),  # rows start and end their labels apart
    ([[-100, 5], [-100, 8]], 1),  # T = 2
])
def test_token_logprobs_edge_label_patterns(trained_micro, labels, width):
    from bench.data import Batch

    labels = torch.tensor(labels)
    ids = torch.where(labels >= 0, labels, 3)
    batch = Batch(ids, torch.ones_like(ids), labels, torch.arange(len(ids)))
    fast = token_logprobs(trained_micro, batch)
    assert fast[0].shape == (2, width)
    _assert_same_window(fast, _full_logits_token_logprobs(trained_micro, batch))


def test_token_logprobs_at_labelled_positions_equal_the_full_projection(trained_micro, micro_bench, tokenizer):
    """Logits only where a label is read: the same log-probs, hits and mask as projecting every position (in
    the same [B, T−f] layout), the same gradient up to float rounding, and the same for a model that ignores
    the boolean logits_to_keep; a model that returns something else fails with the fix."""
    batch = next(iter(BatchStream(qa_examples(tokenizer, micro_bench, micro_bench.split("retain")), 9, pad_id(tokenizer), 3)))
    model = copy.deepcopy(trained_micro).train()
    fast, plain = token_logprobs(model, batch), _full_logits_token_logprobs(model, batch)
    width = fast[0].shape[1]
    assert width < batch.labels.shape[1] - 1, "the batch's prompts should make the kept window narrower than T-1"
    _assert_same_window(fast, plain)
    grads = []
    for fn in (token_logprobs, _full_logits_token_logprobs):
        model.zero_grad()
        logp, _, mask = fn(model, batch)
        (-logp.sum() / mask.sum()).backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    assert max(float((a - b).abs().max()) for a, b in zip(*grads)) < 1e-6
    ignoring = token_logprobs(_AllPositions(model), batch)
    for a, b in zip(ignoring, fast):
        torch.testing.assert_close(a, b)
    with pytest.raises(RuntimeError, match="transformers>=5.21"):
        token_logprobs(_AllPositions(model, broken=True), batch)


def test_graddiff_loss_equals_the_usual_hugging_face_formulation(trained_micro, micro_bench, tokenizer):
    """bench.perf times the harness's GradDiff step against HF Trainer running the loss written the usual way
    (two forwards, the model's own label loss, as OpenUnlearning's GradDiff): it must be the same loss."""
    from bench.method import UnlearnBatch
    from bench.perf.__main__ import usual_graddiff_loss
    from methods.graddiff import GradDiff

    forget = next(iter(BatchStream(qa_examples(tokenizer, micro_bench, micro_bench.split("forget")), 5, pad_id(tokenizer), 0)))
    retain = next(iter(BatchStream(qa_examples(tokenizer, micro_bench, micro_bench.split("retain")), 7, pad_id(tokenizer), 1)))
    batch = UnlearnBatch(forget=forget, retain=retain)
    model = copy.deepcopy(trained_micro).train()
    results = []
    for loss_fn in (GradDiff(alpha=0.7).loss, usual_graddiff_loss(0.7)):
        model.zero_grad()
        loss = loss_fn(model, batch)
        loss.backward()
        results.append((float(loss.detach()), [p.grad.clone() for p in model.parameters()]))
    assert results[0][0] == pytest.approx(results[1][0], abs=1e-5)
    assert max(float((a - b).abs().max()) for a, b in zip(results[0][1], results[1][1])) < 1e-5


def test_skipped_generations_leave_every_item_score_unchanged(trained_micro, micro_bench, tokenizer):
    skipped = 0
    for split, (source, phrasing) in SPLIT_VIEWS.items():
        items = micro_bench.split(source)
        if not items or (phrasing == "paraphrase" and not items[0].paraphrase):
            continue
        fast = score_items(trained_micro, tokenizer, micro_bench, items, phrasing, batch_size=8)
        full = score_items(trained_micro, tokenizer, micro_bench, items, phrasing, batch_size=8, skip_exact_generations=False)
        assert fast.generations == full.generations, split
        assert (fast.rouge_recall == full.rouge_recall).all() and (fast.em == full.em).all()
        skipped += int(fast.em.sum())
    assert skipped > 0  # the skip was exercised


def test_exact_generation_refuses_a_cut_answer(tokenizer):
    assert exact_generation(tokenizer, "Paris", 8) == "Paris"
    long = "Paris " * 10
    assert exact_generation(tokenizer, long, 3) is None


def test_stopping_check_pairs_give_mcq_correct_and_retain_em(trained_micro, micro_bench, tokenizer):
    # bench.run's check scores forget options and retain answers in one call: same verdicts as separately.
    forget, retain = micro_bench.split("forget"), micro_bench.split("retain")
    ps, ans = option_pairs(micro_bench, forget)
    n = len(ps)
    scored = score_answers(trained_micro, tokenizer, ps + prompts(micro_bench, retain, "question"), ans + [it.answer for it in retain])
    acc = forced_choice(scored.option_logprob[:n].reshape(len(forget), -1), forget)
    assert (acc == mcq_correct(trained_micro, tokenizer, micro_bench, forget)).all()
    alone = score_answers(trained_micro, tokenizer, prompts(micro_bench, retain, "question"), [it.answer for it in retain])
    assert (scored.exact[n:] == alone.exact).all()


def test_stop_check_can_cap_the_retain_items_it_traces(trained_micro, micro_bench, tokenizer):
    from bench.run import StopCheck

    forget, retain = micro_bench.split("forget"), micro_bench.split("retain")
    full = StopCheck(micro_bench, tokenizer, forget, retain)
    capped = StopCheck(micro_bench, tokenizer, forget, retain, retain_items=5)
    assert len(capped.retain) == 5 and capped.retain[0] is retain[0] and capped.retain[-1] is retain[-1]
    acc, _ = full(trained_micro)
    acc_capped, em_capped = capped(trained_micro)
    assert acc_capped == acc  # the stopping rule's number does not depend on the cap
    alone = score_answers(trained_micro, tokenizer, prompts(micro_bench, capped.retain, "question"),
                          [it.answer for it in capped.retain]).exact.mean()
    assert em_capped == pytest.approx(alone)


def _assert_same_scores(a, b, tol=1e-5):
    assert (a.exact == b.exact).all() and (a.n_tokens == b.n_tokens).all()
    assert max(np.abs(x - y).max() for x, y in zip(a.token_logprobs, b.token_logprobs)) < tol


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_the_last_block_at_read_positions_scores_as_the_whole_forward(trained_micro, micro_bench, tokenizer,
                                                                      monkeypatch, attention):
    """bench.last_block: the packed pass computes its last decoder block only where logits are read, and gives
    the whole forward's scores (exact verdicts equal, log-probs to float rounding) for both attention kernels."""
    from bench import last_block

    model = copy.deepcopy(trained_micro)
    model.set_attn_implementation(attention)
    ps, ans = _all_pairs(micro_bench, micro_bench.items)
    calls = []
    real = last_block._block_at
    monkeypatch.setattr(last_block, "_block_at", lambda *a: calls.append(1) or real(*a))
    whole = score_answers(model, tokenizer, ps, ans, batch_size=16, read_only_last_block=False)
    assert not calls
    read = score_answers(model, tokenizer, ps, ans, batch_size=16)
    assert calls and 0 < read.exact.sum() < len(ps)
    _assert_same_scores(read, whole)
    assert "forward" not in vars(model.model.layers[-1])  # the block's own forward is back


def test_a_hook_on_the_last_block_keeps_the_whole_forward(trained_micro, micro_bench, tokenizer):
    """A method's hook on the last block (MRP's projection can sit there) runs as deployed: no shortcut then.
    A hook on the whole model (the stopping check's non-finite guard) keeps the shortcut and sees the logits."""
    from bench.last_block import eligible_last_block

    model = copy.deepcopy(trained_micro).eval()  # an earlier test may leave the shared fixture in train mode
    ps, ans = _all_pairs(micro_bench, micro_bench.items[:6])
    plain = score_answers(model, tokenizer, ps, ans)
    handle = model.model.layers[-1].register_forward_hook(
        lambda m, i, out: out + torch.linspace(-1, 1, out.shape[-1]))  # RMSNorm undoes a scale, not a shift
    with torch.no_grad():
        assert eligible_last_block(model) is None
    hooked = score_answers(model, tokenizer, ps, ans)
    whole = score_answers(model, tokenizer, ps, ans, read_only_last_block=False)
    handle.remove()
    _assert_same_scores(hooked, whole)
    assert np.abs(hooked.sum_logprob - plain.sum_logprob).max() > 1e-3  # the hook did act
    seen = []
    handle = model.register_forward_hook(lambda m, i, out: seen.append(tuple(out.logits.shape)))
    with torch.no_grad():
        assert eligible_last_block(model) is not None
    _assert_same_scores(score_answers(model, tokenizer, ps, ans), plain)
    handle.remove()
    assert seen and all(len(s) == 2 for s in seen)  # flat logits at the kept positions
    handle = model.register_forward_pre_hook(lambda m, args: None)  # could change the kept positions: whole
    with torch.no_grad():
        assert eligible_last_block(model) is None
    handle.remove()
    with torch.enable_grad():
        assert eligible_last_block(model) is None  # training keeps the whole forward


def _causal_inputs(model, rows: int, width: int, seed: int) -> dict:
    """A model call's inputs on random token ids: a 4D causal mask and positions, as the packed layout passes them."""
    ids = torch.randint(3, model.config.vocab_size, (rows, width), generator=torch.Generator().manual_seed(seed))
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    mask = torch.zeros(rows, 1, width, width).masked_fill_(~causal, torch.finfo(torch.float32).min)
    return dict(input_ids=ids, attention_mask=mask, position_ids=torch.arange(width).expand(rows, -1), use_cache=False)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_the_last_block_shortcut_with_grouped_queries_and_uneven_rows(tokenizer, attention):
    """Two blocks, grouped-query attention (2 key/value heads for 4 query heads), and rows that read three
    positions, one (a single query: transformers' decoding path) or none: the kept logits of the whole forward."""
    from bench.last_block import logits_read_at
    from bench.models import build_base_model
    from tests.conftest import MICRO_ARCH

    arch = {**MICRO_ARCH, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2}
    model = build_base_model({"arch": arch}, tokenizer, seed=3).eval()
    model.set_attn_implementation(attention)
    rows, width = 3, 10
    inputs = _causal_inputs(model, rows, width, seed=0)
    keep = torch.zeros(rows, width, dtype=torch.bool)
    keep[0, [2, 5, 9]] = True
    keep[1, 7] = True
    with torch.no_grad():
        whole = model(**inputs, logits_to_keep=keep).logits
        read, took = logits_read_at(model, keep, **inputs)
    assert took and read.shape == whole.shape == (4, model.config.vocab_size)
    assert (read - whole).abs().max() < 1e-5 and torch.equal(read.argmax(-1), whole.argmax(-1))


def test_the_last_block_shortcut_is_one_call_and_only_for_transformers_own_llama(trained_micro, tokenizer):
    """The swapped block forward serves one model call (a second forward inside it, e.g. a hook's with other kept
    positions, runs whole); a subclass of the model, train mode or an output-asking config keep the whole forward."""
    from transformers.models.llama.modeling_llama import LlamaForCausalLM

    from bench.last_block import eligible_last_block, logits_read_at

    model = copy.deepcopy(trained_micro).eval()
    rows, width = 2, 8
    inputs = _causal_inputs(model, rows, width, seed=1)
    keep, other = torch.zeros(rows, width, dtype=torch.bool), torch.zeros(rows, width, dtype=torch.bool)
    keep[:, 3] = True
    other[:, 6] = True
    inner = []

    def again(m, args, out):  # a hook that runs the model once more, with other kept positions
        if not inner:
            inner.append(None)
            inner[0] = m(**inputs, logits_to_keep=other).logits

    handle = model.register_forward_hook(again)
    with torch.no_grad():
        read, took = logits_read_at(model, keep, **inputs)
        handle.remove()
        assert took and "forward" not in vars(model.model.layers[-1])
        assert (read - model(**inputs, logits_to_keep=keep).logits).abs().max() < 1e-5
        assert (inner[0] - model(**inputs, logits_to_keep=other).logits).abs().max() < 1e-5

        class WithValueHead(LlamaForCausalLM):
            def forward(self, **kwargs):
                return super().forward(**kwargs)

        sub = copy.deepcopy(model)
        sub.__class__ = WithValueHead
        assert eligible_last_block(model) is not None and eligible_last_block(sub) is None
        model.train()
        assert eligible_last_block(model) is None
        model.eval()
        model.config.output_hidden_states = True
        assert eligible_last_block(model) is None
