"""A stand-in for the avatar used by ``--dry-run``: audio is played out in real time and dropped.

It lets a client integration be exercised end to end (pacing, backpressure, turns, marks,
interrupts) without a LiveAvatar account and without spending credits. It implements the same
:class:`bridge.stages.AvatarUplink` interface as the LiveAvatar client, with the same bounded queue
and the same events, so what a client sees differs only in that no avatar is rendered.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import deque
from dataclasses import dataclass

from bridge import metrics
from bridge.config import LimitsConfig, setting_default
from bridge.media import AudioChunk
from bridge.stages import AvatarRoom, EventSink


@dataclass(slots=True)
class _Item:
    seconds: float
    turn: int
    end_of_turn: bool = False


class DryRunUplink:
    """Plays queued audio at real time; the queue holds at most ``queue_ms`` of audio."""

    def __init__(
        self,
        events: EventSink,
        *,
        queue_ms: float = setting_default(LimitsConfig, "uplink_queue_ms"),
    ) -> None:
        self._events = events
        self._capacity_s = queue_ms / 1000.0
        self._queue: deque[_Item] = deque()
        self._queued_s = 0.0
        self._changed = asyncio.Condition()
        self._turn = 0
        self._task: asyncio.Task[None] | None = None
        self._speaking: int | None = None  # the turn being played
        self.played_s = 0.0

    async def start(self) -> AvatarRoom:
        self._task = asyncio.get_running_loop().create_task(self._play(), name="dry-run-playout")
        sid = f"dry-run-{uuid.uuid4().hex[:12]}"
        return AvatarRoom(session_id=sid, livekit_url="", livekit_token="", ws_url="")

    def buffered_ms(self) -> float:
        return self._queued_s * 1000.0

    @property
    def healthy(self) -> bool:
        return self._task is not None and not self._task.done()

    async def send_audio(self, chunk: AudioChunk) -> None:
        async with self._changed:
            # Block the producer (and so the client's socket) while the queue is full.
            await self._changed.wait_for(lambda: self._queued_s < self._capacity_s)
            self._queue.append(_Item(chunk.duration_s, self._turn))
            self._queued_s += chunk.duration_s
            metrics.QUEUE_DEPTH.labels(stage="uplink_ms").set(self._queued_s * 1000)
            self._changed.notify_all()

    async def end_turn(self) -> None:
        async with self._changed:
            self._queue.append(_Item(0.0, self._turn, end_of_turn=True))
            self._turn += 1
            self._changed.notify_all()

    async def interrupt(self) -> None:
        async with self._changed:
            self._queue.clear()
            self._queued_s = 0.0
            self._turn += 1
            if self._speaking is not None:
                self._events("speak_ended", event_id=f"turn-{self._speaking}", interrupted=True)
                self._speaking = None
            self._changed.notify_all()

    async def _play(self) -> None:
        clock = time.monotonic()
        while True:
            async with self._changed:
                await self._changed.wait_for(lambda: bool(self._queue))
                item = self._queue.popleft()
            if item.end_of_turn:
                if self._speaking == item.turn:
                    self._events("speak_ended", event_id=f"turn-{item.turn}")
                    self._speaking = None
                continue
            if self._speaking != item.turn:
                self._speaking = item.turn
                self._events("speak_started", event_id=f"turn-{item.turn}")
                clock = time.monotonic()
            # Sleep until this chunk has "played", on an absolute schedule so we do not drift.
            clock = max(clock, time.monotonic() - 0.05) + item.seconds
            await asyncio.sleep(max(0.0, clock - time.monotonic()))
            self.played_s += item.seconds
            async with self._changed:
                self._queued_s = max(0.0, self._queued_s - item.seconds)
                metrics.QUEUE_DEPTH.labels(stage="uplink_ms").set(self._queued_s * 1000)
                self._changed.notify_all()

    async def aclose(self, reason: str = "USER_CLOSED") -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task})  # not `await`: our own cancellation must propagate
            self._task = None
