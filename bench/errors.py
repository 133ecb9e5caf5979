"""The one user-facing error type.

Every error a user can fix by changing an input (a config key, a data file, a records folder)
is a ``UserError``: its message is one line that names the key or file and the fix. The entry
points (``bench.run``, ``bench.report``) print that line and exit with status 2; the traceback
is shown only with ``HYDRA_FULL_ERROR=1``. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import os
import sys


class UserError(ValueError):
    """Bad input: the message names the key or file and the fix."""


class ConfigError(UserError):
    """A run-config value that cannot work; the message names the key and the fix."""


def full_traceback_requested() -> bool:
    return os.environ.get("HYDRA_FULL_ERROR") == "1"


def exit_with(err: UserError, prog: str) -> None:
    """Print the error as one line on stderr and exit 2 (re-raise under HYDRA_FULL_ERROR=1)."""
    if full_traceback_requested():
        raise err
    message = " ".join(str(err).split())  # one line, whatever the message's own newlines
    print(f"{prog}: error: {message}", file=sys.stderr)
    sys.exit(2)
