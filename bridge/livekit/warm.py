"""A pooled avatar's room, joined for the transcode path before its HELLO (a :class:`WarmRoom`).

The pool (:mod:`bridge.pool`) starts a :class:`~bridge.livekit.downlink.LiveKitDownlink` in a
warm LiveAvatar session's room and waits for the first decoded video frame; until a HELLO's
:class:`~bridge.transcode.TranscodePath` adopts it, what it decodes is dropped (a warm transcode
session costs its decoding, see docs/continuity.md). Adopted, the downlink's pts move to the
session's clock and its media go to the path's sync stage, so the call's first frame only waits
for the call to be joined.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import structlog

from bridge.errors import BridgeError
from bridge.livekit.downlink import DownlinkOptions, LiveKitDownlink
from bridge.media import AudioChunk, JitterBufferReading, MediaClock, VideoFrame
from bridge.media_path import PathKind, join_warm_room
from bridge.stages import AvatarRoom, EventSink, FailureCallback, MediaSink

__all__ = ["WarmDownlink"]

log = structlog.get_logger(__name__)


def _quiet(event: str, /, **fields: Any) -> None:
    log.debug("warm_room_event", event_name=event)


class _Switch:
    """The downlink's sink: drops (noting the first video frame) until a path is attached."""

    def __init__(self) -> None:
        self.target: MediaSink | None = None
        self.first_video = asyncio.Event()

    def put_video(self, frame: VideoFrame) -> None:
        self.first_video.set()
        if self.target is not None:
            self.target.put_video(frame)

    def put_audio(self, chunk: AudioChunk) -> None:
        if self.target is not None:
            self.target.put_audio(chunk)

    def put_jitter_buffer(self, reading: JitterBufferReading) -> None:
        if self.target is not None:
            self.target.put_jitter_buffer(reading)


class WarmDownlink:
    """The transcode path's receiving side of a pooled avatar (implements :class:`WarmRoom`)."""

    kind = PathKind.TRANSCODE

    def __init__(self, options: DownlinkOptions, on_failure: FailureCallback) -> None:
        self._on_failure = on_failure
        self._switch = _Switch()
        self.downlink = LiveKitDownlink(options, MediaClock(), _quiet, self._failed_with)
        self._events: EventSink = _quiet
        self._adopted_ns = 0
        self.failed = False
        self.adopted = False
        self._closed = False

    @property
    def ready(self) -> bool:
        return self._switch.first_video.is_set() and not (
            self.failed or self._closed or self.adopted
        )

    async def join(self, room: AvatarRoom, timeout_s: float) -> None:
        await join_warm_room(
            lambda: self.downlink.start(room, self._switch),
            self._switch.first_video,
            timeout_s,
            aclose=self.aclose,
            failed=lambda: self.failed,
            what="picture",
        )
        log.info("warm_room_ready", path="transcode")

    async def claim(self) -> None:
        """Nothing to do: decoded frames keep coming; the next one is the call's first."""

    def adopt(
        self, clock: MediaClock, events: EventSink, on_failure: FailureCallback
    ) -> LiveKitDownlink:
        """A session takes the downlink (its clock, events and failures from now on); it feeds
        nothing until :meth:`feed`."""
        if not self.ready:
            raise RuntimeError("only a ready, unadopted warm room can be adopted")
        self.adopted = True
        self._events = events
        self._adopted_ns = time.monotonic_ns()
        self.downlink.adopt(clock, events, on_failure)
        return self.downlink

    def feed(self, sink: MediaSink) -> None:
        """The adopting path's sink: media flow into it from the next frame on. The session
        hears ``avatar_ready`` now (the downlink's own went to the pool, while warm)."""
        self._switch.target = sink
        since_ms = (time.monotonic_ns() - self._adopted_ns) // 1_000_000
        self._events("avatar_ready", since_start_ms=since_ms, warm=True)

    async def aclose(self) -> None:
        if self.adopted or self._closed:
            return  # adopted: the path leaves it
        self._closed = True
        await self.downlink.aclose()

    def _failed_with(self, err: BridgeError) -> None:
        self.failed = True
        self._switch.first_video.set()  # wake join()
        self._on_failure(err)
