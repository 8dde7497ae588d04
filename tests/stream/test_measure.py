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


def feed_flashes(m: CallMeasure, lost: set[int], span: int = marks.FLASH_FRAMES) -> list[float]:
    """Video only, 30 fps, a ``span``-frame flash every 15 frames from frame 5; frames in
    ``lost`` never arrive. Returns the true flash (onset frame) receipt times."""
    t0, truth = 500.0, []
    for i in range(120):
        flash = (i - 5) % 15 < span and i >= 5
        if (i - 5) % 15 == 0 and i >= 5:
            truth.append(t0 + i / FPS)
        if i not in lost:
            m.on_video(W, H, y_plane(i, flash), t0 + i / FPS + 1 / FPS)  # released a frame late
    return truth


def test_a_flash_whose_first_frame_was_dropped_is_timed_from_its_end() -> None:
    exact = CallMeasure("t:4")
    truth = feed_flashes(exact, lost=set())
    # An encoder dropping frames: the first frame of flashes 2 and 4 (frames 20 and 50), and
    # the first two of flash 6 (frames 80, 81).
    m = CallMeasure("t:5")
    assert feed_flashes(m, lost={20, 50, 80, 81}) == truth
    for measure in (exact, m):
        assert len(measure.flash_times) == len(truth)
        # Within a millisecond: media ms per frame comes from the marks' whole milliseconds.
        assert max(abs(a - b) for a, b in zip(measure.flash_times, truth, strict=True)) < 1e-3
    assert m.snapshot()["marks"]["flashes_late_first"] == 3


def test_a_flash_seen_by_one_frame_only_is_not_a_measurement() -> None:
    m = CallMeasure("t:6")
    # Flash 3 is frames 35-37. Seen: 32 dark, 36 flashed, 39 dark: it began at 34, 35 or 36.
    truth = feed_flashes(m, lost={33, 34, 35, 37, 38})
    assert len(m.flash_times) == len(truth) - 1
    assert m.snapshot()["marks"]["flashes_unresolved"] == 1


def test_a_flash_that_lost_its_start_and_its_end_is_timed_within_half_a_frame() -> None:
    m = CallMeasure("t:9")
    # Flash 3 (frames 35-37) seen as 34 dark, 36 and 37 flashed, 39 dark: it began at 35 or 36.
    truth = feed_flashes(m, lost={35, 38})
    assert len(m.flash_times) == len(truth)
    assert abs(m.flash_times[2] - truth[2]) <= 0.5 / FPS + 1e-3
    snap = m.snapshot()["marks"]
    assert snap["flashes_unresolved"] == 0 and snap["flashes_half_frame"] == 1


def test_audio_is_timed_by_its_arrival_when_the_receiver_keeps_a_backlog() -> None:
    """A jitter buffer that kept a 180 ms backlog after a burst releases audio late; timed by
    wire arrival the skew is the sender's (the video lag), not the receiver's state."""
    beeps = marks.beep_train(RATE, 7, 500, 100)
    wire, released = CallMeasure("t:7"), CallMeasure("t:8")
    t0, lag = 1000.0, 0.050
    for i in range(90):
        flash = round(i * 1000 / FPS) % 500 < 100
        t = t0 + i / FPS + lag + 1 / FPS
        for m in (wire, released):
            m.on_video(W, H, y_plane(i, flash), t)
    for k in range(150):
        pcm = beeps[k * 960 : (k + 1) * 960]
        arrival = t0 + k * 0.02
        t_out = arrival + AUDIO_HOLD_S + 0.180  # 4 packets prefetched + 9 more held
        wire.on_audio(pcm, RATE, 1, t_out, wire_t=arrival)
        released.on_audio(pcm, RATE, 1, t_out)
    ws, rs = wire.snapshot(), released.snapshot()
    assert abs(ws["sync"]["skew_ms_median"] - 1000 * lag) < 6
    assert abs(rs["sync"]["skew_ms_median"] - 1000 * (lag - 0.180)) < 6  # what it read before
    assert ws["audio"]["jitter_buffer_ms_p50"] == round(1000 * (AUDIO_HOLD_S + 0.180), 1)


def test_frames_completed_on_time_but_decoded_late_are_a_decoder_freeze_only() -> None:
    """The receiver's frames timed twice: as its jitter buffer completes them (what the network
    delivered) and as its decoder releases them (late when the decoder waits for a CPU)."""
    m = CallMeasure("t:4")
    t0 = 1000.0
    for i in range(60):
        m.on_video_assembled(t0 + i / FPS)
        stall = 0.35 if i >= 30 else 0.0  # the decoder stalls once, then keeps the delay
        m.on_video(W, H, None, t0 + i / FPS + 0.005 + stall)
    video = m.snapshot()["video"]
    assert video["assembled"] == {"frames": 60, "freezes": 0, "longest_gap_ms": 33.3}
    assert video["frames"] == 60 and video["freezes"] == 1
    assert video["longest_gap_ms"] > 350


def test_coded_beeps_are_told_apart_through_a_lossy_codec() -> None:
    """Each coded beep's tone is read back at the receiver after Opus at 48 kHz: the beep
    numbers heard, in order, are those sent (a beep dropped and one played twice show)."""
    import av

    rng = np.random.default_rng(17)
    first = int(rng.integers(0, 1000))
    order = [first + i for i in range(12)]
    order = order[:4] + order[5:9] + order[7:]  # beep 4 lost, beeps 7 and 8 played twice
    pcm24 = np.concatenate([marks.coded_beeps(24000, k, 1, 500, 100) for k in order])
    pcm = np.repeat(pcm24, 2)  # 48 kHz (the tones are far below 12 kHz: no filter needed)
    enc = av.CodecContext.create("libopus", "w")
    enc.sample_rate, enc.layout, enc.format = RATE, "mono", "s16"
    enc.bit_rate = 32000
    dec = av.CodecContext.create("libopus", "r")
    dec.sample_rate, dec.layout = RATE, "mono"
    m = CallMeasure("t:tones")
    t = 1000.0
    for i in range(0, len(pcm) - 959, 960):
        frame = av.AudioFrame.from_ndarray(pcm[i : i + 960].reshape(1, -1), "s16", "mono")
        frame.sample_rate, frame.pts = RATE, i
        for packet in enc.encode(frame):
            for out in dec.decode(packet):
                m.on_audio(out.to_ndarray().astype(np.int16).reshape(-1), RATE, 1, t)
                t += out.samples / RATE
    ids = [marks.tone_id(hz) for _, hz in m.onset_tones]
    assert ids == [k % marks.TONE_IDS for k in order[: len(ids)]]
    assert len(ids) >= len(order) - 1  # the codec's delay may hold back the last beep's window
    assert [at for at, _ in m.onset_tones] == list(m.onset_times)[: len(ids)]
