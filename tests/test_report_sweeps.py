"""Citable tables from synthetic sweeps: a row per config, seed pooling, marks, paired table, bad input."""

import json
import subprocess
import sys

import pandas as pd
import pytest
from scipy import stats

from bench.errors import UserError
from bench.report import build_table, main, paired_table, records_frame, render, report
from tests.conftest import ROOT


def _row(stage, suite, split, metric, value):
    return {"stage": stage, "suite": suite, "split": split, "metric": metric, "value": value, "n": 10}


def _rec(method, seed, params, forget, retain, *, reached=True, status="complete", n_people=80, extra=()):
    """A record as bench.run writes it (the parts the report reads)."""
    targets = {"npo": "methods.npo.NPO", "graddiff": "methods.graddiff.GradDiff", "ga": "methods.ga.GradientAscent"}
    cfg = {"seed": seed, "cache_dir": f"/tmp/cache{seed % 2}", "threads": None, "reuse_stages": True,
           "suites": ["knowledge", "relearn"],
           "method": {"_target_": targets[method], "lr": 1e-4, **params},
           "benchmark": {"_target_": "bench.world.synthetic_world", "seed": 0, "n_people": n_people},
           "model": {"name": "tiny"}, "unlearn": {"max_steps": 10, "check_every": 2},
           "suite_settings": {"relearn": {"seed": seed, "attacks": {"rtt": {"folds": 4}}}},
           "attack": {"rtt": {"folds": 4}}}
    target_f = 1.0 if n_people == 80 else 0.9
    rows = [_row("target", "knowledge", "forget", "mcq_acc", target_f), _row("target", "knowledge", "retain", "em", 1.0),
            _row("oracle", "knowledge", "forget", "mcq_acc", 0.25), _row("oracle", "knowledge", "retain", "em", 1.0),
            _row("unlearned", "unlearn", "forget", "steps", 6 + seed), _row("unlearned", "unlearn", "forget", "wall_s", 1.5),
            _row("unlearned", "unlearn", "forget", "diverged", float(status == "diverged")),
            _row("unlearned", "unlearn", "forget", "reached_target", float(reached))]
    if status != "diverged":
        rows += [_row("unlearned", "knowledge", "forget", "mcq_acc", forget),
                 _row("unlearned", "knowledge", "retain", "em", retain),
                 _row("unlearned", "relearn", "forget_heldout", "mcq_acc@rtt", forget + 0.2), *extra]
    trace = [{"step": 2, "forget_mcq_acc": 0.8, "retain_em": 0.95}, {"step": 4, "forget_mcq_acc": forget, "retain_em": retain}]
    return {"method": method, "config": cfg, "status": status, "config_hash": f"{method}{params}{seed}",
            "unlearn": {"steps": 6 + seed, "diverged": status == "diverged", "reached_target": reached, "stop_trace": trace},
            "rows": rows}


def _beta_sweep(seeds=3):
    """npo beta=0.05,5.0 and graddiff, seeds 0..seeds-1; forget mcq differs between the betas."""
    recs = []
    for s in range(seeds):
        recs.append(_rec("npo", s, {"beta": 0.05, "alpha": 1.0}, 0.30 + 0.01 * s, 0.90 - 0.02 * s))
        recs.append(_rec("npo", s, {"beta": 5.0, "alpha": 1.0}, 0.60 + 0.03 * s, 0.50 + 0.01 * s))
        recs.append(_rec("graddiff", s, {"alpha": 1.0}, 0.40 + 0.02 * s * s, 0.70 + 0.005 * s))
    return recs


def _write(tmp_path, recs):
    for i, r in enumerate(recs):
        d = tmp_path / "sweep" / f"run{i}"
        d.mkdir(parents=True)
        (d / "record.json").write_text(json.dumps(r))
    return tmp_path / "sweep"


def test_beta_sweep_gives_one_row_per_config_named_by_what_differs():
    t = build_table(records_frame(_beta_sweep()))
    assert list(t.infos) == ["target", "oracle", "graddiff", "npo beta=0.05", "npo beta=5"]
    assert t.means.loc["npo beta=0.05", "forget mcq"] == pytest.approx(0.31)
    assert t.means.loc["npo beta=5", "forget mcq"] == pytest.approx(0.63)
    # seeds pooled within a config only: the CI is over that config's 3 seeds
    assert t.cis.loc["npo beta=5", "forget mcq"] == pytest.approx(stats.t.ppf(0.975, 2) * 0.03 / 3 ** 0.5)
    assert (t.counts.loc["npo beta=0.05"] == 3).all() and t.text.loc["npo beta=0.05", "n"] == "3"
    # seed followers (suite_settings.relearn.seed), cache_dir, threads never name or split a row
    assert not any("seed" in label or "cache" in label for label in t.infos)


def test_sweep_over_unlearn_and_benchmark_splits_rows_and_reference_groups():
    recs = []
    for s in range(2):
        for n_people in (80, 40):
            for steps in (10, 20):
                r = _rec("npo", s, {"beta": 0.1}, 0.3, 0.8, n_people=n_people)
                r["config"]["unlearn"]["max_steps"] = steps
                recs.append(r)
    t = build_table(records_frame(recs))
    labels = list(t.infos)
    assert labels == ["target benchmark.n_people=40", "oracle benchmark.n_people=40",
                      "npo unlearn.max_steps=10 benchmark.n_people=40", "npo unlearn.max_steps=20 benchmark.n_people=40",
                      "target benchmark.n_people=80", "oracle benchmark.n_people=80",
                      "npo unlearn.max_steps=10 benchmark.n_people=80", "npo unlearn.max_steps=20 benchmark.n_people=80"]
    # target rows of different benchmarks are not pooled
    assert t.means.loc["target benchmark.n_people=40", "forget mcq"] == pytest.approx(0.9)
    assert t.means.loc["target benchmark.n_people=80", "forget mcq"] == pytest.approx(1.0)
    assert all(i.seeds == 2 for i in t.infos.values())


def test_swapped_config_group_is_named_once():
    a = _rec("ga", 0, {}, 0.3, 0.8)
    b = _rec("ga", 0, {}, 0.3, 0.8)
    b["config"]["benchmark"] = {"_target_": "bench.benchmarks.tofu.load_tofu", "data_dir": "x"}
    t = build_table(records_frame([a, b]))
    assert "ga benchmark=tofu" in t.infos and "target benchmark=synthetic_world" in t.infos


def test_reached_and_diverged_marks_in_md_csv_tex(tmp_path):
    recs = _beta_sweep()
    recs[0] = _rec("npo", 0, {"beta": 0.05, "alpha": 1.0}, 0.30, 0.90, reached=False)    # beta=0.05 seed 0 missed
    recs[4] = _rec("npo", 1, {"beta": 5.0, "alpha": 1.0}, 0.0, 0.0, status="diverged")   # beta=5 seed 1 diverged
    for r in recs[6:]:
        if r["config"]["method"].get("beta") == 5.0:
            r.update(_rec("npo", r["config"]["seed"], {"beta": 5.0, "alpha": 1.0}, 0, 0, status="diverged"))
    files, _ = render(records_frame(recs))
    md, tex = files["table.md"], files["table.tex"]
    line = next(line for line in md.splitlines() if line.startswith("| npo beta=0.05 †"))
    assert [c.strip() for c in line.split("|")][2:5] == ["3", "2/3", "0"]
    assert "† missed the stopping target: 1 run(s)" in md
    div = next(line for line in md.splitlines() if line.startswith("| npo beta=5 ‡"))
    assert "‡ diverged" in md and [c.strip() for c in div.split("|")][2:5] == ["3", "3/3", "2"]
    assert r"npo beta=0.05 \dag{}" in tex and r"npo beta=5 \ddag{}" in tex and r"\dag{} missed the stopping target" in tex
    csv = pd.read_csv(pd.io.common.StringIO(files["table.csv"]), index_col="row")
    assert csv.loc["npo beta=0.05", "reached"] == 2 and csv.loc["npo beta=0.05", "missed"] == 1
    assert csv.loc["npo beta=5", "diverged"] == 2 and csv.loc["graddiff", "reached"] == 3


def test_all_seeds_diverged_is_never_a_number():
    recs = [_rec("npo", s, {"beta": 5.0}, 0, 0, status="diverged") for s in range(2)] + [_rec("ga", 0, {}, 0.3, 0.8)]
    t = build_table(records_frame(recs))
    row = t.text.loc["npo beta=5 ‡"] if "npo beta=5 ‡" in t.text.index else t.text.loc["npo ‡"]
    assert row["forget mcq"] == "diverged" and row["steps"] == "diverged"
    assert pd.isna(t.means.iloc[-1]["steps"])


def test_null_values_are_missing_not_zero():
    recs = [_rec("ga", s, {}, 0.3, 0.8) for s in range(3)]
    next(r for r in recs[2]["rows"] if r["metric"] == "mcq_acc" and r["stage"] == "unlearned")["value"] = None
    t = build_table(records_frame(recs))
    assert t.means.loc["ga", "forget mcq"] == pytest.approx(0.3) and t.counts.loc["ga", "forget mcq"] == 2
    assert "(n=2)" in t.text.loc["ga", "forget mcq"]


def test_new_metric_and_new_attack_reach_tables_without_report_edits():
    extra = [_row("unlearned", "knowledge", "forget", "brand_new_score", 0.7),
             _row("unlearned", "newsuite", "forget", "leak", 0.1),
             _row("unlearned", "relearn", "forget_heldout", "mcq_acc@myattack_p0.5", 0.4)]
    recs = [_rec("ga", s, {}, 0.3, 0.8, extra=extra) for s in range(2)]
    files, _ = render(records_frame(recs))
    assert "myattack_p0.5 relearn mcq" in files["table.md"] and "newsuite/forget/leak" in files["table.md"]
    assert "forget brand_new_score" in files["table_full.md"] and "forget brand_new_score" in files["table_full.csv"]


def test_steps_print_as_integers():
    t = build_table(records_frame([_rec("ga", 0, {}, 0.3, 0.8)]))
    assert t.text.loc["ga", "steps"] == "6" and t.text.loc["ga", "unlearn s"] == "1.500"


def test_paired_table_matches_ttest_rel_by_hand():
    recs = _beta_sweep(seeds=4)
    df = records_frame(recs)
    p = paired_table(df, "graddiff")
    npo = [0.30 + 0.01 * s for s in range(4)]
    gd = [0.40 + 0.02 * s * s for s in range(4)]
    d = [a - b for a, b in zip(npo, gd)]
    mean = sum(d) / 4
    half = stats.t.ppf(0.975, 3) * pd.Series(d).std(ddof=1) / 2
    got = p.long[(p.long.row == "npo beta=0.05") & (p.long.column == "forget mcq")].iloc[0]
    assert got["n_pairs"] == 4 and got["diff"] == pytest.approx(mean)
    assert got["ci95_lo"] == pytest.approx(mean - half) and got["ci95_hi"] == pytest.approx(mean + half)
    assert got["p_t"] == pytest.approx(stats.ttest_rel(npo, gd).pvalue)
    assert pd.isna(got["p_wilcoxon"]) and got["p_shown"] == "t"
    cell = p.text.loc["npo beta=0.05", "forget mcq"]
    assert cell.startswith(f"{mean:+.3f}") and f"p={stats.ttest_rel(npo, gd).pvalue:.3g}" in cell
    assert "graddiff" not in p.text.index


def test_paired_table_uses_wilcoxon_from_six_seeds():
    p = paired_table(records_frame(_beta_sweep(seeds=6)), "graddiff")
    got = p.long[(p.long.row == "npo beta=5") & (p.long.column == "retain em")].iloc[0]
    npo = [0.50 + 0.01 * s for s in range(6)]
    gd = [0.70 + 0.005 * s for s in range(6)]
    assert got["p_wilcoxon"] == pytest.approx(stats.wilcoxon(npo, gd).pvalue) and got["p_shown"] == "wilcoxon"
    assert got["p_t"] == pytest.approx(stats.ttest_rel(npo, gd).pvalue)
    assert p.text.loc["npo beta=5", "retain em"].endswith("ʷ")


def test_paired_is_matched_by_seed(tmp_path):
    recs = [r for r in _beta_sweep(seeds=3) if not (r["method"] == "graddiff" and r["config"]["seed"] == 2)]
    p = paired_table(records_frame(recs), "graddiff")
    assert set(p.long.loc[p.long.row == "npo beta=0.05", "n_pairs"]) == {2}


def test_report_cli_writes_tables_and_paired(tmp_path, capsys):
    sweep = _write(tmp_path, _beta_sweep())
    main([str(sweep), "--baseline", "npo beta=0.05"])
    out = capsys.readouterr().out
    assert "npo beta=5" in out
    for name in ("table.md", "table.csv", "table.tex", "table_full.md", "table_vs_npo_beta=0.05.md",
                 "table_vs_npo_beta=0.05.csv", "table_vs_npo_beta=0.05.tex", "plots/tradeoff.png", "plots/tradeoff.pdf"):
        assert (sweep / name).exists(), name
    assert not list(sweep.rglob(".*.tmp"))


def _snapshot(root):
    return {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _fails_cleanly(tmp_path, capsys, argv, *needles):
    sweep = tmp_path / "sweep"
    before = _snapshot(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main([str(sweep), *argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err and err.startswith("bench.report: error:")
    for n in needles:
        assert n in err, err
    assert _snapshot(tmp_path) == before  # nothing written, nothing changed


def test_bad_baseline_lists_labels_and_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    _write(tmp_path, _beta_sweep())
    _fails_cleanly(tmp_path, capsys, ["--baseline", "simnpo"], "'simnpo'", "'npo beta=0.05'", "'graddiff'")
    with pytest.raises(UserError, match="several rows"):
        paired_table(records_frame(_beta_sweep()), "npo")


def test_corrupt_record_is_named(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    sweep = _write(tmp_path, _beta_sweep())
    bad = sweep / "run3" / "record.json"
    bad.write_text(bad.read_text()[:200])
    _fails_cleanly(tmp_path, capsys, [], str(bad), "corrupt")


def test_foreign_record_is_named(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    sweep = _write(tmp_path, _beta_sweep())
    foreign = sweep / "other" / "record.json"
    foreign.parent.mkdir()
    foreign.write_text(json.dumps({"name": "something else", "rows": []}))
    _fails_cleanly(tmp_path, capsys, [], str(foreign), "missing key(s) method, config")
    foreign.write_text(json.dumps({"method": "ga", "config": {"seed": 0}, "rows": [{"stage": "target"}]}))
    _fails_cleanly(tmp_path, capsys, [], str(foreign), "rows[0]")
    with pytest.raises(UserError, match="rows\\[0\\]"):
        report([sweep], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_report_module_entry_point_fails_in_one_line(tmp_path):
    sweep = _write(tmp_path, _beta_sweep(seeds=1))
    proc = subprocess.run([sys.executable, "-m", "bench.report", str(sweep), "--baseline", "nope"], cwd=ROOT,
                          capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "--baseline 'nope' names no row" in proc.stderr


def test_tradeoff_plot_draws_the_trajectory(tmp_path):
    from bench import plots

    df = records_frame(_beta_sweep())
    curve = plots._trajectory(df, "npo beta=0.05")
    assert list(curve.index) == [2, 4] and curve.loc[2, "em"] == pytest.approx(0.95)
    figs = plots.render_plots(df)
    assert {"tradeoff.png", "tradeoff.pdf"} <= set(figs) and all(len(b) > 1000 for b in figs.values())


def test_callback_baseline_composes_in_hydra_and_writes_the_paired_table(tmp_path, capsys):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from tests.conftest import CONF

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=["hydra.callbacks.report.baseline=graddiff"], return_hydra_config=True)
    assert "report" not in cfg.keys() - {"hydra"}  # a hydra-side setting: the run config (and its hash) is unchanged
    callback = instantiate(cfg.hydra.callbacks.report)
    assert callback.baseline == "graddiff"
    sweep = _write(tmp_path, _beta_sweep())
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}})
    callback.on_multirun_end(config)
    assert (sweep / "table_vs_graddiff.md").exists() and "npo beta=5" in capsys.readouterr().out
    # a bad baseline after a finished sweep: the main tables, then one error line (no traceback)
    bad = type(callback)(baseline="nope")
    (sweep / "table.md").unlink()
    bad.on_multirun_end(config)
    out = capsys.readouterr().out
    assert (sweep / "table.md").exists() and "bench.report: error: --baseline 'nope' names no row" in out


def test_the_paper_preset_prints_the_seed_plan_of_its_relearn_columns(tmp_path, capsys):
    """The paper preset's report ends with the seed plan for ±0.10 on the relearn columns (bench.power.seed_plan):
    the rows short of seeds and the overrides of the second stage; a sweep without relearn rows prints none."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from bench.errors import UserError
    from bench.sweep_report import ReportCallback
    from tests.conftest import CONF

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=["+experiment=paper"], return_hydra_config=True)
    callback = instantiate(cfg.hydra.callbacks.report)
    assert callback.plan_half_width == pytest.approx(0.10) and callback.baseline == "graddiff"

    forget = {"npo": [0.40, 0.70, 0.55], "graddiff": [0.30, 0.32, 0.31]}  # rtt relearn mcq: forget + 0.2
    recs = [_rec(m, s, {"alpha": 1.0}, v, 0.9) for m, vs in forget.items() for s, v in enumerate(vs)]
    sweep = _write(tmp_path / "paper", recs)
    callback.on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}}))
    out = capsys.readouterr().out
    assert "seed plan for a 95% half-width <= 0.1 on every relearn column" in out
    assert "1 of 2 rows need more seeds: npo 3 -> " in out and "run `method=npo,graddiff seed=3," in out
    no_relearn = [{**r, "rows": [row for row in r["rows"] if row["suite"] != "relearn"]} for r in recs]
    plain = _write(tmp_path / "compare", no_relearn)
    callback.on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(plain)}}}))
    assert "seed plan" not in capsys.readouterr().out
    with pytest.raises(UserError, match="plan_half_width"):
        ReportCallback(plan_half_width=0)


def test_directions_are_declared_by_the_modules_that_make_the_rows():
    from bench import directions
    from bench.suites import available_suites, suite_module

    for name in available_suites():
        assert getattr(suite_module(name), "DIRECTIONS", None), f"suite {name} declares no DIRECTIONS"
    assert directions.direction("knowledge", "forget", "em") == "lower"
    assert directions.direction("knowledge", "retain", "em") == "higher"
    assert directions.direction("privacy", "forget", "privleak@mink") == "zero"
    assert directions.direction("privacy", "forget", "mia_auc@loss") == "half"
    assert directions.direction("unlearn", "forget", "steps") == "lower"
    assert directions.direction("continual", "forget", "mcq_acc@request2") == "lower"
    assert directions.direction("nosuchsuite", "forget", "x") is None
    assert directions.is_integer("unlearn", "steps") and not directions.is_integer("unlearn", "wall_s")


def test_paired_constant_difference_has_no_p_value():
    import math

    import pandas as pd

    from bench.table_stats import paired

    p = paired(pd.Series([0.5, 0.6, 0.7]), pd.Series([0.4, 0.5, 0.6]))  # every seed +0.1: no spread
    assert p.diff == pytest.approx(0.1) and math.isnan(p.p_t)
    same = paired(pd.Series([0.5, 0.6, 0.7]), pd.Series([0.5, 0.6, 0.7]))
    assert same.diff == 0 and same.p_t == 1.0
    varied = paired(pd.Series([0.5, 0.7, 0.6]), pd.Series([0.4, 0.5, 0.6]))
    assert 0 < varied.p_t < 1
