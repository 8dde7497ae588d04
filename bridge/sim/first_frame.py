"""HELLO -> the avatar's first frame at the Stream stand-in's receiver, warm and cold (issue 17
part 1), under the LiveAvatar stand-in's ``realistic`` start path (token, start,
``connected``, the avatar joining its room, its first keyframe: ``StartDelays``).

Shared by the bench's ``continuity`` scenario and ``demo --continuity`` (report.json's
``continuity.first_frame_warm_s`` / ``first_frame_cold_s``). Cold: a daemon without a pool, so
every HELLO starts a LiveAvatar session. Warm: a daemon with ``pool.size=1``, each HELLO taken
once the pool holds a ready session (its room joined, the first keyframe in) and has held it
for ``SETTLED_S``; a run that is not a pool hit is an error, not a figure.

Each run also says where its time went (``parts``, seconds after the HELLO): from the daemon's
log, the Stream join done (``stream_joined_s``) and the first video write begun
(``first_write_start_s``) and its length (``first_write_ms``: the SDK's first encode); from the
Stream stand-in, the publisher's connection up (``publisher_connected_s``: ICE and DTLS), the
first complete video frame in (``first_frame_in_s``) and decoded (the figure).
``keyframe_lost`` says the first write came before the connection: that keyframe never
arrives, the receiver's PLI brings the next (a round trip through the SDK's encoder).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import statistics
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from bridge.client import BridgeClient
from bridge.media import AudioFormat
from bridge.protocol import Error, EventMsg
from bridge.sim.stack import DaemonProcess, StandIns

START_PROFILE = "realistic"
# Sandbox sessions last 60 s; a warm one is handed out while it has 10 s left or more.
POOL_FLAGS = ("--set", "pool.size=1", "--set", "pool.min_remaining_s=10")
# The pause lets a pooled session settle, and the previous run's session leave before the next
# HELLO.
SETTLED_S = 0.5
CLIENT_FMT = AudioFormat(24000, 1)
TIMEOUT_S = 60.0


async def _poll(predicate: Callable[[], bool], limit_s: float = TIMEOUT_S) -> None:
    """Wait until ``predicate()`` holds (the stand-ins' and the daemon's state have no event)."""
    async with asyncio.timeout(limit_s):
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.02)


async def _first_frame(
    daemon: DaemonProcess, sim: StandIns, call_id: str, path: str
) -> tuple[float, dict[str, Any]]:
    """One session: HELLO, then the seconds until the receiver's first frame of the call, and
    where they went (module docstring)."""
    client = await BridgeClient.connect(daemon.socket)
    try:
        hello_t, hello_wall = time.monotonic(), time.time()
        async with asyncio.timeout(TIMEOUT_S):
            await client.hello(
                f"default:{call_id}", CLIENT_FMT, media_path=path, client="first-frame"
            )
            async for message in client.messages():
                if isinstance(message, Error):
                    raise RuntimeError(f"{call_id}: {message.code}: {message.message}")
                if isinstance(message, EventMsg) and message.event == "avatar_ready":
                    break
            measure = sim.stream.measure("default", call_id)
            while measure.first_frame_t is None:  # noqa: ASYNC110 - the stand-in's state
                await asyncio.sleep(0.02)
            figure = measure.first_frame_t - hello_t
    finally:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(10):
                await client.close()

    def since(t: float | None) -> float | None:
        return None if t is None else round(t - hello_t, 3)

    parts: dict[str, Any] = {
        **_daemon_parts(daemon, f"default:{call_id}", hello_wall),
        "publisher_connected_s": since(measure.publisher_connected_t),
        "first_frame_in_s": since(measure.first_assembled_t),
    }
    write, connected = parts.get("first_write_start_s"), parts["publisher_connected_s"]
    parts["keyframe_lost"] = None if write is None or connected is None else write < connected
    return figure, parts


def _daemon_parts(daemon: DaemonProcess, cid: str, hello_wall: float) -> dict[str, Any]:
    """The session's Stream join and first video write from the daemon's log, seconds after
    the HELLO (its wall time: the log's timestamps are wall time)."""
    out: dict[str, Any] = {}
    if not daemon.log_path.exists():
        return out
    for raw in daemon.log_path.read_bytes().splitlines():
        if cid.encode() not in raw:
            continue
        with contextlib.suppress(ValueError):
            entry = json.loads(raw)
            if entry.get("cid") != cid:
                continue
            stamp = str(entry.get("timestamp", "")).replace("Z", "+00:00")
            at = datetime.fromisoformat(stamp).timestamp() - hello_wall
            if entry.get("event") == "stream_joined":
                out["stream_joined_s"] = round(at, 3)
            elif entry.get("event") == "stream_first_video_written":
                write_ms = float(entry.get("write_ms", 0.0))
                out["first_write_start_s"] = round(at - write_ms / 1000, 3)
                out["first_write_ms"] = write_ms
    return out


async def first_frames(
    path: str,
    warm: bool,
    runs: int,
    workdir: Path,
    *,
    daemon_flags: Sequence[str] = (),
    stream_codec: str = "VP8",
    render_latency_s: float = 0.2,
) -> dict[str, Any]:
    """``runs`` sessions, one after the other, on a daemon serving ``path`` (the pool joins its
    warm rooms for the configured path: a HELLO asking for another one would leave the room and
    join it cold). Returns the samples, their p50 and max, in seconds."""
    await asyncio.to_thread(workdir.mkdir, parents=True, exist_ok=True)
    flags = [*daemon_flags, "--set", f"output.media_path={path}", *(POOL_FLAGS if warm else ())]
    figures: list[float] = []
    parts: list[dict[str, Any]] = []
    async with StandIns(
        render_latency_s=render_latency_s, stream_codec=stream_codec, start_profile=START_PROFILE
    ) as sim:
        daemon = DaemonProcess(workdir, sim.daemon_env(), *flags)
        try:
            await daemon.start()
            for i in range(runs):
                hits_before = 0.0
                if warm:
                    await _poll(lambda: daemon.metric_sum("bridge_pool_size") >= 1)
                    await asyncio.sleep(SETTLED_S)
                    hits_before = daemon.metric_sum("bridge_pool_hits_total")
                call_id = f"first-frame-{path}-{'warm' if warm else 'cold'}-{i}"
                figure, where = await _first_frame(daemon, sim, call_id, path)
                figures.append(figure)
                parts.append(where)
                if warm and daemon.metric_sum("bridge_pool_hits_total") != hits_before + 1:
                    raise RuntimeError("the warm run was not a pool hit")
                await asyncio.sleep(SETTLED_S)
        finally:
            await daemon.stop()
    return {
        "samples_s": [round(f, 3) for f in figures],
        "p50_s": round(statistics.median(figures), 3) if figures else None,
        "max_s": round(max(figures), 3) if figures else None,
        "parts": parts,
        "measured_at": time.time(),
    }


async def warm_and_cold(path: str, workdir: Path, runs: int = 1, **kwargs: Any) -> dict[str, Any]:
    """Both figures for ``path`` (cold first): ``first_frame_warm_s`` and
    ``first_frame_cold_s`` (p50 of ``runs`` each), and the samples."""
    cold = await first_frames(path, False, runs, workdir / "cold", **kwargs)
    warm = await first_frames(path, True, runs, workdir / "warm", **kwargs)
    return {
        "path": path,
        "start_profile": START_PROFILE,
        "first_frame_warm_s": warm["p50_s"],
        "first_frame_cold_s": cold["p50_s"],
        "warm": warm,
        "cold": cold,
    }
