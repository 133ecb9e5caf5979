"""Minimum detectable difference (bench/power.py): the paired t-test's power, checked by simulation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from bench.power import (MAX_SEEDS, detection_power, half_width, mdd_table, min_detectable_difference,
                         seed_plan, seeds_for_half_width)
from bench.errors import UserError
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


def _two_column_rec(method, seed, forget, retain):
    rec = _rec(method, seed, forget)
    rec["rows"].append({"stage": "unlearned", "suite": "knowledge", "split": "retain", "metric": "em",
                        "value": retain, "n": 1})
    return rec


def test_seed_plan_sizes_each_row_by_its_widest_column():
    """Each row (the baseline too) needs the seeds of its widest column; --columns weighs only the named ones."""
    ga = {0: (0.30, 0.10), 1: (0.31, 0.60), 2: (0.29, 0.35), 3: (0.30, 0.90)}  # retain em varies, forget mcq hardly
    graddiff = {0: (0.28, 0.90), 1: (0.29, 0.91), 2: (0.27, 0.92), 3: (0.28, 0.90)}
    df = records_frame([_two_column_rec("ga", s, *v) for s, v in ga.items()]
                       + [_two_column_rec("graddiff", s, *v) for s, v in graddiff.items()])
    plan = seed_plan(df, 0.10).set_index("row")
    retain_sd = float(np.std([v[1] for v in ga.values()], ddof=1))
    assert plan.loc["ga", "widest_column"] == "retain em" and plan.loc["ga", "seeds"] == 4
    assert plan.loc["ga", "seeds_needed"] == seeds_for_half_width(retain_sd, 0.10) > 4
    assert plan.loc["ga", "half_width_now"] == pytest.approx(half_width(retain_sd, 4))
    assert plan.loc["graddiff", "seeds_needed"] == 2  # the baseline is planned too: its SDs are tiny
    only_forget = seed_plan(df, 0.10, columns=["forget mcq"]).set_index("row")
    assert only_forget.loc["ga", "widest_column"] == "forget mcq" and only_forget.loc["ga", "seeds_needed"] == 2
    assert seed_plan(df, 0.10, columns=["relearn"]).empty  # no relearn column in these records
    with pytest.raises(UserError, match="retain mcq"):
        seed_plan(df, 0.10, columns=["retain mcq"])


def test_cli_prints_the_seed_plan_and_refuses_columns_without_a_half_width(tmp_path, capsys):
    from bench.power import main
    from bench.record import to_json

    for i, (method, forget, retain) in enumerate([("ga", 0.30, 0.1), ("ga", 0.31, 0.9), ("ga", 0.30, 0.5),
                                                   ("graddiff", 0.28, 0.9), ("graddiff", 0.29, 0.91),
                                                   ("graddiff", 0.27, 0.92)]):
        folder = tmp_path / f"run{i}"
        folder.mkdir()
        (folder / "record.json").write_text(to_json(_two_column_rec(method, i % 3, forget, retain)))
    main([str(tmp_path), "--baseline", "graddiff", "--half-width", "0.10"])
    out = capsys.readouterr().out
    assert "seed plan for a 95% half-width <= 0.1" in out and "1 of 2 rows need more seeds: ga 3 -> " in out
    needed = seeds_for_half_width(float(np.std([0.1, 0.9, 0.5], ddof=1)), 0.10)
    assert f"run `method=ga,graddiff seed={','.join(str(s) for s in range(3, needed))}`" in out
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path), "--baseline", "graddiff", "--columns", "rtt"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--half-width" in err[0]


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
