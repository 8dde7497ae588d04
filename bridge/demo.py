"""``avatar-bridge demo``: the whole pipeline on one machine, with no account.

It starts the local stand-ins (LiveAvatar with its LiveKit room, and a Stream coordinator + SFU
that decodes and measures what it receives), runs the daemon as a separate process configured
for them, speaks through the socket as any client would, and writes what a viewer of the call got:
``report.json`` (stable keys), ``call.mp4`` (what the Stream call received), ``sync.png`` (skew
over time) and the daemon's log, then prints a summary. Nothing is left running.

Media stays inside a private network namespace when the machine allows one (WebRTC skips
loopback); otherwise it uses the host's own interfaces, and the report says which.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bridge.client import BridgeClient, stream_pcm_realtime
from bridge.media import AudioFormat
from bridge.protocol import Error, EventMsg
from bridge.sim import browser_viewer, first_frame, first_sound, netns
from bridge.sim.marks import beep_train
from bridge.sim.stack import PUBLISHER_ENV, SMALL, DaemonProcess, StandIns, set_flags
from bridge.sim.stream import StreamStandIn
from bridge.sim.web import PageServer

ASSET = Path(__file__).parent / "assets" / "speech.wav"
RENDER_LATENCY_S = 0.2
# Sync marks of the beep turn: the goals are judged over >= 40 marks at the viewer; 48 beeps
# (24 s) leave room for a few a loaded machine loses.
BEEPS = 48


@dataclass
class SessionResult:
    call_id: str
    session_id: str = ""
    hello_t: float = 0.0
    first_audio_sent_t: float | None = None
    interrupt_t: float | None = None
    events: list[str] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    media_path: str | None = None
    liveavatar_session: str | None = None
    first_sound: dict[str, Any] | None = None  # the first turn's parts (bridge/sim/first_sound.py)


def _read_wav(path: Path) -> tuple[bytes, AudioFormat]:
    with wave.open(str(path), "rb") as w:
        if w.getsampwidth() != 2:
            raise SystemExit(f"{path}: only 16-bit PCM WAV files can be spoken")
        return w.readframes(w.getnframes()), AudioFormat(w.getframerate(), w.getnchannels())


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return round(ordered[k], 1)


class Demo:
    def __init__(self, args: argparse.Namespace, network: str) -> None:
        self.out: Path = args.out
        self.sessions: int = max(1, args.sessions)
        self.short: bool = args.short
        self.audio_path: Path = args.audio or ASSET
        self.network = network
        self.watch: bool = bool(getattr(args, "watch", False))
        self.use_viewer: bool = not getattr(args, "no_viewer", False) and not self.watch
        self.media_path: str = getattr(args, "media_path", "auto") or "auto"
        self.daemon_set: list[str] = list(getattr(args, "daemon_set", None) or [])
        self.continuity: bool = bool(getattr(args, "continuity", False))
        self.viewer: browser_viewer.BrowserViewer | None = None
        # A second viewer who joins mid-call (after the sync marks): its time to first frame.
        self.late_viewer: browser_viewer.BrowserViewer | None = None
        self.viewer_report: dict[str, Any] = {}
        self.socket = Path()
        self.daemon_rc: int | None = None
        self._sim: StandIns | None = None
        self._daemon: DaemonProcess | None = None
        self._quiet = not sys.stderr.isatty()

    def say(self, text: str) -> None:
        print(text, flush=True)

    # ----- orchestration -------------------------------------------------------------------

    async def run(self) -> int:
        self.out.mkdir(parents=True, exist_ok=True)
        for stale in ("report.json", "call.mp4", "sync.png", "daemon.log"):
            (self.out / stale).unlink(missing_ok=True)
        results: list[SessionResult] = []
        report: dict[str, Any] = {}
        why_not = browser_viewer.unavailable() if self.use_viewer else "disabled"
        if self.use_viewer and why_not is not None:
            self.say(f"browser viewer: skipped ({why_not})")
            self.use_viewer = False
        self.viewer_report = {"error": why_not} if why_not else {}
        async with (
            # The avatar publishes as LiveAvatar's does (the LiveKit SDK: libwebrtc, simulcast,
            # forwarded by the stand-in's SFU); BRIDGE_SIM_AVATAR_PUBLISHER=aiortc has the
            # LiveKit stand-in encode it instead (cheaper; not libwebrtc's RTP).
            StandIns(
                render_latency_s=RENDER_LATENCY_S,
                avatar_publisher=os.environ.get(PUBLISHER_ENV) or "sdk",
            ) as sim,
            contextlib.AsyncExitStack() as stack,
        ):
            if self.use_viewer:
                self.viewer = await stack.enter_async_context(
                    browser_viewer.BrowserViewer(sim.stream, "default", "demo-0")
                )
                # Its browser starts now, so its launch does not load the measured call.
                self.late_viewer = await stack.enter_async_context(
                    browser_viewer.BrowserViewer(sim.stream, "default", "demo-0")
                )
            if self.watch:
                pages = await stack.enter_async_context(PageServer())
                url = browser_viewer.watch_url(pages, sim.stream, "default", "demo-0")
                self.say(f"watch the call: open {url}")
            self.say(
                f"stand-ins: LiveAvatar {sim.liveavatar.base_url}  LiveKit {sim.livekit.url}  "
                f"Stream {sim.stream.base_url}"
            )
            self.say(f"network: {self.network}")
            daemon = DaemonProcess(
                self.out,
                sim.daemon_env(),
                "--max-sessions",
                str(self.sessions),
                *SMALL,
                "--set",
                f"output.media_path={self.media_path}",
                *set_flags(self.daemon_set),
            )
            try:
                sim.stream.record("default", "demo-0", str(self.out / "call.mp4"))
                await daemon.start()
                self._sim, self._daemon = sim, daemon
                self.socket = daemon.socket
                self.say(f"daemon: ready, socket {daemon.socket}, admin port {daemon.admin_port}")
                results = list(
                    await asyncio.gather(
                        *(self._session(i, sim.stream) for i in range(self.sessions))
                    )
                )
                metrics = await asyncio.to_thread(daemon.metrics)
            finally:
                self.daemon_rc = await daemon.stop()
                await sim.stream.stop_recording("default", "demo-0")
            await asyncio.sleep(0.5)  # the stand-in notices the avatar's room end
            report = self._report(results, sim.stream, metrics)
            report["viewer"] = self.viewer_report
            report["live_liveavatar_sessions_after"] = len(sim.liveavatar.live_sessions)
        if self.continuity:
            report["continuity"] = await self._continuity(report.get("media_path") or "relay")
        (self.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        self._plot(report)
        self._summary(report)
        ok = (
            report["live_liveavatar_sessions_after"] == 0
            and report["frames"]["received"] > 0
            and not report["errors"]
            and report["daemon_exit_code"] == 0
            and "error" not in report.get("continuity", {})
        )
        return 0 if ok else 1

    async def _continuity(self, path: str) -> dict[str, Any]:
        """HELLO -> first avatar frame at the Stream receiver, warm (a pooled session) and cold,
        on the demo's media path under the realistic start delays (bridge/sim/first_frame.py):
        fresh stand-ins and a daemon each, after the main call."""
        self.say(f"continuity: first frame, cold and warm ({path}, realistic start delays)")
        try:
            return await first_frame.warm_and_cold(
                path,
                self.out / "continuity",
                daemon_flags=[*SMALL, *set_flags(self.daemon_set)],
                stream_codec="VP9",  # the demo's stand-in grants its default, as for the call
                render_latency_s=RENDER_LATENCY_S,
            )
        except (RuntimeError, TimeoutError, OSError) as exc:
            return {"error": f"{type(exc).__name__}: {exc}"[:500]}

    # ----- one client session --------------------------------------------------------------

    async def _session(self, index: int, sfu: StreamStandIn) -> SessionResult:
        res = SessionResult(call_id=f"demo-{index}")
        pcm, fmt = _read_wav(self.audio_path)
        beeps = beep_train(fmt.sample_rate, 6 if self.short else BEEPS, 500, 100).tobytes()
        tag = f"[{res.call_id}]"
        async with await BridgeClient.connect(self.socket) as client:
            res.hello_t = time.monotonic()
            ready = await asyncio.wait_for(client.hello(f"default:{res.call_id}", fmt), 30)
            res.session_id = ready.session_id
            self.say(f"{tag} READY session {ready.session_id}")
            printer = asyncio.create_task(self._print_events(client, res, tag))
            try:
                await asyncio.wait_for(self._until(res, "avatar_ready", "published"), 60)
                if index == 0 and self.viewer is not None:
                    await self._viewer_joins()
                sfu.reset_measure("default", res.call_id)
                if index == 0 and self.viewer is not None:
                    await self.viewer.reset()
                # The marks first: the viewer's first 10 s (viewer.skew_first10s_ms) are the start
                # of its call, where receivers are still adapting.
                turns: list[tuple[str, bytes]] = [("beeps (sync marks)", beeps)]
                if not self.short:
                    turns.append(("speech", pcm))
                for label, audio in turns:
                    self.say(f"{tag} speaking: {label} ({fmt.duration_s(len(audio)):.1f} s)")
                    parts: asyncio.Task[None] | None = None
                    if res.first_audio_sent_t is None:
                        before = await self._scrape()
                        res.first_audio_sent_t = time.monotonic()
                        parts = asyncio.create_task(self._first_sound(res, before))
                    await stream_pcm_realtime(client, audio, fmt, 20, self._progress(tag))
                    if parts is not None:
                        await parts
                    await client.end_turn()
                    await asyncio.wait_for(self._until(res, "speak_ended"), 30)
                    res.events.clear()
                if index == 0 and self.viewer is not None and self.late_viewer is not None:
                    await self._late_viewer_joins()
                # Barge-in: a steady tone (no pauses to confuse the measurement), interrupted after
                # a second; the receiver says when the old audio really stopped.
                self.say(f"{tag} barge-in: a 4 s tone, INTERRUPT after 1 s")
                t = np.arange(4 * fmt.sample_rate) / fmt.sample_rate
                tone = (np.sin(2 * np.pi * 330 * t) * 9000).astype("<i2").tobytes()
                sender = asyncio.create_task(stream_pcm_realtime(client, tone, fmt, 20))
                await asyncio.sleep(1.0 + RENDER_LATENCY_S + 0.5)
                sender.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sender
                res.interrupt_t = time.monotonic()
                await client.interrupt()
                await asyncio.sleep(1.5)
                if index == 0 and self.viewer is not None:
                    self.viewer_report.update(await self.viewer.report())
                if index == 0 and self.watch:
                    await self._keep_watching(client, beeps, fmt, tag)
                await client.close()
            finally:
                printer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await printer
        return res

    async def _scrape(self) -> dict[str, float]:
        if self._daemon is None or self.sessions != 1:
            return {}  # the daemon's stamps are per process: one session only
        return await asyncio.to_thread(self._daemon.metrics)

    async def _first_sound(self, res: SessionResult, before: dict[str, float]) -> None:
        """Once the first turn is heard: its first-sound parts (bridge/sim/first_sound.py)."""
        sim, t0 = self._sim, res.first_audio_sent_t
        if sim is None or t0 is None or not before:
            return
        measure = sim.stream.measure("default", res.call_id)
        deadline = time.monotonic() + 15
        while not any(t >= t0 for t in measure.onset_times):  # bounded: 15 s
            if time.monotonic() > deadline:
                return
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # the stamps after the onset (the daemon's gauges) are set
        after = await self._scrape()
        stats = sim.liveavatar.playback_stats(res.liveavatar_session or "")
        res.first_sound = first_sound.parts(
            t0,
            first_sound.first_chunk(before, after),
            first_sound.turn_after(stats, t0),
            first_sound.onsets(after, before, res.media_path or ""),
            measure.onset_times,
        )

    async def _viewer_joins(self) -> None:
        """The browser viewer joins the call the avatar is already publishing into."""
        assert self.viewer is not None
        try:
            await self.viewer.join()
            first = await self.viewer.first_frame_s(within_s=30)
        except Exception as exc:  # a demo without its viewer still reports the rest
            self.say(f"browser viewer: failed ({exc})")
            self.viewer_report = {"error": str(exc)[:500]}
            self.viewer = None
            return
        self.viewer_report["first_frame_s"] = first
        self.say(f"browser viewer: joined, first frame after {first} s")

    async def _late_viewer_joins(self) -> None:
        """A second browser viewer joins the call a minute in: join to its first frame shown
        (a new subscriber: its PLI goes through the SFU and the relay to the avatar)."""
        assert self.late_viewer is not None
        try:
            await self.late_viewer.join("late-viewer")
            first = await self.late_viewer.first_frame_s(within_s=30)
        except Exception as exc:  # the rest of the report stands without it
            self.say(f"late browser viewer: failed ({exc})")
            self.viewer_report["join_first_frame_error"] = str(exc)[:500]
            return
        self.viewer_report["join_first_frame_s"] = first
        self.say(f"late browser viewer: joined mid-call, first frame after {first} s")

    async def _keep_watching(
        self, client: BridgeClient, beeps: bytes, fmt: AudioFormat, tag: str
    ) -> None:
        """--watch: keep the call up, a beep turn every few seconds, until Ctrl-C."""
        self.say(f"{tag} the call stays up until Ctrl-C (a beep turn every 5 s)")
        while True:
            await stream_pcm_realtime(client, beeps, fmt, 20)
            await client.end_turn()
            await asyncio.sleep(5)

    async def _until(self, res: SessionResult, *names: str) -> None:
        while not all(n in res.events for n in names):
            if res.errors and any(e.get("fatal") for e in res.errors):
                raise SystemExit(f"session failed: {res.errors[-1]}")
            await asyncio.sleep(0.02)

    async def _print_events(self, client: BridgeClient, res: SessionResult, tag: str) -> None:
        async for message in client.messages():
            if isinstance(message, Error):
                res.errors.append(
                    {"code": message.code, "message": message.message, "fatal": message.fatal}
                )
                self.say(f"{tag} ERROR {message.code}: {message.message}")
            elif isinstance(message, EventMsg):
                res.events.append(message.event)
                if message.event == "media_path":
                    res.media_path = str(message.fields.get("path"))
                if message.event == "liveavatar_session":
                    res.liveavatar_session = str(message.fields.get("session_id"))
                if message.event != "credit":
                    fields = json.dumps(dict(message.fields), sort_keys=True)
                    self.say(f"{tag} EVENT {message.event} {fields}")

    def _progress(self, tag: str) -> Any:
        if self._quiet:
            return None

        def show(sent: float, total: float) -> None:
            filled = int(30 * sent / total) if total else 30
            sys.stderr.write(
                f"\r{tag} [{'#' * filled}{'-' * (30 - filled)}] {sent:4.1f}/{total:.1f} s"
            )
            if sent >= total:
                sys.stderr.write("\n")
            sys.stderr.flush()

        return show

    # ----- results -------------------------------------------------------------------------

    def _report(
        self,
        results: list[SessionResult],
        sfu: StreamStandIn,
        metrics: dict[str, float],
    ) -> dict[str, Any]:
        calls = {r.call_id: sfu.stats("default", r.call_id) for r in results}
        skews: list[float] = []
        for r in results:
            skews += sfu.measure("default", r.call_id).skews_ms()
        first_frame = []
        barge = []
        first_sound = []
        for r in results:
            m = sfu.measure("default", r.call_id)
            if m.first_frame_t is not None:
                first_frame.append(m.first_frame_t - r.hello_t)
            if r.first_audio_sent_t is not None:
                heard = [t for t in m.onset_times if t >= r.first_audio_sent_t]
                if heard:
                    first_sound.append(1000 * (min(heard) - r.first_audio_sent_t))
            if r.interrupt_t is not None and m.last_loud_t is not None:
                barge.append(1000 * (m.last_loud_t - r.interrupt_t))
        received = sum(c["video"]["frames"] for c in calls.values())
        # Frames our participant sent: encoded by the transcode publisher, or relayed as is.
        published = int(
            metrics.get("bridge_publisher_video_frames_total", 0)
            + metrics.get("bridge_relay_video_frames_total", 0)
        )
        dropped = int(
            sum(
                v
                for k, v in metrics.items()
                if k.startswith("bridge_dropped_total") and "video" in k
            )
        )
        audio_dropped_ms = 1000 * sum(
            v for k, v in metrics.items() if k.startswith("bridge_audio_dropped_seconds_total")
        )
        return {
            "version": 1,
            "network": "namespace" if self.network == "namespace" else "host",
            "sessions": len(results),
            "media_path": next((r.media_path for r in results if r.media_path), None),
            # The RTP payload type the Stream receiver saw, named by the negotiated SDP; the
            # publish option the SFU granted is reported apart and never stands in for it.
            "video_codec": next(iter(calls.values()))["video_codec"] if calls else None,
            "video_codec_granted": next(iter(calls.values()))["video_codec_granted"]
            if calls
            else None,
            # Signed median (negative: picture early); p95/p99 of the magnitude, as the goals
            # (within +-20 ms at p95, +-40 ms at p99) are stated.
            "skew_ms": {
                "p50": _pct(skews, 0.5),
                "p95": _pct([abs(s) for s in skews], 0.95),
                "p99": _pct([abs(s) for s in skews], 0.99),
                "mean": round(statistics.fmean(skews), 1) if skews else None,
                "min": round(min(skews), 1) if skews else None,
                "max": round(max(skews), 1) if skews else None,
                "samples": len(skews),
                "values": [round(s, 1) for s in skews],
            },
            "first_frame_s": round(max(first_frame), 3) if first_frame else None,
            "barge_in_ms": round(max(barge), 1) if barge else None,
            "render_latency_ms": 1000 * RENDER_LATENCY_S,
            # Socket AUDIO to the first sound at the Stream receiver, split into the stand-in's
            # render latency and the rest (the bridge, both networks, the receiver's jitter
            # buffer, and the uplink's deliberate first-chunk buffering, liveavatar.first_chunk_ms).
            "audio_latency_ms": {
                "socket_to_receiver": round(max(first_sound), 1) if first_sound else None,
                "stand_in_render": 1000 * RENDER_LATENCY_S,
                "added_after_render": round(max(first_sound) - 1000 * RENDER_LATENCY_S, 1)
                if first_sound
                else None,
            },
            # The first turn's first AUDIO byte -> first sound at the receiver, in parts measured
            # where they happen (one-session demos only: the daemon's stamps are per process).
            "first_sound_ms": next((r.first_sound for r in results if r.first_sound), None),
            "frames": {"published": published, "received": received, "dropped": dropped},
            "audio_dropped_ms": round(audio_dropped_ms, 1),
            "audio_received_s": round(sum(c["audio"]["seconds"] for c in calls.values()), 2),
            "fps": statistics.median([c["video"]["fps"] or 0 for c in calls.values()]),
            "resolution": next(iter(calls.values()))["video"]["resolution"] if calls else None,
            "freezes": sum(c["video"]["freezes"] for c in calls.values()),
            "errors": [e for r in results for e in r.errors],
            "daemon_exit_code": self.daemon_rc,
            "calls": calls,
        }

    def _plot(self, report: dict[str, Any]) -> None:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            self.say("(matplotlib not installed: no sync.png)")
            return
        values = report["skew_ms"]["values"]
        fig, ax = plt.subplots(figsize=(8, 3.5))
        ax.plot(range(len(values)), values, "o-", label="skew at the SFU's receiver (arrival)")
        viewer = (report.get("viewer") or {}).get("skew_ms", {}).get("values") or []
        if viewer:
            ax.plot(range(len(viewer)), viewer, "s-", label="skew at the browser's playout")
        for bound in (-40, -20, 20, 40):
            ax.axhline(bound, color="grey", lw=0.6, ls=":" if abs(bound) == 40 else "--")
        ax.set_xlabel("sync mark (beep onset) at the Stream receiver")
        ax.set_ylabel("ms")
        ax.set_title("A/V skew (video − audio; <0 = picture early)")
        ax.legend(loc="upper right")
        fig.tight_layout()
        fig.savefig(self.out / "sync.png", dpi=100)
        plt.close(fig)

    def _summary(self, r: dict[str, Any]) -> None:
        s = r["skew_ms"]
        rows = [
            ("network", r["network"]),
            ("media path", r["media_path"]),
            (
                "video codec on the wire (granted)",
                f"{r['video_codec']} ({r['video_codec_granted']})",
            ),
            ("sessions", r["sessions"]),
            ("A/V skew median (ms, <0 = picture early)", f"{s['p50']} ({s['samples']} marks)"),
            ("|A/V skew| p95 / p99 (ms)", f"{s['p95']} / {s['p99']}"),
            ("HELLO to first frame in the call (s)", r["first_frame_s"]),
            *(
                [
                    (
                        "first frame, warm pool / cold start (s)",
                        "{first_frame_warm_s} / {first_frame_cold_s} ({path})".format(
                            **r["continuity"]
                        )
                        if "error" not in r["continuity"]
                        else f"not measured: {r['continuity']['error']}",
                    )
                ]
                if "continuity" in r
                else []
            ),
            ("barge-in: INTERRUPT to last old audio (ms)", r["barge_in_ms"]),
            (
                "socket AUDIO to first sound at receiver (ms)",
                "{socket_to_receiver} = render {stand_in_render} + bridge and networks "
                "{added_after_render}".format(**r["audio_latency_ms"]),
            ),
            (
                "first sound, in parts (ms)",
                ", ".join(f"{k} {v}" for k, v in (r.get("first_sound_ms") or {}).items()) or "-",
            ),
            (
                "frames published / received / dropped",
                "{published} / {received} / {dropped}".format(**r["frames"]),
            ),
            (
                "video at the receiver",
                f"{r['resolution']} @ {r['fps']} fps, {r['freezes']} freezes",
            ),
            (
                "audio received (s) / dropped (ms)",
                f"{r['audio_received_s']} / {r['audio_dropped_ms']}",
            ),
            ("LiveAvatar sessions left running", r["live_liveavatar_sessions_after"]),
            ("errors", len(r["errors"])),
        ]
        v = r.get("viewer") or {}
        if "skew_ms" in v:
            vs, v10 = v["skew_ms"], v["skew_first10s_ms"]
            rows += [
                (
                    "BROWSER VIEWER |A/V skew| p95 / p99 at playout (ms)",
                    f"{vs['p95']} / {vs['p99']} (median {vs['p50']}, {vs['samples']} marks)",
                ),
                ("  first 10 s |skew| p95 / p99 (ms)", f"{v10['p95']} / {v10['p99']}"),
                (
                    "  receivers' delays, video - audio (ms)",
                    f"{(v.get('skew_check') or {}).get('receivers_difference_ms')}"
                    + (
                        "  (the marks' figure disagrees: aliased, see docs/sync.md)"
                        if (v.get("skew_check") or {}).get("consistent") is False
                        else ""
                    ),
                ),
                (
                    "  viewer video",
                    f"{v.get('codec')} @ {v.get('fps')} fps, {v.get('freezes')} freezes, "
                    f"first frame {v.get('first_frame_s')} s after joining",
                ),
                (
                    "  a viewer joining mid-call",
                    f"first frame {v.get('join_first_frame_s')} s after joining",
                ),
            ]
        elif v.get("error"):
            rows.append(("browser viewer", f"not run: {v['error']}"))
        width = max(len(k) for k, _ in rows)
        self.say("")
        self.say("avatar-bridge demo: what the Stream call received")
        for k, v in rows:
            self.say(f"  {k:<{width}}  {v}")
        self.say(f"files: {self.out}/report.json, call.mp4, sync.png, daemon.log")


def main(args: argparse.Namespace) -> int:
    if getattr(args, "watch", False) and not netns.inside():
        # A person's own browser must reach the page and the media: the host's network.
        network = "host"
    elif not netns.inside():
        if netns.available():
            argv = [sys.executable, "-m", "bridge.cli", *sys.argv[1:]]
            cmd = netns.unshare_argv(argv)
            assert cmd is not None
            return subprocess.call(cmd)
        network = "host"
    else:
        network = "namespace"
    try:
        import uvloop

        return int(uvloop.run(Demo(args, network).run()))
    except ImportError:  # pragma: no cover
        return asyncio.run(Demo(args, network).run())


__all__ = ["main"]
