"""A pool hit hands a HELLO a LiveAvatar session whose LiveKit room is already joined, its avatar's
media received: the session's path adopts that room instead of joining it, and the call's first
frame does not wait for the avatar's start, room join or first keyframe (modelled by the
stand-in's start delays). Asserted as order and counts, never as time."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

from bridge.client import BridgeClient, parse_call
from bridge.protocol import EventMsg, Hello, encode_close, encode_hello
from bridge.sim.liveavatar import StandInOptions, StartDelays
from bridge.sim.stack import SMALL, DaemonProcess, StandIns
from tests.pipeline.test_end_to_end import FMT, open_session, received, until_event

pytestmark = pytest.mark.netns

# The avatar reaches its room and sends its first keyframe a while after /start: a cold session
# waits for those, a warm one got them before its HELLO.
DELAYS = StartDelays(avatar_join_s=1.0, first_keyframe_s=0.3)

# Media the warm room received (and dropped) before any HELLO, per path.
RECEIVED_WHILE_WARM = {
    "relay": ("bridge_relay_warm_dropped_total", 'kind="video"'),
    "transcode": ("bridge_downlink_video_frames_total", ""),
}


def pooled_daemon(sim: StandIns, tmp_path: Path, media_path: str, *settings: str) -> DaemonProcess:
    """A daemon with a pool of one warm session for ``media_path``, plus ``settings``."""
    extra = [arg for setting in settings for arg in ("--set", setting)]
    return DaemonProcess(
        tmp_path,
        sim.daemon_env(),
        *SMALL,
        "--set", f"output.media_path={media_path}",
        "--set", "pool.size=1",
        "--set", "pool.min_remaining_s=10",
        *extra,
    )  # fmt: skip


async def until(predicate: object, limit_s: float = 30.0) -> None:
    assert callable(predicate)
    async with asyncio.timeout(limit_s):
        while not predicate():  # noqa: ASYNC110 - the daemon's metrics have no event
            await asyncio.sleep(0.05)


@pytest.mark.parametrize("media_path", ["relay", "transcode"])
async def test_a_pool_hit_starts_in_a_room_joined_before_the_hello(
    media_path: str, tmp_path: Path
) -> None:
    async with StandIns(liveavatar=StandInOptions(delays=DELAYS)) as sim:
        daemon = pooled_daemon(sim, tmp_path, media_path)
        await daemon.start()
        try:
            # Ready means in the room with the avatar's media received, before any HELLO.
            await until(lambda: daemon.metric_sum("bridge_pool_size") == 1)
            (warm,) = sim.liveavatar.live_sessions
            room = sim.liveavatar.sessions[warm].room
            assert room is not None
            assert sim.livekit.participants_in(room) == 1  # the bridge, subscribed
            metric, labels = RECEIVED_WHILE_WARM[media_path]
            assert daemon.metric_sum(metric, labels) > 0  # its media flowed (first keyframe)
            assert daemon.metric_sum("bridge_pool_rooms_total") == 0

            async with await BridgeClient.connect(daemon.socket) as client:
                events = await open_session(client, "warm")
                (started,) = [e.fields for e in events if e.event == "liveavatar_session"]
                assert started == {"session_id": warm, "warm": True}
                # The path adopted the room: no second subscriber joined it.
                assert daemon.metric_sum("bridge_pool_rooms_total", 'outcome="adopted"') == 1
                assert sim.livekit.participants_in(room) == 1
                await received(sim, "warm", lambda s: s["video"]["frames"] >= 10)
                stats = sim.stream.stats("default", "warm")
                assert stats["joins"] == 1
                assert stats["video"]["frames"] >= 10
                # The pool refilled behind the hit: a new warm session in its own room.
                await until(lambda: daemon.metric_sum("bridge_pool_size") == 1)
                assert len(sim.liveavatar.live_sessions) == 2
            assert await daemon.stop() == 0
            # Drained: the session and the warm one stopped, their rooms left.
            assert sim.liveavatar.live_sessions == []
            assert sim.livekit.participants_in(room) == 0
        finally:
            await daemon.stop()


async def test_a_hit_on_another_path_leaves_the_room_and_joins_it_cold(tmp_path: Path) -> None:
    """The pool's rooms are joined for the relay; a HELLO asking for the transcode path still
    gets the warm LiveAvatar session, but its path joins the room itself (the relay's
    subscription is left: one subscriber in the room, never two)."""
    async with StandIns(liveavatar=StandInOptions(delays=DELAYS)) as sim:
        daemon = pooled_daemon(sim, tmp_path, "relay")
        await daemon.start()
        try:
            await until(lambda: daemon.metric_sum("bridge_pool_size") == 1)
            (warm,) = sim.liveavatar.live_sessions
            room = sim.liveavatar.sessions[warm].room
            assert room is not None
            async with await BridgeClient.connect(daemon.socket) as client:
                await asyncio.wait_for(
                    client.hello("default:other", FMT, media_path="transcode"), 30
                )
                events: list[EventMsg] = []
                for name in ("published", "avatar_ready", "media_path"):
                    if name not in [e.event for e in events]:
                        events += await until_event(client, name)
                (started,) = [e.fields for e in events if e.event == "liveavatar_session"]
                assert started == {"session_id": warm, "warm": True}
                (path,) = [e.fields["path"] for e in events if e.event == "media_path"]
                assert path == "transcode"
                assert daemon.metric_sum("bridge_pool_rooms_total", 'outcome="left"') == 1
                assert daemon.metric_sum("bridge_pool_rooms_total", 'outcome="adopted"') == 0
                await received(sim, "other", lambda s: s["video"]["frames"] >= 10)
                assert sim.stream.stats("default", "other")["video"]["frames"] >= 10
                assert sim.livekit.participants_in(room) == 1
            assert await daemon.stop() == 0
            assert sim.liveavatar.live_sessions == []
        finally:
            await daemon.stop()


@pytest.mark.parametrize("media_path", ["relay", "transcode"])
async def test_a_handover_adopts_the_pooled_room(media_path: str, tmp_path: Path) -> None:
    """The avatar is dropped mid-call; the next one comes from the pool with its room joined
    for this path: the handover takes that subscription over (the room is joined once, by the
    pool, never left and joined again) and the call keeps one participant."""
    async with StandIns() as sim:
        daemon = pooled_daemon(sim, tmp_path, media_path, "liveavatar.handover_margin_s=1")
        await daemon.start()
        try:
            async with await BridgeClient.connect(daemon.socket) as client:
                await until(lambda: daemon.metric_sum("bridge_pool_size") == 1)
                events = await open_session(client, "handover-warm")
                (first,) = [e.fields for e in events if e.event == "liveavatar_session"]
                assert first["warm"] is True
                # The pool refills: the next session, in its own room, media received.
                await until(lambda: daemon.metric_sum("bridge_pool_size") == 1)
                (warm,) = [s for s in sim.liveavatar.live_sessions if s != first["session_id"]]
                room = sim.liveavatar.sessions[warm].room
                assert room is not None
                assert sim.livekit.counters.joins_by_room[room] == 1
                await sim.liveavatar.drop(first["session_id"])  # the provider ends it
                seen = await until_event(client, "avatar_handover", limit_s=30)
                (handover,) = [e.fields for e in seen if e.event == "avatar_handover"]
                assert handover["reason"] == "lost"
                assert handover["liveavatar_session"] == warm
                assert handover["warm"] is True
                # Adopted (the HELLO's room and this one), never left for a cold rejoin.
                assert daemon.metric_sum("bridge_pool_rooms_total", 'outcome="adopted"') == 2
                assert daemon.metric_sum("bridge_pool_rooms_total", 'outcome="left"') == 0
                assert sim.livekit.counters.joins_by_room[room] == 1
                assert sim.livekit.participants_in(room) == 1
                # The new avatar's media reach the call, on the same participant.
                sim.stream.reset_measure("default", "handover-warm")
                await received(sim, "handover-warm", lambda s: s["video"]["frames"] >= 10)
                stats = sim.stream.stats("default", "handover-warm")
                assert stats["joins"] == 1
                assert len(stats["participants"]) == 1
            assert await daemon.stop() == 0
            assert sim.liveavatar.live_sessions == []
            assert sim.livekit.participants_in(room) == 0
        finally:
            await daemon.stop()


HELLO_AND_GONE = 4  # clients that send HELLO and hang up at once


@pytest.mark.parametrize("media_path", ["relay", "transcode"])
async def test_a_hello_whose_client_is_gone_at_once_leaks_no_warm_room(
    media_path: str, tmp_path: Path
) -> None:
    """Each client sends HELLO and CLOSE in the same breath and hangs up (the session ends
    before its path is built): the warm session it took, and the room joined for it, are left
    every time; only the pool's refill stays, in its own room."""
    async with StandIns() as sim:
        daemon = pooled_daemon(sim, tmp_path, media_path, "limits.linger_s=0")
        await daemon.start()
        try:
            for i in range(HELLO_AND_GONE):  # bounded
                await until(lambda: daemon.metric_sum("bridge_pool_size") == 1)
                _, writer = await asyncio.open_unix_connection(str(daemon.socket))
                hello = Hello(call=parse_call(f"default:gone-{i}"), audio=FMT, client="gone")
                # HELLO and CLOSE in one write: the daemon reads both at once, so the session
                # is closed before its task has run a step (before its path is built).
                writer.write(encode_hello(hello) + encode_close())
                await writer.drain()
                writer.close()
                await writer.wait_closed()
                await until(
                    lambda hits=i + 1: (
                        daemon.metric_sum("bridge_pool_hits_total") == hits
                        and daemon.metric_sum("bridge_sessions_active") == 0
                    )
                )
            await until(lambda: daemon.metric_sum("bridge_pool_size") == 1)
            # Every HELLO took a warm session (a hit, its room handed to the session).
            assert daemon.metric_sum("bridge_pool_hits_total") == HELLO_AND_GONE
            # Only the pool's refill is live, and the daemon is in its room only.
            (warm,) = sim.liveavatar.live_sessions
            room = sim.liveavatar.sessions[warm].room
            assert room is not None
            await until(lambda: daemon.metric_sum("bridge_livekit_rooms_open") == 1)
            assert daemon.metric_sum("bridge_livekit_rooms_open") == 1
            assert sim.livekit.participants_in(room) == 1
            taken = [s for s in sim.liveavatar.sessions if s != warm]
            assert len(taken) >= HELLO_AND_GONE
            for session_id in taken:
                assert sim.liveavatar.sessions[session_id].end_reason is not None
                other = sim.liveavatar.sessions[session_id].room
                assert other is None or sim.livekit.participants_in(other) == 0
            assert await daemon.stop() == 0
            assert sim.liveavatar.live_sessions == []
        finally:
            await daemon.stop()


# The first avatar's handover is due this long before its cap (the stand-in's 60 s sandbox cap):
# ~10 s after the pool started it, so the turn the client opens comes first; the switch's
# deadline (the cap less 1 s) is ~50 s after that, far beyond the test.
EARLY_MARGIN_S = 50


@pytest.mark.parametrize("media_path", ["relay", "transcode"])
async def test_a_session_ending_while_its_handover_waits_leaks_nothing(
    media_path: str, tmp_path: Path
) -> None:
    """The next avatar comes from the pool, its room adopted and its first frame received, and
    the switch waits for the turn the client holds open; the client hangs up then. The next
    avatar's LiveAvatar session is stopped and its room left like the current one's: nothing of
    a handover that never switched outlives the session."""
    async with StandIns() as sim:
        daemon = pooled_daemon(
            sim,
            tmp_path,
            media_path,
            "pool.size=2",
            "limits.linger_s=0",
            f"liveavatar.handover_margin_s={EARLY_MARGIN_S}",
        )
        await daemon.start()
        try:
            await until(lambda: daemon.metric_sum("bridge_pool_size") == 2)
            client = await BridgeClient.connect(daemon.socket)
            try:
                await asyncio.wait_for(client.hello("default:hangs-up", FMT), 30)
                # A turn held open from the start: the switch never finds a turn boundary.
                await client.send_audio(bytes(FMT.bytes_per_second // 10))
                await until_event(client, "published")

                def prepared() -> list[dict[str, object]]:
                    return [
                        e
                        for e in daemon.log_events()
                        if e.get("event") == "avatar_handover_prepared"
                    ]

                await until(prepared)
                (ready,) = prepared()
                assert ready["warm"] is True
                nxt = str(ready["liveavatar_session"])
                room = sim.liveavatar.sessions[nxt].room
                assert room is not None
                # A planned handover adopts the pooled room too: joined once, by the pool.
                assert sim.livekit.participants_in(room) == 1
                assert sim.livekit.counters.joins_by_room[room] == 1
                assert daemon.metric_sum("bridge_pool_rooms_total", 'outcome="adopted"') == 2
            finally:
                await client.abort()  # no CLOSE: the turn stays open to the end
            await until(lambda: daemon.metric_sum("bridge_sessions_active") == 0)
            assert daemon.metric_sum("bridge_avatar_handovers_total", 'outcome="switched"') == 0
            # Stopped and left, like the session's own avatar.
            with contextlib.suppress(TimeoutError):  # leaving takes the stand-in a moment
                await until(lambda: sim.livekit.participants_in(room) == 0, limit_s=10)
            assert sim.livekit.participants_in(room) == 0
            assert sim.liveavatar.sessions[nxt].end_reason is not None
            # The daemon itself is in the pool's rooms only (the room's end alone does not
            # close a subscriber or downlink the bridge still holds).
            with contextlib.suppress(TimeoutError):
                await until(lambda: daemon.metric_sum("bridge_livekit_rooms_open") == 2)
            assert daemon.metric_sum("bridge_livekit_rooms_open") == 2
            assert len(sim.liveavatar.live_sessions) == 2
            assert await daemon.stop() == 0
            assert sim.liveavatar.live_sessions == []
        finally:
            await daemon.stop()
