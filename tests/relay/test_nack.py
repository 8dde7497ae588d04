"""NackRequester: which upstream packets the relay asks for, and when again (no network)."""

from __future__ import annotations

import random

from bridge.relay.nack import MAX_GAP, NackRequester


def test_a_gap_is_asked_for_at_once_and_a_late_packet_fills_it() -> None:
    n = NackRequester()
    assert n.on_packet(10, 0.0) == []
    assert n.on_packet(13, 0.01) == [11, 12]
    assert n.on_packet(12, 0.02) == []  # its retransmission
    assert n.missing == 1 and n.asked == 2


def test_what_is_still_missing_is_asked_for_again_each_interval() -> None:
    n = NackRequester(retry_interval_s=0.1)
    n.on_packet(1, 0.0)
    assert n.on_packet(3, 0.0) == [2]
    assert n.on_packet(4, 0.05) == []  # not yet due
    assert n.due(0.09) == []
    assert n.due(0.1) == [2]  # the retransmission was lost too
    assert n.due(0.15) == []
    assert n.on_packet(5, 0.21) == [2]  # due again, asked with the next packet
    n.on_packet(2, 0.22)
    assert n.due(1.0) == [] and n.retries == 2


def test_retries_are_bounded_then_given_up() -> None:
    n = NackRequester(retry_interval_s=0.1, max_retries=3)
    n.on_packet(1, 0.0)
    n.on_packet(3, 0.0)
    asked = [t for t in range(1, 20) if n.due(t / 10) == [2]]
    assert asked == [1, 2, 3]  # three retries, 100 ms apart
    assert n.missing == 0 and n.given_up == 1


def test_across_the_sequence_wrap() -> None:
    n = NackRequester()
    n.on_packet(65533, 0.0)
    assert n.on_packet(1, 0.0) == [65534, 65535, 0]
    n.on_packet(65535, 0.01)
    assert n.due(0.2) == [65534, 0]


def test_a_jump_is_a_new_stream_not_a_loss() -> None:
    n = NackRequester()
    n.on_packet(100, 0.0)
    n.on_packet(102, 0.0)
    assert n.on_packet(100 + MAX_GAP + 50, 0.01) == []
    assert n.missing == 0 and n.restarts == 1 and n.given_up == 1
    assert n.on_packet(100 + MAX_GAP + 52, 0.02) == [100 + MAX_GAP + 51]


def test_the_missing_list_is_bounded() -> None:
    n = NackRequester(max_missing=100)
    n.on_packet(0, 0.0)
    n.on_packet(500, 0.0)
    assert n.missing == 100 and n.given_up == 399
    assert n.due(0.5)[0] == 400  # the newest kept


def test_seeded_loss_every_packet_comes_with_enough_retries() -> None:
    """A lossy hop (seeded) whose retransmissions are lost too: each packet is asked for until
    a copy arrives, and asked again exactly once per retransmission lost (a copy comes 20 ms
    after it is asked for, well inside the 100 ms before asking again)."""
    rng = random.Random(7)
    n = NackRequester(retry_interval_s=0.1, max_retries=10)
    pending: dict[int, float] = {}  # seq -> when its retransmission arrives
    received: set[int] = set()
    rtx_lost = 0

    def ask(seqs: list[int], t: float, loss: float) -> None:
        nonlocal rtx_lost
        for s in seqs:  # each copy asked for is lost at ``loss``, else arrives 20 ms on
            if rng.random() < loss:
                rtx_lost += 1
            else:
                pending[s] = t + 0.02

    def tick(t: float, loss: float) -> None:
        for s, at in sorted(pending.items()):
            if at <= t:
                del pending[s]
                received.add(s)
                ask(n.on_packet(s, at), at, loss)
        ask(n.due(t), t, loss)

    for seq in range(2000):
        t = seq * 0.01
        tick(t, 0.3)
        if rng.random() >= 0.05:
            received.add(seq)
            ask(n.on_packet(seq, t), t, 0.3)
    for k in range(1, 300):  # drain without loss, bounded
        tick(t + k * 0.01, 0.0)
    assert received == set(range(2000))
    assert n.given_up == 0 and n.missing == 0 and not pending
    assert rtx_lost > 0 and n.retries == rtx_lost


def test_a_new_stream_restarts_and_a_late_packet_of_the_old_one_is_ignored() -> None:
    """A rebase upstream (a new SSRC): what the old stream misses is no longer asked for, and a
    late packet or retransmission of it neither is tracked nor restarts the new stream's
    tracking (the new stream's missing packets are still asked for)."""
    n = NackRequester(retry_interval_s=0.1)
    assert n.follow(1111)
    n.on_packet(10, 0.0)
    assert n.on_packet(13, 0.0) == [11, 12]
    assert n.follow(2222)  # the new stream
    assert n.missing == 0 and n.restarts == 1 and n.given_up == 2
    n.on_packet(500, 0.1)
    assert n.on_packet(502, 0.1) == [501]
    assert not n.follow(1111)  # the old stream's late packet: not ours any more
    assert n.stale == 1 and n.restarts == 1 and n.missing == 1
    assert n.follow(2222)
    assert n.on_packet(503, 0.25) == [501]  # still asked again
    assert n.ssrc == 2222
