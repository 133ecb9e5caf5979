"""bench.memory.fitting: retries a scoring pass with smaller batches only on out-of-memory errors."""

import gc

import pytest
import torch

from bench.memory import fitting


@pytest.fixture
def collections(monkeypatch):
    calls = []
    real = gc.collect
    monkeypatch.setattr(gc, "collect", lambda *a: calls.append(a) or real(*a))
    return calls


def test_a_pass_that_fits_runs_once_without_garbage_collection(collections):
    # accelerate's decorator collects on every call (~0.4 s with the harness's heap); a pass that fits must not.
    sizes = []
    assert fitting(lambda size: sizes.append(size) or "scores", 64) == "scores"
    assert sizes == [64]
    assert collections == []


def test_out_of_memory_retries_ten_percent_smaller_and_empties_caches(collections):
    sizes = []

    def run(size):
        sizes.append(size)
        if size > 50:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return size

    assert fitting(run, 64) == 45
    assert sizes == [64, 57, 51, 45]  # int(0.9 * size) each time, as accelerate
    assert len(collections) == 3  # caches emptied after each out-of-memory error, not before the first try


def test_other_errors_propagate_without_a_retry(collections):
    sizes = []

    def run(size):
        sizes.append(size)
        raise ValueError("shape mismatch")

    with pytest.raises(ValueError, match="shape mismatch"):
        fitting(run, 64)
    assert sizes == [64]
    assert collections == []


def test_out_of_memory_at_every_size_stops_with_a_clear_error():
    def run(size):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    with pytest.raises(RuntimeError, match="even at scoring batch size 1"):
        fitting(run, 4)
