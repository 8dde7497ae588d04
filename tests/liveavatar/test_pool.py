"""The warm pool against the LiveAvatar stand-in: hit, miss, refill, keep-alive, loss, drain and
the ledger (a warm session is recorded before it is used, so a crash leaks none)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bridge.config import Settings
from bridge.errors import BridgeError, ErrorCode
from bridge.liveavatar.api import LiveAvatarAPI
from bridge.liveavatar.ledger import SessionLedger
from bridge.liveavatar.uplink import LiveAvatarOptions
from bridge.media import AudioChunk
from bridge.media_path import PathKind, WarmRoom
from bridge.pool import WarmPool, configured_keys, key_of
from bridge.pool_policy import AvatarKey
from bridge.sim.liveavatar import LiveAvatarStandIn
from bridge.stages import AvatarRoom, FailureCallback

from .conftest import API_KEY, AVATAR, FMT24


def settings(standin: LiveAvatarStandIn, state_dir: Path, **pool: Any) -> Settings:
    return Settings(
        state_dir=state_dir,
        liveavatar={
            "api_key": API_KEY,
            "base_url": standin.base_url,
            "avatar_id": AVATAR,
            "is_sandbox": False,
            "max_session_duration": 3600,  # 18 s at the stand-in's time scale
            # The stand-in's idle cut is 1.5 s here: keep-alives well inside it.
            "keep_alive_s": 0.3,
            "video_quality": "low",
            "video_encoding": "VP8",
        },
        pool={"size": 1, "min_remaining_s": 60} | pool,
    )


async def until(predicate: Callable[[], bool], limit_s: float = 15.0) -> None:
    async with asyncio.timeout(limit_s):
        while not predicate():  # noqa: ASYNC110 - polling another component's state
            await asyncio.sleep(0.02)


class Sink:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.failures: list[BridgeError] = []

    def __call__(self, event: str, /, **fields: Any) -> None:
        self.events.append((event, fields))


@pytest.fixture
async def make_pool(
    api: LiveAvatarAPI, ledger: SessionLedger, standin: LiveAvatarStandIn, tmp_path: Path
) -> AsyncIterator[Callable[..., WarmPool]]:
    made: list[WarmPool] = []

    def make(**pool: Any) -> WarmPool:
        p = WarmPool(settings(standin, tmp_path, **pool), api, ledger, lambda: 0)
        p.start()
        made.append(p)
        return p

    yield make
    for p in made:
        await p.aclose()


def warm_ids(pool: WarmPool) -> list[str]:
    return [str(e.uplink.session_id) for e in pool._entries.values()]


async def test_hit_hands_out_a_connected_session_and_refills(
    make_pool: Callable[..., WarmPool], standin: LiveAvatarStandIn, ledger: SessionLedger
) -> None:
    pool = make_pool()
    await until(lambda: len(warm_ids(pool)) == 1)
    warm = warm_ids(pool)[0]
    # Recorded in the ledger before anyone uses it.
    assert [e.session_id for e in ledger.pending()] == [warm]
    assert standin.live_sessions == [warm]
    options = pool._options[configured_keys(pool._settings)[0]]
    sink = Sink()
    handout = pool.take(options, FMT24, sink, sink.failures.append)
    assert handout is not None and handout.room is None  # no pre-join configured here
    uplink = handout.uplink
    assert uplink.session_id == warm
    assert ("liveavatar_session", {"session_id": warm, "warm": True}) in sink.events
    room = await asyncio.wait_for(uplink.start(), 1)  # no REST call: the room is known
    assert room.session_id == warm
    pcm = (np.sin(np.arange(24000) / 10) * 8000).astype("<i2")
    await uplink.send_audio(AudioChunk(pcm, FMT24, 0))
    await uplink.end_turn()
    renderer = standin.sessions[warm].renderer
    assert renderer is not None
    await until(lambda: sum(renderer.received_bytes.values()) == pcm.nbytes)
    # Refilled with a new warm session; the handed-out one is the session's now.
    await until(lambda: len(warm_ids(pool)) == 1 and warm_ids(pool)[0] != warm)
    assert pool.policy.stats.hits == 1 and pool.policy.stats.misses == 0
    assert sorted(standin.live_sessions) == sorted([warm, warm_ids(pool)[0]])
    await uplink.aclose()
    assert sink.failures == []


async def test_miss_on_other_settings_starts_cold(
    make_pool: Callable[..., WarmPool], standin: LiveAvatarStandIn
) -> None:
    pool = make_pool()
    await until(lambda: len(warm_ids(pool)) == 1)
    base = pool._options[configured_keys(pool._settings)[0]]
    other = LiveAvatarOptions(
        avatar_id=base.avatar_id, is_sandbox=False, video_quality="high", video_encoding="VP8"
    )
    sink = Sink()
    assert key_of(other) != key_of(base)
    assert pool.take(other, FMT24, sink, sink.failures.append) is None
    assert pool.policy.stats.misses == 1 and pool.policy.stats.hits == 0
    assert len(warm_ids(pool)) == 1  # the warm one is kept for a matching HELLO


async def test_warm_session_is_kept_alive_past_the_idle_cut(
    make_pool: Callable[..., WarmPool], standin: LiveAvatarStandIn
) -> None:
    pool = make_pool()
    await until(lambda: len(warm_ids(pool)) == 1)
    warm = warm_ids(pool)[0]
    await asyncio.sleep(2.5)  # longer than the stand-in's scaled 5-minute idle cut (1.5 s)
    assert standin.sessions[warm].end_reason is None
    kinds = [m["type"] for m in standin.sessions[warm].messages]
    assert "session.keep_alive" in kinds


async def test_a_dropped_warm_session_is_replaced(
    make_pool: Callable[..., WarmPool], standin: LiveAvatarStandIn, ledger: SessionLedger
) -> None:
    pool = make_pool()
    await until(lambda: len(warm_ids(pool)) == 1)
    warm = warm_ids(pool)[0]
    await standin.drop(warm)
    await until(lambda: len(warm_ids(pool)) == 1 and warm_ids(pool)[0] != warm)
    assert pool.policy.stats.lost == 1
    await until(lambda: warm not in [e.session_id for e in ledger.pending()])


async def test_drain_stops_every_warm_session(
    make_pool: Callable[..., WarmPool], standin: LiveAvatarStandIn, ledger: SessionLedger
) -> None:
    pool = make_pool(size=2)
    await until(lambda: len(warm_ids(pool)) == 2)
    warm = warm_ids(pool)
    await pool.aclose()
    assert standin.live_sessions == []
    assert sorted(sid for sid, _ in standin.stop_calls) == sorted(warm)
    assert {reason for _, reason in standin.stop_calls} == {"USER_CLOSED"}
    assert ledger.pending() == []
    sink = Sink()
    options = pool._options[configured_keys(pool._settings)[0]]
    assert pool.take(options, FMT24, sink, sink.failures.append) is None  # closed: cold


async def test_a_warm_session_left_by_a_crash_is_swept(
    api: LiveAvatarAPI, standin: LiveAvatarStandIn, tmp_path: Path
) -> None:
    standin.options.idle_timeout_s = 1e6  # only the sweep may end the orphan here
    # The "crashed" pool: its task is cancelled without any stop, as a SIGKILL would leave it.
    ledger = SessionLedger(tmp_path)
    pool = WarmPool(settings(standin, tmp_path), api, ledger, lambda: 0)
    pool.start()
    await until(lambda: len(warm_ids(pool)) == 1)
    orphan = warm_ids(pool)[0]
    for entry in pool._entries.values():
        entry.uplink._closing = True  # its tasks end without stopping the paid session
        assert entry.uplink._run_task is not None
        entry.uplink._run_task.cancel()
    pool._closing = True
    await pool._tasks.aclose()
    assert standin.live_sessions == [orphan]
    # The next daemon reads the same state dir and sweeps before serving.
    swept = await SessionLedger(tmp_path).sweep(api)
    assert swept == 1
    assert standin.live_sessions == []
    assert standin.sessions[orphan].end_reason == "SERVER_ERROR"


class ScriptedRoom:
    """A :class:`WarmRoom` whose join does as scripted ("ready": at once; "fails": raises;
    "stuck": until cancelled, then a slow leave until ``release``), recording what the pool
    does with it. A "fails" room's own leave is slow too (until ``release``)."""

    kind = PathKind.RELAY

    def __init__(self, mode: str, release: asyncio.Event) -> None:
        self.mode = mode
        self.release = release
        self.joining = asyncio.Event()
        self.leaving = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.joined = False
        self.closed = False

    @property
    def ready(self) -> bool:
        return self.joined and not self.closed

    async def join(self, room: AvatarRoom, timeout_s: float) -> None:
        self.joining.set()
        if self.mode == "fails":
            raise BridgeError(ErrorCode.LIVEKIT_FAILED, "scripted: no keyframe")
        if self.mode == "stuck":
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled.set()
                await self.release.wait()
                raise
        self.joined = True

    async def claim(self) -> None:
        pass

    async def aclose(self) -> None:
        self.leaving.set()
        if self.mode == "fails":
            try:
                await self.release.wait()
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
        self.closed = True


def scripted_pool(
    api: LiveAvatarAPI,
    ledger: SessionLedger,
    standin: LiveAvatarStandIn,
    tmp_path: Path,
    modes: list[str],
    **pool: Any,
) -> tuple[WarmPool, list[ScriptedRoom], asyncio.Event]:
    """A pool whose n-th warm start joins a :class:`ScriptedRoom` of ``modes[n]``."""
    release = asyncio.Event()
    rooms: list[ScriptedRoom] = []

    def prejoin(key: AvatarKey, on_failure: FailureCallback) -> WarmRoom:
        rooms.append(ScriptedRoom(modes[min(len(rooms), len(modes) - 1)], release))
        return rooms[-1]

    # No retry of a failed start within the test.
    p = WarmPool(
        settings(standin, tmp_path, retry_backoff_s=600, **pool),
        api,
        ledger,
        lambda: 0,
        prejoin=prejoin,
    )
    return p, rooms, release


async def test_a_failed_warm_start_is_stopped_even_when_the_pool_closes_meanwhile(
    api: LiveAvatarAPI, standin: LiveAvatarStandIn, ledger: SessionLedger, tmp_path: Path
) -> None:
    """A warm session whose room could not be joined is being stopped (its room's leave is
    slow) when SIGTERM closes the pool: the stop is not cut short, the session ends."""
    pool, rooms, release = scripted_pool(api, ledger, standin, tmp_path, ["fails"])
    pool.start()
    try:
        await until(lambda: len(rooms) == 1)
        await asyncio.wait_for(rooms[0].leaving.wait(), 15)
        (session,) = standin.live_sessions
        closing = asyncio.get_running_loop().create_task(pool.aclose())
        # The refill loop is cancelled: so is every task of the pool's that was running then.
        assert pool._loop is not None
        await until(pool._loop.done)
        release.set()
        await asyncio.wait_for(closing, 30)
        assert not rooms[0].cancelled.is_set()
        assert rooms[0].closed
        assert standin.sessions[session].end_reason == "SERVER_ERROR"
        assert ledger.pending() == []
    finally:
        release.set()
        await pool.aclose()


async def test_a_warm_session_lost_while_the_pool_closes_is_stopped(
    api: LiveAvatarAPI, standin: LiveAvatarStandIn, ledger: SessionLedger, tmp_path: Path
) -> None:
    """SIGTERM closes the pool while a warm start is still leaving its room; meanwhile the
    provider ends the ready warm session. Its room is left and its uplink closed all the same."""
    pool, rooms, release = scripted_pool(api, ledger, standin, tmp_path, ["ready", "stuck"], size=2)
    pool.start()
    try:
        await until(lambda: len(warm_ids(pool)) == 1 and len(rooms) == 2)
        ready, stuck = rooms
        await asyncio.wait_for(stuck.joining.wait(), 15)
        (lost,) = warm_ids(pool)
        closing = asyncio.get_running_loop().create_task(pool.aclose())
        await asyncio.wait_for(stuck.cancelled.wait(), 15)  # the close waits for its leave
        await standin.drop(lost)
        await until(lambda: pool.policy.stats.lost == 1)
        release.set()
        await asyncio.wait_for(closing, 30)
        assert ready.closed
        assert standin.live_sessions == []
        assert ledger.pending() == []
    finally:
        release.set()
        await pool.aclose()


def test_configured_keys_fill_dashes_from_the_settings(tmp_path: Path) -> None:
    s = Settings(
        state_dir=tmp_path,
        liveavatar={"avatar_id": AVATAR, "is_sandbox": False, "video_quality": "low"},
        pool={"size": 1, "avatars": ["-:high:vp8", f"{AVATAR}"]},
    )
    keys = [str(k) for k in configured_keys(s)]
    assert keys == [f"{AVATAR}:high:VP8", f"{AVATAR}:low:H264"]
