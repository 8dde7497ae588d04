"""The stand-in SFU's arrival-stall rule (libwebrtc's freeze rule on what reaches the SFU),
sans-I/O: frame arrival times in, stalls out."""

from __future__ import annotations

import random

from bridge.sim.stream.forward import ArrivalStalls

FRAME_TICKS = 3000  # 90 kHz at 30 fps


def feed(stalls: ArrivalStalls, times: list[float]) -> list[bool]:
    return [stalls.add(i * FRAME_TICKS, t) for i, t in enumerate(times)]


def test_a_steady_stream_with_jitter_never_stalls() -> None:
    rng = random.Random(3)
    times = [i / 30 + rng.uniform(0, 0.02) for i in range(600)]
    stalls = ArrivalStalls()
    assert not any(feed(stalls, times))
    assert stalls.stalls == 0 and stalls.frames == 600


def test_a_gap_longer_than_the_freeze_rule_is_one_stall_when_it_ends() -> None:
    times = [i / 30 for i in range(60)] + [2.0 + 0.3 + i / 30 for i in range(60)]
    stalls = ArrivalStalls()
    ended = feed(stalls, times)
    assert ended.count(True) == 1 and ended.index(True) == 60
    assert stalls.stalls == 1 and stalls.stall_times[0] == times[60]
    assert stalls.stalls_between(times[59], times[60]) == 1
    assert stalls.stalls_between(0.0, times[59]) == 0
    assert abs(stalls.longest_s - (times[60] - times[59])) < 1e-9


def test_a_gap_within_the_rule_is_no_stall() -> None:
    # 33 ms frames: the rule is mean + 150 ms (~183 ms); a 153 ms gap is not a stall.
    times = [i / 30 for i in range(30)] + [29 / 30 + 0.120 + i / 30 for i in range(1, 30)]
    stalls = ArrivalStalls()
    assert not any(feed(stalls, times))


def test_packets_of_one_frame_and_older_frames_do_not_count() -> None:
    stalls = ArrivalStalls()
    for i in range(10):
        for _ in range(3):  # three packets per frame
            assert not stalls.add(i * FRAME_TICKS, i / 30)
    # A retransmission of frame 2 arriving late is not a new frame.
    assert not stalls.add(2 * FRAME_TICKS, 1.0)
    assert stalls.frames == 10
    # RTP timestamps wrap around.
    wrap = ArrivalStalls()
    start = 0xFFFFFFFF - 2 * FRAME_TICKS
    for i in range(10):
        wrap.add((start + i * FRAME_TICKS) & 0xFFFFFFFF, i / 30)
    assert wrap.frames == 10 and wrap.stalls == 0
