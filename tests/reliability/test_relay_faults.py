"""Stream and LiveKit faults under a real daemon on the encoded relay (the default media path; the
conftest pins transcode, the flag here overrides it): the SFU WebSocket dropped, the join denied,
send-video revoked and the video layer paused (video stops, audio goes on, video comes back on
a keyframe), LiveKit signalling dropped, the avatar leaving. Each ends with nothing billed.

The avatar publishes as LiveAvatar's does (the LiveKit SDK: libwebrtc simulcast RTP, forwarded by
the LiveKit stand-in's SFU), so the faults hit the relay on real RTP, not aiortc's."""

from __future__ import annotations

import asyncio

import pytest

from bridge.sim.stack import DaemonProcess, StandIns
from tests.reliability._support import (
    Session,
    fresh_frames,
    heard,
    log_text,
    no_live_sessions,
    refused,
    wait_until,
)
from tests.reliability.conftest import StartDaemon

# The SDK avatar joins and publishes before the first frame: more set-up than the aiortc one.
pytestmark = [pytest.mark.netns, pytest.mark.timeout(45)]

RELAY = ("--set", "output.media_path=relay")


@pytest.fixture
def sim_publisher() -> str:
    return "sdk"


async def _relay_daemon(start_daemon: StartDaemon) -> DaemonProcess:
    return await start_daemon(*RELAY)


async def _open(daemon: DaemonProcess, call_id: str) -> Session:
    s = await Session.open(daemon, call_id)
    (published,) = s.named("published")
    assert published.fields.get("media_path") == "relay", published.fields
    return s


async def _video_stops_audio_goes_on(sim: StandIns, s: Session) -> None:
    """No new frame reaches the call while a turn of audio does."""
    await asyncio.sleep(0.5)  # packets already in flight (and the stand-in's jitter buffer)
    assert await heard(sim, s) > 0.7  # resets the call's measurement first
    stats = sim.stream.stats("default", s.call_id)
    assert stats["video"]["frames"] == 0, stats["video"]
    assert stats["marks"]["read"] == 0, stats["marks"]


async def test_relay_sfu_websocket_drop_is_survived(
    sim: StandIns, start_daemon: StartDaemon
) -> None:
    daemon = await _relay_daemon(start_daemon)
    s = await _open(daemon, "relay-sfu-drop")
    await fresh_frames(sim, s.call_id)
    connects = sim.stream.stats("default", s.call_id)["sfu_connects"]
    assert await sim.stream.drop_sfu_ws("default", s.call_id) == 1
    await wait_until(
        lambda: sim.stream.stats("default", s.call_id)["sfu_connects"] > connects,
        10,
        "the relay's SFU fast reconnect",
    )
    await fresh_frames(sim, s.call_id)
    assert await heard(sim, s) > 0.7
    assert s.errors == []
    await s.close()
    await no_live_sessions(sim.liveavatar)


async def test_relay_denied_join_is_a_clear_error_and_nothing_stays_billed(
    sim: StandIns, start_daemon: StartDaemon
) -> None:
    daemon = await _relay_daemon(start_daemon)
    sim.stream.deny_join("default", "relay-denied")
    err = await refused(daemon, "relay-denied", limit_s=15)
    assert err.code == "stream_auth", err
    assert "JoinCall" in err.message or "refused" in err.message, err.message
    await no_live_sessions(sim.liveavatar)
    for la_session in sim.liveavatar.sessions.values():
        assert la_session.end_reason is not None


async def test_relay_revoked_send_video_stops_video_keeps_audio(
    sim: StandIns, start_daemon: StartDaemon
) -> None:
    daemon = await _relay_daemon(start_daemon)
    s = await _open(daemon, "relay-revoked")
    await fresh_frames(sim, s.call_id)
    await sim.stream.revoke_send_video("default", s.call_id)

    def video_muted() -> bool:
        (me,) = sim.stream.stats("default", s.call_id)["participants"]
        return "TRACK_TYPE_VIDEO" in me["muted"]

    await wait_until(video_muted, 10, "the video track muted")
    await _video_stops_audio_goes_on(sim, s)
    assert s.errors == []
    await s.close()
    await no_live_sessions(sim.liveavatar)
    assert "relay_video_paused" in log_text(daemon)


async def test_relay_paused_video_layer_stops_and_resumes_on_a_keyframe(
    sim: StandIns, start_daemon: StartDaemon
) -> None:
    daemon = await _relay_daemon(start_daemon)
    s = await _open(daemon, "relay-layer")
    await fresh_frames(sim, s.call_id)
    await sim.stream.pause_video_layer("default", s.call_id, paused=True)
    await _video_stops_audio_goes_on(sim, s)
    keyframes = sim.livekit.counters.keyframe_requests
    await sim.stream.pause_video_layer("default", s.call_id, paused=False)
    await fresh_frames(sim, s.call_id)
    assert sim.livekit.counters.keyframe_requests > keyframes  # asked upstream on resume
    marks = sim.stream.stats("default", s.call_id)["marks"]
    assert marks["backwards"] == 0, marks
    assert s.errors == []
    await s.close()
    await no_live_sessions(sim.liveavatar)
    assert "relay_video_resumed" in log_text(daemon)


async def test_relay_livekit_signalling_drop_resumes(
    sim: StandIns, start_daemon: StartDaemon
) -> None:
    lk = sim.livekit
    daemon = await _relay_daemon(start_daemon)
    s = await _open(daemon, "relay-lk-drop")
    await fresh_frames(sim, s.call_id)
    resumes = lk.counters.resumes
    assert await lk.faults.close_signalling(s.room) == 1
    await wait_until(lambda: lk.counters.resumes > resumes, 10, "the subscriber's resume")
    await fresh_frames(sim, s.call_id)
    assert await heard(sim, s) > 0.7
    assert s.errors == []
    await s.close()
    await no_live_sessions(sim.liveavatar)


async def test_relay_avatar_leaving_is_a_clean_livekit_failure(
    sim: StandIns, start_daemon: StartDaemon
) -> None:
    daemon = await _relay_daemon(start_daemon)
    s = await _open(daemon, "relay-lk-leave")
    await fresh_frames(sim, s.call_id)
    await sim.livekit.faults.avatar_leave(s.room)
    err = await s.fatal_error(limit_s=15)
    assert err.code == "livekit_failed", err
    assert "left" in err.message, err.message
    await s.close()
    await no_live_sessions(sim.liveavatar)
