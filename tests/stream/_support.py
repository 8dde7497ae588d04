"""Helpers for the Stream tests: a recording EventSink, a publisher wired to the stand-in, and a
driver that feeds stamped frames and beeps in real time."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bridge.errors import BridgeError
from bridge.media import AudioChunk, AudioFormat, VideoFrame
from bridge.sim import marks
from bridge.sim.stream import StreamStandIn
from bridge.stream.publisher import PublisherOptions, StreamPublisher

FLASH_PERIOD_MS = 500
FLASH_MS = 100
AUDIO_RATE = 48000
AUDIO_CHUNK = 960  # 20 ms


@dataclass
class Recorder:
    """The publisher's EventSink and failure callback, recorded."""

    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    failures: list[BridgeError] = field(default_factory=list)

    def __call__(self, event: str, /, **fields: Any) -> None:
        self.events.append((event, fields))

    def fail(self, error: BridgeError) -> None:
        self.failures.append(error)


def make_publisher(
    standin: StreamStandIn, rec: Recorder, call_id: str, **overrides: Any
) -> StreamPublisher:
    opts: dict[str, Any] = {
        "api_key": standin.api_key,
        "api_secret": standin.api_secret,
        "base_url": standin.base_url,
        "join_timeout_s": 10.0,
        "width": 640,  # the stand-in avatar's size: no scaling in these tests
        "height": 360,
    }
    opts.update(overrides)
    return StreamPublisher(PublisherOptions(**opts), "default", call_id, rec, rec.fail)


def stamped_frame(i: int, w: int, h: int, fps: float) -> VideoFrame:
    """Mid-grey I420 frame ``i`` with the sync marks: flash in the first 100 ms of every 500."""
    buf = np.full(w * h * 3 // 2, 128, np.uint8)
    media_ms = round(i * 1000 / fps)
    flash = media_ms % FLASH_PERIOD_MS < FLASH_MS
    marks.stamp_frame(buf[: w * h].reshape(h, w), i, media_ms, flash)
    return VideoFrame(buf, w, h, media_ms * 1000)


async def drive(
    pub: StreamPublisher,
    seconds: float,
    w: int = 640,
    h: int = 360,
    fps: float = 30.0,
    start_frame: int = 0,
) -> int:
    """Feed ``seconds`` of marked video and beeps (aligned with the flashes) in real time.

    Returns the number of frames written (fewer than ``seconds * fps`` only when a loaded
    machine made the writes outlast the time bound). Both loops are bounded by count and time.
    """
    n_frames = round(seconds * fps)
    n_chunks = round(seconds * AUDIO_RATE / AUDIO_CHUNK)
    # Start the beep train at the same media time as the first frame.
    offset = round(start_frame * 1000 / fps) % FLASH_PERIOD_MS * AUDIO_RATE // 1000
    periods = (offset + n_chunks * AUDIO_CHUNK) // (FLASH_PERIOD_MS * AUDIO_RATE // 1000) + 2
    beeps = marks.beep_train(AUDIO_RATE, periods, FLASH_PERIOD_MS, FLASH_MS)
    t0 = time.monotonic()
    # Generous: each write awaits its encode, which a busy 2-core machine can slow severalfold.
    deadline = t0 + 3 * seconds + 10.0
    written = 0

    async def video() -> None:
        nonlocal written
        for k in range(n_frames):
            await pub.write_video(stamped_frame(start_frame + k, w, h, fps))
            written += 1
            await asyncio.sleep(max(0.0, t0 + (k + 1) / fps - time.monotonic()))
            if time.monotonic() > deadline:
                break

    async def audio() -> None:
        fmt = AudioFormat(AUDIO_RATE, 1)
        for k in range(n_chunks):
            a = offset + k * AUDIO_CHUNK
            await pub.write_audio(AudioChunk(beeps[a : a + AUDIO_CHUNK], fmt))
            await asyncio.sleep(
                max(0.0, t0 + (k + 1) * AUDIO_CHUNK / AUDIO_RATE - time.monotonic())
            )
            if time.monotonic() > deadline:
                break

    await asyncio.gather(video(), audio())
    return written


async def wait_for(predicate: Any, within_s: float = 5.0) -> bool:
    """Poll ``predicate()`` until true or ``within_s`` has passed."""
    end = time.monotonic() + within_s
    while time.monotonic() < end:
        if predicate():
            return True
        await asyncio.sleep(0.05)
    return bool(predicate())
