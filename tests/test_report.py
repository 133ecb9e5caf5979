"""Table aggregation, confidence intervals, best-value marking and LaTeX escaping on synthetic records."""

import pytest
from scipy import stats

from bench.report import aggregate, best_entities, columns_present, records_frame, table, write_tables


def _record(method, seed, values):
    rows = []
    for stage, metric, split, suite, v in values:
        rows.append({"stage": stage, "suite": suite, "split": split, "metric": metric, "value": v, "n": 10})
    return {"method": method, "config": {"seed": seed}, "status": "complete", "config_hash": f"{method}{seed}", "rows": rows}


def _records():
    recs = []
    for seed, (ga_f, npo_f, ga_r, npo_r) in enumerate([(0.1, 0.3, 0.9, 0.5), (0.2, 0.4, 0.8, 0.6), (0.3, 0.5, 0.7, 0.7)]):
        for method, f, r in (("ga", ga_f, ga_r), ("npo", npo_f, npo_r)):
            recs.append(_record(method, seed, [
                ("target", "em", "forget", "knowledge", 1.0), ("oracle", "em", "forget", "knowledge", 0.0),
                ("unlearned", "em", "forget", "knowledge", f), ("unlearned", "em", "retain", "knowledge", r),
                ("unlearned", "privleak@mink", "forget", "privacy", -5.0 if method == "ga" else 2.0),
            ]))
    return recs


def test_mean_and_t_interval():
    agg = aggregate(records_frame(_records()))
    ga = agg[(agg.entity == "ga") & (agg.column == "forget em")].iloc[0]
    assert ga["mean"] == pytest.approx(0.2)
    sd = 0.1
    assert ga["ci"] == pytest.approx(stats.t.ppf(0.975, 2) * sd / 3 ** 0.5)
    assert ga["n"] == 3
    # Reference stages appear in every record but count once per seed.
    target = agg[(agg.entity == "target") & (agg.column == "forget em")].iloc[0]
    assert target["mean"] == 1.0 and target["ci"] == 0.0 and target["n"] == 3


def test_best_respects_direction():
    df = records_frame(_records())
    agg = aggregate(df)
    col = {c.label: c for c in columns_present(df, full=True)}
    assert best_entities(agg, col["forget em"]) == {"ga"}     # lower forget is better
    assert best_entities(agg, col["retain em"]) == {"ga"}     # higher retain is better (0.8 vs 0.6)
    assert best_entities(agg, col["privleak"]) == {"npo"}     # nearest zero (2 vs -5)


def test_table_rows_order_and_marks():
    text, means = table(records_frame(_records()))
    assert list(text.index) == ["target", "oracle", "ga", "npo"]
    assert text.loc["ga", "forget em"].endswith("*") and "±" in text.loc["ga", "forget em"]
    assert not text.loc["npo", "forget em"].endswith("*")
    assert means.loc["npo", "retain em"] == pytest.approx(0.6)


def test_latex_is_balanced_and_escaped(tmp_path):
    recs = _records()
    for r in recs:
        r["method"] = r["method"] + "_v2&x"
    md = write_tables(records_frame(recs), tmp_path)
    tex = (tmp_path / "table.tex").read_text()
    assert tex.count(r"\begin{tabular}") == tex.count(r"\end{tabular}") == 1
    assert r"ga\_v2\&x" in tex and "ga_v2" not in tex.replace(r"\_", "")
    assert tex.count("{") == tex.count("}")
    assert r"$\pm$" in tex
    assert (tmp_path / "table.csv").read_text().startswith("row,")
    assert "ga_v2&x" in md


def test_plots_written_as_png_and_pdf(tmp_path):
    from bench.plots import write_plots

    recs = _records()
    for r in recs:  # add the retain/forget mcq the trade-off plot uses, and a relearn curve
        r["rows"] += [{"stage": "unlearned", "suite": "knowledge", "split": "forget", "metric": "mcq_acc", "value": 0.3, "n": 1},
                      {"stage": "unlearned", "suite": "knowledge", "split": "retain", "metric": "em", "value": 0.7, "n": 1}]
        for step, v in ((0, 0.25), (10, 0.5)):
            r["rows"] += [{"stage": "attacked/harmful", "suite": "relearn", "split": "forget_heldout",
                           "metric": f"mcq_acc@step{step}", "value": v, "n": 1},
                          {"stage": "oracle_attacked/harmful", "suite": "relearn", "split": "forget_heldout",
                           "metric": f"mcq_acc@step{step}", "value": 0.25, "n": 1}]
    paths = write_plots(records_frame(recs), tmp_path)
    names = {p.name for p in paths}
    assert {"tradeoff.png", "tradeoff.pdf", "relearn_curves.png", "relearn_curves.pdf"} <= names
    assert all(p.stat().st_size > 1000 for p in paths)


def test_the_legend_names_the_host_and_marks_a_table_of_several():
    """One seed gives other numbers on another kind of host (its kernels sum in another order), so the legend says
    where the records were computed, and a table that mixes kinds of host says so with the count of each."""
    from bench.report import build_table, legend

    def on(rec, model, kernels):
        return {**rec, "provenance": {"cpu": {"model": model, "capability": kernels, "count": 2},
                                      "torch_threads": 1, "device": "cpu"}}

    recs = _records()
    one = legend(build_table(records_frame([on(r, "AMD EPYC", "AVX2") for r in recs])))
    assert "computed on AMD EPYC (AVX2 kernels, 1 torch thread(s))" in one and "kinds of host" not in one
    mixed = legend(build_table(records_frame([on(r, "AMD EPYC", "AVX2") for r in recs[:4]]
                                             + [on(r, "Intel Xeon", "AVX512") for r in recs[4:]])))
    assert "computed on 2 kinds of host" in mixed
    assert "AMD EPYC (AVX2 kernels, 1 torch thread(s)): 4 record(s)" in mixed
    assert "Intel Xeon (AVX512 kernels, 1 torch thread(s)): 2 record(s)" in mixed
    older = legend(build_table(records_frame(recs[:2] + [on(r, "AMD EPYC", "AVX2") for r in recs[2:]])))
    assert "host not recorded (records before provenance.cpu): 2 record(s)" in older
    gpu = {"device": "cuda", "gpu": "NVIDIA H100 80GB HBM3", "cuda": "12.8", "tf32": [False, True]}
    on_gpu = [{**r, "provenance": {**on(r, "AMD EPYC", "AVX2")["provenance"], "device": "cuda:0", "gpu": gpu}}
              for r in recs]
    assert ("computed on AMD EPYC (AVX2 kernels, 1 torch thread(s)) with cuda:0 (NVIDIA H100 80GB HBM3, CUDA 12.8, "
            "TF32 matmul False, cuDNN True)") in legend(build_table(records_frame(on_gpu)))
