"""The run record: ``record.json`` (config, provenance, rows) and ``examples.jsonl`` (per item).

Both files are written atomically (temp file in the same directory, then rename), examples
first and the record last, so a directory with ``record.json`` holds a finished run and a run
killed mid-way leaves none. A record is identified by the hash of its resolved config and the
code version; a rerun with the same identity skips, a changed one moves the old record aside
(never overwrites it silently).

Records are strict JSON: a non-finite number (a diverged loss, an undefined metric) is written as
``null`` and read back as NaN where the record holds numbers (row values, losses). A file that
is not a record raises ``RecordError`` naming it. Temporary files carry their writer's host and
pid; the next write into the folder removes those whose process is gone (a killed run's).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import platform
import re
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

from bench.disk_cache import atomic_write, digest, host_name
from bench.errors import UserError

log = logging.getLogger(__name__)
RECORD = "record.json"
# record["tuning"]["status"] of a run whose tuned file had no setting reaching the target: it ran the closest one
TUNED_CLOSEST = "closest: no setting reached the target on the tuning seeds"
CLOSEST_MARK = " [closest]"  # table row-label suffix of a record run at its closest setting
EXAMPLES = "examples.jsonl"
ROOT = Path(__file__).resolve().parent.parent
_PACKAGES = ("torch", "transformers", "datasets", "hydra-core", "lm_eval", "peft", "numpy", "scipy", "scikit-learn",
             "rouge-score")


REQUIRED_KEYS = ("config", "config_hash", "code_version", "rows")


class RecordError(UserError):
    """A ``record.json`` that is not a valid record; the message names the file and the fix."""


# Where the caches live changes no number (every cache is keyed by what does): left out of a record's identity, so
# a sweep resumed with its caches elsewhere skips its finished runs. reuse_stages stays in: with false, a rerun
# recomputes a finished record's stages (the way to refresh one).
NOT_IDENTITY = ("cache_dir",)


def config_hash(config: dict[str, Any]) -> str:
    return digest({k: v for k, v in config.items() if k not in NOT_IDENTITY}, 16)


# A tuned-settings file is data a run reads through `tuned=`, and such a run's identity holds the file's digest
# (bench.tune.apply_tuned): shipping a new one into bench/assets must not make every other record and cached stage stale.
TUNED_FILES = "tuned_*.yaml"


def source_files(root: Path = ROOT) -> list[Path]:
    """The files `code_version` hashes: every .py, .yaml, .json and .txt (e.g. IdkDPO's answers) under bench/ and
    methods/, less the shipped tuned files."""
    files = []
    for folder in ("bench", "methods"):
        for path in sorted((root / folder).rglob("*")):
            if (path.is_file() and path.suffix in (".py", ".yaml", ".json", ".txt") and "__pycache__" not in path.parts
                    and not (path.parent == root / "bench" / "assets" and path.match(TUNED_FILES))):
                files.append(path)
    return files


@functools.cache
def code_version() -> str:
    """Hash of the harness and method sources (configs are covered by the config hash).

    Computed once per process: it names the code this process loaded, even if the files are
    edited while a long sweep runs."""
    h = hashlib.sha256()
    for path in source_files():
        h.update(str(path.relative_to(ROOT)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def _git(*args: str) -> str | None:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


@functools.cache
def package_versions() -> dict[str, str | None]:
    """Versions of the libraries that shape numbers (provenance, and the stage and control cache keys)."""
    versions: dict[str, str | None] = {}
    for pkg in _PACKAGES:
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return versions


@functools.lru_cache(maxsize=None)
def cpu() -> dict[str, Any]:
    """The CPU a record was computed on: its model name and the vector kernels torch dispatches to. Float
    results depend on both (AVX2 and AVX-512 kernels sum in different orders), so two hosts can give one seed
    different models and hence different records; this says why, where it happens."""
    name = platform.processor() or None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"model": name, "capability": torch.backends.cpu.get_cpu_capability(), "count": os.cpu_count()}


def runtime_identity(device: torch.device | str) -> dict[str, Any]:
    """The runtime part of the cache keys (model, stage and relearn-control caches: one definition): what can
    move a float sum between two runs of the same code. The device type; on CPU, torch's thread count (the
    threads split a reduction's sums), the CPU model and the vector kernels torch dispatches to (AVX2 and AVX-512
    hosts train one seed into different models: a cache shared by two kinds of host keeps one model per kind);
    on a visible GPU, its model, the CUDA version torch was built with and the TF32 switches (a cache shared by
    an H100 and an A100 keeps one model per card). Not keyed: cuBLAS and cuDNN builds beyond torch's CUDA version."""
    device = torch.device(device)
    if device.type == "cpu":
        host = cpu()
        return {"device": "cpu", "threads": torch.get_num_threads(), "cpu": host["model"], "kernels": host["capability"]}
    if device.type == "cuda" and torch.cuda.is_available():
        index = device.index if device.index is not None else torch.cuda.current_device()
        return {"device": "cuda", "gpu": torch.cuda.get_device_name(index), "cuda": torch.version.cuda,
                "tf32": [torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32]}
    return {"device": device.type}


def gpu_identity(device: torch.device | str) -> dict[str, Any] | None:
    """The GPU part of ``runtime_identity`` for a record's provenance; None where ``device`` is no visible GPU."""
    identity = runtime_identity(device)
    return identity if "gpu" in identity else None


def provenance(seed: int, device: str) -> dict[str, Any]:
    versions = dict(package_versions())
    status = _git("status", "--porcelain")
    return {
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(status) if status is not None else None,
        "code_version": code_version(),
        "packages": versions,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": cpu(),
        "torch_threads": torch.get_num_threads(),
        "device": device,
        # On a visible GPU: its model, torch's CUDA version and the TF32 switches (the cache keys' runtime), so a
        # table can say which card computed it; None on CPU.
        "gpu": gpu_identity(device),
        "seed": seed,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "argv": sys.argv,
    }


def _finite(obj: Any) -> Any:
    """``obj`` with every non-finite float (NaN, inf) replaced by None, recursively (JSON has no NaN)."""
    if isinstance(obj, (float, np.floating)):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def to_json(obj: Any, **kwargs: Any) -> str:
    """Strict JSON: non-finite floats as null; anything else that is not JSON fails loudly."""
    return json.dumps(_finite(obj), allow_nan=False, **kwargs)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    except OSError:
        return True
    return True


def remove_orphan_temps(run_dir: Path) -> list[Path]:
    """Remove this host's temporaries in ``run_dir`` whose writing process is gone (a killed run's).

    A temporary of a live process (a concurrent writer) or of another host (a shared file system,
    where a pid means nothing here) is kept.
    """
    pattern = re.compile(rf"\.(?:{re.escape(RECORD)}|{re.escape(EXAMPLES)})\.(?P<host>[A-Za-z0-9_-]+)\.(?P<pid>\d+)\..*\.tmp")
    removed = []
    for p in run_dir.glob(".*.tmp"):
        m = pattern.fullmatch(p.name)
        if m and m["host"] == host_name() and not _pid_alive(int(m["pid"])):
            log.warning("removing %s, left by a killed run", p)
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def write_record(run_dir: str | Path, record: dict[str, Any], examples: Iterable[dict[str, Any]]) -> Path:
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    remove_orphan_temps(run_dir)
    atomic_write(run_dir / EXAMPLES, "".join(to_json(e) + "\n" for e in examples))
    atomic_write(run_dir / RECORD, to_json(record, indent=1, default=str))
    return run_dir / RECORD


def _nan(value: Any) -> Any:
    return float("nan") if value is None else value


def read_record(run_dir: str | Path) -> dict[str, Any] | None:
    """The record in ``run_dir`` (None if there is none); nulls in numeric fields read back as NaN.

    Raises ``RecordError`` when the file is not a valid unlearn-bench record.
    """
    path = Path(run_dir) / RECORD
    if not path.exists():
        return None
    fix = "move it away or delete it, then rerun"
    try:
        record = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RecordError(f"{path} is not a valid unlearn-bench record ({err}); {fix}") from None
    if not isinstance(record, dict):
        raise RecordError(f"{path} is not a valid unlearn-bench record (a JSON {type(record).__name__}, "
                          f"not an object); {fix}")
    missing = [k for k in REQUIRED_KEYS if k not in record]
    if missing or not isinstance(record["rows"], list) or not all(isinstance(r, dict) for r in record["rows"]):
        what = f"missing keys {missing}" if missing else "rows is not a list of objects"
        raise RecordError(f"{path} is not a valid unlearn-bench record ({what}); {fix}")
    for row in record["rows"]:
        if "value" in row:
            row["value"] = _nan(row["value"])
    unlearn = record.get("unlearn")
    if isinstance(unlearn, dict):
        if "final_loss" in unlearn:
            unlearn["final_loss"] = _nan(unlearn["final_loss"])
        if isinstance(unlearn.get("losses"), list):
            unlearn["losses"] = [_nan(v) for v in unlearn["losses"]]
    return record


def same_identity(record: dict[str, Any], cfg_hash: str, version: str) -> bool:
    return record.get("config_hash") == cfg_hash and record.get("code_version") == version


def move_aside(run_dir: str | Path) -> Path:
    """Move an outdated record out of the way, kept under ``superseded/<time>/``."""
    run_dir = Path(run_dir)
    dest = run_dir / "superseded" / time.strftime("%Y%m%d-%H%M%S")
    dest.mkdir(parents=True, exist_ok=True)
    for name in (RECORD, EXAMPLES):
        if (run_dir / name).exists():
            os.replace(run_dir / name, dest / name)
    return dest
