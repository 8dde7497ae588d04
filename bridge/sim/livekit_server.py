"""A LiveKit-compatible server that the real ``livekit`` SDK joins; aiortc publishes the avatar.

LiveAvatar provisions a LiveKit room per session; its stand-in calls
:meth:`LiveKitStandIn.create_room` with the rendered tracks, hands the daemon a token from
:meth:`LiveKitStandIn.mint_token`, and ends the room with :meth:`LiveKitStandIn.close_room`.
Every subscriber that joins gets its own aiortc peer connection, fed from one
:class:`aiortc.contrib.media.MediaRelay` per room.

Signalling is LiveKit's protobuf-over-WebSocket protocol (livekit-protocol):

* ``/rtc/v1`` (single peer connection, the SDK's default): the join request arrives gzipped in the
  query, the client is the offerer and the server answers with ``mid_to_track_id``.
* ``/rtc`` (legacy, two peer connections): the server offers on the subscriber connection.
* ``/rtc/validate`` and ``/rtc/v1/validate``: token check, the SDK's diagnostic after a failed dial.

What the SDK insists on (see docs/specs livekit-standin.md): participant sids start ``PA_``, track
sids ``TR_``; the msid is ``<participant sid>|<track sid>``; ping interval and timeout are non-zero;
``TrackInfo.type`` matches the media kind on its mid.

A signalling WebSocket that closes without ``leave`` leaves its participant parked for
``ping_timeout_s``, so the SDK can resume (``reconnect=true``); an ICE-restart offer is answered
on the same aiortc connection (aiortc keeps its ICE credentials, libwebrtc keeps the old pair).

Run alone with a synthetic room:  ``python -m bridge.sim.livekit_server --port 7880``
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import fractions
import functools
import gzip
import json
import math
import multiprocessing
import random
import secrets
import time
from collections import Counter, OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import av
import numpy as np
import structlog
from aiohttp import WSMsgType, web
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.clock import current_ms
from aiortc.codecs.h264 import H264Encoder
from aiortc.codecs.opus import OpusEncoder
from aiortc.codecs.vpx import Vp8Encoder, number_of_threads
from aiortc.contrib.media import MediaRelay
from aiortc.mediastreams import MediaStreamError
from aiortc.sdp import candidate_from_sdp
from av.frame import Frame
from av.packet import Packet
from livekit import api
from livekit.protocol import models as lkm
from livekit.protocol import rtc as lkr
from prometheus_client import Counter as PromCounter
from prometheus_client import Gauge

from bridge import negotiation_guard
from bridge.sim import marks
from bridge.sim.livekit_forward import (
    ForwardSink,
    PendingTrack,
    PublishedTrack,
    PublisherTap,
    SilentTrack,
    accept_simulcast,
    sections_by_mid,
)

__all__ = ["Faults", "LiveKitStandIn", "StandInCounters", "SyntheticVideoTrack", "ToneAudioTrack"]

log = structlog.get_logger(__name__)

SERVER_VERSION = "1.9.0"
SERVER_PROTOCOL = 16
SEND_TIMEOUT_S = 5.0
PC_CLOSE_TIMEOUT_S = 5.0
VIDEO_CODECS = ("VP8", "H264")
PATTERNS = ("bar", "ramp")

SIM_ROOMS = Gauge("sim_livekit_rooms", "Rooms open in the LiveKit stand-in")
SIM_PARTICIPANTS = Gauge(
    "sim_livekit_participants", "Subscribers connected to the LiveKit stand-in"
)
SIM_SIGNAL_REQUESTS = PromCounter(
    "sim_livekit_signal_requests_total", "Signal requests received", ["message"]
)
SIM_JOINS = PromCounter("sim_livekit_joins_total", "WebSocket joins by outcome", ["outcome"])
SIM_ENCODER_SKIPPED = PromCounter(
    "sim_livekit_encoder_skipped_frames_total",
    "Avatar frames a subscriber's encoder never got because it fell behind (never sent)",
    ["kind"],
)
# Frame numbers a tap remembers for its subscribers' inputs (a lagging encoder is a frame or a
# few behind, never this many).
_TAP_NUMBERS = 64


def _sid(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(6)}"


@dataclass
class StandInCounters:
    """Plain counters for tests (the prometheus objects are process-wide, these are per server)."""

    rooms_created: int = 0
    rooms_closed: int = 0
    joins: int = 0
    joins_by_room: Counter[str] = field(default_factory=Counter)  # per room name
    # Joins and resumes by signalling path ("/rtc/v1" single PC, "/rtc" legacy): which mode a
    # client chose, as the server saw it.
    signal_paths: Counter[str] = field(default_factory=Counter)
    resumes: int = 0
    rejected: int = 0
    leaves: int = 0
    participants_closed: int = 0
    signal_requests: Counter[str] = field(default_factory=Counter)
    # Subscribers per video codec seen on the wire: the payload type of each avatar video packet
    # sent, mapped to a codec through that peer connection's negotiated SDP (a subscriber whose
    # codec changed mid-call counts under both).
    video_codecs: Counter[str] = field(default_factory=Counter)
    video_packets_by_codec: Counter[str] = field(default_factory=Counter)
    # Video codecs named in the avatar's sections of every SDP the stand-in sent.
    sdp_video_codecs: set[str] = field(default_factory=set)
    # Negotiations completed after a participant's first (client re-offers, server re-offers).
    renegotiations: int = 0
    # PLI/FIR received from subscribers for the avatar's video (each forces a keyframe).
    keyframe_requests: int = 0
    # Avatar media packets (not retransmissions) sent, and dropped by the loss knobs.
    packets_sent: int = 0
    video_packets_sent: int = 0  # by the busiest subscriber transport (video_seen)
    packets_dropped: int = 0
    video_packets_dropped: int = 0
    video_rtx_dropped: int = 0  # first retransmissions dropped (Faults.drop_first_video_rtx)
    # Packets of a killed connection's video sent again on its rejoin's connection
    # (Faults.late_old_keyframe_after_rejoin).
    late_old_video_sent: int = 0
    # Subscriber offers held back because the previous one was not answered yet (legacy mode),
    # and signalling requests whose handling raised (an answer aiortc refused, ...).
    offers_deferred: int = 0
    signal_request_failures: int = 0


def _rtx_original_seq(data: bytes) -> int | None:
    """The original sequence number an RTX packet carries (RFC 4588: the payload's first two
    bytes, after the RTP header, its CSRCs and its extension)."""
    offset = 12 + 4 * (data[0] & 0x0F)
    if data[0] & 0x10 and len(data) >= offset + 4:
        offset += 4 + 4 * int.from_bytes(data[offset + 2 : offset + 4], "big")
    return int.from_bytes(data[offset : offset + 2], "big") if len(data) >= offset + 2 else None


class _Tap(MediaStreamTrack):
    """Forwards a source track into the room's relay and can be stopped without stopping it.

    aiortc's MediaRelay reads its source until the source ends; the tracks belong to the
    renderer, so each room reads them through a tap that it ends on close. Also remembers the
    video frame size for ``TrackInfo.width/height``.
    """

    def __init__(self, source: MediaStreamTrack) -> None:
        super().__init__()
        self.kind = source.kind
        self._source = source
        self._stopped: asyncio.Future[None] | None = None
        self._idle = asyncio.Event()  # set while no recv() is in flight
        self._idle.set()
        self.width = 0
        self.height = 0
        self.produced = 0  # frames read from the source
        self._numbers: OrderedDict[int, int] = OrderedDict()  # pts -> its number, recent ones

    def number_of(self, frame: Frame | Packet) -> int | None:
        """The number (1, 2, ...) of a recent frame this tap produced, by its pts."""
        return None if frame.pts is None else self._numbers.get(frame.pts)

    async def recv(self) -> Frame | Packet:
        if self.readyState != "live":
            raise MediaStreamError
        if self._stopped is None:
            self._stopped = asyncio.get_running_loop().create_future()
        self._idle.clear()
        try:
            pending = asyncio.ensure_future(self._source.recv())
            await asyncio.wait((pending, self._stopped), return_when=asyncio.FIRST_COMPLETED)
            if not pending.done():
                pending.cancel()
                with contextlib.suppress(asyncio.CancelledError, MediaStreamError):
                    await pending
                raise MediaStreamError
            frame = pending.result()
        finally:
            self._idle.set()
        if isinstance(frame, av.VideoFrame):
            self.width, self.height = frame.width, frame.height
        self.produced += 1
        if frame.pts is not None:
            self._numbers[frame.pts] = self.produced
            if len(self._numbers) > _TAP_NUMBERS:
                self._numbers.popitem(last=False)
        return frame

    def stop(self) -> None:
        if self._stopped is not None and not self._stopped.done():
            self._stopped.set_result(None)
        super().stop()

    async def wait_idle(self, timeout_s: float) -> None:
        """Wait until no read of the source is in flight (after :meth:`stop`)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._idle.wait()
                # One more turn so the relay's worker sees the end of the track and exits.
                await asyncio.sleep(0)


class _LiveEncoderInput(MediaStreamTrack):
    """One subscriber's live view of a tap (an unbuffered MediaRelay proxy), counting the frames
    its encoder never got.

    aiortc's unbuffered proxy keeps only the newest frame: when this subscriber's encoder falls
    behind (a loaded machine), older frames are replaced unseen and never sent. That is how a
    real-time source behaves; counting it (``SIM_ENCODER_SKIPPED``) lets a test tell frames
    never sent from frames lost downstream.
    """

    def __init__(self, proxy: MediaStreamTrack, tap: _Tap) -> None:
        super().__init__()
        self.kind = proxy.kind
        self._proxy = proxy
        self._tap = tap
        self._last: int | None = None

    async def recv(self) -> Frame | Packet:
        frame = await self._proxy.recv()
        n = self._tap.number_of(frame)
        if n is not None:
            if self._last is not None and n > self._last + 1:
                SIM_ENCODER_SKIPPED.labels(self.kind).inc(n - self._last - 1)
            self._last = n
        return frame

    def stop(self) -> None:
        self._proxy.stop()
        super().stop()


class _SyntheticVp8(Vp8Encoder):
    """aiortc's VP8 encoder (its settings, aiortc 1.14.0) without the temporal denoiser.

    aiortc asks libvpx for ``noise-sensitivity 4`` (aggressive denoising, for camera noise).
    On the synthetic picture, which has none, a loaded machine's encode (realtime deadline,
    adaptive speed) now and then left blocks of an older frame in place: the barcode then read
    a frame number from two frames before, a picture "shown out of order" that no relay or
    receiver caused (tests/relay/test_path.py's rejoin test failed 3 runs in 36 on a loaded
    2-core machine that way, 0 in 76 without the denoiser; a fresh decoder given the bitstream
    the receiver got read the same frame numbers).
    """

    def encode(self, frame: Frame, force_keyframe: bool = False) -> tuple[list[bytes], int]:
        assert isinstance(frame, av.VideoFrame)
        if frame.format.name != "yuv420p":
            frame = frame.reformat(format="yuv420p")
        codec = self.codec
        bitrate = self.target_bitrate
        # aiortc's own reopen rule (new size, or a bitrate more than 10 % off): opened here,
        # so aiortc's encode() finds the codec current and keeps it.
        if (
            codec is None
            or frame.width != codec.width
            or frame.height != codec.height
            or not codec.bit_rate
            or abs(bitrate - codec.bit_rate) / codec.bit_rate > 0.1
        ):
            codec = av.CodecContext.create("libvpx", "w")
            codec.width, codec.height = frame.width, frame.height
            codec.bit_rate = bitrate
            codec.pix_fmt = "yuv420p"
            codec.gop_size = 3000
            codec.qmin, codec.qmax = 2, 56
            codec.options = {
                "bufsize": str(bitrate),
                "cpu-used": "-6",
                "deadline": "realtime",
                "lag-in-frames": "0",
                "minrate": str(bitrate),
                "maxrate": str(bitrate),
                "noise-sensitivity": "0",  # aiortc: "4"
                "overshoot-pct": "15",
                "partitions": "0",
                "static-thresh": "1",
                "undershoot-pct": "100",
            }
            codec.thread_count = number_of_threads(
                frame.width * frame.height, multiprocessing.cpu_count()
            )
            self.codec = codec
        return super().encode(frame, force_keyframe)


def synthetic_encoder(sender: RTCRtpSender, codec: str) -> None:
    """Give a stand-in sender of the synthetic avatar's video its VP8 encoder (before its first
    frame: aiortc creates one only when none is set)."""
    if sender.kind == "video" and codec.upper() == "VP8":
        cast(Any, sender)._RTCRtpSender__encoder = _SyntheticVp8()


class _RawVp8(_SyntheticVp8):
    """The stand-in's VP8 encoder settings, without packetizing: one payload per encoded frame."""

    @classmethod
    def _packetize(cls, buffer: bytes, picture_id: int) -> list[bytes]:
        return [buffer]


class _RawH264(H264Encoder):
    """aiortc's H264 encoder settings, output as one Annex B access unit per frame."""

    @classmethod
    def _packetize(cls, packages: Any) -> list[bytes]:
        return [b"".join(b"\x00\x00\x00\x01" + bytes(p) for p in packages)]


class _PacketTrack(MediaStreamTrack):
    """One subscriber's view of the shared encoded stream: aiortc packetizes what recv() returns.

    Bounded (``capacity`` items); when the sender lags, the oldest is dropped and counted.
    """

    def __init__(self, kind: str, capacity: int = 64) -> None:
        super().__init__()
        self.kind = kind
        self._queue: asyncio.Queue[Packet] = asyncio.Queue()
        self._capacity = capacity
        self._started = False
        self.dropped = 0

    def push(self, packet: Packet) -> None:
        if self._queue.qsize() >= self._capacity:
            self._queue.get_nowait()
            self.dropped += 1
        self._queue.put_nowait(packet)

    async def recv(self) -> Packet:
        if self.readyState != "live":
            raise MediaStreamError
        if not self._started:
            # The sender's first read: what queued while DTLS was connecting is stale.
            self._started = True
            while not self._queue.empty():
                self._queue.get_nowait()
        return await self._queue.get()


class _Broadcaster:
    """Encodes one avatar once and hands the same packets to every subscriber (pre-encoded mode).

    Each subscriber's aiortc sender then only packetizes and encrypts (``encoder.pack``), so a
    scale test measures the bridge, not the stand-in. A PLI/FIR from any subscriber makes the next
    shared frame a keyframe (at most one per ``key_interval_s``).
    """

    def __init__(
        self, video: MediaStreamTrack, audio: MediaStreamTrack, codec: str, key_interval_s: float
    ) -> None:
        self.video_source, self.audio_source = video, audio
        self.codec = codec
        self._venc: Vp8Encoder | H264Encoder = _RawVp8() if codec == "VP8" else _RawH264()
        self._aenc = OpusEncoder()
        self._subs: set[tuple[_PacketTrack, _PacketTrack]] = set()
        self._force_key = False
        self._last_key = 0.0
        self._key_interval_s = key_interval_s
        self._tasks: list[asyncio.Task[None]] = []
        self.width = 0
        self.height = 0
        self.frames = 0
        self.keyframes_forced = 0

    def subscribe(self) -> tuple[_PacketTrack, _PacketTrack]:
        pair = (_PacketTrack("video"), _PacketTrack("audio"))
        self._subs.add(pair)
        if not self._tasks:
            loop = asyncio.get_running_loop()
            self._tasks = [loop.create_task(self._video()), loop.create_task(self._audio())]
        return pair

    def unsubscribe(self, pair: tuple[_PacketTrack, _PacketTrack]) -> None:
        self._subs.discard(pair)

    def request_keyframe(self) -> None:
        now = time.monotonic()
        if now - self._last_key >= self._key_interval_s:
            self._last_key = now
            self._force_key = True

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def _video(self) -> None:
        tb = fractions.Fraction(1, 90000)
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = cast(av.VideoFrame, await self.video_source.recv())
                self.width, self.height = frame.width, frame.height
                force, self._force_key = self._force_key, False
                self.keyframes_forced += force
                # Encoding is the heavy part: off the loop.
                payloads, ts = await asyncio.to_thread(self._venc.encode, frame, force)
                if not payloads or not payloads[0]:
                    continue
                packet = Packet(payloads[0])
                packet.pts, packet.time_base = ts, tb
                self.frames += 1
                for v, _ in list(self._subs):
                    v.push(packet)

    async def _audio(self) -> None:
        tb = fractions.Fraction(1, 48000)
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = cast(av.AudioFrame, await self.audio_source.recv())
                payloads, ts = self._aenc.encode(frame)
                for payload in payloads:
                    packet = Packet(payload)
                    packet.pts, packet.time_base = ts, tb
                    for _, a in list(self._subs):
                        a.push(packet)


class _Avatar:
    """The avatar participant of one room: identity, sids and where its media comes from.

    Either tracks the stand-in encodes itself (aiortc, fanned out through a relay or the
    pre-encoded broadcaster), or a client that published with a LiveKit SDK (``published``):
    its RTP is then forwarded, SFU-style (:mod:`bridge.sim.livekit_forward`).
    """

    def __init__(
        self,
        identity: str,
        video: MediaStreamTrack | None,
        audio: MediaStreamTrack | None,
        codec: str,
        size: tuple[int, int] = (0, 0),
        *,
        published: dict[str, PublishedTrack] | None = None,
        sid: str | None = None,
    ) -> None:
        self.identity = identity
        # The published size, as a client states it in its AddTrackRequest: subscribers see it
        # in TrackInfo before any frame has been produced.
        self.size = size
        self.sid = sid or _sid("PA")
        self.published = published
        self.video_sid = published["video"].info.sid if published else _sid("TR")
        self.audio_sid = published["audio"].info.sid if published else _sid("TR")
        self.codec = codec
        self.joined_at = int(time.time())
        self.video = _Tap(video or SilentTrack("video"))
        self.audio = _Tap(audio or SilentTrack("audio"))
        self.relay = MediaRelay()
        self.broadcaster: _Broadcaster | None = None

    async def stop(self) -> None:
        """End the relay's reads of the renderer's tracks (the tracks themselves stay live)."""
        self.video.stop()
        self.audio.stop()
        await self.video.wait_idle(1.0)
        await self.audio.wait_idle(1.0)

    def info(self, state: int) -> lkm.ParticipantInfo:
        width, height = self.size
        if not (width and height):
            source = self.broadcaster or self.video
            width, height = source.width, source.height
        layers = [lkm.VideoLayer(quality=lkm.VideoQuality.HIGH, width=width, height=height)]
        if self.published:
            layers = _layers(self.published["video"].info.layer_sizes) or layers
        tracks = [
            lkm.TrackInfo(
                sid=self.video_sid,
                type=lkm.VIDEO,
                name="avatar-video",
                width=width,
                height=height,
                layers=layers if width and height else [],
                simulcast=len(layers) > 1,
                source=lkm.TrackSource.CAMERA,
                mime_type=f"video/{self.codec}",
                stream="camera",
            ),
            lkm.TrackInfo(
                sid=self.audio_sid,
                type=lkm.AUDIO,
                name="avatar-audio",
                source=lkm.TrackSource.MICROPHONE,
                mime_type="audio/opus",
                stream="camera",
            ),
        ]
        return lkm.ParticipantInfo(
            sid=self.sid,
            identity=self.identity,
            name=self.identity,
            state=cast(Any, state),
            joined_at=self.joined_at,
            is_publisher=True,
            tracks=tracks if state != lkm.ParticipantInfo.DISCONNECTED else [],
            kind=lkm.ParticipantInfo.AGENT,
        )


class _Participant:
    """One subscriber: outlives its signalling WebSocket so the SDK can resume."""

    def __init__(self, room: _Room, identity: str, single_pc: bool) -> None:
        self.room = room
        self.identity = identity
        self.sid = _sid("PA")
        self.single_pc = single_pc
        self.ws: web.WebSocketResponse | None = None
        # pub_pc: the client offers (the only PC in single-PC mode); sub_pc: we offer (legacy).
        self.pub_pc: RTCPeerConnection | None = None
        self.sub_pc: RTCPeerConnection | None = None
        self.senders: list[RTCRtpSender] = []
        self.proxies: list[MediaStreamTrack] = []
        self.fanout: list[tuple[_Broadcaster, tuple[_PacketTrack, _PacketTrack]]] = []
        self.avatar_attached = False
        # (kind, payload type) -> codec name, from the SDP we last set as local description.
        self.pt_codecs: dict[tuple[str, int], str] = {}
        self.wire_codecs: set[str] = set()  # video codecs seen on this subscriber's packets
        # Publishing (a LiveKit client's own tracks): announced, then bound to media sections.
        self.pending_tracks: dict[str, PendingTrack] = {}  # by client track id (cid)
        self.published: dict[str, PublishedTrack] = {}  # by kind
        self.tap: PublisherTap | None = None
        self.sinks: list[ForwardSink] = []  # what this subscriber receives, forwarded
        self.offer_id = 0
        # Legacy mode: our offer on sub_pc awaits its answer; another was asked for meanwhile.
        self.offer_outstanding = False
        self.offer_again = False
        self.negotiations = 0  # offer/answer exchanges completed on the avatar's PC
        self._send_lock = asyncio.Lock()
        self.park_task: asyncio.Task[None] | None = None
        self.closed = False

    def info(self) -> lkm.ParticipantInfo:
        return lkm.ParticipantInfo(
            sid=self.sid,
            identity=self.identity,
            name=self.identity,
            state=lkm.ParticipantInfo.JOINED,
            joined_at=int(time.time()),
            permission=lkm.ParticipantPermission(
                can_subscribe=True, can_publish=True, can_publish_data=True
            ),
        )

    async def send(self, **message: Any) -> bool:
        """Send a SignalResponse; False when there is no open WebSocket (message dropped)."""
        ws = self.ws
        if ws is None or ws.closed:
            return False
        data = lkr.SignalResponse(**message).SerializeToString()
        try:
            async with self._send_lock, asyncio.timeout(SEND_TIMEOUT_S):
                await ws.send_bytes(data)
        except (ConnectionError, TimeoutError, RuntimeError) as exc:
            log.info("livekit_send_failed", participant=self.sid, error=str(exc))
            return False
        return True

    def peer_connections(self) -> Iterator[RTCPeerConnection]:
        yield from (pc for pc in (self.pub_pc, self.sub_pc) if pc is not None)

    async def close_media(self) -> None:
        for sink in self.sinks:
            sink.detach()
        self.sinks.clear()
        if self.tap is not None:
            self.tap.close()
            self.tap = None
        for broadcaster, pair in self.fanout:
            broadcaster.unsubscribe(pair)
        self.fanout.clear()
        for proxy in self.proxies:
            proxy.stop()
        self.proxies.clear()
        self.senders.clear()
        self.avatar_attached = False
        pcs = list(self.peer_connections())
        self.pub_pc = self.sub_pc = None
        for pc in pcs:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(PC_CLOSE_TIMEOUT_S):
                    await pc.close()


class _Room:
    def __init__(self, name: str) -> None:
        self.name = name
        self.sid = _sid("RM")
        self.created_at = int(time.time())
        self.avatar: _Avatar | None = None
        self.pending_avatar: _Avatar | None = None
        self.participants: dict[str, _Participant] = {}
        self.join_task: asyncio.Task[None] | None = None

    def info(self) -> lkm.Room:
        return lkm.Room(
            sid=self.sid,
            name=self.name,
            creation_time=self.created_at,
            num_participants=len(self.participants) + (1 if self.avatar else 0),
            num_publishers=1 if self.avatar else 0,
            empty_timeout=300,
        )


class Faults:
    """Fault knobs for tests. Actions apply to one room, or to every room when ``room`` is None."""

    def __init__(self, server: LiveKitStandIn) -> None:
        self._server = server
        # Seconds between create_room and the avatar joining (subscribers may join before).
        self.avatar_join_delay_s = 0.0
        # Refuse the SDK's resume attempts (it then does a full reconnect or gives up).
        self.refuse_resume = False
        # Loss and delay on the hop to subscribers (``tc netem`` is not available everywhere).
        # They apply to the avatar's media packets only; retransmissions (RTX) and RTCP pass,
        # so a subscriber's NACKs can always recover what was dropped.
        self.drop_every_n = 0  # drop every Nth media packet (0: off)
        self.drop_rate = 0.0  # or drop at random with this probability, seeded below
        self.drop_seed = 1
        # Or drop exactly these video packets (1-based index of the avatar's video packets on
        # each subscriber's transport): a fixed pattern whose NACKs and RTX tests can count.
        self.drop_video_packets: frozenset[int] = frozenset()
        # Also drop each video packet's first retransmission (a repair lost too): what is
        # dropped then comes only if the subscriber asks again.
        self.drop_first_video_rtx = False
        self.delay_ms = 0.0  # added to every media packet (each waits in turn: throttles)
        # Latency added to every media packet of the avatar's, each sent that much later on its
        # own (order kept, throughput not): a media path slower than the avatar's events.
        self.latency_ms = 0.0
        # A late packet of the old stream after a LiveKit rejoin: once a subscriber whose peer
        # connection kill_peer_connection() closed has been sent this many video packets on its
        # new connection, the old connection's first video frame (the encoder's first: a
        # keyframe) follows, unchanged (old SSRC, sequence numbers, timestamps), as a
        # retransmission of the old stream that arrives after the new one started. 0: off.
        self.late_old_keyframe_after_rejoin = 0
        self._late_video: dict[str, list[bytes]] = {}  # room -> the old frame's packets
        # Renegotiate right after the first answer/offer, before media flows (browsers do).
        self.renegotiate_on_join = False
        # Forward this simulcast layer (rid "q"/"h"/"f") to every subscriber of a forwarded
        # avatar whatever it asked for, as LiveKit's congestion control moves a subscriber
        # between layers; None: each subscriber's UpdateTrackSettings decides.
        self.video_layer: str | None = None

    async def close_signalling(self, room: str | None = None) -> int:
        """Close subscribers' signalling WebSockets without ``leave``: the SDK resumes."""
        count = 0
        for p in self._server._participants(room):
            if p.ws is not None and not p.ws.closed:
                count += 1
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(SEND_TIMEOUT_S):
                        await p.ws.close()
        return count

    async def close_media(self, room: str | None = None) -> int:
        """Close subscribers' peer connections and keep their signalling (DTLS close_notify:
        the media is gone, nothing on the signalling says so)."""
        participants = list(self._server._participants(room))
        for p in participants:
            await p.close_media()
        return len(participants)

    async def kill_peer_connection(self, room: str | None = None) -> int:
        """Lose subscribers' media sessions as a failed-over server would.

        Their peer connections close and their signalling drops; the SDK's resume is then
        refused with ``leave(RECONNECT)`` (no media session to resume), so it does a full
        reconnect: a new join, a new peer connection and new track subscriptions. (A closed aiortc
        PC alone goes unnoticed by libwebrtc until its ~30 s consent timeout.)
        """
        count = 0
        for p in self._server._participants(room):
            count += 1
            if self.late_old_keyframe_after_rejoin > 0:
                for sender in p.senders:
                    first = getattr(sender.transport, "_sim_first_video", None)
                    if sender.kind == "video" and first:
                        self._late_video[p.room.name] = list(first)
            await p.close_media()
        await self.close_signalling(room)
        return count

    async def renegotiate(self, room: str | None = None) -> int:
        """Make every subscriber renegotiate: v1 clients re-offer, legacy ones get a new offer."""
        count = 0
        for p in self._server._participants(room):
            count += 1
            await self._server._renegotiate(p)
        return count

    async def avatar_leave(self, room: str) -> None:
        """The avatar participant leaves; subscribers get a DISCONNECTED participant update."""
        await self._server._avatar_leave(room)


class LiveKitStandIn:
    """LiveKit-compatible signalling plus aiortc media for avatar rooms."""

    def __init__(
        self,
        api_key: str = "devkey",
        api_secret: str | None = None,
        *,
        ping_interval_s: int = 5,
        ping_timeout_s: int = 15,
        preencoded: bool = False,
    ) -> None:
        if ping_interval_s <= 0 or ping_timeout_s <= 0:
            # The SDK panics on a zero interval (tokio interval period must be non-zero).
            raise ValueError("ping interval and timeout must be positive")
        self.api_key = api_key
        self.api_secret = api_secret or secrets.token_urlsafe(32)
        self.ping_interval_s = ping_interval_s
        self.ping_timeout_s = ping_timeout_s
        self.faults = Faults(self)
        self.counters = StandInCounters()
        self._rooms: dict[str, _Room] = {}
        self._runner: web.AppRunner | None = None
        self._host = "127.0.0.1"
        self._port = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        # Pre-encoded fan-out: one broadcaster per video codec, fed by the first room's tracks;
        # later rooms' own tracks are not read.
        self.preencoded = preencoded
        self.broadcasters: dict[str, _Broadcaster] = {}

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        app = web.Application(middlewares=[_preflight])
        app.on_response_prepare.append(_add_cors_headers)
        for path in ("/rtc", "/rtc/v1"):
            app.router.add_get(path, self._handle_rtc)
        for path in ("/rtc/validate", "/rtc/v1/validate"):
            app.router.add_get(path, self._handle_validate)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=2.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        server = cast(Any, site)._server
        self._host, self._port = host, int(server.sockets[0].getsockname()[1])
        log.info("livekit_standin_started", url=self.url)

    @property
    def url(self) -> str:
        return f"ws://{self._host}:{self._port}"

    @property
    def rooms_open(self) -> int:
        return len(self._rooms)

    def participants_in(self, room: str) -> int:
        """Subscribers in ``room`` (an avatar publishing as a client is not counted)."""
        return len(self._participants(room)) if room in self._rooms else 0

    async def aclose(self) -> None:
        for name in list(self._rooms):
            await self.close_room(name)
        for broadcaster in self.broadcasters.values():
            await broadcaster.aclose()
        self.broadcasters.clear()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._runner is not None:
            runner, self._runner = self._runner, None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(10):
                    await runner.cleanup()

    # -- the interface the LiveAvatar stand-in calls ---------------------------------------------

    async def create_room(
        self,
        room: str,
        *,
        avatar_identity: str,
        video: MediaStreamTrack,
        audio: MediaStreamTrack,
        video_codec: str,
        video_size: tuple[int, int] | None = None,
    ) -> None:
        """Open ``room`` with the avatar publishing ``video``/``audio``.

        ``video_size`` is the size the avatar publishes (the AddTrackRequest's); by default the
        track's own ``width``/``height`` attributes, if it has them.
        """
        codec = video_codec.upper()
        if codec not in VIDEO_CODECS:
            raise ValueError(f"video_codec must be one of {VIDEO_CODECS}, got {video_codec!r}")
        if room in self._rooms:
            raise ValueError(f"room {room!r} already exists")
        r = _Room(room)
        self._rooms[room] = r
        self.counters.rooms_created += 1
        SIM_ROOMS.inc()
        if video_size is None:
            video_size = (int(getattr(video, "width", 0)), int(getattr(video, "height", 0)))
        avatar = _Avatar(avatar_identity, video, audio, codec, video_size)
        if self.preencoded:
            avatar.broadcaster = self.broadcasters.setdefault(
                codec, _Broadcaster(video, audio, codec, key_interval_s=0.3)
            )
        delay = self.faults.avatar_join_delay_s
        if delay > 0:
            r.pending_avatar = avatar
            r.join_task = self._spawn(self._join_avatar_later(r, avatar, delay))
        else:
            r.avatar = avatar
        log.info("livekit_room_created", room=room, avatar=avatar_identity, codec=codec)

    async def open_room(self, room: str) -> None:
        """Open a room without media: the avatar joins as a LiveKit client and publishes.

        Its tracks (simulcast video, Opus) are then forwarded to subscribers SFU-style.
        """
        if room in self._rooms:
            raise ValueError(f"room {room!r} already exists")
        self._rooms[room] = _Room(room)
        self.counters.rooms_created += 1
        SIM_ROOMS.inc()
        log.info("livekit_room_opened", room=room)

    def mint_token(self, room: str, identity: str) -> str:
        grants = api.VideoGrants(room_join=True, room=room, can_subscribe=True, can_publish=True)
        return (
            api.AccessToken(self.api_key, self.api_secret)
            .with_identity(identity)
            .with_name(identity)
            .with_grants(grants)
            .to_jwt()
        )

    def published_tracks(self, room: str) -> dict[str, dict[str, PublishedTrack]]:
        """{identity: {kind: track}} of the clients publishing in ``room``: their layers and the
        packets counted on the wire (``PublishedTrack.layers``/``stats``), for tests."""
        r = self._rooms.get(room)
        if r is None:
            return {}
        return {p.identity: dict(p.published) for p in r.participants.values() if p.published}

    async def close_room(self, room: str) -> None:
        r = self._rooms.pop(room, None)
        if r is None:
            return
        self.counters.rooms_closed += 1
        SIM_ROOMS.dec()
        if r.join_task is not None:
            r.join_task.cancel()
        leave = lkr.LeaveRequest(
            reason=lkm.DisconnectReason.ROOM_DELETED, action=lkr.LeaveRequest.DISCONNECT
        )
        for p in list(r.participants.values()):
            await p.send(leave=leave)
            await self._close_participant(p)
        if r.avatar is not None:
            await r.avatar.stop()
        r.avatar = r.pending_avatar = None
        log.info("livekit_room_closed", room=room)

    # -- avatar presence -----------------------------------------------------------------------

    async def _join_avatar_later(self, r: _Room, avatar: _Avatar, delay: float) -> None:
        await asyncio.sleep(delay)
        if self._rooms.get(r.name) is not r:
            return
        r.avatar, r.pending_avatar = avatar, None
        log.info("livekit_avatar_joined", room=r.name, avatar=avatar.identity)
        await self._announce_avatar(r, avatar)

    async def _announce_avatar(self, r: _Room, avatar: _Avatar) -> None:
        """Tell the room's subscribers the avatar is here and renegotiate its tracks in."""
        update = lkr.ParticipantUpdate(participants=[avatar.info(lkm.ParticipantInfo.ACTIVE)])
        for p in list(r.participants.values()):
            if p.sid == avatar.sid:
                continue
            await p.send(update=update)
            if p.avatar_attached:
                continue  # its join, racing this announcement, already negotiated the tracks
            if p.single_pc:
                # Only the client may offer in single-PC mode: ask it to renegotiate.
                req = lkr.MediaSectionsRequirement(num_audios=1, num_videos=1)
                await p.send(media_sections_requirement=req)
            elif p.sub_pc is not None:
                await self._attach_avatar(p, p.sub_pc, add_transceivers=True)
                await self._send_subscriber_offer(p)

    async def _renegotiate(self, p: _Participant) -> None:
        if p.single_pc:
            # Only the client may offer in single-PC mode: ask it to renegotiate.
            req = lkr.MediaSectionsRequirement(num_audios=1, num_videos=1)
            await p.send(media_sections_requirement=req)
        elif p.sub_pc is not None:
            await self._send_subscriber_offer(p)

    async def _avatar_leave(self, room: str) -> None:
        r = self._rooms.get(room)
        if r is None or r.avatar is None:
            return
        avatar, r.avatar = r.avatar, None
        update = lkr.ParticipantUpdate(participants=[avatar.info(lkm.ParticipantInfo.DISCONNECTED)])
        for p in list(r.participants.values()):
            if p.sid == avatar.sid:
                continue
            await p.send(update=update)
            for sink in p.sinks:
                sink.detach()
            p.sinks.clear()
            for sender in p.senders:
                sender.replaceTrack(None)
            for broadcaster, pair in p.fanout:
                broadcaster.unsubscribe(pair)
            p.fanout.clear()
            for proxy in p.proxies:
                proxy.stop()
            p.proxies.clear()
        await avatar.stop()
        log.info("livekit_avatar_left", room=room)

    # -- HTTP / WebSocket ------------------------------------------------------------------------

    def _verify(self, request: web.Request) -> api.access_token.Claims:
        auth = request.headers.get("Authorization", "")
        token = auth[7:] if auth.startswith("Bearer ") else request.query.get("access_token", "")
        if not token:
            raise PermissionError("no access token")
        try:
            claims = api.TokenVerifier(self.api_key, self.api_secret).verify(token)
        except Exception as exc:  # the verifier raises jwt's and its own errors alike
            raise PermissionError(f"invalid token: {exc}") from exc
        grant = claims.video
        if grant is None or not grant.room_join or not grant.room:
            raise PermissionError("token does not grant room_join")
        if not claims.identity:
            raise PermissionError("token has no identity")
        return claims

    async def _handle_validate(self, request: web.Request) -> web.Response:
        try:
            claims = self._verify(request)
        except PermissionError as exc:
            return web.Response(status=401, text=str(exc))
        assert claims.video is not None
        if claims.video.room not in self._rooms:
            return web.Response(status=404, text="requested room does not exist")
        return web.Response(text="success")

    async def _handle_rtc(self, request: web.Request) -> web.StreamResponse:
        single_pc = request.path.rstrip("/").endswith("/v1")
        try:
            claims = self._verify(request)
            join = self._parse_join(request, single_pc)
        except PermissionError as exc:
            self.counters.rejected += 1
            SIM_JOINS.labels("unauthorized").inc()
            return web.Response(status=401, text=str(exc))
        except ValueError as exc:
            self.counters.rejected += 1
            SIM_JOINS.labels("bad_request").inc()
            return web.Response(status=400, text=str(exc))
        assert claims.video is not None
        r = self._rooms.get(claims.video.room)
        if r is None:
            self.counters.rejected += 1
            SIM_JOINS.labels("no_room").inc()
            # Not 404: on /rtc/v1 that would make the SDK retry on the legacy path.
            return web.Response(status=403, text="requested room does not exist")
        self.counters.signal_paths["/rtc/v1" if single_pc else "/rtc"] += 1
        ws = web.WebSocketResponse(max_msg_size=1 << 20)
        await ws.prepare(request)
        p: _Participant | None = None
        try:
            if join.reconnect:
                p = await self._resume(r, join, ws)
            else:
                p = await self._join(r, claims.identity, single_pc, join, ws)
            if p is not None:
                await self._serve(p, ws)
        finally:
            if p is not None and p.ws is ws:
                p.ws = None
                if not p.closed:
                    # Gone without leave: keep media up for a resume, then give up.
                    p.park_task = self._spawn(self._expire_parked(p))
        return ws

    def _parse_join(self, request: web.Request, single_pc: bool) -> lkr.JoinRequest:
        join = lkr.JoinRequest()
        if single_pc:
            raw = request.query.get("join_request")
            if not raw:
                raise ValueError("join_request missing")
            try:
                wrapped = lkr.WrappedJoinRequest()
                wrapped.ParseFromString(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
                body = wrapped.join_request
                if wrapped.compression == lkr.WrappedJoinRequest.GZIP:
                    body = gzip.decompress(body)
                join.ParseFromString(body)
            except Exception as exc:  # malformed base64 / gzip / protobuf
                raise ValueError(f"bad join_request: {exc}") from exc
        else:
            q = request.query
            join.reconnect = q.get("reconnect") in ("1", "true")
            join.participant_sid = q.get("sid", "")
            join.connection_settings.auto_subscribe = q.get("auto_subscribe", "1") != "0"
        return join

    async def _join(
        self,
        r: _Room,
        identity: str,
        single_pc: bool,
        join: lkr.JoinRequest,
        ws: web.WebSocketResponse,
    ) -> _Participant:
        # A second join with the same identity replaces the first (LiveKit's behaviour).
        for old in [p for p in r.participants.values() if p.identity == identity]:
            dup = lkr.LeaveRequest(
                reason=lkm.DisconnectReason.DUPLICATE_IDENTITY, action=lkr.LeaveRequest.DISCONNECT
            )
            await old.send(leave=dup)
            await self._close_participant(old)
        p = _Participant(r, identity, single_pc)
        p.ws = ws
        r.participants[p.sid] = p
        self.counters.joins += 1
        self.counters.joins_by_room[r.name] += 1
        SIM_JOINS.labels("joined").inc()
        SIM_PARTICIPANTS.inc()
        try:
            await self._handshake(p, r, join)
        except BaseException:
            await self._close_participant(p)
            raise
        return p

    async def _handshake(self, p: _Participant, r: _Room, join: lkr.JoinRequest) -> None:
        others = [r.avatar.info(lkm.ParticipantInfo.ACTIVE)] if r.avatar else []
        await p.send(
            join=lkr.JoinResponse(
                room=r.info(),
                participant=p.info(),
                other_participants=others,
                server_version=SERVER_VERSION,
                server_info=lkm.ServerInfo(
                    edition=lkm.ServerInfo.Standard,
                    version=SERVER_VERSION,
                    protocol=SERVER_PROTOCOL,
                ),
                subscriber_primary=not p.single_pc,
                ping_interval=self.ping_interval_s,
                ping_timeout=self.ping_timeout_s,
            )
        )
        log.info("livekit_join", room=r.name, identity=p.identity, sid=p.sid, single_pc=p.single_pc)
        if p.single_pc:
            if join.HasField("publisher_offer") and join.publisher_offer.sdp:
                await self._answer(p, join.publisher_offer)
            if self.faults.renegotiate_on_join:
                await self._renegotiate(p)
        else:
            p.sub_pc = self._new_pc(p, "subscriber")
            p.sub_pc.createDataChannel("_reliable")
            p.sub_pc.createDataChannel("_lossy", ordered=False, maxRetransmits=0)
            if r.avatar is not None:
                await self._attach_avatar(p, p.sub_pc, add_transceivers=True)
            await self._send_subscriber_offer(p)

    async def _resume(
        self, r: _Room, join: lkr.JoinRequest, ws: web.WebSocketResponse
    ) -> _Participant | None:
        p = r.participants.get(join.participant_sid)
        usable = p is not None and not p.closed and any(True for _ in p.peer_connections())
        if p is None or not usable or self.faults.refuse_resume:
            # The SDK treats leave(RECONNECT) during a resume as "do a full reconnect".
            leave = lkr.LeaveRequest(
                reason=lkm.DisconnectReason.STATE_MISMATCH, action=lkr.LeaveRequest.RECONNECT
            )
            with contextlib.suppress(ConnectionError, TimeoutError, RuntimeError):
                async with asyncio.timeout(SEND_TIMEOUT_S):
                    await ws.send_bytes(lkr.SignalResponse(leave=leave).SerializeToString())
                    await ws.close()
            if p is not None:
                await self._close_participant(p)
            SIM_JOINS.labels("resume_refused").inc()
            return None
        if p.park_task is not None:
            p.park_task.cancel()
            p.park_task = None
        if p.ws is not None and not p.ws.closed:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(SEND_TIMEOUT_S):
                    await p.ws.close()
        p.ws = ws
        self.counters.resumes += 1
        SIM_JOINS.labels("resumed").inc()
        await p.send(reconnect=lkr.ReconnectResponse())
        pc = p.sub_pc
        if p.offer_outstanding and pc is not None and pc.localDescription is not None:
            # Its answer may have been lost with the old WebSocket: offer again, or every later
            # offer would wait for it forever.
            again = lkr.SessionDescription(type="offer", sdp=pc.localDescription.sdp, id=p.offer_id)
            await p.send(offer=again)
        # The SDK treats participants missing from the post-resume snapshot as gone.
        if r.avatar is not None:
            snapshot = [r.avatar.info(lkm.ParticipantInfo.ACTIVE)]
            await p.send(update=lkr.ParticipantUpdate(participants=snapshot))
        log.info("livekit_resume", room=r.name, sid=p.sid)
        return p

    async def _expire_parked(self, p: _Participant) -> None:
        await asyncio.sleep(self.ping_timeout_s)
        if p.ws is None:
            log.info("livekit_participant_expired", sid=p.sid)
            await self._close_participant(p)

    async def _serve(self, p: _Participant, ws: web.WebSocketResponse) -> None:
        while not ws.closed:
            try:
                # The SDK pings every ping_interval; silence for ping_timeout means it is gone.
                msg = await ws.receive(timeout=self.ping_timeout_s)
            except TimeoutError:
                log.info("livekit_ping_timeout", sid=p.sid)
                await self._close_participant(p)
                return
            if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                return
            if msg.type != WSMsgType.BINARY:
                continue
            req = lkr.SignalRequest()
            try:
                req.ParseFromString(msg.data)
            except Exception:  # a malformed protobuf: ignore it like LiveKit does
                log.warning("livekit_bad_signal_request", sid=p.sid)
                continue
            try:
                if not await self._on_request(p, req):
                    return
            except Exception:  # one bad message (an SDP aiortc rejects) must not end the session
                which = req.WhichOneof("message")
                self.counters.signal_request_failures += 1
                log.exception("livekit_signal_request_failed", sid=p.sid, message=which)

    async def _on_request(self, p: _Participant, req: lkr.SignalRequest) -> bool:
        which = req.WhichOneof("message") or "none"
        self.counters.signal_requests[which] += 1
        SIM_SIGNAL_REQUESTS.labels(which).inc()
        if which == "trickle":
            await self._add_candidate(p, req.trickle)
        elif which == "add_track":
            await self._add_track(p, req.add_track)
        elif which == "track_setting":
            self._track_setting(p, req.track_setting)
        elif which == "offer":
            await self._answer(p, req.offer)
        elif which == "answer":
            if p.sub_pc is not None:
                desc = RTCSessionDescription(req.answer.sdp, "answer")
                try:
                    await p.sub_pc.setRemoteDescription(desc)
                finally:
                    p.offer_outstanding = False
                p.negotiations += 1
                if p.offer_again:
                    p.offer_again = False
                    await self._send_subscriber_offer(p)
                if p.negotiations > 1:
                    self.counters.renegotiations += 1
                if p.negotiations == 1 and self.faults.renegotiate_on_join:
                    await self._renegotiate(p)
        elif which == "ping_req":
            pong = lkr.Pong(
                last_ping_timestamp=req.ping_req.timestamp, timestamp=int(time.time() * 1000)
            )
            await p.send(pong_resp=pong)
        elif which == "ping":
            await p.send(pong=int(time.time() * 1000))
        elif which == "leave":
            self.counters.leaves += 1
            log.info("livekit_leave", sid=p.sid)
            await self._close_participant(p)
            return False
        else:
            log.debug("livekit_signal_ignored", message=which)
        return True

    # -- WebRTC ----------------------------------------------------------------------------------

    def _new_pc(self, p: _Participant, name: str) -> RTCPeerConnection:
        # Like LiveKit's SFU (pion): a track negotiated mid-handshake must still flow.
        negotiation_guard.install()
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))

        @pc.on("connectionstatechange")
        def _state() -> None:
            log.info("livekit_pc_state", sid=p.sid, pc=name, state=pc.connectionState)
            if pc.connectionState == "connected":
                self._instrument(p)

        return pc

    def _instrument(self, p: _Participant) -> None:
        """Count keyframe requests and apply the loss/delay knobs on the avatar's senders.

        Installed once the connection is up (BUNDLE has settled which transport each sender
        uses); aiortc offers no packet filter, so its sender and transport methods are wrapped
        per instance. Stand-in only: the daemon never does this.
        """
        faults, counters = self.faults, self.counters
        media_ssrcs = {cast(Any, s)._ssrc: s.kind for s in p.senders}
        video_rtx_ssrcs = {cast(Any, s)._rtx_ssrc for s in p.senders if s.kind == "video"}
        for sender in p.senders:
            s = cast(Any, sender)
            if sender.kind == "video" and not getattr(s, "_sim_counted", False):
                original_key = s._send_keyframe

                def count_key(original: Any = original_key) -> None:
                    counters.keyframe_requests += 1
                    for b, _ in p.fanout:  # pre-encoded: the shared encoder makes the keyframe
                        b.request_keyframe()
                    original()

                s._send_keyframe = count_key
                s._sim_counted = True
            transport = cast(Any, sender.transport)
            if transport is None or getattr(transport, "_sim_lossy", None) is not None:
                if transport is not None:
                    transport._sim_lossy.update(media_ssrcs)
                    transport._sim_rtx.update(video_rtx_ssrcs)
                continue
            transport._sim_lossy = dict(media_ssrcs)
            transport._sim_rtx = set(video_rtx_ssrcs)
            # The connection's first video frame, kept for late_old_keyframe_after_rejoin.
            transport._sim_first_video = []
            first_ts: list[int] = []
            rtx_dropped_for: set[int] = set()
            send_rtp = transport._send_rtp
            rng = random.Random(faults.drop_seed)
            seen = 0
            video_seen = 0

            async def lossy(
                data: bytes,
                send_rtp: Any = send_rtp,
                transport: Any = transport,
                rng: Any = rng,
                rtx_dropped_for: set[int] = rtx_dropped_for,
                first_ts: list[int] = first_ts,
            ) -> None:
                nonlocal seen, video_seen
                is_rtcp = len(data) >= 2 and 192 <= data[1] <= 208
                ssrc = None if is_rtcp else int.from_bytes(data[8:12], "big")
                kind = None if ssrc is None else transport._sim_lossy.get(ssrc)
                if faults.drop_first_video_rtx and ssrc in transport._sim_rtx:
                    osn = _rtx_original_seq(data)
                    if osn is not None and osn not in rtx_dropped_for:
                        if len(rtx_dropped_for) >= 1 << 16:
                            rtx_dropped_for.clear()  # bounded; the test patterns are short
                        rtx_dropped_for.add(osn)
                        counters.video_rtx_dropped += 1
                        return
                if kind is not None:
                    seen += 1
                    counters.packets_sent += 1
                    if kind == "video":
                        video_seen += 1
                        counters.video_packets_sent = max(counters.video_packets_sent, video_seen)
                        codec = p.pt_codecs.get(("video", data[1] & 0x7F), "unknown")
                        counters.video_packets_by_codec[codec] += 1
                        if codec not in p.wire_codecs:
                            p.wire_codecs.add(codec)
                            counters.video_codecs[codec] += 1
                            log.info("livekit_wire_codec", sid=p.sid, codec=codec)
                    n = faults.drop_every_n
                    if (
                        (n > 0 and seen % n == 0)
                        or (faults.drop_rate > 0 and rng.random() < faults.drop_rate)
                        or (kind == "video" and video_seen in faults.drop_video_packets)
                    ):
                        counters.packets_dropped += 1
                        if kind == "video":
                            counters.video_packets_dropped += 1
                        return
                    if faults.delay_ms > 0:
                        await asyncio.sleep(faults.delay_ms / 1000.0)
                    if faults.latency_ms > 0:
                        asyncio.get_running_loop().call_later(
                            faults.latency_ms / 1000.0,
                            functools.partial(self._spawn_send_late, send_rtp, data),
                        )
                        return
                await send_rtp(data)
                if kind == "video" and faults.late_old_keyframe_after_rejoin > 0:
                    ts = int.from_bytes(data[4:8], "big")
                    if not first_ts:
                        first_ts.append(ts)
                    if ts == first_ts[0] and len(transport._sim_first_video) < 64:
                        transport._sim_first_video.append(data)
                    late = faults._late_video.get(p.room.name)
                    if late and video_seen == faults.late_old_keyframe_after_rejoin:
                        del faults._late_video[p.room.name]
                        for old in late:
                            counters.late_old_video_sent += 1
                            await send_rtp(old)

            transport._send_rtp = lossy

    async def _attach_avatar(
        self, p: _Participant, pc: RTCPeerConnection, *, add_transceivers: bool
    ) -> dict[str, str]:
        """Put the avatar's tracks on ``pc``; returns {transceiver mid or "": track sid}."""
        avatar = p.room.avatar
        if avatar is None or p.avatar_attached or avatar.sid == p.sid:
            return {}
        video: MediaStreamTrack
        audio: MediaStreamTrack
        if avatar.published is not None:
            video, audio = SilentTrack("video"), SilentTrack("audio")
        elif avatar.broadcaster is not None:
            pair = avatar.broadcaster.subscribe()
            p.fanout.append((avatar.broadcaster, pair))
            video, audio = pair
        else:
            video = _LiveEncoderInput(
                avatar.relay.subscribe(avatar.video, buffered=False), avatar.video
            )
            audio = _LiveEncoderInput(
                avatar.relay.subscribe(avatar.audio, buffered=False), avatar.audio
            )
        p.proxies += [video, audio]
        if add_transceivers:
            for track in (video, audio):
                t = pc.addTransceiver(track, direction="sendonly")
                if track.kind == "video":
                    t.setCodecPreferences(_codec_capabilities(avatar.codec))
                p.senders.append(t.sender)
        else:
            p.senders += [pc.addTrack(video), pc.addTrack(audio)]
        if isinstance(video, _LiveEncoderInput):
            for sender in p.senders:
                synthetic_encoder(sender, avatar.codec)
        p.avatar_attached = True
        if avatar.published is not None:
            for sender in p.senders:
                assert sender.kind is not None
                sink = ForwardSink(
                    avatar.published[sender.kind],
                    sender,
                    quality=None,
                    forced_rid=lambda: self.faults.video_layer,
                )
                p.sinks.append(sink)
        if pc.connectionState == "connected":
            self._instrument(p)
        mapping: dict[str, str] = {}
        for t in pc.getTransceivers():
            if t.sender in p.senders:
                sid = avatar.video_sid if t.kind == "video" else avatar.audio_sid
                # LiveKit's msid convention; aiortc keeps these private (no public setter).
                t.sender._stream_id = f"{avatar.sid}|{sid}"
                t.sender._track_id = sid
                if t.kind == "video" and not add_transceivers:
                    # The transceiver came from the client's offer, so codec preferences
                    # set now are too late for this answer: narrow the negotiated list, and
                    # set the preferences too so every later offer/answer is narrowed as well
                    # (aiortc renegotiates ``_codecs`` from scratch on each remote description).
                    t._codecs = _only_codec(t._codecs, avatar.codec)
                    t.setCodecPreferences(_codec_capabilities(avatar.codec))
                mapping[t.mid or ""] = sid
        return mapping

    async def _answer(self, p: _Participant, offer: lkr.SessionDescription) -> None:
        """Answer a client offer: the single PC (v1) or the legacy publisher PC."""
        if p.single_pc:
            if p.pub_pc is None:
                p.pub_pc = self._new_pc(p, "single")
            pc = p.pub_pc
        else:
            if p.pub_pc is None:
                p.pub_pc = self._new_pc(p, "publisher")
            pc = p.pub_pc
        await pc.setRemoteDescription(RTCSessionDescription(offer.sdp, offer.type or "offer"))
        if p.single_pc:
            await self._attach_avatar(p, pc, add_transceivers=False)
        await pc.setLocalDescription(await pc.createAnswer())
        mid_map = _mid_map(p, pc)
        # aiortc drops simulcast and the RID extensions from its answer; an SFU accepts them.
        sdp = accept_simulcast(offer.sdp, pc.localDescription.sdp)
        await p.send(
            answer=lkr.SessionDescription(
                type="answer", sdp=sdp, id=offer.id, mid_to_track_id=mid_map
            )
        )
        self._note_sdp(p, sdp, mid_map)
        await self._bind_published(p, pc, offer.sdp)
        p.negotiations += 1
        if p.negotiations > 1:
            self.counters.renegotiations += 1
        log.info("livekit_answer", sid=p.sid, mid_to_track_id=mid_map, codecs=_codecs_in(sdp))

    # -- a LiveKit client publishing (the avatar through the real SDK) ----------------------------

    async def _add_track(self, p: _Participant, req: lkr.AddTrackRequest) -> None:
        kind = "video" if req.type == lkm.VIDEO else "audio"
        codec = "opus"
        if kind == "video":
            named = [c.codec for c in req.simulcast_codecs if c.codec]
            codec = (named[0] if named else "vp8").upper()
        sizes = [(layer.width, layer.height) for layer in req.layers if layer.width]
        track = PendingTrack(
            sid=_sid("TR"),
            cid=req.cid,
            kind=kind,
            codec=codec,
            width=req.width,
            height=req.height,
            layer_sizes=sizes,
            bitrate=sum(layer.bitrate for layer in req.layers),
        )
        p.pending_tracks[req.cid] = track
        info = lkm.TrackInfo(
            sid=track.sid,
            type=req.type,
            name=req.name,
            width=req.width,
            height=req.height,
            simulcast=len(sizes) > 1,
            disable_dtx=req.disable_dtx,
            source=req.source,
            layers=_layers(sizes),
            mime_type=f"{kind}/{codec}",
            stream=req.stream,
        )
        await p.send(track_published=lkr.TrackPublishedResponse(cid=req.cid, track=info))
        log.info("livekit_track_published", sid=p.sid, track=track.sid, kind=kind, codec=codec)

    async def _bind_published(self, p: _Participant, pc: RTCPeerConnection, offer_sdp: str) -> None:
        """Match announced tracks to the offer's sections (by msid = cid); start forwarding."""
        if not p.pending_tracks:
            if p.tap is not None:
                p.tap.configure(offer_sdp)
            return
        for mid, section in sections_by_mid(offer_sdp).items():
            for msid in section.attr("msid"):
                cid = msid.split()[-1]
                pending = p.pending_tracks.pop(cid, None)
                if pending is None:
                    continue
                transceiver = next((t for t in pc.getTransceivers() if t.mid == mid), None)
                if transceiver is None:
                    continue
                if p.tap is None:
                    p.tap = PublisherTap(transceiver.receiver.transport, offer_sdp)
                else:
                    p.tap.configure(offer_sdp)
                track = PublishedTrack(pending, mid, p.tap.send_rtcp)
                p.tap.add(track)
                p.published[pending.kind] = track
        # A track announced (AddTrack) but not in any offer yet is not forwarded: say which.
        log.info(
            "livekit_tracks_bound",
            sid=p.sid,
            published=sorted(p.published),
            pending=sorted(t.kind for t in p.pending_tracks.values()),
        )
        r = p.room
        if {"audio", "video"} <= set(p.published) and (r.avatar is None or r.avatar.sid != p.sid):
            video = p.published["video"]
            avatar = _Avatar(
                p.identity,
                None,
                None,
                video.info.codec,
                (video.info.width, video.info.height),
                published=dict(p.published),
                sid=p.sid,
            )
            r.avatar, r.pending_avatar = avatar, None
            log.info("livekit_avatar_published", room=r.name, avatar=p.identity, codec=avatar.codec)
            self._spawn(self._announce_avatar(r, avatar))

    def _track_setting(self, p: _Participant, req: lkr.UpdateTrackSettings) -> None:
        for sink in p.sinks:
            if sink.track.info.sid in req.track_sids:
                sink.update_settings(
                    disabled=req.disabled,
                    quality=int(req.quality),
                    width=req.width,
                    height=req.height,
                )
                log.info(
                    "livekit_track_setting",
                    sid=p.sid,
                    track=sink.track.info.sid,
                    quality=int(req.quality),
                    width=req.width,
                    height=req.height,
                    disabled=req.disabled,
                )

    async def _send_subscriber_offer(self, p: _Participant) -> None:
        pc = p.sub_pc
        assert pc is not None
        if p.offer_outstanding:
            # One offer at a time, as LiveKit's transport negotiates (pkg/rtc/transport.go: an
            # offer wanted while one is unanswered is deferred, then sent once the answer is in).
            # Otherwise the client's answer to the first would be applied against the second.
            p.offer_again = True
            self.counters.offers_deferred += 1
            return
        p.offer_outstanding = True
        await pc.setLocalDescription(await pc.createOffer())
        p.offer_id += 1
        desc = lkr.SessionDescription(type="offer", sdp=pc.localDescription.sdp, id=p.offer_id)
        self._note_sdp(p, desc.sdp, _mid_map(p, pc))
        await p.send(offer=desc)

    async def _add_candidate(self, p: _Participant, trickle: lkr.TrickleRequest) -> None:
        try:
            init = json.loads(trickle.candidateInit)
        except ValueError:
            return
        pc = p.pub_pc if p.single_pc or trickle.target == lkr.PUBLISHER else p.sub_pc
        cand_sdp = init.get("candidate") or ""
        if pc is None or not cand_sdp:  # an empty candidate is end-of-candidates
            return
        cand = candidate_from_sdp(cand_sdp.split(":", 1)[1])
        cand.sdpMid, cand.sdpMLineIndex = init.get("sdpMid"), init.get("sdpMLineIndex")
        await pc.addIceCandidate(cand)

    async def _close_participant(self, p: _Participant) -> None:
        if p.closed:
            return
        p.closed = True
        if p.park_task is not None and p.park_task is not asyncio.current_task():
            p.park_task.cancel()
        p.room.participants.pop(p.sid, None)
        if p.room.avatar is not None and p.room.avatar.sid == p.sid:
            await self._avatar_leave(p.room.name)
        self.counters.participants_closed += 1
        SIM_PARTICIPANTS.dec()
        await p.close_media()
        if p.ws is not None and not p.ws.closed:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(SEND_TIMEOUT_S):
                    await p.ws.close()

    def reset_forwarded_freezes(self) -> None:
        for p in self._participants(None):
            for sink in p.sinks:
                sink.reset_freezes()

    def forwarded_video(self) -> list[dict[str, Any]]:
        """What each subscriber of a forwarded (SDK-published) avatar gets: the layer sent now,
        the layers the publisher sends (rid -> announced size), switches and drops."""
        out = []
        for p in self._participants(None):
            for sink in p.sinks:
                f = sink.forwarder
                if f is None:
                    continue
                out.append(
                    {
                        "identity": p.identity,
                        "rid": f.current,
                        "layers": sink.track.sizes(),
                        "switches": f.stats.switches,
                        "forwarded": f.stats.forwarded,
                        "dropped_waiting_keyframe": f.stats.dropped_waiting_keyframe,
                        "keyframe_requests": f.stats.keyframe_requests,
                        # Keyframes forwarded, and those every packet of which went out.
                        "keyframes": f.stats.keyframes,
                        "keyframes_whole": f.stats.keyframes_whole,
                        "last_keyframe_ms": f.stats.last_keyframe_ms,
                        "last_whole_keyframe_ms": f.stats.last_whole_keyframe_ms,
                        "feedback": dict(sink.feedback),
                        "events": list(sink.events),
                        "now_ms": current_ms(),
                        "asked": (sink.quality, sink.width, sink.height),
                        "disabled": sink.disabled,
                        # The published track's side: packets in, losses on the way in, and
                        # the PLIs/NACKs sent up to the publisher for all its subscribers.
                        "upstream": dict(sink.track.stats),
                        # Gaps > 200 ms between frames sent (since reset_forwarded_freezes).
                        "freezes": sink.freezes,
                        "longest_gap_ms": sink.longest_gap_ms,
                    }
                )
        return out

    # -- helpers ---------------------------------------------------------------------------------

    def _note_sdp(self, p: _Participant, sdp: str, mid_map: dict[str, str]) -> None:
        """Record the video codecs an SDP we send offers for the avatar's video sections."""
        p.pt_codecs = _pt_codecs(sdp)
        avatar = p.room.avatar
        if avatar is None:
            return
        for mid, codecs in _codecs_by_mid(sdp).items():
            if mid_map.get(mid) == avatar.video_sid:
                self.counters.sdp_video_codecs.update(codecs)

    def _participants(self, room: str | None) -> list[_Participant]:
        """The subscribers of one room (or of all): the avatar's own client is not one."""
        rooms = [self._rooms[room]] if room in self._rooms else []
        if room is None:
            rooms = list(self._rooms.values())
        return [
            p
            for r in rooms
            for p in r.participants.values()
            if not p.pending_tracks and not p.published
        ]

    def _spawn_send_late(self, send_rtp: Any, data: bytes) -> None:
        self._spawn(_send_late(send_rtp, data))

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task


async def _send_late(send_rtp: Any, data: bytes) -> None:
    """A packet held by ``Faults.latency_ms``: its subscriber may have left meanwhile."""
    with contextlib.suppress(ConnectionError):  # the transport closed: the packet goes nowhere
        await send_rtp(data)


# -- CORS: LiveKit allows any origin and relies on the token, so a browser SDK can read every
# answer, a 401 included (without these headers it reports "server unreachable").

_CORS_METHODS = "GET, POST, OPTIONS"


@web.middleware
async def _preflight(request: web.Request, handler: Any) -> web.StreamResponse:
    if request.method == "OPTIONS":  # any path: the headers come from _add_cors_headers
        return web.Response(status=204)
    return cast(web.StreamResponse, await handler(request))


async def _add_cors_headers(request: web.Request, response: web.StreamResponse) -> None:
    origin = request.headers.get("Origin")
    headers = response.headers
    headers["Access-Control-Allow-Origin"] = origin or "*"
    if origin:
        headers["Access-Control-Allow-Credentials"] = "true"
        headers.add("Vary", "Origin")
    if request.method == "OPTIONS":
        asked = request.headers.get("Access-Control-Request-Headers")
        headers["Access-Control-Allow-Headers"] = asked or "*"
        headers["Access-Control-Allow-Methods"] = _CORS_METHODS
        headers["Access-Control-Max-Age"] = "600"


def _layers(sizes: list[tuple[int, int]]) -> list[lkm.VideoLayer]:
    """VideoLayers for announced sizes: the largest HIGH, then MEDIUM, then LOW."""
    ranked = sorted(sizes, key=lambda s: s[0] * s[1], reverse=True)
    qualities = (lkm.VideoQuality.HIGH, lkm.VideoQuality.MEDIUM, lkm.VideoQuality.LOW)
    return [
        lkm.VideoLayer(quality=q, width=w, height=h)
        for q, (w, h) in zip(qualities, ranked, strict=False)
    ]


def _mid_map(p: _Participant, pc: RTCPeerConnection) -> dict[str, str]:
    avatar = p.room.avatar
    if avatar is None:
        return {}
    out: dict[str, str] = {}
    for t in pc.getTransceivers():
        if t.sender in p.senders and t.mid is not None:
            out[t.mid] = avatar.video_sid if t.kind == "video" else avatar.audio_sid
    return out


def _codec_capabilities(codec: str) -> list[Any]:
    caps = RTCRtpSender.getCapabilities("video").codecs
    chosen = [c for c in caps if c.mimeType.lower() == f"video/{codec.lower()}"]
    return chosen + [c for c in caps if c.mimeType.lower() == "video/rtx"]


def _only_codec(codecs: list[Any], codec: str) -> list[Any]:
    keep = [c for c in codecs if c.mimeType.lower() == f"video/{codec.lower()}"]
    if not keep:
        raise ValueError(f"the client did not offer {codec}")
    pts = {c.payloadType for c in keep}
    rtx = [
        c for c in codecs if c.mimeType.lower() == "video/rtx" and c.parameters.get("apt") in pts
    ]
    return keep + rtx


def _codecs_by_mid(sdp: str) -> dict[str, set[str]]:
    """{mid: codec names (rtx excluded)} of the active media sections of an SDP."""
    out: dict[str, set[str]] = {}
    for section in sdp.split("\r\nm=")[1:]:
        lines = section.split("\r\n")
        if lines[0].split()[1] == "0":  # port 0: rejected section
            continue
        mid = next((x[6:] for x in lines if x.startswith("a=mid:")), None)
        if mid is None or "a=inactive" in lines:
            continue
        names = {x.split()[1].split("/")[0] for x in lines if x.startswith("a=rtpmap:")}
        out[mid] = {n for n in names if n.lower() != "rtx"}
    return out


def _pt_codecs(sdp: str) -> dict[tuple[str, int], str]:
    """{(kind, payload type): codec name} of every media section of an SDP."""
    out: dict[tuple[str, int], str] = {}
    for section in sdp.split("\r\nm=")[1:]:
        lines = section.split("\r\n")
        kind = lines[0].split()[0]
        for x in lines:
            if x.startswith("a=rtpmap:"):
                pt, name = x[9:].split()[:2]
                out[(kind, int(pt))] = name.split("/")[0]
    return out


def _codecs_in(sdp: str) -> list[str]:
    names = {
        line.split()[1].split("/")[0]
        for line in sdp.splitlines()
        if line.startswith("a=rtpmap:") and "rtx" not in line
    }
    return sorted(names)


# -- synthetic media for manual runs and tests ---------------------------------------------------


class SyntheticVideoTrack(MediaStreamTrack):
    """I420 frames with a moving bar and sync marks (frame number, media ms) at a fixed rate."""

    kind = "video"

    def __init__(
        self, width: int = 640, height: int = 360, fps: int = 30, pattern: str = "bar"
    ) -> None:
        super().__init__()
        if pattern not in PATTERNS:
            raise ValueError(f"pattern must be one of {PATTERNS}")
        self.width, self.height, self.fps, self.pattern = width, height, fps, pattern
        # "ramp": every pixel changes every frame, a codec load closer to a real picture.
        self._ramp = np.tile(np.arange(width, dtype=np.uint16), (height, 1))
        self.frames_sent = 0
        self._t0: float | None = None
        self._yuv = np.full((height * 3 // 2, width), 128, dtype=np.uint8)

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        loop = asyncio.get_running_loop()
        if self._t0 is None:
            self._t0 = loop.time()
        n = self.frames_sent
        await asyncio.sleep(max(0.0, self._t0 + n / self.fps - loop.time()))
        w, h = self.width, self.height
        y = self._yuv[:h]
        if self.pattern == "ramp":
            y[:] = (self._ramp + n * 4) % 200 + 28
        else:
            y[:] = 60
        x = (n * 4) % max(1, w - 16)
        y[marks.barcode_height(w) :, x : x + 16] = 200
        marks.stamp_frame(y, n, n * 1000 // self.fps, flash=n % self.fps == 0)
        frame = av.VideoFrame.from_ndarray(self._yuv, format="yuv420p")
        frame.pts = n * 90000 // self.fps
        frame.time_base = fractions.Fraction(1, 90000)
        self.frames_sent += 1
        return frame


class ToneAudioTrack(MediaStreamTrack):
    """48 kHz mono 20 ms frames: a tone beeping 0.5 s on, 0.5 s off."""

    kind = "audio"

    def __init__(self, freq_hz: float = 440.0, amplitude: float = 0.3) -> None:
        super().__init__()
        self.sample_rate, self.samples_per_frame = 48000, 960
        self.freq_hz, self.amplitude = freq_hz, amplitude
        self._ts = 0
        self._t0: float | None = None

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        loop = asyncio.get_running_loop()
        if self._t0 is None:
            self._t0 = loop.time()
        await asyncio.sleep(max(0.0, self._t0 + self._ts / self.sample_rate - loop.time()))
        t = (self._ts + np.arange(self.samples_per_frame)) / self.sample_rate
        on = (t % 1.0) < 0.5
        pcm = np.sin(2 * math.pi * self.freq_hz * t) * self.amplitude * 32767 * on
        frame = av.AudioFrame.from_ndarray(
            pcm.astype(np.int16).reshape(1, -1), format="s16", layout="mono"
        )
        frame.sample_rate = self.sample_rate
        frame.pts = self._ts
        frame.time_base = fractions.Fraction(1, self.sample_rate)
        self._ts += self.samples_per_frame
        return frame


async def _run(args: argparse.Namespace) -> None:
    server = LiveKitStandIn(args.api_key, args.api_secret)
    await server.start(args.host, args.port)
    await server.create_room(
        args.room,
        avatar_identity=args.identity,
        video=SyntheticVideoTrack(args.width, args.height, args.fps, args.pattern),
        audio=ToneAudioTrack(),
        video_codec=args.codec,
    )
    print(f"url={server.url}", flush=True)
    print(f"token={server.mint_token(args.room, 'daemon')}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await server.aclose()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="LiveKit stand-in with one synthetic avatar room")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=7880)
    p.add_argument("--room", default="test-room")
    p.add_argument("--identity", default="heygen")
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=360)
    p.add_argument("--fps", type=int, default=30)
    p.add_argument("--codec", default="VP8", choices=VIDEO_CODECS)
    p.add_argument("--pattern", default="bar", choices=PATTERNS)
    p.add_argument("--api-key", default="devkey")
    p.add_argument("--api-secret", default="secretsecretsecretsecretsecret00")
    args = p.parse_args(argv)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(20))
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_run(args))


if __name__ == "__main__":
    main()
