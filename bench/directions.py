"""Which way is better, per metric, as declared where the metric is defined.

Every module that produces record rows declares its metrics' directions next to them, as
``DIRECTIONS = [(split pattern, metric pattern, direction), ...]`` (full-match regular
expressions; the first match wins): each suite module of ``bench/suites/``, ``bench.continual``
and ``bench.unlearning``. A direction is ``higher``, ``lower``, ``zero`` (nearest 0), ``half``
(nearest 0.5, chance AUC), ``knows`` (more of it is more knowledge: lower on a forget-side split,
whose name starts with ``forget``, higher elsewhere) or None (informative only). A module may
list ``INTEGER_METRICS`` (counts, printed as integers). The modules are found by name (the
suites by ``bench.suites.available_suites``), never from a list kept here; a metric without a
rule is still tabulated, unranked.
"""

from __future__ import annotations

import functools
import importlib
import re
from types import ModuleType
from typing import Literal, Optional

Direction = Literal["higher", "lower", "zero", "half"]
KNOWS = "knows"
ROW_SOURCES = {"continual": "bench.continual", "unlearn": "bench.unlearning"}  # rows made outside bench/suites/


@functools.cache
def _source(suite: str) -> ModuleType | None:
    from bench.suites import available_suites

    if suite in available_suites():
        return importlib.import_module(f"bench.suites.{suite}")
    return importlib.import_module(ROW_SOURCES[suite]) if suite in ROW_SOURCES else None


@functools.cache
def _rules(suite: str) -> list[tuple[re.Pattern, re.Pattern, str | None]]:
    module = _source(suite)
    return [(re.compile(sp), re.compile(m), d) for sp, m, d in getattr(module, "DIRECTIONS", [])]


def forget_side(split: str) -> bool:
    return split.startswith("forget")


@functools.cache
def direction(suite: str, split: str, metric: str) -> Optional[Direction]:
    """The better direction of ``metric`` on ``split`` of ``suite``; None if it has none (or no rule)."""
    for sp, m, d in _rules(suite):
        if sp.fullmatch(split) and m.fullmatch(metric):
            if d == KNOWS:
                return "lower" if forget_side(split) else "higher"
            return d  # type: ignore[return-value]
    return None


def rank_key(values, d: Optional[str]):
    """A key to minimise for ``values`` (a pandas Series or float) under direction ``d``."""
    return {"higher": lambda v: -v, "lower": lambda v: v, "zero": lambda v: abs(v),
            "half": lambda v: abs(v - 0.5)}[d](values)


def is_integer(suite: str, metric: str) -> bool:
    return metric in getattr(_source(suite), "INTEGER_METRICS", ())
