"""Names of the evaluated stages of a run (the ``stage`` field of every record row)."""

from __future__ import annotations

ORACLE = "oracle"        # never saw the forget split: what genuine absence looks like
TARGET = "target"        # learned every split: the model before unlearning
UNLEARNED = "unlearned"  # the target after the method
REFERENCE_STAGES = (TARGET, ORACLE)
CACHED_STAGES = (ORACLE, TARGET)  # identical for every method of a seed (bench.stage_cache)


def request_stage(i: int) -> str:
    """Stage of the model after continual request ``i`` (1-based)."""
    return f"request/{i}"
