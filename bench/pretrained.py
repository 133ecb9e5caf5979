"""Unlearning knowledge the model already has (``model.inject: null``).

Both seed papers unlearn what a pretrained model learned in pretraining (FaithUn, ScienceQA,
WMDP); by default the harness fine-tunes its target on the forget items first. With
``model.inject: null`` the target is the base model as loaded, and the forget split is cut down to
the facts it already knows: an item stays iff the base model answers it correctly by forced
choice on its trained phrasing (``RULE``), the measure the Ssiuu paper's FaithUn numbers use. The
rule and the counts go into the record (``forget_filter``). There is no oracle then (no model that
never saw the facts exists for pretraining knowledge): forget quality, privleak and the attacked
oracle are not computed, and the relearn suite attacks the base model on the same data as its
no-op control (``target_attacked/<attack>``).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from bench.benchmark import Benchmark
from bench.errors import UserError
from bench.items import mcq_correct

RULE = "forget item kept iff the base model's forced choice over its options is correct on the trained phrasing"
MIN_KNOWN = 2  # the stopping rule and any attack split need more than one fact


class PretrainedKnowledgeError(UserError):
    """Too few forget facts known to the base model; the message gives the counts and the fix."""


def known_forget(model, tokenizer, bench: Benchmark) -> tuple[Benchmark, dict[str, Any]]:
    """``bench`` with its forget split reduced to the items ``model`` answers correctly, and the record entry."""
    forget = bench.split("forget")
    correct = mcq_correct(model, tokenizer, bench, forget)
    dropped = {it.id for it, ok in zip(forget, correct) if not ok}
    kept = [it for it in forget if it.id not in dropped]
    entry = {"rule": RULE, "forget_items": len(forget), "kept": len(kept), "dropped_ids": sorted(dropped),
             "forget_groups": len(bench.groups("forget")), "kept_groups": len({it.group for it in kept})}
    if len(kept) < MIN_KNOWN:
        raise PretrainedKnowledgeError(
            f"model.inject=null: the base model answers {len(kept)} of {len(forget)} forget items correctly (forced choice); "
            f"at least {MIN_KNOWN} are needed. Use a benchmark of facts the model knows (e.g. benchmark=file "
            "benchmark.path=bench/assets/world_facts.json), more forget items, or inject them (model.inject settings)")
    return replace(bench, items=[it for it in bench.items if it.id not in dropped]), entry
