"""The stand-in SFU's forwarding: every publisher's RTP to the call's other participants.

What Stream's SFU does, as far as a subscriber can see it (from the browser SDK's
``Subscriber``/``TrackSubscriptionManager`` and Stream's protocol, GetStream/protocol):

* each participant has one **subscriber peer connection**, offered by the SFU
  (``SfuEvent.subscriber_offer``), answered by the client (Twirp ``SendAnswer`` with
  ``peer_type=SUBSCRIBER``), the client's candidates trickled (``IceTrickle``);
* every published **audio** track is sent to everyone else without asking; **video** only to
  those whose latest ``UpdateSubscriptions`` lists it (the SDK asks once a video element is bound);
* each m-line's ``msid`` stream id is ``<track_lookup_prefix>:TRACK_TYPE_<KIND>``, which is how the
  SDK maps a remote track to its participant (so a browser does not lip-sync audio with video:
  they are in different streams);
* media is **forwarded, not re-encoded**: payload, sequence numbers and RTP timestamps are the
  publisher's; only SSRC, payload type and the MID extension are the subscriber m-line's. The
  publisher's RTCP sender reports are translated onto the forwarded stream (same NTP<->RTP
  pair, since the timestamps are unchanged), so a viewer's timing is the publisher's. A
  viewer's PLI is passed upstream as a PLI to the publisher.

**Who answers a viewer's NACK (assumed; Stream's SFU is closed source).** Stream's SFU is built on
Pion, and the public Pion SFUs (ion-sfu, and LiveKit's ``pkg/sfu`` which grew out of it) split
loss recovery per hop: the SFU answers a subscriber's NACK itself, from the packets it buffered
on receive, as RTX (RFC 4588) on the subscriber m-line's RTX SSRC; it does not pass the NACK to
the publisher. Loss on the publisher's hop is the SFU's own receiver's business: it NACKs the
gaps it sees and the publisher (for us: the bridge's relay) answers with RTX, which the SFU
unwraps and forwards like any packet. The stand-in does the same: a viewer's NACK is answered
from a per-subscriber history of what was forwarded (``_HISTORY`` packets), as RTX when the
subscriber negotiated it; a NACK for a packet the SFU never received (lost upstream) is a miss,
counted and not forwarded, since the SFU's own NACK towards the publisher is already asking for
it and the packet is forwarded when its RTX arrives. So "RTX from the bridge" happens on the
publisher's hop: loss between the SFU and a viewer is repaired by the SFU. Counted from the
wire: per subscriber track the sequence numbers the viewer NACKed (its RTCP, as parsed),
answered (RTX sent) and missed; per published track the sequence numbers the SFU NACKed
towards the publisher (the RTCP it sends) and the RTX packets received (by payload type).

Assumed where the real service cannot be observed here: simulcast layer selection (the stand-in
receives single-layer only), the exact moment the SFU renegotiates (here: as soon as the wanted
set of tracks changes and each new track's codec is known, i.e. its publisher's transport is up;
one negotiation at a time per subscriber; never an offer without a media section, which a
browser refuses), and unsubscribed video (its m-line stays, set ``inactive``).

Private aiortc state (1.14, pinned) used here, as in :mod:`bridge.sim.stream.rtp_taps`: a
receiver's ``_RTCRtpReceiver__codecs`` / ``__rtx_ssrc`` (RTX unwrapping) and
``_send_rtcp_nack`` (counted), a sender's ``_ssrc``, ``_rtx_ssrc``,
``_RTCRtpSender__rtx_payload_type``, ``transport._send_rtp``, ``_send_keyframe``,
``_retransmit`` and its SR fields
``_RTCRtpSender__ntp_timestamp`` / ``__rtp_timestamp`` / ``__packet_count`` / ``__octet_count``,
a transceiver's ``_codecs`` / ``_headerExtensions`` and a sender's ``_stream_id`` (the msid).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
from aiortc import (
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpSender,
    RTCRtpTransceiver,
    RTCSessionDescription,
)
from aiortc.codecs import is_rtx
from aiortc.mediastreams import MediaStreamTrack
from aiortc.rtcrtpparameters import RTCRtpCodecParameters, RTCRtpParameters
from aiortc.rtcrtpreceiver import RTCRtpReceiver
from aiortc.rtp import HeaderExtensionsMap, RtcpSrPacket, RtpPacket, unwrap_rtx, wrap_rtx

from bridge import negotiation_guard

log = structlog.get_logger(__name__)

_HISTORY = 512  # forwarded packets kept per subscriber track, to answer NACKs
_ANSWER_TIMEOUT_S = 10.0
# A track announced before its publisher's transport is up has no codec to offer yet: the
# subscriber looks again this often, this many times (20 s), instead of offering nothing.
_CODEC_WAIT_S = 0.05
_CODEC_WAITS = 400
TRACK_TYPE_NAME = {"audio": "TRACK_TYPE_AUDIO", "video": "TRACK_TYPE_VIDEO"}

Spawn = Callable[[Awaitable[None], str], None]


class _IdleTrack(MediaStreamTrack):
    """A sender's placeholder: ``recv()`` never returns, so aiortc never encodes anything."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    async def recv(self) -> Any:
        await asyncio.Future()


@dataclass(frozen=True, slots=True)
class ForwardFaults:
    """What the hop from the SFU to its subscribers does (read per packet, so it can change).

    ``drop_rate``: each forwarded packet is lost with this probability (a ``seed``-ed generator,
    reproducible); lost packets stay in the NACK history, so a viewer's NACK recovers them.
    ``video_delay_ms``: forwarded video is held back this long (a known A/V offset: the negative
    control of a skew measurement)."""

    drop_rate: float = 0.0
    seed: int = 0
    video_delay_ms: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.drop_rate < 1.0 or self.video_delay_ms < 0:
            raise ValueError(f"invalid forward faults {self}")


class ArrivalStalls:
    """Stalls in a video track's arrival at the SFU (sans-I/O: feed it frame arrival times).

    The rule is libwebrtc's freeze rule (``freezeCount`` in a receiver's inbound-rtp stats): an
    interval longer than ``max(3 * mean, mean + 150 ms)`` of the recent intervals. Applied to
    what reaches the SFU, it tells a viewer's freeze that was already in the stream (the source
    or the publisher's hop stalled, e.g. an overloaded machine) from one the forwarding hop
    added. A frame is timed by the first packet of a new RTP timestamp."""

    WINDOW = 30
    KEPT = 256

    def __init__(self) -> None:
        self._last_ts: int | None = None
        self._last_t: float | None = None
        self._intervals: deque[float] = deque(maxlen=self.WINDOW)
        self.frames = 0
        self.stalls = 0
        self.longest_s = 0.0
        self.stall_times: deque[float] = deque(maxlen=self.KEPT)  # when each stall ended

    def add(self, rtp_timestamp: int, t: float) -> bool:
        """One packet's RTP timestamp and arrival time; True when it ends a stall."""
        if rtp_timestamp == self._last_ts:
            return False
        if self._last_ts is not None and ((rtp_timestamp - self._last_ts) & 0xFFFFFFFF) > 1 << 31:
            return False  # an older frame's packet (reordered, or a retransmission)
        self._last_ts = rtp_timestamp
        self.frames += 1
        stalled = False
        if self._last_t is not None:
            gap = t - self._last_t
            self.longest_s = max(self.longest_s, gap)
            if len(self._intervals) >= 5:
                mean = sum(self._intervals) / len(self._intervals)
                if gap > max(3 * mean, mean + 0.150):
                    self.stalls += 1
                    self.stall_times.append(t)
                    stalled = True
            self._intervals.append(gap)
        self._last_t = t
        return stalled

    def stalls_between(self, start: float, end: float) -> int:
        return sum(1 for t in self.stall_times if start <= t <= end)


@dataclass(frozen=True, slots=True)
class TrackKey:
    session_id: str  # the publisher's
    kind: str  # "audio" | "video"


@dataclass(eq=False)
class PublishedTrack:
    """One publisher's received track, fanned out to the subscribers' senders."""

    key: TrackKey
    lookup_prefix: str
    receiver: RTCRtpReceiver
    spawn: Spawn
    sinks: set[ForwardSink] = field(default_factory=set)
    media_ssrc: int | None = None
    last_sr: tuple[int, int] | None = None  # (ntp, rtp) of the publisher's latest SR
    packets: int = 0
    rtx_received: int = 0  # RTX packets from the publisher (answers to the SFU's NACKs)
    nacks_sent: int = 0  # sequence numbers the SFU NACKed towards the publisher
    arrival: ArrivalStalls = field(default_factory=ArrivalStalls)  # video only

    def codec(self) -> RTCRtpCodecParameters | None:
        codecs: dict[int, RTCRtpCodecParameters] = getattr(
            self.receiver, "_RTCRtpReceiver__codecs", {}
        )
        return next((c for c in codecs.values() if not is_rtx(c)), None)

    async def on_packet(self, packet: RtpPacket) -> None:
        """A packet as received from the publisher (RTX unwrapped here, never forwarded as RTX)."""
        r: Any = self.receiver
        codec = r._RTCRtpReceiver__codecs.get(packet.payload_type)
        if codec is None:
            return
        if is_rtx(codec):
            original = r._RTCRtpReceiver__rtx_ssrc.get(packet.ssrc)
            apt = codec.parameters.get("apt")
            if original is None or not isinstance(apt, int) or len(packet.payload) < 2:
                return
            packet = unwrap_rtx(packet, payload_type=apt, ssrc=original)
            self.rtx_received += 1
        self.media_ssrc = packet.ssrc
        self.packets += 1
        if self.key.kind == "video":
            self.arrival.add(packet.timestamp, time.monotonic())
        for sink in list(self.sinks):
            await sink.send(packet)

    def on_sr(self, sr: RtcpSrPacket) -> None:
        if sr.ssrc != self.media_ssrc and self.media_ssrc is not None:
            return
        info = sr.sender_info
        self.last_sr = (info.ntp_timestamp, info.rtp_timestamp)
        for sink in self.sinks:
            sink.set_sr(*self.last_sr)

    def request_keyframe(self) -> None:
        if self.key.kind != "video" or self.media_ssrc is None:
            return
        ssrc = self.media_ssrc
        self.spawn(self.receiver._send_rtcp_pli(ssrc), "forward-pli")

    def snapshot(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "packets": self.packets,
            "rtx_received": self.rtx_received,
            "nacks_sent": self.nacks_sent,
        }
        if self.key.kind == "video":
            out["arrival_stalls"] = self.arrival.stalls
            out["arrival_longest_gap_ms"] = round(1000 * self.arrival.longest_s, 1)
        return out


class ForwardSink:
    """One subscriber m-line carrying one published track."""

    def __init__(
        self,
        track: PublishedTrack,
        transceiver: RTCRtpTransceiver,
        faults: Callable[[], ForwardFaults | None] = lambda: None,
    ) -> None:
        self.track = track
        self._faults = faults
        self._rng: random.Random | None = None
        self._seed: int | None = None
        self.dropped = 0
        self.transceiver = transceiver
        self.sender: RTCRtpSender = transceiver.sender
        codecs = [c for c in transceiver._codecs if not is_rtx(c)]
        self.payload_type = codecs[0].payloadType if codecs else None
        self.mid = transceiver.mid
        self._ext = HeaderExtensionsMap()
        self._ext.configure(RTCRtpParameters(headerExtensions=transceiver._headerExtensions))
        self._history: dict[int, RtpPacket] = {}
        self._rtx_seq = random.Random(self.sender._ssrc).randrange(1 << 16)
        self.sent = 0
        self.frames = 0  # video frames forwarded (marker bits), lost or not: NACKs recover them
        self.send_errors = 0
        self.nacked = 0  # sequence numbers the viewer NACKed (its RTCP as received)
        self.nacks = 0  # answered from the history
        self.nack_misses = 0  # not in the history (never received, or too old)
        self.rtx_sent = 0  # answers sent as RTX (the rest, without negotiated RTX, as is)
        s: Any = self.sender
        s._send_keyframe = track.request_keyframe  # the viewer's PLI/FIR goes upstream
        s._retransmit = self._retransmit
        if track.last_sr is not None:
            self.set_sr(*track.last_sr)

    async def send(self, packet: RtpPacket) -> None:
        if self.payload_type is None:
            return
        out = RtpPacket(
            payload_type=self.payload_type,
            marker=packet.marker,
            sequence_number=packet.sequence_number,
            timestamp=packet.timestamp,
            ssrc=self.sender._ssrc,
            payload=packet.payload,
        )
        out.extensions.mid = self.mid
        out.extensions.audio_level = packet.extensions.audio_level
        out.extensions.abs_send_time = packet.extensions.abs_send_time
        data = out.serialize(self._ext)
        self._history[packet.sequence_number % _HISTORY] = out
        if packet.marker and self.track.key.kind == "video":
            self.frames += 1
        faults = self._faults()
        if faults is not None:
            if faults.drop_rate:
                if self._rng is None or self._seed != faults.seed:
                    self._rng, self._seed = random.Random(faults.seed), faults.seed
                if self._rng.random() < faults.drop_rate:
                    self.dropped += 1
                    return
            if faults.video_delay_ms and self.track.key.kind == "video":
                # Held without holding up the publisher's receive path (audio goes on).
                delayed = self._send_now(data, len(packet.payload))
                asyncio.get_running_loop().call_later(
                    faults.video_delay_ms / 1000, self.track.spawn, delayed, "forward-delay"
                )
                return
        await self._send_now(data, len(packet.payload))

    async def _send_now(self, data: bytes, payload_bytes: int) -> None:
        try:
            await self.sender.transport._send_rtp(data)
        except ConnectionError:
            self.send_errors += 1
            return
        self.sent += 1
        s: Any = self.sender
        s._RTCRtpSender__packet_count += 1
        s._RTCRtpSender__octet_count += payload_bytes

    def set_sr(self, ntp: int, rtp: int) -> None:
        # The publisher's mapping: valid as is because the RTP timestamps are forwarded unchanged.
        s: Any = self.sender
        s._RTCRtpSender__ntp_timestamp = ntp
        s._RTCRtpSender__rtp_timestamp = rtp

    async def _retransmit(self, sequence_number: int) -> None:
        """One sequence number of a viewer's NACK (aiortc calls this per lost packet it parsed)."""
        self.nacked += 1
        original = self._history.get(sequence_number % _HISTORY)
        if original is None or original.sequence_number != sequence_number:
            self.nack_misses += 1
            return
        self.nacks += 1
        s: Any = self.sender
        rtx_pt: int | None = s._RTCRtpSender__rtx_payload_type
        packet = original
        if rtx_pt is not None:
            packet = wrap_rtx(original, rtx_pt, self._rtx_seq, s._rtx_ssrc)
            self._rtx_seq = (self._rtx_seq + 1) & 0xFFFF
        with contextlib.suppress(ConnectionError):
            await self.sender.transport._send_rtp(packet.serialize(self._ext))
            if rtx_pt is not None:
                self.rtx_sent += 1

    def close(self) -> None:
        self.track.sinks.discard(self)


class Subscriber:
    """One participant's subscriber PC, renegotiated whenever the wanted tracks change.

    ``send_offer(sdp)`` delivers an offer to the participant (an ``SfuEvent``); the answer comes
    back through :meth:`on_answer`, the participant's candidates through :meth:`add_candidate`.
    """

    def __init__(
        self,
        session_id: str,
        send_offer: Callable[[str], Awaitable[None]],
        add_candidate: Callable[[RTCPeerConnection, str], Awaitable[None]],
        spawn: Spawn,
        faults: Callable[[], ForwardFaults | None] = lambda: None,
    ) -> None:
        self.session_id = session_id
        self._faults = faults
        self._send_offer = send_offer
        self._add_candidate = add_candidate
        self._spawn = spawn
        negotiation_guard.install()  # tracks are added to a subscriber mid-handshake
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.sinks: dict[TrackKey, ForwardSink] = {}
        self._transceivers: dict[TrackKey, RTCRtpTransceiver] = {}
        self._answer: asyncio.Future[str] | None = None
        self._pending_ice: list[str] = []
        self._wanted: dict[TrackKey, PublishedTrack] = {}
        self._dirty = asyncio.Event()
        self._running = False
        self._codec_unknown = False
        self.negotiations = 0
        self.answer_timeouts = 0
        self.closed = False
        self.pc.on("connectionstatechange", self._on_connection_state)

    def _on_connection_state(self) -> None:
        # A new viewer can decode from the next keyframe only once its transport is up: ask
        # then (a keyframe asked for at negotiation would reach a viewer not yet connected,
        # and its own PLI would then meet the publisher's keyframe-request throttle).
        if self.pc.connectionState == "connected":
            for sink in self.sinks.values():
                sink.track.request_keyframe()

    def want(self, tracks: dict[TrackKey, PublishedTrack]) -> None:
        """Set the tracks this participant should receive; renegotiates in the background."""
        self._wanted = dict(tracks)
        self._dirty.set()
        if not self._running:
            self._running = True
            self._spawn(self._run(), f"subscriber-{self.session_id[:8]}")

    async def _run(self) -> None:
        try:
            waits = 0
            while self._dirty.is_set() and not self.closed:
                self._dirty.clear()
                await self._sync(dict(self._wanted))
                if self._codec_unknown and waits < _CODEC_WAITS:  # bounded
                    waits += 1
                    await asyncio.sleep(_CODEC_WAIT_S)
                    self._dirty.set()
        finally:
            self._running = False

    async def _sync(self, wanted: dict[TrackKey, PublishedTrack]) -> None:
        current = {k for k, s in self.sinks.items() if s.track is wanted.get(k)}
        added = [k for k in wanted if k not in current]
        removed = [k for k in self.sinks if k not in wanted or k in added]
        self._codec_unknown = False
        if not added and not removed:
            return
        for key in removed:
            self.sinks.pop(key).close()
            transceiver = self._transceivers.get(key)
            if transceiver is not None and key not in wanted:
                transceiver.direction = "inactive"
        new: list[TrackKey] = []
        for key in added:
            track = wanted[key]
            transceiver = self._transceivers.get(key)
            if transceiver is None:
                transceiver = self._add_transceiver(track)
                if transceiver is None:
                    self._codec_unknown = True
                    continue
                self._transceivers[key] = transceiver
            transceiver.direction = "sendonly"
            new.append(key)
        if not new and not removed:
            # Nothing to offer yet: an offer without a media section is one a browser refuses
            # (an empty BUNDLE group), which cost a viewer who joined before the avatar 10 s.
            return
        if not await self._negotiate():
            return
        for key in new:
            track = wanted[key]
            sink = ForwardSink(track, self._transceivers[key], self._faults)
            self.sinks[key] = sink
            track.sinks.add(sink)
            if self.pc.connectionState == "connected":  # else once it is (see above)
                track.request_keyframe()  # a new viewer decodes from the next keyframe
        log.info(
            "sfu_subscriber_updated",
            session=self.session_id,
            tracks=sorted(f"{k.session_id[:8]}:{k.kind}" for k in self.sinks),
        )

    def _add_transceiver(self, track: PublishedTrack) -> RTCRtpTransceiver | None:
        codec = track.codec()
        if codec is None:
            return None
        transceiver = self.pc.addTransceiver(_IdleTrack(track.key.kind), direction="sendonly")
        caps = RTCRtpSender.getCapabilities(track.key.kind).codecs
        name = codec.mimeType.lower()
        prefs = [c for c in caps if c.mimeType.lower() == name]
        if name == "video/h264":  # the publisher's packetization and profile
            wanted = codec.parameters.get("profile-level-id", "")
            exact = [c for c in prefs if c.parameters.get("profile-level-id") == wanted]
            prefs = (exact or prefs)[:1]
        prefs = prefs[:1] + [c for c in caps if c.mimeType.lower().endswith("/rtx")]
        if track.key.kind == "audio":
            prefs = prefs[:1]
        transceiver.setCodecPreferences(prefs)
        sender: Any = transceiver.sender
        sender._stream_id = f"{track.lookup_prefix}:{TRACK_TYPE_NAME[track.key.kind]}"
        return transceiver

    async def _negotiate(self) -> bool:
        loop = asyncio.get_running_loop()
        self._answer = loop.create_future()
        await self.pc.setLocalDescription(await self.pc.createOffer())
        self.negotiations += 1
        await self._send_offer(self.pc.localDescription.sdp)
        try:
            answer = await asyncio.wait_for(self._answer, _ANSWER_TIMEOUT_S)
        except TimeoutError:
            self.answer_timeouts += 1
            log.warning("sfu_subscriber_answer_timeout", session=self.session_id)
            return False
        finally:
            self._answer = None
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        for cand in self._pending_ice:
            await self._add_candidate(self.pc, cand)
        self._pending_ice.clear()
        return True

    def on_answer(self, sdp: str) -> bool:
        if self._answer is None or self._answer.done():
            return False
        self._answer.set_result(sdp)
        return True

    async def add_candidate(self, candidate_json: str) -> None:
        remote: RTCSessionDescription | None = self.pc.remoteDescription
        if remote is not None:
            await self._add_candidate(self.pc, candidate_json)
        elif len(self._pending_ice) < 64:  # bounded: a flood before the answer is dropped
            self._pending_ice.append(candidate_json)

    def snapshot(self) -> dict[str, Any]:
        return {
            "pc_state": self.pc.connectionState,
            "negotiations": self.negotiations,
            "answer_timeouts": self.answer_timeouts,
            "tracks": {
                f"{k.session_id}:{k.kind}": {
                    "sent": s.sent,
                    "frames": s.frames,
                    "dropped": s.dropped,
                    "nacked": s.nacked,
                    "nacks_answered": s.nacks,
                    "nack_misses": s.nack_misses,
                    "rtx_sent": s.rtx_sent,
                }
                for k, s in self.sinks.items()
            },
        }

    async def close(self) -> None:
        self.closed = True
        for sink in self.sinks.values():
            sink.close()
        self.sinks.clear()
        if self._answer is not None and not self._answer.done():
            self._answer.cancel()
        await self.pc.close()


def install_forward_tap(receiver: RTCRtpReceiver, track: PublishedTrack) -> None:
    """Tee the receiver's packets to ``track`` (in front of the SFU's own handling) and its
    sender reports, and count the NACKs the SFU sends the publisher."""
    inner = receiver._handle_rtp_packet
    inner_rtcp = receiver._handle_rtcp_packet

    async def handle(packet: RtpPacket, arrival_time_ms: int) -> None:
        await track.on_packet(packet)
        await inner(packet, arrival_time_ms)

    async def handle_rtcp(packet: Any) -> None:
        if isinstance(packet, RtcpSrPacket):
            track.on_sr(packet)
        await inner_rtcp(packet)

    r: Any = receiver
    inner_nack = receiver._send_rtcp_nack

    async def send_nack(media_ssrc: int, lost: list[int]) -> None:
        # The SFU's own NACKs to the publisher (aiortc's generator, full mode only).
        track.nacks_sent += len(lost)
        await inner_nack(media_ssrc, lost)

    r._handle_rtp_packet = handle
    r._handle_rtcp_packet = handle_rtcp
    r._send_rtcp_nack = send_nack
