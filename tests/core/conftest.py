"""A real daemon subprocess (dry run) with its socket, admin port and log, for the core tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent / "avatar-bridge"


@dataclass
class DaemonProc:
    proc: subprocess.Popen[bytes]
    socket: Path
    log_path: Path
    admin_port: int = 0
    env: dict[str, str] = field(default_factory=dict)

    def log_lines(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                out.append({"event": line})
        return out

    def admin(self, method: str, path: str, token: str | None = None) -> tuple[int, Any]:
        req = urllib.request.Request(f"http://127.0.0.1:{self.admin_port}{path}", method=method)
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                body = resp.read()
                ctype = resp.headers.get("Content-Type", "")
                return resp.status, json.loads(body) if "json" in ctype else body.decode()
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    def terminate(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)


def start_daemon(tmp_path: Path, *extra: str, env: dict[str, str] | None = None) -> DaemonProc:
    sock = tmp_path / "run" / "bridge.sock"
    log_path = tmp_path / "daemon.log"
    full_env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AVATAR_BRIDGE_", "LIVEAVATAR_", "STREAM_", "NOTIFY_SOCKET"))
    }
    full_env.update(env or {})
    args = [
        str(BIN),
        "run",
        "--dry-run",
        "--socket",
        str(sock),
        "--admin-port",
        "0",
        "--state-dir",
        str(tmp_path / "state"),
        "--log-format",
        "json",
        *extra,
    ]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=full_env)
    d = DaemonProc(proc, sock, log_path, env=full_env)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"daemon exited {proc.returncode}: {log_path.read_text()}")
        for line in d.log_lines():
            if line.get("event") == "ready":
                d.admin_port = int(line["admin_port"])
                return d
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"daemon not ready: {log_path.read_text()}")


@pytest.fixture(scope="module")
def shared_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProc]:
    """One dry-run daemon for the module's session tests: its start (importing the media stacks)
    costs seconds on a loaded machine, and each test leaves it with no session (below)."""
    d = start_daemon(
        tmp_path_factory.mktemp("daemon"), "--set", "limits.linger_s=2", "--max-sessions", "3"
    )
    yield d
    if d.proc.poll() is None:
        d.proc.kill()
        d.proc.wait()


@pytest.fixture
def daemon(shared_daemon: DaemonProc) -> DaemonProc:
    """The module's daemon, running and with no session: one an earlier test left lingering
    (linger_s=2) has ended before this test starts (bounded)."""
    assert shared_daemon.proc.poll() is None, "an earlier test ended the shared daemon"
    deadline = time.monotonic() + 15
    while (sessions := shared_daemon.admin("GET", "/sessions")[1]["sessions"]) != []:
        assert time.monotonic() < deadline, f"sessions outlived their linger: {sessions}"
        time.sleep(0.1)
    return shared_daemon
