"""A call publisher on the Stream SFU session a declined relay already joined.

When the relay declines (the SFU granted another codec than the avatar's), its participant is
in the call already. Rather than leave and let the Stream SDK join again (a viewer would see the
avatar arrive, leave and return), the transcode path publishes on that session: aiortc encodes
the decoded avatar in the granted codec (VP8 or H264, the video encoders aiortc has, or VP9,
added by :mod:`bridge.stream.vp9_send`) and sends it through the relay publisher's peer
connection.

Queues (both drop the oldest on overflow, counted in ``bridge_dropped_total``): video holds
``VIDEO_QUEUE`` frames in front of aiortc's encoder (a late frame is worth less than a fresh one);
audio holds ``pcm_queue_s`` of PCM in front of the Opus encoder.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from fractions import Fraction
from typing import Any

import av
import numpy as np
import structlog
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from bridge import metrics
from bridge.media import AudioChunk, VideoFrame, WirePts
from bridge.stream.relay_publisher import StreamRelayPublisher
from bridge.stream.vp9_send import vp9_send_enabled

log = structlog.get_logger(__name__)

# The video codecs aiortc can encode (VP9 with bridge.stream.vp9_send): a declined relay's
# session is kept for these, so the call sees one join whatever the SFU grants of them.
ENCODABLE = ("VP8", "H264", "VP9")
VIDEO_QUEUE = 2
_US = Fraction(1, 1_000_000)


class _FeedTrack(MediaStreamTrack):
    """A track aiortc's sender pulls from; the publisher pushes. Bounded by ``capacity`` units
    (frames for video, seconds for audio), oldest dropped first."""

    def __init__(self, kind: str, capacity: float) -> None:
        super().__init__()
        self.kind = kind
        self._capacity = capacity
        self._items: deque[tuple[av.VideoFrame | av.AudioFrame, float]] = deque()
        self._size = 0.0
        self._ready = asyncio.Event()
        self.dropped = 0

    def put(self, frame: av.VideoFrame | av.AudioFrame, size: float) -> None:
        self._items.append((frame, size))
        self._size += size
        while self._size > self._capacity and len(self._items) > 1:
            _, old = self._items.popleft()
            self._size -= old
            self.dropped += 1
            metrics.DROPS.labels(stage=f"kept_session_{self.kind}", reason="queue_full").inc()
        self._ready.set()

    def clear(self) -> None:
        self._items.clear()
        self._size = 0.0

    async def recv(self) -> av.VideoFrame | av.AudioFrame:
        while not self._items:
            if self.readyState != "live":
                raise MediaStreamError
            self._ready.clear()
            await self._ready.wait()
        frame, size = self._items.popleft()
        self._size -= size
        return frame

    def stop(self) -> None:
        super().stop()
        self._ready.set()


def _scale(frame: av.VideoFrame, width: int, height: int) -> av.VideoFrame:
    return frame.reformat(width=width, height=height, format="yuv420p", interpolation="BILINEAR")


class KeptSessionPublisher:
    """Implements :class:`bridge.stages.CallPublisher` on a joined ``StreamRelayPublisher``."""

    def __init__(
        self, stream: StreamRelayPublisher, *, width: int, height: int, pcm_queue_s: float
    ) -> None:
        codec = (stream.granted_codec or "").upper()
        if codec not in ENCODABLE:
            raise ValueError(f"aiortc encodes {ENCODABLE}, the SFU granted {codec!r}")
        if codec == "VP9" and not vp9_send_enabled():
            # Installed once at daemon start (RemoteStages), never mid-run under other sessions.
            raise RuntimeError("VP9 sending is not enabled: call enable_vp9_send() at start")
        self._stream = stream
        self._codec = codec
        self._width, self._height = width, height
        self._video = _FeedTrack("video", VIDEO_QUEUE)
        self._audio = _FeedTrack("audio", pcm_queue_s)
        self._audio_samples = 0
        self._last_pts_us = -1
        self._wire_pts = WirePts()
        self._closing = False
        self.frames_written = 0
        self.frames_dropped = 0
        self.audio_seconds = 0.0

    async def start(self) -> None:
        await self._stream.publish(
            self._codec,
            audio_source=self._audio,
            video_source=self._video,
            media_path="transcode",
        )

    async def write_video(self, frame: VideoFrame) -> None:
        if self._closing or frame.pts_us <= self._last_pts_us:
            self.frames_dropped += 1
            metrics.DROPS.labels(stage="kept_session_video", reason="not_publishable").inc()
            return
        self._last_pts_us = frame.pts_us
        # The RTP timestamp is held to the write's own time (WirePts): aiortc's sender reports
        # extrapolate from the last packet sent (docs/sync.md, "Sender reports").
        wire_pts_us = round(1e6 * self._wire_pts.stamp(frame.pts_us / 1e6, time.monotonic()))
        w, h = frame.width, frame.height
        out = av.VideoFrame.from_ndarray(frame.data.reshape(h * 3 // 2, w), format="yuv420p")
        if (w, h) != (self._width, self._height):
            out = await asyncio.to_thread(_scale, out, self._width, self._height)
        out.pts = wire_pts_us
        out.time_base = _US
        self._video.put(out, 1)
        self.frames_written += 1

    async def write_audio(self, chunk: AudioChunk) -> None:
        if self._closing:
            return
        fmt = chunk.fmt
        samples = np.ascontiguousarray(chunk.samples, dtype=np.int16).reshape(1, -1)
        out = av.AudioFrame.from_ndarray(
            samples, format="s16", layout="mono" if fmt.channels == 1 else "stereo"
        )
        out.sample_rate = fmt.sample_rate
        out.pts = self._audio_samples
        out.time_base = Fraction(1, fmt.sample_rate)
        self._audio_samples += chunk.frames
        self._audio.put(out, chunk.duration_s)
        self.audio_seconds += chunk.duration_s

    def flush_audio(self) -> None:
        self._audio.clear()

    def stats(self) -> dict[str, Any]:
        return {
            "frames_written": self.frames_written,
            "frames_dropped": self.frames_dropped + self._video.dropped,
            "audio_seconds": round(self.audio_seconds, 3),
            "audio_dropped_chunks": self._audio.dropped,
            "codec": self._codec,
            "kept_relay_session": True,
        }

    async def aclose(self) -> None:
        self._closing = True
        self._video.stop()
        self._audio.stop()
        await self._stream.aclose()
