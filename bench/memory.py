"""Evaluation batch sizes that adapt to device memory.

A scoring batch size that fits the tiny model on a CPU can exhaust a GPU with an 8B model (or the
reverse: leave most of it idle). ``fitting`` runs a whole scoring pass at the configured batch size
and, when the device runs out of memory, reruns it with a smaller one (10% smaller each time, as
accelerate's ``find_executable_batch_size``; accelerate decides what counts as out of memory and
empties the caches in between). The pass restarts from its first batch, so its output never mixes
batch sizes; per-row scores do not depend on the batch size beyond float summation order (rows are
scored independently).

Not accelerate's decorator itself: it runs a full ``gc.collect()`` on *every* call, before any
out-of-memory error, and a scoring pass is called hundreds of times per run (every relearn checkpoint,
every stopping check). With the harness's heap that collection cost ~0.4 s a call: most of a micro
run's evaluation time and about half of the relearn suite's (README "Measured times"). Here caches are
emptied only after an out-of-memory error, where they are needed.
"""

from __future__ import annotations

import logging
from typing import Callable, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


def fitting(run: Callable[[int], T], batch_size: int) -> T:
    """``run(batch_size)``, retried with smaller batches while the device is out of memory."""
    from accelerate.utils.memory import clear_device_cache, should_reduce_batch_size

    size = batch_size
    while True:
        try:
            return run(size)
        except Exception as error:  # noqa: BLE001 - re-raised unless accelerate calls it out of memory
            if not should_reduce_batch_size(error):
                raise
            clear_device_cache(garbage_collection=True)
            smaller = int(size * 0.9)
            if smaller == 0:
                raise RuntimeError(f"out of device memory even at scoring batch size {size}") from error
            log.warning("out of device memory at scoring batch size %d: retrying with %d", size, smaller)
            size = smaller
