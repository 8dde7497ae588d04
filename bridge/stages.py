"""The interfaces between a session and its media stages.

Data flows one way: socket -> session -> :class:`AvatarUplink` (LiveAvatar); LiveKit ->
:class:`AvatarDownlink` -> :class:`MediaSink` (the sync stage) -> :class:`CallPublisher` (Stream).
A stage never imports its owner: it gets an :class:`EventSink` for client-visible events and a
failure callback, and it is closed by whoever started it.

``AvatarUplink`` and ``AvatarDownlink`` together are one avatar, a replaceable part of a session;
the session's clock, client connection and publisher outlive it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from bridge.errors import BridgeError
from bridge.media import AudioChunk, JitterBufferReading, VideoFrame


class EventSink(Protocol):
    """Where stages report client-visible events (sent to the socket client as EVENT frames)."""

    def __call__(self, event: str, /, **fields: Any) -> None: ...


FailureCallback = Callable[[BridgeError], None]


@dataclass(frozen=True, slots=True)
class AvatarRoom:
    """What LiveAvatar's start call returns: where the rendered avatar can be received."""

    session_id: str
    livekit_url: str
    livekit_token: str
    ws_url: str


class AvatarUplink(Protocol):
    """A LiveAvatar session: REST lifecycle plus the audio WebSocket."""

    async def start(self) -> AvatarRoom:
        """Create and start the paid session (recorded in the ledger before returning)."""
        ...

    async def send_audio(self, chunk: AudioChunk) -> None:
        """Queue client PCM for the avatar; waits while the bounded uplink queue is full."""
        ...

    async def end_turn(self) -> None:
        """Flush the turn's tail and send ``agent.speak_end``."""
        ...

    async def interrupt(self) -> None:
        """Drop the unsent rest of the turn and send ``agent.interrupt``."""
        ...

    def buffered_ms(self) -> float:
        """Audio accepted but not yet sent up, for the client's credit events."""
        ...

    @property
    def healthy(self) -> bool:
        """Started and neither failed nor closing: its avatar is there to speak."""
        ...

    async def aclose(self, reason: str = "USER_CLOSED") -> None:
        """Close the WebSocket and stop the paid session. Idempotent, never raises."""
        ...


@runtime_checkable
class CarriesOver(Protocol):
    """An uplink that can hand what a lost avatar had not spoken yet to the next one."""

    def take_unspoken(self) -> list[Any]:
        """The unspoken rest (``bridge.liveavatar.respeak.Unspoken``), oldest first."""
        ...

    async def carry_over(self, parts: list[Any]) -> None:
        """Speak those parts first; queued before the first await."""
        ...


class MediaSink(Protocol):
    """Where the downlink delivers the avatar's decoded media (the sync stage)."""

    def put_video(self, frame: VideoFrame) -> None: ...

    def put_audio(self, chunk: AudioChunk) -> None: ...

    def put_jitter_buffer(self, reading: JitterBufferReading) -> None:
        """The downlink receivers' delays, read periodically (the sync stage aligns on them)."""
        ...


class AvatarDownlink(Protocol):
    """Receives the rendered avatar from the LiveKit room LiveAvatar provisions."""

    async def start(self, room: AvatarRoom, sink: MediaSink) -> None: ...

    @property
    def failed(self) -> bool:
        """The room failed for good (reported through the failure callback)."""
        ...

    async def aclose(self) -> None: ...


class CallPublisher(Protocol):
    """The bridge's participant in the Stream call."""

    async def start(self) -> None: ...

    async def write_video(self, frame: VideoFrame) -> None: ...

    async def write_audio(self, chunk: AudioChunk) -> None: ...

    def flush_audio(self) -> None:
        """Drop queued, unsent audio (barge-in)."""
        ...

    async def aclose(self) -> None: ...


__all__ = [
    "AvatarDownlink",
    "AvatarRoom",
    "AvatarUplink",
    "BridgeError",
    "CallPublisher",
    "EventSink",
    "FailureCallback",
    "MediaSink",
]
