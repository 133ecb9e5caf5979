"""Tuning (bench/tune.py, the tune sweeper): search spaces, the selection rules, the tuned file and its checks."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from bench import tune
from bench.errors import UserError
from bench.record import RECORD
from bench.run import Run, method_class
from tests.conftest import CONF, ROOT, compose_config
from methods.npo import NPO


# ---- search spaces ----------------------------------------------------------------------------

@pytest.mark.parametrize("path", sorted((CONF / "method").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_method_declares_a_valid_search_space_with_an_lr_grid(path):
    block, raw = tune.split_tune(yaml.safe_load(path.read_text()))
    if "lr" not in tune.hyperparameters(method_class(block)):  # a control that trains nothing (random_projection)
        assert raw is None, f"{path.stem} has no lr and nothing to tune"
        return
    space = tune.parse_space(method_class(block), block, raw)
    assert "lr" in space and len(space["lr"]) >= 2, path.stem
    assert block.get("lr") in space["lr"], f"{path.stem}: the YAML's own lr is not in its grid"


@pytest.mark.parametrize("raw,needles", [
    ({"bta": [0.1]}, ["method.tune.bta", "did you mean 'beta'", "NPO"]),
    ({"lr": []}, ["method.tune.lr", "empty grid"]),
    ({"lr": 1e-4}, ["method.tune.lr", "list of values"]),
    ({"lr": [1e-4, 1e-4]}, ["method.tune.lr", "twice"]),
    ({"beta": [0.1, -1.0]}, ["method.tune", "beta", "beta=-1.0"]),
    ([1e-4], ["method.tune", "map hyperparameters"]),
])
def test_bad_search_space_is_a_config_error_naming_the_key(raw, needles):
    with pytest.raises(tune.TuneError) as info:
        tune.parse_space(NPO, {"lr": 1e-4, "beta": 0.1}, raw)
    for needle in needles:
        assert needle in str(info.value), str(info.value)


def test_grid_and_override_syntax():
    space = {"lr": (1e-4, 3e-4), "layers": ([0], [0, 1])}
    assert tune.grid(space) == [{"lr": 1e-4, "layers": [0]}, {"lr": 1e-4, "layers": [0, 1]},
                                {"lr": 3e-4, "layers": [0]}, {"lr": 3e-4, "layers": [0, 1]}]
    plan = tune.Plan({"ga": {"lr": [1e-05]}}, [1000, 1001], "utility", "knowledge/retain/model_utility", ["threads=1"])
    assert plan.jobs() == [["threads=1", "method=ga", "method.lr=1e-05", "seed=1000"],
                           ["threads=1", "method=ga", "method.lr=1e-05", "seed=1001"]]
    assert tune.override_value([0, 1]) == "[0,1]" and tune.override_value("nll") == "nll"


# ---- selection --------------------------------------------------------------------------------

def _rec(method, seed, values, *, reached=True, utility=0.5, steps=50, diverged=False):
    return {"method": method, "status": "diverged" if diverged else "complete",
            "config": {"seed": seed, "method": {"_target_": "x", **values}},
            "unlearn": {"steps": steps, "reached_target": reached, "diverged": diverged},
            "rows": [{"stage": "unlearned", "suite": "knowledge", "split": "retain", "metric": "model_utility",
                      "value": utility, "n": 1},
                     {"stage": "unlearned", "suite": "knowledge", "split": "forget", "metric": "mcq_acc", "value": 0.3,
                      "n": 1}]}


def _plan(rule="utility", seeds=(1000, 1001)):
    return tune.Plan({"npo": {"lr": [1e-4, 3e-4], "beta": [0.1, 0.5]}, "ga": {"lr": [1e-4, 3e-4]}}, list(seeds), rule,
                     "knowledge/retain/model_utility")


def _npo_records(seeds=(1000, 1001)):
    # (lr, beta) -> reached, utility, steps
    table = {(1e-4, 0.1): (False, 0.95, 300), (1e-4, 0.5): (True, 0.70, 200),
             (3e-4, 0.1): (True, 0.80, 90), (3e-4, 0.5): (True, 0.80, 60)}
    return [_rec("npo", s, {"lr": lr, "beta": b}, reached=r, utility=u, steps=st)
            for (lr, b), (r, u, st) in table.items() for s in seeds]


def test_utility_rule_picks_most_utility_among_reached_ties_to_fewer_steps():
    records = _npo_records() + [_rec("ga", s, {"lr": lr}, reached=False) for s in (1000, 1001) for lr in (1e-4, 3e-4)]
    sel = tune.select(_plan(), records)
    assert sel.chosen["npo"].values == {"lr": 3e-4, "beta": 0.5}  # 0.95 never reached; 0.80 twice: 60 < 90 steps
    assert sel.chosen["ga"] is None
    out = sel.tuned_file("sweep")
    assert out["methods"]["ga"]["values"] is None and out["methods"]["ga"]["status"] == tune.NO_SETTING
    assert out["methods"]["ga"]["closest"] == {"values": {"lr": 1e-4}, "reached": "0/2", "forget_mcq": 0.3,
                                               "utility": 0.5, "grid_edge": ["lr=0.0001 is the grid's bottom"]}
    notes = sel.table().set_index(["method", "setting"])["note"]
    assert notes["ga", "lr=0.0001"].startswith(f"{tune.NO_SETTING}; closest to it, at the grid edge")
    assert notes["ga", "lr=0.0003"] == tune.NO_SETTING
    assert out["methods"]["npo"]["values"] == {"lr": 3e-4, "beta": 0.5} and out["seeds"] == [1000, 1001]
    md = sel.markdown()
    assert tune.NO_SETTING in md and "✓" in md and "1000, 1001" in md


def test_a_pick_at_the_end_of_a_grid_axis_is_flagged_in_the_table_and_the_tuned_file():
    sel = tune.select(_plan(), _npo_records())  # npo picks lr=3e-4 (grid top), beta=0.5 (grid top)
    note = sel.table().set_index("setting").loc["lr=0.0003 beta=0.5", "note"]
    assert "grid edge" in note and "lr=0.0003 is the grid's top" in note and "beta=0.5 is the grid's top" in note
    assert sel.tuned_file("sweep")["methods"]["npo"]["grid_edge"] == ["lr=0.0003 is the grid's top",
                                                                      "beta=0.5 is the grid's top"]
    inner = tune.Plan({"npo": {"lr": [1e-4, 3e-4, 1e-3]}}, [1000], "utility", "knowledge/retain/model_utility")
    sel = tune.select(inner, [_rec("npo", 1000, {"lr": lr}, utility=u) for lr, u in ((1e-4, .5), (3e-4, .9), (1e-3, .4))])
    assert sel.chosen["npo"].values == {"lr": 3e-4} and "grid_edge" not in sel.tuned_file("s")["methods"]["npo"]
    assert tune.grid_edges({"lr": [1e-4, 3e-4], "loss": ["a", "b"]}, {"lr": 1e-4, "loss": "a"}) == ["lr=0.0001 is the grid's bottom"]


def test_closest_setting_ranks_seeds_reached_then_forget_mcq_then_utility():
    def rec(lr, seed, reached, fmcq, util=0.5, diverged=False):
        r = _rec("ga", seed, {"lr": lr}, reached=reached, utility=util, diverged=diverged)
        r["rows"][1]["value"] = fmcq
        return r

    plan = tune.Plan({"ga": {"lr": [1e-4, 3e-4, 1e-3, 3e-3]}}, [1000, 1001], "utility", "knowledge/retain/model_utility")
    records = [rec(1e-4, 1000, False, 0.50), rec(1e-4, 1001, False, 0.50),
               rec(3e-4, 1000, True, 0.30), rec(3e-4, 1001, False, 0.45),                      # 1/2 reached
               rec(1e-3, 1000, False, 0.35, util=0.2), rec(1e-3, 1001, False, 0.35, util=0.2),  # lowest mean mcq, 0/2
               rec(3e-3, 1000, True, 0.40, diverged=True), rec(3e-3, 1001, False, 0.36)]      # diverged: not reached
    sel = tune.select(plan, records)
    assert sel.chosen["ga"] is None and sel.closest("ga").values == {"lr": 3e-4}  # seeds reached beat a lower mcq
    records = [r for r in records if r["config"]["method"]["lr"] != 3e-4]
    assert tune.select(plan, records).closest("ga").values == {"lr": 1e-3}  # then the lowest forget mcq
    ties = [rec(lr, s, False, 0.4, util=u) for lr, u in ((1e-4, 0.2), (3e-4, 0.6)) for s in (1000, 1001)]
    assert tune.select(plan, ties).closest("ga").values == {"lr": 3e-4}  # then the most utility
    nan = [rec(1e-4, s, False, float("nan")) for s in (1000, 1001)]
    assert tune.select(plan, nan).closest("ga") is None  # no number, no closest: the tuned run refuses


def test_a_setting_counts_as_reaching_only_within_the_step_limit():
    """reach_within: a run that stops at the target after reach_within x max_steps does not count (headroom, so
    the pick reaches on reported seeds that need more steps); the table and the closest entry show those seeds."""
    plan = tune.Plan({"npo": {"lr": [1e-4, 3e-4], "beta": [0.1, 0.5]}, "ga": {"lr": [1e-4]}}, [1000, 1001], "utility",
                     "knowledge/retain/model_utility", context={"unlearn": {"max_steps": 600}}, reach_within=0.5)
    assert plan.step_limit == 300
    ga = [_rec("ga", s, {"lr": 1e-4}, steps=st) for s, st in ((1000, 250), (1001, 420))]
    sel = tune.select(plan, _npo_records() + ga)
    assert sel.chosen["npo"].values == {"lr": 3e-4, "beta": 0.5}  # _npo_records' steps are all <= 300
    assert sel.chosen["ga"] is None  # seed 1001 reached at step 420 > 300
    row = sel.table().set_index(["method", "setting"]).loc[("ga", "lr=0.0001")]
    assert row["reached"] == "1/2 (+1 after step 300)" and row["note"].startswith(tune.NO_SETTING)
    assert sel.tuned_file("sweep")["methods"]["ga"]["closest"]["reached"] == "1/2 (+1 after step 300)"
    assert sel.tuned_file("sweep")["reach_within"] == 0.5 and "by step 300 (0.5 of the step cap" in sel.markdown()
    # 1.0 counts any stop at the target; a plan written before the key existed reads as 1.0
    plan.reach_within = 1.0
    assert tune.select(plan, _npo_records() + ga).chosen["ga"].values == {"lr": 1e-4}
    old = {k: v for k, v in plan.as_dict().items() if k != "reach_within"}
    assert tune.Plan.from_dict(old, "plan").reach_within == 1.0 and math.isinf(tune.Plan.from_dict(old, "p").step_limit)
    # a continual run's cap is per request (its steps sum them); a lower share needs the cap the sweep ran under
    plan.reach_within = 0.5
    two = _rec("ga", 1000, {"lr": 1e-4}, steps=500)
    two["unlearn"]["requests"] = [{"steps": 250}, {"steps": 250}]
    assert not tune._steps_past(two["unlearn"], plan.step_limit) and tune._steps_past({"steps": 301}, 300)
    assert not tune._steps_past({}, 300)  # an unknown count is not past the limit
    with pytest.raises(tune.TuneError, match="no unlearn.max_steps"):
        tune.select(tune.Plan({"ga": {"lr": [1e-4]}}, [1000], "utility", "knowledge/retain/model_utility",
                              reach_within=0.5), ga)
    with pytest.raises(tune.TuneError, match="reach_within=0 must be a share of unlearn.max_steps in \\(0, 1\\]"):
        tune.check_reach_within(0)
    for bad in (1.5, -0.5, "half", True, None):
        with pytest.raises(tune.TuneError, match="hydra.sweeper.reach_within"):
            tune.check_reach_within(bad)


def test_lowest_lr_rule_reproduces_the_ssiuu_protocol():
    sel = tune.select(_plan("lowest_lr"), _npo_records())
    assert sel.chosen["npo"].values == {"lr": 1e-4, "beta": 0.5}


def test_a_setting_must_reach_the_target_on_every_tuning_seed():
    records = _npo_records(seeds=(1000,))  # seed 1001 never ran: nothing reached on every seed
    assert tune.select(_plan(), records).chosen["npo"] is None
    records = _npo_records() + [_rec("npo", 1001, {"lr": 3e-4, "beta": 0.5}, reached=True, diverged=True)]
    records = [r for r in records if not (r["config"]["seed"] == 1001 and r["config"]["method"] == {"_target_": "x", "lr": 3e-4, "beta": 0.5}
                                          and not r["unlearn"]["diverged"])]
    assert tune.select(_plan(), records).chosen["npo"].values == {"lr": 3e-4, "beta": 0.1}  # the diverged one is out


# ---- loading a tuned file into a run ----------------------------------------------------------

def _tuned_file(tmp_path, methods, seeds=(1000,), context=None, **extra):
    path = tmp_path / "tuned.yaml"
    path.write_text(yaml.safe_dump({"rule": "utility", "utility": "knowledge/retain/model_utility", "seeds": list(seeds),
                                    "context": context or {}, "methods": methods, **extra}))
    return path


def test_tuned_values_reach_the_run_and_its_record_identity(tmp_path):
    path = _tuned_file(tmp_path, {"ga": {"values": {"lr": 3e-4}, "status": "chosen"}})
    r = Run(compose_config(f"tuned={path}", f"cache_dir={tmp_path}"), tmp_path / "run", "ga")
    assert r.method.lr == 3e-4 and r.resolved["method"]["lr"] == 3e-4 and "tune" not in r.resolved["method"]
    assert r.tuning["seeds"] == [1000] and r.tuning["values"] == {"lr": 3e-4}
    plain = Run(compose_config(f"cache_dir={tmp_path}", "method.lr=3e-4"), tmp_path / "run", "ga")
    assert plain.cfg_hash != r.cfg_hash


def test_a_method_without_a_tune_block_runs_its_yaml_under_a_tuned_file(tmp_path):
    """random_projection trains nothing: a tuned file without it still lets the paper preset run it, as its YAML."""
    path = _tuned_file(tmp_path, {"ga": {"values": {"lr": 3e-4}, "status": "chosen"},
                                  "mrp": {"values": {"lr": 1.0}, "status": "chosen"}})  # its grid sets no shared key
    r = Run(compose_config(f"tuned={path}", f"cache_dir={tmp_path}", "method=random_projection"), tmp_path / "run",
            "random_projection")
    assert r.tuning["values"] == {} and "no tune: block" in r.tuning["note"] and r.method.k is None
    with pytest.raises(UserError, match="tuning seeds"):  # the seed rule still holds
        Run(compose_config(f"tuned={path}", f"cache_dir={tmp_path}", "method=random_projection", "seed=1000"),
            tmp_path / "run", "random_projection")


@pytest.mark.parametrize("mrp_entry", [
    {"values": {"lr": 2.0, "k": 8}, "status": "chosen"},
    {"values": None, "status": tune.NO_SETTING, "closest": {"values": {"lr": 2.0, "k": 8}, "reached": "0/3"}},
])
def test_a_control_runs_at_the_tuned_values_of_the_method_it_controls(tmp_path, mrp_entry):
    """random_projection is MRP's capacity control: it must project out as many directions as the MRP beside it,
    so it takes MRP's tuned k (chosen or closest; the test model has d = 32), not its YAML's, and nothing MRP's grid does not set."""
    assert method_class({"_target_": "methods.random_projection.RandomProjection"}).controls == "mrp"
    path = _tuned_file(tmp_path, {"mrp": mrp_entry})
    r = Run(compose_config(f"tuned={path}", f"cache_dir={tmp_path}", "method=random_projection"), tmp_path / "run",
            "random_projection")
    assert r.method.k == 8 and r.resolved["method"]["k"] == 8 and "lr" not in r.resolved["method"]
    assert r.tuning["values"] == {"k": 8} and "mrp's tuned values" in r.tuning["note"]
    assert r.tuning["follows"] == {"method": "mrp", "status": mrp_entry["status"] if mrp_entry["values"] else tune.CLOSEST}
    mrp = Run(compose_config(f"tuned={path}", f"cache_dir={tmp_path}", "method=mrp"), tmp_path / "run", "mrp")
    assert mrp.method.k == r.method.k and mrp.method.layers == r.method.layers
    with pytest.raises(UserError, match="method.k is set on the command line"):
        Run(compose_config(f"tuned={path}", f"cache_dir={tmp_path}", "method=random_projection", "method.k=4"),
            tmp_path / "run", "random_projection", overridden=["k"])
    without = _tuned_file(tmp_path, {"ga": {"values": {"lr": 3e-4}, "status": "chosen"}})
    with pytest.raises(UserError, match="no settings for 'mrp'.*control"):
        Run(compose_config(f"tuned={without}", f"cache_dir={tmp_path}", "method=random_projection"), tmp_path / "run",
            "random_projection")
    empty = _tuned_file(tmp_path, {"mrp": {"values": None, "status": tune.NO_SETTING}})
    with pytest.raises(UserError, match="no tuned or closest value"):
        Run(compose_config(f"tuned={empty}", f"cache_dir={tmp_path}", "method=random_projection"), tmp_path / "run",
            "random_projection")
    # MRP's k holds only under the config it was tuned under: a control under another one is refused as MRP is
    other = _tuned_file(tmp_path, {"mrp": mrp_entry}, context={"continual": {"requests": 1}})
    for method in ("mrp", "random_projection"):
        with pytest.raises(UserError, match="tuned under another config"):
            Run(compose_config(f"tuned={other}", f"cache_dir={tmp_path}", f"method={method}", "continual.requests=2"),
                tmp_path / "run", method)


@pytest.mark.parametrize("case,needles", [
    ("tuning_seed", ["seed=1000", "tuning seeds [1000]"]),
    ("no_value", [tune.NO_SETTING, "widen", "tune: grid"]),
    ("no_value_in_time", [tune.NO_SETTING, "widen", "--reach-within 1", "only stops within 0.5 of the step cap"]),
    ("other_method", ["no settings for method 'ga'", "tuned=null"]),
    ("other_config", ["another config", "unlearn.max_steps", "tuned=null"]),
    ("overridden", ["method.lr is set on the command line"]),
    ("bad_reach_within", ["reach_within=-0.5", "(0, 1]"]),
])
def test_tuned_file_misuse_fails_before_compute(tmp_path, case, needles):
    methods = {"ga": {"values": {"lr": 3e-4}, "status": "chosen"}}
    overrides, overridden, context, extra = [], (), None, {}
    if case == "tuning_seed":
        overrides = ["seed=1000"]
    elif case.startswith("no_value"):
        methods = {"ga": {"values": None, "status": tune.NO_SETTING}}
        extra = {"reach_within": 0.5} if case == "no_value_in_time" else {}
    elif case == "other_method":
        methods = {"npo": methods["ga"]}
    elif case == "other_config":
        context = {"unlearn": {**compose_config().unlearn, "max_steps": 999}}
    elif case == "bad_reach_within":  # a hand-edited file
        extra = {"reach_within": -0.5}
    else:
        overridden = ("lr",)
    path = _tuned_file(tmp_path, methods, context=context, **extra)
    with pytest.raises(UserError) as info:
        Run(compose_config(f"tuned={path}", f"cache_dir={tmp_path}", *overrides), tmp_path / "run", "ga", overridden)
    for needle in needles:
        assert needle in str(info.value), str(info.value)
    if case == "no_value":  # a file that counts any stop has no later step limit to offer
        assert "--reach-within" not in str(info.value)
    assert not (tmp_path / "models").exists()


def test_trace_only_keys_do_not_void_a_tuned_file(tmp_path):
    """check_retain and trace_every shape the stop trace, not when a run stops: a file tuned under other values
    (or written before trace_every existed) still applies."""
    old_context = {"unlearn": {**{k: v for k, v in compose_config().unlearn.items() if k != "trace_every"},
                               "check_retain": 64}}
    path = _tuned_file(tmp_path, {"ga": {"values": {"lr": 3e-4}, "status": "chosen"}}, context=old_context)
    r = Run(compose_config(f"tuned={path}", f"cache_dir={tmp_path}", "unlearn.trace_every=5", "unlearn.check_retain=7"),
            tmp_path / "run", "ga")
    assert r.method.lr == 3e-4
    assert "trace_every" not in tune.context_of(r.resolved)["unlearn"]


def test_a_method_no_setting_of_which_reached_runs_its_closest_setting_marked(tmp_path):
    from bench.report import records_frame, build_table, legend

    near = {"values": {"lr": 3e-4}, "forget_mcq": 0.4, "utility": 0.3}
    path = _tuned_file(tmp_path, {"ga": {"values": None, "status": tune.NO_SETTING, "closest": near}})
    run = Run(compose_config(f"tuned={path}", f"cache_dir={tmp_path}"), tmp_path / "run", "ga", ())
    assert run.resolved["method"]["lr"] == 3e-4
    assert run.tuning["status"] == tune.CLOSEST and run.tuning["values"] == {"lr": 3e-4}
    rec = {**_rec("ga", 0, {"lr": 3e-4}), "tuning": run.tuning}
    rec["rows"].append({"stage": "target", "suite": "knowledge", "split": "forget", "metric": "mcq_acc", "value": 1.0, "n": 1})
    table = build_table(records_frame([rec]))
    assert "[closest]: no tuned setting reached the forget target on the tuning seeds, run at the closest one: ga [closest]" in legend(table)
    assert "ga [closest]" in table.means.index  # the row itself says it is not at matched forgetting


@pytest.mark.parametrize("case,needles", [
    ("overridden", ["method.lr is set on the command line"]),
    ("other_config", ["another config", "unlearn.max_steps"]),
    ("no_closest_values", [tune.NO_SETTING, "widen"]),
])
def test_a_closest_setting_is_refused_like_a_chosen_one(tmp_path, case, needles):
    near = {"values": {"lr": 3e-4}, "forget_mcq": 0.4, "utility": 0.3}
    overridden, context = (), None
    if case == "overridden":
        overridden = ("lr",)
    elif case == "other_config":
        context = {"unlearn": {**compose_config().unlearn, "max_steps": 999}}
    else:
        near = {"forget_mcq": 0.4}
    path = _tuned_file(tmp_path, {"ga": {"values": None, "status": tune.NO_SETTING, "closest": near}}, context=context)
    with pytest.raises(UserError) as info:
        Run(compose_config(f"tuned={path}", f"cache_dir={tmp_path}"), tmp_path / "run", "ga", overridden)
    for needle in needles:
        assert needle in str(info.value), str(info.value)
    assert not (tmp_path / "models").exists()


PRESETS_TUNED = "bench/assets/tuned_synthetic_tiny_3seeds_2026-12-07d.yaml"  # retuned on the 3,000-step targets (session 37)
SHIPPED = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "bench" / "assets").glob("tuned_*.yaml"))
# The step budgets a shipped file may have been tuned under apart from the presets' (its config check asks for them).
TUNED_UNDER_KEYS = (("unlearn", "max_steps"), ("model", "inject", "max_steps"))


def _tuned_under(data, preset: str) -> list[str]:
    """Overrides that restore the budgets ``data`` was tuned under where they differ from the preset's (an older file
    runs with them: e.g. unlearn.max_steps=300 for the session 24-31 files)."""
    preset_cfg = OmegaConf.to_container(compose_config(f"+experiment={preset}", micro=False))
    out = []
    for path in TUNED_UNDER_KEYS:
        want, have = data["context"], preset_cfg
        for key in path:
            want, have = want[key], have[key]
        if want != have:
            out.append(f"{'.'.join(path)}={want}")
    return out


@pytest.mark.parametrize("preset,shipped", [("paper", PRESETS_TUNED), ("compare", PRESETS_TUNED),
                                            *[("paper", f) for f in SHIPPED if f != PRESETS_TUNED]])
def test_the_presets_run_every_method_at_the_shipped_tuned_values(tmp_path, preset, shipped):
    """The shipped tuned files load (from any working directory): the re-tuned three-seed file is what the paper and
    compare (Quickstart) presets run, the older files are accepted by the paper preset with the step budgets they were
    tuned under; each method gets exactly the file's chosen (or closest) values; the file's tuning seeds are not
    reported seeds."""
    data = tune.load_tuned(shipped)
    assert set(data["seeds"]).isdisjoint(range(5))
    override = [] if shipped == PRESETS_TUNED else [f"tuned={shipped}", *_tuned_under(data, preset)]
    if shipped == PRESETS_TUNED:
        assert _tuned_under(data, preset) == []  # the presets run their file under its own config
    assert compose_config(f"+experiment={preset}", *override, micro=False).tuned == shipped
    cwd = os.getcwd()
    os.chdir(tmp_path)  # relative to the project, not to where the run is started
    try:
        for name in [p.stem for p in sorted((CONF / "method").glob("*.yaml"))]:
            entry = data["methods"].get(name)
            if entry is None:  # a method without a tune: block (a control) runs its YAML
                continue
            values = entry["values"] if entry["values"] is not None else entry["closest"]["values"]
            run = Run(compose_config(f"+experiment={preset}", *override, f"method={name}", f"cache_dir={tmp_path}",
                                     micro=False), tmp_path / "run", name)
            assert {k: run.resolved["method"][k] for k in values} == values, name
            assert run.tuning["status"] == ("chosen" if entry["values"] is not None else tune.CLOSEST), name
        # MRP's capacity control removes as many dimensions, at the same blocks, as the MRP row beside it
        mrp, control = (Run(compose_config(f"+experiment={preset}", *override, f"method={m}", f"cache_dir={tmp_path}",
                                           micro=False), tmp_path / "run", m) for m in ("mrp", "random_projection"))
        assert (control.method.k, control.method.layers) == (mrp.method.k, mrp.method.layers)
    finally:
        os.chdir(cwd)
    assert not (tmp_path / "models").exists()


def test_report_says_which_seeds_tuned_and_which_reported():
    from bench.report import records_frame, build_table, legend

    rec = _rec("ga", 0, {"lr": 3e-4})
    rec["rows"].append({"stage": "target", "suite": "knowledge", "split": "forget", "metric": "mcq_acc", "value": 1.0, "n": 1})
    tuned = {**rec, "tuning": {"file": "results/tuned.yaml", "seeds": [1000, 1001], "rule": "utility", "values": {"lr": 3e-4}}}
    note = legend(build_table(records_frame([tuned, {**tuned, "config": {**tuned["config"], "seed": 1}}])))
    assert "seeds reported: 0, 1; method settings tuned on seeds 1000, 1001 (rule utility; results/tuned.yaml)" in note
    assert "no tuned= file" in legend(build_table(records_frame([rec])))


# ---- the sweep, end to end (micro world) ------------------------------------------------------

def test_tune_sweep_selects_writes_and_a_tuned_run_loads_it(tmp_path):
    env = {**os.environ, "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    sweep, out = tmp_path / "sweep", tmp_path / "tuned.yaml"
    common = [f"cache_dir={tmp_path / 'cache'}", "threads=1"]
    sweep_args = [sys.executable, "-m", "bench.run", "-m", "+experiment=[micro,tune]", *common, "method=ga",
                  "hydra.sweeper.seeds=[1000]", f"hydra.sweeper.out={out}", f"hydra.sweep.dir={sweep}"]
    proc = subprocess.run([*sweep_args, "method.tune.lr=[1e-5,1e-2]"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(list(sweep.rglob(RECORD))) == 2
    tuned = yaml.safe_load(out.read_text())
    assert tuned["seeds"] == [1000] and tuned["rule"] == "utility"
    # On the micro world lr 1e-5 cannot reach the target in 10 steps; 1e-2 does.
    assert tuned["methods"]["ga"]["values"] == {"lr": 1e-2}, (sweep / "tune_table.md").read_text()
    assert (sweep / "tune_table.csv").exists() and (sweep / "tuned.yaml").read_text() == out.read_text()
    # Selection again from the records, under the other rule, without rerunning anything.
    assert "lr=0.01" in tune.select_dir(sweep, "lowest_lr")
    # A reported seed loads it; a tuning seed is refused before compute.
    reported = [f"tuned={out}", "suites=[knowledge]", "unlearn.stop_at=oracle"]  # the tune preset's stopping target
    r = Run(compose_config(*reported, f"cache_dir={tmp_path / 'cache'}", "seed=0"), tmp_path / "run", "ga")
    assert r.method.lr == 1e-2
    bad = subprocess.run([sys.executable, "-m", "bench.run", "+experiment=micro", *common, *reported, "seed=1000",
                          f"hydra.run.dir={tmp_path / 'run'}"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env=env)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "tuning seeds [1000]" in bad.stderr, bad.stderr
    # A grid from the command line shapes the jobs but does not name their folders, so the same sweep folder,
    # resumed over a wider grid, runs only the new point: the two finished records stay as they were.
    finished = {p: p.stat().st_mtime_ns for p in sweep.rglob(RECORD)}
    assert not [p for p in finished if "method.tune" in str(p.relative_to(sweep))], list(finished)
    wider = subprocess.run([*sweep_args, "method.tune.lr=[1e-5,1e-3,1e-2]"], cwd=ROOT, capture_output=True,
                           text=True, timeout=300, env=env)
    assert wider.returncode == 0, wider.stderr[-2000:]
    assert len(list(sweep.rglob(RECORD))) == 3
    assert {p: p.stat().st_mtime_ns for p in finished} == finished


def test_tune_settings_are_checked():
    with pytest.raises(tune.TuneError, match="did you mean 'lowest_lr'"):
        tune.check_rule("lowest")
    with pytest.raises(tune.TuneError, match="distinct integers"):
        tune.check_seeds([1000, 1000])
    with pytest.raises(tune.TuneError, match="suite/split/metric"):
        tune.parse_metric("model_utility")
    with pytest.raises(tune.TuneError, match="unlearn.stop_at=null"):
        tune.check_run_config({"unlearn": {"stop_at": None}, "suites": ["knowledge"]}, "knowledge/retain/model_utility")
    with pytest.raises(tune.TuneError, match="suites=\\[knowledge\\]"):
        tune.check_run_config({"unlearn": {"stop_at": "oracle"}, "suites": ["privacy"]}, "knowledge/retain/model_utility")


@pytest.mark.parametrize("args,needle", [
    (["method=ga", "method.tune.lr=[]"], "method.tune.lr is an empty grid"),
    (["method=ga", "seed=1,2"], "hydra.sweeper.seeds"),
    (["method=ga", "hydra.sweeper.reach_within=0"], "hydra.sweeper.reach_within=0 must be a share"),
])
def test_tune_sweep_bad_input_is_one_line_before_any_job(tmp_path, args, needle):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.run([sys.executable, "-m", "bench.run", "-m", "+experiment=[micro,tune]", *args,
                           f"cache_dir={tmp_path / 'cache'}", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-1500:]
    assert len(errors) == 1 and needle in errors[0], errors
    assert not (tmp_path / "cache").exists() and not list((tmp_path / "sweep").rglob(RECORD))


@pytest.mark.slow
def test_tune_sweep_composes_with_the_joblib_launcher(tmp_path):
    env = {**os.environ, "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    sweep = tmp_path / "sweep"
    proc = subprocess.run([sys.executable, "-m", "bench.run", "-m", "+experiment=[micro,tune]", "hydra/launcher=joblib",
                           "hydra.launcher.n_jobs=2", "method=ga,npo", "method.tune.lr=[1e-5,1e-2]",
                           "hydra.sweeper.seeds=[1000,1001]", "hydra.sweeper.out=null", "threads=1",
                           f"cache_dir={tmp_path / 'cache'}", f"hydra.sweep.dir={sweep}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(list(sweep.rglob(RECORD))) == (2 + 2 * 3) * 2  # ga: 2 lrs; npo: 2 lrs x 3 betas; 2 seeds
    tuned = yaml.safe_load((sweep / "tuned.yaml").read_text())
    assert set(tuned["methods"]) == {"ga", "npo"} and tuned["seeds"] == [1000, 1001]


def test_ssiuu_is_searched_over_graddiffs_grid_times_its_penalty_weight():
    """Ssiuu is GradDiff plus a penalty: its tune grid holds GradDiff's whole grid (lr x alpha) times lam, so the
    tuned Ssiuu - GradDiff compares each at its best over the same base settings (not Ssiuu at alpha 1 against a
    GradDiff tuned to alpha 3)."""
    ssiuu = yaml.safe_load((CONF / "method" / "ssiuu.yaml").read_text())
    graddiff = yaml.safe_load((CONF / "method" / "graddiff.yaml").read_text())
    assert ssiuu["base"] == "graddiff"
    for key, grid in graddiff["tune"].items():
        assert ssiuu["tune"][key] == grid, key
    assert set(ssiuu["tune"]) - set(graddiff["tune"]) == {"lam"}
