"""``benchmark=file``: a benchmark from a JSON file with the schema of ``bench.benchmark.Benchmark.to_json``."""

from __future__ import annotations

from bench.benchmark import Benchmark, BenchmarkError
from bench.benign import with_instructions


def load_benchmark_file(path: str, instructions: str | None = None) -> Benchmark:
    """The benchmark in ``path`` (validated). Its benign instruction corpus: the file's own ``instructions``,
    else the Alpaca-style file ``instructions``, else one generated offline (``bench.benign``)."""
    bench = Benchmark.from_json(path)
    if bench.instructions and instructions is not None:
        raise BenchmarkError(f"benchmark file {path} has its own 'instructions'; drop benchmark.instructions or them")
    return bench if bench.instructions else with_instructions(bench, instructions)
