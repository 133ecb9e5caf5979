"""Minimum detectable difference (MDD) of a seed-paired comparison, from measured seed-to-seed noise.

For a column of the table and a row against a baseline row, the per-seed differences d_s = row_s −
baseline_s have a measured standard deviation s_d. With n seeds, a two-sided paired t-test at level α
detects a true mean difference δ with power 1 − β when the noncentral t distribution (df n − 1,
noncentrality δ·√n / s_d) puts 1 − β of its mass beyond ±t_{1−α/2, n−1}; the MDD is the δ where that
holds (solved with ``scipy.optimize.brentq`` on ``scipy.stats.nct``). Differences smaller than the
MDD are not reliably seen with n seeds; the ``paper`` preset reports n = 5.

The same measured spreads also plan a sweep's seed count: with n seeds a 95% Student-t interval has half-width
t_{1−α/2, n−1}·s/√n, so ``seeds_for_half_width`` is the fewest seeds whose interval is at most a wanted
half-width h, for a row's own column (its seed SD s, the table's "mean ± half-width") and for its paired
difference to the baseline (s_d, the paired table's interval).

``python -m bench.power DIR... --baseline graddiff [--n 5] [--half-width 0.10 [--columns ...]]`` prints, per row and
headline column, the measured s_d (from the seeds present), the MDD at n seeds and, with ``--half-width``, the seeds
each interval needs and each row's seed plan (``seed_plan``: the seeds its widest column needs).
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


MAX_SEEDS = 10_000  # seeds_for_half_width's search bound: beyond it the answer is "more than any sweep runs"


def half_width(sd: float, n: int, alpha: float = 0.05) -> float:
    """Half-width of the two-sided Student-t interval of a mean over ``n`` seeds with seed SD ``sd``."""
    return float(stats.t.ppf(1 - alpha / 2, n - 1) * sd / math.sqrt(n)) if n >= 2 else float("nan")


def seeds_for_half_width(sd: float, wanted: float, alpha: float = 0.05) -> float:
    """The fewest seeds n >= 2 whose interval (``half_width``) is at most ``wanted``; NaN without a measured
    spread, inf beyond ``MAX_SEEDS``. The half-width falls monotonically in n, so a bisection finds it."""
    if not math.isfinite(sd) or wanted <= 0:
        return float("nan")
    if half_width(sd, 2, alpha) <= wanted:
        return 2
    if half_width(sd, MAX_SEEDS, alpha) > wanted:
        return math.inf
    lo, hi = 2, MAX_SEEDS  # half_width(lo) > wanted >= half_width(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if half_width(sd, mid, alpha) > wanted else (lo, mid)
    return hi


def mdd_table(df: pd.DataFrame, baseline: str, n: int = 5, alpha: float = 0.05, power: float = 0.8,
              wanted_half_width: float | None = None) -> pd.DataFrame:
    """Per (row, headline column): pairs measured, SD of the seed-paired differences to the baseline row of
    the same reference group, and the MDD at ``n`` seeds. With ``wanted_half_width``: also the row's own seed
    SD and the seeds its interval (``seeds_row``) and its paired difference's interval (``seeds_diff``) need
    for that half-width."""
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
            entry = {"row": label, "baseline": base, "column": col.label, "pairs": len(d),
                     "mean_diff": float(d.mean()) if len(d) else float("nan"), "sd_diff": sd,
                     f"mdd_n{n}": min_detectable_difference(sd, n, alpha, power)}
            if wanted_half_width is not None:
                own = wide[label].dropna().to_numpy(dtype=float)
                sd_row = float(np.std(own, ddof=1)) if len(own) >= 2 else float("nan")
                entry.update({"sd_row": sd_row, "seeds_row": seeds_for_half_width(sd_row, wanted_half_width, alpha),
                              "seeds_diff": seeds_for_half_width(sd, wanted_half_width, alpha)})
            out.append(entry)
    return pd.DataFrame(out)


def seed_plan(df: pd.DataFrame, wanted_half_width: float, columns: Iterable[str] | None = None,
              alpha: float = 0.05) -> pd.DataFrame:
    """Per table row (methods, the baseline and the reference rows alike): the seeds it has, the seeds its widest
    column needs for a 95% Student-t half-width of at most ``wanted_half_width`` (``seeds_for_half_width`` of that
    column's seed SD) and which column that is. ``columns`` (table column labels) restricts the columns weighed.

    This is the first stage of Stein's two-stage plan: the SDs measured on the seeds present size the rest. The
    interval over all seeds then re-estimates the SD, so it meets the width about as often as the SD estimate was
    not too small; a row with 3 seeds plans from 2 degrees of freedom (README "Seeds for an interval")."""
    from bench.report import build_table, per_seed, table_rows

    t = build_table(df)
    wanted = None if columns is None else list(columns)
    if wanted == ["relearn"]:  # the relearn suite's attack columns and max recovery (issue 13's ±0.10 cells)
        wanted = [c.label for c in t.columns if c.suite == "relearn" and "@wrong_only" not in c.metric]
    if wanted is not None:
        unknown = [c for c in wanted if c not in {col.label for col in t.columns}]
        if unknown:
            raise UserError(f"--columns names {unknown} that the table does not have; its columns: "
                            f"{[col.label for col in t.columns]}")
    rows = table_rows(df)
    weighed = [col for col in t.columns if wanted is None or col.label in wanted]
    # one (seed x row) frame per column, as mdd_table builds it
    wides = [(col, per_seed(rows, col).pivot_table(index="seed", columns="row", values="value", dropna=False))
             for col in weighed]
    out = []
    for label, info in t.infos.items():
        need, widest, widest_sd, widest_n, seeds = 0.0, None, float("nan"), 0, 0
        for col, wide in wides:
            if label not in wide:
                continue
            values = wide[label].dropna().to_numpy(dtype=float)
            if len(values) < 2:
                continue
            seeds = max(seeds, len(values))
            sd = float(np.std(values, ddof=1))
            n = seeds_for_half_width(sd, wanted_half_width, alpha)
            if widest is None or n > need:
                need, widest, widest_sd, widest_n = n, col.label, sd, len(values)
        if widest is not None:
            out.append({"row": label, "method": info.method, "reference": info.reference or info.control,
                        "seeds": seeds, "seeds_needed": need,
                        "widest_column": widest, "sd": widest_sd,
                        "half_width_now": half_width(widest_sd, widest_n, alpha)})
    return pd.DataFrame(out)


def top_up_hint(plan: pd.DataFrame, df: pd.DataFrame, baseline: str | None) -> str:
    """The overrides that run a seed plan's second stage: each short row's method on as many of the next unused
    seeds as it lacks (one override set per count), the baseline's on as many as the neediest row, so every
    paired difference keeps its pairs."""
    short = plan[(plan.seeds_needed > plan.seeds) & ~plan.reference]
    if short.empty:
        return ""
    if not all(math.isfinite(n) for n in short.seeds_needed):
        return "no finite top-up: a row needs more seeds than any sweep runs"
    first = int(pd.to_numeric(df["seed"], errors="coerce").max()) + 1
    lacking: dict[str, int] = {}
    for r in short.itertuples():
        lacking[r.method] = max(lacking.get(r.method, 0), int(r.seeds_needed - r.seeds))
    base = plan.loc[plan.row == baseline, "method"]
    if len(base):  # no row of that label (or no baseline): no pairs to keep
        lacking[str(base.iloc[0])] = max(lacking.values())
    groups: dict[int, list[str]] = {}
    for method, n in lacking.items():
        groups.setdefault(n, []).append(method)
    sets = [f"`method={','.join(methods)} seed={','.join(str(first + i) for i in range(n))}`"
            for n, methods in sorted(groups.items())]
    return ("second stage: run " + "; ".join(sets) + " with the sweep's command and its hydra.sweep.dir (finished "
            "runs are skipped), then report every seed")


def main(argv: Iterable[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench.power", description="Minimum detectable differences from run records.")
    parser.add_argument("dirs", nargs="+", help="record.json files or directories searched recursively")
    parser.add_argument("--baseline", required=True, help="row label or method the other rows are paired with")
    parser.add_argument("--n", type=int, default=5, help="seeds of the planned comparison (paper preset: 5)")
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--power", type=float, default=0.8)
    parser.add_argument("--half-width", type=float, default=None,
                        help="also print the seeds a row's interval and its paired difference's need for this 95%% "
                             "half-width (e.g. 0.10), and each row's seed plan for it")
    parser.add_argument("--columns", default=None,
                        help="with --half-width: the table columns the seed plan weighs, comma-separated labels "
                             "(e.g. 'harmful_p0.1 relearn mcq,rtt relearn mcq', as in table.md), or 'relearn': every "
                             "relearn attack column and max recovery; default every headline column")
    args = parser.parse_args(None if argv is None else list(argv))
    from bench.report import load_frame

    if args.half_width is not None and not args.half_width > 0:
        exit_with(UserError(f"--half-width must be > 0 (a 95% interval's half-width, e.g. 0.10); got {args.half_width}"),
                  parser.prog)
    if args.columns is not None and args.half_width is None:
        exit_with(UserError("--columns selects the seed plan's columns, which --half-width asks for; "
                            "add e.g. --half-width 0.10"), parser.prog)
    columns = None if args.columns is None else [c.strip() for c in args.columns.split(",") if c.strip()]
    try:
        frame = load_frame(args.dirs)
        table = mdd_table(frame, args.baseline, args.n, args.alpha, args.power, args.half_width)
        plan = None if args.half_width is None else seed_plan(frame, args.half_width, columns, args.alpha)
    except UserError as err:
        exit_with(err, parser.prog)
    if table.empty:
        exit_with(UserError(f"no row to pair with {args.baseline!r} in {', '.join(args.dirs)}"), parser.prog)
    print(f"paired t-test, two-sided alpha={args.alpha}, power={args.power}, n={args.n} seeds; "
          "sd_diff: SD of the measured seed-paired differences"
          + ("" if args.half_width is None else
             f"; sd_row: the row's seed SD; seeds_row / seeds_diff: seeds for a 95% half-width <= {args.half_width} "
             "of the row's interval / of its paired difference"))
    print(table.to_markdown(index=False, floatfmt=".4g"))
    if plan is not None and not plan.empty:
        print("\n" + plan_summary(plan, frame, args.baseline, args.half_width, columns))


def plan_summary(plan: pd.DataFrame, df: pd.DataFrame, baseline: str | None, wanted_half_width: float,
                 columns: list[str] | None) -> str:
    """The seed plan as ``bench.power`` and the sweep's report print it: the table, the rows short of seeds and
    the second stage's overrides."""
    short = plan[plan.seeds_needed > plan.seeds]
    lines = [f"seed plan for a 95% half-width <= {wanted_half_width} on every "
             + ("headline column" if columns is None else
                "relearn column" if columns == ["relearn"] else f"column of {columns}")
             + " of a row (seeds_needed: for its widest column, from the SD of the seeds present):",
             plan.to_markdown(index=False, floatfmt=".4g")]
    if short.empty:
        lines.append("every row meets it with the seeds it has")
    else:
        lines.append(f"{len(short)} of {len(plan)} rows need more seeds: "
                     + "; ".join(f"{r.row} {r.seeds} -> {r.seeds_needed:g}" for r in short.itertuples())
                     + ". Paired differences need the baseline's seeds too; reference rows come with any run of a seed.")
        lines.append(top_up_hint(plan, df, baseline))
    return "\n".join(line for line in lines if line)


if __name__ == "__main__":
    main()
