"""The warm pool's policy, without sockets or clocks: state, demand and time in, decisions out."""

from __future__ import annotations

from bridge.pool_policy import AvatarKey, PoolPolicy, Retire, RetireReason, Start

A = AvatarKey("a", "low", "VP8")
B = AvatarKey("b", "high", "H264")
CAP_S = 600.0  # each warm session's life, from ready to the provider's cap


def policy(**kw: float) -> PoolPolicy:
    args: dict[str, float] = {
        "size": 1,
        "max_sessions": 4,
        "cost_cap_s_per_hour": 3600.0,
        "min_remaining_s": 60.0,
        "retry_backoff_s": 2.0,
    } | kw
    return PoolPolicy(
        [A, B],
        size=int(args["size"]),
        max_sessions=int(args["max_sessions"]),
        cost_cap_s_per_hour=args["cost_cap_s_per_hour"],
        min_remaining_s=args["min_remaining_s"],
        retry_backoff_s=args["retry_backoff_s"],
    )


def fill(p: PoolPolicy, now: float, active: int = 0) -> list[str]:
    """Carry out the plan's starts as immediate successes; returns the new warm ids."""
    ids = []
    for d in p.plan(now, active):
        if isinstance(d, Start):
            p.starting(d.key)
            wid = f"{d.key.avatar_id}-{p.stats.started}"
            p.started(wid, d.key, now, now + CAP_S)
            ids.append(wid)
    return ids


def test_fills_each_key_then_hands_out_and_refills() -> None:
    p = policy()
    assert p.plan(0.0, 0) == [Start(A), Start(B)]
    ids = fill(p, 0.0)
    assert p.plan(1.0, 0) == []  # full
    assert p.take(A, 2.0) == ids[0]
    assert p.stats.hits == 1
    assert p.plan(2.0, 1) == [Start(A)]  # refill the key that was used


def test_a_miss_is_counted_and_a_start_in_flight_is_not_doubled() -> None:
    p = policy()
    assert p.take(A, 0.0) is None
    assert p.stats.misses == 1
    p.starting(A)
    assert Start(A) not in p.plan(0.0, 0)


def test_the_session_limit_bounds_warm_plus_active() -> None:
    p = policy(max_sessions=2)
    fill(p, 0.0)
    assert len(p.warm) == 2
    # Two cold sessions became active: both warm ones must go, oldest first.
    decisions = p.plan(1.0, 2)
    assert [d.reason for d in decisions if isinstance(d, Retire)] == [
        RetireReason.OVER_LIMIT,
        RetireReason.OVER_LIMIT,
    ]
    assert not any(isinstance(d, Start) for d in decisions)


def test_an_aging_session_is_retired_not_handed_out() -> None:
    p = policy()
    ids = fill(p, 0.0)
    late = CAP_S - 30.0  # 30 s left, under min_remaining_s
    assert p.take(A, late) is None
    assert Retire(ids[0], RetireReason.AGING) in p.plan(late, 0)


def test_cost_cap_stops_warm_sessions_and_refills_after_the_window() -> None:
    p = policy(cost_cap_s_per_hour=100.0)
    ids = fill(p, 0.0)
    assert p.plan(40.0, 0) == []  # 2 x 40 s = 80 idle s, under the cap
    decisions = p.plan(50.0, 0)  # 100 s: at the cap
    assert sorted(d.warm_id for d in decisions if isinstance(d, Retire)) == sorted(ids)
    assert all(d.reason is RetireReason.COST_CAP for d in decisions if isinstance(d, Retire))
    for wid in ids:
        p.retired(wid, RetireReason.COST_CAP, 50.0)
    assert p.stats.idle_session_s == 100.0
    assert p.plan(100.0, 0) == []  # still inside the hour
    assert p.plan(50.0 + 3600.0, 0) == [Start(A), Start(B)]


def test_failed_starts_back_off_doubling() -> None:
    p = policy()
    p.starting(A)
    p.start_failed(A, 10.0)
    assert Start(A) not in p.plan(11.0, 0)
    assert Start(A) in p.plan(12.0, 0)
    p.starting(A)
    p.start_failed(A, 12.0)
    assert Start(A) not in p.plan(15.9, 0)
    assert Start(A) in p.plan(16.0, 0)


def test_a_lost_session_is_refilled_and_its_idle_time_counted() -> None:
    p = policy(size=1)
    ids = fill(p, 0.0)
    p.lost(ids[0], 30.0)
    assert p.stats.lost == 1
    assert p.stats.idle_session_s == 30.0
    assert Start(A) in p.plan(30.0, 0)


def test_size_zero_starts_nothing() -> None:
    assert policy(size=0).plan(0.0, 0) == []
