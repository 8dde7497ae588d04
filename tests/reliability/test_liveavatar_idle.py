"""LiveAvatar's idle cut (5 minutes, scaled to 3 s here): a session the daemon keeps alive
survives it; one left silent is ended by the server, reported clearly and not left billed."""

from __future__ import annotations

import asyncio

import pytest

from bridge.sim.liveavatar import StandInOptions
from bridge.sim.stack import StandIns
from tests.reliability._support import Session, no_live_sessions, tone
from tests.reliability.conftest import StartDaemon

pytestmark = pytest.mark.netns

SCALE = 0.01  # 300 s idle -> 3 s; the 3600 s cap -> 36 s
NO_CAP = ("--set", "liveavatar.max_session_duration=3600")


@pytest.fixture
def sim_options() -> StandInOptions:
    # The sandbox cap (60 s, 0.6 s scaled) would end the sessions first: lift it.
    return StandInOptions(time_scale=SCALE, sandbox_max_duration_s=3600)


async def test_keep_alive_survives_the_idle_cut_and_silence_is_a_clean_failure(
    sim: StandIns, start_daemon: StartDaemon
) -> None:
    la = sim.liveavatar
    keeper_daemon = await start_daemon(*NO_CAP, "--set", "liveavatar.keep_alive_s=0.5")
    silent_daemon = await start_daemon(*NO_CAP)  # keep-alive every 60 s: too late here
    keeper, silent = await asyncio.gather(
        Session.open(keeper_daemon, "idle-keeper"), Session.open(silent_daemon, "idle-silent")
    )
    t0 = asyncio.get_running_loop().time()
    err = await silent.fatal_error(limit_s=15)
    idle_s = la.options.idle_timeout_s * SCALE
    assert asyncio.get_running_loop().time() - t0 < idle_s + 5
    # LiveAvatar ends the session and closes its room at once; whichever the daemon reads first,
    # it names the cause (LiveAvatar's end), not its consequence (the room's close).
    assert err.code == "liveavatar_unavailable", err
    assert "LiveAvatar ended the" in err.message, err.message
    assert la.sessions[silent.la_session_id].end_reason == "IDLE_TIMEOUT"
    # The kept session is still live past the idle limit, having sent keep-alives on time.
    await asyncio.sleep(max(0.0, idle_s + 1 - (asyncio.get_running_loop().time() - t0)))
    assert la.live_sessions == [keeper.la_session_id]
    kinds = [m.get("type") for m in la.sessions[keeper.la_session_id].messages]
    assert kinds.count("session.keep_alive") >= idle_s / 0.5 - 1, kinds
    await keeper.speak(tone(1.0))
    assert keeper.errors == []
    await keeper.close()
    await no_live_sessions(la)


async def test_idle_cut_with_the_room_closed_first_still_names_liveavatar(
    sim: StandIns, start_daemon: StartDaemon
) -> None:
    """The other order: the room closes before the WebSocket says why. The room's close is a
    consequence; the daemon holds it briefly and reports LiveAvatar's end as the cause."""
    la = sim.liveavatar
    la.faults.room_closed_first = True
    silent = await Session.open(await start_daemon(*NO_CAP), "idle-room-first")
    err = await silent.fatal_error(limit_s=15)
    assert err.code == "liveavatar_unavailable", err
    assert "LiveAvatar ended the" in err.message, err.message
    assert la.sessions[silent.la_session_id].end_reason == "IDLE_TIMEOUT"
    assert sim.livekit.counters.rooms_closed >= 1
    await no_live_sessions(la)
