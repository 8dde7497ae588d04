"""The avatar as LiveAvatar's renderer really reaches LiveKit: a LiveKit client publishing.

Joins the session's room with the real ``livekit`` SDK (libwebrtc encodes) and publishes the
renderer's tracks with the options a LiveKit client uses by default: camera video with simulcast
in the session's codec, microphone audio as Opus with DTX off. The LiveKit stand-in then forwards
the publisher's RTP SFU-style, so subscribers (the daemon, its relay) see libwebrtc-produced RTP:
simulcast layers, temporal layers, picture ids, padding probes, H264 as libwebrtc packetizes it.

The renderer's tracks are aiortc ``MediaStreamTrack``s; one pump per track copies their frames
into the SDK's sources (I420 planes as they are, s16 PCM as it is).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import av
import numpy as np
import structlog
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from livekit import rtc

__all__ = ["SdkAvatarPublisher"]

log = structlog.get_logger(__name__)

CONNECT_TIMEOUT_S = 15.0
PUBLISH_TIMEOUT_S = 10.0
SAMPLE_RATE = 48_000
AUDIO_QUEUE_MS = 100
# Audio that would play further behind the renderer's clock than this is skipped, not captured.
# The source plays what it is given in real time, so a pump that fell behind (a busy event loop:
# the stand-ins, libwebrtc's callbacks and this pump share one) would otherwise keep its backlog
# as extra audio delay for the rest of the session: measured 190-310 ms median (up to 820 ms)
# on the loaded 2-core machine, the cause of the -140...-205 ms A/V skews at Stream. A real-time
# renderer never sends late audio; the video track already skips to live the same way.
AUDIO_MAX_LAG_MS = 60


class SdkAvatarPublisher:
    """Publishes ``video``/``audio`` into a LiveKit room as a client; :meth:`aclose` leaves."""

    def __init__(
        self,
        video: MediaStreamTrack,
        audio: MediaStreamTrack,
        *,
        width: int,
        height: int,
        codec: str,
    ) -> None:
        self._video = video
        self._audio = audio
        self.width, self.height = width, height
        self.codec = codec.upper()
        self.room = rtc.Room()
        self._vsource = rtc.VideoSource(width, height)
        # A short queue: the renderer already paces its audio in real time; a long one only
        # adds latency the daemon would have to sync away.
        self._asource = rtc.AudioSource(SAMPLE_RATE, 1, queue_size_ms=AUDIO_QUEUE_MS)
        self._tasks: list[asyncio.Task[None]] = []
        self.frames = 0
        self.audio_frames = 0
        # How far behind the renderer's clock each captured audio frame was (ms): a pump that
        # fell behind keeps its backlog, since the source plays what it gets in real time.
        self.audio_lag_ms: list[float] = []
        self.audio_skipped = 0

    async def start(self, url: str, token: str) -> None:
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            await self.room.connect(url, token)
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._pump_video(), name="avatar-sdk-video"),
            loop.create_task(self._pump_audio(), name="avatar-sdk-audio"),
        ]
        codec = rtc.VideoCodec.H264 if self.codec == "H264" else rtc.VideoCodec.VP8
        lp = self.room.local_participant
        async with asyncio.timeout(PUBLISH_TIMEOUT_S):
            await lp.publish_track(
                rtc.LocalVideoTrack.create_video_track("avatar-video", self._vsource),
                rtc.TrackPublishOptions(
                    source=rtc.TrackSource.SOURCE_CAMERA, simulcast=True, video_codec=codec
                ),
            )
            await lp.publish_track(
                rtc.LocalAudioTrack.create_audio_track("avatar-audio", self._asource),
                rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE, dtx=False),
            )
        log.info("avatar_sdk_published", codec=self.codec, width=self.width, height=self.height)

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        with contextlib.suppress(Exception):  # leaving a room the server already closed
            async with asyncio.timeout(5.0):
                await self.room.disconnect()

    async def _pump_video(self) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await self._video.recv()
                assert isinstance(frame, av.VideoFrame)
                data = _i420_bytes(frame)
                out = rtc.VideoFrame(frame.width, frame.height, rtc.VideoBufferType.I420, data)
                self._vsource.capture_frame(out)
                self.frames += 1

    async def _pump_audio(self) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await self._audio.recv()
                assert isinstance(frame, av.AudioFrame)
                pcm: Any = frame.to_ndarray()
                data = np.ascontiguousarray(pcm, dtype=np.int16).tobytes()
                samples = frame.samples
                clock = getattr(self._audio, "media_s", None)
                if clock is not None and frame.pts is not None and frame.time_base is not None:
                    # Lag past the end of the frame's 20 ms (0 when captured in time), plus what
                    # the source still has queued to play before it.
                    end = float((frame.pts + samples) * frame.time_base)
                    lag = 1000 * (clock() - end + self._asource.queued_duration)
                    if lag > AUDIO_MAX_LAG_MS:
                        self.audio_skipped += 1
                        continue
                    self.audio_lag_ms = [*self.audio_lag_ms[-255:], lag]
                await self._asource.capture_frame(
                    rtc.AudioFrame(data, frame.sample_rate or SAMPLE_RATE, 1, samples)
                )
                self.audio_frames += 1


def _i420_bytes(frame: av.VideoFrame) -> bytes:
    """The frame's Y, U, V planes back to back (no conversion when it is already yuv420p)."""
    if frame.format.name != "yuv420p":
        frame = frame.reformat(format="yuv420p")
    arr = frame.to_ndarray()  # (h * 3 / 2, w) for yuv420p
    return bytes(np.ascontiguousarray(arr).data)
