"""Drives the daemon (or the codec floor) against the in-process stand-ins and measures it.

One :class:`Variant` = one configuration (avatar size, output codec). Every measurement restarts
the stand-ins and the process under test (the method that gave stable figures), warms up until
the Stream receiver decodes video, then measures a fixed window in which every session speaks a
beep train (sync marks) in real time. CPU is read from ``/proc`` for the process under test and,
separately, for this process (the stand-ins).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench import procstat
from bench.stats import Samples, histogram_ms, metric_total, parse_metrics, summary
from bridge.client import BridgeClient, stream_pcm_realtime
from bridge.config import OutputConfig
from bridge.media import AudioFormat
from bridge.protocol import Error, EventMsg
from bridge.sim import browser_viewer
from bridge.sim.avatar import AvatarRenderer
from bridge.sim.marks import beep_train
from bridge.sim.stack import DaemonProcess, StandIns, set_flags
from bridge.sim.stream.measure import CallMeasure

CLIENT_FMT = AudioFormat(24000, 1)  # what TTS engines emit; the daemon resamples as needed
RENDER_LATENCY_S = 0.2
FPS = 30
BEEP_PERIOD_MS = 500
BEEP_MS = 100
# The daemon's default output.video_delay_ms, from its one source (set explicitly below so a
# result records what it ran with).
VIDEO_DELAY_MS: float = OutputConfig.model_fields["video_delay_ms"].default
# Daemon settings given on the command line (``python -m bench --daemon-set KEY=VALUE``), after
# the variant's own: an A/B of one setting without editing code; the command is in the results.
DAEMON_SETTINGS: list[str] = []
SESSION_TIMEOUT_S = 60.0
BENCH_AVATAR_ID = "6b1f3b8e-5c1e-4d7a-9a59-0b3c2d1e4f50"  # any UUID: the stand-in accepts all
SKEW_QS = {"p50": 0.5, "p95": 0.95, "p99": 0.99}


@dataclass(frozen=True)
class Variant:
    name: str
    quality: str  # LiveAvatar video_quality: low = 640x360, high = 1280x720
    width: int
    height: int
    codec: str  # Stream output codec

    def daemon_flags(self) -> tuple[str, ...]:
        return (
            # Paid (non-sandbox) sessions: the sandbox's ~1 minute cap would end the soak.
            "--set", "liveavatar.is_sandbox=false",
            "--set", f"liveavatar.avatar_id={BENCH_AVATAR_ID}",
            "--set", f"liveavatar.video_quality={self.quality}",
            "--set", "liveavatar.video_encoding=VP8",
            "--set", f"output.width={self.width}", "--set", f"output.height={self.height}",
            "--set", f"output.fps={FPS}", "--set", f"output.video_codec={self.codec}",
            "--set", f"output.video_delay_ms={VIDEO_DELAY_MS:g}",
            *set_flags(DAEMON_SETTINGS),
        )  # fmt: skip


VARIANTS = {
    v.name: v
    for v in (
        Variant("360p30-VP9", "low", 640, 360, "VP9"),
        Variant("360p30-VP8", "low", 640, 360, "VP8"),
        Variant("720p30-VP9", "high", 1280, 720, "VP9"),
        Variant("720p30-VP8", "high", 1280, 720, "VP8"),
    )
}


@dataclass
class ClientSession:
    """One client of the daemon: its socket connection and what it heard."""

    call_id: str
    client: BridgeClient | None = None
    hello_t: float = 0.0
    liveavatar_session: str | None = None
    events: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    reader: asyncio.Task[None] | None = None

    async def read(self) -> None:
        assert self.client is not None
        async for message in self.client.messages():
            if isinstance(message, Error):
                self.errors.append(f"{message.code}: {message.message}")
            elif isinstance(message, EventMsg):
                self.events.append(message.event)
                if message.event == "liveavatar_session":
                    self.liveavatar_session = str(message.fields.get("session_id"))

    async def until(self, *names: str) -> None:
        def seen() -> bool:
            if self.errors:
                raise RuntimeError(f"{self.call_id}: {self.errors[-1]}")
            return all(n in self.events for n in names)

        await poll(seen)


async def poll(predicate: Callable[[], bool], limit_s: float = SESSION_TIMEOUT_S) -> None:
    """Wait until ``predicate()`` holds; the stand-ins' state has no event to wait on."""
    async with asyncio.timeout(limit_s):
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.02)


def beeps(seconds: float) -> bytes:
    count = max(1, int(seconds * 1000 / BEEP_PERIOD_MS))
    return beep_train(CLIENT_FMT.sample_rate, count, BEEP_PERIOD_MS, BEEP_MS).tobytes()


def media_origin(sim: StandIns, la_session: str | None) -> float | None:
    """Monotonic time of media_ms 0 of the avatar renderer behind a LiveAvatar session."""
    s = sim.liveavatar.sessions.get(la_session or "")
    renderer = s.renderer if s is not None else None
    return None if renderer is None else time.monotonic() - renderer.media_s()


def receiver(measure: CallMeasure, window_s: float) -> dict[str, Any]:
    """What the Stream receiver got in the window (its measure was reset at the start)."""
    snap = measure.snapshot()
    lat = list(measure.latency_ms)
    return {
        "frames": measure.frames,
        "expected_frames": round(window_s * FPS),
        "fps": snap["video"]["fps"],
        "resolution": snap["video"]["resolution"],
        "freezes": measure.freezes,
        "missing_marks": measure.marks_missing,
        "skews": measure.skews_ms(),
        "e2e_latency_ms": summary(lat, {"p50": 0.5, "p95": 0.95}),
        "audio_s": snap["audio"]["seconds"],
    }


def wire_codec(sim: StandIns, call_ids: list[str], claimed: str) -> dict[str, Any]:
    """The video codec the Stream receiver saw on the wire (payload type named by the negotiated
    SDP), per call, against what the variant claims: a variant's name is never evidence."""
    seen = sorted({str(sim.stream.stats("default", c)["video_codec"]) for c in call_ids})
    return {"claimed": claimed, "on_the_wire": seen, "matches": seen == [claimed]}


def skew_stats(skews: list[float]) -> dict[str, Any]:
    """Signed median; p95/p99 of the magnitude, as the goals (±20 / ±40 ms) are stated."""
    out: dict[str, Any] = {"p50": summary(skews, {"p50": 0.5})["p50"]}
    out.update(summary([abs(s) for s in skews], {"p95": 0.95, "p99": 0.99}))
    out["mean"] = round(statistics.fmean(skews), 1) if skews else None
    out["samples"] = len(skews)
    return out


def standin_skipped() -> float:
    from prometheus_client import REGISTRY

    return sum(
        s.value
        for m in REGISTRY.collect()
        if m.name == "sim_avatar_skipped_frames"
        for s in m.samples
        if s.name.endswith("_total")
    )


async def scrape(daemon: DaemonProcess) -> tuple[Samples, str]:
    status, text = await asyncio.to_thread(daemon.admin, "GET", "/metrics")
    if status != 200:
        raise RuntimeError(f"/metrics answered {status}")
    return parse_metrics(str(text)), str(text)


def _daemon_drops(samples: Samples) -> float:
    return metric_total(samples, "bridge_dropped_total") + metric_total(
        samples, "bridge_publisher_dropped_frames_total"
    )


async def run_daemon(
    variant: Variant,
    sessions: int,
    window_s: float,
    *,
    barge_in: bool,
    workroot: Path,
    media_path: str = "transcode",
    viewer: bool = False,
    avatar_publisher: str | None = None,
) -> dict[str, Any]:
    """One measurement of the daemon with ``sessions`` concurrent sessions of ``variant``.

    With ``viewer``, headless Chromium watches the first call with Stream's browser SDK and the
    result carries ``viewer`` (lip sync at the browser's playout, see
    :mod:`bridge.sim.browser_viewer`), or why it could not run. ``avatar_publisher``: how the
    avatar reaches LiveKit ("sdk": libwebrtc, as LiveAvatar's; default: the stand-ins')."""
    workdir = Path(tempfile.mkdtemp(prefix=f"daemon-{variant.name}-", dir=workroot))
    why_not = browser_viewer.unavailable() if viewer else "not asked"
    async with (
        StandIns(
            render_latency_s=RENDER_LATENCY_S,
            stream_codec=variant.codec,
            avatar_publisher=avatar_publisher,
        ) as sim,
        contextlib.AsyncExitStack() as stack,
    ):
        daemon = DaemonProcess(
            workdir, sim.daemon_env(), "--max-sessions", str(sessions), *variant.daemon_flags()
        )
        clients = [ClientSession(f"bench-{variant.name}-{i}") for i in range(sessions)]
        # The 1-minute load average at the start: the machine's business is part of a figure.
        result: dict[str, Any] = {
            "variant": variant.name,
            "sessions": sessions,
            "load": round(os.getloadavg()[0], 2),
            "avatar_publisher": sim.liveavatar.options.publisher,
        }
        try:
            watcher: browser_viewer.BrowserViewer | None = None
            result["viewer"] = {"error": why_not}
            if why_not is None:
                # The viewer's browser is up before the call, as a person's is: its start (a
                # second of both cores) would otherwise land on the call's first seconds, which
                # on a real deployment run on other machines than the viewer's.
                try:
                    watcher = await stack.enter_async_context(
                        browser_viewer.BrowserViewer(sim.stream, "default", clients[0].call_id)
                    )
                except Exception as exc:  # the run's other figures stand without a viewer
                    result["viewer"] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
            await daemon.start()
            assert daemon.proc is not None
            pid = daemon.proc.pid
            await asyncio.gather(*(_open(c, daemon, sim, media_path) for c in clients))
            if watcher is not None:
                try:
                    await watcher.join()
                    result["viewer"] = {"first_frame_s": await watcher.first_frame_s()}
                except Exception as exc:  # the run's other figures stand without a viewer
                    result["viewer"] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
                    watcher = None
            await asyncio.sleep(1.0)  # warm-up: encoders settled, first keyframes out
            for c in clients:
                sim.stream.reset_measure(
                    "default", c.call_id, media_origin(sim, c.liveavatar_session)
                )
            if watcher is not None:
                await watcher.reset()
            before, _ = await scrape(daemon)
            skipped0 = standin_skipped()
            cpu = procstat.CpuWindow({"daemon": pid, "standins": "self"})
            cpu.start()
            await asyncio.gather(*(_speak(c, beeps(window_s)) for c in clients))
            usage = cpu.stop()
            after, _ = await scrape(daemon)
            if media_path == "relay":
                result["relay_sync"] = await _relay_sync(daemon)
            if watcher is not None:
                await asyncio.sleep(0.5)  # the last marks play out
                result["viewer"].update(await watcher.report())
            rss, fds = procstat.rss_mb(pid), procstat.open_fds(pid)
            recv = [
                receiver(sim.stream.measure("default", c.call_id), usage["wall_s"]) for c in clients
            ]
            skipped = standin_skipped() - skipped0
            barge = await _barge_in(clients[0], sim) if barge_in else None
            result.update(
                _daemon_figures(usage, before, after, recv, sessions, rss, fds, skipped, barge)
            )
            result["first_frame_s"] = _first_frames(clients, sim)
            result["media_path"] = media_path
            claimed = variant.codec if media_path == "transcode" else "VP8"  # relay: the avatar's
            result["codec"] = wire_codec(sim, [c.call_id for c in clients], claimed)
        finally:
            for c in clients:
                await _close(c)
            result["daemon_exit_code"] = await daemon.stop()
        result["errors"] = [e for c in clients for e in c.errors]
        result["live_liveavatar_sessions_after"] = len(sim.liveavatar.live_sessions)
    return result


async def _relay_sync(daemon: DaemonProcess) -> dict[str, Any] | None:
    """The first relayed session's pacing alignment (bridge/relay/sender_clock.py): where a
    relay run's viewer skew comes from."""
    status, body = await asyncio.to_thread(daemon.admin, "GET", "/sessions")
    sessions = body.get("sessions", []) if status == 200 else []
    relays = [s["relay"] for s in sessions if s.get("relay")]
    return relays[0].get("sync") if relays else None


async def _open(c: ClientSession, daemon: DaemonProcess, sim: StandIns, media_path: str) -> None:
    c.client = await BridgeClient.connect(daemon.socket)
    c.hello_t = time.monotonic()
    await asyncio.wait_for(
        c.client.hello(f"default:{c.call_id}", CLIENT_FMT, media_path=media_path, client="bench"),
        SESSION_TIMEOUT_S,
    )
    c.reader = asyncio.create_task(c.read(), name=f"bench-read-{c.call_id}")
    await c.until("avatar_ready", "published")
    await poll(lambda: sim.stream.measure("default", c.call_id).first_frame_t is not None)
    # Remembered before the window's reset forgets it.
    c.events.append(f"first_frame={sim.stream.measure('default', c.call_id).first_frame_t}")


def _first_frames(clients: list[ClientSession], sim: StandIns) -> float | None:
    values = []
    for c in clients:
        for e in c.events:
            if e.startswith("first_frame="):
                values.append(float(e.split("=", 1)[1]) - c.hello_t)
    return round(max(values), 3) if values else None


async def _speak(c: ClientSession, pcm: bytes) -> None:
    assert c.client is not None
    await stream_pcm_realtime(c.client, pcm, CLIENT_FMT, 20)
    await c.client.end_turn()


async def _barge_in(c: ClientSession, sim: StandIns) -> float | None:
    """A steady tone, INTERRUPT after a second: when did the old audio stop at the receiver?"""
    assert c.client is not None
    await asyncio.sleep(0.6)  # the beep turn's tail plays out
    rate = CLIENT_FMT.sample_rate
    t = np.arange(4 * rate) / rate
    tone = (np.sin(2 * np.pi * 330 * t) * 9000).astype("<i2").tobytes()
    sender = asyncio.create_task(stream_pcm_realtime(c.client, tone, CLIENT_FMT, 20))
    await asyncio.sleep(1.0 + RENDER_LATENCY_S + 0.5)
    sender.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await sender
    interrupt_t = time.monotonic()
    await c.client.interrupt()
    await asyncio.sleep(1.5)
    last = sim.stream.measure("default", c.call_id).last_loud_t
    return None if last is None else round(1000 * (last - interrupt_t), 1)


async def _close(c: ClientSession) -> None:
    if c.client is not None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(c.client.close(), 10)
    if c.reader is not None:
        c.reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await c.reader


def _daemon_figures(
    usage: dict[str, float],
    before: Samples,
    after: Samples,
    recv: list[dict[str, Any]],
    sessions: int,
    rss: float,
    fds: int,
    skipped: float,
    barge: float | None,
) -> dict[str, Any]:
    skews = [s for r in recv for s in r["skews"]]
    beyond = histogram_ms(
        after, before, "bridge_sync_video_late_seconds", {"p50": 0.5, "p95": 0.95}
    )
    # The hold follows the downlink's receivers (bridge/sync.py), so the added latency is
    # measured per frame, not the configured base plus the lateness.
    downlink = histogram_ms(
        after, before, "bridge_sync_video_added_seconds", {"p50": 0.5, "p95": 0.95}
    )
    missing = sum(r["missing_marks"] for r in recv)
    daemon_drops = _daemon_drops(after) - _daemon_drops(before)
    return {
        "window_s": round(usage["wall_s"], 1),
        "cpu_pct": usage["daemon"],
        "cpu_pct_per_session": round(usage["daemon"] / sessions, 1),
        "standin_cpu_pct": usage["standins"],
        "rss_mb": rss,
        "open_fds": fds,
        "uplink_added_ms": histogram_ms(
            after,
            before,
            "bridge_liveavatar_uplink_added_latency_seconds",
            {"p50": 0.5, "p99": 0.99},
        ),
        # LiveKit frame -> Stream write: the deliberate sync hold plus the lateness past it.
        "downlink_added_ms": downlink,
        "downlink_beyond_hold_ms": beyond,
        "video_delay_ms": VIDEO_DELAY_MS,
        "skew_ms": skew_stats(skews),
        "e2e_video_latency_ms": recv[0]["e2e_latency_ms"] if recv else None,
        "barge_in_ms": barge,
        "frames": {
            "received": sum(r["frames"] for r in recv),
            "expected": sum(r["expected_frames"] for r in recv),
            "fps": [r["fps"] for r in recv],
            "missing_marks": missing,
            "daemon_dropped": daemon_drops,
            "freezes": sum(r["freezes"] for r in recv),
            "standin_skipped": skipped,
        },
        "drops": missing + daemon_drops,
        "resolution": recv[0]["resolution"] if recv else None,
    }


# ---- the codec floor ---------------------------------------------------------------------------


async def run_floor(variant: Variant, window_s: float) -> dict[str, Any]:
    """The floor process (bench/floor.py) on the same stand-ins and the same beep-driven avatar."""
    width, height = (640, 360) if variant.quality == "low" else (1280, 720)
    call_id = f"floor-{variant.name}"
    room = f"floor-{variant.name}"
    async with StandIns(render_latency_s=RENDER_LATENCY_S, stream_codec=variant.codec) as sim:
        renderer = AvatarRenderer(width, height, FPS, RENDER_LATENCY_S)
        renderer.start()
        await sim.livekit.create_room(
            room,
            avatar_identity="heygen",
            video=renderer.video_track(),
            audio=renderer.audio_track(),
            video_codec="VP8",
        )
        args = [
            sys.executable, "-m", "bench.floor",
            "--livekit-url", sim.livekit.url, "--token", sim.livekit.mint_token(room, "agent"),
            "--base-url", sim.stream.base_url, "--ws-url", sim.stream.ws_url,
            "--api-key", sim.stream.api_key, "--api-secret", sim.stream.api_secret,
            "--call-id", call_id, "--codec", variant.codec,
        ]  # fmt: skip
        proc = await asyncio.create_subprocess_exec(
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        assert proc.stdout is not None and proc.stdin is not None
        result: dict[str, Any] = {"variant": variant.name}
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), SESSION_TIMEOUT_S)
            if b"ready" not in line:
                raise RuntimeError(f"the floor process did not start: {line!r}")
            measure = sim.stream.measure("default", call_id)
            await poll(lambda: measure.first_frame_t is not None)
            await asyncio.sleep(1.0)
            sim.stream.reset_measure("default", call_id, time.monotonic() - renderer.media_s())
            cpu = procstat.CpuWindow({"floor": proc.pid, "standins": "self"})
            cpu.start()
            await _feed_renderer(renderer, window_s)
            usage = cpu.stop()
            rss = procstat.rss_mb(proc.pid)
            recv = receiver(measure, usage["wall_s"])
            result["codec"] = wire_codec(sim, [call_id], variant.codec)
            result.update(
                {
                    "window_s": round(usage["wall_s"], 1),
                    "cpu_pct": usage["floor"],
                    "standin_cpu_pct": usage["standins"],
                    "rss_mb": rss,
                    "skew_ms": skew_stats(recv["skews"]),
                    "e2e_video_latency_ms": recv["e2e_latency_ms"],
                    "frames": {
                        "received": recv["frames"],
                        "expected": recv["expected_frames"],
                        "missing_marks": recv["missing_marks"],
                        "freezes": recv["freezes"],
                    },
                }
            )
        finally:
            proc.stdin.close()
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                proc.kill()
                await proc.wait()
            result["exit_code"] = proc.returncode
            await renderer.aclose()
            await sim.livekit.close_room(room)
    return result


async def _feed_renderer(renderer: AvatarRenderer, seconds: float) -> None:
    """The same beeps the daemon's sessions speak, pushed straight into the renderer (24 kHz)."""
    pcm = beep_train(24000, max(1, int(seconds * 2)), BEEP_PERIOD_MS, BEEP_MS).tobytes()
    step = 24000 * 2 // 50  # 20 ms
    t0 = time.monotonic()
    for k, start in enumerate(range(0, len(pcm), step)):
        renderer.push_audio(pcm[start : start + step], "floor-turn")
        await asyncio.sleep(max(0.0, t0 + (k + 1) * 0.02 - time.monotonic()))
    renderer.end_turn("floor-turn")


# ---- soak --------------------------------------------------------------------------------------


async def run_soak(
    variant: Variant, sessions: int, duration_s: float, sample_every_s: float, workroot: Path
) -> dict[str, Any]:
    """``sessions`` sessions speak turn after turn for ``duration_s``; RSS, fds, tasks sampled."""
    workdir = Path(tempfile.mkdtemp(prefix="soak-", dir=workroot))
    async with StandIns(render_latency_s=RENDER_LATENCY_S, stream_codec=variant.codec) as sim:
        daemon = DaemonProcess(
            workdir, sim.daemon_env(), "--max-sessions", str(sessions), *variant.daemon_flags()
        )
        clients = [ClientSession(f"soak-{i}") for i in range(sessions)]
        samples: list[dict[str, float]] = []
        result: dict[str, Any] = {"variant": variant.name, "sessions": sessions}
        try:
            await daemon.start()
            assert daemon.proc is not None
            pid = daemon.proc.pid
            await asyncio.gather(*(_open(c, daemon, sim, "transcode") for c in clients))
            stop = asyncio.Event()

            async def talk(c: ClientSession) -> None:
                turn = beeps(8.0)
                while not stop.is_set():
                    await _speak(c, turn)
                    await asyncio.sleep(1.0)

            talkers = [asyncio.create_task(talk(c)) for c in clients]
            t0 = time.monotonic()
            cpu0 = procstat.cpu_seconds(pid)
            before, _ = await scrape(daemon)
            try:
                while True:
                    m, _ = await scrape(daemon)
                    samples.append(
                        {
                            "t_s": round(time.monotonic() - t0, 1),
                            "rss_mb": procstat.rss_mb(pid),
                            "open_fds": procstat.open_fds(pid),
                            "asyncio_tasks": metric_total(m, "bridge_asyncio_tasks"),
                        }
                    )
                    if time.monotonic() - t0 >= duration_s:
                        break
                    await asyncio.sleep(
                        min(sample_every_s, max(0.0, duration_s - (time.monotonic() - t0)))
                    )
                    for t in talkers:
                        if t.done() and t.exception() is not None:
                            raise RuntimeError(f"a soak session failed: {t.exception()!r}")
            finally:
                stop.set()
                for t in talkers:
                    t.cancel()
                await asyncio.gather(*talkers, return_exceptions=True)
            wall = time.monotonic() - t0
            after, _ = await scrape(daemon)
            result["cpu_pct"] = round(100 * (procstat.cpu_seconds(pid) - cpu0) / wall, 1)
            result["daemon_dropped"] = _daemon_drops(after) - _daemon_drops(before)
        finally:
            for c in clients:
                await _close(c)
            result["daemon_exit_code"] = await daemon.stop()
        result["errors"] = [e for c in clients for e in c.errors]
        result["duration_s"] = duration_s
        result["samples"] = samples
        result.update(flatness(samples))
    return result


def flatness(samples: list[dict[str, float]]) -> dict[str, Any]:
    """Growth from the first to the last quarter of a soak (medians), and the RSS slope.

    The first sample is skipped (warm-up: allocators and codec pools grow during the first
    seconds). RSS counts as flat when the last quarter is within 5 % of the first (or 10 MB),
    fds and tasks when their medians do not grow.
    """
    use = samples[1:] if len(samples) > 4 else samples
    if len(use) < 2:
        return {"flat": None}
    q = max(1, len(use) // 4)
    head, tail = use[:q], use[-q:]

    def med(rows: list[dict[str, float]], key: str) -> float:
        return float(statistics.median(r[key] for r in rows))

    rss0, rss1 = med(head, "rss_mb"), med(tail, "rss_mb")
    fd_growth = med(tail, "open_fds") - med(head, "open_fds")
    task_growth = med(tail, "asyncio_tasks") - med(head, "asyncio_tasks")
    ts = [r["t_s"] for r in use]
    rs = [r["rss_mb"] for r in use]
    slope = 0.0
    if len(set(ts)) > 1:
        slope = float(np.polyfit(np.asarray(ts), np.asarray(rs), 1)[0]) * 60
    rss_growth = rss1 - rss0
    rss_flat = rss_growth <= max(10.0, 0.05 * rss0)
    return {
        "rss_mb_start": round(rss0, 1),
        "rss_mb_end": round(rss1, 1),
        "rss_growth_mb": round(rss_growth, 1),
        "rss_slope_mb_per_min": round(slope, 2),
        "fd_growth": fd_growth,
        "asyncio_task_growth": task_growth,
        "flat": bool(rss_flat and fd_growth <= 0 and task_growth <= 0),
    }


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    load = os.getloadavg()
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "kernel": os.uname().release,
        "python": sys.version.split()[0],
        "loadavg_at_start": [round(x, 2) for x in load],
    }


def versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for dist in ("avatar-bridge", "livekit", "getstream", "getstream-rtc", "aiortc", "av", "numpy"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[dist] = metadata.version(dist)
    return out


def dump(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n"
