"""The daemon as a user meets it: a subprocess, its socket, its CLI and its admin API (dry run)."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import time
import wave
from pathlib import Path

import numpy as np
import pytest

from bridge.client import BridgeClient, RemoteError, stream_pcm_realtime
from bridge.media import AudioFormat
from bridge.protocol import Error, EventMsg
from tests.core.conftest import BIN, DaemonProc, start_daemon

FMT = AudioFormat(16000, 1)


def tone(seconds: float, fmt: AudioFormat = FMT) -> bytes:
    t = np.arange(int(seconds * fmt.sample_rate)) / fmt.sample_rate
    return (np.sin(2 * np.pi * 440 * t) * 8000).astype("<i2").tobytes()


async def collect(client: BridgeClient, until: str, limit_s: float = 10) -> list[EventMsg | Error]:
    seen: list[EventMsg | Error] = []
    async with asyncio.timeout(limit_s):
        async for message in client.messages():
            seen.append(message)
            if isinstance(message, EventMsg) and message.event == until:
                break
    return seen


def names(messages: list[EventMsg | Error]) -> list[str]:
    return [m.event if isinstance(m, EventMsg) else f"ERROR:{m.code}" for m in messages]


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("LIVEAVATAR_", "STREAM_", "AVATAR_BRIDGE_"))
    }
    base.update(env or {})
    return subprocess.run(
        [str(BIN), *args], capture_output=True, text=True, timeout=timeout, env=base
    )


# ----- CLI -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cmd", [[], ["run"], ["check"], ["say"], ["sessions"], ["health"], ["drain"], ["demo"]]
)
def test_help_everywhere(cmd: list[str]) -> None:
    done = run_cli(*cmd, "--help")
    assert done.returncode == 0, done.stderr
    assert "usage: avatar-bridge" in done.stdout


def test_version() -> None:
    from bridge import __version__

    done = run_cli("--version")
    assert done.stdout.strip() == f"avatar-bridge {__version__}"


def test_check_masks_secrets_and_reports_problems() -> None:
    env = {
        "LIVEAVATAR_API_KEY": "canary-la-0001",
        "STREAM_API_KEY": "canary-sk-0002",
        "STREAM_API_SECRET": "canary-ss-0003",
    }
    done = run_cli("check", env=env)
    assert done.returncode == 0, done.stderr
    assert '"api_key": "***"' in done.stdout
    assert "canary" not in done.stdout + done.stderr
    bad = run_cli("check", "--set", "output.fps=0", "--set", "liveavatar.video_encoding=AV1")
    assert bad.returncode == 2
    problems = [line for line in bad.stderr.splitlines() if line.startswith("  - ")]
    assert any("output.fps" in p for p in problems)
    assert any("liveavatar.video_encoding" in p for p in problems)
    missing = run_cli("check")
    assert missing.returncode == 2 and "LIVEAVATAR_API_KEY" in missing.stderr


def test_say_streams_a_wav_and_prints_events(daemon: DaemonProc, tmp_path: Path) -> None:
    wav = tmp_path / "hello.wav"
    with wave.open(str(wav), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(22050)
        w.writeframes(tone(1.0, AudioFormat(22050, 1)))
    done = run_cli(
        "say",
        str(wav),
        "--call",
        "default:say-test",
        "--socket",
        str(daemon.socket),
        "--wait",
        "10",
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("READY ")
    assert any('"event": "speak_started"' in line for line in lines)
    assert any('"event": "speak_ended"' in line for line in lines)


def test_say_exits_non_zero_on_error(daemon: DaemonProc, tmp_path: Path) -> None:
    raw = tmp_path / "a.pcm"
    raw.write_bytes(tone(0.2))
    done = run_cli(
        "say", str(raw), "--rate", "96000", "--call", "default:x", "--socket", str(daemon.socket)
    )
    assert done.returncode == 1
    assert "ERROR" in done.stdout and "unsupported_format" in done.stdout
    gone = run_cli("say", str(raw), "--call", "default:x", "--socket", str(daemon.socket) + ".nope")
    assert gone.returncode == 2


# ----- sessions over the socket --------------------------------------------------------------


async def test_turn_marks_and_events_in_order(daemon: DaemonProc) -> None:
    async with await BridgeClient.connect(daemon.socket) as client:
        ready = await client.hello("default:marks", FMT)
        assert ready.session_id and ready.session_key and not ready.resumed
        await client.send_audio(tone(0.3))
        await client.mark("first")
        await client.send_audio(tone(0.3))
        await client.mark("second")
        await client.end_turn()
        seen = await collect(client, "speak_ended")
        order = [n for n in names(seen) if n in ("speak_started", "mark", "speak_ended")]
        assert order == ["speak_started", "mark", "mark", "speak_ended"]
        marks = [m.fields["name"] for m in seen if isinstance(m, EventMsg) and m.event == "mark"]
        assert marks == ["first", "second"]


async def test_interrupt_clears_marks_and_ends_speech(daemon: DaemonProc) -> None:
    async with await BridgeClient.connect(daemon.socket) as client:
        await client.hello("default:barge", FMT)
        await client.send_audio(tone(1.5))
        await client.mark("never-reached")
        await client.wait_for_event("speak_started")
        t0 = time.monotonic()
        await client.interrupt()
        seen = await collect(client, "speak_ended", limit_s=5)
        assert time.monotonic() - t0 < 1.0  # not after the 1.5 s of queued audio
        ended = next(m for m in seen if isinstance(m, EventMsg) and m.event == "speak_ended")
        assert ended.fields.get("interrupted") is True
        cleared = [m for m in seen if isinstance(m, EventMsg) and m.event == "mark"]
        assert cleared and cleared[0].fields == {"name": "never-reached", "cleared": True}


async def test_backpressure_blocks_a_fast_writer(tmp_path: Path) -> None:
    d = start_daemon(tmp_path, "--set", "limits.uplink_queue_ms=200")
    fmt = AudioFormat(48000, 2)  # 192 kB/s: 10 s is far more than every buffer on the way
    try:
        async with await BridgeClient.connect(d.socket) as client:
            await client.hello("default:fast", fmt)
            # A small send buffer so the kernel cannot hide the backpressure in its own memory.
            sock = client._writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32 * 1024)

            async def flood() -> None:
                for _ in range(40):  # 10 s of audio, as fast as the socket lets us
                    await client.send_audio(tone(0.5, fmt))

            writer = asyncio.create_task(flood())
            await asyncio.sleep(1.5)
            # Unthrottled, the writer would have finished in milliseconds; it is held back.
            assert not writer.done()
            _, body = await asyncio.to_thread(d.admin, "GET", "/sessions")
            (session,) = body["sessions"]
            # The daemon took only what real-time playout and its bounded buffers allow.
            assert session["stats"]["audio_in_s"] < 8.0
            assert session["uplink_buffered_ms"] <= 200 + 250
            writer.cancel()
            await client.abort()
    finally:
        assert d.terminate() == 0


async def test_reattach_within_linger_and_not_after(daemon: DaemonProc) -> None:
    client = await BridgeClient.connect(daemon.socket)
    ready = await client.hello("default:reattach", FMT)
    await client.abort()  # vanish without CLOSE
    async with await BridgeClient.connect(daemon.socket) as again:
        resumed = await again.hello("default:reattach", FMT, session_key=ready.session_key)
        assert resumed.resumed and resumed.session_id == ready.session_id
        await again.abort()
    # linger_s=2 in the fixture: the session goes once it has lingered (bounded wait).
    deadline = time.monotonic() + 15
    while daemon.admin("GET", "/sessions")[1]["sessions"]:
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    _status, body = daemon.admin("GET", "/sessions")
    assert body["sessions"] == []
    async with await BridgeClient.connect(daemon.socket) as late:
        with pytest.raises(RemoteError) as info:
            await late.hello("default:reattach", FMT, session_key=ready.session_key)
        assert info.value.code == "unknown_session"


async def test_admission_limit_refuses_only_the_extra_client(daemon: DaemonProc) -> None:
    clients = [await BridgeClient.connect(daemon.socket) for _ in range(3)]
    try:
        for i, c in enumerate(clients):
            await c.hello(f"default:busy-{i}", FMT)
        status, body = daemon.admin("GET", "/readyz")
        assert status == 503 and body["reason"] == "full"
        async with await BridgeClient.connect(daemon.socket) as extra:
            with pytest.raises(RemoteError) as info:
                await extra.hello("default:busy-extra", FMT)
            assert info.value.code == "busy" and info.value.fatal
        # The admitted ones are undisturbed.
        for c in clients:
            assert await c.ping() >= 0
            await c.send_audio(tone(0.05))
    finally:
        for c in clients:
            await c.close()


# ----- admin API -------------------------------------------------------------------------------


async def test_admin_endpoints(daemon: DaemonProc) -> None:
    assert daemon.admin("GET", "/healthz")[0] == 200
    status, ready = daemon.admin("GET", "/readyz")
    assert status == 200 and ready["ready"] is True
    async with await BridgeClient.connect(daemon.socket) as client:
        r = await client.hello("default:admin", FMT)
        await client.send_audio(tone(0.2))
        await client.ping()
        status, body = daemon.admin("GET", "/sessions")
        (s,) = body["sessions"]
        assert s["id"] == r.session_id and s["call"] == {"type": "default", "id": "admin"}
        assert s["attached"] is True and s["stats"]["audio_in_s"] > 0.19
        status, metrics = daemon.admin("GET", "/metrics")
        assert "bridge_sessions_active 1.0" in metrics
        assert "bridge_audio_in_seconds_total" in metrics
        assert daemon.admin("DELETE", "/sessions/nope")[0] == 404
        status, _ = daemon.admin("DELETE", f"/sessions/{r.session_id}")
        assert status == 200
        states = []
        async with asyncio.timeout(10):
            async for m in client.messages():
                if isinstance(m, EventMsg) and m.event == "state":
                    states.append(m.fields["state"])
        assert states[-1] == "closed"  # then the daemon closed the connection
    assert daemon.admin("GET", "/sessions")[1]["sessions"] == []


def test_admin_token_guards_mutations(tmp_path: Path) -> None:
    d = start_daemon(tmp_path, "--set", "admin.token=canary-admin-token")
    try:
        assert d.admin("POST", "/drain")[0] == 401
        assert d.admin("POST", "/drain", token="wrong")[0] == 401
        assert d.admin("GET", "/sessions")[0] == 200
        assert d.admin("POST", "/drain", token="canary-admin-token")[0] == 200
        assert d.admin("GET", "/readyz")[1]["reason"] == "draining"
    finally:
        assert d.terminate() == 0
    assert "canary-admin-token" not in d.log_path.read_text()


# ----- shutdown --------------------------------------------------------------------------------


async def test_sigterm_drains_then_exits_zero(tmp_path: Path) -> None:
    d = start_daemon(tmp_path, "--set", "limits.drain_timeout_s=10")
    async with await BridgeClient.connect(d.socket) as client:
        await client.hello("default:drain", FMT)
        sender = asyncio.create_task(stream_pcm_realtime(client, tone(1.0), FMT))
        await asyncio.sleep(0.2)
        d.proc.send_signal(15)
        await client.wait_for_event("draining")
        state = await client.wait_for_event("state")
        assert state.fields == {"state": "draining"}
        status, body = await asyncio.to_thread(d.admin, "GET", "/readyz")
        assert status == 503 and body["reason"] == "draining"
        # A newcomer is refused (the listener is closed or it gets `draining`).
        try:
            async with await BridgeClient.connect(d.socket) as late:
                with pytest.raises(RemoteError) as info:
                    await late.hello("default:late", FMT)
                assert info.value.code == "draining"
        except (ConnectionRefusedError, FileNotFoundError):
            pass
        await sender  # the running session finishes its turn undisturbed
        await client.end_turn()
        await client.wait_for_event("speak_ended")
    rc = await asyncio.to_thread(d.proc.wait, 10)
    assert rc == 0
    assert not d.socket.exists()


def test_sigterm_with_a_stuck_client_closes_after_the_drain_timeout(tmp_path: Path) -> None:
    d = start_daemon(tmp_path, "--set", "limits.drain_timeout_s=1")

    async def hold() -> int:
        async with await BridgeClient.connect(d.socket) as client:
            await client.hello("default:stuck", FMT)
            t0 = time.monotonic()
            d.proc.send_signal(15)
            rc = await asyncio.to_thread(d.proc.wait, 15)
            assert time.monotonic() - t0 < 8
            return rc

    assert asyncio.run(hold()) == 0
    events = [line.get("event") for line in d.log_lines()]
    assert "drain_timeout" in events


def test_sessions_cli_lists_and_stops(daemon: DaemonProc) -> None:
    async def scenario() -> None:
        async with await BridgeClient.connect(daemon.socket) as client:
            r = await client.hello("default:cli", FMT)
            admin = f"http://127.0.0.1:{daemon.admin_port}"
            listed = await asyncio.to_thread(run_cli, "sessions", "--admin", admin)
            assert r.session_id in listed.stdout and "default:cli" in listed.stdout
            stopped = await asyncio.to_thread(
                run_cli, "sessions", "stop", r.session_id, "--admin", admin
            )
            assert stopped.returncode == 0
            health = await asyncio.to_thread(run_cli, "health", "--admin", admin)
            assert health.returncode == 0

    asyncio.run(scenario())
