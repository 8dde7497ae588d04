"""The bridge's participant in the Stream call: publishes the avatar's audio and video with the
real ``getstream_rtc`` SDK (its Rust core does signalling, ICE/DTLS/SRTP, VP9/VP8 encoding and Opus
pacing).

SDK semantics this module relies on (``getstream_rtc/_bindings.pyi``):

* ``write_i420_at`` encodes before it returns, so awaiting it is the backpressure: one write at a
  time, never a queue in front of it. A frame whose pts is not after the previous one is dropped
  silently by the SDK, so we drop and count such frames ourselves first.
* ``write_pcm`` queues at most ``pcm_queue_s`` seconds; beyond that the SDK drops the oldest
  samples, applies the write and raises ``PcmQueueOverflowError``: counted, logged, not fatal.
* ``client_events()`` reports the calling state; the SDK reconnects by itself, and ``LEFT`` is the
  reliable end of the call.

Scaling (only when the input size differs from the output size) uses FFmpeg's swscale through
PyAV on the I420 planes, in a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import asdict, dataclass
from typing import Any, Literal

import av
import getstream_rtc as rtc
import numpy as np
import structlog
from prometheus_client import Counter, Histogram

from bridge.config import OutputConfig, Settings, setting_default
from bridge.errors import BridgeError, ErrorCode
from bridge.media import I420, AudioChunk, VideoFrame, WirePts
from bridge.stages import EventSink, FailureCallback
from bridge.stream.join import StreamJoinOptions
from bridge.tasks import TaskSet

log = structlog.get_logger(__name__)

FRAMES_WRITTEN = Counter("bridge_publisher_video_frames_total", "Video frames written to the SDK")
AUDIO_SECONDS = Counter("bridge_publisher_audio_seconds_total", "Seconds of PCM written to the SDK")
WRITE_LATENCY = Histogram(
    "bridge_publisher_video_write_seconds",
    "Duration of one write_i420_at (scale + encode + packetize)",
    buckets=(0.002, 0.005, 0.01, 0.02, 0.033, 0.05, 0.1, 0.25, 1.0),
)
AUDIO_WRITE_LATENCY = Histogram(
    "bridge_publisher_audio_write_seconds",
    "Duration of one write_pcm (a round trip through the SDK's runtime: long ones are the "
    "stalls the sync stage's audio backlog rides out)",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0),
)
DROPPED_FRAMES = Counter(
    "bridge_publisher_video_dropped_frames_total", "Video frames not written", ["reason"]
)
PCM_OVERFLOWS = Counter(
    "bridge_publisher_pcm_overflow_total", "PCM writes that overflowed the SDK's audio queue"
)
PCM_DROPPED_SAMPLES = Counter(
    "bridge_publisher_pcm_dropped_samples_total", "Oldest PCM samples the SDK dropped on overflow"
)
SFU_NOTICES = Counter(
    "bridge_publisher_sfu_notices_total", "SFU events that change what we publish", ["kind"]
)
AUDIO_DROPPED = Counter(
    "bridge_publisher_audio_dropped_chunks_total", "PCM chunks not written", ["reason"]
)

_CALL_EVENT_CAPACITY = 256
_STATE_NAMES = (
    "IDLE",
    "JOINING",
    "JOINED",
    "RECONNECTING",
    "MIGRATING",
    "RECONNECTING_FAILED",
    "LEFT",
)


@dataclass(frozen=True, slots=True)
class PublisherOptions(StreamJoinOptions):
    """How the bridge joins Stream (:class:`~bridge.stream.join.StreamJoinOptions`) and what it
    publishes. getstream_rtc 0.1.0 joins with the user id only; ``user_name`` is logged."""

    video_codec: Literal["VP9", "VP8"] = setting_default(OutputConfig, "video_codec")
    width: int = setting_default(OutputConfig, "width")
    height: int = setting_default(OutputConfig, "height")
    fps: float = setting_default(OutputConfig, "fps")
    pcm_queue_s: float = setting_default(OutputConfig, "audio_queue_ms") / 1000.0

    @classmethod
    def from_settings(cls, settings: Settings) -> PublisherOptions:
        out = settings.output
        return cls(
            **asdict(StreamJoinOptions.from_settings(settings)),
            video_codec=out.video_codec,
            width=out.width,
            height=out.height,
            fps=out.fps,
            pcm_queue_s=out.audio_queue_ms / 1000.0,
        )


def _scale_i420(data: I420, w: int, h: int, out_w: int, out_h: int) -> I420:
    """Rescale one I420 picture with swscale (bilinear); runs in a worker thread."""
    frame = av.VideoFrame.from_ndarray(data.reshape(h * 3 // 2, w), format="yuv420p")
    scaled = frame.reformat(width=out_w, height=out_h, format="yuv420p", interpolation="BILINEAR")
    out: I420 = np.asarray(scaled.to_ndarray(), dtype=np.uint8).reshape(-1)
    return out


class StreamPublisher:
    """Publishes one audio and one video track into ``call_type:call_id``.

    Implements :class:`bridge.stages.CallPublisher`. ``start()`` joins and publishes (raises
    :class:`BridgeError` STREAM_AUTH / STREAM_FAILED); afterwards a call that ends for good is
    reported once through ``on_failure``. ``aclose()`` leaves the call; writes after it are ignored.
    """

    def __init__(
        self,
        options: PublisherOptions,
        call_type: str,
        call_id: str,
        events: EventSink,
        on_failure: FailureCallback,
    ) -> None:
        if options.width % 2 or options.height % 2:
            raise ValueError("output width and height must be even (I420)")
        self._opts = options
        self._call_type, self._call_id = call_type, call_id
        self._events = events
        self._on_failure = on_failure
        self._call: rtc.Call | None = None
        self._video: rtc.LocalVideoTrack | None = None
        self._audio: rtc.LocalAudioTrack | None = None
        self._watchers = TaskSet(on_failure, ErrorCode.STREAM_FAILED)
        self._video_lock = asyncio.Lock()  # one video write at a time (the SDK may reorder)
        self._audio_lock = asyncio.Lock()
        self._last_pts_s = -1.0
        self._wire_pts = WirePts()
        self._published = False
        self._closing = False
        self._closed = False
        self._failed = False
        self._log = log.bind(cid=f"{call_type}:{call_id}", user_id=options.user_id)
        # Plain counters for this session (the Prometheus metrics are process-wide).
        self.frames_written = 0
        self.frames_dropped = 0
        self.audio_seconds = 0.0
        self.pcm_overflows = 0

    # ---- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        opts = self._opts
        try:
            client = rtc.Client(
                opts.api_key,
                opts.api_secret,
                base_url=opts.base_url,
                ws_url=opts.resolved_ws_url(),
                call_event_capacity=_CALL_EVENT_CAPACITY,
            )
        except rtc.ConfigError as exc:
            raise BridgeError(ErrorCode.STREAM_AUTH, f"Stream client configuration: {exc}") from exc
        call = client.call(self._call_type, self._call_id)
        self._call = call
        self._log.info("stream_joining", base_url=opts.base_url, user_name=opts.user_name)
        t0 = time.monotonic()
        try:
            async with asyncio.timeout(opts.join_timeout_s):
                await call.join(opts.user_id, True)
            # Read the calling state from now on: reconnects are logged, a final LEFT is fatal.
            self._watchers.spawn(self._watch(call), "stream_publisher_watch")
            self._watchers.spawn(self._watch_sfu(call), "stream_publisher_sfu_events")
            self._audio = rtc.LocalAudioTrack(pcm_queue_capacity=opts.pcm_queue_s)
            video = (
                rtc.LocalVideoTrack.vp9()
                if opts.video_codec == "VP9"
                else rtc.LocalVideoTrack.vp8()
            )
            self._video = video
            async with asyncio.timeout(opts.join_timeout_s):
                await call.publish_audio(self._audio)
            async with asyncio.timeout(opts.join_timeout_s):
                await call.publish_video(video)
        except Exception as exc:
            await self._teardown()
            raise self._join_error(exc) from exc
        except BaseException:  # cancelled or interrupted: clean up, let it through unchanged
            await self._teardown()
            raise
        self._log.info(
            "stream_joined",
            join_s=round(time.monotonic() - t0, 3),
            codec=opts.video_codec,
            size=f"{opts.width}x{opts.height}",
        )

    def _join_error(self, exc: BaseException) -> BridgeError:
        where = self._opts.base_url or "Stream's cloud"
        if isinstance(exc, TimeoutError):
            return BridgeError(
                ErrorCode.STREAM_FAILED,
                f"joining Stream call {self._call_type}:{self._call_id} at {where} timed out "
                f"after {self._opts.join_timeout_s:.0f} s",
            )
        if isinstance(exc, rtc.ApiError) and exc.status_code in (401, 403):
            what = "was refused" if exc.status_code == 403 else "was not authenticated"
            return BridgeError(
                ErrorCode.STREAM_AUTH,
                f"Stream {what} joining call {self._call_type}:{self._call_id} as "
                f"{self._opts.user_id!r}: {exc.message} (check STREAM_API_KEY / STREAM_API_SECRET "
                "and the call type's JoinCall permission for this user)",
            )
        if isinstance(exc, rtc.CoordinatorError):
            return BridgeError(
                ErrorCode.STREAM_AUTH,
                f"Stream rejected the bridge's credentials for call {self._call_type}:"
                f"{self._call_id}: {exc} (check STREAM_API_KEY / STREAM_API_SECRET)",
            )
        if isinstance(exc, rtc.PermissionDeniedError):
            return BridgeError(
                ErrorCode.STREAM_AUTH,
                f"the bridge's user {self._opts.user_id!r} lacks the {exc.capability!r} "
                f"capability in call {self._call_type}:{self._call_id}: grant it to the user's "
                "role in the call type's settings",
            )
        return BridgeError(
            ErrorCode.STREAM_FAILED,
            f"could not join Stream call {self._call_type}:{self._call_id} at {where}: {exc}",
        )

    async def _watch(self, call: rtc.Call) -> None:
        try:
            async for event in call.client_events():
                if not isinstance(event, rtc.CallingStateChanged):
                    continue
                state = event.state
                self._log.info("stream_calling_state", state=_state_name(state))
                if state == rtc.CallingState.LEFT:
                    break
        except rtc.RtcError as exc:
            self._log.warning("stream_events_failed", error=str(exc))
        if not self._closing and not self._failed:
            self._failed = True
            self._log.warning("stream_call_ended")
            self._on_failure(
                BridgeError(
                    ErrorCode.STREAM_FAILED,
                    f"the bridge left Stream call {self._call_type}:{self._call_id} (the call "
                    "ended, the bridge was removed, or reconnecting failed)",
                )
            )

    async def _watch_sfu(self, call: rtc.Call) -> None:
        """Log what the SFU does to our tracks: the SDK applies it silently (a revoked grant
        mutes the track, a paused layer discards writes), so the logs are the only trace."""
        try:
            async for event in call.sfu_events():
                if isinstance(event, rtc.CallGrantsUpdated):
                    grants = event.current_grants
                    SFU_NOTICES.labels("grants_updated").inc()
                    self._log.warning(
                        "stream_grants_updated",
                        audio=grants.can_publish_audio if grants else None,
                        video=grants.can_publish_video if grants else None,
                        message=event.message,
                    )
                elif isinstance(event, rtc.ChangePublishQuality):
                    SFU_NOTICES.labels("publish_quality").inc()
                    layers = [
                        (layer.name, layer.active)
                        for sender in event.video_senders
                        for layer in sender.layers
                    ]
                    self._log.info("stream_publish_quality_changed", video_layers=layers)
                elif isinstance(event, rtc.Error):
                    SFU_NOTICES.labels("error").inc()
                    self._log.warning("stream_sfu_error", message=event.error.message)
        except rtc.RtcError as exc:
            self._log.warning("stream_sfu_events_failed", error=str(exc))

    async def aclose(self) -> None:
        """Leave the call and stop the watcher. Idempotent, never raises."""
        if self._closed:
            return
        self._closing = True
        self._closed = True
        # Let in-flight writes finish (later ones see _closing), so none follows the leave.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._opts.leave_timeout_s):
                async with self._video_lock:
                    pass
                async with self._audio_lock:
                    pass
        await self._teardown()
        self._log.info(
            "stream_left",
            frames=self.frames_written,
            dropped=self.frames_dropped,
            audio_s=round(self.audio_seconds, 2),
            pcm_overflows=self.pcm_overflows,
        )

    async def _teardown(self) -> None:
        self._closing = True
        call, self._call = self._call, None
        if call is not None:
            try:
                async with asyncio.timeout(self._opts.leave_timeout_s):
                    await call.leave()
            except (TimeoutError, rtc.RustError) as exc:
                self._log.warning("stream_leave_failed", error=str(exc))
        # The event streams end after LEFT; cancel only what does not end in time.
        await self._watchers.aclose(grace_s=self._opts.leave_timeout_s)
        self._video = None
        self._audio = None

    # ---- media -------------------------------------------------------------------------------

    async def write_video(self, frame: VideoFrame) -> None:
        """Write one frame (awaits the encode: the caller is paced by it)."""
        async with self._video_lock:
            video = self._video
            if video is None or self._closing:
                DROPPED_FRAMES.labels("not_publishing").inc()
                self.frames_dropped += 1
                return
            pts_s = frame.pts_us / 1e6
            if pts_s <= self._last_pts_s or pts_s < 0:
                DROPPED_FRAMES.labels("non_increasing_pts").inc()
                self.frames_dropped += 1
                return
            opts = self._opts
            t0 = time.perf_counter()
            data = frame.data
            if (frame.width, frame.height) != (opts.width, opts.height):
                data = await asyncio.to_thread(
                    _scale_i420, data, frame.width, frame.height, opts.width, opts.height
                )
            # The SDK's RTP timestamps keep the pts's spacing and its sender reports map them
            # to wall time from the last packet sent: the pts is held to the write's own time
            # (WirePts), which the sync stage's hold already timed to go with its sound.
            wire_pts_s = self._wire_pts.stamp(pts_s, time.monotonic())
            try:
                await video.write_i420_at(data, opts.width, opts.height, wire_pts_s)
            except (rtc.IllegalStateError, rtc.MediaError, ValueError) as exc:
                # The call is gone or the frame is bad: drop it; the watcher reports a final LEFT.
                DROPPED_FRAMES.labels("sdk_error").inc()
                self.frames_dropped += 1
                self._log.debug("video_write_failed", error=str(exc))
                return
            self._last_pts_s = pts_s
            WRITE_LATENCY.observe(time.perf_counter() - t0)
            FRAMES_WRITTEN.inc()
            self.frames_written += 1
        if not self._published:
            self._published = True
            self._log.info(
                "stream_first_video_written", write_ms=round(1000 * (time.perf_counter() - t0), 1)
            )
            self._events(
                "published",
                call_type=self._call_type,
                call_id=self._call_id,
                codec=opts.video_codec,
                width=opts.width,
                height=opts.height,
            )

    async def write_audio(self, chunk: AudioChunk) -> None:
        async with self._audio_lock:
            audio = self._audio
            if audio is None or self._closing:
                AUDIO_DROPPED.labels("not_publishing").inc()
                return
            fmt = chunk.fmt
            t0 = time.perf_counter()
            try:
                await audio.write_pcm(chunk.samples, fmt.sample_rate, fmt.channels)
            except rtc.PcmQueueOverflowError as exc:
                # The write was applied; the SDK dropped the oldest queued samples instead.
                PCM_OVERFLOWS.inc()
                PCM_DROPPED_SAMPLES.inc(exc.dropped_samples)
                self.pcm_overflows += 1
                if self.pcm_overflows == 1 or self.pcm_overflows % 100 == 0:
                    self._log.warning(
                        "stream_pcm_queue_overflow",
                        dropped_samples=exc.dropped_samples,
                        overflows=self.pcm_overflows,
                    )
            except rtc.PcmRateMismatchError as exc:
                AUDIO_DROPPED.labels("rate_mismatch").inc()
                self._log.warning("pcm_rate_changed", expected=exc.expected, got=exc.actual)
                return
            except (rtc.IllegalStateError, rtc.MediaError, ValueError) as exc:
                AUDIO_DROPPED.labels("sdk_error").inc()
                self._log.debug("audio_write_failed", error=str(exc))
                return
            AUDIO_WRITE_LATENCY.observe(time.perf_counter() - t0)
            AUDIO_SECONDS.inc(chunk.duration_s)
            self.audio_seconds += chunk.duration_s

    def flush_audio(self) -> None:
        """Drop queued, unsent PCM (barge-in)."""
        if self._audio is not None:
            self._audio.flush()

    def stats(self) -> dict[str, Any]:
        return {
            "frames_written": self.frames_written,
            "frames_dropped": self.frames_dropped,
            "audio_seconds": round(self.audio_seconds, 3),
            "pcm_overflows": self.pcm_overflows,
            "published": self._published,
        }


def _state_name(state: rtc.CallingState) -> str:
    for name in _STATE_NAMES:
        if state == getattr(rtc.CallingState, name):
            return name
    return str(int(state))
