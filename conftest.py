"""Collection rules for the whole tree (`pytest --doctest-modules src/crossentropy tests`)."""

from __future__ import annotations

import importlib.util

# The GPU row kernel's module imports Triton, an optional dependency (the test extras
# install it on Linux x86-64): without it there is nothing of that module to collect.
collect_ignore = []
if importlib.util.find_spec("triton") is None:
    collect_ignore.append("src/crossentropy/losses/_triton.py")
