"""The LiveKit stand-in's SFU I/O: a client's published tracks, forwarded to subscribers.

A participant that publishes with a LiveKit client (the ``livekit`` SDK: libwebrtc, simulcast
``q``/``h``/``f`` for video, Opus) sends its RTP on its aiortc peer connection. aiortc neither
negotiates simulcast nor demultiplexes rids, so:

* the answer aiortc writes is amended (:func:`accept_simulcast`, pure text) to accept the offer's
  rids and RID header extensions, as an SFU does;
* the connection's DTLS transport hands every decrypted packet of a published track to
  :class:`PublisherTap` instead of aiortc's receivers; it learns each layer's SSRC from the RID
  extension and keeps the layers' sender reports;
* each subscriber gets a :class:`ForwardSink` on an ordinary aiortc sender (negotiated like any
  track, with a track that never yields): the sans-I/O :class:`~bridge.sim.sfu.LayerForwarder`
  picks one layer and rewrites it, and the sink writes the packet on the subscriber's transport
  and keeps aiortc's retransmission history and sender-report state current.

Sender reports are LiveKit's pass-through, its default (``pkg/sfu/downtrack.go``
``CreateSenderReport`` -> ``rtpstats_sender.go`` ``GetRtcpSenderReport(..., passThrough)`` unless
``DisableSenderReportPassThrough``): the forwarded layer's publisher NTP with its RTP time moved by
the forwarder's offset. LiveKit extrapolates that pair to the moment it sends; the stand-in sends
the pair itself, the same NTP<->RTP line. Before the publisher's first SR LiveKit sends none; the
stand-in sends its own send-time mapping, which the relay never prefers (docs/relay.md).

Feedback goes upstream as LiveKit's does: a subscriber's PLI becomes a PLI for the forwarded
layer's SSRC, a NACK the sender history cannot answer becomes a NACK for the source packet, and a
layer switch asks for the new layer's keyframe. The publisher gets a REMB so libwebrtc's bandwidth
estimate (no transport-cc here) opens all layers at start.

Everything reaches into aiortc's private sender and transport state (name-mangled attributes);
aiortc is pinned. Stand-in only: the daemon never imports this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, cast

import structlog
from aiortc import MediaStreamTrack, RTCRtpSender

# The clock of aiortc's `arrival_time_ms`: every throttle here (PLI, NACK) compares times taken
# from packets with times taken in feedback callbacks, so both must read the same clock (a
# monotonic reading against an arrival time throttled every PLI after the first).
from aiortc.clock import current_ms
from aiortc.mediastreams import MediaStreamError
from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters
from aiortc.rtp import (
    RTCP_PSFB_APP,
    RTCP_PSFB_PLI,
    RTCP_RTPFB_NACK,
    RTP_HISTORY_SIZE,
    HeaderExtensionsMap,
    RtcpPacket,
    RtcpPsfbPacket,
    RtcpRtpfbPacket,
    RtcpSrPacket,
    RtpPacket,
    pack_remb_fci,
)

from bridge.sim.sfu import QUALITY_RIDS, LayerForwarder, select_rid

__all__ = [
    "ForwardSink",
    "PendingTrack",
    "PublishedTrack",
    "PublisherTap",
    "SilentTrack",
    "accept_simulcast",
    "sections_by_mid",
]

log = structlog.get_logger(__name__)

RID_URI = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"
RRID_URI = "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id"
# What the publisher's bandwidth estimate is told it may use (REMB): its layers' announced
# bitrates plus headroom. Far more makes libwebrtc pad the lowest layer to probe for it.
REMB_HEADROOM = 1.25
REMB_MIN_BPS = 500_000
PLI_INTERVAL_MS = 300  # per layer, like LiveKit's PLI throttle
# A gap between forwarded frames above this is a freeze in what the subscriber is sent (the same
# floor as the Stream stand-in's receiver measure): a test compares the two to tell a freeze the
# bridge added from one the avatar's encoder made (libwebrtc drops frames under load).
FREEZE_GAP_MS = 200
NACK_REPEAT_MS = 1000  # per packet
# A publisher's UDP receive buffer, as LiveKit's deployment guide asks of the host
# (net.core.rmem_max >= 5 MB): libwebrtc pads every simulcast layer up to its bitrate (~1000
# packets/s here), and a Python loop starved for a few hundred ms under load would otherwise
# overflow the kernel's default ~200 KB and lose whole keyframes on the way in.
RECV_BUFFER_BYTES = 5_000_000
_SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)  # Linux; root may exceed rmem_max


# -- SDP (pure text) -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Section:
    kind: str
    mid: str | None
    lines: tuple[str, ...]

    def attr(self, name: str) -> list[str]:
        prefix = f"a={name}:"
        return [x[len(prefix) :] for x in self.lines if x.startswith(prefix)]


def _split(sdp: str) -> tuple[list[str], list[list[str]]]:
    lines = [x for x in sdp.replace("\r\n", "\n").split("\n") if x]
    head: list[str] = []
    sections: list[list[str]] = []
    for x in lines:
        if x.startswith("m="):
            sections.append([x])
        elif sections:
            sections[-1].append(x)
        else:
            head.append(x)
    return head, sections


def sections_by_mid(sdp: str) -> dict[str, Section]:
    out: dict[str, Section] = {}
    for lines in _split(sdp)[1]:
        kind = lines[0][2:].split()[0]
        mid = next((x[6:] for x in lines if x.startswith("a=mid:")), None)
        if mid is not None:
            out[mid] = Section(kind, mid, tuple(lines))
    return out


def accept_simulcast(offer_sdp: str, answer_sdp: str) -> str:
    """The answer, amended to accept the offer's simulcast rids and RID header extensions.

    For every video section: the RID/repaired-RID ``extmap`` lines of the offer (libwebrtc refuses
    a later simulcast offer once these were answered away), and where the offer sends simulcast,
    ``a=rid:<rid> recv`` per rid and ``a=simulcast:recv <rids>``.
    """
    offered = sections_by_mid(offer_sdp)
    head, sections = _split(answer_sdp)
    out = list(head)
    for lines in sections:
        kind = lines[0][2:].split()[0]
        mid = next((x[6:] for x in lines if x.startswith("a=mid:")), None)
        o = offered.get(mid or "")
        rejected = lines[0].split()[1] == "0"
        if kind == "video" and o is not None and not rejected:
            have = set(lines)
            for ext in o.attr("extmap"):
                if ext.split()[1] in (RID_URI, RRID_URI) and f"a=extmap:{ext}" not in have:
                    lines.append(f"a=extmap:{ext}")
            rids = [r.split()[0] for r in o.attr("rid") if r.split()[1:2] == ["send"]]
            if (
                rids
                and o.attr("simulcast")
                and not any(x.startswith("a=simulcast:") for x in lines)
            ):
                lines += [f"a=rid:{r} recv" for r in rids]
                lines.append(f"a=simulcast:recv {';'.join(rids)}")
        out += lines
    return "\r\n".join(out) + "\r\n"


# -- published tracks ----------------------------------------------------------------------------


@dataclass
class PendingTrack:
    """A track announced by ``add_track`` whose media section is not negotiated yet."""

    sid: str
    cid: str
    kind: str  # "audio" / "video"
    codec: str  # "VP8", "H264", "opus"
    width: int
    height: int
    layer_sizes: list[tuple[int, int]]  # as announced, any order
    bitrate: int = 0  # sum of the announced layers' bitrates, bits per second


@dataclass
class _Layer:
    rid: str
    ssrc: int | None = None
    rtx_ssrc: int | None = None
    last_ms: int = 0
    packets: int = 0
    sr: tuple[int, int] | None = None  # last (ntp, rtp) of the publisher's sender report
    pli_at_ms: int = -(10**9)
    last_seq: int | None = None


SendRtcp = Callable[[bytes], Awaitable[None]]


@dataclass
class PublishedTrack:
    """One published track: its layers as they arrive and the subscribers they go to."""

    info: PendingTrack
    mid: str
    send_rtcp: SendRtcp
    layers: dict[str, _Layer] = field(default_factory=dict)
    sinks: list[ForwardSink] = field(default_factory=list)
    _nacked: dict[tuple[str, int], int] = field(default_factory=dict)  # (rid, seq) -> asked ms
    stats: dict[str, int] = field(
        default_factory=lambda: {
            "packets": 0,
            "padding": 0,
            "gaps": 0,
            "rtx": 0,
            "plis_up": 0,
            "nacks_up": 0,
            "late": 0,
        }
    )

    @property
    def kind(self) -> str:
        return self.info.kind

    def sizes(self) -> dict[str, tuple[int, int]]:
        """rid -> size for the layers that have sent media, sizes as announced.

        LiveKit's convention: with N layers announced, rids q, h, f name them from the smallest.
        """
        sizes = sorted(self.info.layer_sizes, key=lambda s: s[0] * s[1])
        if not sizes:
            sizes = [(self.info.width, self.info.height)]
        rank = {r: i for i, r in enumerate(QUALITY_RIDS)}
        return {
            rid: sizes[min(rank.get(rid, len(sizes) - 1), len(sizes) - 1)]
            for rid, layer in self.layers.items()
            if layer.packets
        }

    async def request_keyframe(self, rid: str, now_ms: int) -> None:
        layer = self.layers.get(rid)
        if layer is None or layer.ssrc is None or now_ms - layer.pli_at_ms < PLI_INTERVAL_MS:
            return
        layer.pli_at_ms = now_ms
        self.stats["plis_up"] += 1
        pli = RtcpPsfbPacket(fmt=RTCP_PSFB_PLI, ssrc=1, media_ssrc=layer.ssrc)
        await self.send_rtcp(bytes(pli))

    async def nack(self, rid: str, seqs: list[int], now_ms: int) -> None:
        layer = self.layers.get(rid)
        if layer is None or layer.ssrc is None:
            return
        # A subscriber repeats its NACKs every RTT: ask the publisher once per NACK_REPEAT_MS
        # (a packet the publisher cannot resend, a padding probe say, would else storm).
        asked = self._nacked
        seqs = [q for q in seqs if now_ms - asked.get((rid, q), -(10**9)) >= NACK_REPEAT_MS]
        if not seqs:
            return
        for q in seqs:
            asked[(rid, q)] = now_ms
        while len(asked) > 4096:
            del asked[next(iter(asked))]
        self.stats["nacks_up"] += 1
        packet = RtcpRtpfbPacket(fmt=RTCP_RTPFB_NACK, ssrc=1, media_ssrc=layer.ssrc)
        packet.lost = sorted(seqs)
        await self.send_rtcp(bytes(packet))

    async def on_packet(self, rid: str, packet: RtpPacket, now_ms: int) -> None:
        layer = self.layers[rid]
        layer.last_ms = now_ms
        if not packet.payload:
            # Padding only (libwebrtc probing the bandwidth): not forwarded, as in LiveKit.
            self.stats["padding"] += 1
            seq = packet.sequence_number
            if layer.last_seq is None or 0 < (seq - layer.last_seq) % 65536 < 32768:
                layer.last_seq = seq  # not a loss: the next media packet follows it
            for sink in self.sinks:
                if sink.forwarder is not None:
                    sink.forwarder.skip_padding(rid, packet.sequence_number)
            return
        layer.packets += 1
        self.stats["packets"] += 1
        if layer.last_seq is not None:
            ahead = (packet.sequence_number - layer.last_seq) % 65536
            if 1 < ahead < 32768:
                self.stats["gaps"] += ahead - 1  # lost on the way in (or reordered)
        if layer.last_seq is None or 0 < (packet.sequence_number - layer.last_seq) % 65536 < 32768:
            layer.last_seq = packet.sequence_number
        else:
            self.stats["late"] += 1  # a retransmission without RTX, or reordered
        for sink in list(self.sinks):
            await sink.on_packet(self, rid, packet, now_ms)

    def on_sr(self, rid: str, sr: RtcpSrPacket) -> None:
        info = sr.sender_info
        self.layers[rid].sr = (info.ntp_timestamp, info.rtp_timestamp)
        for sink in self.sinks:
            sink.on_sr(rid, info.ntp_timestamp, info.rtp_timestamp)


class PublisherTap:
    """Takes a publisher connection's RTP/RTCP for its published tracks off aiortc's hands."""

    def __init__(self, transport: Any, offer_sdp: str) -> None:
        self.transport = transport
        self.tracks: dict[str, PublishedTrack] = {}  # by mid
        self._by_ssrc: dict[int, tuple[PublishedTrack, str, bool]] = {}  # (track, rid, is_rtx)
        self._ext = HeaderExtensionsMap()
        self._rtx_pts: set[int] = set()
        self._remb_task: asyncio.Task[None] | None = None
        self.configure(offer_sdp)
        widen_receive_buffers(transport)
        self._orig_rtp = transport._handle_rtp_data
        self._orig_rtcp = transport._handle_rtcp_data
        transport._handle_rtp_data = self._on_rtp
        transport._handle_rtcp_data = self._on_rtcp

    def configure(self, offer_sdp: str) -> None:
        """Header extension ids and RTX payload types, from the publisher's (latest) offer."""
        exts: dict[str, int] = {}
        for section in sections_by_mid(offer_sdp).values():
            for ext in section.attr("extmap"):
                ident, uri = ext.split()[:2]
                exts[uri] = int(ident.split("/")[0])
            for rtpmap in section.attr("rtpmap"):
                pt, name = rtpmap.split()[:2]
                if name.lower().startswith("rtx/"):
                    self._rtx_pts.add(int(pt))
        params = RTCRtpParameters(
            headerExtensions=[RTCRtpHeaderExtensionParameters(id=i, uri=u) for u, i in exts.items()]
        )
        self._ext.configure(params)

    def add(self, track: PublishedTrack) -> None:
        self.tracks[track.mid] = track
        if self._remb_task is None and track.kind == "video":
            self._remb_task = asyncio.get_running_loop().create_task(self._remb())

    def close(self) -> None:
        if self._remb_task is not None:
            self._remb_task.cancel()
        for track in self.tracks.values():
            for sink in list(track.sinks):
                sink.detach()

    async def send_rtcp(self, data: bytes) -> None:
        with contextlib.suppress(ConnectionError):
            await self.transport._send_rtp(data)

    async def _remb(self) -> None:
        while True:
            ssrcs = [
                layer.ssrc
                for t in self.tracks.values()
                if t.kind == "video"
                for layer in t.layers.values()
                if layer.ssrc is not None
            ]
            if ssrcs:
                announced = sum(t.info.bitrate for t in self.tracks.values() if t.kind == "video")
                bps = max(REMB_MIN_BPS, int(announced * REMB_HEADROOM))
                remb = RtcpPsfbPacket(
                    fmt=RTCP_PSFB_APP, ssrc=1, media_ssrc=0, fci=pack_remb_fci(bps, ssrcs)
                )
                await self.send_rtcp(bytes(remb))
            await asyncio.sleep(0.25 if not ssrcs else 1.0)

    async def _on_rtp(self, data: bytes, arrival_time_ms: int) -> None:
        try:
            packet = RtpPacket.parse(data, self._ext)
        except ValueError:
            return
        known = self._by_ssrc.get(packet.ssrc)
        if known is None:
            known = self._learn(packet)
            if known is None:
                await self._orig_rtp(data, arrival_time_ms)
                return
        track, rid, is_rtx = known
        if is_rtx or packet.payload_type in self._rtx_pts:
            if 0 < len(packet.payload) < 2:
                return
            if not packet.payload:  # RTX padding (a bandwidth probe)
                track.stats["padding"] += 1
                return
            track.stats["rtx"] += 1
            packet.sequence_number = int.from_bytes(packet.payload[:2], "big")
            packet.payload = packet.payload[2:]
        await track.on_packet(rid, packet, arrival_time_ms)

    def _learn(self, packet: RtpPacket) -> tuple[PublishedTrack, str, bool] | None:
        track = self.tracks.get(packet.extensions.mid or "")
        if track is None:
            return None
        if track.kind == "audio":
            rid, is_rtx = "", False
        elif packet.extensions.repaired_rtp_stream_id:
            rid, is_rtx = packet.extensions.repaired_rtp_stream_id, True
        elif packet.extensions.rtp_stream_id:
            rid, is_rtx = packet.extensions.rtp_stream_id, False
        else:
            rid, is_rtx = "", packet.payload_type in self._rtx_pts  # not simulcast
        layer = track.layers.setdefault(rid, _Layer(rid))
        if is_rtx:
            layer.rtx_ssrc = packet.ssrc
        else:
            layer.ssrc = packet.ssrc
        self._by_ssrc[packet.ssrc] = (track, rid, is_rtx)
        log.info("livekit_layer_seen", track=track.info.sid, rid=rid, ssrc=packet.ssrc, rtx=is_rtx)
        return track, rid, is_rtx

    async def _on_rtcp(self, data: bytes) -> None:
        try:
            packets = RtcpPacket.parse(data)
        except ValueError:
            return
        for p in packets:
            if isinstance(p, RtcpSrPacket):
                known = self._by_ssrc.get(p.ssrc)
                if known is not None and not known[2]:
                    known[0].on_sr(known[1], p)
        await self._orig_rtcp(data)


def widen_receive_buffers(dtls_transport: Any) -> list[int]:
    """Set the receive buffer of the connection's ICE sockets to RECV_BUFFER_BYTES (forced when
    permitted, else up to the system's maximum); returns the sizes the kernel granted."""
    granted: list[int] = []
    connection = getattr(dtls_transport.transport, "_connection", None)
    for protocol in getattr(connection, "_protocols", []):
        udp = getattr(protocol, "transport", None)
        sock = udp.get_extra_info("socket") if udp is not None else None
        if sock is None:
            continue
        try:
            sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, RECV_BUFFER_BYTES)
        except OSError:  # not permitted: the ordinary option, capped by net.core.rmem_max
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECV_BUFFER_BYTES)
        granted.append(sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))
    log.info("livekit_publisher_recv_buffer", bytes=granted)
    return granted


class SilentTrack(MediaStreamTrack):
    """What an aiortc sender carrying forwarded packets reads: nothing, until stopped."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self._ended: asyncio.Event | None = None

    async def recv(self) -> Any:
        if self._ended is None:
            self._ended = asyncio.Event()
        if self.readyState == "live":
            await self._ended.wait()
        raise MediaStreamError

    def stop(self) -> None:
        if self._ended is not None:
            self._ended.set()
        super().stop()


def _ntp_now() -> int:
    now = time.time() + 2_208_988_800  # 1900 epoch
    return int(now * (1 << 32)) & 0xFFFFFFFFFFFFFFFF


class ForwardSink:
    """One subscriber's sender for one published track: forwarded packets go out on it."""

    def __init__(
        self,
        track: PublishedTrack,
        sender: RTCRtpSender,
        quality: int | None,
        forced_rid: Callable[[], str | None] | None = None,
    ) -> None:
        self.track = track
        self._forced_rid = forced_rid
        self.sender = sender
        self.forwarder = LayerForwarder(track.info.codec) if track.kind == "video" else None
        self.quality = quality
        self.width = 0
        self.height = 0
        self.disabled = False
        self.sent = 0
        # Feedback from this subscriber: PLIs, and NACKed numbers answered from the sender's
        # history, asked of the publisher, or unknown (a failure says which link broke).
        self.feedback = {
            "plis_in": 0,
            "nacks_in": 0,
            "nacks_held": 0,
            "nacks_up": 0,
            "nacks_lost": 0,
        }
        # What happened when (stand-in clock, ms): switches, keyframes, PLIs; bounded.
        self.events: deque[tuple[int, str]] = deque(maxlen=48)
        self.freezes = 0
        self.longest_gap_ms = 0
        self._last_frame_ms: int | None = None
        self._pt: int | None = None
        self._have_sr = False
        s = cast(Any, sender)
        self._orig_retransmit = s._retransmit
        s._retransmit = self._retransmit
        s._send_keyframe = self._on_pli
        self._orig_send = s.send
        s.send = self._on_send
        track.sinks.append(self)

    def detach(self) -> None:
        if self in self.track.sinks:
            self.track.sinks.remove(self)

    def update_settings(
        self, *, disabled: bool, quality: int | None, width: int, height: int
    ) -> None:
        self.disabled, self.quality, self.width, self.height = disabled, quality, width, height

    async def _on_send(self, parameters: Any) -> None:
        # aiortc starts the sender with the negotiated codecs, first = the one it sends.
        self._pt = parameters.codecs[0].payloadType
        await self._orig_send(parameters)

    def _payload_type(self) -> int | None:
        """The negotiated payload type, once aiortc has started the sender."""
        if not cast(Any, self.sender)._RTCRtpSender__started:
            return None
        return self._pt

    async def on_packet(
        self, track: PublishedTrack, rid: str, packet: RtpPacket, now_ms: int
    ) -> None:
        pt = self._payload_type()
        if pt is None or self.disabled:
            return
        if self.forwarder is None:
            await self._send(
                pt,
                packet.sequence_number,
                packet.timestamp,
                packet.marker,
                packet.payload,
                packet.extensions.audio_level,
            )
            return
        f = self.forwarder
        sizes = track.sizes()
        target = select_rid(sizes, quality=self.quality, width=self.width, height=self.height)
        forced = self._forced_rid() if self._forced_rid is not None else None
        if forced is not None and forced in sizes:
            target = forced  # the SFU's own choice (congestion control) over the subscriber's
        f.set_target(target)
        want = f.wants_keyframe(now_ms)
        if want is not None:
            await track.request_keyframe(want, now_ms)
        out = f.forward(
            rid,
            packet.sequence_number,
            packet.timestamp,
            bool(packet.marker),
            packet.payload,
            now_ms,
        )
        if out is None:
            return
        if out.switched:
            self.events.append((now_ms, f"switch {rid} seq {out.sequence_number}"))
            log.info(
                "livekit_layer_forwarded",
                track=track.info.sid,
                rid=rid,
                size=sizes.get(rid),
                switches=f.stats.switches,
            )
            layer = track.layers[rid]
            if layer.sr is not None:
                self.on_sr(rid, *layer.sr)
        if out.keyframe:
            self.events.append((now_ms, f"key {rid} seq {out.sequence_number}"))
        await self._send(pt, out.sequence_number, out.timestamp, out.marker, out.payload, None)
        if out.marker:
            if self._last_frame_ms is not None:
                gap = now_ms - self._last_frame_ms
                self.longest_gap_ms = max(self.longest_gap_ms, gap)
                if gap > FREEZE_GAP_MS:
                    self.freezes += 1
            self._last_frame_ms = now_ms

    def reset_freezes(self) -> None:
        self.freezes, self.longest_gap_ms, self._last_frame_ms = 0, 0, None

    def on_sr(self, rid: str, ntp: int, rtp_ts: int) -> None:
        """A publisher SR of ``rid``, regenerated for this subscriber's stream."""
        if self.forwarder is None:
            mapped: tuple[int, int] | None = (ntp, rtp_ts)
        else:
            mapped = self.forwarder.translate_sr(rid, ntp, rtp_ts)
        if mapped is None:
            return
        s = cast(Any, self.sender)
        s._RTCRtpSender__ntp_timestamp, s._RTCRtpSender__rtp_timestamp = mapped
        self._have_sr = True

    async def _send(
        self, pt: int, seq: int, ts: int, marker: bool | int, payload: bytes, audio_level: Any
    ) -> None:
        s = cast(Any, self.sender)
        packet = RtpPacket(
            payload_type=pt,
            marker=int(bool(marker)),
            sequence_number=seq,
            timestamp=ts,
            ssrc=self.sender._ssrc,
            payload=payload,
        )
        packet.extensions.mid = s._RTCRtpSender__mid
        packet.extensions.abs_send_time = (_ntp_now() >> 14) & 0x00FFFFFF
        if audio_level is not None:
            packet.extensions.audio_level = audio_level
        s._RTCRtpSender__rtp_history[seq % RTP_HISTORY_SIZE] = packet
        data = packet.serialize(s._RTCRtpSender__rtp_header_extensions_map)
        try:
            await self.sender.transport._send_rtp(data)
        except ConnectionError:
            return
        if not self._have_sr:
            # Until the publisher's first SR: our own clock against what we send.
            s._RTCRtpSender__ntp_timestamp = _ntp_now()
            s._RTCRtpSender__rtp_timestamp = ts
        s._RTCRtpSender__packet_count += 1
        s._RTCRtpSender__octet_count += len(payload)
        self.sent += 1

    def _on_pli(self) -> None:
        f = self.forwarder
        self.feedback["plis_in"] += 1
        if f is None or f.current is None:
            return
        now_ms = current_ms()
        self.events.append((now_ms, f"pli {f.current}"))
        task = asyncio.get_running_loop().create_task(
            self.track.request_keyframe(f.current, now_ms)
        )
        _BACKGROUND.add(task)
        task.add_done_callback(_BACKGROUND.discard)

    async def _retransmit(self, seq: int) -> None:
        s = cast(Any, self.sender)
        self.feedback["nacks_in"] += 1
        held = s._RTCRtpSender__rtp_history.get(seq % RTP_HISTORY_SIZE)
        if held is not None and held.sequence_number == seq:
            self.feedback["nacks_held"] += 1
            await self._orig_retransmit(seq)
            return
        source = self.forwarder.source_of(seq) if self.forwarder is not None else None
        if source is not None:
            self.feedback["nacks_up"] += 1
            await self.track.nack(source[0], [source[1]], current_ms())
        else:
            self.feedback["nacks_lost"] += 1


# Short feedback sends started from aiortc's synchronous callbacks; owned so none is lost.
_BACKGROUND: set[asyncio.Task[None]] = set()
