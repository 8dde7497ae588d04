"""CallMeasure on synthetic input with known timing (no network)."""

from __future__ import annotations

import numpy as np

from bridge.sim import marks
from bridge.sim.stream.measure import AUDIO_HOLD_S, CallMeasure

W, H, FPS, RATE = 320, 180, 30.0, 48000


def y_plane(frame_no: int, flash: bool) -> np.ndarray[tuple[int, int], np.dtype[np.uint8]]:
    y = np.full((H, W), 128, np.uint8)
    marks.stamp_frame(y, frame_no, round(frame_no * 1000 / FPS), flash)
    return y


def feed(m: CallMeasure, seconds: float, video_lag_s: float, skip: range = range(0)) -> None:
    """Flash every 500 ms for 100 ms and a beep at the same media time; video arrives
    ``video_lag_s`` after audio. Frames in ``skip`` are never delivered."""
    beeps = marks.beep_train(RATE, int(seconds * 2) + 1, 500, 100)
    t0 = 1000.0
    events: list[tuple[float, str, int]] = []
    for i in range(int(seconds * FPS)):
        if i not in skip:
            events.append((t0 + i / FPS + video_lag_s, "v", i))
    for k in range(int(seconds * 50)):
        events.append((t0 + k * 0.02, "a", k))
    for t, kind, n in sorted(events):
        if kind == "v":
            flash = round(n * 1000 / FPS) % 500 < 100
            m.on_video(W, H, y_plane(n, flash), t)
        else:
            m.on_audio(beeps[n * 960 : (n + 1) * 960], RATE, 1, t)


def test_in_order_marks_and_skew_sign() -> None:
    m = CallMeasure("t:1")
    feed(m, 3.0, video_lag_s=0.200)
    s = m.snapshot()
    assert s["video"]["frames"] == 90 and s["video"]["resolution"] == f"{W}x{H}"
    assert 29 <= s["video"]["fps"] <= 31
    assert s["marks"]["in_order"] and s["marks"]["missing"] == 0 and s["marks"]["last"] == 89
    assert s["audio"]["seconds"] == 3.0 and s["audio"]["onsets"] == 6
    # Receipt skew = video lag - one frame interval (video hold) + audio hold.
    expected = 1000 * (0.200 - 1 / FPS + AUDIO_HOLD_S)
    assert s["sync"]["pairs"] == 6
    assert abs(s["sync"]["skew_ms_median"] - expected) < 6


def test_gaps_and_freezes_are_counted() -> None:
    m = CallMeasure("t:2")
    feed(m, 3.0, video_lag_s=0.0, skip=range(40, 52))  # 400 ms without pictures
    s = m.snapshot()
    assert s["video"]["freezes"] == 1
    assert s["video"]["longest_gap_ms"] > 390
    assert s["marks"]["missing"] == 12 and s["marks"]["max_gap"] == 13
    assert s["marks"]["in_order"]


def test_reset_forgets_and_sets_latency_origin() -> None:
    m = CallMeasure("t:3")
    feed(m, 1.0, video_lag_s=0.0)
    m.reset()
    m.media_origin_t = 999.95  # media_ms 0 was 50 ms before the first frame arrived
    m.on_video(W, H, y_plane(0, False), 1000.0)
    s = m.snapshot()
    assert s["video"]["frames"] == 1 and s["audio"]["seconds"] == 0.0
    assert s["latency"]["samples"] == 1 and abs(s["latency"]["p50_ms"] - 50.0) < 0.5
