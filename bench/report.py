"""Records -> one pandas frame -> comparison tables (Markdown, CSV, LaTeX).

``python -m bench.report DIR...`` rebuilds the tables from any set of run records; the Hydra
callback ``ReportCallback`` writes them into the sweep directory at the end of a multirun.
Rows of the table: target, oracle, then each method (its ``unlearned`` stage). With several
seeds a cell is mean ± half-width of the 95% Student-t confidence interval over seeds.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Literal

import pandas as pd
from hydra.experimental.callback import Callback
from scipy import stats

from bench.record import RECORD


@dataclass(frozen=True)
class Column:
    label: str
    suite: str
    split: str
    metric: str
    better: Literal["higher", "lower", "zero", "half"]  # half: nearest 0.5 (chance AUC)


COLUMNS = [
    Column("forget em", "knowledge", "forget", "em", "lower"),
    Column("forget mcq", "knowledge", "forget", "mcq_acc", "lower"),
    Column("forget para em", "knowledge", "forget_paraphrase", "em", "lower"),
    Column("retain em", "knowledge", "retain", "em", "higher"),
    Column("retain mcq", "knowledge", "retain", "mcq_acc", "higher"),
    Column("general em", "knowledge", "general", "em", "higher"),
    Column("model utility", "knowledge", "retain", "model_utility", "higher"),
    Column("forget quality", "knowledge", "forget", "forget_quality", "higher"),
    Column("mia auc", "privacy", "forget", "mia_auc", "half"),
    Column("privleak", "privacy", "forget", "privleak", "zero"),
    # relearn suite: worst-case forget_heldout mcq_acc after each default attack (oracle row = control)
    Column("h0.1 relearn mcq", "relearn", "forget_heldout", "mcq_acc@harmful_p0.1", "lower"),
    Column("h0.3 relearn mcq", "relearn", "forget_heldout", "mcq_acc@harmful_p0.3", "lower"),
    Column("rtt relearn mcq", "relearn", "forget_heldout", "mcq_acc@rtt", "lower"),
    Column("benign relearn mcq", "relearn", "forget_heldout", "mcq_acc@benign", "lower"),
    Column("lora relearn mcq", "relearn", "forget_heldout", "mcq_acc@lora_p0.3", "lower"),
    Column("max recovery", "relearn", "forget_heldout", "recovery@worst", "lower"),
    Column("steps", "unlearn", "forget", "steps", "lower"),
    Column("unlearn s", "unlearn", "forget", "wall_s", "lower"),
]
REFERENCE_STAGES = ("target", "oracle")


def find_records(paths: Iterable[str | Path]) -> list[Path]:
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_file() and p.name == RECORD:
            found.append(p)
        elif p.is_dir():
            found += sorted(q for q in p.rglob(RECORD) if "superseded" not in q.parts)
    return found


def records_frame(records: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """Long format: one row per (record, stage, suite, split, metric)."""
    rows = []
    for rec in records:
        base = {"method": rec.get("method"), "seed": rec["config"].get("seed"), "status": rec.get("status"),
                "config_hash": rec.get("config_hash")}
        rows += [{**base, **r} for r in rec["rows"]]
    return pd.DataFrame(rows)


def load_frame(paths: Iterable[str | Path]) -> pd.DataFrame:
    return records_frame(json.loads(p.read_text()) for p in find_records(paths))


def _entity(df: pd.DataFrame) -> pd.Series:
    """Table row label: the reference stages by name, unlearned stages by method."""
    return df["stage"].where(df["stage"].isin(REFERENCE_STAGES), df["method"])


def ci95(values: pd.Series) -> tuple[float, float]:
    """Mean and half-width of the 95% Student-t interval (0 for a single value)."""
    v = values.dropna().astype(float)
    mean = float(v.mean())
    if len(v) < 2:
        return mean, 0.0
    return mean, float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))


def aggregate(df: pd.DataFrame, columns: list[Column] = COLUMNS) -> pd.DataFrame:
    """Wide table of (mean, half-width, n_seeds) per row label and column label.

    Reference stages appear once per record of the same seed; they are averaged within a seed
    first (identical values) so each seed counts once.
    """
    df = df[df["stage"].isin(REFERENCE_STAGES + ("unlearned",))].copy()
    df["entity"] = _entity(df)
    out = []
    for col in columns:
        sel = df[(df.suite == col.suite) & (df.split == col.split) & (df.metric == col.metric)]
        for entity, grp in sel.groupby("entity", sort=False):
            per_seed = grp.groupby("seed")["value"].mean()
            mean, half = ci95(per_seed)
            out.append({"entity": entity, "column": col.label, "mean": mean, "ci": half, "n": len(per_seed)})
    return pd.DataFrame(out, columns=["entity", "column", "mean", "ci", "n"])


def _order(entities: Iterable[str]) -> list[str]:
    ents = list(dict.fromkeys(entities))
    return [e for e in REFERENCE_STAGES if e in ents] + sorted(e for e in ents if e not in REFERENCE_STAGES)


def best_entities(agg: pd.DataFrame, col: Column) -> set[str]:
    """Methods (not reference stages) with the best mean in a column, by its direction."""
    sel = agg[(agg.column == col.label) & ~agg.entity.isin(REFERENCE_STAGES)].dropna(subset=["mean"])
    if sel.empty:
        return set()
    key = {"higher": -sel["mean"], "lower": sel["mean"], "zero": sel["mean"].abs(), "half": (sel["mean"] - 0.5).abs()}[col.better]
    return set(sel.loc[key == key.min(), "entity"])


def table(df: pd.DataFrame, columns: list[Column] = COLUMNS) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(display table of strings with best marked by *, numeric wide table of means)."""
    agg = aggregate(df, columns)
    present = [c for c in columns if c.label in set(agg.column)]
    entities = _order(agg.entity)
    text = pd.DataFrame("", index=entities, columns=[c.label for c in present])
    means = pd.DataFrame(float("nan"), index=entities, columns=[c.label for c in present])
    for col in present:
        best = best_entities(agg, col)
        for _, r in agg[agg.column == col.label].iterrows():
            cell = f"{r['mean']:.3f}" if r["n"] < 2 else f"{r['mean']:.3f} ± {r['ci']:.3f}"
            text.loc[r.entity, col.label] = cell + ("*" if r.entity in best and len(entities) > 3 else "")
            means.loc[r.entity, col.label] = r["mean"]
    text.index.name = means.index.name = "row"
    return text, means


_LATEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "_": r"\_", "#": r"\#", "$": r"\$",
          "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\^{}"}


def _latex_escape(s: str) -> str:
    return "".join(_LATEX.get(ch, ch) for ch in s).replace("±", r"$\pm$")


def to_latex(text: pd.DataFrame) -> str:
    cols = list(text.columns)
    lines = [r"\begin{tabular}{l" + "r" * len(cols) + "}", r"\toprule",
             " & ".join(["row"] + [_latex_escape(c) for c in cols]) + r" \\", r"\midrule"]
    for idx, row in text.iterrows():
        cells = [_latex_escape(str(idx))]
        for v in row:
            v = str(v)
            cells.append(r"\textbf{" + _latex_escape(v[:-1]) + "}" if v.endswith("*") else _latex_escape(v))
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def write_tables(df: pd.DataFrame, out_dir: str | Path) -> str:
    """Write table.{md,csv,tex} into ``out_dir``; returns the Markdown."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    text, means = table(df)
    md = text.to_markdown()
    n_seeds = df["seed"].nunique()
    note = (f"\n\n{n_seeds} seed(s); cells are mean ± 95% Student-t CI half-width over seeds; * best method per column "
            "(forget lower, retain/utility/quality higher, privacy nearest 0)." if n_seeds > 1 else
            "\n\n1 seed; * best method per column (forget lower, retain/utility/quality higher, privacy nearest 0).")
    (out / "table.md").write_text(md + note + "\n")
    text.to_csv(out / "table.csv")
    (out / "table.tex").write_text(to_latex(text))
    return md + note


def summary_table(record: dict[str, Any]) -> str:
    """A compact per-stage view of one run's main numbers."""
    df = records_frame([record])
    text, _ = table(df)
    status = record.get("status")
    header = f"method={record.get('method')} seed={record['config'].get('seed')} status={status} steps={record['unlearn']['steps']}"
    return header + "\n" + text.to_markdown()


class ReportCallback(Callback):
    """Hydra callback: after a multirun, write and print the comparison table of the sweep.

    Records older than the start of this multirun were complete already and skipped (resume).
    """

    def on_multirun_start(self, config, **kwargs) -> None:
        self._started = time.time()

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        records = find_records([sweep_dir])
        skipped = sum(p.stat().st_mtime < getattr(self, "_started", 0.0) for p in records)
        print(f"{len(records)} run records in {sweep_dir}; {skipped} were already complete and skipped, "
              f"{len(records) - skipped} computed now")
        df = load_frame([sweep_dir])
        if df.empty:
            print(f"no records under {sweep_dir}")
            return
        print(write_tables(df, sweep_dir))
        from bench.plots import write_plots

        write_plots(df, sweep_dir)
        print(f"tables written to {sweep_dir}/table.{{md,csv,tex}}, plots to {sweep_dir}/plots/")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build comparison tables from run records.")
    parser.add_argument("dirs", nargs="+", help="record.json files or directories searched recursively")
    parser.add_argument("--out", default=None, help="output directory (default: the first DIR)")
    args = parser.parse_args(argv)
    df = load_frame(args.dirs)
    if df.empty:
        raise SystemExit(f"no {RECORD} found under {args.dirs}")
    out = args.out or args.dirs[0]
    print(write_tables(df, out))
    from bench.plots import write_plots

    write_plots(df, out)


if __name__ == "__main__":
    main()
