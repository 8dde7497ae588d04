"""The transcode path: the avatar decoded (LiveKit downlink), lip-synced (sync stage) and encoded
again by a call publisher (the Stream SDK, or aiortc on a declined relay's SFU session)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import structlog
from prometheus_client import Counter

from bridge import metrics
from bridge.barge_in import SpeechGate
from bridge.errors import BridgeError, ErrorCode
from bridge.first_sound import PCM_LOUD_PEAK, OnsetPoint
from bridge.handover_drain import SwitchDrain
from bridge.media import AudioChunk, JitterBufferReading, VideoFrame
from bridge.media_path import PathKind, RelayDecline, WarmRoom
from bridge.stages import AvatarDownlink, AvatarRoom, CallPublisher, MediaSink
from bridge.sync import is_loud

log = structlog.get_logger(__name__)

DRAINS = Counter(
    "bridge_transcode_switch_drains_total",
    "Planned transcode switches whose old avatar fed the call until its last words in flight "
    "arrived, by how the drain ended (quiet, max, new_speech, interrupt)",
    ["ended"],
)


class SyncStage(MediaSink, Protocol):
    """Takes the downlink's media, feeds the call publisher; runs as the path's task."""

    async def run(self) -> None: ...

    def flush(self) -> None:
        """Drop queued media (barge-in)."""
        ...

    def depth(self) -> dict[str, float]: ...


class Publisher(CallPublisher, Protocol):
    def stats(self) -> dict[str, Any]: ...


class _Gate:
    """A downlink's way into the sync stage. Closed, it drops what the downlink delivers (a new
    avatar being brought up) but notes its first video frame; open, it passes media on;
    shut, it drops for good (the old avatar after a switch). It notes when it last passed video,
    for the switch's measured picture gap. During a planned switch's drain
    (:mod:`bridge.handover_drain`) the old gate stays open and the new one closed, except for
    what the drain lets through; ``on_drain_over`` ends it (shuts the old, opens the new)."""

    def __init__(self, sink: MediaSink, *, open_: bool) -> None:
        self._sink = sink
        self.open = open_
        self.shut = False
        self.first_video = asyncio.Event()
        self.first_put_ns = 0
        self.last_put_ns = 0
        self.drain: SwitchDrain | None = None
        self.draining_old = False  # this gate is the old avatar's while ``drain`` lasts
        self.on_drain_over: Callable[[], None] = lambda: None

    def _drain_over(self) -> bool:
        """Whether the drain this gate takes part in has ended (ending it here if so)."""
        drain = self.drain
        if drain is None:
            return True
        if drain.over(time.monotonic()):
            self.on_drain_over()
            return True
        return False

    def put_video(self, frame: VideoFrame) -> None:
        self.first_video.set()
        if self.drain is not None:
            self._drain_over()  # the old one's picture until then, the new one's after
        if self.open and not self.shut:
            now = time.monotonic_ns()
            self.first_put_ns = self.first_put_ns or now
            self.last_put_ns = now
            self._sink.put_video(frame)

    def put_audio(self, chunk: AudioChunk) -> None:
        drain = self.drain
        if drain is not None:
            now = time.monotonic()
            if self.draining_old:
                if not drain.old_audio(is_loud(chunk), chunk.duration_s, now):
                    self.on_drain_over()
            elif drain.new_audio(is_loud(chunk), now):
                self.on_drain_over()
        if self.open and not self.shut:
            self._sink.put_audio(chunk)

    def put_jitter_buffer(self, reading: JitterBufferReading) -> None:
        if self.open and not self.shut:
            self._sink.put_jitter_buffer(reading)


class _SpeechSink:
    """Between the avatars' gates and the sync stage: the avatar's audio is dropped while the
    barge-in gate is muted (:mod:`bridge.barge_in`); video always passes (the picture goes on)."""

    def __init__(self, sink: MediaSink, gate: SpeechGate) -> None:
        self._sink = sink
        self._gate = gate
        self._onset_in = OnsetPoint("transcode", "in")  # first-sound figures

    def put_video(self, frame: VideoFrame) -> None:
        self._sink.put_video(frame)

    def put_audio(self, chunk: AudioChunk) -> None:
        samples = chunk.samples
        if len(samples):
            self._onset_in.feed(max(int(samples.max()), -int(samples.min())) >= PCM_LOUD_PEAK)
        if self._gate.admit(time.monotonic(), chunk.duration_s):
            self._sink.put_audio(chunk)
        else:
            metrics.BARGE_IN_DROPPED.labels(path="transcode").inc()

    def put_jitter_buffer(self, reading: JitterBufferReading) -> None:
        self._sink.put_jitter_buffer(reading)


class Feeds(Protocol):
    """A pooled avatar's downlink (bridge/livekit/warm.py), fed into the path at start."""

    def feed(self, sink: MediaSink) -> None: ...


# A pooled room -> its downlink (adopted, on the session's clock) and its feed; None when it
# is not the transcode path's or no longer ready.
AdoptWarm = Callable[[WarmRoom], tuple[AvatarDownlink, Feeds] | None]


@dataclass(slots=True)
class PreparedAvatar:
    """A new avatar's downlink, joined and receiving, not yet feeding the call."""

    downlink: AvatarDownlink
    gate: _Gate


class TranscodePath:
    """Implements :class:`bridge.media_path.MediaPath` with a downlink, a sync stage and a
    publisher. The call and the avatar's room are joined at the same time; both must succeed."""

    kind = PathKind.TRANSCODE

    def __init__(
        self,
        downlink: AvatarDownlink,
        sync: SyncStage,
        publisher: Publisher,
        new_downlink: Callable[[], AvatarDownlink] | None = None,
        warm: Feeds | None = None,
        leave: Sequence[Callable[[], Awaitable[None]]] = (),
        adopt_warm: AdoptWarm | None = None,
    ) -> None:
        self.downlink = downlink
        # A pooled room handed to a handover -> its downlink, when this path can take it over.
        self._adopt_warm = adopt_warm
        # ``downlink`` is a pooled avatar's, already in its room and decoding: fed at start.
        self._warm = warm
        self._leave = list(leave)  # closers of a pooled room this path did not adopt
        self.sync = sync
        self.publisher = publisher
        self._new_downlink = new_downlink
        self._speech = SpeechGate()
        self._into_sync = _SpeechSink(sync, self._speech)
        self._gate = _Gate(self._into_sync, open_=True)
        self._retired: list[AvatarDownlink] = []
        # The next avatar between prepare_avatar and commit_avatar: this path's, left at aclose
        # when the session ends before the switch.
        self._prepared: PreparedAvatar | None = None
        # A planned switch's drain: (the drain, the old avatar's gate, the new one's).
        self._drain: tuple[SwitchDrain, _Gate, _Gate] | None = None
        self._closed = False

    # ----- avatar handover: the call's tracks and the sync stage stay, the avatar changes ---------

    @property
    def can_switch(self) -> bool:
        return self._new_downlink is not None and not self._closed

    @property
    def avatar_alive(self) -> bool:
        return not self.downlink.failed

    async def prepare_avatar(
        self, room: AvatarRoom, timeout_s: float, warm: WarmRoom | None = None
    ) -> PreparedAvatar:
        """Join the new avatar's room and wait for its first video frame, feeding nothing yet;
        or take over ``warm``, a pooled room whose downlink is already decoding."""
        assert self._new_downlink is not None
        adopted = None
        if warm is not None:
            adopted = self._adopt_warm(warm) if self._adopt_warm is not None else None
            if adopted is None:
                await warm.aclose()  # not adoptable (failed meanwhile): joined cold
        gate = _Gate(self._into_sync, open_=False)
        downlink = adopted[0] if adopted is not None else self._new_downlink()
        prepared = PreparedAvatar(downlink, gate)
        try:
            async with asyncio.timeout(timeout_s):
                if adopted is not None:
                    adopted[1].feed(gate)  # decoded frames go to the closed gate from now on
                    log.info("transcode_warm_room_prepared")
                else:
                    await downlink.start(room, gate)
                await gate.first_video.wait()
        except BaseException as exc:
            await downlink.aclose()
            if isinstance(exc, TimeoutError):
                raise BridgeError(
                    ErrorCode.LIVEKIT_FAILED, "the next avatar sent no picture in time"
                ) from None
            raise
        self._prepared = prepared
        return prepared

    def commit_avatar(
        self, prepared: PreparedAvatar, *, drain_s: float = 0.0
    ) -> Callable[[], float | None]:
        """Switch the call to the prepared avatar now (synchronously: nothing of the old one is
        written after this returns); with ``drain_s`` > 0 (a planned switch) once the old one's
        last words in flight have reached the call (:mod:`bridge.handover_drain`; at most
        ``drain_s``, and :meth:`release_retired` waits for it). Returns a function giving the
        measured picture gap in ms once the new avatar's first frame went through (None until
        then)."""
        old_gate, old = self._gate, self.downlink
        self._end_drain("next_switch")  # a switch during a drain: that one's old avatar is cut now
        if drain_s > 0:
            self._start_drain(old_gate, prepared.gate, drain_s)
        else:
            old_gate.shut = True
            prepared.gate.open = True
        self._gate, self.downlink = prepared.gate, prepared.downlink
        self._retired.append(old)
        self._prepared = None

        def gap_ms() -> float | None:
            first = prepared.gate.first_put_ns
            if not first or not old_gate.last_put_ns:
                return None
            return (first - old_gate.last_put_ns) / 1e6

        return gap_ms

    def _start_drain(self, old_gate: _Gate, new_gate: _Gate, max_s: float) -> None:
        drain = SwitchDrain(time.monotonic(), max_s=max_s)
        self._drain = (drain, old_gate, new_gate)
        old_gate.drain, new_gate.drain = drain, drain
        old_gate.draining_old = True
        old_gate.on_drain_over = new_gate.on_drain_over = self._end_drain

    def _end_drain(self, why: str = "") -> None:
        """The drain is over (or cut short: ``why``): the old avatar is shut, the new one on."""
        if self._drain is None:
            return
        drain, old_gate, new_gate = self._drain
        self._drain = None
        now = time.monotonic()
        drain.end(why or "quiet", now)
        drain.over(now)
        old_gate.shut = True
        new_gate.open = True
        for gate in (old_gate, new_gate):
            gate.drain = None
            gate.on_drain_over = lambda: None
        DRAINS.labels(ended=str(drain.ended)).inc()
        log.info(
            "transcode_switch_drained",
            ended=drain.ended,
            drain_ms=round(1000 * (now - drain.started), 1),
            old_sound_ms=round(1000 * drain.old_loud_s, 1),
            # Since the old avatar's last picture passed (the picture gap's first part).
            old_video_age_ms=round((time.monotonic_ns() - old_gate.last_put_ns) / 1e6, 1),
        )

    async def release_retired(self) -> None:
        """Once a planned switch's drain is over, leave the old avatars' rooms (before their
        LiveAvatar sessions are stopped, so that their leaving is not taken for a failure)."""
        if self._drain is not None:
            drain = self._drain[0]
            for _ in range(int(drain.max_s / 0.02) + 10):  # bounded: the drain ends by max_s
                if drain.over(time.monotonic()):
                    break
                await asyncio.sleep(0.02)
            self._end_drain("max")
        retired, self._retired = self._retired, []
        for downlink in retired:
            await downlink.aclose()

    async def start(self, room: AvatarRoom) -> RelayDecline | None:
        if self._warm is not None:
            await self._start_warm(self._warm)
            return None
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self.publisher.start())
                tg.create_task(self.downlink.start(room, self._gate))
        except BaseExceptionGroup as group:
            await self.aclose()
            first = group.exceptions[0]
            raise first if isinstance(first, Exception) else group from None
        except BaseException:
            await self.aclose()
            raise
        return None

    async def _start_warm(self, warm: Feeds) -> None:
        """Join the call only; the pooled avatar's frames feed the sync stage once the call is
        joined (not before: what queued meanwhile would be stale)."""
        try:
            await self.publisher.start()
        except BaseException:
            await self.aclose()
            raise
        warm.feed(self._gate)
        log.info("transcode_warm_room_adopted")
        return None

    async def run(self) -> None:
        await self.sync.run()

    def interrupt(self) -> None:
        """Barge-in: flush what is queued and drop the avatar's speech still in flight until its
        next turn starts (:mod:`bridge.barge_in`)."""
        self._end_drain("interrupt")  # the old avatar's tail is speech to stop too
        self._speech.interrupt(time.monotonic())
        self.sync.flush()
        self.publisher.flush_audio()

    def speak_started(self) -> None:
        if self._speech.speak_started(time.monotonic()):
            log.info("transcode_speech_resumed", dropped_ms=round(1000 * self._speech.dropped_s))

    def stats(self) -> dict[str, Any]:
        return {
            "publisher": self.publisher.stats(),
            "sync": self.sync.depth(),
            "barge_in": self._speech.stats(),
        }

    async def aclose(self) -> None:
        """Leave the avatar's room, then the call (its billing stops with the uplink first)."""
        if self._closed:
            return
        self._closed = True
        closers = [*self._leave, *(d.aclose for d in self._retired)]
        if self._prepared is not None:
            closers.append(self._prepared.downlink.aclose)
        closers += [self.downlink.aclose, self.publisher.aclose]
        for closer in closers:
            try:
                await asyncio.shield(closer())
            except Exception:
                log.exception("transcode_stage_close_failed")
