"""The per-session encoded relay: the avatar's RTP from LiveKit into the Stream call, undecoded.

Order of work (so the avatar's first keyframe is not wasted):

1. Join the Stream call asking for the avatar's codec (``preferred_publish_options``). If the SFU
   grants another codec, the relay declines (:meth:`RelayPath.start` returns the reason) and the
   session transcodes instead.
2. Publish on the Stream side: one Opus and one video sender whose codec is the avatar's.
3. Subscribe to the avatar on LiveKit (:class:`~bridge.livekit.subscriber.LiveKitSubscriber`);
   each receiver is taken over before its first packet (:mod:`bridge.relay.aiortc_hooks`).
4. Forward. Video waits for a keyframe; PLIs go upstream (rate-limited) until one arrived.

Per packet: RTX unwrapped and upstream gaps NACKed by the receiver tap; what to do with each video
packet (keyframe gate, hold, pause/resume, SSRC changes, keyframe requests) is decided by the
sans-I/O :class:`~bridge.relay.policy.VideoPolicy`; then -- video after the playout hold --
rewritten (SSRC, PT, sequence, extensions; timestamps kept), stored in a bounded RTX history and
sent. Downstream NACKs are answered from that history with RTX; downstream PLI/FIR become upstream
PLIs (rate-limited). Upstream sender reports are translated into ours (the avatar's NTP<->RTP
mapping; until the first one arrives the mapping is provisional, our send time). Video the Stream
SFU does not want now (send-video revoked, our layer paused) is dropped on arrival, audio goes on;
when allowed again the gate waits for a keyframe (PLIs upstream) and the downstream stream is
rebased.

Video hold: Stream's web SDK gives each track its own stream id, so browsers do not lip-sync a
participant's audio and video by SR; video is held back by ``video_hold_ms`` so that it leaves
aligned with audio. The hold is bounded (``hold_capacity`` packets; overflow releases the oldest
early, counted) and costs one timer per session. With pacing (``playout_hold_ms``), the two
playout buffers are also aligned by the avatar's capture clock, from its SRs
(:class:`~bridge.relay.sender_clock.SenderClock`, ``align_by_sr``).

Queues: the hold queue (bounded as above) and the RTX history (a fixed ring). Nothing else
buffers: packets are sent from the receive path.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, cast

import structlog
from aiortc import RTCRtpReceiver, RTCRtpSender
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtcpSrPacket, RtpPacket
from prometheus_client import Counter, Histogram

from bridge import metrics
from bridge.barge_in import SpeechGate, opus_silence_like
from bridge.cadence import CadenceHold
from bridge.config import LiveAvatarConfig, OutputConfig, Settings, setting_default
from bridge.errors import BridgeError, ErrorCode
from bridge.first_sound import OPUS_LOUD_BYTES, OnsetPoint
from bridge.livekit.subscriber import LiveKitSubscriber, SubscriberOptions
from bridge.media_path import RELAY_CODECS, PathKind, RelayDecline, WarmRoom
from bridge.relay.aiortc_hooks import (
    ReceiverTap,
    RtpHandler,
    SenderTap,
    SrHandler,
    ensure_compatible,
)
from bridge.relay.playout import PlayoutBuffer
from bridge.relay.policy import (
    StreamFollower,
    VideoPolicy,
    declines_announced_size,
    layer_request,
)
from bridge.relay.rtp import RtpRewriter, RtxHistory, first_sequence_number
from bridge.relay.sender_clock import SenderClock
from bridge.relay.warm import WarmUpstream
from bridge.stages import AvatarRoom, EventSink, FailureCallback
from bridge.tasks import TaskSet

__all__ = ["RELAY_CODECS", "RelayOptions", "RelayPath", "StreamSide"]  # RELAY_CODECS: re-export

log = structlog.get_logger(__name__)


PACKETS = Counter("bridge_relay_packets_total", "RTP packets relayed downstream", ["kind"])
VIDEO_FRAMES = Counter(
    "bridge_relay_video_frames_total", "Video frames relayed downstream (marker-bit packets)"
)
DROPPED = Counter("bridge_relay_dropped_total", "Upstream packets not relayed", ["kind", "reason"])
KEYFRAME_REQUESTS = Counter(
    "bridge_relay_keyframe_requests_total",
    "Keyframe requests, by origin and outcome (sent upstream or rate-limited)",
    ["origin", "outcome"],
)
RTX = Counter("bridge_relay_rtx_total", "Downstream NACKed packets, by outcome", ["outcome"])
UPSTREAM_NACKS = Counter("bridge_relay_upstream_nacks_total", "NACKs sent to LiveKit")
UPSTREAM_NACK_RETRIES = Counter(
    "bridge_relay_upstream_nack_retries_total",
    "Lost packets asked for again from LiveKit (their retransmission did not come in time)",
)
UPSTREAM_NACKS_GIVEN_UP = Counter(
    "bridge_relay_upstream_nacks_given_up_total",
    "Lost packets no longer asked for (retries spent, too many missing, or a new stream)",
)
SR_TRANSLATED = Counter("bridge_relay_sr_translated_total", "Upstream SRs mapped into ours")
HOLD_EARLY = Counter(
    "bridge_relay_hold_released_early_total", "Video packets released before their hold ended"
)
VIDEO_PAUSES = Counter(
    "bridge_relay_video_paused_total",
    "Times the Stream SFU stopped the relay's video (send-video revoked, video layer paused)",
    ["reason"],
)
SIZE_CHANGES = Counter(
    "bridge_relay_video_size_changes_total",
    "Keyframes of another size than the stream's before (the LiveKit SFU switched layers)",
)
CADENCE_CHANGES = Counter(
    "bridge_relay_video_cadence_changes_total",
    "Times the forwarded video's frame timing turned steady or unsteady, and the video hold "
    "followed (bridge/cadence.py)",
    ["steady"],
)
PLAYOUT_LATE = Counter(
    "bridge_relay_playout_late_total",
    "Relayed packets that arrived after their playout deadline (upstream jitter beyond the "
    "hold): forwarded at once",
    ["kind"],
)
PLAYOUT_EARLY = Counter(
    "bridge_relay_playout_released_early_total",
    "Relayed packets released before their playout deadline by the buffer's bound",
    ["kind"],
)
PLAYOUT_REBASES = Counter(
    "bridge_relay_playout_rebases_total",
    "Playout timing restarts (a new upstream SSRC, a timestamp jump)",
    ["kind"],
)
SYNC_LIFT = Histogram(
    "bridge_relay_sync_lift_seconds",
    "Extra hold of a kind aligning it to the avatar's capture clock (its SRs), at each SR: the "
    "faster stream's added latency",
    ["kind"],
    buckets=(0.0, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2),
)
DECLINED = Counter(
    "bridge_relay_declined_total", "Relays that fell back to transcoding", ["reason"]
)
LOOP_LAG = Histogram(
    "bridge_event_loop_lag_seconds",
    "How late a 200 ms timer fires on the daemon's event loop while relays run (sessions "
    "starting and stopping must not stall the others' media)",
    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0),
)
# Every wake-up of an otherwise idle loop costs ~0.1 ms of CPU on a busy 2-core machine: at
# 50 ms this sampler alone was ~0.2 % of a core, a twentieth of one relayed session.
_LAG_INTERVAL_S = 0.2
_NTP_EPOCH_OFFSET_S = 2_208_988_800  # 1900-01-01 to 1970-01-01


def ntp_now() -> int:
    """The wall clock as a 64-bit NTP timestamp (32.32 since 1900): what aiortc's
    ``clock.current_ntp_time`` gives, without building two ``datetime`` objects per packet."""
    return round((time.time() + _NTP_EPOCH_OFFSET_S) * (1 << 32))


# An avatar handover waits this long for the new avatar's keyframe while still relaying the old.
_SWITCH_WAIT_S = 1.0


class _LoopLag:
    """One sampler per process while at least one relay runs (reference-counted, owned task)."""

    users = 0
    task: asyncio.Task[None] | None = None

    @classmethod
    def acquire(cls) -> None:
        cls.users += 1
        if cls.task is None or cls.task.done():
            cls.task = asyncio.get_running_loop().create_task(cls._sample())

    @classmethod
    async def release(cls) -> None:
        cls.users = max(0, cls.users - 1)
        if cls.users == 0 and cls.task is not None:
            task, cls.task = cls.task, None
            task.cancel()
            await asyncio.wait({task})  # not `await task`: our own cancellation must propagate

    @staticmethod
    async def _sample() -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + _LAG_INTERVAL_S
            await asyncio.sleep(_LAG_INTERVAL_S)
            LOOP_LAG.observe(max(0.0, loop.time() - due))


class StreamSide(Protocol):
    """The Stream-side publisher the relay writes into (``StreamRelayPublisher``)."""

    async def join(self, preferred_video_codec: str, fallbacks: Sequence[str] = ()) -> str: ...

    @property
    def granted_codec(self) -> str | None: ...

    async def publish(self, video_codec: str, h264_fmtp: str | None = None) -> None: ...

    @property
    def video_sender(self) -> RTCRtpSender: ...

    @property
    def audio_sender(self) -> RTCRtpSender: ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True, slots=True)
class RelayOptions:
    avatar_identity: str = setting_default(LiveAvatarConfig, "avatar_identity")
    # The codec LiveAvatar was asked for ("VP8" | "H264"): asked of the SFU before subscribing.
    avatar_codec: str = setting_default(LiveAvatarConfig, "video_encoding")
    # Asked of the SFU after the avatar's codec: what the transcode path can publish on this
    # same SFU session if the relay declines (so the bridge joins the call once).
    fallback_codecs: tuple[str, ...] = ()
    # Playout alignment (see the module doc); 0 disables the hold.
    video_hold_ms: float = setting_default(OutputConfig, "relay_video_hold_ms")
    # Less hold for steadily timed frames (bridge/cadence.py); with pacing only.
    video_cadence_allowance_ms: float = setting_default(OutputConfig, "video_cadence_allowance_ms")
    # Pacing by the RTP clocks (bridge/relay/playout.py); 0 forwards on arrival.
    playout_hold_ms: float = setting_default(OutputConfig, "relay_playout_hold_ms")
    # Both kinds' pacing aligned by the avatar's sender reports (bridge/relay/sender_clock.py).
    align_by_sr: bool = setting_default(OutputConfig, "relay_align_by_sr")
    # The avatar's audio captured this long before its audio SRs' NTP ("auto": one packet).
    audio_sr_capture_lag_ms: float | Literal["auto"] = setting_default(
        OutputConfig, "relay_audio_sr_capture_lag_ms"
    )
    playout_max_hold_ms: float = 500.0
    hold_capacity: int = 512
    rtx_history: int = 1024
    pli_min_interval_s: float = 0.3
    keyframe_retry_s: float = 0.35
    keyframe_timeout_s: float = 10.0
    connect_timeout_s: float = setting_default(LiveAvatarConfig, "connect_timeout_s")
    # How long the avatar's tracks may take to appear in the room after we joined it: the
    # documented scope of connect_timeout_s includes it.
    avatar_join_timeout_s: float = setting_default(LiveAvatarConfig, "connect_timeout_s")
    single_peer_connection: bool = True
    # The avatar's full size: the simulcast layer asked of LiveKit, and the size the keyframe
    # gate waits for (up to ``size_wait_s``, then any layer). None: no layer is asked for.
    video_size: tuple[int, int] | None = None
    size_wait_s: float = 2.0
    # ``auto`` chose the relay because the sizes match: decline when the avatar's TrackInfo
    # announces another size than ``video_size``.
    require_size: bool = False

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        avatar_codec: str,
        fallback_codecs: tuple[str, ...] = (),
        *,
        video_size: tuple[int, int] | None = None,
        require_size: bool = False,
    ) -> RelayOptions:
        la = settings.liveavatar
        return cls(
            avatar_identity=la.avatar_identity,
            avatar_codec=avatar_codec,
            fallback_codecs=fallback_codecs,
            video_size=video_size,
            require_size=require_size,
            video_hold_ms=settings.output.relay_video_hold_ms,
            video_cadence_allowance_ms=settings.output.video_cadence_allowance_ms,
            playout_hold_ms=settings.output.relay_playout_hold_ms,
            align_by_sr=settings.output.relay_align_by_sr,
            audio_sr_capture_lag_ms=settings.output.relay_audio_sr_capture_lag_ms,
            connect_timeout_s=la.connect_timeout_s,
            avatar_join_timeout_s=la.connect_timeout_s,
        )


def _seconds_or_auto(ms: float | Literal["auto"]) -> float | Literal["auto"]:
    return "auto" if ms == "auto" else ms / 1000.0


class _Forwarder:
    """One upstream stream -> one downstream sender."""

    def __init__(self, kind: str, tap: SenderTap, history_size: int) -> None:
        self.kind = kind
        self.tap = tap
        self.rewriter = RtpRewriter(tap.binding)
        self.history = RtxHistory(history_size)
        self.sr_from_upstream = False
        # After an avatar handover the downstream NTP<->RTP mapping is kept (see mark_switch).
        self.sr_kept = False
        self.sent = 0
        self.frames = 0
        self.send_errors = 0
        self.last_sent_t = 0.0  # of the last packet ending a frame (marker)
        # Avatar handover: the old avatar's SSRC, its last packet's send time, the new one's first.
        self._switch_from: int | None = None
        self.switch_last_old_t = 0.0
        self.switch_first_new_t: float | None = None
        # Per-packet metrics: the labelled children once, not a labels() lookup per packet.
        self._packets = PACKETS.labels(kind)
        self._not_connected = DROPPED.labels(kind, "not_connected")

    def mark_switch(self) -> None:
        """The upstream changes avatars: measure the gap between their packets on our side."""
        self._switch_from = self.rewriter.upstream_ssrc
        # The rebase advances timestamps by the wall time that passed, so the mapping our SRs
        # carry stays true; the new avatar's SRs would move it by the difference between the
        # two avatars' NTP<->RTP offsets (1.3 s measured after a drop): not translated in.
        self.sr_kept = True
        self.switch_last_old_t = self.last_sent_t
        self.switch_first_new_t = None

    async def send(self, packet: RtpPacket) -> None:
        now = time.monotonic()
        ntp = ntp_now()
        # Picture gap at a switch: the old avatar's last complete frame (marker) sent to the new
        # one's first.
        if self._switch_from is not None and packet.marker:
            if packet.ssrc == self._switch_from:
                self.switch_last_old_t = now  # held packets of the old avatar, still going out
            elif self.switch_first_new_t is None:
                self.switch_first_new_t = now
        if packet.marker:
            self.last_sent_t = now
        out = self.rewriter.rewrite(packet, now, (ntp >> 14) & 0x00FFFFFF)
        data = self.tap.serialize(out)
        self.history.store(out.sequence_number, data, now)
        if not await self.tap.send(data):
            self.send_errors += 1
            self._not_connected.inc()
            return
        self.tap.count_sent(len(out.payload))
        if not self.sr_from_upstream:
            self.tap.set_sr_mapping(ntp, out.timestamp)
        self.sent += 1
        self._packets.inc()
        if self.kind == "video" and out.marker:
            self.frames += 1
            VIDEO_FRAMES.inc()

    def on_sr(self, sr: RtcpSrPacket) -> None:
        if self.sr_kept:
            return
        ts = self.rewriter.translate_sr(sr.ssrc, sr.sender_info.rtp_timestamp)
        if ts is None:
            return
        self.tap.set_sr_mapping(sr.sender_info.ntp_timestamp, ts)
        self.sr_from_upstream = True
        SR_TRANSLATED.inc()

    async def retransmit(self, seq: int) -> None:
        rtx = self.history.retransmission(seq, self.tap.binding)
        if rtx is None:
            RTX.labels("miss").inc()
            return
        RTX.labels("sent").inc()
        await self.tap.send(rtx)


@dataclass(slots=True)
class _RetiredTaps:
    """Upstream feedback counted by receiver taps that a LiveKit rejoin or a handover replaced."""

    nacks: int = 0
    rtx: int = 0
    nack_retries: int = 0
    nacks_given_up: int = 0

    def add(self, tap: ReceiverTap) -> None:
        self.nacks += tap.nacks_sent
        self.rtx += tap.rtx_received
        self.nack_retries += tap.nack.retries
        self.nacks_given_up += tap.nack.given_up


@dataclass(slots=True)
class PreparedRelay:
    """The next avatar's subscription (an avatar handover), receiving but not forwarded."""

    subscriber: LiveKitSubscriber
    taps: dict[str, ReceiverTap] = field(default_factory=dict)
    video_ssrc: int | None = None
    keyframe: asyncio.Event = field(default_factory=asyncio.Event)
    switch_asked: bool = False  # switch at its next keyframe
    swapped: asyncio.Event = field(default_factory=asyncio.Event)  # see ``committed``
    # The switch's timing (monotonic s): committed (keyframe asked), the switching keyframe's
    # first packet in; for the gap's breakdown (relay_avatar_switched).
    commit_t: float = 0.0
    keyframe_t: float | None = None
    old_in_t: float = 0.0  # the old avatar's last complete frame in, at the switch

    @property
    def committed(self) -> bool:
        """Its receivers are the relay's upstream (``swapped`` is awaited for it)."""
        return self.swapped.is_set()


class RelayPath:
    """A session's relay (a :class:`bridge.media_path.MediaPath`). :meth:`start` joins both
    sides; :meth:`aclose` leaves both."""

    kind = PathKind.RELAY

    def __init__(
        self,
        options: RelayOptions,
        stream: StreamSide,
        events: EventSink,
        on_failure: FailureCallback,
        warm: WarmUpstream | None = None,
    ) -> None:
        codec = options.avatar_codec.upper()
        if codec not in RELAY_CODECS:
            raise ValueError(f"the relay carries {RELAY_CODECS}, not {options.avatar_codec!r}")
        self._opts = options
        self._codec = codec
        self._stream = stream
        self._events = events
        self._on_failure = on_failure
        self._subscriber: LiveKitSubscriber | None = None
        # A pooled avatar's subscription, joined before the HELLO (bridge/relay/warm.py).
        self._warm = warm
        # Avatar handover: the next avatar's subscription, and replaced ones not yet left.
        self._prepared: PreparedRelay | None = None
        self._switching: PreparedRelay | None = None  # committed, waiting for its keyframe
        self._retired: list[LiveKitSubscriber] = []
        self._fwd: dict[str, _Forwarder] = {}
        self._receiver_taps: dict[str, ReceiverTap] = {}
        # With pacing, the video's fixed hold becomes its offset in the playout buffer.
        self._playout: dict[str, PlayoutBuffer[RtpPacket]] = {}
        if options.playout_hold_ms > 0:
            hold_s = options.playout_hold_ms / 1000.0
            max_s = options.playout_max_hold_ms / 1000.0
            self._playout["audio"] = PlayoutBuffer(
                48_000, hold_s, max_hold_s=max_s, capacity=options.hold_capacity
            )
            self._playout["video"] = PlayoutBuffer(
                90_000,
                hold_s,
                offset_s=options.video_hold_ms / 1000.0,
                max_hold_s=max_s,
                capacity=options.hold_capacity,
            )
        # The video's offset in its buffer, by the forwarded frames' cadence.
        self._cadence = CadenceHold(options.video_hold_ms, options.video_cadence_allowance_ms)
        self._cadence_steps = 0
        # Aligns the two buffers' timing by the avatar's capture clock (its SRs).
        self._clock = (
            SenderClock(
                self._playout,
                enabled=options.align_by_sr,
                audio_sr_lag=_seconds_or_auto(options.audio_sr_capture_lag_ms),
            )
            if self._playout
            else None
        )
        self._video: VideoPolicy[RtpPacket] = VideoPolicy(
            codec,
            hold_s=0.0 if self._playout else options.video_hold_ms / 1000.0,
            hold_capacity=options.hold_capacity,
            pli_min_interval_s=options.pli_min_interval_s,
            want_size=options.video_size,
            size_wait_s=options.size_wait_s,
        )
        self._hold_wake = asyncio.Event()
        self._video_in_t = 0.0
        self._pump_due = float("inf")  # what the playout pump sleeps until
        self._send_locks = {kind: asyncio.Lock() for kind in self._playout}
        self._tasks = TaskSet(on_failure, ErrorCode.INTERNAL)
        self._closed = asyncio.Event()
        self._close_task: asyncio.Task[None] | None = None
        self._started_t = 0.0
        # Counts of receiver taps replaced by a LiveKit rejoin.
        self._retired_taps = _RetiredTaps()
        self._lag_held = False
        self._declined = False
        self._stream_taken = False
        self._rng = random.Random()
        self._speech = SpeechGate()
        self._audio_gap = False  # audio packets were dropped while muted (not Opus)
        # Audio's upstream streams: a late packet of one left behind is dropped (stale_stream).
        self._audio_streams = StreamFollower()
        self._audio_stale_dropped = 0
        self._onset_in = OnsetPoint("relay", "in")  # first-sound figures
        self._onset_out = OnsetPoint("relay", "out")

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self, room: AvatarRoom) -> RelayDecline | None:
        """Join Stream, publish, subscribe. None when relaying; else why it declined (then the
        joined Stream session is left for :meth:`take_stream`, everything else released)."""
        ensure_compatible()
        _LoopLag.acquire()
        self._lag_held = True
        self._started_t = time.monotonic()
        opts = self._opts
        try:
            granted = (await self._stream.join(self._codec, opts.fallback_codecs)).upper()
            if granted != self._codec:
                DECLINED.labels(RelayDecline.CODEC_NOT_GRANTED).inc()
                log.info("relay_declined", granted=granted, codec=self._codec)
                self._declined = True
                await self.aclose()
                return RelayDecline.CODEC_NOT_GRANTED
            await self._stream.publish(self._codec)
            if hasattr(self._stream, "on_publish_quality"):
                cast(Any, self._stream).on_publish_quality = self._on_publish_quality
            if hasattr(self._stream, "on_send_video"):
                cast(Any, self._stream).on_send_video = self._on_send_video
            self._fwd["video"] = _Forwarder(
                "video",
                SenderTap(
                    self._stream.video_sender,
                    lambda seq: self._fwd["video"].retransmit(seq),
                    self._on_downstream_keyframe_request,
                    first_sequence_number(self._rng),
                ),
                opts.rtx_history,
            )
            self._fwd["audio"] = _Forwarder(
                "audio",
                SenderTap(
                    self._stream.audio_sender,
                    lambda seq: self._fwd["audio"].retransmit(seq),
                    lambda: None,
                    first_sequence_number(self._rng),
                ),
                opts.rtx_history,
            )
            video_codec = self._fwd["video"].tap.codec.mimeType.split("/")[-1].upper()
            if video_codec != self._codec:
                raise BridgeError(
                    ErrorCode.STREAM_FAILED,
                    f"the Stream side negotiated {video_codec}, not {self._codec}",
                )
            if self._playout:
                self._tasks.spawn(self._pump_playout(), "relay_playout_pump")
            elif opts.video_hold_ms > 0:
                self._tasks.spawn(self._pump_hold(), "relay_hold_pump")
            warm = self._warm
            if warm is not None and warm.ready and warm.codec == self._codec:
                subscriber = self._adopt_warm(warm)
            else:
                subscriber = self._subscriber = LiveKitSubscriber(
                    SubscriberOptions(
                        avatar_identity=opts.avatar_identity,
                        connect_timeout_s=opts.connect_timeout_s,
                        avatar_join_timeout_s=opts.avatar_join_timeout_s,
                        single_peer_connection=opts.single_peer_connection,
                        video_layer=layer_request(opts.video_size),
                    ),
                    self._on_receiver,
                    self._events,
                    self._on_failure,
                )
                await subscriber.start(room.livekit_url, room.livekit_token)
            upstream = self._upstream_video_codec()
            if upstream is not None and upstream != self._codec:
                raise BridgeError(
                    ErrorCode.LIVEKIT_FAILED,
                    f"the avatar sends {upstream}, the relay was set up for {self._codec}",
                )
            announced = subscriber.video_size
            if declines_announced_size(
                require_match=opts.require_size, announced=announced, wanted=opts.video_size
            ):
                DECLINED.labels(RelayDecline.SIZE_ANNOUNCED).inc()
                log.info("relay_declined", announced=announced, wanted=opts.video_size)
                self._declined = True
                await self.aclose()
                return RelayDecline.SIZE_ANNOUNCED
            self._tasks.spawn(self._ask_for_keyframe(), "relay_keyframe_request")
        except BaseException:
            await self.aclose()
            raise
        log.info(
            "relay_started",
            codec=self._codec,
            hold_ms=opts.video_hold_ms,
            playout_hold_ms=opts.playout_hold_ms,
            setup_ms=round(1000 * (time.monotonic() - self._started_t)),
        )
        return None

    def _adopt_warm(self, warm: WarmUpstream) -> LiveKitSubscriber:
        """Take a pooled avatar's subscription (already in its room, its first keyframe seen):
        its receivers feed the forwarders from now on; a keyframe is asked for at once (the
        spawned request below), since the avatar's last one went by while warm."""
        self._subscriber = warm.subscriber
        handlers: dict[str, tuple[RtpHandler, SrHandler]] = {}
        for kind, tap in warm.taps.items():
            fwd = self._fwd.get(kind)
            if fwd is not None:
                self._receiver_taps[kind] = tap
                handlers[kind] = (self._upstream_rtp(kind, tap, fwd), self._upstream_sr(fwd))
        warm.adopt(self._on_receiver, self._events, self._on_failure, handlers)
        self._video.switch_upstream(warm.video_ssrc)  # a PLI can go out before a packet came
        log.info("relay_warm_room_adopted", video_ssrc=warm.video_ssrc, held=warm.held_keyframe)
        return warm.subscriber

    def _upstream_rtp(self, kind: str, tap: ReceiverTap, fwd: _Forwarder) -> RtpHandler:
        async def on_rtp(packet: RtpPacket, codec: RTCRtpCodecParameters, arrival: int) -> None:
            if self._receiver_taps.get(kind) is not tap:
                # A receiver a LiveKit rejoin replaced: its last packets, still queued on a busy
                # loop, would rebase the stream back onto the old SSRC, out of order.
                DROPPED.labels(kind, "replaced_receiver").inc()
                return
            await self._on_rtp(fwd, packet)

        return on_rtp

    async def run(self) -> None:
        """Until the relay is closed (the media flows from the receive path)."""
        await self._closed.wait()

    # -- barge-in (bridge/barge_in.py): the avatar's old speech in flight is not forwarded -------

    def interrupt(self) -> None:
        """INTERRUPT: the avatar's audio is sent as silence until its next turn starts. Video
        goes on (the avatar's mouth closes within the same in-flight time)."""
        self._speech.interrupt(time.monotonic())
        # What the playout pacing still holds is old speech too: it leaves as silence, or the
        # hold would add itself to the barge-in time.
        buf = self._playout.get("audio")
        held = [p for p in buf.held() if self._silence(p)] if buf is not None else []
        log.info("relay_speech_muted", held_silenced=len(held))

    def speak_started(self) -> None:
        """The avatar started a turn: forward its audio again."""
        if self._speech.speak_started(time.monotonic()):
            self._speech_resumed("speak_started")

    def _admit_audio(self, fwd: _Forwarder, packet: RtpPacket) -> bool:
        """Whether to send ``packet``; muted, its payload is replaced by silence of the same
        duration (sequence numbers and timestamps untouched), or, not being Opus, dropped."""
        was_muted = self._speech.muted
        if self._speech.admit(time.monotonic()):
            if was_muted:
                self._speech_resumed("timeout")
            return True
        if self._silence(packet):
            return True
        self._audio_gap = True
        return False

    def _silence(self, packet: RtpPacket) -> bool:
        """Replace an audio packet's payload by silence of the same duration; False when it
        is not Opus (then it must be dropped). Counted as old speech kept from the call."""
        metrics.BARGE_IN_DROPPED.labels(path="relay").inc()
        silence = opus_silence_like(packet.payload)
        if silence is None:
            return False
        packet.payload = silence
        if packet.extensions.audio_level is not None:
            packet.extensions.audio_level = (False, 127)  # -127 dBov: silence
        return True

    def _speech_resumed(self, why: str) -> None:
        fwd = self._fwd.get("audio")
        if self._audio_gap and fwd is not None:
            # Packets were dropped: rebase on the next one, as after a video pause (sequence
            # numbers go on without a gap, timestamps advance by the time muted).
            fwd.rewriter.upstream_ssrc = None
        self._audio_gap = False
        log.info("relay_speech_resumed", why=why, silenced=self._speech.dropped)

    def take_stream(self) -> StreamSide | None:
        """After a decline: the joined Stream session, now the caller's to use or close."""
        if not self._declined or self._stream_taken:
            return None
        self._stream_taken = True
        return self._stream

    async def aclose(self) -> None:
        """Leave LiveKit, then the call. Idempotent; never raises."""
        if self._close_task is None:
            self._close_task = asyncio.get_running_loop().create_task(self._close())
        await asyncio.shield(self._close_task)

    async def _close(self) -> None:
        await self._tasks.aclose()
        if self._warm is not None:
            await self._warm.aclose()  # not adopted (a decline before the join): leave it
        subscribers = [*self._retired, self._subscriber]
        if self._prepared is not None and not self._prepared.committed:
            subscribers.append(self._prepared.subscriber)
        for sub in subscribers:
            if sub is not None:
                with contextlib.suppress(Exception):
                    await sub.aclose()
        if not self._declined:
            with contextlib.suppress(Exception):
                await self._stream.aclose()
        self._video.close()
        for buf in self._playout.values():
            buf.drain()
        if self._lag_held:
            self._lag_held = False
            await _LoopLag.release()
        self._closed.set()
        stats = self.stats()
        UPSTREAM_NACKS.inc(stats["upstream_nacks"])
        UPSTREAM_NACK_RETRIES.inc(stats["upstream_nack_retries"])
        UPSTREAM_NACKS_GIVEN_UP.inc(stats["upstream_nacks_given_up"])
        log.info("relay_closed", **stats)

    @property
    def keyframe_delays_ms(self) -> list[float]:
        """From each keyframe request upstream to the keyframe that answered it."""
        return self._video.keyframe_delays_ms

    def stats(self) -> dict[str, Any]:
        video = self._fwd.get("video")
        audio = self._fwd.get("audio")
        vt = self._receiver_taps.get("video")
        retired = self._retired_taps
        policy = self._video
        first_key_t = policy.first_keyframe_t
        return {
            "video_sent": video.sent if video else 0,
            "video_frames": video.frames if video else 0,
            "audio_sent": audio.sent if audio else 0,
            "keyframes": policy.gate.keyframes,
            "waiting_for_keyframe_dropped": policy.gate.dropped,
            "waiting_for_size_dropped": policy.size_dropped,
            # Late packets of a stream rebased away from, and from before the restart keyframe.
            "stale_stream_dropped": policy.stale_dropped,
            "audio_stale_stream_dropped": self._audio_stale_dropped,
            "before_keyframe_dropped": policy.before_keyframe_dropped,
            "video_size": None if policy.size is None else f"{policy.size[0]}x{policy.size[1]}",
            "video_size_changes": policy.size_changes,
            "rtx_sent": video.history.hits if video else 0,
            "rtx_missed": video.history.misses if video else 0,
            "upstream_nacks": retired.nacks + (vt.nacks_sent if vt else 0),
            "upstream_rtx": retired.rtx + (vt.rtx_received if vt else 0),
            "upstream_nack_retries": retired.nack_retries + (vt.nack.retries if vt else 0),
            "upstream_nacks_given_up": retired.nacks_given_up + (vt.nack.given_up if vt else 0),
            "pli_sent": policy.pli.allowed,
            "pli_suppressed": policy.pli.suppressed,
            "hold_released_early": policy.hold.released_early,
            "playout": {kind: buf.stats.as_dict() for kind, buf in self._playout.items()},
            "video_cadence": {
                "steady": self._cadence.steady,
                "frame_deviation_ms": (
                    None
                    if self._cadence.deviation_ms is None
                    else round(self._cadence.deviation_ms, 1)
                ),
                "hold_ms": self._cadence.hold_ms if self._playout else self._opts.video_hold_ms,
            },
            "sync": None if self._clock is None else self._clock.stats(),
            "video_paused_dropped": policy.paused_dropped,
            "rebases": video.rewriter.rebases if video else 0,
            "barge_in": self._speech.stats(),
            "decoder_threads": sum(t.decoder_running for t in self._receiver_taps.values()),
            "first_keyframe_s": (
                None if first_key_t is None else round(first_key_t - self._started_t, 3)
            ),
        }

    # -- avatar handover (bridge.media_path.AvatarSwitch) -----------------------------------------
    # The next avatar's room is joined while the current one is relayed; its packets are dropped
    # (noting its first keyframe) until the switch. The switch is made before the old avatar is
    # cut: a keyframe is asked of the new one and the old one goes on being relayed until it
    # arrives (at most _SWITCH_WAIT_S); at that keyframe the new receivers become the relay's
    # upstream and the rewriters rebase (RtpRewriter: same SSRC, sequence numbers on without a
    # gap, timestamps on by the time that passed). The call sees one sender and one track per
    # kind, and no picture gap beyond a frame interval or so.

    @property
    def can_switch(self) -> bool:
        return self._subscriber is not None and not self._closed.is_set()

    @property
    def avatar_alive(self) -> bool:
        return self._subscriber is not None and not self._subscriber.failed

    async def prepare_avatar(
        self, room: AvatarRoom, timeout_s: float, warm: WarmRoom | None = None
    ) -> PreparedRelay:
        """Join the next avatar's room and wait for its first keyframe, forwarding nothing; or,
        given a pooled room joined for the relay (its first keyframe seen), take it over."""
        if isinstance(warm, WarmUpstream) and warm.ready and warm.codec == self._codec:
            return self._prepare_warm(warm)
        if warm is not None:
            await warm.aclose()  # not adoptable (failed, or another codec): joined cold
        opts = self._opts
        prepared = PreparedRelay(
            LiveKitSubscriber(
                SubscriberOptions(
                    avatar_identity=opts.avatar_identity,
                    connect_timeout_s=opts.connect_timeout_s,
                    avatar_join_timeout_s=opts.avatar_join_timeout_s,
                    single_peer_connection=opts.single_peer_connection,
                ),
                lambda kind, receiver, sid: self._on_receiver(kind, receiver, sid, prepared),
                self._events,
                self._on_failure,
            )
        )
        self._prepared = prepared
        try:
            async with asyncio.timeout(timeout_s):
                await prepared.subscriber.start(room.livekit_url, room.livekit_token)
                await prepared.keyframe.wait()
        except BaseException as exc:
            self._prepared = None
            with contextlib.suppress(Exception):
                await prepared.subscriber.aclose()
            if isinstance(exc, TimeoutError):
                raise BridgeError(
                    ErrorCode.LIVEKIT_FAILED, "the next avatar sent no keyframe in time"
                ) from None
            raise
        return prepared

    def _prepare_warm(self, warm: WarmUpstream) -> PreparedRelay:
        """The next avatar's subscription is a pooled room's: its receivers' packets go through
        the same gate as a cold prepared one's (dropped until the switch at a keyframe)."""
        prepared = PreparedRelay(warm.subscriber, video_ssrc=warm.video_ssrc)
        prepared.keyframe.set()  # the warm room saw one; the switch asks for a fresh one
        handlers: dict[str, tuple[RtpHandler, SrHandler]] = {}
        for kind, tap in warm.taps.items():
            fwd = self._fwd.get(kind)
            if fwd is None:
                continue
            prepared.taps[kind] = tap
            handlers[kind] = (
                self._next_rtp(kind, tap, fwd, prepared),
                functools.partial(self._on_next_sr, fwd, prepared),
            )
        warm.adopt(
            lambda kind, receiver, sid: self._on_receiver(kind, receiver, sid, prepared),
            self._events,
            self._on_failure,
            handlers,
        )
        self._prepared = prepared
        log.info("relay_warm_room_prepared", video_ssrc=warm.video_ssrc)
        return prepared

    def _on_next_receiver(
        self, kind: str, receiver: RTCRtpReceiver, fwd: _Forwarder, prepared: PreparedRelay
    ) -> None:
        tap = ReceiverTap(
            receiver,
            lambda p, c, a: on_rtp(p, c, a),
            lambda sr: self._on_next_sr(fwd, prepared, sr),
        )
        on_rtp = self._next_rtp(kind, tap, fwd, prepared)
        prepared.taps[kind] = tap

    def _next_rtp(
        self, kind: str, tap: ReceiverTap, fwd: _Forwarder, prepared: PreparedRelay
    ) -> RtpHandler:
        """The next avatar's packets: dropped until the switch (noting its keyframes), made at
        its first keyframe after the commit; then relayed."""

        async def on_rtp(packet: RtpPacket, codec: RTCRtpCodecParameters, arrival: int) -> None:
            if prepared.committed and self._receiver_taps.get(kind) is tap:
                await self._on_rtp(fwd, packet)
                return
            if prepared.committed or prepared.taps.get(kind) is not tap:
                DROPPED.labels(kind, "replaced_receiver").inc()
                return
            if kind == "video":
                prepared.video_ssrc = packet.ssrc
                if self._video.gate.is_key(packet.payload):
                    prepared.keyframe.set()
                    if prepared.switch_asked:
                        prepared.keyframe_t = time.monotonic()
                        prepared.old_in_t = self._video_in_t
                        self._swap(prepared, at_keyframe=True)  # the switch, at its keyframe
                        await self._on_rtp(fwd, packet)
                        return
            DROPPED.labels(kind, "next_avatar_gated").inc()

        return on_rtp

    def _on_next_sr(self, fwd: _Forwarder, prepared: PreparedRelay, sr: RtcpSrPacket) -> None:
        self._clock_sr(fwd, sr)  # kept per SSRC: the mapping is ready when the switch comes
        if prepared.committed:
            fwd.on_sr(sr)  # translated once the rewriter has rebased onto this stream

    def commit_avatar(
        self, prepared: PreparedRelay, *, drain_s: float = 0.0
    ) -> Callable[[], float | None]:
        """Switch to the prepared avatar at its next keyframe, asked for now (the old one is
        relayed until then, which drains its last words in flight whatever ``drain_s``:
        they come the way the keyframe does; :meth:`release_retired` waits for the switch).
        Returns a function giving the measured picture gap in ms (the old avatar's last video
        packet sent to the new one's first) once known."""
        prepared.switch_asked = True
        prepared.commit_t = time.monotonic()
        self._switching = prepared
        tap, ssrc = prepared.taps.get("video"), prepared.video_ssrc
        if tap is not None and ssrc is not None:
            KEYFRAME_REQUESTS.labels("handover", "sent").inc()
            self._tasks.spawn(tap.send_pli(ssrc), "relay_pli")
        video = self._fwd["video"]

        logged = False

        def gap_ms() -> float | None:
            nonlocal logged
            first, last_old = video.switch_first_new_t, video.switch_last_old_t
            if not prepared.committed or first is None or not last_old:
                return None
            if not logged:
                logged = True
                key_t = prepared.keyframe_t
                # Where the gap comes from: the keyframe's round trip, the old avatar's last
                # frame relative to it, and the new keyframe's way through the playout buffer.
                log.info(
                    "relay_avatar_switched",
                    gap_ms=round(1000 * (first - last_old), 1),
                    keyframe_rtt_ms=None
                    if key_t is None
                    else round(1000 * (key_t - prepared.commit_t), 1),
                    old_last_sent_before_keyframe_ms=(
                        None if key_t is None else round(1000 * (key_t - last_old), 1)
                    ),
                    keyframe_in_to_sent_ms=(
                        None if key_t is None else round(1000 * (first - key_t), 1)
                    ),
                    old_last_in_before_keyframe_ms=(
                        None if key_t is None else round(1000 * (key_t - prepared.old_in_t), 1)
                    ),
                    at_keyframe=key_t is not None,
                )
            return 1000.0 * (first - last_old)

        return gap_ms

    def _swap(self, prepared: PreparedRelay, *, at_keyframe: bool) -> None:
        """The prepared avatar's receivers become the upstream (no packet of the old one is
        forwarded after this)."""
        if prepared.committed:
            return
        if self._subscriber is not None:
            self._retired.append(self._subscriber)
        for old in self._receiver_taps.values():
            old.retire()
            self._retired_taps.add(old)
        self._subscriber = prepared.subscriber
        self._receiver_taps = dict(prepared.taps)
        prepared.swapped.set()
        self._prepared = None
        for fwd in self._fwd.values():
            fwd.mark_switch()
        if self._video.switch_upstream(prepared.video_ssrc) and not at_keyframe:
            self._request_keyframe("handover")
            self._tasks.spawn(self._ask_for_keyframe(), "relay_keyframe_request")

    async def release_retired(self) -> None:
        """Once the switch is made (its keyframe came, or after _SWITCH_WAIT_S: then video waits
        for it), leave the old avatars' rooms (before their LiveAvatar sessions are stopped, so
        that their leaving is not taken for a failure)."""
        prepared, self._switching = self._switching, None
        if prepared is not None and not prepared.committed:
            with contextlib.suppress(TimeoutError):  # a keyframe is a PLI round trip away
                await asyncio.wait_for(prepared.swapped.wait(), _SWITCH_WAIT_S)
            if not prepared.committed:
                log.info("relay_handover_no_keyframe_yet", waited_s=_SWITCH_WAIT_S)
                self._swap(prepared, at_keyframe=False)
        retired, self._retired = self._retired, []
        for sub in retired:
            with contextlib.suppress(Exception):
                await sub.aclose()

    # -- upstream --------------------------------------------------------------------------------

    def _on_receiver(
        self, kind: str, receiver: RTCRtpReceiver, sid: str, prepared: PreparedRelay | None = None
    ) -> None:
        fwd = self._fwd.get(kind)
        if fwd is None:
            return
        if prepared is not None and not prepared.committed:
            self._on_next_receiver(kind, receiver, fwd, prepared)
            return

        tap = ReceiverTap(receiver, lambda p, c, a: on_rtp(p, c, a), self._upstream_sr(fwd))
        on_rtp = self._upstream_rtp(kind, tap, fwd)
        old = self._receiver_taps.get(kind)
        self._receiver_taps[kind] = tap
        if old is not None:
            old.retire()
            self._retired_taps.add(old)
        if kind == "video" and self._video.new_subscription():
            self._tasks.spawn(self._ask_for_keyframe(), "relay_keyframe_request")

    def _upstream_sr(self, fwd: _Forwarder) -> SrHandler:
        def on_sr(sr: RtcpSrPacket) -> None:
            self._clock_sr(fwd, sr)
            fwd.on_sr(sr)

        return on_sr

    def _clock_sr(self, fwd: _Forwarder, sr: RtcpSrPacket) -> None:
        if self._clock is not None:
            info = sr.sender_info
            self._clock.on_sr(fwd.kind, sr.ssrc, info.ntp_timestamp, info.rtp_timestamp)
            SYNC_LIFT.labels(fwd.kind).observe(self._clock.applied(fwd.kind))

    async def _on_rtp(self, fwd: _Forwarder, packet: RtpPacket) -> None:
        if fwd.kind != "video":
            if self._audio_streams.is_stale(packet.ssrc):
                self._audio_stale_dropped += 1
                DROPPED.labels(fwd.kind, "stale_stream").inc()
                return
            self._audio_streams.follow(packet.ssrc)
            loud = len(packet.payload) >= OPUS_LOUD_BYTES
            self._onset_in.feed(loud)
            if self._admit_audio(fwd, packet):  # silenced, if muted
                await self._forward(fwd, packet)
            return
        now = time.monotonic()
        if packet.marker:
            self._video_in_t = now  # the current avatar's last complete frame in (a switch's trace)
        verdict = self._video.admit(packet, now)
        if verdict.keyframe_request is not None:
            self._request_keyframe(verdict.keyframe_request)
        if verdict.dropped is not None:
            DROPPED.labels(fwd.kind, verdict.dropped).inc()
            return
        if verdict.first_keyframe:
            self._events(
                "avatar_ready",
                since_start_ms=round(1000 * (now - self._started_t)),
                media_path="relay",
                codec=self._codec,
            )
        if verdict.size_changed is not None:
            SIZE_CHANGES.inc()
            log.info(
                "relay_video_size_changed",
                size=f"{verdict.size_changed[0]}x{verdict.size_changed[1]}",
                changes=self._video.size_changes,
            )
        if verdict.released_early:
            HOLD_EARLY.inc(verdict.released_early)
        for out in verdict.send:
            await self._forward(fwd, out)
        if verdict.held:
            self._hold_wake.set()

    async def _forward(self, fwd: _Forwarder, packet: RtpPacket) -> None:
        """Into the playout buffer when pacing (what it returns leaves now), else out."""
        buf = self._playout.get(fwd.kind)
        if buf is None:
            await self._send_out(fwd, packet)
            return
        now = time.monotonic()
        late, early, rebases = buf.stats.late, buf.stats.released_early, buf.stats.rebases
        # One sender at a time per kind (this and the pump): a late packet sent from here must
        # not overtake packets the pump has taken out and is still sending.
        lift = 0.0 if self._clock is None else self._clock.lift(fwd.kind, now)
        async with self._send_locks[fwd.kind]:
            for out in buf.push(packet, now, lift):
                await self._send_out(fwd, out)
        if fwd.kind == "video" and buf.step_count != self._cadence_steps:
            self._cadence_steps = buf.step_count
            self._follow_cadence(buf)
        if buf.stats.late != late:
            PLAYOUT_LATE.labels(fwd.kind).inc(buf.stats.late - late)
        if buf.stats.released_early != early:
            PLAYOUT_EARLY.labels(fwd.kind).inc(buf.stats.released_early - early)
        if buf.stats.rebases != rebases:
            PLAYOUT_REBASES.labels(fwd.kind).inc(buf.stats.rebases - rebases)
        due = buf.next_due()
        if due is not None and due < self._pump_due:
            self._hold_wake.set()  # earlier than what the pump sleeps for (or it is idle)

    def _follow_cadence(self, buf: PlayoutBuffer[RtpPacket]) -> None:
        hold_ms = self._cadence.update(buf.steps_s)
        if hold_ms is None:
            return
        buf.set_offset(hold_ms / 1000.0)
        CADENCE_CHANGES.labels(str(self._cadence.steady).lower()).inc()
        dev = self._cadence.deviation_ms
        log.info(
            "relay_video_cadence",
            steady=self._cadence.steady,
            frame_deviation_ms=None if dev is None else round(dev, 1),
            hold_ms=hold_ms,
        )

    async def _send_out(self, fwd: _Forwarder, packet: RtpPacket) -> None:
        await fwd.send(packet)
        if fwd.kind == "audio":
            self._onset_out.feed(len(packet.payload) >= OPUS_LOUD_BYTES)

    def _upstream_video_codec(self) -> str | None:
        tap = self._receiver_taps.get("video")
        if tap is None:
            return None
        names = {c.mimeType.split("/")[-1].upper() for c in tap.codecs()}
        if self._codec in names:
            return self._codec
        return next(iter(sorted(names)), None)

    def _on_publish_quality(self, active: bool, max_bitrate: int) -> None:
        # The avatar publishes one layer and we have no encoder: the bitrate cannot be steered,
        # but a layer switched off is honoured by not sending it.
        if active:
            log.info(
                "relay_publish_quality_bitrate_ignored",
                max_bitrate=max_bitrate,
                why="single layer from the avatar, no encoder to steer",
            )
        self._set_video_blocked("layer_paused", blocked=not active)

    def _on_send_video(self, allowed: bool) -> None:
        self._set_video_blocked("grant_revoked", blocked=not allowed)

    def _set_video_blocked(self, reason: str, *, blocked: bool) -> None:
        change = self._video.set_blocked(reason, blocked=blocked)
        if blocked and change.changed:
            VIDEO_PAUSES.labels(reason).inc()
        if change.paused:
            held = self._playout["video"].drain() if "video" in self._playout else []
            self._video.paused_dropped += len(held)  # not sent: the SFU asked us to stop now
            log.info(
                "relay_video_paused", reason=reason, held_dropped=change.held_dropped + len(held)
            )
        fwd = self._fwd.get("video")
        if change.resumed and fwd is not None:
            # Rebase on the next packet: sequence numbers go on without a gap (nothing for the
            # SFU to NACK) and timestamps advance by the pause.
            fwd.rewriter.upstream_ssrc = None
            log.info("relay_video_resumed", reason=reason, dropped=self._video.paused_dropped)
            self._tasks.spawn(self._ask_for_keyframe(), "relay_keyframe_request")

    def _on_downstream_keyframe_request(self) -> None:
        self._request_keyframe("stream")

    def _request_keyframe(self, origin: str) -> None:
        tap = self._receiver_taps.get("video")
        ask = self._video.ask_keyframe(time.monotonic(), have_upstream=tap is not None)
        KEYFRAME_REQUESTS.labels(origin, ask.outcome).inc()
        ssrc = self._video.upstream_ssrc
        if ask.send and tap is not None and ssrc is not None:
            self._tasks.spawn(tap.send_pli(ssrc), "relay_pli")

    async def _ask_for_keyframe(self) -> None:
        """PLI upstream until the video gate opens (the avatar's first keyframe was missed)."""
        deadline = time.monotonic() + self._opts.keyframe_timeout_s
        while self._video.wants_keyframe():
            if time.monotonic() > deadline:
                log.warning("relay_no_keyframe", waited_s=self._opts.keyframe_timeout_s)
                return
            self._request_keyframe("start")
            await asyncio.sleep(self._opts.keyframe_retry_s)

    # -- downstream ------------------------------------------------------------------------------

    async def _pump_playout(self) -> None:
        """Sends what the playout buffers release, when it is due (one timer per session)."""
        while True:
            dues = [(d, k) for k, b in self._playout.items() if (d := b.next_due()) is not None]
            self._pump_due = min(dues)[0] if dues else float("inf")
            delay = self._pump_due - time.monotonic()
            if delay > 0:
                self._hold_wake.clear()
                # Woken early by a push whose packet is due before (the first, a late one).
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(None if not dues else delay):
                        await self._hold_wake.wait()
                continue
            for kind, buf in self._playout.items():
                fwd = self._fwd[kind]
                async with self._send_locks[kind]:
                    for packet in buf.pop_due(time.monotonic()):
                        await self._send_out(fwd, packet)

    async def _pump_hold(self) -> None:
        fwd = self._fwd["video"]
        while True:
            due = self._video.next_due()
            if due is None:
                self._hold_wake.clear()
                await self._hold_wake.wait()
                continue
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            for packet in self._video.due(time.monotonic()):
                await fwd.send(packet)
