"""Minimum detectable difference (MDD) of a seed-paired comparison, from measured seed-to-seed noise.

For a column of the table and a row against a baseline row, the per-seed differences d_s = row_s −
baseline_s have a measured standard deviation s_d. With n seeds, a two-sided paired t-test at level α
detects a true mean difference δ with power 1 − β when the noncentral t distribution (df n − 1,
noncentrality δ·√n / s_d) puts 1 − β of its mass beyond ±t_{1−α/2, n−1}; the MDD is the δ where that
holds (solved with ``scipy.optimize.brentq`` on ``scipy.stats.nct``). Differences smaller than the
MDD are not reliably seen with n seeds; the ``paper`` preset reports n = 5.

``python -m bench.power DIR... --baseline graddiff [--n 5]`` prints, per row and headline column, the
measured s_d (from the seeds present) and the MDD at n seeds.
"""

from __future__ import annotations

import argparse
import math
from typing import Iterable

import numpy as np
import pandas as pd
from scipy import optimize, stats

from bench.errors import UserError, exit_with


def detection_power(delta: float, sd: float, n: int, alpha: float = 0.05) -> float:
    """Power of the two-sided paired t-test with ``n`` pairs against a true mean difference ``delta``."""
    df = n - 1
    crit = stats.t.ppf(1 - alpha / 2, df)
    nc = delta * math.sqrt(n) / sd
    upper, lower = float(stats.nct.sf(crit, df, nc)), float(stats.nct.cdf(-crit, df, nc))
    # scipy's nct returns NaN for a far tail (large noncentrality): that tail's mass is 0 or 1 there.
    upper = upper if math.isfinite(upper) else 1.0
    lower = lower if math.isfinite(lower) else 0.0
    return upper + lower


def min_detectable_difference(sd: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest true mean difference the paired t-test detects with probability ``power`` (NaN when
    it cannot be computed: under 2 pairs, or no measured spread)."""
    if n < 2 or not math.isfinite(sd):
        return float("nan")
    if sd == 0:
        return 0.0
    hi = sd
    while detection_power(hi, sd, n, alpha) < power:
        hi *= 2
    return float(optimize.brentq(lambda d: detection_power(d, sd, n, alpha) - power, 0.0, hi, xtol=1e-10 * sd))


def mdd_table(df: pd.DataFrame, baseline: str, n: int = 5, alpha: float = 0.05, power: float = 0.8) -> pd.DataFrame:
    """Per (row, headline column): pairs measured, SD of the seed-paired differences to the baseline row of
    the same reference group, and the MDD at ``n`` seeds."""
    from bench.report import table_rows, baseline_rows, build_table, per_seed

    t = build_table(df)
    base_of = baseline_rows(t.infos, baseline)
    rows = table_rows(df)
    out = []
    for col in t.columns:
        wide = per_seed(rows, col).pivot_table(index="seed", columns="row", values="value", dropna=False)
        for label, info in t.infos.items():
            base = base_of.get(info.group)
            if info.reference or base is None or label == base or label not in wide or base not in wide:
                continue
            d = (wide[label] - wide[base]).dropna().to_numpy(dtype=float)
            sd = float(np.std(d, ddof=1)) if len(d) >= 2 else float("nan")
            out.append({"row": label, "baseline": base, "column": col.label, "pairs": len(d),
                        "mean_diff": float(d.mean()) if len(d) else float("nan"), "sd_diff": sd,
                        f"mdd_n{n}": min_detectable_difference(sd, n, alpha, power)})
    return pd.DataFrame(out)


def main(argv: Iterable[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench.power", description="Minimum detectable differences from run records.")
    parser.add_argument("dirs", nargs="+", help="record.json files or directories searched recursively")
    parser.add_argument("--baseline", required=True, help="row label or method the other rows are paired with")
    parser.add_argument("--n", type=int, default=5, help="seeds of the planned comparison (paper preset: 5)")
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--power", type=float, default=0.8)
    args = parser.parse_args(None if argv is None else list(argv))
    from bench.report import load_frame

    try:
        table = mdd_table(load_frame(args.dirs), args.baseline, args.n, args.alpha, args.power)
    except UserError as err:
        exit_with(err, parser.prog)
    if table.empty:
        exit_with(UserError(f"no row to pair with {args.baseline!r} in {', '.join(args.dirs)}"), parser.prog)
    print(f"paired t-test, two-sided alpha={args.alpha}, power={args.power}, n={args.n} seeds; "
          "sd_diff: SD of the measured seed-paired differences")
    print(table.to_markdown(index=False, floatfmt=".4g"))


if __name__ == "__main__":
    main()
