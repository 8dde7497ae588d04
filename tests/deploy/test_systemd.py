"""systemd units and the daemon's side of the systemd protocols.

No systemd instance runs here, so the units are checked with `systemd-analyze verify` and
`systemd-analyze security --offline=yes`, and the daemon is run the way systemd would run it: a
real NOTIFY_SOCKET it reports to, WATCHDOG_USEC, and an inherited listening socket (LISTEN_FDS).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.config import IngestConfig, LimitsConfig, Settings
from bridge.media import AudioFormat
from bridge.protocol import CallRef, ClientProtocol, Hello, Ready
from bridge.sessions import ABANDON_GRACE_S
from tests.deploy.files import AVATAR_BRIDGE, DEPLOY, parse_unit, seconds

UNITS = DEPLOY / "systemd"
SERVICE = UNITS / "avatar-bridge.service"
SOCKET = UNITS / "avatar-bridge.socket"
DRAIN_DEFAULT = LimitsConfig.model_fields["drain_timeout_s"].default
# The longest stop: the drain, the bounded close of the last sessions, the unwinding of what
# that close abandoned (bridge/sessions.py).
STOP_WORST_S = (
    DRAIN_DEFAULT + LimitsConfig.model_fields["close_timeout_s"].default + ABANDON_GRACE_S
)
EXPOSURE_LIMIT = 2.0

needs_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed"
)


@pytest.fixture
def units_for_here(tmp_path: Path) -> Path:
    """The units with ExecStart pointing at this venv's binary (verify checks it exists)."""
    text = SERVICE.read_text()
    assert "ExecStart=/usr/bin/avatar-bridge run" in text
    (tmp_path / SERVICE.name).write_text(text.replace("/usr/bin/avatar-bridge", str(AVATAR_BRIDGE)))
    shutil.copy(SOCKET, tmp_path / SOCKET.name)
    return tmp_path


# ----- unit files ---------------------------------------------------------------------------


@needs_analyze
def test_units_pass_systemd_analyze_verify(units_for_here: Path) -> None:
    proc = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", SERVICE.name, SOCKET.name],
        cwd=units_for_here,
        capture_output=True,
        text=True,
        timeout=60,
    )
    # verify only warns (exit 0) on unknown or misspelled directives: any output is a failure.
    ours = [line for line in (proc.stdout + proc.stderr).splitlines() if "avatar-bridge" in line]
    assert proc.returncode == 0 and not ours, proc.stdout + proc.stderr


@needs_analyze
def test_verify_would_catch_a_bad_directive(units_for_here: Path) -> None:
    # The check above is only worth something if verify reports mistakes in this environment.
    unit = units_for_here / SERVICE.name
    unit.write_text(unit.read_text().replace("NoNewPrivileges=yes", "NoNewPrivilege=yes"))
    proc = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", SERVICE.name],
        cwd=units_for_here,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "NoNewPrivilege" in proc.stdout + proc.stderr


@needs_analyze
def test_security_exposure_score(units_for_here: Path) -> None:
    proc = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--no-pager", SERVICE.name],
        cwd=units_for_here,
        capture_output=True,
        text=True,
        timeout=60,
    )
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", proc.stdout)
    assert m, proc.stdout + proc.stderr
    score = float(m.group(1))
    print(f"systemd-analyze security exposure: {score} {m.group(2)}")
    failing = [line.split()[1] for line in proc.stdout.splitlines() if line.startswith("✗")]
    print("not set:", " ".join(failing))
    assert score <= EXPOSURE_LIMIT
    # Left out on purpose (docs/deployment.md): each would break or risk WebRTC.
    assert "MemoryDenyWriteExecute=" in failing
    assert "PrivateNetwork=" in failing


def test_service_directives() -> None:
    svc = parse_unit(SERVICE)["Service"]

    def one(key: str) -> str:
        assert len(svc.get(key, [])) == 1, f"{key} must be set exactly once"
        return svc[key][0]

    assert one("Type") == "notify"
    assert one("NotifyAccess") == "main"
    assert 5 <= seconds(one("WatchdogSec")) <= 60
    # The stop timeout leaves room for the whole drain plus closing the last sessions, with a
    # margin for the listeners' close and a loaded machine.
    assert seconds(one("TimeoutStopSec")) >= STOP_WORST_S + 10
    assert one("KillSignal") == "SIGTERM"
    assert one("RuntimeDirectory") == "avatar-bridge"
    assert one("RuntimeDirectoryMode") == "0750"
    assert one("StateDirectory") == "avatar-bridge"
    socket_default = IngestConfig.model_fields["socket_path"].default
    assert str(socket_default).startswith("/run/avatar-bridge/")
    assert Settings.model_fields["state_dir"].default == Path("/var/lib/avatar-bridge")
    creds = {v.split(":")[0] for v in svc["LoadCredential"]}
    assert {"liveavatar_api_key", "stream_api_key", "stream_api_secret"} <= creds
    assert one("User") == one("Group") == "avatar-bridge"
    families = one("RestrictAddressFamilies").split()
    assert families == ["AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"]
    # The allow-list, then the groups taken out of it (each line narrows the set further).
    assert svc["SystemCallFilter"] == ["@system-service", "~@privileged @resources"]
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "PrivateDevices"):
        assert one(key) == "yes"
    assert one("ProtectSystem") == "strict"
    assert "MemoryDenyWriteExecute" not in svc

    sock = parse_unit(SOCKET)["Socket"]
    assert sock["ListenStream"] == [str(socket_default)]
    assert sock["SocketMode"] == ["0660"]
    assert sock["SocketGroup"] == ["avatar-bridge"]
    assert sock["Service"] == ["avatar-bridge.service"]


# ----- the daemon under the systemd protocols -----------------------------------------------


class NotifyReceiver:
    """The service manager's end of NOTIFY_SOCKET: a bound datagram socket."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[dict[str, str]] = []

    def wait_for(self, key: str, value: str | None = None, timeout: float = 20.0) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        for msg in self.messages:
            if key in msg and (value is None or msg[key] == value):
                return msg
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                break
            msg = _parse_notify(data)
            self.messages.append(msg)
            if key in msg and (value is None or msg[key] == value):
                return msg
        raise AssertionError(f"no {key} within {timeout} s; got {self.messages}")

    def collect(self, duration: float) -> None:
        """Receive whatever arrives for ``duration`` seconds."""
        deadline = time.monotonic() + duration
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                return
            self.messages.append(_parse_notify(data))

    def count(self, key: str) -> int:
        return sum(1 for m in self.messages if key in m)

    def close(self) -> None:
        self.sock.close()


def _parse_notify(data: bytes) -> dict[str, str]:
    return dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifyReceiver]:
    receiver = NotifyReceiver(tmp_path / "notify")
    yield receiver
    receiver.close()


def _hello_ready(path: Path, timeout: float = 10.0) -> Ready:
    proto = ClientProtocol()
    hello = Hello(call=CallRef("default", "deploy-test"), audio=AudioFormat(24000, 1))
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        s.sendall(proto.send_hello(hello))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            data = s.recv(65536)
            assert data, "the daemon closed the connection before READY"
            proto.receive_data(data)
            for event in proto.events_received():
                assert isinstance(event, Ready), f"expected READY, got {event!r}"
                return event
    raise AssertionError("no READY")


def _ready_log(stderr: Path, timeout: float = 20.0) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in stderr.read_text().splitlines():
            if line.startswith("{") and '"ready"' in line:
                record = json.loads(line)
                if record.get("event") == "ready":
                    return dict(record)
        time.sleep(0.1)
    raise AssertionError(f"no 'ready' log line:\n{stderr.read_text()[-2000:]}")


@pytest.mark.timeout(90)
def test_daemon_speaks_notify_watchdog_and_socket_activation(
    tmp_path: Path, notify: NotifyReceiver
) -> None:
    # The listening socket systemd would own (avatar-bridge.socket), handed over as fd 3.
    listen_path = tmp_path / "bridge.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(listen_path))
    listener.listen(16)
    own_path = tmp_path / "not-bound.sock"  # what the daemon would bind without LISTEN_FDS

    env = {k: v for k, v in os.environ.items() if not k.startswith(("AVATAR_BRIDGE_", "LISTEN_"))}
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "CREDENTIALS_DIRECTORY"):
        env.pop(name, None)
    env.update(
        NOTIFY_SOCKET=str(notify.path),
        WATCHDOG_USEC="400000",  # pings every 0.2 s
        LISTEN_FDS="1",
        LISTEN_FDNAMES="bridge.sock",
        AVATAR_BRIDGE_CONFIG=str(tmp_path / "none.toml"),
    )
    (tmp_path / "none.toml").write_text("")
    stderr_path = tmp_path / "stderr.log"
    fd = listener.fileno()
    # LISTEN_PID must be the daemon's own pid: the wrapper sets it to $$ and execs (same pid),
    # moving the socket to fd 3 as systemd does.
    wrapper = f'export LISTEN_PID=$$ WATCHDOG_PID=$$; exec "$@" 3<&{fd} {fd}<&-'
    cmd = [
        "bash",
        "-c",
        wrapper,
        "bash",
        str(AVATAR_BRIDGE),
        "run",
        "--dry-run",
        "--socket",
        str(own_path),
        "--admin-port",
        "0",
        "--state-dir",
        str(tmp_path / "state"),
        "--log-format",
        "json",
        "--set",
        "limits.drain_timeout_s=3",
    ]
    with stderr_path.open("w") as err:
        proc = subprocess.Popen(cmd, env=env, pass_fds=(fd,), stdout=subprocess.DEVNULL, stderr=err)
    listener.close()  # the daemon holds the only copy now, as under systemd
    try:
        ready = notify.wait_for("READY", "1")
        assert "STATUS" in ready
        record = _ready_log(stderr_path)
        assert record["inherited_fds"] == 1
        assert not own_path.exists(), "the daemon bound its own socket despite LISTEN_FDS"

        # Watchdog pings keep coming from the event loop.
        notify.wait_for("WATCHDOG", "1", timeout=5)
        before = notify.count("WATCHDOG")
        notify.collect(1.5)
        assert notify.count("WATCHDOG") >= before + 3, notify.messages

        # A client reaches the daemon through the inherited socket.
        session = _hello_ready(listen_path)
        assert session.session_id

        # The container/Kubernetes health probe works against this daemon.
        admin = f"http://127.0.0.1:{record['admin_port']}"
        health = subprocess.run(
            [str(AVATAR_BRIDGE), "health", "--ready", "--admin", admin],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert health.returncode == 0, health.stdout + health.stderr

        proc.send_signal(signal.SIGTERM)
        stopping = notify.wait_for("STOPPING", "1", timeout=10)
        assert "STATUS" in stopping
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    log_text = stderr_path.read_text()
    assert "Traceback" not in log_text, log_text[-3000:]
