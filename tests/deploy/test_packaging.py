"""The wheel: console script, py.typed, bundled assets, one version everywhere.

Built from a copy of exactly the inputs the Docker build uses (pyproject.toml, README.md,
bridge/), so the build leaves nothing behind in the working tree.
"""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from bridge import __version__
from bridge.sim import netns
from tests.deploy.files import AVATAR_BRIDGE, REPO


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    shutil.copytree(REPO / "bridge", src / "bridge", ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("dist")
    # The build backend (setuptools, wheel) comes from the index; inside the namespace harness
    # only the machine's local indexes answer, so pip (and the pip it runs for the isolated build
    # environment, hence the variable) must not wait on retries for the others.
    env = {**os.environ, "PIP_RETRIES": "0"} if netns.inside() else None
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(out), "."],
        env=env,
        cwd=src,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    (found,) = out.glob("avatar_bridge-*.whl")
    return found


def test_wheel_name_carries_the_package_version(wheel: Path) -> None:
    assert wheel.name.startswith(f"avatar_bridge-{__version__}-py3-none-any")


def test_wheel_contents(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        dist_info = f"avatar_bridge-{__version__}.dist-info"
        metadata = zf.read(f"{dist_info}/METADATA").decode()
        entry_points = zf.read(f"{dist_info}/entry_points.txt").decode()
    assert "bridge/py.typed" in names
    assert "bridge/cli.py" in names
    assert "bridge/assets/speech.wav" in names  # the demo's sample ships in the wheel
    assert not any("__pycache__" in n or n.startswith("tests/") for n in names)
    assert f"\nVersion: {__version__}\n" in metadata
    scripts = configparser.ConfigParser()
    scripts.read_string(entry_points)
    assert scripts["console_scripts"]["avatar-bridge"] == "bridge.cli:main"


def test_cli_version_matches_the_package() -> None:
    proc = subprocess.run(
        [str(AVATAR_BRIDGE), "--version"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"avatar-bridge {__version__}"
