"""Installs bench.hoptrace (per-packet hop times) and bench.marktrace (per-mark times inside the
daemon) in every Python process started with this folder on PYTHONPATH (each a no-op unless
HOPTRACE_DIR / MARKTRACE_DIR is set)."""

import os
import sys
from pathlib import Path

if os.environ.get("HOPTRACE_DIR") or os.environ.get("MARKTRACE_DIR"):
    # `bench` is not installed: import it from the checkout this folder belongs to.
    sys.path.append(str(Path(__file__).resolve().parents[2]))

if os.environ.get("HOPTRACE_DIR"):
    from bench import hoptrace

    hoptrace.install()

if os.environ.get("MARKTRACE_DIR"):
    from bench import marktrace

    marktrace.install()
