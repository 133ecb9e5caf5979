"""Records -> one pandas frame -> comparison tables (Markdown, CSV, LaTeX).

``python -m bench.report DIR... [--baseline LABEL]`` rebuilds the tables from any set of run
records; the Hydra callback ``bench.sweep_report.ReportCallback`` writes them into the sweep directory at the end
of a multirun (``hydra.callbacks.report.baseline=LABEL`` for the paired table).

Rows: one per distinct run config apart from the seed. A method row is labelled by the method
and the config keys that differ between the records (``npo beta=0.05``); the reference stages
(target, oracle) get one row each per reference group (the config minus its ``method``,
``unlearn`` and ``continual`` blocks), labelled by what differs between groups. Only the seeds
of one config are pooled: a cell is the mean ± half-width of the 95% Student-t interval over
seeds. Columns come from the rows present: a default headline selection (``table.*``) and every
metric (``table_full.*``); which way is better is declared in ``bench.directions``.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from bench.directions import direction, is_integer, rank_key
from bench.errors import UserError, exit_with
from bench.record import CLOSEST_MARK, RECORD, TUNED_CLOSEST
from bench.settings import is_number
from bench.stages import HOOK_STAGES, REFERENCE_STAGES, UNLEARNED
from bench.disk_cache import atomic_write
from bench.table_stats import ci95, paired

# Control stages of a run (the oracle with the method's hooks, the unlearned model without them) are
# rows of their own, labelled "<method row> <stage>", never best-marked and never a baseline.
CONTROL_STAGES = HOOK_STAGES
TABLE_STAGES = REFERENCE_STAGES + (UNLEARNED,) + CONTROL_STAGES
# Config keys that never change numbers (and the seed, pooled over): left out of row identity and labels.
IGNORED_KEYS = ("seed", "cache_dir", "threads", "reuse_stages", "hydra", "report")
# Blocks that change only the unlearned stage: left out of the reference (target/oracle) group.
METHOD_BLOCKS = ("method", "unlearn", "continual")
MISSED, DIVERGED = "†", "‡"


class ReportError(UserError):
    """Bad records or report options; the message names the file or value."""


@dataclass(frozen=True)
class Column:
    label: str
    suite: str
    split: str
    metric: str

    @property
    def better(self) -> str | None:
        """higher, lower, zero, half or None: declared in bench.directions, not here."""
        return direction(self.suite, self.split, self.metric)

    @property
    def key(self) -> tuple[str, str, str]:
        return self.suite, self.split, self.metric


# The headline selection, in order: (label, suite, split, metric pattern). A pattern's group
# fills "{0}" in the label, so every attack of conf/attack/ gets its relearn column. Suites not
# named here (a new suite) join the headline with all their metrics; table_full has everything.
HEADLINE = [
    ("forget em", "knowledge", "forget", "em"),
    ("forget mcq", "knowledge", "forget", "mcq_acc"),
    ("forget para em", "knowledge", "forget_paraphrase", "em"),
    ("retain em", "knowledge", "retain", "em"),
    ("retain mcq", "knowledge", "retain", "mcq_acc"),
    ("general em", "knowledge", "general", "em"),
    ("model utility", "knowledge", "retain", "model_utility"),
    ("forget quality", "knowledge", "forget", "forget_quality"),
    ("mia auc", "privacy", "forget", "mia_auc@mink"),
    ("privleak", "privacy", "forget", "privleak@mink"),
    ("{0} relearn mcq", "relearn", "forget_heldout", r"mcq_acc@(.+)"),
    ("max recovery", "relearn", "forget_heldout", "recovery@worst"),
    ("hide ratio@{0}", "diagnostics", "forget", r"hide_ratio@(\d+)"),
    ("steps", "unlearn", "forget", "steps"),
    ("unlearn s", "unlearn", "forget", "wall_s"),
]
_HEADLINE_SUITES = {h[1] for h in HEADLINE}
_MARKER_METRICS = {("unlearn", "diverged"), ("unlearn", "reached_target")}  # row markers, not columns


# ---- records ---------------------------------------------------------------------------------

def find_records(paths: Iterable[str | Path]) -> list[Path]:
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_file() and p.name == RECORD:
            found.append(p)
        elif p.is_dir():
            found += sorted(q for q in p.rglob(RECORD) if "superseded" not in q.parts)
        else:
            raise ReportError(f"{p}: no such {RECORD} file or directory")
    return found


_ROW_KEYS = ("stage", "suite", "split", "metric", "value")


def check_record(rec: Any, where: str) -> dict[str, Any]:
    """A run record as bench.record writes it, or a ReportError naming ``where`` and what is wrong."""
    if not isinstance(rec, dict):
        raise ReportError(f"{where}: not a bench run record (a JSON {type(rec).__name__}, not an object)")
    missing = [k for k in ("method", "config", "rows") if k not in rec]
    if missing:
        raise ReportError(f"{where}: not a bench run record: missing key(s) {', '.join(missing)}")
    if not isinstance(rec["config"], dict) or not isinstance(rec["rows"], list):
        raise ReportError(f"{where}: not a bench run record: 'config' must be an object and 'rows' a list")
    for i, row in enumerate(rec["rows"]):
        if not isinstance(row, dict) or any(k not in row for k in _ROW_KEYS):
            raise ReportError(f"{where}: rows[{i}] is not a record row (needs {', '.join(_ROW_KEYS)})")
        v = row["value"]
        if v is not None and not is_number(v):
            raise ReportError(f"{where}: rows[{i}] value {v!r} is not a number or null")
    return rec


def load_record(path: Path) -> dict[str, Any]:
    try:
        rec = json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise ReportError(f"{path}: corrupt {RECORD} ({e.msg} at line {e.lineno} column {e.colno})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ReportError(f"{path}: cannot read ({e})") from None
    return check_record(rec, str(path))


# ---- row identity and labels ------------------------------------------------------------------

def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = json.dumps(v, sort_keys=True, default=str)
    return out


def _show(raw: str | None) -> str:
    if raw is None:
        return "unset"
    v = json.loads(raw)

    def fmt(x: Any) -> str:
        if isinstance(x, str):
            return x
        if isinstance(x, list):
            return "[" + ",".join(fmt(y) for y in x) + "]"
        if isinstance(x, float):
            return f"{x:g}"
        return json.dumps(x, sort_keys=True, separators=(",", ":"))

    return fmt(v)


def _target_name(raw: str | None) -> str:
    """``bench.benchmarks.tofu.load_tofu`` -> ``tofu``: a readable name of a swapped config group."""
    if raw is None:
        return "unset"
    name = str(json.loads(raw)).rsplit(".", 1)[-1]
    return name[5:] if name.startswith("load_") else name


def _differing(flats: list[dict[str, str]], keys: Iterable[str]) -> list[tuple[str, str]]:
    """(key, how to show it) for the keys that differ between ``flats``, named once each.

    A config group swapped wholesale (its ``_target_`` differs) is shown as ``group=<name>``
    with only those of its keys that also differ within one ``_target_``; keys whose values
    coincide in every record (an interpolation and its source) are shown once, by the shortest.
    """
    keys = sorted(k for k in set(keys) if len({f.get(k) for f in flats}) > 1)
    targets = [k[: -len("._target_")] for k in keys if k.endswith("._target_")]
    shown: list[tuple[str, str]] = []
    for k in keys:
        owner = next((t for t in targets if k.startswith(t + ".")), None)
        if owner is None:
            shown.append((k, k))
            continue
        if k == f"{owner}._target_":
            shown.append((k, owner))
            continue
        by_target: dict[str | None, set] = {}
        for f in flats:
            by_target.setdefault(f.get(f"{owner}._target_"), set()).add(f.get(k))
        if any(len(v) > 1 for v in by_target.values()):
            shown.append((k, k))
    seen: dict[tuple, str] = {}
    for k, name in sorted(shown, key=lambda kn: (kn[0].count("."), len(kn[0]), kn[0])):
        seen.setdefault(tuple(f.get(k) for f in flats), k)
    keep = set(seen.values())
    return [(k, name) for k, name in shown if k in keep]


def _label(flat: dict[str, str], keys: list[tuple[str, str]], strip: str = "") -> str:
    parts = []
    for k, name in keys:
        if k.endswith("._target_"):
            parts.append(f"{name}={_target_name(flat.get(k))}")
        else:
            parts.append(f"{name[len(strip):] if strip and name.startswith(strip) else name}={_show(flat.get(k))}")
    return " ".join(parts)


@dataclass
class Identity:
    row: str        # table row label of the record's unlearned stage
    group: str      # reference-group label ("" when all records share one)
    config: str     # row identity: config apart from the seed
    ref: str        # reference-group identity


def identities(records: list[dict[str, Any]]) -> list[Identity]:
    """Row label and identities of each record (see the module docstring)."""
    flats = []
    for rec in records:
        flat = {k: v for k, v in _flatten(rec["config"]).items() if k.split(".")[0] not in IGNORED_KEYS}
        flats.append(flat)
    seed_json = [json.dumps(rec["config"].get("seed")) for rec in records]
    # Seed-dependent interpolations (suite_settings.relearn.seed: ${seed}) follow the seed: not config.
    followers = {k for k in set().union(*flats) if len(set(seed_json)) > 1
                 and all(f.get(k) == s for f, s in zip(flats, seed_json))}
    flats = [{k: v for k, v in f.items() if k not in followers} for f in flats]
    methods = [str(rec["method"]) for rec in records]
    is_method_key = lambda k: k.split(".")[0] in METHOD_BLOCKS  # noqa: E731
    all_keys = set().union(*flats) if flats else set()
    ref_keys = _differing(flats, [k for k in all_keys if not is_method_key(k)])
    other_method_keys = _differing(flats, [k for k in all_keys if is_method_key(k) and not k.startswith("method.")])
    own: dict[str, list[tuple[str, str]]] = {}
    for m in set(methods):
        sub = [f for f, mm in zip(flats, methods) if mm == m]
        own[m] = _differing(sub, [k for k in all_keys if k.startswith("method.")])
    out = []
    for rec, flat, m in zip(records, flats, methods):
        group = _label(flat, ref_keys)
        label = " ".join(x for x in (m, _label(flat, own[m], "method."), _label(flat, other_method_keys), group) if x)
        tuning = rec.get("tuning")
        if isinstance(tuning, dict) and tuning.get("status") == TUNED_CLOSEST:
            label += CLOSEST_MARK  # not at matched forgetting on the tuning seeds: the row says so itself
        ident = json.dumps(sorted(flat.items()))
        ref = json.dumps(sorted((k, v) for k, v in flat.items() if not is_method_key(k)))
        out.append(Identity(label, group, f"{m}\0{ident}", ref))
    # Distinct configs must never share a label (and so a row): disambiguate the rare collision.
    by_label: dict[str, set[str]] = {}
    for i in out:
        by_label.setdefault(i.row, set()).add(i.config)
    for i in out:
        if len(by_label[i.row]) > 1:
            i.row = f"{i.row} #{sorted(by_label[i.row]).index(i.config) + 1}"
    return out


def _reached(rec: dict[str, Any]) -> bool | None:
    u = rec.get("unlearn")
    value = u.get("reached_target") if isinstance(u, dict) else None
    if value is None:
        value = next((r["value"] for r in rec["rows"] if r["stage"] == UNLEARNED and r["suite"] == "unlearn"
                      and r["metric"] == "reached_target"), None)
    return None if value is None else bool(value)


def _diverged(rec: dict[str, Any]) -> bool:
    u = rec.get("unlearn")
    return rec.get("status") == "diverged" or bool(isinstance(u, dict) and u.get("diverged"))


def _trace_rows(rec: dict[str, Any]) -> list[dict[str, Any]]:
    """The stopping rule's checks as rows of stage ``trace`` (forget mcq_acc, retain em where recorded)."""
    u = rec.get("unlearn")
    trace = u.get("stop_trace") if isinstance(u, dict) else None
    rows = []
    for t in trace if isinstance(trace, list) else []:
        if not isinstance(t, dict) or "step" not in t or "request" in t:
            continue
        for split, metric, key in (("forget", "mcq_acc", "forget_mcq_acc"), ("retain", "em", "retain_em")):
            if isinstance(t.get(key), (int, float)):
                rows.append({"stage": "trace", "suite": "unlearn", "split": split, "metric": f"{metric}@step{int(t['step'])}",
                             "value": float(t[key]), "n": None})
    return rows


FRAME_COLUMNS = ["row", "group", "config", "ref", "method", "seed", "status", "diverged", "reached", "config_hash",
                 "tuning", "host", "stage", "suite", "split", "metric", "value", "n"]


def host_of(rec: dict[str, Any]) -> str:
    """Where a record was computed, as the legend names it: CPU model, torch's kernels, threads, and a device
    other than the CPU; "" for a record older than ``provenance.cpu`` (session 39)."""
    prov = rec.get("provenance") or {}
    cpu = prov.get("cpu")
    if not isinstance(cpu, dict):
        return ""
    device = prov.get("device")
    gpu = prov.get("gpu")  # None on CPU and in records older than provenance.gpu (session 40)
    if isinstance(gpu, dict) and gpu.get("gpu"):
        matmul, cudnn = (list(gpu.get("tf32") or []) + [None, None])[:2]
        device = f"{device} ({gpu['gpu']}, CUDA {gpu.get('cuda')}, TF32 matmul {matmul}, cuDNN {cudnn})"
    return (f"{cpu.get('model')} ({cpu.get('capability')} kernels, {prov.get('torch_threads')} torch thread(s))"
            + (f" with {device}" if device not in (None, "cpu") else ""))


def records_frame(records: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """Long format: one row per (record, stage, suite, split, metric), with each record's row label.

    ``row`` is the table row of the line: the config label for the unlearned stage (and the
    trace), ``<stage>`` or ``<stage> <group>`` for a reference stage.
    """
    records = [check_record(r, f"record {i}") for i, r in enumerate(records)]
    rows = []
    for rec, ident in zip(records, identities(records)):
        seed = rec["config"].get("seed")
        base = {"group": ident.group, "config": ident.config, "ref": ident.ref, "method": str(rec["method"]),
                "seed": "unset" if seed is None else seed, "status": rec.get("status"), "diverged": _diverged(rec),
                "reached": _reached(rec), "config_hash": rec.get("config_hash"),
                "tuning": json.dumps(rec["tuning"], sort_keys=True) if isinstance(rec.get("tuning"), dict) else "",
                "host": host_of(rec)}
        for r in list(rec["rows"]) + _trace_rows(rec):
            ref, control = r["stage"] in REFERENCE_STAGES, r["stage"] in CONTROL_STAGES
            row = (f"{r['stage']} {ident.group}".strip() if ref else f"{ident.row} {r['stage']}" if control else ident.row)
            rows.append({**base, "row": row, **{k: r.get(k) for k in ("stage", "suite", "split", "metric", "n")},
                         "value": float("nan") if r["value"] is None else float(r["value"]),
                         **({"reached": None} if control else {})})  # the stopping target is the unlearned stage's
    return pd.DataFrame(rows, columns=FRAME_COLUMNS)


def load_frame(paths: Iterable[str | Path]) -> pd.DataFrame:
    """Every record's rows under ``paths``; a ReportError when there are none (a folder of no finished run)."""
    paths = list(paths)
    df = records_frame(load_record(p) for p in find_records(paths))
    if df.empty:
        raise ReportError(f"no {RECORD} found under {', '.join(map(str, paths))}")
    return df


# ---- aggregation ------------------------------------------------------------------------------

def table_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Lines that feed table cells: reference and unlearned stages; a diverged run's unlearned numbers never."""
    df = df[df["stage"].isin(TABLE_STAGES)]
    return df[~((df["stage"] == UNLEARNED) & df["diverged"].astype(bool))]


def columns_present(df: pd.DataFrame, full: bool = False) -> list[Column]:
    """Columns of the table from the rows present: the headline selection, or everything (``full``)."""
    present = list(dict.fromkeys(
        (s, sp, m) for s, sp, m in df.loc[df["stage"].isin(TABLE_STAGES), ["suite", "split", "metric"]].itertuples(index=False)
        if (s, m) not in _MARKER_METRICS))
    cols: list[Column] = []
    taken: set[tuple[str, str, str]] = set()
    for label, suite, split, pattern in HEADLINE:
        rx = re.compile(pattern)
        for s, sp, m in present:
            match = rx.fullmatch(m) if (s, sp) == (suite, split) else None
            if match and (s, sp, m) not in taken:
                cols.append(Column(label.format(*match.groups()), s, sp, m))
                taken.add((s, sp, m))
    rest = [k for k in present if k not in taken and (full or k[0] not in _HEADLINE_SUITES)]
    if not full:
        rest = [k for k in rest if direction(*k) is not None or k[0] not in _HEADLINE_SUITES]
    suite_order = {s: i for i, s in enumerate(dict.fromkeys(k[0] for k in present))}
    for s, sp, m in sorted(rest, key=lambda k: (suite_order[k[0]], k[1], k[2])):
        cols.append(Column(f"{s}/{sp}/{m}" if s != "knowledge" else f"{sp} {m}", s, sp, m))
    labels = [c.label for c in cols]
    return [c if labels.count(c.label) == 1 else Column(f"{c.suite}/{c.split}/{c.metric}", *c.key) for c in cols]


def per_seed(df: pd.DataFrame, col: Column) -> pd.DataFrame:
    """(row, seed) -> value of one column: within a seed, its records are averaged (reference stages
    repeat in every record of the seed)."""
    sel = df[(df.suite == col.suite) & (df.split == col.split) & (df.metric == col.metric)]
    return sel.groupby(["row", "seed"], sort=False, dropna=False)["value"].mean().reset_index()


def aggregate(df: pd.DataFrame, columns: list[Column] | None = None) -> pd.DataFrame:
    """Long table of (row, column, mean, ci, n) with n the seeds that have a finite value."""
    rows = table_rows(df)
    out = []
    for col in columns if columns is not None else columns_present(df, full=True):
        for row, grp in per_seed(rows, col).groupby("row", sort=False):
            v = grp["value"].dropna()
            mean, half = ci95(v)
            out.append({"entity": row, "column": col.label, "mean": mean, "ci": half, "n": len(v)})
    return pd.DataFrame(out, columns=["entity", "column", "mean", "ci", "n"])


@dataclass
class RowInfo:
    label: str
    group: str
    reference: bool
    method: str
    seeds: int
    diverged: int        # seeds whose run diverged (no numbers from them)
    reached: int | None  # seeds that reached the stopping target (None: fixed-step mode)
    missed: int
    control: bool = False  # a control stage of a method row (bench.stages.HOOK_STAGES)

    @property
    def mark(self) -> str:
        return (MISSED if self.missed else "") + (DIVERGED if self.diverged else "")


def row_infos(df: pd.DataFrame) -> dict[str, RowInfo]:
    """Every table row in display order: per reference group, target, oracle, then methods by label."""
    infos: dict[str, RowInfo] = {}
    df = df[df["stage"].isin(TABLE_STAGES + ("trace",))]
    for label, grp in df.groupby("row", sort=False):
        reference = bool(grp["stage"].isin(REFERENCE_STAGES).all())
        per_rec = grp.drop_duplicates(["config", "seed"]) if not reference else grp.drop_duplicates(["seed"])
        seeds = per_rec["seed"].nunique(dropna=False)
        if reference:
            infos[label] = RowInfo(label, grp["group"].iloc[0], True, grp["stage"].iloc[0], seeds, 0, None, 0)
            continue
        by_seed = per_rec.groupby("seed", dropna=False)
        diverged = int(by_seed["diverged"].all().sum())
        reached_vals = per_rec["reached"].dropna()
        missed = int(by_seed["reached"].apply(lambda s: any(v is False for v in s)).sum())
        reached = None if reached_vals.empty else int(by_seed["reached"].apply(lambda s: all(v is True for v in s)).sum())
        infos[label] = RowInfo(label, grp["group"].iloc[0], False, grp["method"].iloc[0], seeds, diverged, reached, missed,
                               bool(grp["stage"].isin(CONTROL_STAGES).all()))
    groups = sorted(dict.fromkeys(i.group for i in infos.values()))
    ordered: dict[str, RowInfo] = {}
    for g in groups:
        members = [i for i in infos.values() if i.group == g]
        for stage in REFERENCE_STAGES:
            ordered.update({i.label: i for i in members if i.reference and i.method == stage})
        ordered.update({i.label: i for i in sorted(members, key=lambda i: i.label) if not i.reference})
    return ordered


def best_entities(agg: pd.DataFrame, col: Column, infos: dict[str, RowInfo] | None = None) -> set[str]:
    """Method rows (not reference stages) with the best mean in a column, per reference group."""
    sel = agg[(agg.column == col.label)].dropna(subset=["mean"])
    if infos is not None:
        sel = sel[sel.entity.map(lambda e: e in infos and not infos[e].reference and not infos[e].control)]
    else:
        sel = sel[~sel.entity.str.split(" ").str[0].isin(REFERENCE_STAGES)]
    d = col.better
    if sel.empty or d is None:
        return set()
    best: set[str] = set()
    groups = sel.entity.map(lambda e: infos[e].group) if infos is not None else pd.Series("", index=sel.index)
    for _, sub in sel.groupby(groups):
        key = rank_key(sub["mean"], d)
        best |= set(sub.loc[key <= key.min() + 1e-9 * max(1.0, abs(key.min())), "entity"])  # ties, float noise
    return best


def _fmt(mean: float, ci: float, n: int, integer: bool) -> str:
    if math.isnan(mean):
        return "n/a"
    spec = ".0f" if integer and (n < 2 or float(mean).is_integer()) else (".1f" if integer else ".3f")
    cell = f"{mean:{spec}}"
    if n >= 2:
        cell += f" ± {ci:{'.1f' if integer else '.3f'}}"
    return cell


@dataclass
class Table:
    text: pd.DataFrame     # display strings (row label with its marks; n, reached, diverged; cells)
    means: pd.DataFrame    # numeric means, row label (unmarked) x column label
    cis: pd.DataFrame
    counts: pd.DataFrame   # seeds behind each cell
    infos: dict[str, RowInfo]
    columns: list[Column]
    seeds_note: str = ""
    hosts_note: str = ""


def build_table(df: pd.DataFrame, full: bool = False, columns: list[Column] | None = None) -> Table:
    cols = columns if columns is not None else columns_present(df, full)
    infos = row_infos(df)
    labels = list(infos)
    agg = aggregate(df, cols)
    means = pd.DataFrame(float("nan"), index=labels, columns=[c.label for c in cols])
    cis, counts = means.copy(), pd.DataFrame(0, index=labels, columns=means.columns)
    for r in agg.itertuples(index=False):
        means.loc[r.entity, r.column], cis.loc[r.entity, r.column], counts.loc[r.entity, r.column] = r.mean, r.ci, r.n
    methods_per_group: dict[str, int] = {}
    for i in infos.values():
        methods_per_group[i.group] = methods_per_group.get(i.group, 0) + (not i.reference)
    text = pd.DataFrame("", index=labels, columns=means.columns)
    for col in cols:
        best = best_entities(agg, col, infos)
        for label in labels:
            info = infos[label]
            if not info.reference and info.diverged == info.seeds:
                text.loc[label, col.label] = "diverged"
                continue
            if label not in set(agg.entity[agg.column == col.label]):
                continue
            n = int(counts.loc[label, col.label])
            cell = _fmt(means.loc[label, col.label], cis.loc[label, col.label], n, is_integer(col.suite, col.metric))
            if n and n < info.seeds - info.diverged:
                cell += f" (n={n})"
            if label in best and methods_per_group[info.group] > 1:
                cell += "*"
            text.loc[label, col.label] = cell
    meta = pd.DataFrame(index=labels)
    meta["n"] = [str(infos[l].seeds) for l in labels]
    if any(i.reached is not None for i in infos.values()):
        meta["reached"] = [f"{i.reached}/{i.seeds}" if i.reached is not None else "" for i in infos.values()]
    if any(i.diverged for i in infos.values()):
        meta["diverged"] = [str(i.diverged) if not i.reference else "" for i in infos.values()]
    text = pd.concat([meta, text], axis=1)
    text.index = [f"{l} {infos[l].mark}".rstrip() for l in labels]
    for frame in (text, means, cis, counts):
        frame.index.name = "row"
    return Table(text, means, cis, counts, infos, cols, seeds_note(df), hosts_note(df))


def table(df: pd.DataFrame, full: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(display table of strings with best marked by *, numeric table of means); both indexed by row label."""
    t = build_table(df, full)
    text = t.text.copy()
    text.index = t.means.index
    return text, t.means


def _seed_list(seeds: Iterable[Any]) -> str:
    return ", ".join(str(s) for s in sorted(set(seeds), key=lambda s: (not isinstance(s, int), str(s) if not isinstance(s, int) else s)))


def seeds_note(df: pd.DataFrame) -> str:
    """Which seeds the method rows report and which seeds their settings were tuned on (records' ``tuning``;
    bench.tune), so that a reader can check the two never overlap."""
    runs = df[df["stage"] == UNLEARNED].drop_duplicates(["config", "seed"])
    if runs.empty:
        return ""
    tuned = runs[runs["tuning"] != ""]
    line = f"seeds reported: {_seed_list(runs['seed'])}; "
    if tuned.empty:
        return line + "method settings: the run config's values, no tuned= file (tuning: python -m bench.run -m +experiment=tune)"
    infos = [json.loads(t) for t in tuned["tuning"].unique()]
    seeds = sorted({s for i in infos for s in i.get("seeds", [])})
    rules = sorted({str(i.get("rule")) for i in infos})
    files = sorted({str(i.get("file")) for i in infos})
    line += (f"method settings tuned on seeds {_seed_list(seeds)} (rule {', '.join(rules)}; {', '.join(files)})")
    closest = sorted({row for row, t in zip(tuned["row"], tuned["tuning"]) if json.loads(t).get("status") == TUNED_CLOSEST})
    if closest:
        line += (f"; {CLOSEST_MARK.strip()}: no tuned setting reached the forget target on the tuning seeds, run at "
                 f"the closest one: {', '.join(closest)}")
    untuned = sorted(set(runs.loc[runs["tuning"] == "", "row"]))
    if untuned:
        line += f"; not tuned: {', '.join(untuned)}"
    return line


def hosts_note(df: pd.DataFrame) -> str:
    """Which kind of host computed the table's records. Float sums follow the CPU's kernels and thread count, so
    one seed gives other numbers on another kind of host (README "Records, resume and the cache"): a table
    that mixes hosts says so."""
    per_record = df.drop_duplicates(["config_hash", "seed"])
    counts = per_record["host"].replace("", "host not recorded (records before provenance.cpu)").value_counts()
    if len(counts) <= 1:
        return "".join(f"computed on {host}" for host in counts.index)
    return (f"computed on {len(counts)} kinds of host (records reproduce on one kind; across kinds they differ as "
            "seeds do): " + "; ".join(f"{host}: {n} record(s)" for host, n in counts.items()))


def legend(t: Table) -> str:
    infos = list(t.infos.values())
    seeds = {i.seeds for i in infos}
    lines = [("cells: mean over seeds" + (" ± 95% Student-t CI half-width" if max(seeds, default=1) > 1 else "")
              + "; n = seeds of that config (only seeds of one config are pooled); (n=k): k seeds had a number")]
    methods_per_group: dict[str, int] = {}
    for i in infos:
        methods_per_group[i.group] = methods_per_group.get(i.group, 0) + (not i.reference)
    if max(methods_per_group.values(), default=0) > 1:
        lines.append("* best method row per column and reference group, by the metric's declared direction (bench/directions.py)")
    rows_missed = [i for i in infos if i.missed]
    if rows_missed:
        total = sum(i.missed for i in rows_missed)
        lines.append(f"{MISSED} missed the stopping target: {total} run(s) in {len(rows_missed)} row(s) "
                     f"({'; '.join(f'{i.label}: {i.missed}/{i.seeds}' for i in rows_missed)}); reached = seeds that reached it")
    rows_div = [i for i in infos if i.diverged]
    if rows_div:
        total = sum(i.diverged for i in rows_div)
        lines.append(f"{DIVERGED} diverged (non-finite loss; no numbers): {total} run(s) in {len(rows_div)} row(s) "
                     f"({'; '.join(f'{i.label}: {i.diverged}/{i.seeds}' for i in rows_div)})")
    if len({i.group for i in infos}) > 1:
        lines.append("reference rows (target, oracle) per benchmark/model group; best marks within a group")
    if t.seeds_note:
        lines.append(t.seeds_note)
    if t.hosts_note:
        lines.append(t.hosts_note)
    return "\n".join(lines)


def numeric_csv(t: Table) -> pd.DataFrame:
    """The table as numbers: n, reached, missed, diverged, then per column its mean and CI half-width."""
    idx = t.means.index
    info = [t.infos[l] for l in idx]
    meta = pd.DataFrame({"group": [i.group for i in info], "n": [i.seeds for i in info],
                         "reached": pd.array([i.reached for i in info], dtype="Int64"),
                         "missed": pd.array([None if i.reference else i.missed for i in info], dtype="Int64"),
                         "diverged": pd.array([None if i.reference else i.diverged for i in info], dtype="Int64")},
                        index=idx)
    cells = {}
    for c in t.columns:
        cells[c.label] = t.means[c.label]
        cells[f"{c.label} ci95"] = t.cis[c.label]
        cells[f"{c.label} n"] = t.counts[c.label]
    out = pd.concat([meta, pd.DataFrame(cells, index=idx)], axis=1)
    out.index.name = "row"
    return out


# ---- paired comparison ------------------------------------------------------------------------

def baseline_rows(infos: dict[str, RowInfo], baseline: str) -> dict[str, str]:
    """Reference group -> the baseline's row in it: a row label, or a method with one row per group."""
    methods = [i for i in infos.values() if not i.reference and not i.control]
    exact = [i for i in methods if i.label == baseline]
    chosen = exact or [i for i in methods if i.method == baseline]
    if not chosen:
        raise ReportError(f"--baseline {baseline!r} names no row of the table; available: "
                          + ", ".join(repr(i.label) for i in methods))
    out: dict[str, str] = {}
    for i in chosen:
        if i.group in out:
            same = [j.label for j in chosen if j.group == i.group]
            raise ReportError(f"--baseline {baseline!r} matches several rows ({', '.join(map(repr, same))}); "
                              "name one row label")
        out[i.group] = i.label
    return out


@dataclass
class PairedTable:
    baseline: str
    text: pd.DataFrame
    long: pd.DataFrame
    note: str


def paired_table(df: pd.DataFrame, baseline: str, t: Table | None = None) -> PairedTable:
    """Every other row minus the baseline row of its reference group, paired by seed, per column."""
    t = t or build_table(df)
    base_of = baseline_rows(t.infos, baseline)
    rows = table_rows(df)
    seeds = {c.label: per_seed(rows, c).pivot_table(index="seed", columns="row", values="value", dropna=False)
             for c in t.columns}
    long, text_rows = [], {}
    for label, info in t.infos.items():
        base = base_of.get(info.group)
        if base is None or label == base:
            continue
        cells: dict[str, str] = {}
        for c in t.columns:
            wide = seeds[c.label]
            if label not in wide or base not in wide:
                continue
            p = paired(wide[label], wide[base])
            long.append({"row": label, "baseline": base, "column": c.label, "n_pairs": p.n, "diff": p.diff,
                         "ci95_lo": p.lo, "ci95_hi": p.hi, "p_t": p.p_t, "p_wilcoxon": p.p_wilcoxon, "p_shown": p.test})
            if p.n == 0:
                cells[c.label] = "n/a"
            elif p.n == 1:
                cells[c.label] = f"{_signed(p.diff)} (1 pair)"
            else:
                star = "ʷ" if p.test == "wilcoxon" else ""
                shown = "n/a" if math.isnan(p.p) else f"{p.p:.3g}"  # n/a: a constant difference (no spread)
                cells[c.label] = f"{_signed(p.diff)} [{_signed(p.lo)}, {_signed(p.hi)}] p={shown}{star}"
        text_rows[f"{label} {info.mark}".rstrip()] = {"vs": base, "pairs": _pairs_count(seeds, label, base), **cells}
    text = pd.DataFrame.from_dict(text_rows, orient="index").fillna("")
    text.index.name = "row"
    cols = [c.label for c in t.columns if c.label in text.columns]
    text = text[[c for c in ("vs", "pairs") if c in text.columns] + cols]
    long_df = pd.DataFrame(long, columns=["row", "baseline", "column", "n_pairs", "diff", "ci95_lo", "ci95_hi", "p_t",
                                          "p_wilcoxon", "p_shown"])
    note = (f"cells: row − baseline ({baseline}) paired by seed within a reference group: mean difference "
            "[95% paired Student-t interval] and p-value; p is the paired t-test (scipy.stats.ttest_rel), "
            "or, with ʷ, the Wilcoxon signed-rank test (scipy.stats.wilcoxon, from 6 pairs on; both are in the CSV). "
            "Diverged runs and missing values are left out of the pairs.")
    if len(t.infos) and any(MISSED in str(i) or DIVERGED in str(i) for i in text.index):
        note += f"\n{MISSED} some runs of the row missed the stopping target; {DIVERGED} some diverged."
    return PairedTable(baseline, text, long_df, note)


def _signed(x: float) -> str:
    return f"{round(x, 3) + 0.0:+.3f}"  # no "-0.000" from float noise


def _pairs_count(seeds: dict[str, pd.DataFrame], label: str, base: str) -> str:
    counts = [int(w[[label, base]].dropna().shape[0]) for w in seeds.values() if label in w and base in w]
    return str(max(counts)) if counts else "0"


# ---- output -----------------------------------------------------------------------------------

_LATEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "_": r"\_", "#": r"\#", "$": r"\$",
          "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\^{}", "±": r"$\pm$", "†": r"\dag{}",
          "‡": r"\ddag{}", "−": "-", "ʷ": r"$^{w}$"}


def _latex_escape(s: str) -> str:
    return "".join(_LATEX.get(ch, ch) for ch in s)


def to_latex(text: pd.DataFrame, note: str = "") -> str:
    cols = list(text.columns)
    lines = [r"\begin{tabular}{l" + "r" * len(cols) + "}", r"\toprule",
             " & ".join(["row"] + [_latex_escape(str(c)) for c in cols]) + r" \\", r"\midrule"]
    for idx, row in text.iterrows():
        cells = [_latex_escape(str(idx))]
        for v in row:
            v = str(v)
            cells.append(r"\textbf{" + _latex_escape(v[:-1]) + "}" if v.endswith("*") else _latex_escape(v))
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    if note:
        lines += [r"\par\smallskip{\footnotesize"] + [_latex_escape(n) + r"\\" for n in note.splitlines()] + ["}"]
    return "\n".join(lines) + "\n"


def _safe_name(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=+-]+", "_", s).strip("_") or "baseline"


def _md_lines(note: str) -> str:
    return "  \n".join(note.splitlines())  # Markdown hard line breaks: one legend entry per line


def render(df: pd.DataFrame, baseline: str | None = None) -> tuple[dict[str, str], str]:
    """Every table file's text by name, and the Markdown to print; computed before anything is written."""
    if df.empty:
        raise ReportError("no records to report")
    files: dict[str, str] = {}
    printed = ""
    for name, full in (("table", False), ("table_full", True)):
        t = build_table(df, full)
        note = legend(t)
        md = t.text.to_markdown() + "\n\n" + _md_lines(note) + "\n"
        files[f"{name}.md"] = md
        files[f"{name}.csv"] = numeric_csv(t).to_csv()
        files[f"{name}.tex"] = to_latex(t.text, note)
        if not full:
            printed, headline = md, t
    if baseline is not None:
        p = paired_table(df, baseline, headline)
        stem = f"table_vs_{_safe_name(baseline)}"
        md = p.text.to_markdown() + "\n\n" + _md_lines(p.note) + "\n"
        files[f"{stem}.md"] = md
        files[f"{stem}.csv"] = p.long.to_csv(index=False)
        files[f"{stem}.tex"] = to_latex(p.text, p.note)
        printed += "\n" + md
    return files, printed


def write_tables(df: pd.DataFrame, out_dir: str | Path, baseline: str | None = None) -> str:
    """Write table{,_full}.{md,csv,tex} (and table_vs_<baseline>.*) into ``out_dir``; returns the Markdown.

    Everything is computed first: a bad baseline raises before any file is written."""
    files, printed = render(df, baseline)
    for name, text in files.items():
        atomic_write(Path(out_dir) / name, text)
    return printed


def summary_table(record: dict[str, Any]) -> str:
    """A compact per-stage view of one run's main numbers."""
    df = records_frame([record])
    text, _ = table(df)
    u = record.get("unlearn") or {}
    header = (f"method={record.get('method')} seed={record['config'].get('seed')} status={record.get('status')} "
              f"steps={u.get('steps')} reached_target={u.get('reached_target')}")
    return header + "\n" + text.to_markdown()


def report(paths: Iterable[str | Path], out: str | Path, baseline: str | None = None) -> str:
    """Tables and plots of the records under ``paths`` into ``out``; UserError (nothing written) on bad input."""
    df = load_frame(paths)
    files, printed = render(df, baseline)
    from bench.plots import render_plots

    figures = render_plots(df)
    for name, text in files.items():
        atomic_write(Path(out) / name, text)
    for name, data in figures.items():
        atomic_write(Path(out) / "plots" / name, data)
    return printed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench.report", description="Build comparison tables from run records.")
    parser.add_argument("dirs", nargs="+", help="record.json files or directories searched recursively")
    parser.add_argument("--out", default=None, help="output directory (default: the first DIR)")
    parser.add_argument("--baseline", default=None,
                        help="row label or method name: also write table_vs_<baseline>.{md,csv,tex}, "
                             "each row's seed-paired difference to it")
    args = parser.parse_args(argv)
    out = args.out or (args.dirs[0] if Path(args.dirs[0]).is_dir() else str(Path(args.dirs[0]).parent))
    try:
        print(report(args.dirs, out, args.baseline))
    except UserError as err:
        exit_with(err, parser.prog)


if __name__ == "__main__":
    main()
