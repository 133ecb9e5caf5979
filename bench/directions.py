"""Which way is better, per metric: declared once here, next to nothing else, for every suite.

``direction(suite, split, metric)`` answers ``higher``, ``lower``, ``zero`` (nearest 0),
``half`` (nearest 0.5, chance AUC) or ``None`` (informative only: never marked best). The
report (``bench.report``) and anything else that ranks rows reads it; no list of columns or
directions lives in the report.

A rule is ``(suite, split pattern, metric pattern, direction)``; patterns are full-match
regular expressions; the first matching rule wins. The direction ``knows`` means "more of it is
more knowledge": lower on a forget-side split (a split whose name starts with ``forget``),
higher on every other split. A suite declares its metrics with one ``declare(...)`` call (or
by adding rules to ``RULES`` below); a metric without a rule is still tabulated, unranked.
"""

from __future__ import annotations

import functools
import re
from typing import Literal, Optional

Direction = Literal["higher", "lower", "zero", "half"]
KNOWS = "knows"
_ANY = r".*"

# (suite, split, metric, direction). Keep each suite's rules together; first match wins.
RULES: list[tuple[str, str, str, str | None]] = [
    # knowledge (bench/suites/knowledge.py)
    ("knowledge", _ANY, r"forget_quality", "higher"),         # KS p-value against the oracle
    ("knowledge", _ANY, r"model_utility", "higher"),
    ("knowledge", _ANY, r"truth_ratio", "higher"),            # forget side min(R,1/R): 1 = indifferent; retain side 1-R
    ("knowledge", _ANY, r"em|mcq_acc|answer_prob|answer_prob_normalised|rougeL_recall", KNOWS),
    # privacy (bench/suites/privacy.py): the forget split should look like unseen data
    ("privacy", r"forget", r"mia_auc", "half"),
    ("privacy", r"forget", r"privleak", "zero"),
    ("privacy", _ANY, r"mia_auc", None),                     # retain vs holdout: shows the attack works
    # relearn (bench/suites/relearn.py): how much comes back after an attack
    ("relearn", _ANY, r"attack_lr@.*", None),
    ("relearn", _ANY, r"recovery(@.*)?", "lower"),
    ("relearn", r"forget_heldout", r"(mcq_acc|em)(@.*)?", "lower"),
    ("relearn", _ANY, r"(mcq_acc|em)(@.*)?", None),          # trained facts: did the attack learn what it saw?
    ("relearn", _ANY, r"wall_s|diverged", None),
    # diagnostics (bench/suites/diagnostics.py)
    ("diagnostics", _ANY, r"hide_ratio.*", "lower"),         # hiding shows as hide_ratio >> 1
    ("diagnostics", _ANY, r"logit_lens_acc@.*", KNOWS),
    # utility (bench/suites/utility.py): lm-eval task/metric
    ("utility", _ANY, r".*_stderr.*", None),
    ("utility", _ANY, r".*(perplexity|bits_per_byte|ppl).*", "lower"),
    ("utility", _ANY, r".*", "higher"),
    # continual (bench/continual.py): forget scores on earlier requests
    ("continual", _ANY, r"(em|mcq_acc|answer_prob)@.*", KNOWS),
    # unlearn block of every run (bench/run.py unlearn_rows)
    ("unlearn", _ANY, r"steps|wall_s", "lower"),
    ("unlearn", _ANY, r"diverged|reached_target", None),     # shown as row markers, not as numbers
]


def declare(suite: str, rules: list[tuple[str, str, str | None]]) -> None:
    """Add ``(split, metric, direction)`` rules for ``suite`` ahead of the built-in ones."""
    RULES[:0] = [(suite, split, metric, d) for split, metric, d in rules]
    _compiled.cache_clear()
    direction.cache_clear()


@functools.cache
def _compiled() -> list[tuple[str, re.Pattern, re.Pattern, str | None]]:
    return [(s, re.compile(sp), re.compile(m), d) for s, sp, m, d in RULES]


def forget_side(split: str) -> bool:
    return split.startswith("forget")


@functools.cache
def direction(suite: str, split: str, metric: str) -> Optional[Direction]:
    """The better direction of ``metric`` on ``split`` of ``suite``; None if it has none (or no rule)."""
    for s, sp, m, d in _compiled():
        if s == suite and sp.fullmatch(split) and m.fullmatch(metric):
            if d == KNOWS:
                return "lower" if forget_side(split) else "higher"
            return d  # type: ignore[return-value]
    return None


def rank_key(values, d: Optional[str]):
    """A key to minimise for ``values`` (a pandas Series or float) under direction ``d``."""
    return {"higher": lambda v: -v, "lower": lambda v: v, "zero": lambda v: abs(v),
            "half": lambda v: abs(v - 0.5)}[d](values)


# Metrics whose values are counts: printed as integers where a cell holds one seed.
INTEGER_METRICS: set[tuple[str, str]] = {("unlearn", "steps")}


def is_integer(suite: str, metric: str) -> bool:
    return (suite, metric) in INTEGER_METRICS
