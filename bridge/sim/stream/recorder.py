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
        vstream: Any = None
        astream: Any = None
        resampler: Any = None
        last_vpts = -1
        try:
            while True:
                item = self._queue.get()
                if item is None:
                    break
                at, frame = item
                if isinstance(frame, av.VideoFrame):
                    if vstream is None:
                        vstream = container.add_stream("libx264", rate=30)
                        vstream.width, vstream.height = frame.width, frame.height
                        vstream.pix_fmt = "yuv420p"
                        vstream.time_base = _MS
                        vstream.options = {"preset": "ultrafast", "tune": "zerolatency"}
                    if (frame.width, frame.height) != (vstream.width, vstream.height):
                        frame = frame.reformat(vstream.width, vstream.height, "yuv420p")
                    pts = max(last_vpts + 1, int(at * 1000))
                    last_vpts = pts
                    frame.pts, frame.time_base = pts, _MS
                    container.mux(vstream.encode(frame))
                    self.video_frames += 1
                elif isinstance(frame, av.AudioFrame):
                    if astream is None:
                        astream = container.add_stream("aac", rate=48000)
                        astream.layout = "stereo"
                        resampler = av.AudioResampler(
                            format="fltp", layout="stereo", rate=48000, frame_size=1024
                        )
                    frame.pts = None
                    for out in resampler.resample(frame):
                        container.mux(astream.encode(out))
                    self.audio_frames += 1
            for stream in (vstream, astream):
                if stream is not None:
                    container.mux(stream.encode(None))
        except Exception:
            log.exception("mp4 recording failed", path=self.path)
        finally:
            with contextlib.suppress(Exception):
                container.close()
            log.info("mp4 recording closed", **self.stats())
