"""Publisher CPU per session: StreamPublisher (real getstream_rtc) at 360p30 / 720p30, VP8 vs VP9.

The Stream stand-in runs in a subprocess of its own (restarted per variant) so its decode cost is
not counted; this process only feeds pre-rendered I420 frames and 20 ms PCM chunks in real time.
CPU = process CPU time (user + system, all threads incl. the SDK's Rust/libvpx workers) / wall,
so 100 % is one core. Needs WebRTC, so run it in the namespace harness:

    .venv/bin/python -m bridge.sim.netns -- .venv/bin/python bench/publisher_cpu.py --seconds 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from typing import Any

import aiohttp
import numpy as np

from bridge.media import AudioChunk, AudioFormat, VideoFrame
from bridge.sim import marks
from bridge.stream.publisher import PublisherOptions, StreamPublisher

VARIANTS = [(640, 360, "VP8"), (640, 360, "VP9"), (1280, 720, "VP8"), (1280, 720, "VP9")]
FPS = 30
RING = 60  # pre-rendered frames, so frame synthesis stays out of the measurement


async def start_standin(codec: str) -> tuple[asyncio.subprocess.Process, dict[str, str]]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bridge.sim.stream",
        "--video-codec",
        codec,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    try:
        for _ in range(50):  # log lines may come first; the JSON line names the endpoints
            line = await asyncio.wait_for(proc.stdout.readline(), 30)
            if line.startswith(b"{"):
                return proc, json.loads(line)
        raise RuntimeError("the stand-in did not report its endpoints")
    except BaseException:
        await stop_standin(proc)
        raise


async def stop_standin(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()


def render(w: int, h: int) -> list[np.ndarray[Any, np.dtype[np.uint8]]]:
    """A textured picture panning 4 px per frame, so the encoder has real motion to code."""
    rng = np.random.default_rng(7)
    coarse = rng.integers(30, 220, size=(h // 8 + 1, (w + 4 * RING) // 8 + 1), dtype=np.uint8)
    texture = np.repeat(np.repeat(coarse, 8, axis=0), 8, axis=1)[:h]
    ring = []
    for i in range(RING):
        buf = np.full(w * h * 3 // 2, 128, np.uint8)
        y = buf[: w * h].reshape(h, w)
        y[:] = texture[:, 4 * i : 4 * i + w]
        marks.stamp_frame(y, i, i * 33, i % 15 == 0)
        ring.append(buf)
    return ring


def _ignore_event(event: str, /, **fields: Any) -> None:
    pass


async def run_variant(w: int, h: int, codec: str, seconds: float, warmup: float) -> dict[str, Any]:
    proc, info = await start_standin(codec)
    try:
        failures: list[Exception] = []
        pub = StreamPublisher(
            PublisherOptions(
                info["api_key"],
                info["api_secret"],
                base_url=info["base_url"],
                video_codec=codec,  # type: ignore[arg-type]
                width=w,
                height=h,
                fps=FPS,
            ),
            "default",
            "bench",
            _ignore_event,
            failures.append,
        )
        await pub.start()
        ring = render(w, h)
        pcm = marks.beep_train(48000, 2, 500, 100)
        fmt = AudioFormat(48000, 1)
        total = warmup + seconds
        t0 = time.monotonic()
        cpu_mark: list[float] = []
        write_s: list[float] = []

        async def video() -> None:
            for k in range(int(total * FPS)):
                t_write = time.perf_counter()
                await pub.write_video(VideoFrame(ring[k % RING], w, h, k * 1_000_000 // FPS))
                if k >= int(warmup * FPS):
                    write_s.append(time.perf_counter() - t_write)
                if k == int(warmup * FPS):
                    cpu_mark.extend([time.monotonic(), time.process_time()])
                await asyncio.sleep(max(0.0, t0 + (k + 1) / FPS - time.monotonic()))

        async def audio() -> None:
            for k in range(int(total * 50)):
                a = (k * 960) % (len(pcm) - 960)
                await pub.write_audio(AudioChunk(pcm[a : a + 960], fmt))
                await asyncio.sleep(max(0.0, t0 + (k + 1) / 50 - time.monotonic()))

        await asyncio.gather(video(), audio())
        wall = time.monotonic() - cpu_mark[0]
        cpu = time.process_time() - cpu_mark[1]
        timeout = aiohttp.ClientTimeout(total=5)
        async with (
            aiohttp.ClientSession(timeout=timeout) as http,
            http.get(f"{info['base_url']}/_standin/calls/default/bench") as resp,
        ):
            stats = await resp.json()
        await pub.aclose()
    finally:
        await stop_standin(proc)
    return {
        "size": f"{w}x{h}",
        "codec": codec,
        "cpu_pct": round(100 * cpu / wall, 1),
        "wall_s": round(wall, 1),
        "frames_written": pub.frames_written,
        "frames_received": stats["video"]["frames"],
        "fps_received": stats["video"]["fps"],
        "freezes": stats["video"]["freezes"],
        "write_ms_p50": round(1000 * sorted(write_s)[len(write_s) // 2], 2),
        "write_ms_p95": round(1000 * sorted(write_s)[int(len(write_s) * 0.95)], 2),
        "failures": [str(f) for f in failures],
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    print(f"# cores={os.cpu_count()} seconds={args.seconds} (CPU % of one core)", flush=True)
    for _ in range(max(1, min(args.repeat, 5))):
        for w, h, codec in VARIANTS:
            result = await run_variant(w, h, codec, args.seconds, args.warmup)
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
