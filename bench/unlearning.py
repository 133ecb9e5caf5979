"""The ``unlearn`` rows of a record: how the unlearning phase went (steps, time, divergence, target)."""

from __future__ import annotations

from bench.suites import Row
from bench.train import TrainResult

SUITE = "unlearn"

# Which way is better (bench.directions); diverged and reached_target are row marks in the tables.
DIRECTIONS = [
    (r".*", r"steps|wall_s", "lower"),
    (r".*", r"diverged|reached_target", None),
]
INTEGER_METRICS = ("steps",)  # counts: printed as integers


def unlearn_rows(stage: str, result: TrainResult, reached: bool | None, n: int) -> list[Row]:
    rows = [Row(stage, SUITE, "forget", "steps", result.steps, n),
            Row(stage, SUITE, "forget", "wall_s", result.wall_s, n),
            Row(stage, SUITE, "forget", "diverged", float(result.diverged), n)]
    if reached is not None:
        rows.append(Row(stage, SUITE, "forget", "reached_target", float(reached), n))
    return rows
