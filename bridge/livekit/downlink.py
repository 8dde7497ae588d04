"""The avatar downlink: joins LiveAvatar's LiveKit room with the real SDK and hands out media.

Only the avatar participant is read (identity ``heygen`` in production). Video stays I420 as the
SDK decodes it: ``VideoFrame.data`` is a numpy view of the SDK's buffer, no colour conversion
unless the SDK hands out another buffer type (then converted once, by the SDK, and counted).
Audio comes from ``rtc.AudioStream`` already at the publisher's rate and channel count, so there is
no resampling stage. Both go to the session's :class:`~bridge.stages.MediaSink` (bounded, never
blocks, counts its own drops).

Queues: each SDK stream has a bounded ring (``video_buffer_frames`` / ``audio_buffer_frames``) that
drops its oldest item when full. Our readers hand every item straight to the sink, so the ring only
fills while the event loop is stalled; the SDK does not count those drops, so the readers detect
them as timestamp gaps (``bridge_downlink_gaps_total``).

Timestamps: pts are on the session's :class:`~bridge.media.MediaClock`. Video follows the SDK's
frame timestamps (libwebrtc render time), audio follows its sample count, both anchored to arrival
time and re-anchored when they drift from it by more than ``reanchor_ms`` (stalls, reconnects).

Lifecycle: a connect failure or timeout raises :class:`BridgeError` from :meth:`start`; after that,
the avatar leaving, the room ending or the avatar never showing up is reported once through the
failure callback (``LIVEKIT_FAILED``), never while we are closing. SDK resumes and reconnects are
left to the SDK; a full reconnect re-subscribes the tracks and the readers follow the new ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np
import structlog
from livekit import rtc
from prometheus_client import Counter, Gauge, Histogram

from bridge import metrics
from bridge.config import LiveAvatarConfig, Settings, setting_default
from bridge.errors import BridgeError, ErrorCode
from bridge.media import AudioChunk, AudioFormat, JitterBufferReading, MediaClock, VideoFrame
from bridge.stages import AvatarRoom, EventSink, FailureCallback, MediaSink
from bridge.tasks import TaskSet

__all__ = ["DownlinkOptions", "LiveKitDownlink"]

log = structlog.get_logger(__name__)

VIDEO_FRAMES = Counter("bridge_downlink_video_frames_total", "Avatar video frames received")
AUDIO_SECONDS = Counter("bridge_downlink_audio_seconds_total", "Avatar audio received, seconds")
HANDOFF_LATENCY = Histogram(
    "bridge_downlink_handoff_latency_seconds",
    "From libwebrtc's frame timestamp (its render time, CLOCK_MONOTONIC) to handing the frame to "
    "the sync stage; frames handed over before that time count as 0",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28),
)
RESOLUTION = Gauge(
    "bridge_downlink_video_resolution_pixels",
    "Resolution of the latest avatar video frame (last session to update wins)",
    ["dimension"],
)
CONVERSIONS = Counter(
    "bridge_downlink_video_conversions_total", "Frames the SDK delivered as non-I420 and converted"
)
GAPS = Counter(
    "bridge_downlink_gaps_total",
    "Timeline re-anchors (stalls, SDK-side drops, reconnects)",
    ["kind"],
)
FAILURES = Counter("bridge_downlink_failures_total", "Downlink failures reported", ["reason"])
RECONNECTS = Counter("bridge_downlink_reconnects_total", "SDK reconnect/resume episodes", ["phase"])

STATS_FAILURES = Counter(
    "bridge_downlink_stats_failures_total", "Receiver stats reads that failed or timed out"
)

_CLOSE_TIMEOUT_S = 5.0
_STATS_TIMEOUT_S = 1.0
JITTER_POLL_MS = 100  # with output.video_delay_follows_receivers
_FPS_WINDOW = 30


@dataclass(frozen=True, slots=True)
class DownlinkOptions:
    """Defaults are the settings model's (bridge/config.py); :meth:`from_settings` builds them."""

    avatar_identity: str = setting_default(LiveAvatarConfig, "avatar_identity")
    sample_rate: int = 48000  # what the publisher's Opus encoder takes: no resampling
    channels: int = 1
    # Whole connect (the SDK retries each attempt itself) and time for the avatar to appear;
    # the documented scope of liveavatar.connect_timeout_s covers both.
    connect_timeout_s: float = setting_default(LiveAvatarConfig, "connect_timeout_s")
    avatar_join_timeout_s: float = setting_default(LiveAvatarConfig, "connect_timeout_s")
    # None = the SDK default (single peer connection, /rtc/v1); False forces legacy /rtc.
    single_peer_connection: bool | None = None
    video_buffer_frames: int = 8
    audio_buffer_frames: int = 50  # 10 ms frames
    reanchor_ms: int = 300
    # How often the audio receiver's jitter-buffer counters are read for the sync stage (0: never).
    # libwebrtc's audio buffer (NetEq) starts a call with a delay that it sheds over seconds;
    # the sync stage holds video by the difference (bridge/sync.py, docs/sync.md). Only with
    # output.video_delay_follows_receivers: a stats read can abort the process (livekit 1.2.1).
    jitter_poll_ms: int = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> DownlinkOptions:
        la = settings.liveavatar
        return cls(
            avatar_identity=la.avatar_identity,
            connect_timeout_s=la.connect_timeout_s,
            avatar_join_timeout_s=la.connect_timeout_s,
            jitter_poll_ms=JITTER_POLL_MS if settings.output.video_delay_follows_receivers else 0,
        )


class _Timeline:
    """Maps a source timeline (µs) onto the session clock, smooth but tied to arrival."""

    def __init__(self, clock: MediaClock, tolerance_us: int) -> None:
        self.clock = clock
        self._tolerance_us = tolerance_us
        self._offset: int | None = None
        self._last = -1
        self.reanchors = 0

    def pts(self, source_us: int, arrival_ns: int) -> int:
        arrival_us = self.clock.to_media_us(arrival_ns)
        if self._offset is None or abs(source_us + self._offset - arrival_us) > self._tolerance_us:
            if self._offset is not None:
                self.reanchors += 1
            self._offset = arrival_us - source_us
        pts = max(source_us + self._offset, self._last + 1)  # never backwards
        self._last = pts
        return pts


class LiveKitDownlink:
    """Implements :class:`bridge.stages.AvatarDownlink` with the ``livekit`` rtc SDK."""

    def __init__(
        self,
        options: DownlinkOptions,
        clock: MediaClock,
        events: EventSink,
        on_failure: FailureCallback,
    ) -> None:
        self._opts = options
        self._clock = clock
        self._events = events
        self._on_failure = on_failure
        self._fmt = AudioFormat(options.sample_rate, options.channels)
        self._room: rtc.Room | None = None
        self._sink: MediaSink | None = None
        self._tasks = TaskSet(lambda err: self._fail("internal", err.message), ErrorCode.INTERNAL)
        # kind -> (track, its reader); a full reconnect brings new track objects, same sids.
        self._readers: dict[str, tuple[rtc.Track, asyncio.Task[None]]] = {}
        self._started_ns = 0
        self._first: dict[str, bool] = {"video": False, "audio": False}
        self._ready = asyncio.Event()
        self._closing = False
        self._room_open = metrics.LIVEKIT_ROOMS_OPEN.labels("transcode")
        self._counted = False  # in LIVEKIT_ROOMS_OPEN until aclose()
        self._failed = False
        self._reconnecting = False
        self._close_task: asyncio.Task[None] | None = None
        self._resolution: tuple[int, int] | None = None
        self._fps_reported = False
        self.stats: dict[str, int] = {
            "video_frames": 0,
            "audio_frames": 0,
            "conversions": 0,
            "stats_reads": 0,
            "stats_read_us": 0,  # wall time of the reads and their parsing (their cost)
        }

    def adopt(self, clock: MediaClock, events: EventSink, on_failure: FailureCallback) -> None:
        """A downlink started ahead of its session (a pooled avatar, bridge/livekit/warm.py)
        joins one: pts on the session's clock, its events and failure callback from now on."""
        self._clock = clock
        self._events = events
        self._on_failure = on_failure

    # -- AvatarDownlink --------------------------------------------------------------------------

    async def start(self, room: AvatarRoom, sink: MediaSink) -> None:
        if self._room is not None or self._closing:
            raise RuntimeError("LiveKitDownlink.start called twice")
        self._sink = sink
        self._started_ns = time.monotonic_ns()
        lk = self._room = rtc.Room()
        self._room_open.inc()
        self._counted = True
        lk.on("track_subscribed", self._on_track_subscribed)
        lk.on("participant_disconnected", self._on_participant_disconnected)
        lk.on("disconnected", self._on_disconnected)
        lk.on("reconnecting", self._on_reconnecting)
        lk.on("reconnected", self._on_reconnected)
        options = rtc.RoomOptions(
            auto_subscribe=True, single_peer_connection=self._opts.single_peer_connection
        )
        try:
            async with asyncio.timeout(self._opts.connect_timeout_s):
                await lk.connect(room.livekit_url, room.livekit_token, options)
        except TimeoutError:
            await self.aclose()
            raise BridgeError(
                ErrorCode.LIVEKIT_FAILED,
                "joining the avatar's LiveKit room timed out after "
                f"{self._opts.connect_timeout_s}s",
            ) from None
        except rtc.ConnectError as exc:
            await self.aclose()
            raise BridgeError(
                ErrorCode.LIVEKIT_FAILED, f"could not join the avatar's LiveKit room: {exc}"
            ) from exc
        log.info("downlink_connected", room=lk.name, avatar=self._opts.avatar_identity)
        # Tracks published before we joined normally arrive as track_subscribed right after
        # connect; pick up any that were subscribed while connect() was still returning.
        avatar = self._avatar()
        if avatar is not None:
            for pub in avatar.track_publications.values():
                if pub.track is not None:
                    self._on_track_subscribed(pub.track, pub, avatar)
        self._tasks.spawn(self._watch_avatar_join(), "downlink_watch_avatar_join")
        if self._opts.jitter_poll_ms > 0:
            self._tasks.spawn(self._poll_jitter_buffers(), "downlink_poll_jitter_buffers")

    async def aclose(self) -> None:
        """Stop the readers, close the streams, then disconnect. Idempotent; never raises."""
        if self._close_task is None:
            self._closing = True
            if self._counted:
                self._counted = False
                self._room_open.dec()
            self._close_task = asyncio.get_running_loop().create_task(self._close())
        await asyncio.shield(self._close_task)

    # -- SDK callbacks (run on the SDK's room task, must not block) ------------------------------

    @property
    def failed(self) -> bool:
        """The room failed for good (reported through ``on_failure``)."""
        return self._failed

    def _avatar(self) -> rtc.RemoteParticipant | None:
        if self._room is None:
            return None
        for p in self._room.remote_participants.values():
            if p.identity == self._opts.avatar_identity:
                return p
        return None

    def _on_track_subscribed(
        self,
        track: rtc.Track,
        publication: rtc.RemoteTrackPublication,
        participant: rtc.RemoteParticipant,
    ) -> None:
        if self._closing or participant.identity != self._opts.avatar_identity:
            return
        if track.kind == rtc.TrackKind.KIND_VIDEO:
            kind = "video"
        elif track.kind == rtc.TrackKind.KIND_AUDIO:
            kind = "audio"
        else:
            return
        current = self._readers.get(kind)
        if current is not None and current[0] is track and not current[1].done():
            return  # already reading this track
        if current is not None:
            current[1].cancel()  # a full reconnect handed us a new track object
        log.info("downlink_track_subscribed", kind=kind, sid=track.sid, mime=publication.mime_type)
        reader = self._read_video(track) if kind == "video" else self._read_audio(track)
        self._readers[kind] = (track, self._tasks.spawn(reader, f"downlink_read_{kind}"))

    def _on_participant_disconnected(self, participant: rtc.RemoteParticipant) -> None:
        if participant.identity != self._opts.avatar_identity:
            return
        if self._reconnecting:
            # A full reconnect drops every remote participant and re-adds them from the new
            # join response; whether the avatar came back is checked on "reconnected".
            log.info("downlink_avatar_dropped_during_reconnect")
            return
        self._fail("avatar_left", "the avatar left the LiveKit room")

    def _on_disconnected(self, reason: Any) -> None:
        try:
            name = rtc.DisconnectReason.Name(reason)
        except (ValueError, TypeError):
            name = str(reason)
        self._fail("room_disconnected", f"the avatar's LiveKit room disconnected ({name})")

    def _on_reconnecting(self) -> None:
        self._reconnecting = True
        RECONNECTS.labels("reconnecting").inc()
        log.warning("downlink_reconnecting")

    def _on_reconnected(self) -> None:
        self._reconnecting = False
        RECONNECTS.labels("reconnected").inc()
        log.info("downlink_reconnected")
        if not self._closing and self._avatar() is None:
            self._tasks.spawn(self._watch_avatar_return(), "downlink_watch_avatar_return")

    def _fail(self, reason: str, message: str) -> None:
        if self._closing or self._failed:
            return
        self._failed = True
        FAILURES.labels(reason).inc()
        log.warning("downlink_failed", reason=reason)
        self._on_failure(BridgeError(ErrorCode.LIVEKIT_FAILED, message))

    # -- readers ---------------------------------------------------------------------------------

    async def _read_video(self, track: rtc.Track) -> None:
        stream = rtc.VideoStream(track, capacity=self._opts.video_buffer_frames)
        try:
            await self._pump_video(stream)
        finally:
            await self._close_stream(stream)

    async def _pump_video(self, stream: rtc.VideoStream) -> None:
        timeline = _Timeline(self._clock, self._opts.reanchor_ms * 1000)
        recent: deque[int] = deque(maxlen=_FPS_WINDOW + 1)
        sink = self._sink
        assert sink is not None
        async for event in stream:
            arrival_ns = time.monotonic_ns()
            if timeline.clock is not self._clock:  # adopted by a session (see adopt)
                timeline = _Timeline(self._clock, self._opts.reanchor_ms * 1000)
            frame = event.frame
            if frame.type != rtc.VideoBufferType.I420:
                frame = frame.convert(rtc.VideoBufferType.I420)
                self.stats["conversions"] += 1
                CONVERSIONS.inc()
            data = np.frombuffer(frame.data, dtype=np.uint8)
            before = timeline.reanchors
            pts = timeline.pts(event.timestamp_us, arrival_ns)
            if timeline.reanchors != before:
                GAPS.labels("video").inc()
            sink.put_video(VideoFrame(data, frame.width, frame.height, pts, arrival_ns))
            HANDOFF_LATENCY.observe(
                max(0.0, (time.monotonic_ns() / 1000 - event.timestamp_us) / 1e6)
            )
            VIDEO_FRAMES.inc()
            self.stats["video_frames"] += 1
            recent.append(pts)
            self._note_video(frame.width, frame.height, recent)
            self._note_first("video")

    async def _read_audio(self, track: rtc.Track) -> None:
        fmt = self._fmt
        stream = rtc.AudioStream(
            track,
            capacity=self._opts.audio_buffer_frames,
            sample_rate=fmt.sample_rate,
            num_channels=fmt.channels,
        )
        try:
            await self._pump_audio(stream)
        finally:
            await self._close_stream(stream)

    async def _pump_audio(self, stream: rtc.AudioStream) -> None:
        fmt = self._fmt
        timeline = _Timeline(self._clock, self._opts.reanchor_ms * 1000)
        samples_in = 0
        sink = self._sink
        assert sink is not None
        async for event in stream:
            arrival_ns = time.monotonic_ns()
            if timeline.clock is not self._clock:  # adopted by a session (see adopt)
                timeline = _Timeline(self._clock, self._opts.reanchor_ms * 1000)
            frame = event.frame
            pcm = np.frombuffer(frame.data, dtype=np.int16)
            before = timeline.reanchors
            pts = timeline.pts(samples_in * 1_000_000 // fmt.sample_rate, arrival_ns)
            if timeline.reanchors != before:
                GAPS.labels("audio").inc()
            samples_in += frame.samples_per_channel
            chunk = AudioChunk(pcm, fmt, pts)
            sink.put_audio(chunk)
            AUDIO_SECONDS.inc(chunk.duration_s)
            self.stats["audio_frames"] += 1
            self._note_first("audio")

    async def _poll_jitter_buffers(self) -> None:
        """Hand the receivers' cumulative jitter-buffer counters to the sink, every
        ``jitter_poll_ms``. A failed or slow read is skipped (counted); the next one catches up,
        the counters being cumulative."""
        period_s = self._opts.jitter_poll_ms / 1000.0
        while True:
            await asyncio.sleep(period_s)
            for kind, (track, _reader) in list(self._readers.items()):
                if kind != "audio":
                    # Reading the video receiver's stats can abort the whole process: the SDK
                    # (livekit 1.2.1) panics in a native thread on a non-finite value in their
                    # JSON (rtp_receiver.rs:68, seen on a pooled avatar's room). Its delay is
                    # small and steady (5-50 ms) and goes into output.video_delay_ms instead.
                    continue
                t0 = time.perf_counter()
                try:
                    async with asyncio.timeout(_STATS_TIMEOUT_S):
                        stats = await track.get_stats()
                except Exception as exc:  # the SDK raises a bare Exception on a failed read
                    STATS_FAILURES.inc()
                    log.debug("downlink_stats_failed", kind=kind, error=repr(exc))
                    continue
                sink = self._sink
                if sink is None:
                    return
                self.stats["stats_reads"] += 1
                self.stats["stats_read_us"] += int(1e6 * (time.perf_counter() - t0))
                for stat in stats:
                    if stat.WhichOneof("stats") != "inbound_rtp":
                        continue
                    inbound = stat.inbound_rtp.inbound
                    sink.put_jitter_buffer(
                        JitterBufferReading(
                            kind,
                            inbound.jitter_buffer_delay,
                            inbound.jitter_buffer_emitted_count,
                            time.monotonic_ns(),
                        )
                    )
                    break

    async def _close_stream(self, stream: rtc.VideoStream | rtc.AudioStream) -> None:
        # Disposing the handle makes the SDK end the stream; bounded in case it never does.
        with contextlib.suppress(Exception):
            async with asyncio.timeout(_CLOSE_TIMEOUT_S):
                await stream.aclose()

    def _note_first(self, kind: str) -> None:
        if self._first[kind]:
            return
        self._first[kind] = True
        log.info("downlink_first_frame", kind=kind)
        if all(self._first.values()):
            self._ready.set()
            since_ms = (time.monotonic_ns() - self._started_ns) // 1_000_000
            self._events("avatar_ready", since_start_ms=since_ms)

    def _note_video(self, width: int, height: int, recent: deque[int]) -> None:
        fps: float | None = None
        if len(recent) == recent.maxlen and recent[-1] > recent[0]:
            fps = round((len(recent) - 1) * 1e6 / (recent[-1] - recent[0]), 1)
        if (width, height) != self._resolution:
            self._resolution = (width, height)
            self._fps_reported = False
            RESOLUTION.labels("width").set(width)
            RESOLUTION.labels("height").set(height)
            recent.clear()
            self._events("avatar_video", width=width, height=height, fps=None)
        elif fps is not None and not self._fps_reported:
            self._fps_reported = True
            self._events("avatar_video", width=width, height=height, fps=fps)

    # -- tasks and shutdown ----------------------------------------------------------------------

    async def _watch_avatar_join(self) -> None:
        try:
            async with asyncio.timeout(self._opts.avatar_join_timeout_s):
                await self._ready.wait()
        except TimeoutError:
            self._fail(
                "avatar_join_timeout",
                f"the avatar sent no audio and video within {self._opts.avatar_join_timeout_s}s",
            )

    async def _watch_avatar_return(self) -> None:
        await asyncio.sleep(self._opts.avatar_join_timeout_s)
        if self._avatar() is None:
            self._fail("avatar_left", "the avatar did not return after the LiveKit reconnect")

    async def _close(self) -> None:
        # Order matters: the Rust SDK has panicked at interpreter exit when streams and the room
        # were torn down in an arbitrary order. Readers first, then streams, then the room.
        await self._tasks.aclose()
        self._readers.clear()
        room, self._room = self._room, None
        if room is not None:
            try:
                async with asyncio.timeout(_CLOSE_TIMEOUT_S):
                    await room.disconnect()
            except Exception as exc:  # closing must not raise; the session is going anyway
                log.warning("downlink_disconnect_failed", error=repr(exc))
            room.off("track_subscribed", self._on_track_subscribed)
            room.off("participant_disconnected", self._on_participant_disconnected)
            room.off("disconnected", self._on_disconnected)
            room.off("reconnecting", self._on_reconnecting)
            room.off("reconnected", self._on_reconnected)
        self._sink = None
        log.info("downlink_closed", **self.stats)
