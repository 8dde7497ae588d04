"""The avatar as LiveAvatar's renderer really reaches LiveKit: a LiveKit client publishing.

Joins the session's room with the real ``livekit`` SDK (libwebrtc encodes) and publishes the
renderer's tracks with the options a LiveKit client uses by default: camera video with simulcast
in the session's codec, microphone audio as Opus with DTX off. The LiveKit stand-in then forwards
the publisher's RTP SFU-style, so subscribers (the daemon, its relay) see libwebrtc-produced RTP:
simulcast layers, temporal layers, picture ids, padding probes, H264 as libwebrtc packetizes it.

The video pump copies the renderer's aiortc video track into the SDK's source (I420 planes as
they are), each frame with its capture time: the renderer's media time of the frame on the
monotonic clock (``timestamp_us``; libwebrtc's ``rtc::TimeMicros`` is CLOCK_MONOTONIC too), which
libwebrtc's video sender reports in its SRs. The audio pump runs on its own thread and event loop,
paced by the renderer's monotonic media clock: ``AudioSource.capture_frame`` is awaited on the
loop the source was made for, and on the stand-ins' busy loop (the stand-ins, the daemon's peers,
libwebrtc's callbacks) that await fell behind for seconds, so the audio reached the SFU 80-106 ms
behind the picture. A plain aiortc audio track (the tests' synthetic tone) is pumped on the
caller's loop instead.

The audio goes in as a capture device delivers it: 10 ms chunks, each when its last sample is
due on the renderer's clock, into a source without a queue (``queue_size_ms=0``: the SDK's native
source then hands each chunk straight to libwebrtc, as an audio device module does). With a queue,
the native source plays it out on its own 10 ms timer: handing it a 20 ms tick at the tick's start
kept 17-24 ms of earlier audio queued ahead of it, so every sample entered libwebrtc that much
after its media time while the picture entered on time, which no SR can see (docs/sync.md).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
import time
from collections import deque
from typing import Protocol

import av
import numpy as np
import numpy.typing as npt
import structlog
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from livekit import rtc

__all__ = ["RenderedAudio", "SdkAvatarPublisher"]

log = structlog.get_logger(__name__)

CONNECT_TIMEOUT_S = 15.0
PUBLISH_TIMEOUT_S = 10.0
SAMPLE_RATE = 48_000
AUDIO_QUEUE_MS = 100
# A renderer's audio is never dropped for being late: without a queue in the SDK's source a
# chunk that comes late reaches libwebrtc at once and its packets leave late once, with no lasting
# delay. Dropping it instead (the 60 ms bound the queued source needed: it played a backlog in
# real time, 190-310 ms under load) moves libwebrtc's RTP time, a sample count, behind the wall
# clock for good, 10 ms a chunk: the SRs follow that five SRs later and the relay's per-stream
# best case a window later, and meanwhile the two kinds' offsets disagree (docs/sync.md). Only a
# pump further behind than this (a stalled loop) skips to live, as the renderer's own track does.
AUDIO_RESYNC_MS = 1000
TICK_S = 0.02  # the renderer's audio tick (20 ms)
CHUNK_S = 0.01  # what the pump captures at a time: the SDK source's 10 ms frame
CHUNKS_PER_TICK = round(TICK_S / CHUNK_S)
# How often the audio pump looks again for a tick the renderer (on the main loop) has not
# computed yet: the renderer computes 60 ms ahead, so this only happens when that loop stalls.
NOT_READY_POLL_S = 0.002
CLOSE_TIMEOUT_S = 5.0
LAGS_KEPT = 256  # recent lags kept for the diagnostics (per chunk / frame)


class RenderedAudio(Protocol):
    """The renderer's audio as the pump reads it, from its own thread (``AvatarRenderer``)."""

    @property
    def closed(self) -> bool: ...

    def media_s(self) -> float: ...

    def ready_audio(self, k: int) -> npt.NDArray[np.int16] | None: ...


class SdkAvatarPublisher:
    """Publishes ``video``/``audio`` into a LiveKit room as a client; :meth:`aclose` leaves."""

    def __init__(
        self,
        video: MediaStreamTrack,
        audio: RenderedAudio | MediaStreamTrack,
        *,
        width: int,
        height: int,
        codec: str,
        max_fps: float | None = None,
    ) -> None:
        self._video = video
        self.max_fps = max_fps
        self._audio = audio
        self.width, self.height = width, height
        self.codec = codec.upper()
        self.room = rtc.Room()
        self._vsource = rtc.VideoSource(width, height)
        # The renderer's audio is pumped on its own loop and thread (see the module doc); the
        # source delivers its capture callbacks to the loop it is made for. A plain aiortc track
        # (tests' synthetic tone) is pumped on the caller's loop, where its recv() runs.
        self._aloop: asyncio.AbstractEventLoop | None = None
        self._athread: threading.Thread | None = None
        if not isinstance(audio, MediaStreamTrack):
            self._aloop = asyncio.new_event_loop()
            self._athread = threading.Thread(
                target=self._aloop.run_forever, name="avatar-sdk-audio", daemon=True
            )
        # The renderer's audio: no queue (10 ms chunks straight to libwebrtc, see the module
        # doc). A plain track's frames (any size) go through a short queue: a long one only
        # adds latency the daemon would have to sync away.
        queue_ms = AUDIO_QUEUE_MS if isinstance(audio, MediaStreamTrack) else 0
        self._asource = rtc.AudioSource(SAMPLE_RATE, 1, queue_size_ms=queue_ms, loop=self._aloop)
        self._tasks: list[asyncio.Task[None]] = []
        self._apump: concurrent.futures.Future[None] | None = None
        self.frames = 0
        self.audio_frames = 0
        # How far behind the renderer's clock each chunk reached libwebrtc (ms, past its end).
        self.audio_lag_ms: deque[float] = deque(maxlen=LAGS_KEPT)
        # How late each video frame reached the SDK after its capture (media) time (ms): with
        # audio_lag_ms, the publisher's own A/V offset going into libwebrtc.
        self.video_lag_ms: deque[float] = deque(maxlen=LAGS_KEPT)
        # The renderer's media time 0 on the monotonic clock (None: a plain track, no clock).
        self._t0: float | None = None
        self.audio_late = 0  # chunks captured more than a chunk late (sent at once all the same)
        self.audio_skipped = 0  # chunks skipped to live after a stall (AUDIO_RESYNC_MS)
        self.audio_not_ready = 0  # polls for a tick the renderer had not computed yet

    async def start(self, url: str, token: str) -> None:
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            await self.room.connect(url, token)
        loop = asyncio.get_running_loop()
        if not isinstance(self._audio, MediaStreamTrack):
            self._t0 = time.monotonic() - self._audio.media_s()
        self._tasks = [loop.create_task(self._pump_video(), name="avatar-sdk-video")]
        if isinstance(self._audio, MediaStreamTrack):
            track = self._audio
            self._tasks.append(loop.create_task(self._pump_track(track), name="avatar-sdk-audio"))
        elif self._aloop is not None and self._athread is not None:
            self._athread.start()
            rendered = self._audio
            self._apump = asyncio.run_coroutine_threadsafe(self._pump_audio(rendered), self._aloop)
            self._apump.add_done_callback(_log_pump_end)
        codec = rtc.VideoCodec.H264 if self.codec == "H264" else rtc.VideoCodec.VP8
        lp = self.room.local_participant
        async with asyncio.timeout(PUBLISH_TIMEOUT_S):
            await lp.publish_track(
                rtc.LocalVideoTrack.create_video_track("avatar-video", self._vsource),
                self._video_options(codec),
            )
            await lp.publish_track(
                rtc.LocalAudioTrack.create_audio_track("avatar-audio", self._asource),
                rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE, dtx=False),
            )
        log.info("avatar_sdk_published", codec=self.codec, width=self.width, height=self.height)

    def _video_options(self, codec: rtc.VideoCodec.ValueType) -> rtc.TrackPublishOptions:
        opts = rtc.TrackPublishOptions(
            source=rtc.TrackSource.SOURCE_CAMERA, simulcast=True, video_codec=codec
        )
        if self.max_fps is not None:
            # The preset's bitrate for the size (livekit-client's VideoPresets: h360 450 kbps,
            # h720 1.7 Mbps), only the frame rate capped otherwise.
            bitrate = 450_000 if self.height <= 360 else 1_700_000
            opts.video_encoding.max_framerate = self.max_fps
            opts.video_encoding.max_bitrate = bitrate
        return opts

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        await asyncio.to_thread(self._stop_audio_thread)
        with contextlib.suppress(Exception):  # leaving a room the server already closed
            async with asyncio.timeout(5.0):
                await self.room.disconnect()

    def _stop_audio_thread(self) -> None:
        """Cancel the audio pump, stop its loop and join its thread (blocking: off the loop)."""
        if self._apump is not None:
            self._apump.cancel()  # cancels the task on its own loop
            concurrent.futures.wait([self._apump], timeout=CLOSE_TIMEOUT_S)
            self._apump = None
        if self._aloop is None or self._athread is None:
            return
        if self._athread.is_alive():
            self._aloop.call_soon_threadsafe(self._aloop.stop)
            self._athread.join(CLOSE_TIMEOUT_S)
        if not self._athread.is_alive() and not self._aloop.is_closed():
            self._aloop.close()

    async def _pump_video(self) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await self._video.recv()
                assert isinstance(frame, av.VideoFrame)
                data = _i420_bytes(frame)
                out = rtc.VideoFrame(frame.width, frame.height, rtc.VideoBufferType.I420, data)
                if self._t0 is None or frame.pts is None or frame.time_base is None:
                    self._vsource.capture_frame(out)  # a plain track: stamped on arrival
                else:
                    # The frame's capture time, on the clock libwebrtc stamps with (see the
                    # module doc): its SRs then carry it, as a camera's frames do.
                    captured = self._t0 + float(frame.pts * frame.time_base)
                    self._vsource.capture_frame(out, timestamp_us=int(captured * 1e6))
                    lag = 1000 * (time.monotonic() - captured)
                    self.video_lag_ms.append(lag)
                self.frames += 1

    async def _pump_track(self, track: MediaStreamTrack) -> None:
        """A plain aiortc audio track, on the caller's loop (no renderer clock to pace by)."""
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                assert isinstance(frame, av.AudioFrame)
                pcm = np.ascontiguousarray(frame.to_ndarray(), dtype=np.int16)
                await self._asource.capture_frame(
                    rtc.AudioFrame(
                        pcm.tobytes(), frame.sample_rate or SAMPLE_RATE, 1, frame.samples
                    )
                )
                self.audio_frames += 1

    async def _pump_audio(self, src: RenderedAudio) -> None:
        """On the audio thread's loop: 10 ms chunk ``j`` captured when the renderer's clock
        reaches its end (a capture device's timing, see the module doc).

        Late chunks are captured all the same (see ``AUDIO_RESYNC_MS``); after a stall of more
        than ``AUDIO_RESYNC_MS`` the pump skips to live.
        """
        chunk = int(SAMPLE_RATE * CHUNK_S)
        j: int | None = None
        while not src.closed:
            now = src.media_s()
            live = int(now / TICK_S) * CHUNKS_PER_TICK  # the current tick's first chunk
            if j is None:
                j = live
            elif (live - j) * CHUNK_S * 1000 > AUDIO_RESYNC_MS:
                self.audio_skipped += live - j
                j = live
            due = (j + 1) * CHUNK_S  # the chunk's last sample
            wait = due - now
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            k, part = divmod(j, CHUNKS_PER_TICK)
            pcm = src.ready_audio(k)
            if pcm is None:
                self.audio_not_ready += 1
                await asyncio.sleep(NOT_READY_POLL_S)
                continue
            pcm = pcm[part * chunk : (part + 1) * chunk]
            # Lag past the chunk's end (0 when captured in time; the source has no queue).
            lag = 1000 * (now - due)
            j += 1
            if lag > 1000 * CHUNK_S:
                self.audio_late += 1
            self.audio_lag_ms.append(lag)
            data = np.ascontiguousarray(pcm, dtype=np.int16).tobytes()
            await self._asource.capture_frame(rtc.AudioFrame(data, SAMPLE_RATE, 1, len(pcm)))
            self.audio_frames += 1


def _log_pump_end(fut: concurrent.futures.Future[None]) -> None:
    """The audio pump ends only when cancelled or its renderer closed; anything else is logged."""
    if not fut.cancelled() and (exc := fut.exception()) is not None:
        log.error("avatar_sdk_audio_pump_failed", error=repr(exc))


def _i420_bytes(frame: av.VideoFrame) -> bytes:
    """The frame's Y, U, V planes back to back (no conversion when it is already yuv420p)."""
    if frame.format.name != "yuv420p":
        frame = frame.reformat(format="yuv420p")
    arr = frame.to_ndarray()  # (h * 3 / 2, w) for yuv420p
    return bytes(np.ascontiguousarray(arr).data)
