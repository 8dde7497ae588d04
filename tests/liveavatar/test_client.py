"""The LiveAvatar client against the stand-in, over real sockets (no LiveKit needed)."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from bridge.errors import BridgeError, ErrorCode
from bridge.liveavatar.api import SANDBOX_AVATAR_ID, LiveAvatarAPI
from bridge.liveavatar.ledger import SessionLedger
from bridge.liveavatar.resample import UplinkResampler
from bridge.media import AudioChunk, AudioFormat
from bridge.sim import marks
from bridge.sim.liveavatar import LiveAvatarStandIn

from .conftest import API_KEY, MakeUplink

FMT24 = AudioFormat(24_000, 1)


async def until(pred: Callable[[], bool], wait_s: float = 5.0) -> None:
    deadline = time.monotonic() + wait_s
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


def tone(ms: int, fmt: AudioFormat = FMT24, freq: float = 440.0) -> AudioChunk:
    n = fmt.sample_rate * ms // 1000
    wave = (np.sin(2 * np.pi * freq * np.arange(n) / fmt.sample_rate) * 8000).astype(np.int16)
    return AudioChunk(np.repeat(wave, fmt.channels), fmt)


def speak_messages(standin: LiveAvatarStandIn, sid: str) -> list[dict[str, object]]:
    return [m for m in standin.sessions[sid].messages if m["type"] == "agent.speak"]


async def test_happy_path(standin: LiveAvatarStandIn, make_uplink: MakeUplink) -> None:
    h = make_uplink(first_chunk_ms=600)
    room = await h.uplink.start()
    sid = room.session_id
    assert standin.live_sessions == [sid]
    assert room.ws_url and room.livekit_url and room.livekit_token
    assert h.named("liveavatar_session") == [{"session_id": sid}]
    # 2.5 s of audio in 100 ms pieces -> chunks of 600 ms, 1 s, then the 900 ms tail.
    for _ in range(25):
        await h.uplink.send_audio(tone(100))
    await h.uplink.end_turn()
    await until(lambda: bool(h.named("speak_ended")), wait_s=8)
    speaks = speak_messages(standin, sid)
    sizes = [int(m["audio_len"]) * 3 // 4 for m in speaks]  # type: ignore[call-overload]
    assert sizes == [600 * 48, 1000 * 48, 900 * 48]
    ids = {m["event_id"] for m in speaks}
    assert len(ids) == 1
    ends = [m for m in standin.sessions[sid].messages if m["type"] == "agent.speak_end"]
    assert [m["event_id"] for m in ends] == list(ids)
    assert h.named("speak_started") == [{"event_id": next(iter(ids))}]
    assert {"state": "talking"} in h.named("avatar_state")
    assert h.named("avatar_state")[-1] == {"state": "idle"}
    # Nothing reached the server before it said connected.
    assert standin.sessions[sid].dropped_before_connected == 0
    # A second turn gets a new event_id.
    await h.uplink.send_audio(tone(200))
    await h.uplink.end_turn()
    await until(lambda: len(h.named("speak_ended")) == 2, wait_s=8)
    assert len({m["event_id"] for m in speak_messages(standin, sid)}) == 2
    await h.uplink.aclose()
    assert standin.live_sessions == []
    assert standin.stop_calls == [(sid, "USER_CLOSED")]
    assert h.failures == []


async def test_connected_gate_holds_audio(
    standin: LiveAvatarStandIn, make_uplink: MakeUplink
) -> None:
    standin.faults.connect_delay_s = 0.5
    h = make_uplink()
    room = await h.uplink.start()
    await h.uplink.send_audio(tone(700))  # one chunk ready before connected
    await asyncio.sleep(0.2)
    session = standin.sessions[room.session_id]
    assert speak_messages(standin, room.session_id) == []
    await until(lambda: len(speak_messages(standin, room.session_id)) == 1)
    assert session.dropped_before_connected == 0


async def test_wrong_api_key(http: object, standin: LiveAvatarStandIn, tmp_path: Path) -> None:
    import aiohttp

    assert isinstance(http, aiohttp.ClientSession)
    api = LiveAvatarAPI(http, standin.base_url, "sk-wrong", 5.0)
    from bridge.liveavatar.uplink import LiveAvatarOptions, LiveAvatarUplink

    uplink = LiveAvatarUplink(
        api,
        SessionLedger(tmp_path),
        LiveAvatarOptions(avatar_id="0f9e8d7c-6b5a-4c3d-9e2f-1a2b3c4d5e6f", is_sandbox=False),
        FMT24,
        lambda *_a, **_k: None,
        lambda _e: None,
    )
    with pytest.raises(BridgeError) as info:
        await uplink.start()
    assert info.value.code == ErrorCode.LIVEAVATAR_AUTH
    assert "LIVEAVATAR_API_KEY" in info.value.message
    assert standin.sessions == {}
    await uplink.aclose()


async def test_sandbox_mismatch(standin: LiveAvatarStandIn, make_uplink: MakeUplink) -> None:
    h = make_uplink(is_sandbox=True)
    with pytest.raises(BridgeError) as info:
        await h.uplink.start()
    assert info.value.code == ErrorCode.LIVEAVATAR_SANDBOX
    assert SANDBOX_AVATAR_ID in info.value.message
    # With the sandbox avatar the sandbox session works and is capped.
    ok = make_uplink(is_sandbox=True, avatar_id=SANDBOX_AVATAR_ID, max_session_duration=600)
    room = await ok.uplink.start()
    assert standin.sessions[room.session_id].max_duration_s == 60


async def test_no_credits_and_validation(
    standin: LiveAvatarStandIn, make_uplink: MakeUplink
) -> None:
    standin.faults.no_credits = True
    with pytest.raises(BridgeError) as info:
        await make_uplink().uplink.start()
    assert info.value.code == ErrorCode.LIVEAVATAR_CREDITS
    standin.faults.no_credits = False
    with pytest.raises(BridgeError) as info:
        await make_uplink(avatar_id="not-a-uuid").uplink.start()
    assert info.value.code == ErrorCode.LIVEAVATAR_REJECTED
    assert "avatar_id" in info.value.message
    standin.faults.token_status = 503
    with pytest.raises(BridgeError) as info:
        await make_uplink().uplink.start()
    assert info.value.code == ErrorCode.LIVEAVATAR_UNAVAILABLE
    # /token is never retried: one request per attempt, and no session was minted.
    assert standin.requests["token"] == 3
    assert standin.sessions == {}


async def test_start_retried_once_then_stopped(
    standin: LiveAvatarStandIn, make_uplink: MakeUplink, ledger: SessionLedger
) -> None:
    standin.faults.start_status, standin.faults.start_failures = 502, 1
    h = make_uplink()
    room = await h.uplink.start()
    assert standin.live_sessions == [room.session_id]
    await h.uplink.aclose()
    standin.faults.start_status, standin.faults.start_failures = 500, 0
    bad = make_uplink()
    with pytest.raises(BridgeError) as info:
        await bad.uplink.start()
    assert info.value.code == ErrorCode.LIVEAVATAR_UNAVAILABLE
    # The minted-but-failed session was stopped and left nothing in the ledger.
    assert bad.uplink.session_id is not None
    assert (bad.uplink.session_id, "SERVER_ERROR") in standin.stop_calls
    assert ledger.pending() == []


async def test_interrupt_drops_rest(standin: LiveAvatarStandIn, make_uplink: MakeUplink) -> None:
    standin.faults.connect_delay_s = 0.3  # keep audio queued locally so there is a rest to drop
    h = make_uplink(queue_ms=5000)
    room = await h.uplink.start()
    for _ in range(30):
        await h.uplink.send_audio(tone(100))
    assert h.uplink.buffered_ms() == pytest.approx(3000)
    await h.uplink.interrupt()
    assert h.uplink.buffered_ms() == 0
    await h.uplink.end_turn()  # no turn any more: nothing to end
    await until(lambda: bool(standin.sessions[room.session_id].messages))
    await asyncio.sleep(0.2)
    kinds = [m["type"] for m in standin.sessions[room.session_id].messages]
    assert kinds == ["agent.interrupt"]
    # The next turn starts fresh with a new id.
    await h.uplink.send_audio(tone(700))
    await until(lambda: len(speak_messages(standin, room.session_id)) == 1)


async def test_interrupt_mid_turn_reaches_renderer(
    standin: LiveAvatarStandIn, make_uplink: MakeUplink
) -> None:
    h = make_uplink()
    room = await h.uplink.start()
    for _ in range(20):
        await h.uplink.send_audio(tone(100))
    await until(lambda: bool(h.named("speak_started")))
    await h.uplink.interrupt()
    renderer = standin.sessions[room.session_id].renderer
    assert renderer is not None
    await until(lambda: renderer.state == "idle")
    assert h.named("speak_ended") == []  # interrupted, not finished


async def test_keep_alive_keeps_idle_session(
    standin: LiveAvatarStandIn, make_uplink: MakeUplink
) -> None:
    # Idle timeout is 1.5 s in the stand-in's scaled time.
    alive = make_uplink(keep_alive_s=0.3, max_session_duration=3600)
    quiet = make_uplink(keep_alive_s=3600)
    room_a = await alive.uplink.start()
    room_q = await quiet.uplink.start()
    # Until the idle cut has ended the quiet one (started after the kept one, so the kept one
    # went idle at least as long) and the kept one has sent its keep-alives: no longer.
    alive_messages = standin.sessions[room_a.session_id].messages
    await until(
        lambda: (
            room_q.session_id not in standin.live_sessions
            and [m["type"] for m in alive_messages].count("session.keep_alive") >= 5
        ),
        wait_s=15,
    )
    assert room_a.session_id in standin.live_sessions
    assert room_q.session_id not in standin.live_sessions
    assert standin.sessions[room_q.session_id].end_reason == "IDLE_TIMEOUT"
    await until(lambda: bool(quiet.failures))
    assert quiet.failures[0].code == ErrorCode.LIVEAVATAR_UNAVAILABLE
    assert alive.failures == []
    kinds = [m["type"] for m in standin.sessions[room_a.session_id].messages]
    assert kinds.count("session.keep_alive") >= 5


async def test_ws_drop_mid_turn_reconnects(
    standin: LiveAvatarStandIn, make_uplink: MakeUplink
) -> None:
    standin.faults.drop_ws_after = 3  # the third message of the first connection is lost
    h = make_uplink()
    room = await h.uplink.start()
    sent = 0
    for _ in range(40):
        chunk = tone(100)
        sent += len(chunk.samples) * 2
        await h.uplink.send_audio(chunk)
    await h.uplink.end_turn()
    await until(lambda: bool(h.named("speak_ended")), wait_s=10)
    session = standin.sessions[room.session_id]
    assert session.ws_connections == 2
    assert h.uplink.reconnects_used == 1
    renderer = session.renderer
    assert renderer is not None
    (event_id,) = renderer.received_bytes
    assert renderer.received_bytes[event_id] == sent
    assert h.failures == []


async def test_second_drop_fails_and_stops(
    standin: LiveAvatarStandIn, make_uplink: MakeUplink, ledger: SessionLedger
) -> None:
    h = make_uplink()
    room = await h.uplink.start()
    await until(lambda: h.uplink.connected)
    session = standin.sessions[room.session_id]
    for _ in range(2):
        await until(lambda: session.ws is not None and h.uplink.connected)
        assert session.ws is not None
        await session.ws.close(code=1011)
    await until(lambda: bool(h.failures))
    assert h.failures[0].code == ErrorCode.LIVEAVATAR_UNAVAILABLE
    await until(lambda: standin.live_sessions == [])
    await until(lambda: ledger.pending() == [])


async def test_never_connected_fails(standin: LiveAvatarStandIn, make_uplink: MakeUplink) -> None:
    standin.faults.never_connected = True
    h = make_uplink(ws_connect_gate_timeout_s=0.3)
    await h.uplink.start()
    await until(lambda: bool(h.failures))
    assert "connected" in h.failures[0].message
    await until(lambda: standin.live_sessions == [])


async def test_close_stops_with_retry_and_clears_ledger(
    standin: LiveAvatarStandIn, make_uplink: MakeUplink, ledger: SessionLedger
) -> None:
    standin.faults.refuse_stops = 2
    h = make_uplink()
    room = await h.uplink.start()
    assert [e.session_id for e in ledger.pending()] == [room.session_id]
    await asyncio.gather(h.uplink.aclose(), h.uplink.aclose())  # idempotent, concurrent
    assert standin.live_sessions == []
    assert ledger.pending() == []
    assert SessionLedger(ledger.path.parent).pending() == []  # durable
    await h.uplink.send_audio(tone(100))  # after close: dropped, no error


async def test_ledger_sweep_stops_leftovers(
    standin: LiveAvatarStandIn, api: LiveAvatarAPI, make_uplink: MakeUplink, tmp_path: Path
) -> None:
    # A "crashed" daemon: sessions started, never closed.
    rooms = [await make_uplink().uplink.start() for _ in range(2)]
    await SessionLedger(tmp_path).record("00000000-0000-4000-8000-000000000000")  # unknown
    assert len(standin.live_sessions) == 2
    restarted = SessionLedger(tmp_path)
    assert len(restarted.pending()) == 3
    standin.faults.refuse_stops = 1  # one transient failure: retried inside stop
    removed = await restarted.sweep(api)
    assert removed == 3
    assert standin.live_sessions == []
    assert restarted.pending() == []
    assert {(r.session_id, "SERVER_ERROR") for r in rooms} <= set(standin.stop_calls)


async def test_sweep_keeps_entries_when_unreachable(
    api: LiveAvatarAPI, tmp_path: Path, http: object
) -> None:
    import aiohttp

    assert isinstance(http, aiohttp.ClientSession)
    dead = LiveAvatarAPI(http, "http://127.0.0.1:9", API_KEY, 1.0, stop_attempts=2, backoff_s=0.01)
    ledger = SessionLedger(tmp_path)
    await ledger.record("11111111-1111-4111-8111-111111111111", "tok")
    assert await ledger.sweep(dead) == 0
    assert len(SessionLedger(tmp_path).pending()) == 1
    assert (tmp_path / "liveavatar-sessions.json").stat().st_mode & 0o777 == 0o600


async def test_resampled_uplink_from_48k_stereo(
    standin: LiveAvatarStandIn, make_uplink: MakeUplink
) -> None:
    fmt = AudioFormat(48_000, 2)
    h = make_uplink(fmt=fmt)
    room = await h.uplink.start()
    for _ in range(10):
        await h.uplink.send_audio(tone(100, fmt))
    await h.uplink.end_turn()
    await until(lambda: bool(h.named("speak_ended")), wait_s=8)
    renderer = standin.sessions[room.session_id].renderer
    assert renderer is not None
    (received,) = renderer.received_bytes.values()
    assert abs(received - 48_000) <= 48  # 1 s at 24 kHz mono s16, within a ms


@pytest.mark.parametrize("rate,channels", [(16_000, 1), (44_100, 2), (48_000, 1), (24_000, 1)])
def test_resampler_continuity(rate: int, channels: int) -> None:
    fmt = AudioFormat(rate, channels)
    n = rate  # 1 s
    t = np.arange(n) / rate
    wave = (np.sin(2 * np.pi * 440 * t) * 12000).astype(np.int16)
    pcm = np.repeat(wave, channels)
    one = UplinkResampler(fmt)
    whole = np.concatenate((one.process(pcm), one.flush()))
    chunked_rs = UplinkResampler(fmt)
    rng = np.random.default_rng(1)
    pieces, pos = [], 0
    while pos < n:
        step = int(rng.integers(1, rate // 25))
        pieces.append(chunked_rs.process(pcm[pos * channels : (pos + step) * channels]))
        pos += step
    pieces.append(chunked_rs.flush())
    chunked = np.concatenate(pieces)
    assert len(whole) == len(chunked)
    assert abs(len(whole) - 24_000) <= 2
    # Same filter state across joins: chunking changes nothing audible (no clicks).
    assert np.max(np.abs(whole.astype(np.int32) - chunked.astype(np.int32))) <= 2
    # And the output is a clean tone: no sample-to-sample jump beyond the sine's slope.
    slope = 2 * np.pi * 440 / 24_000 * 12000
    assert np.max(np.abs(np.diff(chunked[100:-100].astype(np.int32)))) <= slope * 1.1 + 2


def test_resampler_reset_drops_state() -> None:
    loud = np.full(4800, 20000, dtype=np.int16)
    silence = np.zeros(4800, dtype=np.int16)
    control = UplinkResampler(AudioFormat(48_000, 1))
    control.process(loud)
    tail = np.concatenate((control.process(silence), control.flush()))
    assert np.max(np.abs(tail)) > 10_000  # without reset the held-back loud audio comes out
    rs = UplinkResampler(AudioFormat(48_000, 1))
    rs.process(loud)
    rs.reset()
    out = np.concatenate((rs.process(silence), rs.flush()))
    assert np.max(np.abs(out)) <= 2


def test_beep_onsets_match_after_resampling() -> None:
    # The uplink resampler keeps beep onsets where they were (within 1 ms).
    beeps = marks.beep_train(48_000, 4, 250, 50)
    rs = UplinkResampler(AudioFormat(48_000, 1))
    out = np.concatenate((rs.process(beeps), rs.flush()))
    found = marks.onsets(out, 24_000)
    assert [round(i / 24) for i in found] == [0, 250, 500, 750]
    assert base64.b64encode(out.tobytes())  # sanity: bytes-able


async def test_retry_orphans_stops_only_what_its_owner_gave_up(
    standin: LiveAvatarStandIn, api: LiveAvatarAPI, make_uplink: MakeUplink, ledger: SessionLedger
) -> None:
    """Two sessions running; one's close fails to stop it (service refusing): only that one is
    an orphan, and the retry stops it without touching the session still in use."""
    busy, failing = make_uplink(), make_uplink()
    busy_room = await busy.uplink.start()
    room = await failing.uplink.start()
    standin.faults.refuse_stops = 1000
    await failing.uplink.aclose("USER_CLOSED")
    assert ledger.orphans == 1 and len(ledger.pending()) == 2
    assert await ledger.retry_orphans(api) == 0  # refused again: kept
    standin.faults.refuse_stops = 0
    assert await ledger.retry_orphans(api) == 1
    assert ledger.orphans == 0
    assert [e.session_id for e in ledger.pending()] == [busy_room.session_id]
    assert standin.live_sessions == [busy_room.session_id]
    assert (room.session_id, "SERVER_ERROR") in standin.stop_calls
