"""Teacher-forced scoring gives greedy decoding's verdict, and batching changes nothing."""

import numpy as np
import pytest
import torch

from bench.scoring import greedy_answers, score_answers
from bench.items import mcq_correct


def _prompts(bench, items):
    return [bench.prompt(it.question) for it in items]


def test_teacher_forced_em_equals_greedy_generation(trained_micro, micro_bench, tokenizer):
    items = [it for it in micro_bench.items if it.split in ("forget", "retain", "holdout", "general")]
    prompts = _prompts(micro_bench, items)
    answers = [it.answer for it in items]
    tf = score_answers(trained_micro, tokenizer, prompts, answers, batch_size=7).exact
    generated = greedy_answers(trained_micro, tokenizer, prompts, max_new_tokens=6, batch_size=5)
    greedy = np.array([g == a for g, a in zip(generated, answers)])
    # The micro model must know some facts and miss others, or the check proves nothing.
    assert 0 < greedy.sum() < len(items)
    assert (tf == greedy).all()


def test_em_also_matches_on_wrong_answers(trained_micro, micro_bench, tokenizer):
    # Score each item's first perturbed answer: em is true exactly when greedy produces it.
    items = micro_bench.items
    prompts = _prompts(micro_bench, items)
    generated = greedy_answers(trained_micro, tokenizer, prompts, max_new_tokens=6)
    wrong = [it.perturbed[0] for it in items]
    tf = score_answers(trained_micro, tokenizer, prompts, wrong).exact
    assert (tf == np.array([g == w for g, w in zip(generated, wrong)])).all()


def test_batching_and_padding_do_not_change_scores(trained_micro, micro_bench, tokenizer):
    items = micro_bench.items[:12]
    prompts, answers = _prompts(micro_bench, items), [it.answer for it in items]
    one = score_answers(trained_micro, tokenizer, prompts, answers, batch_size=1)
    many = score_answers(trained_micro, tokenizer, prompts, answers, batch_size=12)
    assert one.sum_logprob == pytest.approx(many.sum_logprob, abs=1e-4)
    assert (one.exact == many.exact).all()
    assert (one.n_tokens == many.n_tokens).all()


def test_sum_logprob_matches_manual_forward(fresh_micro, micro_bench, tokenizer):
    it = micro_bench.items[0]
    prompt = micro_bench.prompt(it.question)
    s = score_answers(fresh_micro, tokenizer, [prompt], [it.answer])
    p = [tokenizer.bos_token_id] + tokenizer(prompt, add_special_tokens=False).input_ids
    a = tokenizer(" " + it.answer, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
    with torch.no_grad():
        logp = torch.log_softmax(fresh_micro(torch.tensor([p + a])).logits[0], -1)
    manual = sum(logp[len(p) - 1 + i, tok].item() for i, tok in enumerate(a))
    assert s.sum_logprob[0] == pytest.approx(manual, abs=1e-4)
    assert s.n_tokens[0] == len(a)


def test_mcq_picks_highest_option(trained_micro, micro_bench, tokenizer):
    items = micro_bench.items
    correct = mcq_correct(trained_micro, tokenizer, micro_bench, items)
    for it, c in zip(items, correct):
        p = micro_bench.prompt(it.question)
        s = score_answers(trained_micro, tokenizer, [p] * len(it.options), list(it.options))
        lp = np.array([t[:-1].sum() for t in s.token_logprobs])  # answer tokens, the end token left out
        assert c == (int(np.argmax(lp)) == it.answer_index)
        assert s.option_logprob == pytest.approx(s.sum_logprob - np.array([t[-1] for t in s.token_logprobs]), abs=1e-4)


def test_answer_logprobs_drop_only_the_end_token(fresh_micro, micro_bench, tokenizer):
    # token_logprobs covers the answer tokens then the end token (encode_qa); answer_logprobs is the
    # answer tokens alone, what Min-K% scores (OpenUnlearning's tokenwise_logprobs drops the EOS too).
    it = micro_bench.items[0]
    prompt = micro_bench.prompt(it.question)
    s = score_answers(fresh_micro, tokenizer, [prompt, prompt], [it.answer, it.perturbed[0]])
    p = [tokenizer.bos_token_id] + tokenizer(prompt, add_special_tokens=False).input_ids
    for row, answer in enumerate([it.answer, it.perturbed[0]]):
        a = tokenizer(" " + answer, add_special_tokens=False).input_ids
        with torch.no_grad():
            logp = torch.log_softmax(fresh_micro(torch.tensor([p + a + [tokenizer.eos_token_id]])).logits[0], -1)
        manual = [logp[len(p) - 1 + i, tok].item() for i, tok in enumerate(a)]
        eos = logp[len(p) + len(a) - 1, tokenizer.eos_token_id].item()
        assert s.answer_logprobs[row] == pytest.approx(manual, abs=1e-4)
        assert s.token_logprobs[row] == pytest.approx(manual + [eos], abs=1e-4)


def test_eval_mode_restores_the_training_flag_even_on_error(fresh_micro):
    from bench.scoring import eval_mode

    for flag in (True, False):
        fresh_micro.train(flag)
        with eval_mode(fresh_micro) as m:
            assert m is fresh_micro and not fresh_micro.training
        assert fresh_micro.training == flag
    fresh_micro.train(True)
    try:
        with eval_mode(fresh_micro):
            raise KeyError("boom")
    except KeyError:
        pass
    assert fresh_micro.training
    fresh_micro.eval()
