"""Bad inputs a new user types: one clear line naming the key and the fix, before any compute,
with nothing on disk moved. In-process for the checks themselves; a few CLI runs for the error
path (exit status 2, one line, no traceback)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from bench.errors import UserError
from bench.record import RECORD
from bench.run import run
from tests.conftest import ROOT, compose_config

OTHER_RECORD = {"config_hash": "other", "code_version": "other", "config": {}, "rows": []}  # a finished run of another config

# (override(s), words the message must contain: the key and the fix or the options)
BAD = [
    (["+metod=npo"], ["'metod'", "did you mean 'method'"]),
    (["+unlearn.max_step=10"], ["unlearn.max_step", "did you mean 'max_steps'"]),
    (["suite_settings.knowledge.batch_size=0"], ["suite_settings.knowledge.batch_size", ">= 1"]),
    (["suite_settings.diagnostics.objectives=[nonsense]"], ["suite_settings.diagnostics.objectives", "'prob'"]),
    (["+suite_settings.knowlege.batch_size=2"], ["knowlege", "did you mean 'knowledge'"]),
    (["+suite_settings.relearn.batchsize=2"], ["suite_settings.relearn.batchsize", "did you mean 'batch_size'"]),
    (["+suite_settingz.knowledge.batch_size=2"], ["suite_settingz", "did you mean 'suite_settings'"]),
    (["seed=abc"], ["seed", "integer"]),
    (["threads=auto"], ["threads", "integer or null"]),
    (["threads=0"], ["threads", ">= 1"]),
    (["method.lr=abc"], ["method.lr", "number"]),
    (["method.lr=-1"], ["lr must be positive"]),
    (["+method.alpah=1", "method=graddiff"], ["method.alpah", "did you mean 'alpha'"]),
    (["method=npo", "method.beta=0"], ["beta must be positive"]),
    (["method=mrp", "method.k=40"], ["method.k <="]),
    (["method=mrp", "method.layers=[5]"], ["method.layers=[5]", "0..0"]),
    (["method=mrp", "method.rank_budget=0.01"], ["method.rank_budget=0.01", "raise method.rank_budget"]),
    (["method=mrp", "method.rank_budget=1.5"], ["rank_budget", "(0, 1)"]),
    (["method=random_projection", "method.k=40"], ["method.k <="]),
    (["method=ssiuu", "method.penalty_grad=hessian"], ["method.penalty_grad", "'exact'"]),
    (["method=ssiuu", "method.attribution_set=all"], ["method.attribution_set", "'forget'"]),
    (["unlearn.max_steps=0"], ["unlearn.max_steps", ">= 1"]),
    (["unlearn.stop_at=often"], ["unlearn.stop_at", "'oracle'"]),
    (["unlearn.stop_at=2"], ["unlearn.stop_at", "[0, 1]"]),
    (["unlearn.stop_margin=1.5"], ["unlearn.stop_margin"]),
    (["unlearn.check_retain=0"], ["unlearn.check_retain"]),
    (["unlearn.grad_clip=0"], ["unlearn.grad_clip"]),
    (["continual.requests=x"], ["continual.requests", "integer"]),
    (["continual.requests=99"], ["continual.requests=99", "at most"]),
    (["suites=[knowledge,nosuch]"], ["nosuch", "available suites"]),
    (["suites=[]"], ["suites", "at least one"]),
    (["benchmark.forget_fraction=0"], ["forget"]),
    (["+benchmark.n_peple=5"], ["benchmark.n_peple", "did you mean 'n_people'"]),
    (["benchmark.n_people=abc"], ["benchmark.n_people", "integer"]),
    (["model.arch.num_key_value_heads=3"], ["model.arch.num_key_value_heads=3", "divisor"]),
    (["model.arch.hidden_size=130"], ["model.arch.hidden_size=130", "head size"]),
    (["model.arch.hidden_size=33"], ["model.arch.hidden_size=33", "multiple"]),
    (["+model.arch.hiden_size=64"], ["model.arch.hiden_size", "did you mean 'hidden_size'"]),
    (["model.inject.lr=0"], ["model.inject", "lr"]),
    (["+model.injet.lr=1"], ["model.injet", "did you mean 'inject'"]),
    (["model.dtype=float33"], ["model.dtype", "fp32, bf16, fp16"]),
    (["model.dtype=fp16", "model.device=cpu"], ["model.dtype=fp16", "CPU", "bf16 or fp32"]),
    (["model.gradient_checkpointing=yes"], ["model.gradient_checkpointing", "true or false"]),
    (["model.inject.batch_size=0"], ["model.inject", "batch_size must be >= 1"]),
    (["+model.arch.vocab_size=300"], ["model.arch.vocab_size", "set by the harness"]),
    (["+model.arch.head_dim=33"], ["model.arch.head_dim=33", "odd"]),
    (["continual.requests=2", "continual.suites=[knowlege]"], ["continual.suites", "did you mean 'knowledge'"]),
    (["model=hf"], ["model.pretrained"]),
    (["model=hf", "model.pretrained=nosuch-org/nosuch-model"], ["model.pretrained='nosuch-org/nosuch-model'", "local folder"]),
    (["suites=[knowledge,quantization]", "suite_settings.quantization.bits=[3]"], ["suite_settings.quantization.bits", "[4, 8]"]),
    (["suites=[knowledge,quantization]", "suite_settings.quantization.stages=[oracle]"], ["suite_settings.quantization.stages", "control"]),
    (["suites=[knowledge,probe]", "suite_settings.probe.layers=[1]"], ["suite_settings.probe.layers=[1]", "layers 0..0"]),
    (["suites=[knowledge,in_context]", "suite_settings.in_context.k=6"], ["suite_settings.in_context.k=6", "k <= 5"]),
    (["benchmark=tofu"], ["benchmark.data_dir"]),
    (["benchmark=file", "benchmark.path=/nonexistent/world.json"], ["/nonexistent/world.json"]),
    (["method=npo", "+method.tune.bta=[0.1]"], ["method.tune.bta", "did you mean 'beta'"]),
    (["method.tune.lr=[]"], ["method.tune.lr", "empty grid"]),
    (["method.tune.lr=[-1]"], ["method.tune", "lr must be positive", "lr=-1"]),
    (["tuned=/nonexistent/tuned.yaml"], ["tuned='/nonexistent/tuned.yaml'", "+experiment=tune", "tuned=null"]),
    (["suite_settings.privacy.attacks=[loss,minkk]"], ["suite_settings.privacy.attacks", "did you mean 'mink'"]),
    (["suite_settings.privacy.reference=retrained"], ["suite_settings.privacy.reference", "'oracle'"]),
    (["suites=[knowledge,muse]"], ["suite muse", "benchmark=muse"]),
    (["benchmark=muse"], ["benchmark.data_dir"]),
    (["benchmark=muse", "benchmark.data_dir=/nonexistent/muse"], ["benchmark.data_dir='/nonexistent/muse'", "not a folder"]),
    (["benchmark=muse", "benchmark.data_dir=tests/fixtures/muse", "benchmark.corpus=novel"], ["benchmark.corpus='novel'", "'news'"]),
    (["model.inject=null"], ["model.inject=null", "model.pretrained"]),
    (["model=hf", "model.pretrained=x", "model.inject=null", "unlearn.stop_at=oracle"], ["unlearn.stop_at=oracle", "auto"]),
    (["model=hf", "model.pretrained=x", "model.inject=null", "suites=[knowledge,privacy]"],
     ["suite_settings.privacy.reference=oracle", "reference=target"]),
    (["benchmark.n_instructions=-1"], ["n_instructions", ">= 0"]),
    (["benchmark=file", "benchmark.path=bench/assets/world_facts.json", "benchmark.instructions=/nonexistent/alpaca.jsonl"],
     ["benchmark.instructions", "/nonexistent/alpaca.jsonl"]),
    (["suites=[knowledge,relearn]", "attack=[benign]", "attack.benign.sources=[instructionz]"], ["attack 'benign'", "sources", "instructions"]),
    (["suites=[knowledge,relearn]", "attack=[benign]", "benchmark.n_instructions=0"], ["attack 'benign'", "none of the benign sources"]),
    (["suites=[knowledge,relearn]", "attack=[benign]", "attack.benign.repeats=0"], ["attack 'benign'", "repeats"]),
    (["suites=[knowledge,relearn]", "attack=[benign]", "attack.benign.steps=abc"], ["attack.benign.steps", "integer"]),
    (["suites=[knowledge,relearn]", "attack=[harmful]", "attack.harmful.lrs=[1e-3,nan]"], ["attack.harmful.lrs", "finite"]),
    (["seed=-1"], ["seed", ">= 0"]),
    (["suites=[knowledge,in_context]", "suite_settings.in_context.seed=-1"], ["suite_settings.in_context.seed", ">= 0"]),
    (["method=graddiff", "method.alpha=nan"], ["method.alpha", "finite"]),
    (["method.lr=inf"], ["method.lr", "finite"]),
    (["unlearn.stop_margin=nan"], ["unlearn.stop_margin", "finite"]),
    (["suites=[knowledge,privacy,knowledge]"], ["suites", "twice"]),
    (["continual.requests=2", "continual.suites=[knowledge,knowledge]"], ["continual.suites", "twice"]),
]


def _ids(case):
    return " ".join(case[0])


@pytest.mark.parametrize("overrides,needles", BAD, ids=[_ids(c) for c in BAD])
def test_bad_input_fails_before_compute_naming_the_key(tmp_path, overrides, needles):
    micro = not any(o.startswith(("benchmark=", "model=")) for o in overrides)
    cfg = compose_config(*overrides, f"cache_dir={tmp_path / 'cache'}", micro=micro)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / RECORD).write_text(json.dumps(OTHER_RECORD))
    with pytest.raises(UserError) as info:
        run(cfg, run_dir, "ga")
    message = str(info.value)
    for needle in needles:
        assert needle in message, (overrides, message)
    assert not (tmp_path / "cache" / "models").exists(), "a model was trained before the check"
    assert (run_dir / RECORD).exists() and not (run_dir / "superseded").exists(), "a record was moved"


def _cli(*args: str, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run([sys.executable, "-m", "bench.run", *args, "+experiment=micro", f"hydra.run.dir={tmp_path / 'run'}",
                           f"hydra.sweep.dir={tmp_path / 'sweep'}", f"cache_dir={tmp_path / 'cache'}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=180, env=env)


def test_cli_prints_one_line_and_exits_2(tmp_path):
    proc = _cli("method.lr=abc", tmp_path=tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr + proc.stdout
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("bench.run: error: method.lr must be a number, got 'abc'"), errors
    assert not (tmp_path / "cache" / "models").exists()
    assert not (tmp_path / "run").exists(), "checked before Hydra writes the run folder"


def test_cli_bad_value_in_a_later_sweep_job_stops_the_sweep_before_the_first_job(tmp_path):
    """Every job is checked before the first starts: job #1's lr stops the sweep before job #0 trains anything,
    in one line naming the job and the key, and no sweep folder is written."""
    proc = _cli("-m", "method=ga", "method.lr=1e-4,-1", tmp_path=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr + proc.stdout
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and "sweep job #1" in errors[0] and "method.lr=-1" in errors[0], errors
    assert "lr must be positive" in errors[0]
    assert not any(tmp_path.iterdir()), sorted(p.name for p in tmp_path.iterdir())


def test_cli_sweep_with_a_bad_value_moves_no_finished_record(tmp_path):
    # A finished sweep folder: a rerun with threads=auto must fail before touching it.
    job = tmp_path / "sweep" / "+experiment=micro,method=ga"
    job.mkdir(parents=True)
    (job / RECORD).write_text(json.dumps(OTHER_RECORD))
    proc = _cli("-m", "method=ga", "threads=auto", tmp_path=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr + proc.stdout
    assert "threads must be an integer or null" in proc.stderr
    assert (job / RECORD).exists() and not (job / "superseded").exists()


def test_cli_full_traceback_on_request(tmp_path):
    env_proc = subprocess.run([sys.executable, "-m", "bench.run", "+experiment=micro", "seed=abc",
                               f"hydra.run.dir={tmp_path / 'run'}", f"cache_dir={tmp_path / 'cache'}"],
                              cwd=ROOT, capture_output=True, text=True, timeout=180,
                              env={**os.environ, "HYDRA_FULL_ERROR": "1", "HF_HUB_OFFLINE": "1"})
    assert env_proc.returncode != 0
    assert "Traceback" in env_proc.stderr and "SettingsError: seed must be an integer" in env_proc.stderr


@pytest.mark.parametrize("arg,needles", [("attack=[harmfull,rtt]", ["unknown attack 'harmfull'", "did you mean 'harmful'", "rtt"]),
                                          ("method=ga,nposs", ["unknown method 'nposs'", "'npo'"]),
                                          ("benchmark=tofuu", ["unknown benchmark 'tofuu'", "'tofu'"])])
def test_unknown_group_choice_lists_the_options(arg, needles):
    from bench.run import check_group_choices

    with pytest.raises(UserError) as info:
        check_group_choices([arg])
    for needle in needles:
        assert needle in str(info.value)
    check_group_choices(["attack=[harmful,rtt]", "method=ga,npo", "+experiment=micro", "seed=0,1"])  # valid: no error


def test_null_takes_the_default_in_model_blocks(tmp_path):
    from bench.run import Run
    from bench.train import TrainConfig

    r = Run(compose_config("model.inject.batch_size=null", "model.device=null", f"cache_dir={tmp_path}"), tmp_path / "run", "ga")
    assert r.model_spec["inject"]["batch_size"] == TrainConfig(lr=1.0, max_steps=1).batch_size


@pytest.mark.parametrize("args,needles", [
    (["unlearn.trace_evry=10"], ["unknown config key 'unlearn.trace_evry'", "did you mean 'trace_every'"]),
    (["sed=1"], ["unknown config key 'sed'", "did you mean 'seed'"]),
    (["hydra.launcher.n_jobs=2", "sed=1"], ["unknown config key 'sed'"]),  # a launch setting does not hide it
    (["method=graddiff", "method.alpah=2"], ["'method.alpah'", "with method=graddiff", "did you mean 'alpha'"]),
    (["method=graddiff,ga", "method.alpha=2"], ["unknown config key 'method.alpha' with method=ga"]),  # each choice
])
def test_a_misspelt_key_names_the_key_and_the_fix(args, needles):
    from bench.run import check_group_choices

    with pytest.raises(UserError) as info:
        check_group_choices(args)
    for needle in needles:
        assert needle in str(info.value), str(info.value)
    check_group_choices(["+experiment=compare", "unlearn.trace_every=10", "method=graddiff", "method.alpha=2",
                         "suite_settings.knowledge.batch_size=4", "seed=0,1", "hydra.launcher.n_jobs=1"])  # valid
    check_group_choices(["benchmark=file", "benchmark.path=/x.json"])  # a mandatory ??? key is a key
    check_group_choices(["model=hf", "model.pretrained=foo/bar"])


def test_cli_misspelt_key_is_one_line(tmp_path):
    proc = _cli("unlearn.check_evry=3", tmp_path=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr + proc.stdout
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and "unknown config key 'unlearn.check_evry'" in errors[0] and "'check_every'" in errors[0], errors


@pytest.mark.parametrize("value", ["-1", "0", "nan", "abc"])
def test_a_bad_seed_plan_half_width_stops_the_sweep_before_it_starts(value):
    """The report callback's plan_half_width (the paper preset's seed plan) is checked before any job: a sweep must
    not run for hours and then fail in its report."""
    from bench.run import check_jobs

    with pytest.raises(UserError, match=r"hydra\.callbacks\.report\.plan_half_width.*e\.g\. "):
        check_jobs(["-m", "+experiment=micro", "seed=0,1", f"hydra.callbacks.report.plan_half_width={value}"])
    assert check_jobs(["-m", "+experiment=micro", "seed=0,1", "hydra.callbacks.report.plan_half_width=0.1"]) == 2


@pytest.mark.parametrize("args,jobs", [
    (["+experiment=micro", "cache_dir=/tmp/unused/${hydra:runtime.choices.method}"], 1),  # ${hydra:} resolves as in the job
    (["-m", "+experiment=micro", "method=ga,npo", "seed=0,1"], 4),
    (["-m", "+experiment=compare,micro"], 2),  # as Hydra: a sweep over presets is one job each, not their params' product
    # the preset's hydra.sweeper.params (85 Runs built: 43 s on a slow 2-core host, so slow-marked; the 17-job case
    # below checks the same preset's params at one seed by default)
    pytest.param(["-m", "+experiment=paper"], 85, marks=pytest.mark.slow),
    (["-m", "+experiment=paper", "seed=7"], 17),  # the command line replaces a param
    (["-m", "+experiment=micro", "method=glob(g*)"], 3),
    (["-m", "hydra/launcher=slurm", "+experiment=micro", "model.dtype=fp16", "seed=0,1"], 0),  # checked where they run
    (["-m", "+experiment=tune"], 0),  # the tune sweeper checks its plan
    (["--cfg", "job", "method.lr=-1"], 0),
])
def test_check_jobs_expands_the_sweep_as_hydra_does(args, jobs):
    """bench.run.check_jobs builds every job's Run before Hydra starts; its jobs are the ones Hydra launches."""
    from bench.run import check_jobs

    assert check_jobs(args) == jobs
