"""The suite contract (bench/suites/__init__.py): typed settings validated before compute by one
parser, check(settings, bench), evaluate -> SuiteOutput, and the references the stage cache keeps."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from bench import suites
from bench.errors import UserError
from bench.settings import SettingsError, bounded, parse_settings
from bench.suites import Row, SuiteContext, SuiteOutput, evaluate_suites, validate_settings
from tests.conftest import CONF, compose_config


def test_every_suite_exports_the_contract():
    for name in suites.available_suites():
        mod = suites.suite_module(name)
        assert dataclasses.is_dataclass(mod.Settings) and mod.Settings.__dataclass_params__.frozen, name
        mod.Settings()  # every field has a default
        assert callable(mod.check) and callable(mod.evaluate), name


def test_config_lists_every_key_without_repeating_defaults(micro_bench):
    """conf/config.yaml names each suite's keys (plain overrides work) but leaves the values to the
    dataclasses: null, except the run-level interpolations."""
    block = yaml.safe_load((CONF / "config.yaml").read_text())["suite_settings"]
    assert set(block) == set(suites.available_suites())
    for name, keys in block.items():
        fields = {f.name for f in dataclasses.fields(suites.suite_module(name).Settings)}
        assert set(keys) == fields, name
        interpolated = {"relearn": {"attacks", "seed"}, "in_context": {"seed"}}.get(name, set())
        assert {k for k, v in keys.items() if v is not None} == interpolated, name
    cfg = compose_config("suite_settings.diagnostics.top_m=[10]", "seed=3")
    from omegaconf import OmegaConf

    raw = OmegaConf.to_container(cfg.suite_settings, resolve=True)
    s = validate_settings(["knowledge", "diagnostics"], raw, micro_bench)
    assert s["diagnostics"].top_m == (10,) and s["diagnostics"].objectives == ("prob",)
    assert s["knowledge"].batch_size == 64 and s["relearn"].seed == 3 and s["relearn"].stages == ("unlearned",)


@pytest.mark.parametrize("raw, needle", [
    ({"knowledge": {"batch_size": 0}}, r"suite_settings\.knowledge\.batch_size must be >= 1.*batch_size=64"),
    ({"knowledge": {"batchsize": 8}}, r"unknown config key 'suite_settings\.knowledge\.batchsize': did you mean 'batch_size'\?"),
    ({"knowlege": {"batch_size": 8}}, r"unknown suite 'suite_settings\.knowlege': did you mean 'knowledge'\?"),
    ({"diagnostics": {"objectives": ["nonsense"]}}, r"suite_settings\.diagnostics\.objectives must be a list of 'prob'"),
    ({"diagnostics": {"objectives": ["logprb"]}}, r"did you mean 'logprob'"),
    ({"diagnostics": {"top_m": [100, 0]}}, r"suite_settings\.diagnostics\.top_m must be >= 1"),
    ({"diagnostics": {"top_m": [10, 10]}}, r"suite_settings\.diagnostics\.top_m lists a value twice"),
    ({"diagnostics": {"lens_splits": ["forgot"]}}, r"lens_splits values must be among .*did you mean 'forget'\?"),
    ({"privacy": {"min_k": 0}}, r"suite_settings\.privacy\.min_k must be > 0"),
    ({"privacy": {"min_k": "0.4"}}, r"suite_settings\.privacy\.min_k must be a number"),
    ({"relearn": {"batch_size": True}}, r"suite_settings\.relearn\.batch_size must be an integer"),
    ({"relearn": {"stages": ["oracle"]}}, r"suite_settings\.relearn\.stages must name stages other than 'oracle'"),
    ({"utility": {"bos": "lm-eval"}}, r"suite_settings\.utility\.bos must be .*did you mean 'lm_eval'\?"),
    ({"knowledge": [1]}, r"suite_settings\.knowledge must be a mapping"),
])
def test_bad_settings_fail_at_validation_naming_key_and_fix(raw, needle, micro_bench):
    with pytest.raises(UserError, match=needle) as info:
        validate_settings(["knowledge", "relearn"], raw, micro_bench)
    assert "\n" not in str(info.value)


def test_unknown_suite_in_suites_list(micro_bench):
    with pytest.raises(UserError, match=r"unknown suite 'privcy'; did you mean 'privacy'\? available suites"):
        validate_settings(["privcy"], {}, micro_bench)


def test_benchmark_checks_run_only_for_selected_suites(micro_bench):
    bare = dataclasses.replace(micro_bench, items=[it for it in micro_bench.items if it.split != "holdout"])
    validate_settings(["knowledge"], {"privacy": {"min_k": 0.2}}, bare)  # privacy not selected: parsed, not checked
    with pytest.raises(UserError, match="holdout"):
        validate_settings(["knowledge", "privacy"], {}, bare)


def test_run_fails_before_compute_on_bad_suite_settings(tmp_path):
    from bench.run import run

    for override in ("suite_settings.knowledge.batch_size=0", "suite_settings.diagnostics.objectives=[nonsense]",
                     "suite_settings.diagnostics.top_m=[0]"):
        cfg = compose_config(override, "suites=[knowledge,diagnostics]", f"cache_dir={tmp_path / 'cache'}")
        with pytest.raises(SettingsError):
            run(cfg, tmp_path / "run", "ga")
        assert not (tmp_path / "cache").exists(), override


def test_parser_types_and_defaults():
    @dataclasses.dataclass(frozen=True)
    class S:
        n: int = bounded(3, ge=1)
        xs: tuple[float, ...] = bounded((0.5,), gt=0, lt=1)
        maybe: int | None = None

    assert parse_settings(S, None, "x") == S()
    assert parse_settings(S, {"n": None, "xs": [0.25, 1e-3]}, "x") == S(3, (0.25, 1e-3))  # null = the default
    assert parse_settings(S, {"xs": 0.5, "maybe": 2}, "x") == S(3, (0.5,), 2)  # one value for a list
    with pytest.raises(SettingsError, match=r"x\.xs must be < 1 \(each value\); got 1"):
        parse_settings(S, {"xs": [0.5, 1]}, "x")


def test_context_parses_raw_settings_and_gives_defaults(micro_bench):
    ctx = SuiteContext(bench=micro_bench, tokenizer=None, oracle=None, settings={"knowledge": {"batch_size": 8}})
    assert ctx.settings_of("knowledge").batch_size == 8
    assert ctx.settings_of("privacy").min_k == 0.4
    with pytest.raises(UserError, match="knowledge.batch_size"):
        SuiteContext(bench=micro_bench, tokenizer=None, oracle=None, settings={"knowledge": {"batch_size": -1}})


def test_references_captured_per_stage_and_restored(micro_bench):
    ctx = SuiteContext(bench=micro_bench, tokenizer=None, oracle=None)
    ctx.reference("before", lambda: 1)
    with ctx.capture_references() as captured:
        assert ctx.reference("a", lambda: 2) == 2
        assert ctx.reference("before", lambda: 99) == 1  # already there: not part of this stage
    assert captured == {"a": 2}
    fresh = SuiteContext(bench=micro_bench, tokenizer=None, oracle=None)
    fresh.restore_references(captured)
    assert fresh.reference("a", lambda: 3) == 2


def test_evaluate_suites_concatenates_in_order(monkeypatch, micro_bench):
    ctx = SuiteContext(bench=micro_bench, tokenizer=None, oracle=None)

    def fake(name):
        return SuiteOutput([Row("s", name, "forget", "m", 1.0, 1)], [{"suite": name}])

    monkeypatch.setattr(suites.suite_module("knowledge"), "evaluate", lambda model, stage, c: fake("knowledge"))
    monkeypatch.setattr(suites.suite_module("privacy"), "evaluate", lambda model, stage, c: fake("privacy"))
    out = evaluate_suites(["privacy", "knowledge"], None, "s", ctx)
    assert [r.suite for r in out.rows] == ["privacy", "knowledge"] and out.examples == [{"suite": "privacy"}, {"suite": "knowledge"}]
    monkeypatch.setattr(suites.suite_module("privacy"), "evaluate", lambda model, stage, c: [])
    with pytest.raises(TypeError, match="SuiteOutput"):
        evaluate_suites(["privacy"], None, "s", ctx)
