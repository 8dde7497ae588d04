"""Stream faults under a real daemon: the SFU WebSocket dropped (the SDK reconnects), the join
denied (a clear ERROR, nothing left billed) and the send-video grant revoked (audio goes on)."""

from __future__ import annotations

import asyncio

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
