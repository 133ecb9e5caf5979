"""Target/oracle cache: reused when nothing changed, retrained when anything that shapes it did."""

import torch

from bench.models import obtain_model
from bench.world import synthetic_world
from tests.conftest import MICRO_ARCH

SPEC = {"arch": MICRO_ARCH, "dtype": "float32", "device": "cpu",
        "inject": {"lr": 1e-2, "max_steps": 8, "batch_size": 8, "warmup_steps": 2, "check_every": 0}}


def _same_weights(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_cache_reuse_and_invalidation(tmp_path, micro_bench, tokenizer):
    m1, info1 = obtain_model("oracle", SPEC, micro_bench, tokenizer, tmp_path, seed=0)
    m2, info2 = obtain_model("oracle", SPEC, micro_bench, tokenizer, tmp_path, seed=0)
    assert not info1["reused"] and info2["reused"]
    assert info1["key"] == info2["key"]
    assert _same_weights(m1, m2)

    changed_lr = {**SPEC, "inject": {**SPEC["inject"], "lr": 5e-3}}
    _, info3 = obtain_model("oracle", changed_lr, micro_bench, tokenizer, tmp_path, seed=0)
    assert not info3["reused"] and info3["key"] != info1["key"]

    other_world = synthetic_world(seed=1, n_people=10, forget_fraction=0.2, holdout_fraction=0.2, n_relations=3,
                                  n_general_facts=4, n_general_text=4, n_heldout_text=2)
    _, info4 = obtain_model("oracle", SPEC, other_world, tokenizer, tmp_path, seed=0)
    assert not info4["reused"]

    _, info5 = obtain_model("oracle", SPEC, micro_bench, tokenizer, tmp_path, seed=1)
    assert not info5["reused"]

    _, info6 = obtain_model("target", SPEC, micro_bench, tokenizer, tmp_path, seed=0)
    assert not info6["reused"] and info6["key"] != info1["key"]

    # Nothing half-written is left behind.
    assert not list((tmp_path / "models").glob(".tmp-*"))


def test_code_version_covers_sources_but_not_tuned_files(tmp_path):
    """A shipped tuned file is data (a tuned run's identity holds its digest): it must not count as a code change
    that makes every record and cached stage stale; a source or a data file the harness reads does count."""
    from bench.record import source_files

    for rel in ("bench/run.py", "bench/assets/world_facts.json", "bench/assets/idk_answers.txt",
                "bench/assets/tuned_world_2026.yaml", "bench/assets/old/tuned_x.yaml", "bench/suites/conf.yaml",
                "methods/ga.py", "methods/notes.md", "conf/config.yaml"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x")
    counted = {p.relative_to(tmp_path).as_posix() for p in source_files(tmp_path)}
    assert counted == {"bench/run.py", "bench/assets/world_facts.json", "bench/assets/idk_answers.txt",
                       "bench/assets/old/tuned_x.yaml", "bench/suites/conf.yaml", "methods/ga.py"}
