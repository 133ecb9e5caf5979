"""Helpers shared by bench.report and bench.plots: seed intervals and seed-paired comparisons."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats


WILCOXON_MIN_PAIRS = 6  # below this the signed-rank test cannot reach p < 0.05 two-sided: t-test only


def ci95(values) -> tuple[float, float]:
    """Mean and half-width of the 95% Student-t interval (0 for a single value; NaN/None dropped)."""
    v = pd.Series(values, dtype=float).dropna()
    if v.empty:
        return float("nan"), float("nan")
    mean = float(v.mean())
    if len(v) < 2:
        return mean, 0.0
    return mean, float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))


@dataclass(frozen=True)
class Paired:
    """Seed-paired difference ``row − baseline``: mean, 95% t interval and p-values."""

    n: int
    diff: float
    lo: float
    hi: float
    p_t: float          # paired t-test (scipy.stats.ttest_rel); NaN under 2 pairs
    p_wilcoxon: float   # Wilcoxon signed-rank (scipy.stats.wilcoxon); NaN under WILCOXON_MIN_PAIRS pairs

    @property
    def test(self) -> str:
        """The test whose p-value is shown: ``wilcoxon`` where it was computed, else ``t``."""
        return "wilcoxon" if not math.isnan(self.p_wilcoxon) else ("t" if not math.isnan(self.p_t) else "")

    @property
    def p(self) -> float:
        return self.p_wilcoxon if self.test == "wilcoxon" else self.p_t


def paired(row: pd.Series, base: pd.Series) -> Paired:
    """Compare two per-seed series (index = seed); only seeds finite in both are paired.

    The interval is the paired Student-t one; p-values: the paired t-test from 2 pairs on, the
    Wilcoxon signed-rank test also from ``WILCOXON_MIN_PAIRS`` pairs on.
    """
    both = pd.concat([row.astype(float), base.astype(float)], axis=1, keys=["row", "base"]).dropna()
    nan = float("nan")
    n = len(both)
    if n == 0:
        return Paired(0, nan, nan, nan, nan, nan)
    a, b = both["row"].to_numpy(), both["base"].to_numpy()
    mean, half = ci95(a - b)
    if n < 2:
        return Paired(n, mean, nan, nan, nan, nan)
    d = a - b
    same = bool(np.allclose(d, 0.0))
    constant = bool(np.allclose(d, d[0]))  # every pair differs by the same amount: no spread to test against
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # Identical runs: no difference (p = 1). A constant non-zero difference has no variance, so the
        # t statistic is infinite and its p-value (0) means nothing: NaN, shown as "p=n/a".
        p_t = 1.0 if same else nan if constant else float(stats.ttest_rel(a, b).pvalue)
        p_w = nan
        if n >= WILCOXON_MIN_PAIRS:
            p_w = 1.0 if same else float(stats.wilcoxon(a, b).pvalue)
    return Paired(n, mean, mean - half, mean + half, p_t, p_w)
