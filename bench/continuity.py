"""The ``continuity`` scenario of issue 17 (first part): HELLO -> first avatar frame at the Stream
receiver, with a warm pooled LiveAvatar session and cold, under the same modelled start path
(the LiveAvatar stand-in's ``realistic`` profile: token, start, ``connected``, the avatar
joining its room and its first keyframe; see ``bridge.sim.liveavatar.StartDelays``).

Per media path: one daemon without a pool (every HELLO starts cold) and one with
``pool.size=1`` (each HELLO after the pool refilled takes a warm session), ``repeat`` sessions
each, one after the other; a warm session is taken once it has been in the pool for
``SETTLED_S``. Handover figures (switch gap, recovery, audio lost) are not measured
yet.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import driver
from bridge.sim.stack import DaemonProcess, StandIns

VARIANT = "360p30-VP8"
PROFILE = "realistic"
# Sandbox sessions last 60 s; a warm one is handed out while it has 10 s left or more.
POOL_FLAGS = ("--set", "pool.size=1", "--set", "pool.min_remaining_s=10")
# A warm session is 'ready' once its WebSocket is connected, but its avatar reaches its room
# and sends the first keyframe later (the pool does not join the room: see bridge/pool.py).
# A HELLO that takes a session that young still waits for those; one that arrives after the
# pool has held it this long (the steady state between calls) does not.
SETTLED_S = 3.0


async def scenario(r: Any) -> dict[str, Any]:
    runs = r.plan.repeat
    out: dict[str, Any] = {"start_profile": PROFILE, "runs_per_figure": runs}
    for path in ("relay", "transcode"):
        for warm in (False, True):
            label = f"{'warm' if warm else 'cold'}_{path}"
            r.say(f"continuity: first frame, {label}")
            out[label] = await r._guarded(first_frames(path, warm, runs, r.workroot))
    relay_warm, relay_cold = out["warm_relay"], out["cold_relay"]
    out["first_frame_warm_s"] = relay_warm.get("p50_s")
    out["first_frame_cold_s"] = relay_cold.get("p50_s")
    return out


async def first_frames(path: str, warm: bool, runs: int, workroot: Path) -> dict[str, Any]:
    v = driver.VARIANTS[VARIANT]
    workdir = Path(tempfile.mkdtemp(prefix=f"continuity-{path}-", dir=workroot))
    flags = [*v.daemon_flags(), *(POOL_FLAGS if warm else ())]
    async with StandIns(
        render_latency_s=driver.RENDER_LATENCY_S, stream_codec=v.codec, start_profile=PROFILE
    ) as sim:
        daemon = DaemonProcess(workdir, sim.daemon_env(), *flags)
        figures: list[float] = []
        hits_before = 0.0
        try:
            await daemon.start()
            for i in range(runs):
                if warm:
                    await driver.poll(lambda: daemon.metric_sum("bridge_pool_size") >= 1)
                    await asyncio.sleep(SETTLED_S)
                    hits_before = daemon.metric_sum("bridge_pool_hits_total")
                c = driver.ClientSession(f"continuity-{path}-{int(warm)}-{i}")
                try:
                    await driver._open(c, daemon, sim, path)
                    first = sim.stream.measure("default", c.call_id).first_frame_t
                    assert first is not None
                    figures.append(first - c.hello_t)
                    if warm and daemon.metric_sum("bridge_pool_hits_total") != hits_before + 1:
                        raise RuntimeError("the warm run was not a pool hit")
                finally:
                    await driver._close(c)
                await asyncio.sleep(0.5)
        finally:
            await daemon.stop()
    return {
        "samples_s": [round(f, 3) for f in figures],
        "p50_s": round(statistics.median(figures), 3) if figures else None,
        "max_s": round(max(figures), 3) if figures else None,
        "measured_at": time.time(),
    }
