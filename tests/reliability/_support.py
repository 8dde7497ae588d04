"""Helpers shared by the reliability tests: sessions over the real socket, bounded waits."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bridge.client import BridgeClient, RemoteError, stream_pcm_realtime
from bridge.media import AudioFormat
from bridge.protocol import Error, EventMsg
from bridge.sim.liveavatar import LiveAvatarStandIn
from bridge.sim.stack import DaemonProcess, StandIns

# What LiveAvatar takes natively: no resampling, so bytes sent == bytes the renderer gets.
FMT = AudioFormat(24000, 1)


def tone(seconds: float, freq: float = 330.0) -> bytes:
    t = np.arange(int(seconds * FMT.sample_rate)) / FMT.sample_rate
    return (np.sin(2 * np.pi * freq * t) * 9000).astype("<i2").tobytes()


class Session:
    """A client with the events it has seen, opened until the avatar is live in the call."""

    def __init__(self, client: BridgeClient, call_id: str) -> None:
        self.client = client
        self.call_id = call_id
        self.events: list[EventMsg] = []
        self.errors: list[Error] = []
        self.la_session_id = ""

    @classmethod
    async def open(cls, daemon: DaemonProcess, call_id: str, limit_s: float = 30) -> Session:
        s = cls(await BridgeClient.connect(daemon.socket), call_id)
        await asyncio.wait_for(s.client.hello(f"default:{call_id}", FMT), limit_s)
        for name in ("published", "avatar_ready"):
            if not s.saw(name):
                await s.until(name, limit_s)
        return s

    @property
    def room(self) -> str:
        """The LiveKit room LiveAvatar provisioned for this session (stand-in naming)."""
        return f"la-{self.la_session_id}"

    def saw(self, name: str) -> bool:
        return any(e.event == name for e in self.events)

    def named(self, name: str) -> list[EventMsg]:
        return [e for e in self.events if e.event == name]

    async def until(self, name: str, limit_s: float = 30) -> EventMsg:
        """Read until EVENT ``name``; a fatal ERROR raises RemoteError."""
        async with asyncio.timeout(limit_s):
            while True:
                message = await self.client.recv()
                if isinstance(message, EventMsg):
                    self.events.append(message)
                    if message.event == "liveavatar_session":
                        self.la_session_id = str(message.fields["session_id"])
                    if message.event == name:
                        return message
                else:
                    self.errors.append(message)
                    if message.fatal:
                        raise RemoteError(message)

    async def fatal_error(self, limit_s: float = 30) -> Error:
        """Read until a fatal ERROR (events on the way are kept); fails if none comes."""
        try:
            await self.until("\0never", limit_s)
        except RemoteError as exc:
            return exc.error
        raise AssertionError("unreachable")

    async def speak(self, pcm: bytes, limit_s: float = 30) -> None:
        """One turn in real time, to its ``speak_ended``."""
        await stream_pcm_realtime(self.client, pcm, FMT)
        await self.client.end_turn()
        await self.until("speak_ended", limit_s)

    async def close(self) -> None:
        await self.client.close()


async def refused(daemon: DaemonProcess, call_id: str, limit_s: float = 30) -> Error:
    """HELLO on a new connection, then the fatal ERROR that must end it (before or after READY)."""
    client = await BridgeClient.connect(daemon.socket)
    s = Session(client, call_id)
    try:
        try:
            await asyncio.wait_for(client.hello(f"default:{call_id}", FMT), limit_s)
        except RemoteError as exc:
            return exc.error
        return await s.fatal_error(limit_s)
    finally:
        await client.abort()


async def wait_until(predicate: Callable[[], bool], limit_s: float = 15, what: str = "") -> None:
    deadline = time.monotonic() + limit_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {limit_s} s waiting for {what or predicate}")
        await asyncio.sleep(0.05)


async def no_live_sessions(la: LiveAvatarStandIn, limit_s: float = 15) -> None:
    """The pass condition of every fault: nothing left that LiveAvatar would bill."""
    await wait_until(lambda: la.live_sessions == [], limit_s, "zero live LiveAvatar sessions")


def ledger_entries(daemon: DaemonProcess) -> list[str]:
    path = daemon.state_dir / "liveavatar-sessions.json"
    if not path.exists():
        return []
    return sorted(json.loads(path.read_text()).get("sessions", {}))


def rendered_bytes(la: LiveAvatarStandIn, session_id: str) -> int:
    """PCM bytes the stand-in's renderer accepted for a session, over every turn."""
    renderer = la.sessions[session_id].renderer
    assert renderer is not None
    return sum(renderer.received_bytes.values())


def log_text(daemon: DaemonProcess) -> str:
    return Path(daemon.log_path).read_text(errors="replace")


async def fresh_frames(sim: StandIns, call_id: str, count: int = 30, limit_s: float = 15) -> None:
    """Wait until ``count`` newly rendered avatar frames reach the Stream call.

    Frame numbers are stamped by the avatar renderer, so a repeated (frozen) frame does not
    count: this proves the whole chain moves again, not just the publisher.
    """

    def last() -> int:
        return int(sim.stream.stats("default", call_id)["marks"]["last"] or 0)

    start = last()
    await wait_until(lambda: last() >= start + count, limit_s, f"{count} fresh frames in {call_id}")


async def heard(sim: StandIns, s: Session, seconds: float = 1.0) -> float:
    """Speak a turn of ``seconds`` and return the seconds of audio the call received meanwhile."""
    sim.stream.reset_measure("default", s.call_id)
    await s.speak(tone(seconds))
    await asyncio.sleep(0.4)
    return float(sim.stream.stats("default", s.call_id)["audio"]["seconds"])
