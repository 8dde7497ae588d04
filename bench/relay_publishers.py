"""Relay CPU per session with the aiortc avatar against the libwebrtc (LiveKit SDK) avatar.

One relay session (360p VP8 or H264, the ``SMALL`` daemon flags), one turn of beeps per round,
the two publishers alternated in the same run so both see the same machine. Reported per round:
the daemon's CPU over the turn (% of one core, from ``/proc``), what reached the Stream stand-in
(frames, freezes, median A/V skew, packets per frame) and the relay's own counts.

    python -m bridge.sim.netns -- python -m bench.relay_publishers [--rounds 2] [--turn-s 8]

Bounded: ``rounds`` x 2 sessions of one ``turn_s`` turn each.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

from bench import procstat
from bridge.client import BridgeClient, stream_pcm_realtime
from bridge.media import AudioFormat
from bridge.protocol import EventMsg
from bridge.sim.marks import beep_train
from bridge.sim.stack import SMALL, DaemonProcess, StandIns

FMT = AudioFormat(24000, 1)
PUBLISHERS = ("aiortc", "sdk")


async def _events_until(client: BridgeClient, names: set[str], timeout_s: float) -> None:
    seen: set[str] = set()
    async with asyncio.timeout(timeout_s):
        while not names <= seen:
            message = await client.recv()
            if isinstance(message, EventMsg):
                seen.add(message.event)
            elif getattr(message, "fatal", False):
                raise RuntimeError(str(message))


async def one_round(publisher: str, codec: str, turn_s: float, workroot: Path) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix=f"pub-{publisher}-", dir=workroot))
    call = f"pub-{publisher}"
    async with StandIns(render_latency_s=0.2, avatar_publisher=publisher) as sim:
        daemon = DaemonProcess(workdir, sim.daemon_env(), *SMALL)
        await daemon.start()
        try:
            assert daemon.proc is not None
            async with await BridgeClient.connect(daemon.socket) as client:
                await client.hello(f"default:{call}", FMT, avatar={"video_encoding": codec})
                await _events_until(client, {"avatar_ready", "published", "media_path"}, 60)
                await asyncio.sleep(1.0)
                sim.stream.reset_measure("default", call)
                cpu = procstat.CpuWindow({"daemon": daemon.proc.pid})
                cpu.start()
                beeps = beep_train(FMT.sample_rate, int(turn_s * 2), 500, 100)
                await stream_pcm_realtime(client, beeps.tobytes(), FMT)
                await client.end_turn()
                await _events_until(client, {"speak_ended"}, 30)
                usage = cpu.stop()
                stats = sim.stream.stats("default", call)
                skews = sim.stream.measure("default", call).skews_ms()
                _, body = await asyncio.to_thread(daemon.admin, "GET", "/sessions")
                relay = body["sessions"][0]["relay"]
        finally:
            await daemon.stop()
    video = stats["video"]
    return {
        "publisher": publisher,
        "codec": stats["video_codec"],
        "daemon_cpu_pct": usage["daemon"],
        "window_s": round(usage["wall_s"], 1),
        "frames": video["frames"],
        "fps": video["fps"],
        "freezes": video["freezes"],
        "skew_ms_median": round(statistics.median(skews), 1) if skews else None,
        "packets_per_frame": round(relay["video_sent"] / max(1, relay["video_frames"]), 2),
        "relay": {
            k: relay[k]
            for k in ("video_sent", "video_frames", "audio_sent", "keyframes", "video_size")
        },
    }


async def main(rounds: int, turn_s: float, codec: str) -> list[dict[str, Any]]:
    out = []
    with tempfile.TemporaryDirectory(prefix="relay-publishers-") as root:
        for _ in range(rounds):
            for publisher in PUBLISHERS:
                row = await one_round(publisher, codec, turn_s, Path(root))
                print(json.dumps(row), flush=True)
                out.append(row)
    return out


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--turn-s", type=float, default=8.0)
    p.add_argument("--codec", default="VP8", choices=("VP8", "H264"))
    args = p.parse_args()
    asyncio.run(main(max(1, min(args.rounds, 10)), min(args.turn_s, 60.0), args.codec))
