"""Plots of a set of records (matplotlib, PNG and PDF): what people would rather see than read."""

from __future__ import annotations

import io
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from bench.stages import REFERENCE_STAGES, TARGET  # noqa: E402
from bench.disk_cache import atomic_write  # noqa: E402
from bench.table_stats import ci95  # noqa: E402

_STEP = re.compile(r"^(?P<metric>\w+)@step(?P<step>\d+)$")
FORMATS = ("png", "pdf")


def _render(fig, name: str) -> dict[str, bytes]:
    """The figure as PNG and PDF bytes (written atomically by the caller)."""
    out = {}
    for ext in FORMATS:
        buf = io.BytesIO()
        fig.savefig(buf, format=ext, bbox_inches="tight", dpi=150)
        out[f"{name}.{ext}"] = buf.getvalue()
    plt.close(fig)
    return out


def _table_lines(df: pd.DataFrame) -> pd.DataFrame:
    """Lines behind table cells: a diverged run's unlearned stage has no numbers."""
    return df[~((df.stage == "unlearned") & df["diverged"].astype(bool))] if "diverged" in df else df


def _point(df: pd.DataFrame, split: str, metric: str) -> tuple[float, float] | None:
    sel = df[(df.suite == "knowledge") & (df.split == split) & (df.metric == metric)]
    if sel.empty or sel["value"].isna().all():
        return None
    return ci95(sel.groupby("seed", dropna=False)["value"].mean())


def _trajectory(df: pd.DataFrame, row: str) -> pd.DataFrame:
    """Mean forget mcq_acc and retain em at each stopping-rule check of a row (checks with both only)."""
    tr = df[(df.stage == "trace") & (df.row == row)]
    if tr.empty:
        return pd.DataFrame(columns=["mcq_acc", "em"])
    parts = tr.metric.str.extract(r"^(\w+)@step(\d+)$")
    tr = tr.assign(kind=parts[0].values, step=parts[1].astype(int).values)
    curve = tr.groupby(["step", "kind"])["value"].mean().unstack("kind")
    if not {"mcq_acc", "em"} <= set(curve.columns):
        return pd.DataFrame(columns=["mcq_acc", "em"])
    return curve[["mcq_acc", "em"]].dropna()


def tradeoff(df: pd.DataFrame, forget_metric: str = "mcq_acc", retain_metric: str = "em") -> dict[str, bytes]:
    """Forget score (lower is better) against retain score (higher is better), one entry per table row.

    Points carry 95% CI bars over seeds; each method row's curve follows its unlearning trajectory
    (every stopping-rule check that recorded retain em, from the target of its group); names are
    in a legend beside the axes, so no label covers another.
    """
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    lines = _table_lines(df)
    labels = list(dict.fromkeys(lines.loc[lines.stage.isin(REFERENCE_STAGES + ("unlearned",)), "row"]))
    refs = [r for r in labels if lines.loc[lines.row == r, "stage"].isin(REFERENCE_STAGES).all()]
    methods = sorted(r for r in labels if r not in refs)
    groups = sorted(dict.fromkeys(df.loc[df.row.isin(labels), "group"])) if "group" in df else [""]
    colors = plt.get_cmap("tab10" if len(methods) <= 10 else "tab20")
    markers = "oDvP*Xh<>pd"  # not s or ^: those mark target and oracle
    drawn = 0
    for name in sorted(refs, key=lambda r: (r.split(" ")[0] != TARGET, r)):
        sub = lines[lines.row == name]
        x, y = _point(sub, "forget", forget_metric), _point(sub, "retain", retain_metric)
        if x is None or y is None:
            continue
        g = groups.index(sub["group"].iloc[0]) if "group" in sub else 0
        ax.errorbar(x[0], y[0], xerr=x[1], yerr=y[1], label=name, capsize=3, linestyle="none",
                    marker="s" if name.startswith(TARGET) else "^", color=str(0.2 + 0.5 * g / max(len(groups), 1)),
                    markersize=7, markerfacecolor="white" if name.startswith(TARGET) else None)
        drawn += 1
    for i, name in enumerate(methods):
        sub = lines[lines.row == name]
        x, y = _point(sub, "forget", forget_metric), _point(sub, "retain", retain_metric)
        color = colors(i % colors.N)
        curve = _trajectory(df, name)
        if not curve.empty:
            start = None
            if "group" in sub:
                tgt = lines[(lines.stage == TARGET) & (lines.group == sub["group"].iloc[0])]
                sx, sy = _point(tgt, "forget", forget_metric), _point(tgt, "retain", retain_metric)
                start = (sx[0], sy[0]) if sx is not None and sy is not None else None
            xs = ([start[0]] if start else []) + list(curve["mcq_acc"])
            ys = ([start[1]] if start else []) + list(curve["em"])
            ax.plot(xs, ys, color=color, linewidth=1, alpha=0.6, marker=".", markersize=4)
        if x is None or y is None:
            continue
        ax.errorbar(x[0], y[0], xerr=x[1], yerr=y[1], label=name, capsize=3, linestyle="none",
                    marker=markers[i % len(markers)], color=color, markersize=7)
        drawn += 1
    ax.set_xlabel(f"forget {forget_metric} (lower: more forgotten)")
    ax.set_ylabel(f"retain {retain_metric} (higher: more kept)")
    ax.set_title("forget / retain trade-off (bars: 95% CI; lines: stopping-rule checks)", fontsize=9)
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, frameon=False)
    return _render(fig, "tradeoff")


def relearn_curves(df: pd.DataFrame, metric: str = "mcq_acc") -> dict[str, bytes]:
    """Forget score against attack steps per table row and attack; the oracle control dashed (per group)."""
    rows = df[(df.suite == "relearn") & df.metric.str.match(rf"^{metric}@step\d+$")].copy()
    rows = rows[rows.split == "forget_heldout"]
    if rows.empty:
        return {}
    rows["step"] = rows.metric.str.extract(r"@step(\d+)$")[0].astype(int)
    rows["attack"] = rows.stage.str.split("/").str[-1]
    rows["control"] = rows.stage.str.startswith("oracle_attacked")
    if "row" not in rows:
        rows["row"], rows["group"] = rows["method"], ""
    attacks = sorted(rows.attack.unique())
    fig, axes = plt.subplots(1, len(attacks), figsize=(4 * len(attacks), 3.5), squeeze=False)
    for ax, attack in zip(axes[0], attacks):
        sub = rows[rows.attack == attack]
        for row, grp in sub[~sub.control & sub.stage.str.startswith("attacked")].groupby("row"):
            curve = grp.groupby("step")["value"].mean()
            ax.plot(curve.index, curve.values, marker="o", label=row)
        for group, grp in sub[sub.control].groupby("group"):
            ctrl = grp.groupby("step")["value"].mean()
            ax.plot(ctrl.index, ctrl.values, linestyle="--", color="black", label=f"oracle (control) {group}".strip())
        ax.set_title(attack)
        ax.set_xlabel("attack steps")
        ax.set_ylabel(f"forget_heldout {metric}")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    return _render(fig, "relearn_curves")


def continual_curves(df: pd.DataFrame, metric: str = "mcq_acc") -> dict[str, bytes]:
    """Per table row: forget score of each earlier request after each new request."""
    rows = df[df.stage.str.match(r"^request/\d+$") & (df.metric == metric) & df.split.str.startswith("forget")].copy()
    if rows.empty:
        return {}
    rows["request"] = rows.stage.str.split("/").str[1].astype(int)
    if "row" not in rows:
        rows["row"] = rows["method"]
    labels = sorted(rows.row.unique())
    fig, axes = plt.subplots(1, len(labels), figsize=(4 * len(labels), 3.5), squeeze=False)
    for ax, label in zip(axes[0], labels):
        for split, grp in rows[rows.row == label].groupby("split"):
            curve = grp.groupby("request")["value"].mean()
            ax.plot(curve.index, curve.values, marker="o", label=split)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("after request")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _render(fig, "continual")


def render_plots(df: pd.DataFrame) -> dict[str, bytes]:
    """Every plot's file name -> bytes (nothing is written here)."""
    return {**tradeoff(df), **relearn_curves(df), **continual_curves(df)}


def write_plots(df: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    """Write the plots into ``out_dir/plots`` (each file atomically); returns their paths."""
    out = Path(out_dir) / "plots"
    paths = []
    for name, data in render_plots(df).items():
        atomic_write(out / name, data)
        paths.append(out / name)
    return paths
