"""An asyncio client for the local socket protocol (docs/protocol.md).

    async with await BridgeClient.connect("/run/avatar-bridge/bridge.sock") as client:
        ready = await client.hello("default:my-call", AudioFormat(24000, 1))
        await stream_pcm_realtime(client, pcm, ready.audio)
        await client.end_turn()
        async for message in client:  # EventMsg and Error, until the daemon closes
            print(message)

``send_audio`` awaits the socket's drain, so a client that produces audio faster than the daemon
takes it is slowed down by the daemon (backpressure) instead of queueing without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from types import TracebackType
from typing import Any, TypeAlias

import structlog

from bridge import protocol as p
from bridge.media import AudioFormat
from bridge.protocol import AvatarOverrides, CallRef, Error, EventMsg, Hello, Ready

log = structlog.get_logger("bridge.client")

Target: TypeAlias = str | os.PathLike[str] | tuple[str, int]
Message: TypeAlias = EventMsg | Error


class ClientError(Exception):
    """Base of the errors this client raises."""


class RemoteError(ClientError):
    """The daemon answered with an ERROR frame (before READY, or fatal)."""

    def __init__(self, error: Error) -> None:
        super().__init__(f"{error.code}: {error.message}")
        self.error = error
        self.code = error.code
        self.message = error.message
        self.fatal = error.fatal


class ConnectionClosed(ClientError):
    """The connection is closed; ``error`` is the fatal ERROR that closed it, if any."""

    def __init__(self, error: Error | None = None) -> None:
        detail = f" ({error.code}: {error.message})" if error else ""
        super().__init__("connection closed" + detail)
        self.error = error


def parse_call(call: str | CallRef) -> CallRef:
    """``"type:id"`` (or a CallRef) as a CallRef."""
    if isinstance(call, CallRef):
        return call
    call_type, sep, call_id = call.partition(":")
    if not sep:
        raise ValueError(f"call {call!r} must be TYPE:ID, for example default:my-call")
    return CallRef(call_type, call_id)


class BridgeClient:
    """One connection to the daemon. Create it with :meth:`connect`."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._proto = p.ClientProtocol()
        self._messages: asyncio.Queue[Message | None] = asyncio.Queue()
        self._ready: asyncio.Future[Ready] = asyncio.get_running_loop().create_future()
        self._pongs: deque[tuple[bytes, asyncio.Future[float], float]] = deque()
        self._closed = asyncio.Event()
        self._fatal: Error | None = None
        self.ready: Ready | None = None
        self.max_payload = p.MAX_PAYLOAD
        self.close_timeout_s = 5.0
        self._task = asyncio.create_task(self._read_loop(), name="bridge-client-reader")

    @classmethod
    async def connect(cls, target: Target) -> BridgeClient:
        """Connect to a Unix socket path or a ``(host, port)`` TCP address."""
        if isinstance(target, tuple):
            reader, writer = await asyncio.open_connection(*target)
        else:
            reader, writer = await asyncio.open_unix_connection(os.fspath(target))
        return cls(reader, writer)

    async def __aenter__(self) -> BridgeClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    # Sending ---------------------------------------------------------------------------------

    async def hello(
        self,
        call: str | CallRef,
        audio: AudioFormat,
        *,
        avatar: AvatarOverrides | Mapping[str, Any] | None = None,
        session_key: str | None = None,
        token: str | None = None,
        media_path: str | None = None,
        client: str | None = "bridge.client",
    ) -> Ready:
        """Send HELLO and wait for READY. Raises RemoteError when the daemon refuses.

        Opening a session can take seconds (remote sessions start); bound the wait with
        ``asyncio.timeout`` around the call if needed.
        """
        if isinstance(avatar, Mapping):
            avatar = AvatarOverrides(**avatar)
        hello = Hello(
            call=parse_call(call),
            audio=audio,
            avatar=avatar or AvatarOverrides(),
            session_key=session_key,
            token=token,
            media_path=media_path,
            client=client,
        )
        await self._send(self._proto.send_hello(hello))
        ready = await self._ready
        self.ready = ready
        max_payload = ready.limits.get("max_payload")
        if type(max_payload) is int and 0 < max_payload <= p.MAX_PAYLOAD:
            self.max_payload = max_payload
        return ready

    async def send_audio(self, pcm: bytes | bytearray | memoryview | Any) -> None:
        """Send PCM in the negotiated format (bytes or a buffer such as an int16 numpy array).

        Larger buffers are split into frames of at most ``max_payload`` bytes. Waits for the
        socket to drain after each frame: this is where the daemon's backpressure is felt.
        """
        view = memoryview(pcm).cast("B")
        frame_bytes = 2 * (self._proto.audio_format.channels if self._proto.audio_format else 1)
        if len(view) % frame_bytes:
            raise ValueError(f"PCM must be a whole number of {frame_bytes}-byte sample frames")
        step = self.max_payload - self.max_payload % frame_bytes
        for start in range(0, len(view), step):
            piece = view[start : start + step]
            self._check_open()
            self._writer.write(p.encode_header(p.FrameType.AUDIO, len(piece)))
            self._writer.write(piece)
            await self._drain()

    async def end_turn(self) -> None:
        await self._send(self._proto.send_end_turn())

    async def interrupt(self) -> None:
        await self._send(self._proto.send_interrupt())

    async def mark(self, name: str) -> None:
        await self._send(self._proto.send_mark(name))

    async def ping(self, payload: bytes | None = None) -> float:
        """Send PING and wait for its PONG; returns the round trip in seconds."""
        payload = os.urandom(8) if payload is None else payload
        waiter: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._pongs.append((payload, waiter, time.monotonic()))
        await self._send(self._proto.send_ping(payload))
        return await waiter

    async def close(self) -> None:
        """Send CLOSE (ending the session), wait for the daemon to hang up, close the socket.

        The wait is bounded by ``close_timeout_s``.
        """
        if not self.closed and self._fatal is None and not self._writer.is_closing():
            with contextlib.suppress(ConnectionError, OSError):
                self._writer.write(self._proto.send_close())
                await self._writer.drain()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closed.wait(), self.close_timeout_s)
        await self.abort()

    async def abort(self) -> None:
        """Drop the connection without CLOSE (the daemon keeps the session for re-attach)."""
        self._writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self._writer.wait_closed()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    def _check_open(self) -> None:
        # After a fatal ERROR the daemon only drains and hangs up: nothing more may be sent.
        if self.closed or self._fatal is not None or self._writer.is_closing():
            raise ConnectionClosed(self._fatal)

    async def _send(self, frame: bytes) -> None:
        self._check_open()
        self._writer.write(frame)
        await self._drain()

    async def _drain(self) -> None:
        try:
            await self._writer.drain()
        except (ConnectionError, OSError) as exc:
            raise ConnectionClosed(self._fatal) from exc

    # Receiving -------------------------------------------------------------------------------

    def __aiter__(self) -> AsyncIterator[Message]:
        return self.messages()

    async def messages(self) -> AsyncIterator[Message]:
        """EVENT and ERROR messages as they come; ends when the connection closes."""
        while True:
            message = await self._messages.get()
            if message is None:
                self._messages.put_nowait(None)  # let other iterators end too
                return
            yield message

    async def recv(self) -> Message:
        """The next EVENT or ERROR; raises ConnectionClosed once the connection is gone."""
        message = await self._messages.get()
        if message is None:
            self._messages.put_nowait(None)
            raise ConnectionClosed(self._fatal)
        return message

    async def wait_for_event(self, name: str) -> EventMsg:
        """Skip messages until an EVENT called ``name``; a fatal ERROR raises RemoteError."""
        while True:
            message = await self.recv()
            if isinstance(message, EventMsg) and message.event == name:
                return message
            if isinstance(message, Error) and message.fatal:
                raise RemoteError(message)

    async def _read_loop(self) -> None:
        try:
            while True:
                data = await self._reader.read(64 * 1024)
                if not data:
                    break
                self._proto.receive_data(data)
                for event in self._proto.events_received():
                    self._on_event(event)
                if self._proto.closed:
                    break
        except (ConnectionError, OSError):
            pass
        finally:
            self._closed.set()
            if not self._ready.done():
                self._ready.set_exception(ConnectionClosed(self._fatal))
                self._ready.exception()  # mark retrieved: hello() may never be called
            for _, waiter, _ in self._pongs:
                if not waiter.done():
                    waiter.set_exception(ConnectionClosed(self._fatal))
                    waiter.exception()
            self._messages.put_nowait(None)
            self._writer.close()

    def _on_event(self, event: p.ClientEvent) -> None:
        if isinstance(event, Ready):
            if not self._ready.done():
                self._ready.set_result(event)
        elif isinstance(event, p.Pong):
            if self._pongs:
                _payload, waiter, sent = self._pongs.popleft()
                if not waiter.done():
                    waiter.set_result(time.monotonic() - sent)
        elif isinstance(event, Error):
            if event.fatal:
                self._fatal = event
            if not self._ready.done() and event.fatal:
                self._ready.set_exception(RemoteError(event))
            self._messages.put_nowait(event)
        elif isinstance(event, EventMsg):
            self._messages.put_nowait(event)
        else:  # a ProtocolViolation: the daemon sent something this client cannot read
            log.warning("client_bad_frame_from_daemon", code=str(event.code), reason=event.message)


async def stream_pcm_realtime(
    client: BridgeClient,
    pcm: bytes | bytearray | memoryview | Any,
    fmt: AudioFormat,
    chunk_ms: int = 20,
    on_progress: Callable[[float, float], None] | None = None,
) -> float:
    """Send ``pcm`` in ``chunk_ms`` frames paced at real time; returns the seconds sent.

    ``on_progress(sent_s, total_s)`` is called after each chunk. Pacing follows a monotonic
    schedule from the first chunk, so a late wake-up is caught up rather than accumulated.
    """
    view = memoryview(pcm).cast("B")
    frame_bytes = 2 * fmt.channels
    if len(view) % frame_bytes:
        raise ValueError(f"PCM must be a whole number of {frame_bytes}-byte sample frames")
    chunk = max(1, fmt.sample_rate * chunk_ms // 1000) * frame_bytes
    total_s = fmt.duration_s(len(view))
    loop = asyncio.get_running_loop()
    start = loop.time()
    sent = 0
    while sent < len(view):
        piece = view[sent : sent + chunk]
        await client.send_audio(piece)
        sent += len(piece)
        if on_progress is not None:
            on_progress(fmt.duration_s(sent), total_s)
        if sent < len(view):
            delay = start + fmt.duration_s(sent) - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
    return fmt.duration_s(sent)


__all__ = [
    "BridgeClient",
    "ClientError",
    "ConnectionClosed",
    "Message",
    "RemoteError",
    "Target",
    "parse_call",
    "stream_pcm_realtime",
]
