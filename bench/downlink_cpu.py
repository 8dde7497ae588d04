"""CPU of the LiveKit downlink alone: one subscriber-only process per 360p30 and 720p30 session.

The stand-in (aiortc encode) runs in its own process, so the figure is this process's user+system
CPU (all threads: libwebrtc decode, the SDK's FFI, our hand-off) over a fixed window after warm-up,
as % of one core. Media needs a non-loopback interface, so run it through the namespace harness:

    python -m bridge.sim.netns -- python bench/downlink_cpu.py [--window 8] [--warmup 2]
        [--pattern ramp|bar]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from typing import Any

from bridge.errors import BridgeError
from bridge.livekit import DownlinkOptions, LiveKitDownlink
from bridge.media import AudioChunk, JitterBufferReading, MediaClock, VideoFrame
from bridge.stages import AvatarRoom


class CountingSink:
    def __init__(self) -> None:
        self.video = 0
        self.audio_s = 0.0
        self.sizes: set[tuple[int, int]] = set()

    def put_video(self, frame: VideoFrame) -> None:
        self.video += 1
        self.sizes.add((frame.width, frame.height))

    def put_audio(self, chunk: AudioChunk) -> None:
        self.audio_s += chunk.duration_s

    def put_jitter_buffer(self, reading: JitterBufferReading) -> None:
        pass  # only the decode cost is measured here


def cpu_s(pid: int | str = "self") -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def one_run(
    width: int, height: int, fps: int, pattern: str, warmup: float, window: float
) -> dict[str, Any]:
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge.sim.livekit_server", "--port", "0",
        "--width", str(width), "--height", str(height), "--fps", str(fps), "--pattern", pattern,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    assert server.stdout is not None
    try:
        info: dict[str, str] = {}
        async with asyncio.timeout(15):
            while len(info) < 2:
                line = (await server.stdout.readline()).decode().strip()
                if not line:
                    raise RuntimeError("stand-in exited early")
                key, _, value = line.partition("=")
                if key in ("url", "token"):
                    info[key] = value
        failures: list[BridgeError] = []
        sink = CountingSink()
        downlink = LiveKitDownlink(
            DownlinkOptions(), MediaClock(), lambda *_a, **_k: None, failures.append
        )
        await downlink.start(AvatarRoom("bench", info["url"], info["token"], ""), sink)
        try:
            await asyncio.sleep(warmup)
            v0, a0, c0, s0, t0 = sink.video, sink.audio_s, cpu_s(), cpu_s(server.pid), time.time()
            await asyncio.sleep(window)
            wall = time.time() - t0
            return {
                "resolution": f"{width}x{height}@{fps}",
                "pattern": pattern,
                "downlink_cpu_pct": round(100 * (cpu_s() - c0) / wall, 1),
                "standin_cpu_pct": round(100 * (cpu_s(server.pid) - s0) / wall, 1),
                "video_fps": round((sink.video - v0) / wall, 1),
                "audio_s_per_s": round((sink.audio_s - a0) / wall, 2),
                "sizes": sorted(sink.sizes),
                "failures": [f.message for f in failures],
            }
        finally:
            await downlink.aclose()
    finally:
        server.terminate()
        async with asyncio.timeout(10):
            await server.wait()


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--window", type=float, default=8.0)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument(
        "--pattern",
        default="ramp",
        choices=("ramp", "bar"),
        help="ramp: every pixel changes (realistic codec load); bar: a mostly static picture",
    )
    a = p.parse_args()
    for width, height in ((640, 360), (1280, 720)):
        run = await one_run(width, height, 30, a.pattern, a.warmup, a.window)
        print(json.dumps(run), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
