"""Record a call's decoded audio and video to MP4 (H.264 + AAC) with PyAV, for the demo.

Encoding runs on a thread of its own behind a bounded queue: when the encoder falls behind, new
frames are dropped and counted (``dropped``) rather than stalling the SFU's receive loop.
Timestamps are receipt times, so the file shows what a viewer saw, freezes included.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from fractions import Fraction
from typing import Any

import av
import structlog

log = structlog.get_logger(__name__)

_QUEUE_FRAMES = 240  # ~4 s of 30 fps video plus its audio
_MS = Fraction(1, 1000)
_WAIT_BOTH_S = 2.0
_AUDIO_RATE = 48000
_AUDIO_TB = Fraction(1, _AUDIO_RATE)


class Mp4Recorder:
    def __init__(self, path: str) -> None:
        self.path = path
        self.video_frames = 0
        self.audio_frames = 0
        self.dropped = 0
        self._t0 = time.monotonic()
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=_QUEUE_FRAMES)
        self._thread = threading.Thread(target=self._run, name="mp4-recorder", daemon=True)
        self._thread.start()

    def put(self, frame: Any) -> None:
        """Queue a decoded av frame; dropped (and counted) when the encoder is behind."""
        try:
            self._queue.put_nowait((time.monotonic() - self._t0, frame))
        except queue.Full:
            self.dropped += 1

    def stats(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "video_frames": self.video_frames,
            "audio_frames": self.audio_frames,
            "dropped": self.dropped,
        }

    async def aclose(self) -> None:
        """Flush the encoders and close the file (waits for the thread)."""
        await asyncio.to_thread(self._queue.put, None)
        await asyncio.to_thread(self._thread.join, 30.0)

    def _run(self) -> None:
        container: Any = av.open(self.path, mode="w")
        streams: _Streams | None = None
        # MP4 streams must all exist before the first packet is written: hold the first frames
        # until one of each kind (or _WAIT_BOTH_S of one kind) has been seen.
        held: list[tuple[float, Any]] = []
        try:
            while True:
                item = self._queue.get()
                if item is None:
                    break
                if streams is None:
                    held.append(item)
                    video = next((f for _, f in held if isinstance(f, av.VideoFrame)), None)
                    has_audio = any(isinstance(f, av.AudioFrame) for _, f in held)
                    waited = held[-1][0] - held[0][0]
                    if video is None and waited < _WAIT_BOTH_S:
                        continue
                    if video is not None and not has_audio and waited < _WAIT_BOTH_S:
                        continue
                    streams = _Streams(container, video, has_audio)
                    for at, frame in held:
                        self._encode(container, streams, at, frame)
                    held.clear()
                    continue
                self._encode(container, streams, *item)
            if streams is not None:
                for stream in (streams.video, streams.audio):
                    if stream is not None:
                        container.mux(stream.encode(None))
        except Exception:
            log.exception("mp4_recording_failed", path=self.path)
        finally:
            with contextlib.suppress(Exception):
                container.close()
            log.info("mp4_recording_closed", **self.stats())

    def _encode(self, container: Any, streams: _Streams, at: float, frame: Any) -> None:
        if isinstance(frame, av.VideoFrame) and streams.video is not None:
            vs = streams.video
            if (frame.width, frame.height) != (vs.width, vs.height):
                frame = frame.reformat(vs.width, vs.height, "yuv420p")
            pts = max(streams.last_vpts + 1, int(at * 1000))
            streams.last_vpts = pts
            frame.pts, frame.time_base = pts, _MS
            container.mux(vs.encode(frame))
            self.video_frames += 1
        elif isinstance(frame, av.AudioFrame) and streams.audio is not None:
            frame.pts = None  # the resampler re-times audio as one continuous stream...
            if streams.next_apts < 0:  # ...that starts when the first audio arrived
                streams.next_apts = int(at * _AUDIO_RATE)
            for out in streams.resampler.resample(frame):
                out.pts, out.time_base = streams.next_apts, _AUDIO_TB
                streams.next_apts += out.samples
                container.mux(streams.audio.encode(out))
            self.audio_frames += 1


class _Streams:
    def __init__(self, container: Any, video: Any, with_audio: bool) -> None:
        self.video: Any = None
        self.audio: Any = None
        self.resampler: Any = None
        self.last_vpts = -1
        self.next_apts = -1
        if video is not None:
            vs = container.add_stream("libx264", rate=30)
            vs.width, vs.height = video.width, video.height
            vs.pix_fmt = "yuv420p"
            # Millisecond timestamps in the encoder too: receipt times are irregular, and in
            # 1/30 s units two close frames would collide (non-increasing DTS, mux error).
            vs.time_base = _MS
            vs.codec_context.time_base = _MS
            vs.options = {"preset": "ultrafast", "tune": "zerolatency"}
            self.video = vs
        if with_audio:
            self.audio = container.add_stream("aac", rate=_AUDIO_RATE)
            self.audio.layout = "stereo"
            self.resampler = av.AudioResampler(
                format="fltp", layout="stereo", rate=_AUDIO_RATE, frame_size=1024
            )
