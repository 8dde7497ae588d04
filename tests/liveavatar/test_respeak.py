"""The unspoken rest of a lost avatar's turns (bridge/liveavatar/respeak.py), without sockets:
24 kHz PCM of beeps in, the avatar's ``speak_started``/``speak_ended`` and time in."""

from __future__ import annotations

import numpy as np
import pytest

from bridge.liveavatar.respeak import TurnRecorder
from bridge.liveavatar.uplink_core import BYTES_PER_MS
from bridge.sim.marks import beep_train

RATE = 24000
PERIOD_MS, BEEP_MS = 500, 100


def beeps(count: int) -> bytes:
    return beep_train(RATE, count, PERIOD_MS, BEEP_MS).tobytes()


def onsets_ms(pcm: bytes) -> list[float]:
    """Where each beep starts in ``pcm`` (a loud sample after >= 50 ms of quiet)."""
    x = np.abs(np.frombuffer(pcm, dtype=np.int16).astype(np.int32))
    out: list[float] = []
    quiet = 50 * RATE // 1000
    last = -quiet
    for i in np.flatnonzero(x > 1000):
        if i - last >= quiet:
            out.append(i * 1000 / RATE)
        last = i
    return out


def test_a_turn_not_started_is_spoken_whole() -> None:
    rec = TurnRecorder(max_ms=30_000, overlap_ms=300)
    pcm = beeps(4)
    rec.audio("t1", pcm)
    rec.ended("t1")
    (part,) = rec.unspoken(now=10.0)
    assert part.pcm == pcm and part.ended and part.from_ms == 0 and part.played_ms == 0
    assert rec.unspoken(now=10.0) == []  # taken once


@pytest.mark.parametrize("played_ms", [0.0, 20.0, 99.0, 130.0, 499.0, 1050.0, 1260.0, 1999.0])
def test_the_rest_starts_at_a_quiet_point_and_repeats_at_most_the_overlap(
    played_ms: float,
) -> None:
    rec = TurnRecorder(max_ms=30_000, overlap_ms=300)
    pcm = beeps(4)  # beeps at 0, 500, 1000, 1500 ms, 100 ms each
    rec.audio("t1", pcm)
    rec.speak_started("t1", now=100.0)
    (part,) = rec.unspoken(now=100.0 + played_ms / 1000)
    assert part.played_ms == pytest.approx(played_ms)
    assert played_ms - 300 <= part.from_ms <= played_ms
    # Every beep that began after the play position is in the rest, once; the one being played
    # (its onset within the overlap) is spoken again whole, never cut; none before it.
    rest_onsets = [part.from_ms + o for o in onsets_ms(part.pcm)]
    all_onsets = [float(k * PERIOD_MS) for k in range(4)]
    playing = [o for o in all_onsets if o <= played_ms < o + BEEP_MS]
    expected = [o for o in all_onsets if o > played_ms or o in playing]
    if played_ms == 0.0:
        expected = all_onsets  # not started: nothing played
    assert rest_onsets == pytest.approx(expected, abs=2.0)
    assert len(part.pcm) == len(pcm) - round(part.from_ms * BYTES_PER_MS)


def test_a_long_word_is_cut_back_by_no_more_than_the_overlap() -> None:
    rec = TurnRecorder(max_ms=30_000, overlap_ms=200)
    tone = beep_train(RATE, 1, 2000, 1500).tobytes()  # one 1.5 s "word"
    rec.audio("t1", tone)
    rec.speak_started("t1", now=0.0)
    (part,) = rec.unspoken(now=1.0)
    assert part.from_ms == pytest.approx(800.0)


def test_the_position_never_passes_the_audio_the_turn_had() -> None:
    rec = TurnRecorder(max_ms=30_000, overlap_ms=300)
    rec.audio("t1", beeps(2))  # 1 s, the client still streaming (turn open)
    rec.speak_started("t1", now=0.0)
    (part,) = rec.unspoken(now=5.0)
    assert part.played_ms == pytest.approx(1000.0)
    assert not part.ended
    assert part.ms <= 300  # only the quiet tail back to a boundary: the turn goes on


def test_played_and_interrupted_turns_are_not_spoken_again() -> None:
    rec = TurnRecorder(max_ms=30_000, overlap_ms=300)
    rec.audio("t1", beeps(2))
    rec.ended("t1")
    rec.speak_started("t1", now=0.0)
    rec.audio("t2", beeps(2))
    rec.ended("t2")
    rec.speak_ended("t1")
    rec.speak_started("t2", now=1.0)
    rec.audio("t3", beeps(3))  # queued behind t2
    parts = rec.unspoken(now=1.45)  # 450 ms into t2: its second beep is not played yet
    assert [len(onsets_ms(p.pcm)) for p in parts] == [1, 3]
    assert [p.ended for p in parts] == [True, False]
    rec.audio("t4", beeps(1))
    rec.clear()  # an interrupt
    assert rec.unspoken(now=2.0) == []


def test_a_fully_played_ended_turn_whose_speak_ended_was_lost_is_dropped() -> None:
    rec = TurnRecorder(max_ms=30_000, overlap_ms=0)
    rec.audio("t1", beeps(2))
    rec.ended("t1")
    rec.speak_started("t1", now=0.0)
    assert rec.unspoken(now=3.0) == []


def test_ids_the_service_chose_itself_follow_the_turn_order() -> None:
    rec = TurnRecorder(max_ms=30_000, overlap_ms=300)
    rec.audio("t1", beeps(2))
    rec.ended("t1")
    rec.audio("t2", beeps(2))
    rec.speak_started("their-1", now=0.0)
    rec.speak_ended("their-1")
    rec.speak_started("their-2", now=1.0)
    (part,) = rec.unspoken(now=1.2)  # t2, 200 ms in: its first beep played
    assert len(onsets_ms(part.pcm)) == 1 and part.from_ms >= 100


def test_the_bound_trims_the_oldest_audio_and_reports_it() -> None:
    rec = TurnRecorder(max_ms=1000, overlap_ms=300)
    assert rec.audio("t1", beeps(1)) == 0  # 500 ms
    trimmed = rec.audio("t2", beeps(2))  # 1000 ms more: t1 goes
    assert trimmed == pytest.approx(500.0)
    assert rec.recorded_ms == pytest.approx(1000.0)
    assert rec.audio("t2", beeps(1)) == pytest.approx(500.0)  # t2's own start goes
    rec.speak_started("t2", now=0.0)
    (part,) = rec.unspoken(now=0.2)  # t2's first 500 ms were trimmed: position before them
    assert part.from_ms == pytest.approx(500.0)
    assert part.ms == pytest.approx(1000.0)


@pytest.mark.parametrize("loss_at_s", [0.3, 1.15, 2.05, 7.77, 19.99])
def test_played_audio_is_dropped_and_the_rest_is_the_same(loss_at_s: float) -> None:
    """A real-time 20 s turn: a recorder told the time keeps about a second of it, and what it
    gives at a loss is exactly what one keeping the whole turn gives."""
    pcm = beeps(40)
    chunk = 20 * BYTES_PER_MS
    lead_s = 0.4  # the avatar starts playing 400 ms after the turn's first audio
    lean, full = TurnRecorder(max_ms=30_000, overlap_ms=300), TurnRecorder(30_000, 300)
    t0 = 100.0
    kept_max = 0.0
    for i in range(0, len(pcm), chunk):
        now = t0 + i / BYTES_PER_MS / 1000
        if now > t0 + loss_at_s:
            break
        assert lean.audio("t1", pcm[i : i + chunk], now) == 0.0  # nothing counted as trimmed
        assert full.audio("t1", pcm[i : i + chunk]) == 0.0
        if i == 0:
            for rec in (lean, full):  # ahead of time: nothing counts as played before it
                rec.speak_started("t1", t0 + lead_s)
        kept_max = max(kept_max, lean.recorded_ms)
    # Lead + overlap + a frame + one drop step + a chunk, at most.
    assert kept_max <= 400 + 300 + 10 + 500 + 20
    assert full.recorded_ms >= min(loss_at_s * 1000, 20_000) - 20
    assert lean.unspoken(t0 + loss_at_s) == full.unspoken(t0 + loss_at_s)
