"""The warm pool in the daemon, end to end: a HELLO gets the warm session, the pool refills,
SIGTERM stops every warm session, and a warm session left by a killed daemon is swept."""

from __future__ import annotations

import asyncio
import signal

import pytest

from bridge.client import BridgeClient
from bridge.sim.stack import StandIns
from tests.pipeline.conftest import StartDaemon
from tests.pipeline.test_end_to_end import open_session

pytestmark = pytest.mark.netns

# Sandbox sessions last 60 s: a warm one is handed out while it has 10 s left or more.
POOL = ("--set", "pool.size=1", "--set", "pool.min_remaining_s=10")


async def live_count(sim: StandIns, n: int, limit_s: float = 30) -> list[str]:
    async with asyncio.timeout(limit_s):
        while len(sim.liveavatar.live_sessions) != n:  # noqa: ASYNC110 - another component
            await asyncio.sleep(0.05)
    return list(sim.liveavatar.live_sessions)


async def test_hello_takes_the_warm_session_then_the_pool_refills_and_sigterm_drains(
    sim: StandIns, start_daemon: StartDaemon
) -> None:
    daemon = await start_daemon(*POOL, "--set", "limits.drain_timeout_s=1")
    (warm,) = await live_count(sim, 1)  # warm before any client
    async with asyncio.timeout(30):
        while daemon.metric_sum("bridge_pool_size") != 1:  # noqa: ASYNC110 - until connected
            await asyncio.sleep(0.05)
    async with await BridgeClient.connect(daemon.socket) as client:
        events = await open_session(client, "warm")
        sessions = [e.fields for e in events if e.event == "liveavatar_session"]
        assert sessions == [{"session_id": warm, "warm": True}]
        both = await live_count(sim, 2)  # refilled: the one in use and a new warm one
        assert warm in both
        assert daemon.metric_sum("bridge_pool_hits_total") == 1
        assert daemon.metric_sum("bridge_pool_misses_total") == 0
        rc = await daemon.stop(signal.SIGTERM)
    assert rc == 0
    assert sim.liveavatar.live_sessions == []
    assert all(s.end_reason for s in sim.liveavatar.sessions.values() if s.started)


async def test_a_warm_session_left_by_a_killed_daemon_is_swept_on_restart(
    sim: StandIns, start_daemon: StartDaemon
) -> None:
    daemon = await start_daemon(*POOL)
    (orphan,) = await live_count(sim, 1)
    await daemon.kill()
    assert sim.liveavatar.live_sessions == [orphan]  # nobody stopped it: it would be billed
    await start_daemon(*POOL)  # same state dir: swept before READY, then a new warm one
    assert sim.liveavatar.sessions[orphan].end_reason == "SERVER_ERROR"
    (fresh,) = await live_count(sim, 1)
    assert fresh != orphan
