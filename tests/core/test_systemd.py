"""sd_notify and socket activation against real sockets."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from bridge.systemd import Notifier, listen_fds, watchdog_interval_s


def test_notify_reaches_a_real_datagram_socket(tmp_path: Path) -> None:
    path = tmp_path / "notify.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(path))
    server.settimeout(2)
    notifier = Notifier(str(path))
    try:
        assert notifier.ready("0 sessions")
        assert server.recv(4096) == b"READY=1\nSTATUS=0 sessions"
        assert notifier.watchdog()
        assert server.recv(4096) == b"WATCHDOG=1"
        assert notifier.stopping("draining")
        assert server.recv(4096) == b"STOPPING=1\nSTATUS=draining"
    finally:
        notifier.close()
        server.close()


def test_abstract_namespace_address() -> None:
    name = f"avatar-bridge-test-{os.getpid()}"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind("\0" + name)
    server.settimeout(2)
    notifier = Notifier("@" + name)
    try:
        assert notifier.status("hi")
        assert server.recv(100) == b"STATUS=hi"
    finally:
        notifier.close()
        server.close()


def test_without_notify_socket_it_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notifier = Notifier()
    assert not notifier.enabled
    assert not notifier.ready("x")


def test_watchdog_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "4000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert watchdog_interval_s() == 2.0
    monkeypatch.setenv("WATCHDOG_PID", "1")  # meant for another process
    assert watchdog_interval_s() is None


def test_listen_fds_only_for_this_pid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LISTEN_PID", "1")
    monkeypatch.setenv("LISTEN_FDS", "1")
    assert listen_fds() == []
    assert "LISTEN_FDS" not in os.environ  # never leaks to children
    monkeypatch.setenv("LISTEN_PID", str(os.getpid()))
    monkeypatch.setenv("LISTEN_FDS", "2")
    assert listen_fds(unset_environment=False) == [3, 4]
