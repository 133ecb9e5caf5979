"""Failure paths that lose nothing and never pass a broken model (issue 15).

A NaN model is diverged, never unlearned; the model cache keys on the token ids the model saw;
killed runs' temporaries are removed by the next run; records are strict JSON; a file that is
not a record is a one-line user error naming it.
"""

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from bench import disk_cache
from bench.benchmark import Benchmark
from bench.disk_cache import host_name
from bench.errors import UserError
from bench.models import obtain_model
from bench.record import RECORD, RecordError, config_hash, read_record, write_record
from bench.run import run
from bench.suites.utility import write_local_tasks
from bench.train import Diverged, TrainConfig, nonfinite_weights, train_loop
from tests.conftest import compose_config
from tests.test_cache import SPEC

# -- a broken model is diverged, never unlearned ------------------------------------------------


def _poisoning_loop(check, check_every=2, steps=6, poison_at=2):
    """A linear model whose weights turn NaN in update ``poison_at`` (finite loss before every update)."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    x = torch.ones(4, 3)
    state = {"step": 0}

    def loss_fn(_):
        state["step"] += 1
        return model(x).pow(2).mean()

    def after_backward(_):
        if state["step"] == poison_at:
            for p in model.parameters():
                p.grad.fill_(float("nan"))

    cfg = TrainConfig(lr=1e-2, max_steps=steps, batch_size=1, check_every=check_every, grad_clip=None)
    return model, train_loop(model, loss_fn, iter(range(100)), cfg, check=check, after_backward=after_backward)


def test_nan_weights_on_a_check_step_are_divergence_and_the_check_is_not_consulted():
    seen = []
    model, res = _poisoning_loop(lambda step: seen.append(step) or False)
    assert res.diverged and not res.stopped_by_check
    assert res.steps == 2 and seen == [0]  # the check never scored the NaN model
    assert nonfinite_weights(model.parameters())


def test_nan_weights_without_a_check_are_caught_at_the_end():
    _, res = _poisoning_loop(None, check_every=0, steps=3, poison_at=3)
    assert res.diverged and res.steps == 3


def test_nonfinite_outputs_during_a_check_are_divergence():
    model = torch.nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.fill_(3e38)  # finite weights, inf outputs
    cfg = TrainConfig(lr=1e-30, max_steps=4, batch_size=1, check_every=2)
    res = train_loop(model, lambda _: model.bias.sum() * 0, iter(range(10)), cfg,
                     params=[model.bias], check=lambda step: model(torch.ones(1, 2)).sum() < -1)
    assert res.diverged and res.steps == 0 and not res.stopped_by_check

    def explicit(step):
        if step == 2:
            raise Diverged("scores are NaN")
        return False

    torch.nn.init.zeros_(model.weight)
    res = train_loop(model, lambda _: model.bias.sum() * 0, iter(range(10)), cfg, check=explicit)
    assert res.diverged and res.steps == 2


def test_nonfinite_weights_check():
    assert not nonfinite_weights([torch.full((3,), 1e30)])  # the norm overflows; the weights are finite
    assert nonfinite_weights([torch.zeros(2), torch.tensor([1.0, float("inf")])])
    assert not nonfinite_weights([])


def test_a_run_whose_weights_turn_nan_on_a_check_step_is_diverged_not_complete(tmp_path):
    # lr=1e30: the loss before the 2nd update is finite, the weights after it are not, and step 2 is a
    # check step (micro: check_every=2). Scoring that model gave forced-choice mcq 0 -> "reached".
    cfg = compose_config(f"cache_dir={tmp_path / 'cache'}", "method=ga", "method.lr=1e30", "suites=[knowledge,privacy]")
    record = run(cfg, tmp_path / "run", "ga")
    assert record["status"] == "diverged" and record["unlearn"]["diverged"]
    assert record["unlearn"]["reached_target"] is False
    assert [t["step"] for t in record["unlearn"]["stop_trace"]] == [0]
    stages = {r["stage"] for r in record["rows"] if r["suite"] != "unlearn"}
    assert stages == {"target", "oracle"}  # the unlearned stage is not evaluated
    on_disk = json.loads((tmp_path / "run" / RECORD).read_text(), parse_constant=pytest.fail)
    assert on_disk["status"] == "diverged"

    # The sweep goes on: a healthy run beside it, and the table is written with the diverged run marked.
    from bench.report import report

    run(compose_config(f"cache_dir={tmp_path / 'cache'}", "method=ga", "suites=[knowledge,privacy]"), tmp_path / "ok", "ga")
    report([tmp_path / "run", tmp_path / "ok"], tmp_path / "tables")
    table = (tmp_path / "tables" / "table.md").read_text()
    assert "‡" in table and "diverged" in table


# -- the model cache keys on what the model saw --------------------------------------------------


def test_prompt_formatting_change_retrains_unchanged_reuses(tmp_path, micro_bench, tokenizer, monkeypatch):
    spec = {**SPEC, "inject": {**SPEC["inject"], "max_steps": 2}}
    _, first = obtain_model("oracle", spec, micro_bench, tokenizer, tmp_path, seed=0)
    _, again = obtain_model("oracle", spec, micro_bench, tokenizer, tmp_path, seed=0)
    assert not first["reused"] and again["reused"] and again["key"] == first["key"]

    original = Benchmark.prompt
    monkeypatch.setattr(Benchmark, "prompt", lambda self, q: original(self, q) + ":")  # a code edit, same template
    _, edited = obtain_model("oracle", spec, micro_bench, tokenizer, tmp_path, seed=0)
    assert not edited["reused"] and edited["key"] != first["key"]


# -- no orphans ----------------------------------------------------------------------------------


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_killed_runs_temporaries_are_removed_by_the_next_write(tmp_path, micro_bench, tokenizer):
    # Model cache: under the lock any temporary of the key is an orphan.
    spec = {**SPEC, "inject": {**SPEC["inject"], "max_steps": 0}}
    _, info = obtain_model("oracle", spec, micro_bench, tokenizer, tmp_path, seed=0)
    final = tmp_path / "models" / f"oracle-{info['key']}"
    import shutil

    shutil.rmtree(final)
    orphan = tmp_path / "models" / f".tmp-oracle-{info['key']}-{_dead_pid()}"
    (orphan / "model").mkdir(parents=True)
    other = tmp_path / "models" / ".tmp-oracle-someotherkey-1"
    other.mkdir()
    _, again = obtain_model("oracle", spec, micro_bench, tokenizer, tmp_path, seed=0)
    assert not again["reused"] and not orphan.exists() and other.exists()
    assert (final / "meta.json").exists()

    # Pickled values and directories built by the helper.
    path = tmp_path / "stages" / "x.pkl"
    path.parent.mkdir()
    (path.parent / f".tmp-x.pkl-{os.getpid() + 1}").write_bytes(b"half")
    assert disk_cache.pickled(path, lambda: 7) == (7, False)
    assert not list(path.parent.glob(".tmp-*"))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    folder = write_local_tasks(micro_bench, tasks)
    shutil.rmtree(folder)
    (tasks / f".tmp-{folder.name}-123").mkdir()
    assert write_local_tasks(micro_bench, tasks) == folder and (folder / "done").exists()
    assert not list(tasks.glob(".tmp-*"))

    # Record temporaries: named with host and pid; a dead writer's are removed, a live one's kept.
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    dead = run_dir / f".{RECORD}.{host_name()}.{_dead_pid()}.abcdefgh.tmp"
    live = run_dir / f".{RECORD}.{host_name()}.{os.getppid()}.abcdefgh.tmp"
    elsewhere = run_dir / f".examples.jsonl.otherhost.{_dead_pid()}.abcdefgh.tmp"
    for p in (dead, live, elsewhere):
        p.write_text("{")
    write_record(run_dir, {"config": {}, "config_hash": "h", "code_version": "v", "rows": []}, [])
    assert not dead.exists() and live.exists() and elsewhere.exists()
    assert sorted(p.name for p in run_dir.glob(".*.tmp")) == sorted([live.name, elsewhere.name])


# -- records are strict JSON; a file that is not a record is a user error ----------------------------


def test_nonfinite_numbers_are_written_as_null_and_read_back_as_nan(tmp_path):
    record = {"status": "diverged", "config": {"stop_at": None}, "config_hash": "h", "code_version": "v",
              "unlearn": {"final_loss": float("nan"), "losses": [1.0, float("-inf")]},
              "rows": [{"stage": "target", "metric": "mia_auc", "value": float("nan")},
                       {"stage": "target", "metric": "em", "value": 0.5}]}
    write_record(tmp_path, record, [{"id": "a", "score": float("inf")}])
    text = (tmp_path / RECORD).read_text()
    strict = json.loads(text, parse_constant=pytest.fail)  # no bare NaN/Infinity in the file
    assert strict["rows"][0]["value"] is None and strict["unlearn"]["losses"] == [1.0, None]
    assert json.loads((tmp_path / "examples.jsonl").read_text(), parse_constant=pytest.fail)["score"] is None
    back = read_record(tmp_path)
    assert math.isnan(back["rows"][0]["value"]) and back["rows"][1]["value"] == 0.5
    assert math.isnan(back["unlearn"]["final_loss"]) and math.isnan(back["unlearn"]["losses"][1])
    assert back["config"]["stop_at"] is None  # config nulls stay null


def test_config_hash_is_unchanged():
    # The value the sha256-of-sorted-JSON formula gave before it moved to bench.disk_cache.digest.
    assert config_hash({"b": 1, "a": [1.5, None]}) == "ad3879169fd83895"


@pytest.mark.parametrize("text, needle", [("", "Expecting value"), ("[1, 2]", "list"),
                                          ('{"rows": []}', "missing keys"), ("{\"config\": {}, \"config_hash\": 1, "
                                                                            "\"code_version\": 1, \"rows\": 3}", "rows")])
def test_a_corrupt_or_foreign_record_is_a_user_error_naming_the_file(tmp_path, text, needle):
    (tmp_path / RECORD).write_text(text)
    with pytest.raises(RecordError) as err:
        read_record(tmp_path)
    message = str(err.value)
    assert isinstance(err.value, UserError) and "\n" not in message
    assert str(tmp_path / RECORD) in message and needle in message and "delete it, then rerun" in message


def test_run_refuses_a_corrupt_record_and_leaves_it_in_place(tmp_path):
    (tmp_path / RECORD).write_text("{not json")
    with pytest.raises(RecordError):
        run(compose_config(f"cache_dir={tmp_path / 'cache'}"), tmp_path, "ga")
    assert (tmp_path / RECORD).read_text() == "{not json" and not (tmp_path / "superseded").exists()


def test_editing_evaluation_code_keeps_the_cache_key_but_the_loss_changes_it(monkeypatch):
    # The key covers the code that shapes a model (batching, loss, loop, construction), not whole files.
    import inspect

    from bench import models, scoring

    models._source_digest.cache_clear()
    before = models._source_digest()
    real = inspect.getsource

    def edited(obj):
        text = real(obj)
        return text + "\n# edited" if obj is scoring.mean_nll else text

    monkeypatch.setattr(inspect, "getsource", edited)
    models._source_digest.cache_clear()
    assert models._source_digest() != before  # the training loss changed: retrain
    monkeypatch.setattr(inspect, "getsource", real)
    models._source_digest.cache_clear()
    assert models._source_digest() == before
    assert scoring.AnswerScores not in models._shaping_code()  # evaluation-only code is not keyed
