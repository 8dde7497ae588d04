"""Fixtures: a LiveKit stand-in per test, avatar rooms with synthetic tracks, a downlink harness."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from bridge.errors import BridgeError
from bridge.livekit import DownlinkOptions, LiveKitDownlink
from bridge.media import AudioChunk, JitterBufferReading, MediaClock, VideoFrame
from bridge.sim import marks
from bridge.sim.livekit_server import LiveKitStandIn, SyntheticVideoTrack, ToneAudioTrack
from bridge.stages import AvatarRoom

AVATAR = "heygen"


class CollectingSink:
    """A small bounded MediaSink: keeps the latest items, counts what it had to drop."""

    def __init__(self, capacity: int = 4000, read_marks: bool = False) -> None:
        self.video: deque[tuple[int, int, int, int | None]] = deque(maxlen=capacity)
        self.audio: deque[AudioChunk] = deque(maxlen=capacity)
        self.video_total = 0
        self.audio_total = 0
        self.dropped = 0
        self._read_marks = read_marks
        self.jitter_buffer: deque[JitterBufferReading] = deque(maxlen=capacity)

    def put_video(self, frame: VideoFrame) -> None:
        if len(self.video) == self.video.maxlen:
            self.dropped += 1
        frame_no = None
        if self._read_marks:
            y = frame.data[: frame.width * frame.height].reshape(frame.height, frame.width)
            m = marks.read_frame(y)
            frame_no = None if m is None else m.frame_no
        self.video.append((frame.width, frame.height, frame.pts_us, frame_no))
        self.video_total += 1

    def put_audio(self, chunk: AudioChunk) -> None:
        if len(self.audio) == self.audio.maxlen:
            self.dropped += 1
        self.audio.append(chunk)
        self.audio_total += 1

    def put_jitter_buffer(self, reading: JitterBufferReading) -> None:
        self.jitter_buffer.append(reading)

    def audio_rms(self, last: int = 100) -> float:
        chunks = list(self.audio)[-last:]
        if not chunks:
            return 0.0
        pcm = np.concatenate([c.samples for c in chunks]).astype(np.float64)
        return float(np.sqrt((pcm * pcm).mean()))


@dataclass
class Harness:
    downlink: LiveKitDownlink
    sink: CollectingSink
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    failures: list[BridgeError] = field(default_factory=list)

    def event(self, name: str) -> dict[str, Any] | None:
        return next((f for e, f in self.events if e == name), None)

    async def wait_for(self, check: Callable[[], bool], within_s: float, what: str) -> None:
        # Polling: the conditions are plain counters that callbacks bump.
        deadline = asyncio.get_running_loop().time() + within_s
        while not check():
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"timed out after {within_s}s waiting for {what}")
            await asyncio.sleep(0.05)

    async def wait_ready(self, within_s: float = 10.0) -> dict[str, Any]:
        await self.wait_for(
            lambda: self.event("avatar_ready") is not None, within_s, "avatar_ready"
        )
        ready = self.event("avatar_ready")
        assert ready is not None
        return ready

    async def wait_failure(self, within_s: float = 10.0) -> BridgeError:
        await self.wait_for(lambda: bool(self.failures), within_s, "on_failure")
        return self.failures[0]


@pytest.fixture
async def standin() -> AsyncIterator[LiveKitStandIn]:
    server = LiveKitStandIn()
    await server.start()
    try:
        yield server
    finally:
        await server.aclose()


async def open_room(
    server: LiveKitStandIn,
    name: str = "room-1",
    *,
    width: int = 320,
    height: int = 180,
    fps: int = 30,
    codec: str = "VP8",
) -> SyntheticVideoTrack:
    video = SyntheticVideoTrack(width, height, fps)
    await server.create_room(
        name, avatar_identity=AVATAR, video=video, audio=ToneAudioTrack(), video_codec=codec
    )
    return video


MakeDownlink = Callable[..., Awaitable[Harness]]


@pytest.fixture
async def make_downlink(standin: LiveKitStandIn) -> AsyncIterator[MakeDownlink]:
    made: list[Harness] = []

    async def make(
        room: str = "room-1",
        *,
        token: str | None = None,
        url: str | None = None,
        read_marks: bool = False,
        identity: str | None = None,
        **options: Any,
    ) -> Harness:
        sink = CollectingSink(read_marks=read_marks)
        h = Harness(downlink=None, sink=sink)  # type: ignore[arg-type]

        def on_event(event: str, /, **fields: Any) -> None:
            h.events.append((event, fields))

        h.downlink = LiveKitDownlink(
            DownlinkOptions(avatar_identity=AVATAR, **options),
            MediaClock(),
            on_event,
            h.failures.append,
        )
        made.append(h)
        avatar_room = AvatarRoom(
            session_id="s-1",
            livekit_url=url or standin.url,
            livekit_token=token or standin.mint_token(room, identity or f"daemon-{len(made)}"),
            ws_url="",
        )
        await h.downlink.start(avatar_room, sink)
        return h

    try:
        yield make
    finally:
        for h in made:
            await h.downlink.aclose()
