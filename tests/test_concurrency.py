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


def test_directory_without_waiting_skips_a_folder_another_process_builds(tmp_path):
    from filelock import FileLock

    from bench import disk_cache

    folder = tmp_path / "models" / "target-abc"
    folder.parent.mkdir(parents=True)
    built = []
    with FileLock(str(folder.parent / "target-abc.lock")):  # another process building it
        assert disk_cache.directory(folder, built.append, wait=False) is None
    assert built == [] and not folder.exists()
    assert disk_cache.directory(folder, built.append, wait=False) == (folder, False)
    assert disk_cache.directory(folder, built.append, wait=False) == (folder, True) and len(built) == 1


def test_a_model_in_training_elsewhere_is_obtained_last(tmp_path, micro_bench, tokenizer, monkeypatch):
    from bench import models

    def obtain(busy):
        calls = []

        def fake(role, *args, wait=True):
            calls.append((role, wait))
            return None if role in busy and not wait else (role, {})
        monkeypatch.setattr(models, "obtain_model", fake)
        got = models.obtain_models(SPEC, micro_bench, tokenizer, tmp_path, seed=0)
        assert got == {"target": ("target", {}), "oracle": ("oracle", {})}
        return calls

    assert obtain(set()) == [("target", False), ("oracle", True)]
    assert obtain({"target"}) == [("target", False), ("oracle", False), ("target", True)]
    assert obtain({"target", "oracle"}) == [("target", False), ("oracle", False), ("target", True), ("oracle", True)]
