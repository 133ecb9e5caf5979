"""GPU-ready settings, checked on the CPU: model.dtype names, fp32 scores under bf16 weights, gradient
checkpointing as a setting that changes memory, not numbers (nor the model cache key)."""

from __future__ import annotations

import copy

import pytest
import torch

from bench.data import BatchStream, pad_id, qa_examples
from bench.items import prompts
from bench.models import build_base_model, cache_key, runtime_settings
from bench.record import cpu, provenance, runtime_identity
from bench.reference import reference_logprobs
from bench.run_config import check_model_block
from bench.scoring import mean_nll, score_answers
from bench.train import TrainConfig
from tests.conftest import MICRO_ARCH


def test_dtype_names_are_one_cache_entry(micro_bench, tokenizer):
    inject = TrainConfig(lr=1e-3, max_steps=1)
    keys = {name: cache_key("target", check_model_block({"arch": MICRO_ARCH, "dtype": name}), micro_bench, tokenizer,
                            inject, 0) for name in ("bf16", "bfloat16", "fp32", "float32")}
    assert keys["bf16"] == keys["bfloat16"] and keys["fp32"] == keys["float32"] and keys["bf16"] != keys["fp32"]
    plain = cache_key("target", {"arch": MICRO_ARCH}, micro_bench, tokenizer, inject, 0)
    checkpointed = cache_key("target", {"arch": MICRO_ARCH, "gradient_checkpointing": True}, micro_bench, tokenizer, inject, 0)
    assert plain == checkpointed, "gradient checkpointing changes no weight: same cached model"


def test_the_cpu_thread_count_and_the_device_are_cache_entries(micro_bench, tokenizer):
    """A model trained at another thread count (float sums split differently) or on another device is another
    model: it must not be reused as if it were this run's. On a GPU the CPU thread count shapes no weight."""
    inject = TrainConfig(lr=1e-3, max_steps=1)
    spec = {"arch": MICRO_ARCH}
    before = torch.get_num_threads()
    try:
        keys = {}
        for threads in (1, 2):
            torch.set_num_threads(threads)
            keys[threads] = {dev: cache_key("target", spec, micro_bench, tokenizer, inject, 0, device=dev)
                             for dev in ("cpu", "cuda")}
    finally:
        torch.set_num_threads(before)
    assert keys[1]["cpu"] != keys[2]["cpu"]
    assert keys[1]["cuda"] == keys[2]["cuda"] != keys[1]["cpu"]


def test_every_cache_keys_the_runtime_one_way():
    """The model, stage and relearn-control caches key the runtime with one helper: the device type and, on
    CPU only, the thread count, the CPU and its vector kernels (without a visible GPU, a cuda device keys its
    type alone)."""
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = runtime_identity("cpu")
        torch.set_num_threads(2)
        two = runtime_identity(torch.device("cpu"))
        host = {"cpu": cpu()["model"], "kernels": torch.backends.cpu.get_cpu_capability()}
        assert one == {"device": "cpu", "threads": 1, **host} and two == {"device": "cpu", "threads": 2, **host}
        assert runtime_identity("cuda:1") == runtime_identity(torch.device("cuda", 0)) == {"device": "cuda"}
    finally:
        torch.set_num_threads(before)


def test_a_visible_gpu_keys_its_model_cuda_and_tf32(monkeypatch):
    """Two GPU models (or TF32 on and off) train float-different models: a shared cache keeps one per card."""
    names = {0: "NVIDIA H100 80GB HBM3", 1: "NVIDIA A100-SXM4-80GB"}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index: names[index])
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    h100 = runtime_identity("cuda")
    assert h100 == runtime_identity("cuda:0") != runtime_identity("cuda:1")
    assert h100["gpu"] == names[0] and h100["cuda"] == torch.version.cuda
    before = torch.backends.cuda.matmul.allow_tf32  # a module property: set and restored by hand
    try:
        torch.backends.cuda.matmul.allow_tf32 = not before
        assert runtime_identity("cuda") != h100
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before
    assert runtime_identity("cpu")["device"] == "cpu"  # the CPU key is untouched by a GPU's presence
    # a record names the card it ran on (the table legend reads it); a CPU run's record has no GPU
    assert provenance(0, "cuda:0")["gpu"] == h100 and provenance(0, "cpu")["gpu"] is None


def test_scores_and_references_are_fp32_under_bf16_weights(trained_micro, tokenizer, micro_bench):
    model = copy.deepcopy(trained_micro).to(torch.bfloat16)
    items = micro_bench.split("forget")
    scores = score_answers(model, tokenizer, prompts(micro_bench, items, "question"), [it.answer for it in items])
    full = score_answers(trained_micro, tokenizer, prompts(micro_bench, items, "question"), [it.answer for it in items])
    # bf16 weights move the log-probs (8 mantissa bits), fp32 log-softmax keeps them close to the fp32 model's
    assert scores.sum_logprob == pytest.approx(full.sum_logprob, abs=0.25)
    refs = reference_logprobs(model, qa_examples(tokenizer, micro_bench, items), pad_id(tokenizer))
    assert refs.dtype == torch.float32


def test_gradient_checkpointing_gives_the_same_gradients(tokenizer, micro_bench):
    batch = next(iter(BatchStream(qa_examples(tokenizer, micro_bench, micro_bench.split("retain")), 8, pad_id(tokenizer), 0)))
    grads = []
    for checkpointing in (False, True):
        model = runtime_settings(build_base_model({"arch": MICRO_ARCH}, tokenizer, seed=0), {"gradient_checkpointing": checkpointing})
        model.train()
        mean_nll(model, batch).backward()
        grads.append([p.grad.clone() for p in model.parameters()])
        assert model.is_activation_checkpointing == checkpointing
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)
