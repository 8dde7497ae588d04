"""The protocol fuzzer's kept inputs, replayed on every run, and a bounded fuzzing run (slow)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

FUZZ_DIR = Path(__file__).resolve().parents[2] / "fuzz"
REGRESSIONS = FUZZ_DIR / "regressions"


def load_fuzzer() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fuzz_protocol", FUZZ_DIR / "fuzz_protocol.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


FUZZER = load_fuzzer()
KEPT = sorted(p for p in REGRESSIONS.iterdir() if p.is_file() and not p.name.startswith("."))


def test_there_are_kept_inputs() -> None:
    assert KEPT, "fuzz/regressions/ must hold at least the hand-made seeds"


@pytest.mark.parametrize("path", KEPT, ids=[p.name for p in KEPT])
def test_kept_input_replays_cleanly(path: Path) -> None:
    FUZZER.check(path.read_bytes())


def test_golden_vectors_pass_the_fuzz_checks_at_every_split() -> None:
    for seed in FUZZER.seeds():
        for split_byte in range(7):
            FUZZER.check(bytes([split_byte]) + seed)


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_bounded_fuzzing_run_finds_no_crash(tmp_path: Path) -> None:
    pytest.importorskip("atheris")
    done = subprocess.run(
        [
            sys.executable,
            str(FUZZ_DIR / "fuzz_protocol.py"),
            # A fixed amount of seeded work (the same inputs on a quiet or a loaded machine),
            # with a time cap in case the machine is very slow.
            "-runs=10000",
            "-seed=1",
            "-max_total_time=60",
            f"-artifact_prefix={tmp_path}/",
        ],
        capture_output=True,
        text=True,
        timeout=80,
    )
    crashes = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(("crash", "leak")))
    assert done.returncode == 0 and not crashes, (
        f"fuzzing found {crashes}: copy them into fuzz/regressions/\n{done.stderr[-3000:]}"
    )
    assert "Done" in done.stderr
