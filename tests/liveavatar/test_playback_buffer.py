"""The stand-in renderer's playback-buffer model: a turn's audio that arrives after its buffer ran
dry plays late, and the gap is counted as an underrun (bridge/sim/avatar.py)."""

from __future__ import annotations

import asyncio

import numpy as np

from bridge.sim.avatar import OUT_RATE, AvatarRenderer

LATENCY_S = 0.05


def speech(ms: int) -> bytes:
    t = np.arange(24 * ms) / 24_000
    return (np.sin(2 * np.pi * 440 * t) * 8000).astype("<i2").tobytes()


async def test_audio_arriving_after_the_buffer_ran_dry_is_an_underrun() -> None:
    r = AvatarRenderer(640, 360, 30, LATENCY_S)
    r.start()
    try:
        r.push_audio(speech(100), "t1")
        # Far longer than the 100 ms queued plus the latency: the buffer is certainly empty.
        await asyncio.sleep(0.6)
        r.push_audio(speech(100), "t1")
    finally:
        await r.aclose()
    timing = r.turns["t1"]
    assert r.underruns == timing.underruns == 1
    # At least the sleep beyond what had been queued (a slower loop only makes it longer).
    assert timing.underrun_s >= 0.6 - 0.1 - LATENCY_S - 0.02
    assert timing.first_play_t is not None
    assert timing.first_play_t >= timing.first_audio_rx_t + LATENCY_S - 1 / OUT_RATE


async def test_audio_arriving_in_time_and_a_new_turn_are_no_underrun() -> None:
    r = AvatarRenderer(640, 360, 30, LATENCY_S)
    r.start()
    try:
        r.push_audio(speech(2000), "t1")
        r.push_audio(speech(100), "t1")  # queued behind 2 s still to play
        r.end_turn("t1")
        await asyncio.sleep(0.05)
        r.push_audio(speech(100), "t2")  # another turn: its start is no underrun
    finally:
        await r.aclose()
    assert r.underruns == 0
    assert set(r.turns) == {"t1", "t2"}
