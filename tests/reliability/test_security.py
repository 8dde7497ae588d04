"""Local security over a real daemon: the socket's permissions, the TCP token check, and no
secret ever leaving the daemon (log at DEBUG, /metrics, health, /sessions, ERROR frames, events).

Already covered elsewhere, not repeated here: symlinked / foreign / live socket paths and
SO_PEERCRED (tests/protocol/test_ingest.py), non-loopback TCP refused (tests/protocol and
tests/core/test_config.py), the admin token on mutating endpoints (tests/core/test_daemon.py).
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from bridge.client import BridgeClient, RemoteError
from bridge.media import AudioFormat
from bridge.sim.liveavatar import StandInOptions
from bridge.sim.stack import StandIns
from bridge.sim.stream import StreamStandIn
from tests.core.conftest import DaemonProc, start_daemon
from tests.reliability._support import Session, log_text, no_live_sessions, refused, tone
from tests.reliability.conftest import StartDaemon

TCP_TOKEN = "tcp-token-0123456789"


def tcp_address(log_lines: list[dict[str, object]]) -> tuple[str, int]:
    for line in log_lines:
        if line.get("event") == "ingest_listening" and "tcp" in line:
            host, _, port = str(line["tcp"]).rpartition(":")
            return host, int(port)
    raise AssertionError("the daemon logged no TCP listener")


@pytest.fixture
def tcp_daemon(tmp_path: Path) -> Iterator[DaemonProc]:
    d = start_daemon(
        tmp_path, "--tcp-port", "0", env={"AVATAR_BRIDGE_INGEST__TCP_TOKEN": TCP_TOKEN}
    )
    yield d
    if d.proc.poll() is None:
        d.proc.kill()
        d.proc.wait()


async def test_socket_mode_and_tcp_token_edge_cases(tcp_daemon: DaemonProc) -> None:
    # The daemon's own socket: 0660 in a 0750 directory it created.
    assert stat.S_IMODE(os.stat(tcp_daemon.socket).st_mode) == 0o660
    assert stat.S_IMODE(os.stat(tcp_daemon.socket.parent).st_mode) == 0o750
    address = tcp_address(tcp_daemon.log_lines())
    assert address[0] == "127.0.0.1"
    fmt = AudioFormat(16000, 1)
    wrong = [
        TCP_TOKEN[:-1],  # a prefix
        TCP_TOKEN + "0",  # longer
        TCP_TOKEN[:-1] + "X",  # last character differs
        "X" + TCP_TOKEN[1:],  # first character differs
        TCP_TOKEN.upper(),
        TCP_TOKEN + "\u00e9",  # non-ASCII must not crash the comparison
        TCP_TOKEN + "x" * 300,  # over 256 characters: still a wrong token (docs/protocol.md)
        "",
        None,
    ]
    for token in wrong:
        client = await BridgeClient.connect(address)
        try:
            with pytest.raises(RemoteError) as info:
                await asyncio.wait_for(client.hello("default:tcp", fmt, token=token), 10)
            # Every string, empty or long, reaches the comparison (§4.1): a wrong token.
            assert info.value.code == "unauthorized", (token, info.value.message)
        finally:
            await client.abort()
    async with await BridgeClient.connect(address) as client:
        ready = await asyncio.wait_for(client.hello("default:tcp", fmt, token=TCP_TOKEN), 10)
        assert ready.session_id
    assert TCP_TOKEN not in tcp_daemon.log_path.read_text()


# ---------------------------------------------------------------------------------------------
# Secret canaries: every key and token set to a recognisable value, then searched for.

CANARIES = {
    "LIVEAVATAR_API_KEY": "canaryLAkey7f3a9c11d2",
    "STREAM_API_KEY": "canaryStreamKey5b1e",
    "STREAM_API_SECRET": "canaryStreamSecret2d8f4a6b9c0e1f37",
    "AVATAR_BRIDGE_INGEST__TCP_TOKEN": "canaryIngestToken8e2c",
    "AVATAR_BRIDGE_ADMIN__TOKEN": "canaryAdminToken4d7a",
}


@pytest.fixture
async def sim() -> AsyncIterator[StandIns]:
    """The stand-ins, accepting only the canary credentials."""
    stack = StandIns(render_latency_s=0.2, liveavatar=StandInOptions())
    stack.liveavatar.options.api_keys = frozenset({CANARIES["LIVEAVATAR_API_KEY"]})
    stack.stream = StreamStandIn(
        api_key=CANARIES["STREAM_API_KEY"], api_secret=CANARIES["STREAM_API_SECRET"]
    )
    async with stack:
        yield stack


def leaks(text: str) -> list[str]:
    return [name for name, value in CANARIES.items() if value in text]


@pytest.mark.netns
async def test_no_secret_reaches_logs_metrics_health_or_clients(
    sim: StandIns, start_daemon: StartDaemon
) -> None:
    env = {**sim.daemon_env(), **CANARIES}
    daemon = await start_daemon("--log-level", "DEBUG", "--tcp-port", "0", env=env)
    seen: list[str] = []  # everything a client or an operator got to see
    s = await Session.open(daemon, "canary")
    for path in ("/healthz", "/readyz", "/sessions", f"/sessions/{s.la_session_id}", "/metrics"):
        status, body = await asyncio.to_thread(daemon.admin, "GET", path)
        seen.append(f"{path} {status} {json.dumps(body) if not isinstance(body, str) else body}")
    await s.speak(tone(1.0))
    # Error paths: a refused TCP client, a refused LiveAvatar call, an unauthorised admin call.
    address = tcp_address(daemon.log_events())
    bad = await BridgeClient.connect(address)
    with pytest.raises(RemoteError) as info:
        await asyncio.wait_for(bad.hello("default:x", AudioFormat(16000, 1), token="nope"), 10)
    await bad.abort()
    seen.append(f"{info.value.code} {info.value.message}")
    sim.liveavatar.faults.token_status = 401
    err = await refused(daemon, "canary-401")
    seen.append(f"{err.code} {err.message}")
    sim.liveavatar.faults.token_status = None
    status, body = await asyncio.to_thread(daemon.admin, "POST", "/drain")
    assert status == 401
    seen.append(str(body))
    seen += [json.dumps({"event": e.event, **e.fields}) for e in s.events]
    seen += [f"{e.code} {e.message}" for e in s.errors]
    await s.close()
    assert await daemon.stop() == 0
    await no_live_sessions(sim.liveavatar)
    log = log_text(daemon)
    assert '"level": "debug"' in log, "the run was not at DEBUG"
    assert leaks(log) == [], "a secret is in the daemon log"
    for text in seen:
        assert leaks(text) == [], text[:300]
