"""Two processes that need the same model train it once; the other waits and reuses it."""

import json
import multiprocessing as mp

from tests.test_cache import SPEC


def _obtain(cache_dir, queue):
    import torch

    torch.set_num_threads(1)
    from bench.models import obtain_model
    from bench.tokenizer import load_tokenizer
    from bench.world import synthetic_world

    bench = synthetic_world(seed=0, n_people=10, forget_fraction=0.2, holdout_fraction=0.2, n_relations=3,
                            n_general_facts=4, n_general_text=4, n_heldout_text=2)
    _, info = obtain_model("target", SPEC, bench, load_tokenizer(), cache_dir, seed=0)
    queue.put(json.dumps({"reused": info["reused"], "key": info["key"]}))


def test_concurrent_runs_train_a_model_once(tmp_path):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_obtain, args=(str(tmp_path), queue)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
        assert p.exitcode == 0
    results = [json.loads(queue.get(timeout=5)) for _ in procs]
    assert sorted(r["reused"] for r in results) == [False, True]
    assert results[0]["key"] == results[1]["key"]
    assert len(list((tmp_path / "models").glob("target-*/meta.json"))) == 1


def test_being_built_sees_another_holder_of_the_lock(tmp_path):
    from filelock import FileLock

    from bench import disk_cache

    folder = tmp_path / "models" / "target-abc"
    assert not disk_cache.being_built(folder)  # no lock file yet
    folder.parent.mkdir(parents=True)
    holder = FileLock(str(folder.parent / "target-abc.lock"))
    with holder:
        assert disk_cache.being_built(folder)
    assert not disk_cache.being_built(folder)


def test_a_model_in_training_elsewhere_is_obtained_second(tmp_path, micro_bench, tokenizer, monkeypatch):
    from bench import disk_cache, models

    order = []
    monkeypatch.setattr(models, "obtain_model", lambda role, *a, **k: order.append(role) or (None, {"role": role}))
    monkeypatch.setattr(disk_cache, "being_built", lambda path: path.name.startswith("target-"))
    got = models.obtain_models(SPEC, micro_bench, tokenizer, tmp_path, seed=0)
    assert order == ["oracle", "target"] and set(got) == {"target", "oracle"}
    order.clear()
    monkeypatch.setattr(disk_cache, "being_built", lambda path: False)
    models.obtain_models(SPEC, micro_bench, tokenizer, tmp_path, seed=0)
    assert order == ["target", "oracle"]
