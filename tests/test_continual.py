"""Continual run mode (bench/run.py, bench/continual.py) on the micro config."""

import pytest

from bench.continual import split_requests
from bench.run import ConfigError, run
from tests.conftest import compose_config


def test_split_requests_by_person(micro_bench):
    reqs = split_requests(micro_bench, 2)
    groups = [{it.group for it in r} for r in reqs]
    assert len(reqs) == 2 and all(len(g) == 1 for g in groups) and not groups[0] & groups[1]
    assert sum(len(r) for r in reqs) == len(micro_bench.split("forget"))
    with pytest.raises(ValueError):
        split_requests(micro_bench, 3)


@pytest.mark.parametrize("method", ["mrp", "ga"])
def test_micro_continual_run_writes_request_rows(tmp_path_factory, method):
    cache = tmp_path_factory.getbasetemp() / "continual-cache"
    out = tmp_path_factory.mktemp(method)
    extra = ["method.k=2"] if method == "mrp" else []  # micro d=32: keep the projector rank small
    record = run(compose_config(f"cache_dir={cache}", f"method={method}", "continual.requests=2", "unlearn.max_steps=4",
                                "threads=1", *extra), out, method)
    assert record["status"] == "complete" and len(record["unlearn"]["requests"]) == 2
    rows = {(r["stage"], r["suite"], r["split"], r["metric"]) for r in record["rows"]}
    for i in (1, 2):
        stage = f"request/{i}"
        assert (stage, "unlearn", "forget", "steps") in rows
        assert (stage, "knowledge", "retain", "em") in rows and (stage, "knowledge", "general", "em") in rows
        for j in range(1, i + 1):
            assert (stage, "continual", "forget", f"mcq_acc@request{j}") in rows
        assert (stage, "continual", "forget", f"mcq_acc@request{i + 1}") not in rows
        assert (stage, "continual", "forget", "mcq_acc@seen") in rows
    assert ("unlearned", "knowledge", "forget", "em") in rows
    steps = {r["stage"]: r["value"] for r in record["rows"] if r["metric"] == "steps"}
    assert steps["unlearned"] == steps["request/1"] + steps["request/2"]


def test_single_request_has_no_request_stages_and_bad_counts_fail(tmp_path_factory):
    cache = tmp_path_factory.getbasetemp() / "continual-cache"
    record = run(compose_config(f"cache_dir={cache}", "unlearn.max_steps=2", "threads=1"), tmp_path_factory.mktemp("one"), "ga")
    assert not any(r["stage"].startswith("request/") for r in record["rows"]) and "requests" not in record["unlearn"]
    for bad in ("continual.requests=3", "continual.requests=0"):
        with pytest.raises(ConfigError, match="continual.requests"):
            run(compose_config(f"cache_dir={cache}", bad), tmp_path_factory.mktemp("bad"), "ga")
