"""Reuse of evaluated oracle and target stages across the runs of a sweep.

Every method of a seed evaluates the same oracle and target models with the same suites and
settings, so those stages' rows, examples and the oracle-side references later stages read
(``SuiteContext.reference``) are identical from run to run; on the Quickstart sweep they were a
third of each run's time. A stage is cached under a hash of everything it depends on: the stage
name, both models' cache keys (tokenizer, model spec, injection, seed), the whole benchmark, the
suites and their resolved settings, the version of the loaded harness code, the library versions,
and the torch thread count and device.
Any change computes it afresh; writes are atomic and file-locked like the model cache.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, Callable

from bench.benchmark import Benchmark
from bench.disk_cache import digest, pickled
from bench.record import code_version, package_versions
from bench.stages import CACHED_STAGES
from bench.suites import Row, SuiteContext, SuiteOutput

log = logging.getLogger(__name__)


def stage_identity(model_keys: dict[str, str], bench: Benchmark, suites: list[str], settings: dict[str, Any],
                   runtime: dict[str, Any]) -> dict[str, Any]:
    """What a cached stage depends on besides its name, computed once per run. ``settings``: suite name
    -> typed ``Settings`` (``bench.suites.validate_settings``) or raw mapping. ``runtime``: what
    else changes numbers in the last bits (torch threads, device)."""
    settings = {name: asdict(s) if is_dataclass(s) else s for name, s in settings.items()}
    return {"models": model_keys, "benchmark": digest(asdict(bench)), "suites": list(suites), "settings": settings,
            "code": code_version(), "packages": package_versions(), "runtime": runtime}


def cached_stage(stage: str, identity: dict[str, Any] | None, cache_dir: str | Path | None, ctx: SuiteContext,
                 compute: Callable[[], SuiteOutput]) -> tuple[SuiteOutput, bool]:
    """The stage's output: from the cache if this exact stage was evaluated before, else ``compute()``.

    The references the stage computed (``ctx.capture_references``) are saved with its rows and
    examples and restored on reuse, so later stages see the same context either way. ``identity``
    None disables the cache, as does a stage outside ``bench.stages.CACHED_STAGES``.
    Returns (output, reused).
    """
    if identity is None or cache_dir is None or stage not in CACHED_STAGES:
        return compute(), False

    def evaluated() -> dict[str, Any]:
        with ctx.capture_references() as references:
            out = compute()
        return {"rows": [r.as_dict() for r in out.rows], "examples": out.examples, "references": references}

    path = Path(cache_dir) / "stages" / f"{stage}-{digest({'stage': stage, **identity})}.pkl"
    saved, reused = pickled(path, evaluated)
    if reused:
        ctx.restore_references(saved["references"])
        log.info("stage %s: reused %s", stage, path)
    return SuiteOutput([Row(**r) for r in saved["rows"]], saved["examples"]), reused
