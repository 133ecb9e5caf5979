"""Evaluation batch sizes that adapt to device memory.

A scoring batch size that fits the tiny model on a CPU can exhaust a GPU with an 8B model (or the
reverse: leave most of it idle). ``fitting`` runs a whole scoring pass at the configured batch size
and, when the device runs out of memory, reruns it with a smaller one (accelerate's
``find_executable_batch_size``: 10% smaller each time, caches emptied in between). The pass restarts
from its first batch, so its output never mixes batch sizes; per-row scores do not depend on the
batch size beyond float summation order (rows are scored independently).
"""

from __future__ import annotations

import logging
from typing import Callable, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


def fitting(run: Callable[[int], T], batch_size: int) -> T:
    """``run(batch_size)``, retried with smaller batches while the device is out of memory."""
    from accelerate.utils import find_executable_batch_size

    def attempt(size: int) -> T:
        if size != batch_size:
            log.warning("out of device memory at scoring batch size %d: retrying with %d", batch_size, size)
        return run(size)

    return find_executable_batch_size(attempt, starting_batch_size=batch_size)()
