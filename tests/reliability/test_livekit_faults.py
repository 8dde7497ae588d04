"""LiveKit faults under a real daemon: the SDK resumes a dropped signalling connection and
rejoins after a lost peer connection; an avatar that leaves or never joins ends only its own
session, with a clear ERROR and the paid LiveAvatar session stopped."""

from __future__ import annotations

import asyncio
import time

import pytest

from bridge.sim.stack import StandIns
from tests.reliability._support import (
    Session,
    fresh_frames,
    heard,
    no_live_sessions,
    refused,
    wait_until,
)
from tests.reliability.conftest import StartDaemon

pytestmark = pytest.mark.netns


async def test_signalling_drop_and_lost_peer_connection_recover(
    sim: StandIns, start_daemon: StartDaemon
) -> None:
    lk = sim.livekit
    daemon = await start_daemon()
    hit, bystander = await asyncio.gather(
        Session.open(daemon, "lk-hit"), Session.open(daemon, "lk-bystander")
    )
    await fresh_frames(sim, hit.call_id)
    resumes = lk.counters.resumes
    assert await lk.faults.close_signalling(hit.room) == 1
    await wait_until(lambda: lk.counters.resumes > resumes, 10, "the SDK's resume")
    await fresh_frames(sim, hit.call_id)
    joins = lk.counters.joins
    assert await lk.faults.kill_peer_connection(hit.room) == 1
    await wait_until(lambda: lk.counters.joins > joins, 15, "the SDK's full reconnect")
    await fresh_frames(sim, hit.call_id)
    assert await heard(sim, hit) > 0.7
    assert await heard(sim, bystander) > 0.7
    assert hit.errors == [] and bystander.errors == []
    await asyncio.gather(hit.close(), bystander.close())
    await no_live_sessions(sim.liveavatar)


async def test_avatar_leaving_ends_only_its_session(
    sim: StandIns, start_daemon: StartDaemon
) -> None:
    daemon = await start_daemon()
    hit, bystander = await asyncio.gather(
        Session.open(daemon, "lk-leave"), Session.open(daemon, "lk-stays")
    )
    await sim.livekit.faults.avatar_leave(hit.room)
    err = await hit.fatal_error(limit_s=15)
    assert err.code == "livekit_failed", err
    assert "left" in err.message, err.message
    await wait_until(
        lambda: sim.liveavatar.live_sessions == [bystander.la_session_id], 10, "the stop"
    )
    assert await heard(sim, bystander) > 0.7
    assert bystander.errors == []
    await bystander.close()
    await no_live_sessions(sim.liveavatar)


@pytest.mark.parametrize("media_path", ["transcode", "relay"])
async def test_avatar_never_joining_times_out_cleanly(
    sim: StandIns, start_daemon: StartDaemon, media_path: str
) -> None:
    sim.livekit.faults.avatar_join_delay_s = 60.0
    daemon = await start_daemon(
        "--set", "liveavatar.connect_timeout_s=3", "--set", f"output.media_path={media_path}"
    )
    t0 = time.monotonic()
    err = await refused(daemon, "lk-never", limit_s=20)
    assert err.code == "livekit_failed", err
    assert "3" in err.message and "avatar" in err.message, err.message
    assert time.monotonic() - t0 < 12  # the configured timeout, not the SDK's or a hang
    await no_live_sessions(sim.liveavatar)
    (la_session,) = sim.liveavatar.sessions.values()
    assert la_session.end_reason == "SERVER_ERROR"


async def test_relay_media_lost_with_signalling_up_is_noticed_and_rejoined(
    sim: StandIns, start_daemon: StartDaemon
) -> None:
    """The relay's aiortc peer connection to the avatar's room ends (DTLS closed) while its
    signalling stays up, so only the peer connection's state says the media is gone: the
    subscriber notices, rejoins with a new peer connection, and the avatar reaches the call again.
    (The transcode path's downlink is the LiveKit SDK's, which detects this itself.)"""
    lk = sim.livekit
    daemon = await start_daemon("--set", "output.media_path=relay")
    s = await Session.open(daemon, "lk-media-lost")
    assert s.named("media_path")[0].fields["path"] == "relay"
    await fresh_frames(sim, s.call_id)
    joins = lk.counters.joins
    assert await lk.faults.close_media(s.room) >= 1
    await wait_until(lambda: lk.counters.joins > joins, 15, "the subscriber's rejoin")
    await fresh_frames(sim, s.call_id)
    assert s.errors == []
    await s.close()
    await no_live_sessions(sim.liveavatar)
