"""Sweeps through Hydra's launchers: resume after SIGKILL, joblib = basic, submitit local. Slow: `pytest -m slow`."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from bench.record import RECORD
from tests.conftest import ROOT

pytestmark = pytest.mark.slow
ENV = {**os.environ, "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def _sweep(sweep, cache, *extra, timeout=900):
    cmd = [sys.executable, "-m", "bench.run", "-m", "+experiment=micro", "method=ga,npo", "seed=0,1", "suites=[knowledge]",
           f"cache_dir={cache}", f"hydra.sweep.dir={sweep}", *extra]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=ENV)


def _rows(sweep):
    out = {}
    for path in sorted(sweep.rglob(RECORD)):
        rec = json.loads(path.read_text())
        out[path.parent.name] = [(r["stage"], r["split"], r["metric"], r["value"]) for r in rec["rows"] if r["metric"] != "wall_s"]
    return out


def test_sigkill_then_resume_finishes_without_redoing(tmp_path):
    sweep, cache = tmp_path / "sweep", tmp_path / "cache"
    cmd = [sys.executable, "-m", "bench.run", "-m", "+experiment=micro", "method=ga,npo", "seed=0,1", "suites=[knowledge]",
           f"cache_dir={cache}", f"hydra.sweep.dir={sweep}"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 600
    while time.time() < deadline and not list(sweep.rglob(RECORD)):
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = {p: p.stat().st_mtime_ns for p in sweep.rglob(RECORD)}
    assert 1 <= len(done_before) < 4
    # Every folder without record.json is unfinished; the report sees only finished runs.
    resumed = _sweep(sweep, cache)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"{len(done_before)} were already complete and skipped" in resumed.stdout
    assert len(list(sweep.rglob(RECORD))) == 4
    assert all(p.stat().st_mtime_ns == m for p, m in done_before.items())
    again = _sweep(sweep, cache)
    assert "4 were already complete and skipped, 0 computed now" in again.stdout
    assert (sweep / "plots" / "tradeoff.png").exists()
    report = subprocess.run([sys.executable, "-m", "bench.report", str(sweep), "--out", str(tmp_path / "rep")],
                            cwd=ROOT, capture_output=True, text=True, env=ENV)
    assert report.returncode == 0, report.stderr[-2000:]
    assert (tmp_path / "rep" / "table.md").read_text() == (sweep / "table.md").read_text()


def test_joblib_launcher_gives_the_same_records(tmp_path):
    basic = _sweep(tmp_path / "basic", tmp_path / "cache")
    assert basic.returncode == 0, basic.stderr[-3000:]
    par = _sweep(tmp_path / "joblib", tmp_path / "cache", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2")
    assert par.returncode == 0, par.stderr[-3000:]
    assert _rows(tmp_path / "basic") == _rows(tmp_path / "joblib")


def test_submitit_local_launcher(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "bench.run", "-m", "+experiment=micro", "method=ga", "suites=[knowledge]",
         "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=20", f"cache_dir={tmp_path / 'cache'}",
         f"hydra.sweep.dir={tmp_path / 'sweep'}"],
        cwd=ROOT, capture_output=True, text=True, timeout=900, env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(list((tmp_path / "sweep").rglob(RECORD))) == 1
