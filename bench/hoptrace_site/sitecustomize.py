"""Installs bench.hoptrace in every Python process started with this folder on PYTHONPATH
(a no-op unless HOPTRACE_DIR is set)."""

import os

if os.environ.get("HOPTRACE_DIR"):
    from bench import hoptrace

    hoptrace.install()
