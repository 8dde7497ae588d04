"""A warm relay room's hold (sans-I/O): nothing is kept before the HELLO claims the room; after
it, packets are held from the first keyframe start on, in order, bounded, and handed over once."""

from __future__ import annotations

import random

from bridge.relay.warm import HOLD_PACKETS, ClaimHold


def test_nothing_is_held_before_the_claim() -> None:
    hold: ClaimHold[int] = ClaimHold()
    assert not hold.offer(1, keyframe_start=True)
    assert not hold.offer(2, keyframe_start=False)
    assert not hold.holds_keyframe
    assert hold.drain() == []


def test_after_the_claim_the_hold_starts_at_a_keyframe_and_keeps_the_order() -> None:
    rng = random.Random(17)
    hold: ClaimHold[int] = ClaimHold()
    hold.claim()
    # Delta frames (and audio) before the claim's keyframe are no use to a decoder: dropped.
    deltas = rng.randint(1, 20)
    assert not any(hold.offer(i, keyframe_start=False) for i in range(deltas))
    assert hold.offer(deltas, keyframe_start=True)
    after = [deltas + 1 + i for i in range(rng.randint(1, 50))]
    for item in after:
        # A later keyframe does not restart the hold: what came before it is still needed.
        assert hold.offer(item, keyframe_start=rng.random() < 0.1)
    assert hold.holds_keyframe
    assert hold.drain() == [deltas, *after]
    assert hold.drain() == []  # handed over once
    assert not hold.offer(999, keyframe_start=True)  # drained: no new hold without a claim


def test_an_overflowing_hold_is_dropped_and_counted() -> None:
    hold: ClaimHold[int] = ClaimHold(capacity=5)
    hold.claim()
    assert all(hold.offer(i, keyframe_start=i == 0) for i in range(5))
    assert not hold.offer(5, keyframe_start=False)
    assert hold.overflowed == 5
    assert not hold.holds_keyframe and not hold.claimed
    assert hold.drain() == []
    assert HOLD_PACKETS > 5
