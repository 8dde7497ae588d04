"""The warm pool: LiveAvatar sessions started ahead of demand and handed to a matching HELLO.

:mod:`bridge.pool_policy` decides (refill, hand-out, retire, cost); this module carries it out.
A warm session is a started :class:`~bridge.liveavatar.uplink.LiveAvatarUplink`: token minted,
session recorded in the ledger *before* ``/start`` (so a crash leaks none: the next daemon's
sweep stops it), started, its WebSocket up and ``connected``, and then its LiveKit room joined by
the receiving side of the media path its key is served by (``prejoin``, a
:class:`~bridge.media_path.WarmRoom`: the relay's subscription, or the transcode path's decoding
downlink) with the avatar's first keyframe received. Only then is it ready. Its uplink sends
``session.keep_alive`` after ``liveavatar.keep_alive_s`` of silence, inside the provider's
5-minute idle rule (the room's own keep-alive is LiveKit's ping), and the policy retires it
before its cap. A warm session's room failing (the avatar leaving, the room ending) loses it
like its uplink failing.

Hand-out: :meth:`WarmPool.take` (sync, called by the stage factory on HELLO) returns a warm
uplink whose options equal the session's (avatar id, quality, encoding, sandbox, cap), re-bound
to the session's audio format, events and failure callback, with its room when the session's
media path is the room's (else the room is left and the path joins it cold); on a miss the
session starts cold.

Shutdown (SIGTERM): :meth:`WarmPool.aclose` stops refilling and stops every warm session
(``USER_CLOSED``), removing it from the ledger.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
from prometheus_client import Counter, Gauge

from bridge.config import Settings
from bridge.errors import BridgeError, ErrorCode
from bridge.liveavatar import LiveAvatarOptions, LiveAvatarUplink
from bridge.liveavatar.api import LiveAvatarAPI
from bridge.liveavatar.ledger import SessionLedger
from bridge.liveavatar.resample import UPLINK_FORMAT
from bridge.media import AudioFormat
from bridge.media_path import PathKind, WarmRoom
from bridge.pool_policy import AvatarKey, PoolPolicy, Retire, RetireReason, Start
from bridge.stages import EventSink, FailureCallback
from bridge.tasks import TaskSet

log = structlog.get_logger(__name__)

POOL_SIZE = Gauge("bridge_pool_size", "Warm LiveAvatar sessions ready to hand out", ["key"])
POOL_HITS = Counter("bridge_pool_hits_total", "HELLOs given a warm LiveAvatar session")
POOL_MISSES = Counter("bridge_pool_misses_total", "HELLOs that started their session cold")
POOL_IDLE_SECONDS = Counter(
    "bridge_pool_idle_session_seconds_total",
    "Session-seconds warm sessions spent unused (what the pool costs)",
)
POOL_RETIRED = Counter("bridge_pool_retired_total", "Warm sessions stopped by the pool", ["reason"])
POOL_LOST = Counter("bridge_pool_lost_total", "Warm sessions the provider ended")
POOL_START_FAILURES = Counter("bridge_pool_start_failures_total", "Failed warm starts")
POOL_ROOMS = Counter(
    "bridge_pool_rooms_total",
    "Warm sessions handed out: with their room adopted by the session's media path, or left "
    "(the session's path is not the one the room was joined for)",
    ["outcome"],
)

# Joins a warm session's room for the media path its key is served by; None: no pre-join.
PreJoin = Callable[[AvatarKey, FailureCallback], WarmRoom | None]

# How often the pool re-plans when nothing happens (aging, cost window, backoff expiry).
TICK_S = 1.0


def key_of(options: LiveAvatarOptions) -> AvatarKey:
    return AvatarKey(options.avatar_id, options.video_quality, options.video_encoding)


def configured_keys(settings: Settings) -> list[AvatarKey]:
    """``pool.avatars`` entries ('avatar_id:quality:encoding', '-' = configured), or the
    configured avatar."""
    base = key_of(LiveAvatarOptions.from_settings(settings))
    if not settings.pool.avatars:
        return [base]
    keys = []
    for entry in settings.pool.avatars:
        parts = [*entry.split(":"), "-", "-"][:3]
        avatar_id, quality, encoding = (
            p.strip() if p.strip() not in ("", "-") else default
            for p, default in zip(parts, (base.avatar_id, base.quality, base.encoding), strict=True)
        )
        keys.append(AvatarKey(avatar_id, quality, encoding.upper()))
    return keys


@dataclass(slots=True)
class _Entry:
    uplink: LiveAvatarUplink
    key: AvatarKey
    room: WarmRoom | None = None


@dataclass(frozen=True, slots=True)
class Handout:
    """What a pool hit gives a session: the warm uplink and, when its media path is the room's,
    the room already joined (the session's to adopt or leave)."""

    uplink: LiveAvatarUplink
    room: WarmRoom | None


class WarmPool:
    def __init__(
        self,
        settings: Settings,
        api: LiveAvatarAPI,
        ledger: SessionLedger,
        active_sessions: Callable[[], int],
        *,
        prejoin: PreJoin | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._prejoin = prejoin
        self._api = api
        self._ledger = ledger
        self._active = active_sessions
        self._clock = clock
        pool = settings.pool
        self.policy = PoolPolicy(
            configured_keys(settings),
            size=pool.size,
            max_sessions=settings.limits.max_sessions,
            cost_cap_s_per_hour=pool.cost_cap_s_per_hour,
            min_remaining_s=pool.min_remaining_s,
            retry_backoff_s=pool.retry_backoff_s,
        )
        self._options = {
            key: LiveAvatarOptions.from_settings(
                settings,
                {
                    "avatar_id": key.avatar_id,
                    "video_quality": key.quality,
                    "video_encoding": key.encoding,
                },
            )
            for key in self.policy.keys
        }
        self._entries: dict[str, _Entry] = {}
        self._ids = itertools.count(1)
        self._wake = asyncio.Event()
        self._closing = False
        self._idle_reported = 0.0
        self._tasks = TaskSet(self._task_failed)  # the refill loop and warm starts
        self._stops = TaskSet(self._task_failed)  # stops: awaited, not cancelled, on close
        self._loop: asyncio.Task[None] | None = None

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        self._loop = self._tasks.spawn(self._run(), "pool_refill")
        log.info("pool_started", keys=[str(k) for k in self.policy.keys], size=self.policy.size)

    async def aclose(self) -> None:
        """Stop refilling and stop every warm session. Idempotent, never raises."""
        if self._closing:
            return
        self._closing = True
        try:
            await self._tasks.aclose()  # the refill loop; starts in flight hand over a stop
            entries = list(self._entries.items())
            self._entries.clear()
            now = self._clock()
            for warm_id, entry in entries:
                self.policy.retired(warm_id, RetireReason.UNWANTED, now)
                self._stop(entry, "USER_CLOSED")
            # A stop retries with backoff; what is still unfinished then stays in the ledger.
            await self._stops.aclose(grace_s=15.0)
            self._report()
        except Exception:
            log.exception("pool_close_failed")
            return
        log.info("pool_drained", stopped=len(entries))

    def _task_failed(self, err: BridgeError) -> None:
        # A refill loop that crashed is logged and counted by the TaskSet; the daemon goes on
        # without a pool (every HELLO starts cold) rather than failing.
        log.error("pool_failed", error=err.message)

    # --- hand-out ------------------------------------------------------------------------------

    def take(
        self,
        options: LiveAvatarOptions,
        input_format: AudioFormat,
        events: EventSink,
        on_failure: FailureCallback,
        path: PathKind | None = None,
        *,
        claim: bool = True,
    ) -> Handout | None:
        """A warm uplink for a session with these options, adopted by it, with its room when
        ``path`` is the room's (None: the room is not wanted); None: start cold. ``claim``:
        get the room's first frame ready now (a HELLO; a handover switches later)."""
        key = key_of(options)
        if self._closing:
            return None
        if self._options.get(key) != options:
            # Not a kept key (or its sandbox/cap differ): a cold start, counted as a miss.
            log.info("pool_miss", key=str(key), kept=key in self._options)
            self.policy.stats.misses += 1
            POOL_MISSES.inc()
            return None
        now = self._clock()
        while True:
            warm_id = self.policy.take(key, now)
            if warm_id is None:
                log.info("pool_miss", key=str(key), kept=True)
                POOL_MISSES.inc()
                self._wake.set()
                self._report()
                return None
            entry = self._entries.pop(warm_id)
            if entry.uplink.healthy:
                break
            # Ended under us (its failure callback is on its way): not a hit after all.
            self.policy.stats.hits -= 1
            self._stop(entry, "SERVER_ERROR")
        entry.uplink.adopt(input_format, events, on_failure)
        room = entry.room
        if room is not None and (room.kind != path or not room.ready):
            POOL_ROOMS.labels("left").inc()
            self._stops.spawn(room.aclose(), "pool_leave_room")
            room = None
        elif room is not None:
            POOL_ROOMS.labels("adopted").inc()
            if claim:
                self._stops.spawn(room.claim(), "pool_claim_room")
        POOL_HITS.inc()
        log.info(
            "pool_hit",
            key=str(key),
            session_id=entry.uplink.session_id,
            room_joined=room is not None,
        )
        self._wake.set()  # refill
        self._report()
        return Handout(entry.uplink, room)

    # --- refill loop ---------------------------------------------------------------------------

    async def _run(self) -> None:
        while not self._closing:
            now = self._clock()
            for decision in self.policy.plan(now, self._active()):
                if isinstance(decision, Start):
                    self.policy.starting(decision.key)
                    self._tasks.spawn(self._start_one(decision.key), "pool_start")
                elif isinstance(decision, Retire):
                    self._retire(decision, now)
            self._report()
            self._wake.clear()
            try:
                async with asyncio.timeout(TICK_S):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def _start_one(self, key: AvatarKey) -> None:
        warm_id = f"warm-{next(self._ids)}"
        uplink = LiveAvatarUplink(
            self._api,
            self._ledger,
            self._options[key],
            UPLINK_FORMAT,
            self._warm_event,
            lambda err: self._lost(warm_id, err),
        )
        entry = _Entry(uplink, key)
        try:
            avatar_room = await uplink.start()
            await self._wait_connected(uplink)
            if self._prejoin is not None:
                entry.room = self._prejoin(key, lambda err: self._lost(warm_id, err))
            if entry.room is not None:
                await entry.room.join(avatar_room, self._settings.liveavatar.connect_timeout_s)
        except asyncio.CancelledError:
            self._stop(entry, "USER_CLOSED")
            raise
        except Exception as exc:
            POOL_START_FAILURES.inc()
            self.policy.start_failed(key, self._clock())
            log.warning("pool_start_failed", key=str(key), error=str(exc))
            self._stop(entry, "SERVER_ERROR")
            return
        if not uplink.healthy:  # ended while its room was joined
            POOL_START_FAILURES.inc()
            self.policy.start_failed(key, self._clock())
            log.warning("pool_start_failed", key=str(key), error="the session ended")
            self._stop(entry, "SERVER_ERROR")
            return
        self._entries[warm_id] = entry
        self.policy.started(warm_id, key, self._clock(), uplink.expires_at)
        log.info(
            "pool_warm_ready",
            key=str(key),
            session_id=uplink.session_id,
            room=None if entry.room is None else str(entry.room.kind),
        )
        self._report()

    async def _wait_connected(self, uplink: LiveAvatarUplink) -> None:
        """Ready means the WebSocket said 'connected': a hit then sends audio at once."""
        timeout = uplink.options.ws_connect_gate_timeout_s
        async with asyncio.timeout(timeout):
            while not uplink.connected:
                if not uplink.healthy:
                    raise BridgeError(ErrorCode.LIVEAVATAR_UNAVAILABLE, "warm session failed")
                await asyncio.sleep(0.02)

    def _warm_event(self, event: str, /, **fields: Any) -> None:
        log.debug("pool_warm_event", event_name=event)

    def _lost(self, warm_id: str, err: BridgeError) -> None:
        entry = self._entries.pop(warm_id, None)
        if entry is None:
            return  # still starting (its start fails) or already handed out
        POOL_LOST.inc()
        self.policy.lost(warm_id, self._clock())
        log.warning("pool_warm_lost", session_id=entry.uplink.session_id, error=err.message)
        # Even while closing: aclose stops only what is still in _entries (cleared before its
        # stops are awaited, so this stop is among them).
        self._stop(entry, "SERVER_ERROR")
        self._wake.set()

    def _retire(self, decision: Retire, now: float) -> None:
        entry = self._entries.pop(decision.warm_id, None)
        self.policy.retired(decision.warm_id, decision.reason, now)
        POOL_RETIRED.labels(str(decision.reason)).inc()
        if entry is not None:
            log.info(
                "pool_warm_retired", session_id=entry.uplink.session_id, reason=decision.reason
            )
            self._stop(entry, "USER_CLOSED")

    def _stop(self, entry: _Entry, reason: str) -> None:
        """Whoever drops a warm session stops it here: the stop is the pool's ``_stops``
        task, which aclose awaits (a stop awaited inside a start would be cancelled with it)."""
        self._stops.spawn(self._stop_entry(entry, reason), "pool_stop")

    @staticmethod
    async def _stop_entry(entry: _Entry, reason: str) -> None:
        """Leave the room first, so that its end (when the session stops) is not a failure."""
        if entry.room is not None:
            await entry.room.aclose()
        await entry.uplink.aclose(reason)

    def _report(self) -> None:
        for key in self.policy.keys:
            POOL_SIZE.labels(str(key)).set(self.policy.size_of(key))
        self.policy.account(self._clock())
        idle = self.policy.stats.idle_session_s
        if idle > self._idle_reported:
            POOL_IDLE_SECONDS.inc(idle - self._idle_reported)
            self._idle_reported = idle

    def describe(self) -> dict[str, Any]:
        stats = self.policy.stats
        return {
            "size": {str(k): self.policy.size_of(k) for k in self.policy.keys},
            "hits": stats.hits,
            "misses": stats.misses,
            "lost": stats.lost,
            "retired": dict(stats.retired),
            "idle_session_s": round(stats.idle_session_s, 1),
        }


__all__ = ["Handout", "PreJoin", "WarmPool", "configured_keys", "key_of"]
