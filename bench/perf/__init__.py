"""Benchmark scripts (timings, not tests): ``python -m bench.perf.<script>``."""
