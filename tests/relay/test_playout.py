"""The relay's playout pacing (bridge/relay/playout.py), without sockets: packets with seeded
arrival jitter go in, and come out at their RTP clock plus the hold."""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest

from bridge.relay.playout import PlayoutBuffer

RATE = 48_000
TICK = 960  # 20 ms of Opus


@dataclass
class Pkt:
    ssrc: int
    timestamp: int
    n: int = 0


def run(
    buf: PlayoutBuffer[Pkt], arrivals: list[tuple[float, Pkt]], step: float = 0.0005
) -> list[tuple[float, Pkt]]:
    """Drive the buffer as the relay's pump would: push at each arrival, release when due
    (polled every ``step`` seconds). Returns (send time, packet)."""
    sent: list[tuple[float, Pkt]] = []
    t = arrivals[0][0]
    i = 0
    end = arrivals[-1][0] + 2.0
    while t <= end:
        while i < len(arrivals) and arrivals[i][0] <= t:
            at, p = arrivals[i]
            sent.extend((at, q) for q in buf.push(p, at))
            i += 1
        sent.extend((t, q) for q in buf.pop_due(t))
        t += step
    return sent


def test_jitter_is_taken_out_up_to_the_hold() -> None:
    rng = random.Random(15)
    hold = 0.06
    buf: PlayoutBuffer[Pkt] = PlayoutBuffer(RATE, hold)
    ts0 = 4_000_000_000  # wraps within the run
    arrivals = []
    for n in range(500):
        jitter = rng.uniform(0, 0.04)  # all within the hold
        arrivals.append((10.0 + 0.02 * n + jitter, Pkt(7, (ts0 + n * TICK) % (1 << 32), n)))
    arrivals.sort(key=lambda a: a[0])
    sent = run(buf, arrivals)
    assert [p.n for _, p in sent] == sorted(p.n for _, p in sent)
    assert len(sent) == 500
    # After the first window the base is the best-case transit: every packet leaves at its media
    # time plus a constant (within the poll step), whatever its own jitter was.
    offsets = [t - 0.02 * p.n for t, p in sent if p.n >= 260]
    assert max(offsets) - min(offsets) < 0.002
    assert buf.stats.late == 0 and buf.stats.rebases == 0


def test_a_late_outlier_goes_out_at_once_and_the_rest_keep_their_pace() -> None:
    buf: PlayoutBuffer[Pkt] = PlayoutBuffer(RATE, 0.04)
    arrivals = [(1.0 + 0.02 * n, Pkt(1, n * TICK, n)) for n in range(100)]
    arrivals[50] = (arrivals[50][0] + 0.106, arrivals[50][1])  # 106 ms late
    arrivals.sort(key=lambda a: a[0])
    sent = run(buf, arrivals)
    by_n = {p.n: t for t, p in sent}
    assert buf.stats.late >= 1
    assert by_n[50] == pytest.approx(1.0 + 0.02 * 50 + 0.106, abs=0.001)
    # The packets after it are not delayed by it: each still leaves at its deadline.
    assert by_n[51] == pytest.approx(1.0 + 0.02 * 51 + 0.04, abs=0.001)
    assert by_n[60] == pytest.approx(1.0 + 0.02 * 60 + 0.04, abs=0.001)
    order = [p.n for _, p in sent]
    assert order.index(50) > order.index(52)  # the held-up one went when it came


def test_a_burst_after_a_stall_is_spread_back_over_its_clock() -> None:
    buf: PlayoutBuffer[Pkt] = PlayoutBuffer(RATE, 0.06)
    arrivals = []
    for n in range(60):
        t = 1.0 + 0.02 * n
        if 20 <= n < 23:
            t = 1.0 + 0.02 * 22.5  # held up to 30 ms upstream, then delivered together
        arrivals.append((t, Pkt(1, n * TICK, n)))
    sent = run(buf, arrivals)
    by_n = {p.n: t for t, p in sent}
    gaps = [by_n[n + 1] - by_n[n] for n in range(15, 30)]
    assert all(g == pytest.approx(0.02, abs=0.001) for g in gaps)
    assert buf.stats.late == 0


def test_ssrc_change_and_timestamp_jump_rebase() -> None:
    buf: PlayoutBuffer[Pkt] = PlayoutBuffer(RATE, 0.05, max_hold_s=0.3)
    assert buf.push(Pkt(1, 0), 1.0) == []
    assert buf.next_due() == pytest.approx(1.05)
    # A new SSRC with unrelated timestamps: held by the hold, not by its timestamp.
    buf.push(Pkt(2, 123_456_789), 1.02)
    assert buf.stats.rebases == 1
    assert buf.pop_due(1.05) and buf.next_due() == pytest.approx(1.07)
    # Timestamps jump 10 s ahead on the same SSRC: not held 10 s (it is the best transit yet).
    buf.push(Pkt(2, 123_456_789 + 10 * RATE), 1.04)
    assert buf.stats.rebases == 1
    assert buf.pop_due(1.1)[-1].timestamp == 123_456_789 + 10 * RATE
    # ... and back by 10 s: 10 s late by that base, which is no jitter: rebased.
    assert buf.push(Pkt(2, 123_456_789 + TICK), 1.1) == []
    assert buf.stats.rebases == 2 and buf.next_due() == pytest.approx(1.15)


def test_capacity_releases_the_oldest_early() -> None:
    buf: PlayoutBuffer[Pkt] = PlayoutBuffer(RATE, 0.1, capacity=3)
    out = []
    for n in range(5):
        out += buf.push(Pkt(1, n * TICK, n), 1.0 + 0.02 * n)
    assert [p.n for p in out] == [0, 1]
    assert buf.stats.released_early == 2 and len(buf) == 3


def test_offset_adds_to_the_hold() -> None:
    buf: PlayoutBuffer[Pkt] = PlayoutBuffer(90_000, 0.03, offset_s=0.02)
    buf.push(Pkt(1, 0), 5.0)
    assert buf.next_due() == pytest.approx(5.05)
    assert [p.timestamp for p in buf.drain()] == [0] and buf.next_due() is None


def test_a_new_offset_applies_to_later_packets_without_reordering() -> None:
    """The cadence hold (bridge/cadence.py) moves the video's offset mid-stream: what
    waits keeps its deadline, the next frame takes the new one, never before its predecessor."""
    buf: PlayoutBuffer[Pkt] = PlayoutBuffer(90_000, 0.03, offset_s=0.018)
    buf.push(Pkt(1, 0), 5.0)
    assert buf.next_due() == pytest.approx(5.048)
    buf.set_offset(0.010)
    buf.push(Pkt(1, 3000), 5.0334)  # 33.3 ms later: due 8 ms sooner after its predecessor
    buf.push(Pkt(1, 3000), 5.0336)  # the frame's second packet: the same deadline
    buf.set_offset(0.0)
    buf.push(Pkt(1, 3001), 5.034)  # even with no offset left: not before the packet before it
    assert [p.timestamp for p in buf.pop_due(5.0479)] == []
    assert [p.timestamp for p in buf.pop_due(5.0481)] == [0]
    assert [p.timestamp for p in buf.pop_due(5.0728)] == []
    assert [p.timestamp for p in buf.pop_due(5.0738)] == [3000, 3000, 3001]


def test_steps_are_the_frames_durations() -> None:
    buf: PlayoutBuffer[Pkt] = PlayoutBuffer(90_000, 0.03)
    ts = 0
    for n, step in enumerate([3000, 6000, 3000, 6000]):
        for _ in range(3):  # a frame's packets share its timestamp
            buf.push(Pkt(1, ts), 1.0 + n * 0.05)
        ts += step
    buf.push(Pkt(1, ts), 1.3)
    assert buf.steps_s == pytest.approx([1 / 30, 1 / 15, 1 / 30, 1 / 15])
    assert buf.step_count == 4
    buf.push(Pkt(2, 0), 1.4)  # a new stream: its own steps
    assert buf.steps_s == [] and buf.step_count == 4


def test_packets_in_timestamp_order_never_overtake_each_other() -> None:
    """Seeded jitter, including packets of one frame spread out and bursts: whatever the base
    does, what was pushed in timestamp order is due in that order."""
    rng = random.Random(1515)
    buf: PlayoutBuffer[Pkt] = PlayoutBuffer(90_000, 0.03, window_s=0.5)
    t = 1.0
    n = 0
    dues = []
    for frame in range(300):
        t = max(t, 1.0 + frame / 30 + rng.choice((0.0, 0.0, 0.01, 0.08)))
        for _ in range(rng.randint(1, 4)):
            t += rng.uniform(0, 0.004)
            dues += buf.pop_due(t)  # the pump, before this arrival
            dues += buf.push(Pkt(3, frame * 3000, n), t)  # late ones: at once
            n += 1
        dues += buf.pop_due(t + 0.0005)
    dues += buf.drain()
    assert [p.n for p in dues] == list(range(n))


def test_held_packets_are_visible_in_release_order_and_keep_their_timing() -> None:
    """An interrupt rewrites what the buffer holds (old speech to silence): ``held`` gives the
    waiting packets in the order they will leave, and reading them changes nothing."""
    buf: PlayoutBuffer[Pkt] = PlayoutBuffer(RATE, hold_s=0.06)
    now = 10.0
    for n in range(3):
        assert buf.push(Pkt(1, n * TICK, n), now + n * 0.02) == []
    assert [p.n for p in buf.held()] == [0, 1, 2]
    due = buf.next_due()
    assert due is not None and abs(due - (now + 0.06)) < 1e-9
    assert len(buf) == 3 and [p.n for p in buf.pop_due(now + 0.06)] == [0]
