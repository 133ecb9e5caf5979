"""Names of the evaluated stages of a run (the ``stage`` field of every record row)."""

from __future__ import annotations

ORACLE = "oracle"        # never saw the forget split: what genuine absence looks like
TARGET = "target"        # learned every split: the model before unlearning
UNLEARNED = "unlearned"  # the target after the method
# Control stages of a method that keeps its edit in hooks (``Method.hooks``, e.g. MRP's projection):
ORACLE_WITH_HOOKS = "oracle_with_hooks"              # the oracle with the unlearned model's hooks attached: what
                                                     # the hooks alone do to a model that never knew the facts
UNLEARNED_HOOKS_REMOVED = "unlearned_hooks_removed"  # the unlearned model without its hooks: what the weights keep
HOOK_STAGES = (ORACLE_WITH_HOOKS, UNLEARNED_HOOKS_REMOVED)
REFERENCE_STAGES = (TARGET, ORACLE)
CACHED_STAGES = (ORACLE, TARGET)  # identical for every method of a seed (bench.stage_cache)


def request_stage(i: int) -> str:
    """Stage of the model after continual request ``i`` (1-based)."""
    return f"request/{i}"
