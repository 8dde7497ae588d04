"""`make deploy-check`'s own logic, without running it (it needs root, podman and nspawn).

The script (deploy/check/deploy_check.py) installs the systemd side by running the shell blocks
docs/deployment.md marks for it, reads what the kernel says about the service's process to decide
that the hardening is in force, and ends with a table; those pieces are checked here.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
import sys
from types import ModuleType

import pytest

from tests.deploy.files import DEPLOY, REPO

SCRIPT = DEPLOY / "check" / "deploy_check.py"


@pytest.fixture(scope="module")
def dc() -> ModuleType:
    spec = importlib.util.spec_from_file_location("deploy_check", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["deploy_check"] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


def test_the_table_round_trips(dc: ModuleType) -> None:
    rows = [
        dc.Row("container", "podman build (Dockerfile)", True, 71.1, "701 MB"),
        dc.Row("systemd", "systemctl stop mid-session: drain", False, 20.8, "exit 1"),
        dc.Row("host", "tools installed", True, 0.0, ""),
    ]
    text = dc.format_table(rows)
    assert dc.parse_table(text) == rows
    assert dc.verdict(rows, []) is False  # one failed row fails the run


def test_verdict_needs_every_check_of_a_part(dc: ModuleType) -> None:
    part = [
        dc.Row("container", f"check {i}", True, 1.0) for i in range(dc.EXPECTED_ROWS["container"])
    ]
    assert dc.verdict(part, ["container"])
    assert not dc.verdict(part[:-1], ["container"])  # a part that stopped early
    assert not dc.verdict(part, ["container", "systemd"])


def _block_commands(dc: ModuleType, name: str) -> list[list[str]]:
    lines = [ln.strip() for ln in dc.doc_block(name).splitlines()]
    return [shlex.split(ln) for ln in lines if ln and not ln.startswith("#")]


def test_the_docs_install_every_shipped_systemd_file(dc: ModuleType) -> None:
    """What deploy-check proves is what the docs install: each deploy/systemd file, verbatim."""
    installed: dict[str, str] = {}
    for argv in _block_commands(dc, "systemd-install"):
        if argv[:2] == ["sudo", "install"] and "-d" not in argv:
            dest = argv[-1]
            sources = [a for a in argv[2:-1] if not a.startswith("-") and not re.match(r"0\d+$", a)]
            for src in sources:
                installed[src] = dest
    shipped = sorted(f"deploy/systemd/{p.name}" for p in (DEPLOY / "systemd").iterdir())
    assert sorted(k for k in installed if k.startswith("deploy/systemd/")) == shipped
    assert installed["deploy/systemd/avatar-bridge.sysusers.conf"].startswith(
        "/usr/lib/sysusers.d/"
    )
    assert installed["deploy/systemd/avatar-bridge.service"] == "/etc/systemd/system/"
    for src in installed:
        assert (REPO / src).is_file(), src


def test_the_docs_start_the_socket_unit(dc: ModuleType) -> None:
    commands = [" ".join(a) for a in _block_commands(dc, "systemd-start")]
    assert "sudo systemctl enable --now avatar-bridge.socket" in commands
    assert not any("avatar-bridge.service" in c for c in commands)  # activation by the socket


STATUS_OK = (
    "Name:\tpython3\nNoNewPrivs:\t1\nSeccomp:\t2\n"
    "CapBnd:\t0000000000000000\nCapEff:\t0000000000000000\n"
)
MOUNTS_OK = """\
1 0 0:1 / / ro,relatime shared:1 - ext4 /dev/vda rw
2 1 0:2 / /var/lib/avatar-bridge rw,relatime shared:2 - ext4 /dev/vda rw
3 1 0:3 / /home ro,nosuid,nodev,noexec shared:3 - tmpfs tmpfs ro,mode=000
4 1 0:4 / /tmp rw,nosuid,nodev shared:4 - ext4 /dev/vda rw
5 1 0:5 / /dev rw,nosuid shared:5 - tmpfs tmpfs rw,mode=755
6 1 0:6 / /proc rw,nosuid,nodev,noexec shared:6 - proc proc rw,hidepid=invisible
7 6 0:6 /sys /proc/sys ro,nosuid,nodev,noexec shared:7 - proc proc rw,hidepid=invisible
8 1 0:7 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:8 - cgroup2 cgroup2 rw
"""


def test_hardening_probes_accept_a_sandboxed_process(dc: ModuleType) -> None:
    failures, checked = dc.hardening_failures(STATUS_OK, MOUNTS_OK)
    assert failures == []
    assert checked >= 12


@pytest.mark.parametrize(
    ("status", "mounts", "missing"),
    [
        (STATUS_OK.replace("Seccomp:\t2", "Seccomp:\t0"), MOUNTS_OK, "SystemCallFilter"),
        (STATUS_OK.replace("NoNewPrivs:\t1", "NoNewPrivs:\t0"), MOUNTS_OK, "NoNewPrivileges"),
        (STATUS_OK, MOUNTS_OK.replace("/ / ro,", "/ / rw,"), "ProtectSystem"),
        (STATUS_OK, MOUNTS_OK.replace("hidepid=invisible", "rw"), "ProtectProc"),
        (
            STATUS_OK,
            MOUNTS_OK.replace("/dev rw,nosuid shared:5 - tmpfs", "/dev rw - devtmpfs"),
            "PrivateDevices",
        ),
        (STATUS_OK, "\n".join(MOUNTS_OK.splitlines()[:3]), "PrivateTmp"),
    ],
)
def test_hardening_probes_name_what_is_missing(
    dc: ModuleType, status: str, mounts: str, missing: str
) -> None:
    failures, _ = dc.hardening_failures(status, mounts)
    assert any(missing in f for f in failures), failures


def test_say_output_is_read_by_event(dc: ModuleType) -> None:
    out = (
        'READY {"session_id": "s1"}\n'
        'EVENT {"event": "media_path", "path": "relay"}\n'
        "not json\n"
        'EVENT {"event": "speak_ended"}\n'
    )
    events = dc.say_events(out)
    assert events["READY"] == {"session_id": "s1"}
    assert events["media_path"]["path"] == "relay"
    assert "speak_ended" in events and "ERROR" not in events
