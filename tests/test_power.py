"""Minimum detectable difference (bench/power.py): the paired t-test's power, checked by simulation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from bench.power import detection_power, mdd_table, min_detectable_difference
from bench.report import records_frame


def test_mdd_has_the_requested_power_by_simulation():
    sd, n = 0.04, 5
    delta = min_detectable_difference(sd, n)
    rng = np.random.default_rng(0)
    d = rng.normal(delta, sd, size=(40000, n))
    t = d.mean(1) / (d.std(1, ddof=1) / math.sqrt(n))
    rejected = np.abs(t) > stats.t.ppf(0.975, n - 1)
    assert rejected.mean() == pytest.approx(0.8, abs=0.01)
    assert detection_power(delta, sd, n) == pytest.approx(0.8)


def test_mdd_scales_with_sd_and_approaches_the_normal_formula():
    assert min_detectable_difference(2.0, 5) == pytest.approx(2 * min_detectable_difference(1.0, 5))
    z = stats.norm.ppf(0.975) + stats.norm.ppf(0.8)
    assert min_detectable_difference(1.0, 400) == pytest.approx(z / math.sqrt(400), rel=0.01)
    assert min_detectable_difference(1.0, 3) > min_detectable_difference(1.0, 5)
    assert math.isnan(min_detectable_difference(1.0, 1)) and min_detectable_difference(0.0, 5) == 0.0


def _rec(method, seed, forget):
    return {"method": method, "config": {"seed": seed, "method": {"_target_": method}},
            "unlearn": {"reached_target": True, "steps": 10},
            "rows": [{"stage": "unlearned", "suite": "knowledge", "split": "forget", "metric": "mcq_acc",
                      "value": forget, "n": 1}]}


def test_mdd_table_pairs_rows_with_the_baseline_by_seed():
    base = {0: 0.30, 1: 0.28, 2: 0.33}
    diffs = {0: 0.02, 1: -0.01, 2: 0.04}
    df = records_frame([_rec("graddiff", s, v) for s, v in base.items()]
                       + [_rec("ga", s, base[s] + diffs[s]) for s in base])
    t = mdd_table(df, "graddiff", n=5)
    row = t[(t.row == "ga") & (t.column == "forget mcq")].iloc[0]
    sd = float(np.std(list(diffs.values()), ddof=1))
    assert row.pairs == 3 and row.sd_diff == pytest.approx(sd)
    assert row.mdd_n5 == pytest.approx(min_detectable_difference(sd, 5))
