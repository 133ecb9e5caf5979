"""Bad input fails with a clear message before any training."""

import json
import subprocess
import sys

import pytest
from hydra.errors import ConfigCompositionException

from bench.benchmark import Benchmark, BenchmarkError
from bench.errors import ConfigError
from bench.run import StopRule, instantiate_method, resolve, run
from bench.run_config import RunConfig
from bench.world import synthetic_world
from tests.conftest import ROOT, compose_config


def test_unknown_method_lists_available_ones():
    proc = subprocess.run([sys.executable, "-m", "bench.run", "method=nosuch", "hydra.run.dir=/tmp/unused"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    err = proc.stderr + proc.stdout
    assert "nosuch" in err
    for name in ("ga", "graddiff", "npo"):
        assert name in err


def test_unknown_method_in_compose():
    with pytest.raises(ConfigCompositionException, match="Available options"):
        compose_config("method=nosuch")


def test_negative_learning_rate_rejected():
    with pytest.raises(Exception, match="lr must be positive"):
        instantiate_method(compose_config("method.lr=-1e-4"))


@pytest.mark.parametrize("fraction,needle", [(0.0, "nothing to forget"), (1.0, "nothing to retain")])
def test_forget_fraction_bounds(fraction, needle):
    with pytest.raises(ValueError, match=needle):
        synthetic_world(forget_fraction=fraction)


def test_run_fails_before_training_on_bad_input(tmp_path):
    # Each bad setting must raise before a model is trained: the cache stays empty.
    for override in ("benchmark.forget_fraction=0", "method.lr=-1", "suites=[knowledge,nosuch]", "unlearn.stop_at=2",
                     "unlearn.max_steps=0"):
        cfg = compose_config(override, f"cache_dir={tmp_path / 'cache'}")
        with pytest.raises(Exception) as info:
            run(cfg, tmp_path / "run", "ga")
        assert info.type.__name__ != "RuntimeError", override
        assert not (tmp_path / "cache").exists(), override
        assert not (tmp_path / "run" / "record.json").exists()


def test_unknown_suite_message_lists_suites(tmp_path):
    cfg = compose_config("suites=[nosuch]", f"cache_dir={tmp_path}")
    with pytest.raises(ValueError, match=r"available suites: \[.*'knowledge', .*'privacy'"):
        run(cfg, tmp_path / "run", "ga")


def _stop(*overrides: str) -> StopRule:
    bench = synthetic_world(n_people=10, forget_fraction=0.2)
    return StopRule.from_settings(RunConfig.parse(resolve(compose_config(*overrides))).unlearn, bench)


def test_stop_target():
    assert _stop().target_for(None) == pytest.approx(0.25 + 0.05)
    assert _stop("unlearn.stop_at=null").target_for(None) is None
    assert _stop("unlearn.stop_at=0.4").target_for(None) == 0.4
    assert _stop("unlearn.stop_at=chance").target_for(None) == 0.25
    assert _stop("unlearn.stop_at=oracle").target_for(0.375) == pytest.approx(0.375 + 0.05)
    assert _stop("unlearn.stop_at=oracle", "unlearn.stop_margin=0").target_for(0.375) == 0.375
    with pytest.raises(ConfigError, match="unlearn.stop_at"):
        _stop("unlearn.stop_at=often")
    with pytest.raises(ConfigError, match="check_every"):
        _stop("unlearn.check_every=0")


def test_benchmark_file_that_does_not_parse(tmp_path):
    bad = tmp_path / "world.json"
    bad.write_text('{"items": [ {"id": "a",, } ]')
    with pytest.raises(BenchmarkError, match=r"world.json is not valid JSON \(line 1"):
        Benchmark.from_json(bad)


def test_benchmark_file_roundtrip_and_missing_field(tmp_path, micro_bench):
    path = tmp_path / "world.json"
    micro_bench.to_json(path)
    again = Benchmark.from_json(path)
    assert again.items == micro_bench.items
    data = json.loads(path.read_text())
    del data["items"][3]["answer"]
    path.write_text(json.dumps(data))
    with pytest.raises(BenchmarkError, match=r"items\[3\].*missing required field\(s\) \['answer'\]"):
        Benchmark.from_json(path)


def test_benchmark_file_through_config(tmp_path, micro_bench):
    path = tmp_path / "world.json"
    path.write_text("not json")
    cfg = compose_config("benchmark=file", f"benchmark.path={path}", f"cache_dir={tmp_path / 'cache'}", micro=False)
    with pytest.raises(Exception, match="not valid JSON"):
        run(cfg, tmp_path / "run", "ga")
    assert not (tmp_path / "cache").exists()


def test_overlapping_splits_rejected(tmp_path, micro_bench):
    path = tmp_path / "world.json"
    micro_bench.to_json(path)
    data = json.loads(path.read_text())
    person = next(it for it in data["items"] if it["split"] == "forget")["group"]
    retain_item = next(it for it in data["items"] if it["split"] == "retain")
    retain_item["group"] = person
    path.write_text(json.dumps(data))
    with pytest.raises(BenchmarkError, match="splits overlap"):
        Benchmark.from_json(path)


def test_string_where_list_expected_rejected(tmp_path, micro_bench):
    path = tmp_path / "world.json"
    micro_bench.to_json(path)
    data = json.loads(path.read_text())
    data["items"][0]["options"] = "abc"
    path.write_text(json.dumps(data))
    with pytest.raises(BenchmarkError, match="options"):
        Benchmark.from_json(path)


def test_mrp_rank_beyond_the_model_width_fails_before_compute(tmp_path):
    # Micro model: d = 32; 2 requests x k = 16 directions would project out the whole residual stream.
    cfg = compose_config("method=mrp", "method.k=16", "continual.requests=2", f"cache_dir={tmp_path / 'cache'}")
    with pytest.raises(ValueError, match=r"method.k <= 15"):
        run(cfg, tmp_path / "run", "mrp")
    assert not (tmp_path / "cache").exists()
