"""The sync stage's bounded queues, overflow policies, video hold and barge-in flush.

The publisher here is a recording test double of the CallPublisher interface; the real one is
exercised end to end in tests/pipeline/test_end_to_end.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import numpy as np

from bridge.media import AudioChunk, AudioFormat, VideoFrame
from bridge.sync import SyncStage

FMT = AudioFormat(48000, 1)


class RecordingPublisher:
    def __init__(self, video_write_s: float = 0.0) -> None:
        self.video: list[tuple[int, float]] = []  # (pts_us, written at monotonic s)
        self.audio: list[AudioChunk] = []
        self.flushed = 0
        self.video_write_s = video_write_s
        self.gate = asyncio.Event()
        self.gate.set()

    async def start(self) -> None: ...

    async def write_video(self, frame: VideoFrame) -> None:
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
    stage = SyncStage(pub, fps=30, buffer_seconds=1.0, audio_queue_ms=200, video_delay_ms=60)
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
    stage = SyncStage(pub, fps=10, buffer_seconds=0.5, audio_queue_ms=200, video_delay_ms=0)
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
    stage = SyncStage(pub, fps=30, buffer_seconds=1.0, audio_queue_ms=100, video_delay_ms=0)
    for _ in range(30):
        stage.put_audio(chunk(10))
    assert stage.depth()["audio_ms"] <= 100
    assert abs(stage.audio_dropped_s - 0.2) < 1e-6


async def test_flush_forgets_queued_media() -> None:
    pub = RecordingPublisher()
    pub.gate.clear()
    stage = SyncStage(pub, fps=30, buffer_seconds=1.0, audio_queue_ms=500, video_delay_ms=0)
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
        pub, fps=30, buffer_seconds=1.0, audio_queue_ms=5000, video_delay_ms=0,
        silence_flush_ms=100,
    )  # fmt: skip
    loud = AudioChunk(np.full(480, -32768, np.int16), FMT)  # a full-scale negative peak is loud
    for chunk_ in [chunk(10)] * 15 + [loud] * 3 + [chunk(10)] * 15:
        stage.put_audio(chunk_)
    await run_for(stage, 0.1)
    # Two silences of 150 ms each, split by sound: one flush for each, none for the sound.
    assert pub.flushed == 2 and stage.silence_flushes == 2
