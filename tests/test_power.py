"""Minimum detectable difference (bench/power.py): the paired t-test's power, checked by simulation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from bench.power import (MAX_SEEDS, detection_power, half_width, mdd_table, min_detectable_difference,
                         seeds_for_half_width)
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


def test_half_width_is_the_student_t_interval_of_a_mean():
    values = np.array([0.62, 0.55, 0.44, 0.73, 0.78])
    low, high = stats.t.interval(0.95, len(values) - 1, loc=values.mean(), scale=stats.sem(values))
    assert half_width(float(values.std(ddof=1)), len(values)) == pytest.approx((high - low) / 2)
    assert math.isnan(half_width(1.0, 1))


@pytest.mark.parametrize("sd, wanted", [(0.137, 0.10), (0.08, 0.10), (0.05, 0.10), (0.3, 0.02), (0.01, 0.10)])
def test_seeds_for_half_width_is_the_fewest_seeds_that_reach_it(sd, wanted):
    n = seeds_for_half_width(sd, wanted)
    assert half_width(sd, n) <= wanted
    assert n == 2 or half_width(sd, n - 1) > wanted


def test_seeds_for_half_width_edges():
    assert seeds_for_half_width(0.137, 0.10) == 10  # NPO's rtt column at the paper preset (README)
    assert seeds_for_half_width(0.0, 0.10) == 2
    assert math.isnan(seeds_for_half_width(float("nan"), 0.10)) and math.isnan(seeds_for_half_width(0.1, 0.0))
    assert seeds_for_half_width(1.0, 1e-6) == math.inf and half_width(1.0, MAX_SEEDS) > 1e-6


def test_mdd_table_plans_seeds_for_a_half_width():
    base = {0: 0.30, 1: 0.28, 2: 0.33, 3: 0.25}
    diffs = {0: 0.02, 1: -0.01, 2: 0.04, 3: 0.00}
    df = records_frame([_rec("graddiff", s, v) for s, v in base.items()]
                       + [_rec("ga", s, base[s] + diffs[s]) for s in base])
    row = mdd_table(df, "graddiff", wanted_half_width=0.02).query("row == 'ga' and column == 'forget mcq'").iloc[0]
    own = [base[s] + diffs[s] for s in base]
    assert row.sd_row == pytest.approx(float(np.std(own, ddof=1)))
    assert row.seeds_row == seeds_for_half_width(row.sd_row, 0.02)
    assert row.seeds_diff == seeds_for_half_width(row.sd_diff, 0.02)
    assert "seeds_row" not in mdd_table(df, "graddiff").columns


def test_cli_rejects_a_non_positive_half_width_in_one_line(tmp_path, capsys):
    from bench.power import main

    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path), "--baseline", "graddiff", "--half-width", "0"])
    assert exit_info.value.code != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--half-width" in err[0] and "0.10" in err[0]


def test_cli_on_a_folder_without_records_says_so_in_one_line(tmp_path, capsys):
    from bench.power import main

    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path), "--baseline", "graddiff"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no record.json found under" in err[0] and str(tmp_path) in err[0], err
