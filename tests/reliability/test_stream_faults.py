"""Stream faults under a real daemon: the SFU WebSocket dropped (the SDK reconnects), the join
denied (a clear ERROR, nothing left billed) and the send-video grant revoked (audio goes on)."""

from __future__ import annotations

import asyncio

import pytest

from bridge.client import BridgeClient, ConnectionClosed, RemoteError, stream_pcm_realtime
from bridge.sim.stack import StandIns
from tests.reliability._support import (
    FMT,
    Session,
    fresh_frames,
    heard,
    log_text,
    no_live_sessions,
    refused,
    tone,
    wait_until,
)
from tests.reliability.conftest import StartDaemon

pytestmark = pytest.mark.netns


async def test_sfu_websocket_drop_is_survived_and_spares_other_calls(
    sim: StandIns, start_daemon: StartDaemon
) -> None:
    daemon = await start_daemon()
    hit, bystander = await asyncio.gather(
        Session.open(daemon, "sfu-drop"), Session.open(daemon, "sfu-bystander")
    )
    connects = sim.stream.stats("default", hit.call_id)["sfu_connects"]
    assert await sim.stream.drop_sfu_ws("default", hit.call_id) == 1
    await wait_until(
        lambda: sim.stream.stats("default", hit.call_id)["sfu_connects"] > connects,
        15,
        "the SDK's SFU reconnect",
    )
    await fresh_frames(sim, hit.call_id)
    assert await heard(sim, hit) > 0.7
    assert await heard(sim, bystander) > 0.7
    assert sim.stream.stats("default", bystander.call_id)["sfu_connects"] == 1
    assert hit.errors == [] and bystander.errors == []
    await asyncio.gather(hit.close(), bystander.close())
    await no_live_sessions(sim.liveavatar)


async def test_denied_join_is_a_clear_error_and_nothing_stays_billed(
    sim: StandIns, start_daemon: StartDaemon
) -> None:
    daemon = await start_daemon()
    sim.stream.deny_join("default", "denied")
    err = await refused(daemon, "denied")
    assert err.code == "stream_auth", err
    assert "JoinCall" in err.message or "refused" in err.message, err.message
    await no_live_sessions(sim.liveavatar)
    (la_session,) = sim.liveavatar.sessions.values()
    assert la_session.started and la_session.end_reason is not None


async def test_revoked_send_video_keeps_the_audio_going(
    sim: StandIns, start_daemon: StartDaemon
) -> None:
    daemon = await start_daemon()
    s = await Session.open(daemon, "revoked")
    await fresh_frames(sim, s.call_id)
    await sim.stream.revoke_send_video("default", s.call_id)

    def video_muted() -> bool:
        (me,) = sim.stream.stats("default", s.call_id)["participants"]
        return "TRACK_TYPE_VIDEO" in me["muted"]

    await wait_until(video_muted, 10, "the video track muted")
    assert await heard(sim, s) > 0.7
    assert s.errors == []
    await s.close()
    await no_live_sessions(sim.liveavatar)


@pytest.mark.parametrize("how", ["mismatch", "missing"])
@pytest.mark.parametrize("path", ["relay", "transcode"])
async def test_stream_dtls_failure_is_a_clear_error_and_nothing_stays_billed(
    sim: StandIns, start_daemon: StartDaemon, path: str, how: str
) -> None:
    """The Stream side's peer connection never connects (its DTLS handshake fails, or cannot
    even start, as under systemd's MemoryDenyWriteExecute) while the client already speaks: the
    client gets a fatal STREAM_FAILED, counted, and the LiveAvatar session is stopped. Another
    call of the same daemon is not touched.

    The join timeout is set far beyond the test's wait, so only noticing the failure itself (not
    a timeout) can pass it."""
    daemon = await start_daemon(
        "--set", f"output.media_path={path}", "--set", "stream.join_timeout_s=300"
    )
    bystander = await Session.open(daemon, "dtls-bystander")
    sim.stream.break_dtls("default", "no-dtls", how)
    hit = Session(await BridgeClient.connect(daemon.socket), "no-dtls")
    try:
        # Like `avatar-bridge say`: speak as soon as READY, without waiting for the avatar. The
        # ERROR may end the session at any step: it is what each step raises with.
        await asyncio.wait_for(hit.client.hello("default:no-dtls", FMT), 30)
        await stream_pcm_realtime(hit.client, tone(1.0), FMT)
        await hit.client.end_turn()
        err = await hit.fatal_error(60)
    except RemoteError as exc:
        err = exc.error
    except ConnectionClosed as exc:
        assert exc.error is not None, "closed without an ERROR"
        err = exc.error
    finally:
        await hit.client.abort()
    assert err.code == "stream_failed", err
    assert "Stream" in err.message, err.message
    await wait_until(
        lambda: any(s.end_reason is not None for s in sim.liveavatar.sessions.values()),
        15,
        "the failed session's LiveAvatar session stopped",
    )
    assert await heard(sim, bystander) > 0.7
    assert bystander.errors == []
    await bystander.close()
    await no_live_sessions(sim.liveavatar)
    assert daemon.metric_sum("bridge_remote_errors_total", 'code="stream_failed"') == 1
    # Every failure had an owner: none was left to asyncio's last-resort report.
    assert "Task exception was never retrieved" not in log_text(daemon)


@pytest.mark.parametrize("sim_publisher", ["sdk"])  # the relay on libwebrtc's RTP
async def test_relay_publisher_transport_lost_later_is_a_clear_error(
    sim: StandIns, start_daemon: StartDaemon
) -> None:
    """The relay's peer connection to the SFU is lost while media flows, and the SFU says
    nothing (no REJOIN): the relay notices its transport end and fails the session with
    STREAM_FAILED; the LiveAvatar session is stopped."""
    daemon = await start_daemon("--set", "output.media_path=relay")
    s = await Session.open(daemon, "pc-lost")
    assert s.named("media_path")[0].fields["path"] == "relay"
    await fresh_frames(sim, s.call_id)
    assert await sim.stream.kill_peer_connection("default", s.call_id, notify=False) == 1
    err = await s.fatal_error(30)
    assert err.code == "stream_failed", err
    await s.client.abort()
    await no_live_sessions(sim.liveavatar)
