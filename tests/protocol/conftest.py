"""Fixtures for the socket protocol: golden vectors, a fake SessionHost, raw socket helpers."""

from __future__ import annotations

import asyncio
import json
import tempfile
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bridge import protocol as p
from bridge.errors import BridgeError, ErrorCode
from bridge.ingest import ClientLink, IngestOptions, IngestServer
from bridge.media import PCM

VECTORS_PATH = Path(__file__).parent / "vectors" / "v1.json"
TOKEN = "tcp-test-token-1f2e"
STEP_TIMEOUT_S = 5.0


def load_vectors() -> list[dict[str, Any]]:
    return list(json.loads(VECTORS_PATH.read_text())["vectors"])


def vector_bytes(name: str) -> bytes:
    by_name = {v["name"]: v for v in load_vectors()}
    return bytes.fromhex(by_name[name]["hex"])


def event_json(event: Any) -> dict[str, Any]:
    """A parser event in the vectors' JSON form."""
    if isinstance(event, p.ProtocolViolation):
        return {"kind": "violation", "code": str(event.code), "fatal": event.fatal}
    if isinstance(event, p.Hello):
        out: dict[str, Any] = {
            "kind": "hello",
            "v": event.v,
            "call": {"type": event.call.type, "id": event.call.id},
            "audio": {"sample_rate": event.audio.sample_rate, "channels": event.audio.channels},
        }
        if avatar := event.avatar.as_dict():
            out["avatar"] = avatar
        for name in ("session_key", "token", "media_path", "client"):
            if (value := getattr(event, name)) is not None:
                out[name] = value
        return out
    if isinstance(event, p.Audio):
        return {"kind": "audio", "hex": bytes(event.data).hex()}
    if isinstance(event, p.Ping | p.Pong):
        return {"kind": type(event).__name__.lower(), "hex": event.payload.hex()}
    if isinstance(event, p.Mark):
        return {"kind": "mark", "name": event.name}
    if isinstance(event, p.EndTurn):
        return {"kind": "end_turn"}
    if isinstance(event, p.Interrupt | p.Close):
        return {"kind": type(event).__name__.lower()}
    if isinstance(event, p.Ready):
        return {
            "kind": "ready",
            "session_id": event.session_id,
            "session_key": event.session_key,
            "resumed": event.resumed,
            "audio": {"sample_rate": event.audio.sample_rate, "channels": event.audio.channels},
            "limits": dict(event.limits),
        }
    if isinstance(event, p.EventMsg):
        return {"kind": "event", "event": event.event, "fields": dict(event.fields)}
    if isinstance(event, p.Error):
        return {"kind": "error", "code": event.code, "message": event.message, "fatal": event.fatal}
    raise TypeError(event)


# ---------------------------------------------------------------------------------------------
# A fake SessionHost: records what each session receives; behaviour is steered per call id.


@dataclass
class FakeSession:
    hello: p.Hello
    link: ClientLink
    limits: Mapping[str, Any]
    audio: bytearray = field(default_factory=bytearray)
    frames: list[int] = field(default_factory=list)  # sizes of the PCM arrays received
    log: list[str] = field(default_factory=list)
    gate: asyncio.Event | None = None  # when set up, on_audio waits for it (a full uplink queue)
    closed: bool = False
    disconnected: bool = False
    got_audio: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def ready(self) -> dict[str, Any]:
        return {
            "v": 1,
            "session_id": f"ses-{self.hello.call.id}",
            "session_key": f"key-{self.hello.call.id}",
            "resumed": self.hello.session_key is not None,
            "audio": {
                "sample_rate": self.hello.audio.sample_rate,
                "channels": self.hello.audio.channels,
                "encoding": "s16le",
            },
            "limits": {**self.limits, "linger_s": 30},
        }

    async def on_audio(self, pcm: PCM) -> None:
        assert pcm.dtype == np.int16
        self.got_audio.set()
        if self.gate is not None:
            await self.gate.wait()
        self.audio += pcm.tobytes()
        self.frames.append(pcm.nbytes)

    async def on_end_turn(self) -> None:
        self.log.append("end_turn")
        self.link.send_event("speak_ended", {"audio_bytes": len(self.audio)})

    async def on_interrupt(self) -> None:
        self.log.append("interrupt")

    async def on_mark(self, name: str) -> None:
        self.log.append(f"mark:{name}")
        if name == "flood":  # a burst of events to a client that may not be reading
            for i in range(4000):
                self.link.send_event("stats", {"i": i, "pad": "x" * 1000})
        elif name == "fail":
            raise BridgeError(ErrorCode.LIVEAVATAR_UNAVAILABLE, "avatar went away", fatal=True)
        else:
            self.link.send_event("mark", {"name": name})

    async def on_close(self) -> None:
        self.log.append("close")
        self.closed = True

    def on_disconnect(self) -> None:
        self.log.append("disconnect")
        self.disconnected = True


class FakeHost:
    """Opens FakeSessions; ``call.id`` steers it: ``busy`` is refused, ``slow-*`` gate audio."""

    def __init__(self) -> None:
        self.sessions: list[FakeSession] = []
        self.opened = asyncio.Event()
        self.limits: Mapping[str, Any] = {"max_payload": p.MAX_PAYLOAD, "max_json": p.MAX_JSON}

    async def open(self, hello: p.Hello, link: ClientLink) -> FakeSession:
        if hello.call.id == "busy":
            raise BridgeError(ErrorCode.BUSY, "max_sessions reached")
        session = FakeSession(hello, link, self.limits)
        if hello.call.id.startswith("slow"):
            session.gate = asyncio.Event()
        self.sessions.append(session)
        self.opened.set()
        return session

    def session(self, call_id: str) -> FakeSession:
        return next(s for s in self.sessions if s.hello.call.id == call_id)


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    # Short paths: a Unix socket path must fit in 108 bytes; pytest's tmp_path can be long.
    with tempfile.TemporaryDirectory(prefix="abp-") as name:
        yield Path(name)


@pytest.fixture
async def server(sock_dir: Path) -> AsyncIterator[tuple[IngestServer, FakeHost]]:
    host = FakeHost()
    srv = IngestServer(
        host,
        IngestOptions(
            unix_path=sock_dir / "run" / "bridge.sock",
            tcp_port=0,
            tcp_token=TOKEN,
            hello_timeout_s=0.5,
            max_out_buffer=64 * 1024,
        ),
    )
    await srv.start()
    host.limits = srv.limits
    try:
        yield srv, host
    finally:
        await srv.aclose()


# ---------------------------------------------------------------------------------------------
# A raw client: writes whatever bytes a test wants, reads frames until the daemon hangs up.


class RawClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.proto = p.ClientProtocol()
        self.events: list[p.ClientEvent] = []

    @classmethod
    async def unix(cls, path: Path) -> RawClient:
        return cls(*await asyncio.open_unix_connection(str(path)))

    @classmethod
    async def tcp(cls, address: tuple[str, int]) -> RawClient:
        return cls(*await asyncio.open_connection(*address))

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def next_event(self) -> p.ClientEvent | None:
        """The next frame from the daemon, or None at EOF (bounded by STEP_TIMEOUT_S)."""
        async with asyncio.timeout(STEP_TIMEOUT_S):
            while not self.events:
                data = await self.reader.read(65536)
                if not data:
                    return None
                self.proto.receive_data(data)
                self.events.extend(self.proto.events_received())
        return self.events.pop(0)

    async def until_eof(self) -> list[p.ClientEvent]:
        out = []
        while (event := await self.next_event()) is not None:
            out.append(event)
        return out

    def close(self) -> None:
        self.writer.close()


def hello_frame(
    call_id: str = "demo-1", rate: int = 16000, channels: int = 1, **extra: Any
) -> bytes:
    obj: dict[str, Any] = {
        "v": 1,
        "call": {"type": "default", "id": call_id},
        "audio": {"sample_rate": rate, "channels": channels, "encoding": "s16le"},
        **extra,
    }
    return p.encode_json_frame(p.FrameType.HELLO, obj)


def ramp(n_samples: int, start: int = 0) -> bytes:
    """Recognisable mono PCM: a wrapping int16 counter, so order and loss are checkable."""
    return ((np.arange(start, start + n_samples) % 65536) - 32768).astype("<i2").tobytes()
