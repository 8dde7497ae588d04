"""The Vision Agents ``liveavatar`` plugin's per-frame path, run in its own venv (bench/.venv-va).

Started by bench/va.py with ``bench/.venv-va/bin/python bench/va_child.py ...``: it imports only
what that venv has (vision-agents 0.6.9, its liveavatar plugin, getstream 4.x, aiortc), never the
bridge. The plugin's own ``LiveAvatar`` class runs unedited against the stand-ins (its REST base
URL is an option): token, start, LiveKit room, WebSocket uplink, RGBA conversion, resize and
``AVSynchronizer``. Its output tracks are then consumed the way getstream 4.x's aiortc publisher
consumes them: the synchronized video track's paced ``recv()`` into aiortc's VP8 encoder (in a
worker thread, as ``RTCRtpSender`` does), the audio stream at real time into aiortc's Opus
encoder. What is not run: the getstream 4.x edge's signalling and network send (see va.py).

Prints ``{"event": "ready"}`` once the first frame is encoded, feeds the same beeps as the bridge
benchmark in real time until stdin closes, then prints its counters.
"""

from __future__ import annotations

import argparse
import asyncio
import fractions
import json
import os
import sys
import time
import uuid
from typing import Any

import av
import numpy as np
from aiortc.codecs.opus import OpusEncoder
from aiortc.codecs.vpx import Vp8Encoder
from getstream.video.rtc.track_util import AudioFormat, PcmData
from vision_agents.core.agents.inference import (  # type: ignore[import-not-found]
    AudioOutputChunk,
    AudioOutputStream,
)
from vision_agents.plugins.liveavatar import Avatar as LiveAvatar  # type: ignore[import-not-found]

RATE = 24000
NET_TIMEOUT_S = 30.0


def beep_train(count: int, period_ms: int = 500, beep_ms: int = 100) -> bytes:
    """The bridge benchmark's beeps (bridge/sim/marks.py ``beep_train``), re-made here."""
    period, n = period_ms * RATE // 1000, beep_ms * RATE // 1000
    t = np.arange(n) / RATE
    beep = np.sin(2 * np.pi * 1000.0 * t) * 0.5 * 32767
    ramp = RATE // 1000
    env = 0.5 - 0.5 * np.cos(np.pi * np.arange(ramp) / ramp)
    beep[:ramp] *= env
    beep[n - ramp :] *= env[::-1]
    out = np.zeros(period * count, dtype=np.int16)
    for k in range(count):
        out[k * period : k * period + n] = beep.astype(np.int16)
    return out.tobytes()


def _packed_frame(pcm: Any, pts: int) -> av.AudioFrame:
    """Interleaved s16 stereo, what aiortc's Opus encoder takes (PcmData gives planar s16p)."""
    arr = np.asarray(pcm.samples, dtype=np.int16)
    if arr.ndim == 2:
        arr = arr.T.reshape(1, -1)
    frame = av.AudioFrame.from_ndarray(arr.reshape(1, -1), format="s16", layout="stereo")
    frame.sample_rate = 48000
    frame.pts = pts  # the encoder's RTP timestamps come from pts
    frame.time_base = fractions.Fraction(1, 48000)
    return frame


class Child:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.video_in = 0
        self.video_encoded = 0
        self.video_bytes = 0
        self.audio_encoded = 0
        self.audio_errors = 0
        self.ready = asyncio.Event()
        self.stop = asyncio.Event()

    async def run(self) -> None:
        a = self.args
        avatar = LiveAvatar(
            avatar_id=str(uuid.uuid4()),  # the stand-in accepts any avatar UUID
            api_key=a.api_key,
            base_url=a.base_url,
            is_sandbox=False,
            video_quality=a.quality,
            video_encoding="VP8",
            width=a.width,
            height=a.height,
            fps=30,
        )
        inp = AudioOutputStream()
        avatar.attach_audio_input(inp)
        # Count the frames their synchronizer receives (a wrapper; their code runs unchanged).
        write_video = avatar._sync.write_video

        async def counted(frame: Any) -> None:
            self.video_in += 1
            await write_video(frame)

        avatar._sync.write_video = counted
        await asyncio.wait_for(avatar.start(), NET_TIMEOUT_S)
        loop = asyncio.get_running_loop()
        loop.add_reader(sys.stdin.fileno(), self._stdin)
        tasks = [
            asyncio.create_task(self._video(avatar)),
            asyncio.create_task(self._audio(avatar)),
            asyncio.create_task(self._feed(inp)),
        ]
        try:
            await asyncio.wait_for(self.ready.wait(), NET_TIMEOUT_S)
            print(json.dumps({"event": "ready"}), flush=True)
            await self.stop.wait()
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            try:
                await asyncio.wait_for(avatar.close(), 10)
            except Exception as exc:  # reported, but the counters still matter
                print(f"close failed: {exc!r}", file=sys.stderr)
        counters = {
            "video_in": self.video_in,
            "video_encoded": self.video_encoded,
            "audio_encoded": self.audio_encoded,
            "audio_errors": self.audio_errors,
        }
        print(
            json.dumps({"event": "done", **counters, "video_bytes": self.video_bytes}), flush=True
        )

    def _stdin(self) -> None:
        if not os.read(sys.stdin.fileno(), 1):
            self.stop.set()

    async def _video(self, avatar: Any) -> None:
        track = avatar.video_output()
        encoder = Vp8Encoder()
        while True:
            frame = await track.recv()
            payloads, _ts = await asyncio.to_thread(encoder.encode, frame, False)
            self.video_encoded += 1
            self.video_bytes += sum(len(p) for p in payloads)
            if self.video_encoded >= 10:
                self.ready.set()

    async def _audio(self, avatar: Any) -> None:
        """A 20 ms real-time pull, as the publisher's audio track paces it."""
        stream = avatar.audio_output()
        encoder = OpusEncoder()
        pts = 0
        t0 = time.monotonic()
        k = 0
        while True:
            k += 1
            await asyncio.sleep(max(0.0, t0 + k * 0.02 - time.monotonic()))
            if stream.empty():
                continue
            data = getattr(stream.get_nowait(), "data", None)
            if data is None:
                continue
            try:
                frame = _packed_frame(data.resample(48000, 2).to_int16(), pts)
                pts += frame.samples
                encoder.encode(frame)
                self.audio_encoded += 1
            except Exception as exc:
                self.audio_errors += 1
                if self.audio_errors == 1:
                    print(f"audio encode failed: {exc!r}", file=sys.stderr, flush=True)

    async def _feed(self, inp: Any) -> None:
        """The same beeps, turn after turn, in 20 ms chunks at real time."""
        pcm = beep_train(16)
        step = RATE * 2 // 50
        t0 = time.monotonic()
        k = 0
        while True:
            for start in range(0, len(pcm), step):
                chunk = PcmData.from_bytes(
                    pcm[start : start + step], sample_rate=RATE, format=AudioFormat.S16, channels=1
                )
                await inp.send(AudioOutputChunk(data=chunk))
                k += 1
                await asyncio.sleep(max(0.0, t0 + k * 0.02 - time.monotonic()))
            await inp.send(AudioOutputChunk(final=True))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base-url", required=True)
    p.add_argument("--api-key", required=True)
    p.add_argument("--quality", default="low")
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=720)
    asyncio.run(Child(p.parse_args()).run())


if __name__ == "__main__":
    main()
