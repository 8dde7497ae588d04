"""The sync stage's bounded queues, overflow policies, video hold and barge-in flush.

The publisher here is a recording test double of the CallPublisher interface; the real one is
exercised end to end in tests/pipeline/test_end_to_end.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import numpy as np
import pytest

from bridge.media import AudioChunk, AudioFormat, JitterBufferReading, VideoFrame
from bridge.sync import (
    MAX_BATCH_S,
    MAX_STEP_MS,
    AudioBacklog,
    PacerQueue,
    ReceiverDelay,
    SyncStage,
    VideoAlignment,
)

FMT = AudioFormat(48000, 1)


class RecordingPublisher:
    def __init__(self, video_write_s: float = 0.0) -> None:
        self.video: list[tuple[int, float]] = []  # (pts_us, written at monotonic s)
        self.audio: list[AudioChunk] = []
        self.flushed = 0
        self.video_write_s = video_write_s
        self.gate = asyncio.Event()
        self.gate.set()
        self.writing_video = asyncio.Event()

    async def start(self) -> None: ...

    async def write_video(self, frame: VideoFrame) -> None:
        self.writing_video.set()
        await self.gate.wait()
        await asyncio.sleep(self.video_write_s)
        self.video.append((frame.pts_us, time.monotonic()))

    async def write_audio(self, chunk: AudioChunk) -> None:
        await self.gate.wait()
        self.audio.append(chunk)

    def flush_audio(self) -> None:
        self.flushed += 1

    async def aclose(self) -> None: ...


def frame(pts_us: int) -> VideoFrame:
    return VideoFrame(np.zeros(16 * 16 * 3 // 2, np.uint8), 16, 16, pts_us)


def chunk(ms: int) -> AudioChunk:
    return AudioChunk(np.zeros(48 * ms, np.int16), FMT)


async def run_for(stage: SyncStage, seconds: float) -> None:
    task = asyncio.create_task(stage.run())
    await asyncio.sleep(seconds)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_video_is_held_by_the_configured_delay() -> None:
    """Every picture but the call's first is held by the delay (before the first there is no
    speech to line it up with: it leaves at once)."""
    pub = RecordingPublisher()
    stage = SyncStage(
        pub, fps=30, buffer_seconds=1.0, audio_queue_ms=200, audio_backlog_ms=200, video_delay_ms=60
    )
    first, second = frame(1), frame(2)
    stage.put_video(first)
    stage.put_video(second)
    stage.put_audio(chunk(10))
    await run_for(stage, 0.3)
    assert len(pub.audio) == 1
    (_, written_first), (_, written_second) = pub.video
    held_first = written_first - first.received_ns / 1e9
    held = written_second - second.received_ns / 1e9
    assert 0.055 <= held < 0.25
    assert held_first < held


async def test_video_queue_drops_oldest_when_full() -> None:
    pub = RecordingPublisher()
    pub.gate.clear()  # the publisher is stalled
    stage = SyncStage(
        pub, fps=10, buffer_seconds=0.5, audio_queue_ms=200, audio_backlog_ms=200, video_delay_ms=0
    )
    assert stage.video_capacity == 5
    task = asyncio.create_task(stage.run())
    await asyncio.sleep(0)
    for i in range(12):
        stage.put_video(frame(i))
    await asyncio.sleep(0.01)
    assert stage.depth()["video_frames"] <= 5
    assert stage.video_dropped >= 6
    pub.gate.set()
    await asyncio.sleep(0.05)
    task.cancel()
    pts = [p for p, _ in pub.video]
    assert pts == sorted(pts) and pts[-1] == 11  # the freshest frames survive, in order


async def test_audio_overflow_is_bounded_and_counted() -> None:
    pub = RecordingPublisher()
    pub.gate.clear()
    stage = SyncStage(
        pub, fps=30, buffer_seconds=1.0, audio_queue_ms=100, audio_backlog_ms=100, video_delay_ms=0
    )
    for _ in range(30):
        stage.put_audio(chunk(10))
    assert stage.depth()["audio_ms"] <= 100
    assert abs(stage.audio_dropped_s - 0.2) < 1e-6


async def test_flush_forgets_queued_media() -> None:
    pub = RecordingPublisher()
    pub.gate.clear()
    stage = SyncStage(
        pub, fps=30, buffer_seconds=1.0, audio_queue_ms=500, audio_backlog_ms=500, video_delay_ms=0
    )
    for i in range(5):
        stage.put_video(frame(i))
        stage.put_audio(chunk(20))
    stage.flush()
    assert stage.depth() == {"video_frames": 0, "audio_ms": 0.0}
    pub.gate.set()
    await run_for(stage, 0.05)
    assert pub.video == [] and pub.audio == []


async def test_silence_reanchors_the_publisher_queue_once_per_silence() -> None:
    pub = RecordingPublisher()
    stage = SyncStage(
        pub, fps=30, buffer_seconds=1.0, audio_queue_ms=5000, audio_backlog_ms=5000,
        video_delay_ms=0, silence_flush_ms=100,
    )  # fmt: skip
    stage.audio.catch_up_above_s = 10.0  # a burst here: the silence is written, not skipped
    loud = AudioChunk(np.full(480, -32768, np.int16), FMT)  # a full-scale negative peak is loud
    for chunk_ in [chunk(10)] * 15 + [loud] * 3 + [chunk(10)] * 15:
        stage.put_audio(chunk_)
    await run_for(stage, 0.1)
    # Two silences of 150 ms each, split by sound: one flush for each, none for the sound.
    assert pub.flushed == 2 and stage.silence_flushes == 2


# ----- video alignment on the downlink receivers' delays (sans-I/O) ---------------------------


def reading(kind: str, t_ms: float, delay_s: float, emitted: int) -> JitterBufferReading:
    return JitterBufferReading(kind, delay_s, emitted, int(t_ms * 1_000_000))


def test_receiver_delay_is_the_mean_over_the_last_window() -> None:
    rx = ReceiverDelay(window_ms=100)
    assert rx.update(reading("audio", 0, 0.0, 0)) is None  # one reading: nothing to compare
    # 4800 samples emitted in 100 ms, each after 200 ms in the buffer.
    assert rx.update(reading("audio", 100, 960.0, 4800)) == pytest.approx(200.0)
    # The next 100 ms at 50 ms each: the window holds only them, not the earlier 200 ms.
    assert rx.update(reading("audio", 200, 960.0 + 240.0, 9600)) == pytest.approx(50.0)
    # Nothing emitted (a paused track): the last figure stands.
    assert rx.update(reading("audio", 300, 1200.0, 9600)) == pytest.approx(50.0)


def test_receiver_delay_averages_video_over_its_longer_window() -> None:
    rx = ReceiverDelay(window_ms=500)
    rx.update(reading("video", 0, 0.0, 0))
    delays = [0.010, 0.030, 0.010, 0.030, 0.010, 0.030]  # per 100 ms: 3 frames at each delay
    total, emitted = 0.0, 0
    for i, d in enumerate(delays, start=1):
        total += 3 * d
        emitted += 3
        ms = rx.update(reading("video", 100 * i, total, emitted))
    # The last 500 ms hold 15 frames: 9 at 30 ms, 6 at 10 ms -> mean 22 ms.
    assert ms == pytest.approx(1000 * (0.030 * 9 + 0.010 * 6) / 15)


def test_receiver_delay_restarts_when_the_counters_go_back() -> None:
    rx = ReceiverDelay(window_ms=100)
    rx.update(reading("audio", 0, 100.0, 480_000))
    assert rx.update(reading("audio", 100, 110.0, 484_800)) is not None
    # A full reconnect: a new receiver, its counters from zero. No figure until two readings.
    assert rx.update(reading("audio", 200, 0.5, 4800)) is None
    assert rx.update(reading("audio", 300, 0.5 + 144.0, 9600)) == pytest.approx(30.0)


def test_hold_follows_the_audio_minus_video_delay() -> None:
    align = VideoAlignment(base_ms=20, max_ms=800)
    assert align.hold_ms() == 20  # nothing measured: the base alone
    align.update(reading("audio", 0, 0.0, 0))
    align.update(reading("audio", 100, 4800 * 0.190, 4800))  # NetEq's start: 190 ms
    assert align.hold_ms() == pytest.approx(210.0)  # video's delay counts as 0 until read
    align.update(reading("video", 0, 0.0, 0))
    align.update(reading("video", 100, 3 * 0.010, 3))  # video hands frames out after 10 ms
    assert align.difference_ms == pytest.approx(180.0)
    assert align.hold_ms() == pytest.approx(200.0)
    # NetEq sheds its delay: 40 ms now, so the hold comes down with it.
    align.update(reading("audio", 200, 4800 * 0.190 + 4800 * 0.040, 9600))
    assert align.hold_ms() == pytest.approx(50.0)


def test_steadily_timed_frames_lower_the_base_by_the_cadence_allowance() -> None:
    """The frames written at a steady 30 fps (a viewer's Chromium renders them by cadence,
    bridge/cadence.py): the base comes down by the allowance once; LiveKit's 20 fps of a
    30 fps camera (33/67 ms) keeps it."""
    steady = VideoAlignment(base_ms=60, max_ms=800, follow=False, cadence_allowance_ms=8)
    changes = [steady.written(round(n * 1e6 / 30)) for n in range(40)]
    assert [c for c in changes if c is not None] == [pytest.approx(52.0)]
    assert steady.hold_ms() == pytest.approx(52.0)
    uneven = VideoAlignment(base_ms=60, max_ms=800, follow=False, cadence_allowance_ms=8)
    pts = [round(1e6 * (n + n // 2) / 30) for n in range(40)]  # every third frame dropped
    assert all(uneven.written(p) is None for p in pts)
    assert uneven.hold_ms() == 60
    assert uneven.written(pts[-1]) is None  # a repeated pts is not a duration


def test_hold_is_clamped_and_can_be_fixed() -> None:
    align = VideoAlignment(base_ms=20, max_ms=300)
    fixed = VideoAlignment(base_ms=20, max_ms=300, follow=False)
    for a in (align, fixed):
        a.update(reading("audio", 0, 0.0, 0))
        a.update(reading("audio", 100, 4800 * 0.9, 4800))  # 900 ms of audio delay
        a.update(reading("video", 0, 0.0, 0))
        a.update(reading("video", 100, 0.03, 3))
    assert align.hold_ms() == 300  # no longer than the video queue can hold
    assert fixed.hold_ms() == 20  # measured, not followed
    align.update(reading("video", 200, 0.03 + 3 * 2.0, 6))  # video far slower than audio
    assert align.hold_ms() == 0


async def test_video_is_held_by_the_receivers_difference() -> None:
    pub = RecordingPublisher()
    stage = SyncStage(
        pub, fps=30, buffer_seconds=1.0, audio_queue_ms=200, audio_backlog_ms=200, video_delay_ms=10
    )
    # The downlink's audio buffer 160 ms, its video 10 ms: frames wait 10 + 150 ms.
    for r in (
        reading("audio", 0, 0.0, 0),
        reading("audio", 100, 4800 * 0.160, 4800),
        reading("video", 0, 0.0, 0),
        reading("video", 100, 3 * 0.010, 3),
    ):
        stage.put_jitter_buffer(r)
    assert stage.alignment.hold_ms() == pytest.approx(160.0)
    f = frame(1)
    stage.put_video(frame(0))  # the call's first picture leaves at once
    stage.put_video(f)
    await run_for(stage, 0.4)
    written = dict(pub.video)[1]
    assert written - f.received_ns / 1e9 >= 0.155


def test_the_hold_moves_a_step_per_frame() -> None:
    align = VideoAlignment(base_ms=20, max_ms=800)
    assert align.frame_hold_ms() == 20
    align.released(20)
    align.update(reading("audio", 0, 0.0, 0))
    align.update(reading("audio", 100, 4800 * 0.110, 4800))
    align.update(reading("video", 0, 0.0, 0))
    align.update(reading("video", 100, 3 * 0.010, 3))
    assert align.hold_ms() == pytest.approx(120.0)  # the target jumped by 100 ms
    holds = []
    for _ in range(7):
        holds.append(align.frame_hold_ms())
        align.released(holds[-1])
    # No frame waits more than MAX_STEP_MS longer than the one before (no freeze).
    assert holds[:5] == pytest.approx([20 + MAX_STEP_MS * k for k in range(1, 6)])
    assert holds[5:] == pytest.approx([120.0, 120.0])
    # A shorter hold is reached by steps too: frames never fall due together.
    align.update(reading("audio", 200, 4800 * 0.110 + 4800 * 0.030, 9600))
    assert align.hold_ms() == pytest.approx(40.0)
    down = []
    for _ in range(5):
        down.append(align.frame_hold_ms())
        align.released(down[-1])
    assert down == pytest.approx([100.0, 80.0, 60.0, 40.0, 40.0])


async def test_a_stalled_publisher_gets_only_the_newest_due_frame() -> None:
    pub = RecordingPublisher()
    pub.gate.clear()  # the encoder is busy
    stage = SyncStage(
        pub, fps=30, buffer_seconds=1.0, audio_queue_ms=200, audio_backlog_ms=200, video_delay_ms=0
    )
    stage.put_video(frame(0))
    task = asyncio.create_task(stage.run())
    async with asyncio.timeout(5):
        await pub.writing_video.wait()  # frame 0 taken, its write waiting on the gate
    for i in range(1, 6):
        stage.put_video(frame(i))  # all due at once (no hold) while the write is stuck
    pub.gate.set()
    await asyncio.sleep(0.05)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    # Frames 1-4 went stale behind frame 5: writing them would put the picture behind.
    assert [p for p, _ in pub.video] == [0, 5]
    assert stage.video_late_dropped == 4


def test_the_publisher_queue_model_keeps_a_burst_until_a_flush() -> None:
    q = PacerQueue(capacity_s=0.2)
    ms = 1_000_000
    q.wrote(0.010, 0)
    assert q.depth_ms(5 * ms) == pytest.approx(5.0)  # drained in real time
    assert q.depth_ms(50 * ms) == 0.0  # never below empty
    # A stall: 100 ms of audio delivered at once, then audio at real time again.
    for _ in range(10):
        q.wrote(0.010, 100 * ms)
    for i in range(1, 11):
        q.wrote(0.010, (100 + 10 * i) * ms)
    assert q.depth_ms(200 * ms) == pytest.approx(100.0)  # the burst stands
    for _ in range(30):
        q.wrote(0.010, 200 * ms)
    assert q.depth_ms(200 * ms) == pytest.approx(200.0)  # the SDK's capacity: it drops beyond
    q.flushed(210 * ms)
    assert q.depth_ms(210 * ms) == 0.0


async def test_the_hold_adds_the_publisher_queue() -> None:
    pub = RecordingPublisher()
    stage = SyncStage(
        pub, fps=30, buffer_seconds=1.0, audio_queue_ms=500, audio_backlog_ms=500, video_delay_ms=0
    )
    fixed = SyncStage(
        pub, fps=30, buffer_seconds=1.0, audio_queue_ms=500, audio_backlog_ms=500, video_delay_ms=0,
        follow_receivers=False,
    )  # fmt: skip
    for s in (stage, fixed):
        s.pacer.wrote(0.3, time.monotonic_ns())  # 300 ms of audio written at once
    f, g = frame(1), frame(2)
    stage.put_video(frame(3))  # the call's first picture leaves at once
    stage.put_video(f)
    fixed.put_video(g)
    await asyncio.gather(run_for(stage, 0.5), run_for(fixed, 0.05))
    written = dict(pub.video)
    assert written[2] - g.received_ns / 1e9 < 0.2  # no hold without following
    assert written[1] - f.received_ns / 1e9 >= 0.25  # held while that audio plays out


# ----- audio through a stalled publisher: kept, paced, caught up in silence -------------------


def tone(ms: int, i: int) -> AudioChunk:
    """A loud chunk numbered ``i`` (its first sample), to check order and completeness."""
    samples = np.full(48 * ms, 8000, np.int16)
    samples[0] = i
    return AudioChunk(samples, FMT)


async def until(cond: Callable[[], bool], limit_s: float = 10.0) -> None:
    async with asyncio.timeout(limit_s):
        while not cond():  # noqa: ASYNC110 - polling a test double
            await asyncio.sleep(0.01)


async def test_speech_outlasts_a_publisher_stall_longer_than_the_sdk_queue() -> None:
    """The publisher's writes stall for 800 ms of speech (the SDK's runtime busy): every chunk
    of it reaches the publisher afterwards, in order, none dropped (it was: the stage's queue
    had the SDK's 200 ms bound and dropped the oldest 600 ms), and the backlog goes in small
    batches (no burst past the SDK's queue, which would drop the oldest of it)."""
    pub = RecordingPublisher()
    pub.gate.clear()
    stage = SyncStage(
        pub, fps=30, buffer_seconds=1.0, audio_queue_ms=200, video_delay_ms=0,
        audio_backlog_ms=2000,
    )  # fmt: skip
    task = asyncio.create_task(stage.run())
    try:
        for i in range(1, 81):
            stage.put_audio(tone(10, i))
            await asyncio.sleep(0)
        assert stage.audio_dropped_s == 0.0
        pub.gate.set()
        await until(lambda: sum(c.duration_s for c in pub.audio) >= 0.8 - 1e-9)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    pcm = np.concatenate([c.samples for c in pub.audio])
    assert [int(x) for x in pcm[::480]] == list(range(1, 81))
    assert max(c.duration_s for c in pub.audio) <= MAX_BATCH_S + 1e-9  # a burst the SDK takes
    assert len(pub.audio) < 80  # in batches: fewer round trips than chunks
    assert stage.audio_dropped_s == 0.0 and stage.audio_skipped_s == 0.0


async def test_the_backlog_is_shed_in_silence_only() -> None:
    """After a stall the latency it left goes in the pause: silent chunks are skipped while the
    backlog is above the catch-up threshold; every loud chunk is written."""
    pub = RecordingPublisher()
    pub.gate.clear()
    stage = SyncStage(
        pub, fps=30, buffer_seconds=1.0, audio_queue_ms=200, video_delay_ms=0,
        audio_backlog_ms=2000,
    )  # fmt: skip
    task = asyncio.create_task(stage.run())
    try:
        sent = [tone(10, i) for i in range(1, 31)] + [chunk(10)] * 50
        sent += [tone(10, i) for i in range(31, 41)]
        for c in sent:
            stage.put_audio(c)
        pub.gate.set()
        await until(lambda: any(int(c.samples[-480]) == 40 for c in pub.audio))
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    pcm = np.concatenate([c.samples for c in pub.audio])
    firsts = [int(x) for x in pcm[::480]]
    assert [x for x in firsts if x] == list(range(1, 41))
    assert stage.audio_skipped_s > 0.2  # most of the pause
    assert abs(stage.audio_skipped_s + firsts.count(0) * 0.01 - 0.5) < 1e-6
    assert stage.audio_dropped_s == 0.0


async def test_a_stall_longer_than_the_backlog_drops_the_oldest() -> None:
    pub = RecordingPublisher()
    pub.gate.clear()
    stage = SyncStage(
        pub, fps=30, buffer_seconds=1.0, audio_queue_ms=200, video_delay_ms=0,
        audio_backlog_ms=500,
    )  # fmt: skip
    for i in range(1, 81):
        stage.put_audio(tone(10, i))
    assert stage.depth()["audio_ms"] == pytest.approx(500.0)
    assert stage.audio_dropped_s == pytest.approx(0.3)


def test_the_backlog_gives_what_fits_and_skips_silence_only_above_the_threshold() -> None:
    q = AudioBacklog(max_s=1.0, catch_up_above_s=0.05)
    for c in [chunk(10)] * 3 + [tone(10, 1), tone(10, 2)] + [chunk(10)] * 2:
        assert q.put(c) == []
    taken = q.take(0.015)  # 70 ms queued: the silent head is skipped down to the threshold
    assert taken.skipped_s == pytest.approx(0.02)
    assert [int(c.samples[0]) for c in taken.chunks] == [0]  # one fits
    assert q.queued_s == pytest.approx(0.04)
    taken = q.take(1.0)  # below the threshold: nothing skipped, all of it fits
    assert taken.skipped_s == 0.0
    assert [int(c.samples[0]) for c in taken.chunks] == [1, 2, 0, 0]
    assert len(q) == 0 and q.queued_s == 0.0
    q.put(tone(30, 3))
    assert len(q.take(0.01).chunks) == 1  # a chunk larger than the room still goes


async def test_audio_flows_when_the_sdk_queue_is_smaller_than_the_kept_margin() -> None:
    """output.audio_queue_ms at its minimum (20 ms, under the 40 ms the pump keeps free): each
    chunk still goes once the modelled queue is empty (no wedge, no busy loop)."""
    pub = RecordingPublisher()
    stage = SyncStage(
        pub, fps=30, buffer_seconds=1.0, audio_queue_ms=20, audio_backlog_ms=2000,
        video_delay_ms=0,
    )  # fmt: skip
    task = asyncio.create_task(stage.run())
    try:
        for i in range(1, 11):
            stage.put_audio(tone(10, i))
        await until(lambda: len(pub.audio) >= 10)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert [int(c.samples[0]) for c in pub.audio] == list(range(1, 11))
