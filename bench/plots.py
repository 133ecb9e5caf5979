"""Plots of a set of records (matplotlib, PNG and PDF): what people would rather see than read."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from bench.report import REFERENCE_STAGES, ci95  # noqa: E402

_STEP = re.compile(r"^(?P<metric>\w+)@step(?P<step>\d+)$")


def _save(fig, out: Path, name: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.{ext}" for ext in ("png", "pdf")]
    for p in paths:
        fig.savefig(p, bbox_inches="tight", dpi=150)
    plt.close(fig)
    return paths


def _point(df: pd.DataFrame, stage_mask, split: str, metric: str) -> tuple[float, float] | None:
    sel = df[stage_mask & (df.suite == "knowledge") & (df.split == split) & (df.metric == metric)]
    if sel.empty:
        return None
    return ci95(sel.groupby("seed")["value"].mean())


def tradeoff(df: pd.DataFrame, out: Path, forget_metric: str = "mcq_acc", retain_metric: str = "em") -> list[Path]:
    """Forget score (lower is better) against retain score (higher is better), per method."""
    fig, ax = plt.subplots(figsize=(5, 4))
    entities = [("target", df.stage == "target"), ("oracle", df.stage == "oracle")]
    entities += [(m, (df.stage == "unlearned") & (df.method == m)) for m in sorted(df.loc[df.stage == "unlearned", "method"].unique())]
    for name, mask in entities:
        x, y = _point(df, mask, "forget", forget_metric), _point(df, mask, "retain", retain_metric)
        if x is None or y is None:
            continue
        style = {"marker": "s", "color": "grey"} if name in REFERENCE_STAGES else {"marker": "o"}
        ax.errorbar(x[0], y[0], xerr=x[1], yerr=y[1], label=name, capsize=3, linestyle="none", **style)
        ax.annotate(name, (x[0], y[0]), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xlabel(f"forget {forget_metric} (lower: more forgotten)")
    ax.set_ylabel(f"retain {retain_metric} (higher: more kept)")
    ax.set_title("forget / retain trade-off")
    ax.grid(alpha=0.3)
    return _save(fig, out, "tradeoff")


def relearn_curves(df: pd.DataFrame, out: Path, metric: str = "mcq_acc") -> list[Path]:
    """Forget score against attack steps per method and attack; the oracle control dashed."""
    rows = df[(df.suite == "relearn") & df.metric.str.match(rf"^{metric}@step\d+$")].copy()
    rows = rows[rows.split == "forget_heldout"]
    if rows.empty:
        return []
    rows["step"] = rows.metric.str.extract(r"@step(\d+)$")[0].astype(int)
    rows["attack"] = rows.stage.str.split("/").str[-1]
    rows["control"] = rows.stage.str.startswith("oracle_attacked")
    attacks = sorted(rows.attack.unique())
    fig, axes = plt.subplots(1, len(attacks), figsize=(4 * len(attacks), 3.5), squeeze=False)
    for ax, attack in zip(axes[0], attacks):
        sub = rows[rows.attack == attack]
        for method, grp in sub[~sub.control & sub.stage.str.startswith("attacked")].groupby("method"):
            curve = grp.groupby("step")["value"].mean()
            ax.plot(curve.index, curve.values, marker="o", label=method)
        ctrl = sub[sub.control].groupby("step")["value"].mean()
        if not ctrl.empty:
            ax.plot(ctrl.index, ctrl.values, linestyle="--", color="black", label="oracle (control)")
        ax.set_title(attack)
        ax.set_xlabel("attack steps")
        ax.set_ylabel(f"forget_heldout {metric}")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    return _save(fig, out, "relearn_curves")


def continual_curves(df: pd.DataFrame, out: Path, metric: str = "mcq_acc") -> list[Path]:
    """Per method: forget score of each earlier request after each new request."""
    rows = df[df.stage.str.match(r"^request/\d+$") & (df.metric == metric) & df.split.str.startswith("forget")].copy()
    if rows.empty:
        return []
    rows["request"] = rows.stage.str.split("/").str[1].astype(int)
    methods = sorted(rows.method.unique())
    fig, axes = plt.subplots(1, len(methods), figsize=(4 * len(methods), 3.5), squeeze=False)
    for ax, method in zip(axes[0], methods):
        for split, grp in rows[rows.method == method].groupby("split"):
            curve = grp.groupby("request")["value"].mean()
            ax.plot(curve.index, curve.values, marker="o", label=split)
        ax.set_title(method)
        ax.set_xlabel("after request")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, out, "continual")


def write_plots(df: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    out = Path(out_dir) / "plots"
    return tradeoff(df, out) + relearn_curves(df, out) + continual_curves(df, out)
