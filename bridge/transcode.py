"""The transcode path: the avatar decoded (LiveKit downlink), lip-synced (sync stage) and encoded
again by a call publisher (the Stream SDK, or aiortc on a declined relay's SFU session)."""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

import structlog

from bridge.media_path import PathKind, RelayDecline
from bridge.stages import AvatarDownlink, AvatarRoom, CallPublisher, MediaSink

log = structlog.get_logger(__name__)


class SyncStage(MediaSink, Protocol):
    """Takes the downlink's media, feeds the call publisher; runs as the path's task."""

    async def run(self) -> None: ...

    def flush(self) -> None:
        """Drop queued media (barge-in)."""
        ...

    def depth(self) -> dict[str, float]: ...


class Publisher(CallPublisher, Protocol):
    def stats(self) -> dict[str, Any]: ...


class TranscodePath:
    """Implements :class:`bridge.media_path.MediaPath` with a downlink, a sync stage and a
    publisher. The call and the avatar's room are joined at the same time; both must succeed."""

    kind = PathKind.TRANSCODE

    def __init__(self, downlink: AvatarDownlink, sync: SyncStage, publisher: Publisher) -> None:
        self.downlink = downlink
        self.sync = sync
        self.publisher = publisher
        self._closed = False

    async def start(self, room: AvatarRoom) -> RelayDecline | None:
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self.publisher.start())
                tg.create_task(self.downlink.start(room, self.sync))
        except BaseExceptionGroup as group:
            await self.aclose()
            first = group.exceptions[0]
            raise first if isinstance(first, Exception) else group from None
        except BaseException:
            await self.aclose()
            raise
        return None

    async def run(self) -> None:
        await self.sync.run()

    def interrupt(self) -> None:
        self.sync.flush()
        self.publisher.flush_audio()

    def stats(self) -> dict[str, Any]:
        return {"publisher": self.publisher.stats(), "sync": self.sync.depth()}

    async def aclose(self) -> None:
        """Leave the avatar's room, then the call (its billing stops with the uplink first)."""
        if self._closed:
            return
        self._closed = True
        for closer in (self.downlink.aclose, self.publisher.aclose):
            try:
                await asyncio.shield(closer())
            except Exception:
                log.exception("transcode_stage_close_failed")
