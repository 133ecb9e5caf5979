"""Computed-once values on disk, shared by runs and processes (file-locked, written atomically).

``pickled`` stores one value in a file (the stage cache, the relearn suite's oracle control);
``directory`` builds one folder (the target and oracle models, a converted GGUF model, the
utility suite's lm-eval task files). The key is the caller's: ``digest`` of everything the value
depends on, the one hash the harness uses for identities (record config hash included).

Both write into a temporary name beside the result and rename it, under a lock beside the result.
A killed process leaves its temporary behind; only the lock holder writes a temporary, so under
the lock any temporary of that result is an orphan, and is removed before building.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import re
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any, Callable, TypeVar

from filelock import FileLock, Timeout

log = logging.getLogger(__name__)
T = TypeVar("T")
COMPLETE = ".complete"


def digest(payload: Any, length: int = 20) -> str:
    """A short, stable hash of a JSON-able payload (keys sorted; other objects by ``str``)."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:length]


def _temp(path: Path) -> Path:
    return path.with_name(f".tmp-{path.name}-{os.getpid()}")


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)


def remove_orphans(path: Path) -> list[Path]:
    """Remove temporaries of ``path`` (``.tmp-<name>-<pid>``) left by killed writers; call under its lock."""
    pattern = re.compile(rf"\.tmp-{re.escape(path.name)}-\d+")
    orphans = [p for p in path.parent.glob(f".tmp-{path.name}-*") if pattern.fullmatch(p.name)]
    for p in orphans:
        log.warning("removing %s, left by a killed run", p)
        _remove(p)
    return orphans


def pickled(path: Path, compute: Callable[[], T]) -> tuple[T, bool]:
    """``compute()``'s value, stored at ``path`` on first use; returns (value, reused).

    A lock beside the file makes concurrent processes compute it once (the others wait, then read
    it); the value is written to a temporary file and renamed, so a killed run leaves no partial
    value (and the next writer removes the temporary it left).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path.with_suffix(".lock"))):
        if path.exists():
            with open(path, "rb") as fh:
                return pickle.load(fh), True
        remove_orphans(path)
        value = compute()
        tmp = _temp(path)
        try:
            with open(tmp, "wb") as fh:
                pickle.dump(value, fh)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return value, False


def directory(path: Path, build: Callable[[Path], None], marker: str = COMPLETE,
              wait: bool = True) -> tuple[Path, bool] | None:
    """The folder ``path``, built once by ``build(tmp)`` into an empty temporary folder; returns
    (path, reused).

    ``marker``: the file whose presence says the folder is complete (written after ``build`` if
    ``build`` did not write it; name a file the builder writes to keep folders written before this
    helper existed valid). A folder without it (from a crash of older code) is rebuilt.
    ``wait=False``: return None at once if another process holds the lock (is building it), so the
    caller can do other work first.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path.parent / f"{path.name}.lock"), timeout=-1 if wait else 0)
    try:
        lock.acquire()
    except Timeout:
        return None
    try:
        return _build_locked(path, build, marker)
    finally:
        lock.release()


def _build_locked(path: Path, build: Callable[[Path], None], marker: str) -> tuple[Path, bool]:
    """``directory``'s work, under its lock."""
    if (path / marker).exists():
        return path, True
    remove_orphans(path)
    tmp = _temp(path)
    tmp.mkdir()
    try:
        build(tmp)
        if not (tmp / marker).exists():
            (tmp / marker).write_text(path.name)
        if path.exists():
            _remove(path)  # incomplete: no marker
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path, False


def host_name() -> str:
    """This machine's name as it appears in temporary file names (orphans are judged per host)."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname()) or "host"


def atomic_write(path: Path, data: str | bytes) -> None:
    """Write ``path`` through a temporary file beside it (named ``.<name>.<host>.<pid>.*.tmp``, so a
    killed writer's leftovers can be told from a live one's), fsync, then rename: readers see the old
    file or the new one, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{host_name()}.{os.getpid()}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
