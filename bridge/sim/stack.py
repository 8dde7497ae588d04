"""The local stand-ins started together, and the daemon run against them as its own process.

Shared by ``avatar-bridge demo``, the end-to-end tests and the benchmarks, so all three exercise
the same configuration. The daemon is a separate process, configured only through its environment
and flags, exactly as a user would run it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

from bridge.sim.liveavatar import START_PROFILES, LiveAvatarStandIn, StandInOptions
from bridge.sim.livekit_server import LiveKitStandIn
from bridge.sim.stream import StreamStandIn

LIVEAVATAR_KEY = "standin-liveavatar-key"
PUBLISHER_ENV = "BRIDGE_SIM_AVATAR_PUBLISHER"
# The "sdk" avatar's frame-rate cap for a whole run (StandInOptions.publisher_max_fps).
PUBLISHER_FPS_ENV = "BRIDGE_SIM_AVATAR_FPS"

# How many StandIns of this process are open: the heap stays frozen until the last one closes.
_open = 0


def hold_heap() -> None:
    """Keep what this process holds now out of the cyclic collector's full collections.

    The stand-ins stand for remote services (the avatar's renderer, the two SFUs) that never stop
    for this process's garbage collection, but they share its interpreter with whatever started
    them (the bench, pytest): a full collection walks that whole heap holding the GIL, 70-150 ms
    on the bench's, and stalls every stand-in at once, the libwebrtc publisher's audio thread
    too. Its audio then reaches libwebrtc late in a burst and Chromium's NetEq at the viewer
    grows its delay for seconds (docs/sync.md). Frozen objects are only set aside, not lost:
    :func:`release_heap` hands them back to the collector when the last stand-ins close."""
    global _open
    _open += 1
    gc.freeze()


def release_heap() -> None:
    global _open
    _open = max(0, _open - 1)
    if _open == 0:
        gc.unfreeze()


class StandIns:
    """LiveAvatar (which provisions rooms on the LiveKit stand-in) and Stream, on loopback."""

    def __init__(
        self,
        *,
        render_latency_s: float = 0.2,
        stream_codec: str = "VP9",
        liveavatar: StandInOptions | None = None,
        avatar_publisher: str | None = None,
        start_profile: str | None = None,
    ) -> None:
        """``start_profile`` ("instant", "realistic") sets the LiveAvatar start-path delays;
        tests keep the default (instant), the demo and the bench ask for "realistic"."""
        self.livekit = LiveKitStandIn()
        opts = liveavatar or StandInOptions()
        if start_profile is not None:
            opts.delays = START_PROFILES[start_profile]
        opts.api_keys = frozenset({LIVEAVATAR_KEY})
        opts.render_latency_s = render_latency_s
        # "sdk": the avatar publishes with the LiveKit SDK (libwebrtc simulcast RTP, forwarded);
        # "aiortc": the LiveKit stand-in encodes it. The environment can switch a whole run.
        opts.publisher = avatar_publisher or os.environ.get(PUBLISHER_ENV, opts.publisher)
        if fps := os.environ.get(PUBLISHER_FPS_ENV):
            opts.publisher_max_fps = float(fps)
        self.liveavatar = LiveAvatarStandIn(opts, livekit=self.livekit)
        self.stream = StreamStandIn(video_codec=stream_codec)
        self._holding = False  # this one counts in hold_heap()

    async def start(self) -> None:
        await self.livekit.start()
        await self.liveavatar.start()
        await self.stream.start()
        hold_heap()
        self._holding = True

    async def aclose(self) -> None:
        try:
            await self.stream.aclose()
            await self.liveavatar.aclose()
            await self.livekit.aclose()
        finally:
            if self._holding:
                self._holding = False
                release_heap()

    async def __aenter__(self) -> StandIns:
        await self.start()
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def standin_env(self) -> dict[str, str]:
        """Only the variables that point a daemon at these stand-ins (and tell it what it
        cannot see on the wire about them)."""
        env = {
            "LIVEAVATAR_API_KEY": LIVEAVATAR_KEY,
            "LIVEAVATAR_BASE_URL": self.liveavatar.base_url,
            "STREAM_API_KEY": self.stream.api_key,
            "STREAM_API_SECRET": self.stream.api_secret,
            "STREAM_BASE_URL": self.stream.base_url,
            "AVATAR_BRIDGE_STREAM__WS_URL": self.stream.ws_url,
        }
        # Both avatar publishers' audio SRs are one packet late (the daemon's default, "auto",
        # output.relay_audio_sr_capture_lag_ms): libwebrtc stamps the packetization time, and
        # the aiortc senders the send time of a 20 ms frame the renderer hands over when its
        # last sample is due (bridge/sim/avatar.py).
        return env

    def daemon_env(self) -> dict[str, str]:
        """The environment that points a daemon at these stand-ins."""
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("AVATAR_BRIDGE_", "LIVEAVATAR_", "STREAM_", "NOTIFY_SOCKET"))
        }
        env.update(self.standin_env())
        return env


# A cheap, matching configuration: 360p avatar, 360p output.
SMALL = (
    "--set", "liveavatar.video_quality=low",
    "--set", "liveavatar.video_encoding=VP8",
    "--set", "output.width=640", "--set", "output.height=360",
)  # fmt: skip


def set_flags(settings: list[str]) -> tuple[str, ...]:
    """``avatar-bridge run`` flags for ``KEY=VALUE`` settings (``--set`` each)."""
    return tuple(arg for kv in settings for arg in ("--set", kv))


class DaemonProcess:
    """``avatar-bridge run`` as a child process, its log in ``workdir/daemon.log``."""

    def __init__(self, workdir: Path, env: dict[str, str], *flags: str) -> None:
        self.workdir = workdir
        self.env = env
        self.flags = flags
        self.socket = workdir / "bridge.sock"
        self.log_path = workdir / "daemon.log"
        self.state_dir = workdir / "state"
        self.proc: subprocess.Popen[bytes] | None = None
        self.admin_port = 0
        self.returncode: int | None = None

    async def start(self, timeout_s: float = 90.0) -> None:
        """Until the daemon logs ``ready``; an exit fails at once. The bound is generous: on a
        loaded 2-core machine importing the media stacks alone can take tens of seconds."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        args = [
            sys.executable, "-m", "bridge.cli", "run",
            "--socket", str(self.socket), "--state-dir", str(self.state_dir),
            "--admin-port", "0", "--log-format", "json", *self.flags,
        ]  # fmt: skip
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self.proc = self._spawn(args)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the daemon exited ({self.proc.returncode}): {self.log_tail()}")
            with self.log_path.open("rb") as f:
                f.seek(offset)
                for raw in f.read().splitlines():
                    if b'"event": "ready"' in raw:
                        self.admin_port = int(json.loads(raw)["admin_port"])
                        return
            await asyncio.sleep(0.05)
        # Nobody will stop a daemon whose start failed: do not leave it running.
        await self.kill()
        raise RuntimeError(f"the daemon did not become ready: {self.log_tail()}")

    def _spawn(self, args: list[str]) -> subprocess.Popen[bytes]:
        with self.log_path.open("ab") as log:
            return subprocess.Popen(
                args,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                preexec_fn=_die_with_parent,
            )

    def log_tail(self, lines: int = 30) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def log_events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out

    def admin(self, method: str, path: str) -> tuple[int, Any]:
        req = urllib.request.Request(f"http://127.0.0.1:{self.admin_port}{path}", method=method)
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                body = resp.read()
                ctype = resp.headers.get("Content-Type", "")
                return resp.status, json.loads(body) if "json" in ctype else body.decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(errors="replace")

    def metrics(self) -> dict[str, float]:
        """The daemon's ``bridge_*`` samples, by full sample name with labels."""
        _, text = self.admin("GET", "/metrics")
        out: dict[str, float] = {}
        for line in str(text).splitlines():
            if line.startswith("bridge_"):
                name, _, value = line.rpartition(" ")
                with contextlib.suppress(ValueError):
                    out[name] = float(value)
        return out

    def metric_sum(self, prefix: str, contains: str = "") -> float:
        return sum(v for k, v in self.metrics().items() if k.startswith(prefix) and contains in k)

    async def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 40.0) -> int:
        proc = self.proc
        if proc is None:
            return self.returncode or 0
        if proc.poll() is None:
            proc.send_signal(sig)
        try:
            await asyncio.to_thread(proc.wait, timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            await asyncio.to_thread(proc.wait)
        self.returncode = proc.returncode
        self.proc = None
        return proc.returncode

    async def kill(self) -> int:
        return await self.stop(signal.SIGKILL)


def _die_with_parent() -> None:
    """In the child: SIGTERM when the parent dies, so no daemon outlives its harness (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
