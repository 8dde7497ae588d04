"""The codec floor: the avatar's media decoded and re-encoded with no bridge logic at all.

Run as a child process (``python -m bench.floor ...``) so its CPU is measured alone, exactly like
the daemon's: ``livekit.rtc.Room`` subscribes, ``rtc.VideoStream`` delivers I420 natively,
``np.frombuffer`` wraps it without a copy and ``write_i420_at`` encodes it into a
``getstream_rtc`` track (VP9 or VP8); audio ``rtc.AudioStream(48000, 1)`` frames go to
``write_pcm``. No queues, no sync hold, no uplink (see media-chain-measured.md, "The codec
floor"). It prints one JSON line when both tracks flow, then runs until SIGTERM or stdin closes,
and prints its counters as a last JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from typing import Any

import getstream_rtc as grtc
import numpy as np
from livekit import rtc

NET_TIMEOUT_S = 20.0


class Floor:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.video_frames = 0
        self.audio_frames = 0
        self.write_errors = 0
        self._tracks: dict[str, rtc.Track] = {}
        self._both = asyncio.Event()

    async def run(self) -> None:
        a = self.args
        client = grtc.Client(a.api_key, a.api_secret, base_url=a.base_url, ws_url=a.ws_url)
        call = client.call(a.call_type, a.call_id)
        await asyncio.wait_for(call.join("bench-floor", True), NET_TIMEOUT_S)
        audio_out = grtc.LocalAudioTrack(pcm_queue_capacity=0.2)
        video_out = grtc.LocalVideoTrack.vp9() if a.codec == "VP9" else grtc.LocalVideoTrack.vp8()
        await asyncio.wait_for(call.publish_audio(audio_out), NET_TIMEOUT_S)
        await asyncio.wait_for(call.publish_video(video_out), NET_TIMEOUT_S)
        room = rtc.Room()

        @room.on("track_subscribed")
        def _on_track(track: rtc.Track, *_: Any) -> None:
            self._tracks["video" if track.kind == rtc.TrackKind.KIND_VIDEO else "audio"] = track
            if len(self._tracks) == 2:
                self._both.set()

        await asyncio.wait_for(room.connect(a.livekit_url, a.token), NET_TIMEOUT_S)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_reader(sys.stdin.fileno(), lambda: stop.set() if not sys.stdin.read(1) else None)
        try:
            await asyncio.wait_for(self._both.wait(), NET_TIMEOUT_S)
            async with asyncio.TaskGroup() as tg:
                v = tg.create_task(self._video(self._tracks["video"], video_out))
                au = tg.create_task(self._audio(self._tracks["audio"], audio_out))
                print(json.dumps({"event": "ready"}), flush=True)
                await stop.wait()
                v.cancel()
                au.cancel()
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(room.disconnect(), 5)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(call.leave(), 5)
        print(
            json.dumps(
                {
                    "event": "done",
                    "video_frames": self.video_frames,
                    "audio_frames": self.audio_frames,
                    "write_errors": self.write_errors,
                }
            ),
            flush=True,
        )

    async def _video(self, track: rtc.Track, out: grtc.LocalVideoTrack) -> None:
        stream = rtc.VideoStream(track, format=rtc.VideoBufferType.I420)
        last_pts = -1.0
        async for event in stream:
            frame = event.frame
            pts = event.timestamp_us / 1e6
            if pts <= last_pts:
                continue  # the SDK drops non-increasing pts silently; count nothing extra
            last_pts = pts
            buf = np.frombuffer(frame.data, dtype=np.uint8)
            try:
                await out.write_i420_at(buf, frame.width, frame.height, pts)
                self.video_frames += 1
            except Exception:
                self.write_errors += 1

    async def _audio(self, track: rtc.Track, out: grtc.LocalAudioTrack) -> None:
        stream = rtc.AudioStream(track, sample_rate=48000, num_channels=1)
        async for event in stream:
            frame = event.frame
            pcm = np.frombuffer(frame.data, dtype=np.int16)
            try:
                await out.write_pcm(pcm, frame.sample_rate, frame.num_channels)
                self.audio_frames += 1
            except Exception:
                self.write_errors += 1


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--livekit-url", required=True)
    p.add_argument("--token", required=True)
    p.add_argument("--base-url", required=True)
    p.add_argument("--ws-url", required=True)
    p.add_argument("--api-key", required=True)
    p.add_argument("--api-secret", required=True)
    p.add_argument("--call-type", default="default")
    p.add_argument("--call-id", required=True)
    p.add_argument("--codec", choices=("VP8", "VP9"), default="VP9")
    asyncio.run(Floor(p.parse_args()).run())


if __name__ == "__main__":
    main()
