"""Running a snippet of Python in a fresh interpreter, for what a process does once (load
a library, compile a helper, read the environment)."""

from __future__ import annotations

import os
import subprocess
import sys


def run_fresh(code: str, **env: str) -> str:
    """The standard output of ``python -c code`` with ``env`` added to this environment;
    a failure fails the test with the process's standard error."""
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout
