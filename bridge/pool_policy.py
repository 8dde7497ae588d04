"""The warm pool's decisions, without I/O: which warm LiveAvatar sessions to start, which to
stop, which to hand out, and what the pool costs. Pure functions of its state, the demand and
the ``now`` it is given (tested without sockets: tests/core/test_pool_policy.py);
:mod:`bridge.pool` carries them out.

Rules, in order of precedence:

1. Never more than ``max_sessions`` LiveAvatar sessions: active ones + warm + starting. A miss
   that pushes the total over retires the oldest warm session (``over_limit``).
2. A warm session with less than ``min_remaining_s`` left before its cap is retired
   (``aging``): handing it out would only bring the handover forward.
3. Cost cap: idle (warm, unused) session-seconds accrued over the last rolling hour. At the cap
   every warm session is retired (``cost_cap``) and none is started until the window allows.
4. Otherwise each key is refilled up to ``size``, one start at a time per key, with a doubling
   backoff after a failed start.

A hand-out takes the oldest warm session of the key that still has ``min_remaining_s`` left, so
younger ones age less before use.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import StrEnum

HOUR_S = 3600.0
MAX_BACKOFF_S = 60.0


@dataclass(frozen=True, slots=True, order=True)
class AvatarKey:
    """What a warm session must match to be handed out."""

    avatar_id: str
    quality: str
    encoding: str

    def __str__(self) -> str:
        return f"{self.avatar_id}:{self.quality}:{self.encoding}"


class RetireReason(StrEnum):
    AGING = "aging"
    COST_CAP = "cost_cap"
    OVER_LIMIT = "over_limit"
    UNWANTED = "unwanted"  # its key is no longer configured (never happens today)


@dataclass(frozen=True, slots=True)
class Start:
    key: AvatarKey


@dataclass(frozen=True, slots=True)
class Retire:
    warm_id: str
    reason: RetireReason


Decision = Start | Retire


@dataclass(slots=True)
class Warm:
    warm_id: str
    key: AvatarKey
    ready_at: float
    expires_at: float  # when the provider's cap ends it
    accounted_to: float  # idle seconds counted up to this time


@dataclass(slots=True)
class PoolStats:
    hits: int = 0
    misses: int = 0
    started: int = 0
    start_failures: int = 0
    lost: int = 0  # warm sessions the provider ended
    retired: dict[str, int] = field(default_factory=dict)
    idle_session_s: float = 0.0  # every idle second ever accrued (the metric)


@dataclass(slots=True)
class _KeyState:
    starting: int = 0
    failures: int = 0
    next_try: float = 0.0


class PoolPolicy:
    def __init__(
        self,
        keys: list[AvatarKey],
        *,
        size: int,
        max_sessions: int,
        cost_cap_s_per_hour: float,
        min_remaining_s: float,
        retry_backoff_s: float = 2.0,
    ) -> None:
        self.keys = list(dict.fromkeys(keys))
        self.size = size
        self.max_sessions = max_sessions
        self.cost_cap_s_per_hour = cost_cap_s_per_hour
        self.min_remaining_s = min_remaining_s
        self.retry_backoff_s = retry_backoff_s
        self.warm: dict[str, Warm] = {}
        self._keys: dict[AvatarKey, _KeyState] = {k: _KeyState() for k in self.keys}
        # (end time, seconds) of idle accrual, for the rolling hour; pruned as it ages.
        self._window: deque[tuple[float, float]] = deque()
        self.stats = PoolStats()

    # --- what happened ------------------------------------------------------------------------

    def starting(self, key: AvatarKey) -> None:
        self._keys[key].starting += 1

    def started(self, warm_id: str, key: AvatarKey, now: float, expires_at: float) -> None:
        state = self._keys[key]
        state.starting -= 1
        state.failures = 0
        self.warm[warm_id] = Warm(warm_id, key, now, expires_at, now)
        self.stats.started += 1

    def start_failed(self, key: AvatarKey, now: float) -> None:
        state = self._keys[key]
        state.starting -= 1
        state.failures += 1
        backoff = min(MAX_BACKOFF_S, self.retry_backoff_s * 2 ** (state.failures - 1))
        state.next_try = now + backoff
        self.stats.start_failures += 1

    def lost(self, warm_id: str, now: float) -> None:
        """The provider ended a warm session (drop, idle cut, cap)."""
        if self._remove(warm_id, now) is not None:
            self.stats.lost += 1

    def retired(self, warm_id: str, reason: RetireReason, now: float) -> None:
        if self._remove(warm_id, now) is not None:
            self.stats.retired[reason] = self.stats.retired.get(reason, 0) + 1

    def take(self, key: AvatarKey, now: float) -> str | None:
        """A HELLO wants ``key``: the warm session to hand out, or None (a cold start)."""
        usable = [
            w
            for w in self.warm.values()
            if w.key == key and w.expires_at - now >= self.min_remaining_s
        ]
        if not usable:
            self.stats.misses += 1
            return None
        chosen = min(usable, key=lambda w: w.ready_at)
        self._remove(chosen.warm_id, now)
        self.stats.hits += 1
        return chosen.warm_id

    # --- cost ---------------------------------------------------------------------------------

    def account(self, now: float) -> float:
        """Accrue idle seconds of the warm sessions up to ``now``; returns the rolling hour's."""
        for w in self.warm.values():
            self._accrue(w, now)
        while self._window and self._window[0][0] <= now - HOUR_S:
            self._window.popleft()
        return sum(s for _, s in self._window)

    def _accrue(self, w: Warm, now: float) -> None:
        seconds = max(0.0, now - w.accounted_to)
        w.accounted_to = max(w.accounted_to, now)
        if seconds > 0:
            self._window.append((now, seconds))
            self.stats.idle_session_s += seconds

    def _remove(self, warm_id: str, now: float) -> Warm | None:
        w = self.warm.pop(warm_id, None)
        if w is not None:
            self._accrue(w, now)
        return w

    # --- what to do ---------------------------------------------------------------------------

    def plan(self, now: float, active_sessions: int) -> list[Decision]:
        """The starts and retirements due now (the caller reports back what happened)."""
        decisions: list[Decision] = []
        gone: set[str] = set()

        def retire(w: Warm, reason: RetireReason) -> None:
            decisions.append(Retire(w.warm_id, reason))
            gone.add(w.warm_id)

        by_age = sorted(self.warm.values(), key=lambda w: w.ready_at)
        for w in by_age:
            if w.key not in self._keys:
                retire(w, RetireReason.UNWANTED)
            elif w.expires_at - now < self.min_remaining_s:
                retire(w, RetireReason.AGING)
        at_cap = self.account(now) >= self.cost_cap_s_per_hour
        if at_cap:
            for w in by_age:
                if w.warm_id not in gone:
                    retire(w, RetireReason.COST_CAP)
        starting = sum(k.starting for k in self._keys.values())
        total = active_sessions + starting + len(self.warm) - len(gone)
        for w in by_age:
            if total <= self.max_sessions:
                break
            if w.warm_id not in gone:
                retire(w, RetireReason.OVER_LIMIT)
                total -= 1
        if at_cap or self.size == 0:
            return decisions
        for key in self.keys:
            state = self._keys[key]
            if state.starting or now < state.next_try or total >= self.max_sessions:
                continue
            have = sum(1 for w in self.warm.values() if w.key == key and w.warm_id not in gone)
            if have < self.size:
                decisions.append(Start(key))
                total += 1
        return decisions

    def size_of(self, key: AvatarKey) -> int:
        return sum(1 for w in self.warm.values() if w.key == key)


__all__ = [
    "AvatarKey",
    "Decision",
    "PoolPolicy",
    "PoolStats",
    "Retire",
    "RetireReason",
    "Start",
    "Warm",
]
