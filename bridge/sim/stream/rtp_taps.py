"""Taps on the stand-in SFU's receive hop: fault injection (drop, delay) and a light mode that
counts and checks packets instead of decoding them.

Both take over one aiortc receiver's packet handler (``RTCRtpReceiver._handle_rtp_packet``, which
aiortc 1.14's DTLS transport looks up on the instance for every decrypted packet). Faults sit in
front of the original handler, so aiortc's NACK generator sees the gaps and asks the publisher to
retransmit (RTX), as a real SFU does; the light counter replaces the handler (no jitter buffer,
no decoder, no NACK) and is what lets one stand-in take dozens of sessions.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import structlog
from aiortc.codecs import is_rtx
from aiortc.rtcrtpreceiver import RTCRtpReceiver
from aiortc.rtp import RtcpSrPacket, RtpPacket

log = structlog.get_logger(__name__)

PacketHandler = Callable[[RtpPacket, int], Awaitable[None]]
_HOOK = "_handle_rtp_packet"
_CODECS_ATTR = "_RTCRtpReceiver__codecs"
# Packets held for delivery later; beyond this a delayed packet is dropped (and counted).
_DELAY_QUEUE_MAX = 4096


def _check_hook(receiver: RTCRtpReceiver) -> None:
    if not callable(getattr(receiver, _HOOK, None)) or not hasattr(receiver, _CODECS_ATTR):
        raise RuntimeError(
            f"aiortc moved RTCRtpReceiver.{_HOOK} / {_CODECS_ATTR}: the stand-in's receive taps "
            "need updating for this aiortc version"
        )


def _is_rtx_packet(receiver: RTCRtpReceiver, packet: RtpPacket) -> bool:
    codec = getattr(receiver, _CODECS_ATTR, {}).get(packet.payload_type)
    return codec is not None and is_rtx(codec)


# ---- faults ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReceiveFaults:
    """What the receive hop does to a call's packets (RTX included, as on a lossy link).

    ``drop_every`` drops every Nth packet (0 = off); ``drop_rate`` drops each packet with this
    probability from a ``seed``-ed generator (reproducible); ``delay_ms`` holds every packet back.
    ``drop_first_rtx`` also drops each lost packet's first retransmission (a repair lost too).
    ``kinds`` limits the faults to "audio" and/or "video".
    """

    drop_every: int = 0
    drop_rate: float = 0.0
    seed: int = 0
    delay_ms: float = 0.0
    drop_first_rtx: bool = False
    kinds: tuple[str, ...] = ("audio", "video")

    def __post_init__(self) -> None:
        if self.drop_every < 0 or not 0.0 <= self.drop_rate < 1.0 or self.delay_ms < 0:
            raise ValueError(f"invalid receive faults {self}")

    @property
    def active(self) -> bool:
        return bool(self.drop_every or self.drop_rate or self.delay_ms or self.drop_first_rtx)


@dataclass
class FaultCounts:
    packets: int = 0
    dropped: int = 0
    dropped_rtx: int = 0
    delayed: int = 0
    delay_overflow: int = 0
    rtx_received: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def install_faults(
    receiver: RTCRtpReceiver,
    kind: str,
    faults: Callable[[], ReceiveFaults | None],
    counts: FaultCounts,
    spawn: Callable[[Awaitable[None], str], None],
) -> None:
    """Put the faults (read per packet from ``faults()``, so they can change mid-call) in front
    of the receiver's own handler."""
    _check_hook(receiver)
    original: PacketHandler = getattr(receiver, _HOOK)
    state: dict[str, Any] = {"n": 0, "rng": None, "seed": None, "delaying": False}
    # Sequence numbers whose first retransmission was dropped (drop_first_rtx), bounded.
    rtx_dropped_for: OrderedDict[int, None] = OrderedDict()
    pending: deque[tuple[float, RtpPacket, int]] = deque()
    wake = asyncio.Event()

    async def deliver_delayed() -> None:
        while True:
            await wake.wait()
            wake.clear()
            while pending:
                due, packet, arrival_ms = pending[0]
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                pending.popleft()
                await original(packet, arrival_ms)

    async def handle(packet: RtpPacket, arrival_time_ms: int) -> None:
        config = faults()
        if config is None or not config.active or kind not in config.kinds:
            await original(packet, arrival_time_ms)
            return
        counts.packets += 1
        rtx = _is_rtx_packet(receiver, packet)
        counts.rtx_received += rtx
        state["n"] += 1
        if state["seed"] != config.seed or state["rng"] is None:
            state["rng"], state["seed"] = random.Random(config.seed), config.seed
        drop = bool(config.drop_every and state["n"] % config.drop_every == 0)
        if config.drop_rate and state["rng"].random() < config.drop_rate:
            drop = True
        if rtx and config.drop_first_rtx and len(packet.payload) >= 2:
            original_seq = int.from_bytes(packet.payload[:2], "big")  # RFC 4588's OSN
            if original_seq not in rtx_dropped_for:
                rtx_dropped_for[original_seq] = None
                if len(rtx_dropped_for) > _DELAY_QUEUE_MAX:
                    rtx_dropped_for.popitem(last=False)
                drop = True
        if drop:
            counts.dropped += 1
            counts.dropped_rtx += rtx
            return
        if config.delay_ms <= 0 and not pending:
            await original(packet, arrival_time_ms)
            return
        if len(pending) >= _DELAY_QUEUE_MAX:
            counts.delay_overflow += 1
            return
        if not state["delaying"]:  # the delivery task exists only once a delay is asked for
            state["delaying"] = True
            spawn(deliver_delayed(), f"recv-delay-{kind}")
        counts.delayed += 1
        due = time.monotonic() + config.delay_ms / 1000
        pending.append((due, packet, arrival_time_ms + round(config.delay_ms)))
        wake.set()

    setattr(receiver, _HOOK, handle)


# ---- light mode --------------------------------------------------------------------------------

# The keyframe detectors below repeat bridge/relay/rtp.py's on purpose: the stand-in judges what
# the relay sends, so it parses RFC 7741/6184/9628 itself; one shared parser would hide a bug in
# it from the very check meant to catch it.


def vp8_keyframe_start(payload: bytes) -> bool:
    """First packet of a VP8 keyframe (RFC 7741: S=1, partition 0, then the P bit clear)."""
    if not payload:
        return False
    b0 = payload[0]
    if not b0 & 0x10 or b0 & 0x0F:
        return False
    pos = 1
    try:
        if b0 & 0x80:
            x = payload[pos]
            pos += 1
            if x & 0x80:
                pos += 2 if payload[pos] & 0x80 else 1
            if x & 0x40:
                pos += 1
            if x & 0x30:
                pos += 1
        return not payload[pos] & 0x01
    except IndexError:
        return False


def h264_keyframe_start(payload: bytes) -> bool:
    """A packet carrying an IDR or SPS NAL (single NAL, STAP-A, or an FU-A start)."""
    if not payload:
        return False
    nal = payload[0] & 0x1F
    if nal in (5, 7):
        return True
    if nal == 24:
        pos = 1
        while pos + 2 < len(payload):
            size = int.from_bytes(payload[pos : pos + 2], "big")
            if payload[pos + 2] & 0x1F in (5, 7):
                return True
            pos += 2 + size
        return False
    return nal == 28 and len(payload) > 1 and bool(payload[1] & 0x80) and payload[1] & 0x1F == 5


def vp9_keyframe_start(payload: bytes) -> bool:
    """Start of a VP9 picture that is not inter-predicted (RFC 9628: B=1, P=0)."""
    return bool(payload) and bool(payload[0] & 0x08) and not payload[0] & 0x40


_KEYFRAME_DETECTORS: dict[str, Callable[[bytes], bool]] = {
    "VP8": vp8_keyframe_start,
    "H264": h264_keyframe_start,
    "VP9": vp9_keyframe_start,
}


@dataclass
class LightCounter:
    """Per track: packets, loss and order by extended sequence number, frames, keyframes."""

    kind: str
    # Names a payload type through the PC's negotiated SDP (see WireCodecs.name).
    codec_of: Callable[[int], str] | None = None
    codec: str = ""
    packets: int = 0
    bytes: int = 0
    rtx: int = 0
    duplicates: int = 0
    reordered: int = 0
    frames: int = 0
    keyframes: int = 0
    first_is_keyframe: bool | None = None
    first_t: float | None = None
    last_t: float | None = None
    _highest: int | None = None
    _lowest: int | None = None
    _seen: set[int] = field(default_factory=set)
    _names: dict[int, str] = field(default_factory=dict)

    def add(self, packet: RtpPacket, rtx: bool) -> None:
        now = time.monotonic()
        if rtx:
            self.rtx += 1  # the light path never NACKs; counted, not reassembled
            return
        seq = packet.sequence_number
        if self._highest is None:
            ext = seq
        else:
            delta = (seq - (self._highest & 0xFFFF) + 0x8000) % 0x10000 - 0x8000
            ext = self._highest + delta
        self.packets += 1
        self.bytes += len(packet.payload)
        if ext in self._seen:
            self.duplicates += 1
            return
        if len(self._seen) > 65536:  # bounded: forget the oldest half of the window
            cutoff = ext - 32768
            self._seen = {s for s in self._seen if s >= cutoff}
        self._seen.add(ext)
        if self._highest is not None and ext < self._highest:
            self.reordered += 1
        self._highest = ext if self._highest is None else max(self._highest, ext)
        self._lowest = ext if self._lowest is None else min(self._lowest, ext)
        self.first_t = self.first_t or now
        self.last_t = now
        if self.codec_of is not None:
            name = self._names.get(packet.payload_type)
            if name is None:  # resolved once per payload type: the SDP is re-serialised per call
                name = self._names[packet.payload_type] = self.codec_of(packet.payload_type)
            self.codec = name
        if self.kind == "video":
            self.frames += packet.marker
            detector = _KEYFRAME_DETECTORS.get(self.codec)
            if detector is not None:
                key = detector(packet.payload)
                self.keyframes += key
                if self.first_is_keyframe is None:
                    self.first_is_keyframe = key

    def snapshot(self) -> dict[str, Any]:
        expected = 0 if self._highest is None else self._highest - (self._lowest or 0) + 1
        unique = self.packets - self.duplicates
        span = (self.last_t or 0.0) - (self.first_t or 0.0)
        return {
            "codec": self.codec or None,
            "packets": self.packets,
            "bytes": self.bytes,
            "expected": expected,
            "lost": max(0, expected - unique),
            "duplicates": self.duplicates,
            "reordered": self.reordered,
            "rtx": self.rtx,
            "frames": self.frames,
            "keyframes": self.keyframes,
            "first_is_keyframe": self.first_is_keyframe,
            "kbps": round(8 * self.bytes / span / 1000, 1) if span > 0 else None,
        }


def install_light(receiver: RTCRtpReceiver, counter: LightCounter) -> None:
    """Replace the receiver's handler: count and check, never depayload or decode."""
    _check_hook(receiver)

    async def handle(packet: RtpPacket, arrival_time_ms: int) -> None:
        with contextlib.suppress(IndexError, ValueError):  # a malformed packet is not fatal
            counter.add(packet, _is_rtx_packet(receiver, packet))

    setattr(receiver, _HOOK, handle)


# ---- the codec on the wire ---------------------------------------------------------------------


def sdp_payload_types(sdp: str) -> dict[str, dict[int, str]]:
    """``{kind: {payload type: codec name}}`` from the rtpmap lines of an SDP (upper-case names,
    "opus" stays as Stream spells it). A BUNDLEd PC shares one PT space per kind in practice."""
    out: dict[str, dict[int, str]] = {}
    kind: str | None = None
    for line in sdp.splitlines():
        if line.startswith("m="):
            kind = line[2:].split(" ", 1)[0]
            out.setdefault(kind, {})
        elif kind is not None and line.startswith("a=rtpmap:"):
            pt_text, _, encoding = line[len("a=rtpmap:") :].partition(" ")
            name = encoding.split("/")[0]
            try:
                out[kind][int(pt_text)] = "opus" if name.lower() == "opus" else name.upper()
            except ValueError:
                continue
    return out


# Payload types that carry no media of their own: retransmissions and redundancy wrappers.
_NOT_MEDIA = frozenset({"RTX", "RED", "ULPFEC", "FLEXFEC-03"})


@dataclass
class WireCodecs:
    """Packets per RTP payload type as they arrive on one receiver, before any fault or decoder.

    The codec figure is the payload type seen most often (retransmissions aside), named through the
    PC's negotiated SDP (its answer); a payload type the answer does not carry is reported as
    ``"<name from the offer> (not negotiated)"`` or ``"PT <n> (unknown)"``: never the grant.
    """

    kind: str
    negotiated: Callable[[], str | None]  # the PC's answer SDP (local description)
    offered: Callable[[], str | None]  # the PC's offer SDP (remote description)
    by_pt: dict[int, int] = field(default_factory=dict)

    def add(self, payload_type: int) -> None:
        self.by_pt[payload_type] = self.by_pt.get(payload_type, 0) + 1

    def name(self, payload_type: int) -> str:
        answer = sdp_payload_types(self.negotiated() or "").get(self.kind, {})
        if payload_type in answer:
            return answer[payload_type]
        offer = sdp_payload_types(self.offered() or "").get(self.kind, {})
        if payload_type in offer:
            return f"{offer[payload_type]} (not negotiated)"
        return f"PT {payload_type} (unknown)"

    def codec(self) -> str | None:
        """The media codec on the wire (most packets), or None before the first packet."""
        media = [(n, pt) for pt, n in self.by_pt.items() if self.name(pt) not in _NOT_MEDIA]
        return self.name(max(media)[1]) if media else None

    def snapshot(self) -> dict[str, Any]:
        return {
            "codec": self.codec(),
            "payload_types": {str(pt): [self.name(pt), n] for pt, n in sorted(self.by_pt.items())},
        }


_CLOCK_RATES = {"audio": 48000, "video": 90000}
# Drift samples kept per track (one per sender report: ~1 a second); beyond it every other one
# is forgotten, so a long call keeps its whole span at a coarser grain.
_DRIFT_SERIES_MAX = 256


@dataclass
class _Range:
    """Min, max and last of a series of seconds."""

    min: float | None = None
    max: float | None = None
    last: float | None = None

    def add(self, value: float) -> None:
        self.min = value if self.min is None else min(self.min, value)
        self.max = value if self.max is None else max(self.max, value)
        self.last = value

    def snapshot(self) -> dict[str, float | None]:
        def r(v: float | None) -> float | None:
            return None if v is None else round(v, 4)

        span = None if self.min is None or self.max is None else self.max - self.min
        return {"min": r(self.min), "max": r(self.max), "last": r(self.last), "span": r(span)}


@dataclass
class StreamContinuity:
    """One track's RTP stream space as it arrives, for "one continuous track" checks (an avatar
    handover on the relay must not show): the media SSRCs seen, the largest forward sequence
    step, timestamp steps between consecutive packets, and how far each sender report's
    NTP<->RTP mapping moved from the previous one (0 for a consistent sender).

    And how far the sender's clocks walk apart over the call, from the wire alone:

    * ``sr_drift_s``: per sender report, ``(ntp - first ntp) - (rtp - first rtp) / clock rate``,
      how far the report's mapping moved from the first report's (a sender whose RTP clock
      runs with real time keeps it near 0); its max, min, last and a bounded series.
    * ``sr_vs_arrival_s``: per report, its RTP time since the first report's against the
      receiver's clock (``at``) since that report arrived: the same drift, seen by a receiver
      that trusts no NTP (the network's jitter is in it).
    * ``rtp_vs_arrival_s``: per media packet, its RTP time since the first packet's against its
      arrival since the first packet's (negative: the RTP clock fell behind real time, e.g. a
      pause that the timestamps do not skip); jitter and the pacing are in it.

    Retransmissions (RTX) are left out by the caller; reordered packets only count as such."""

    kind: str
    ssrcs: list[int] = field(default_factory=list)
    packets: int = 0
    reordered: int = 0
    lost: int = 0
    max_seq_step: int = 0
    max_ts_step_s: float = 0.0
    min_ts_step_s: float = 0.0  # negative: the timestamp went back with the sequence going on
    srs: int = 0
    srs_before_media: int = 0
    max_sr_jump_s: float = 0.0
    # (seconds since the first report by its NTP, sr drift): see the class docstring.
    sr_drift_series: list[tuple[float, float]] = field(default_factory=list)
    sr_drift: _Range = field(default_factory=_Range)
    sr_vs_arrival: _Range = field(default_factory=_Range)
    rtp_vs_arrival: _Range = field(default_factory=_Range)
    _last_seq: int | None = None
    _last_ts: int = 0
    _ext_ts: int = 0  # _last_ts unwrapped
    _sr_offset: float | None = None
    _sr_first: tuple[float, float, float | None] | None = None  # NTP s, RTP s, arrival
    _media_first: tuple[int, float] | None = None  # unwrapped timestamp, arrival

    @property
    def clock_rate(self) -> int:
        return _CLOCK_RATES.get(self.kind, 90000)

    def add(self, ssrc: int, seq: int, ts: int, at: float | None = None) -> None:
        """A media packet; ``at``: its arrival on the receiver's clock (seconds), if known."""
        if ssrc not in self.ssrcs:
            self.ssrcs.append(ssrc)
        self.packets += 1
        if self._last_seq is None:
            self._last_seq, self._last_ts, self._ext_ts = seq, ts, ts
            self._note_arrival(at)
            return
        step = (seq - self._last_seq + 0x8000) % 0x10000 - 0x8000
        if step <= 0:
            self.reordered += 1
            return
        ts_ticks = (ts - self._last_ts + 2**31) % 2**32 - 2**31
        ts_step = ts_ticks / self.clock_rate
        self._ext_ts += ts_ticks
        self.max_seq_step = max(self.max_seq_step, step)
        self.lost += step - 1  # missing from the sequence (a late one counts as reordered)
        self.max_ts_step_s = max(self.max_ts_step_s, ts_step)
        self.min_ts_step_s = min(self.min_ts_step_s, ts_step)
        self._last_seq, self._last_ts = seq, ts
        self._note_arrival(at)

    def _note_arrival(self, at: float | None) -> None:
        if at is None:
            return
        if self._media_first is None:
            self._media_first = (self._ext_ts, at)
            return
        ts0, at0 = self._media_first
        self.rtp_vs_arrival.add((self._ext_ts - ts0) / self.clock_rate - (at - at0))

    def add_sr(self, ntp: int, rtp_ts: int, packet_count: int, at: float | None = None) -> None:
        """A sender report: its offset between NTP time and RTP time (RTP unwrapped around
        the last packet's timestamp) against the previous report's, and against the first
        report's (the drift). A report sent before any media (aiortc sends NTP 0 then) maps
        nothing: counted apart."""
        if packet_count == 0:
            self.srs_before_media += 1
            return
        self.srs += 1
        rel = (rtp_ts - self._last_ts + 2**31) % 2**32 - 2**31
        ntp_s = ntp / 2**32
        rtp_s = (self._ext_ts + rel) / self.clock_rate
        offset = ntp_s - rtp_s
        if self._sr_offset is not None:
            self.max_sr_jump_s = max(self.max_sr_jump_s, abs(offset - self._sr_offset))
        self._sr_offset = offset
        if self._sr_first is None:
            self._sr_first = (ntp_s, rtp_s, at)
        ntp0, rtp0, at0 = self._sr_first
        drift = (ntp_s - ntp0) - (rtp_s - rtp0)
        self.sr_drift.add(drift)
        if at is not None and at0 is not None:
            self.sr_vs_arrival.add((at - at0) - (rtp_s - rtp0))
        self.sr_drift_series.append((ntp_s - ntp0, drift))
        if len(self.sr_drift_series) > _DRIFT_SERIES_MAX:
            self.sr_drift_series = self.sr_drift_series[::2]

    def snapshot(self) -> dict[str, Any]:
        return {
            "ssrcs": list(self.ssrcs),
            "packets": self.packets,
            "reordered": self.reordered,
            "lost": self.lost,
            "max_seq_step": self.max_seq_step,
            "max_ts_step_s": round(self.max_ts_step_s, 4),
            "min_ts_step_s": round(self.min_ts_step_s, 4),
            "srs": self.srs,
            "srs_before_media": self.srs_before_media,
            "max_sr_jump_s": round(self.max_sr_jump_s, 4),
            "sr_drift_s": self.sr_drift.snapshot(),
            "sr_vs_arrival_s": self.sr_vs_arrival.snapshot(),
            "rtp_vs_arrival_s": self.rtp_vs_arrival.snapshot(),
            "sr_drift_series": [(round(t, 2), round(d, 4)) for t, d in self.sr_drift_series],
        }


def install_wire_tap(
    receiver: RTCRtpReceiver, counter: WireCodecs, continuity: StreamContinuity | None = None
) -> None:
    """Count payload types (and the stream's continuity) in front of whatever handles the
    packets (install it last)."""
    _check_hook(receiver)
    inner: PacketHandler = getattr(receiver, _HOOK)
    inner_rtcp = receiver._handle_rtcp_packet

    async def handle(packet: RtpPacket, arrival_time_ms: int) -> None:
        counter.add(packet.payload_type)
        if continuity is not None and not _is_rtx_packet(receiver, packet):
            at = time.monotonic()
            continuity.add(packet.ssrc, packet.sequence_number, packet.timestamp, at)
        await inner(packet, arrival_time_ms)

    async def handle_rtcp(packet: Any) -> None:
        if continuity is not None and isinstance(packet, RtcpSrPacket):
            info = packet.sender_info
            continuity.add_sr(
                info.ntp_timestamp, info.rtp_timestamp, info.packet_count, time.monotonic()
            )
        await inner_rtcp(packet)

    setattr(receiver, _HOOK, handle)
    r: Any = receiver
    r._handle_rtcp_packet = handle_rtcp


class ArrivalTimes:
    """When each RTP timestamp's first packet reached the receiver (monotonic seconds), for
    timing decoded audio by the wire rather than by when aiortc's jitter buffer released it.

    aiortc's audio jitter buffer releases one frame per packet added once it holds 4, so a burst
    (a stall anywhere upstream) leaves it holding more for the rest of the call: a delay no real
    receiver keeps (NetEq shrinks it) and not the sender's doing. Bounded (``capacity`` entries).
    """

    def __init__(self, capacity: int = 1024) -> None:
        self.capacity = capacity
        self._at: OrderedDict[int, float] = OrderedDict()
        # aiortc's receiver hands its decoder timestamps relative to the first packet it got
        # (``TimestampMapper``): the tap sits right in front of it, so it sees the same first.
        self.origin: int | None = None

    def add(self, timestamp: int, t: float) -> None:
        if self.origin is None:
            self.origin = timestamp
        if timestamp in self._at:
            return
        self._at[timestamp] = t
        while len(self._at) > self.capacity:
            self._at.popitem(last=False)

    def get(self, pts: int | None, tolerance: int = 960) -> float | None:
        """The arrival of the packet of a decoded frame's ``pts`` (aiortc's: RTP timestamp
        minus the first packet's), or the nearest within ``tolerance`` ticks."""
        if pts is None or self.origin is None:
            return None
        ts = (self.origin + pts) % (1 << 32)
        exact = self._at.get(ts)
        if exact is not None:
            return exact
        best: tuple[int, float] | None = None
        for i, (key, t) in enumerate(reversed(self._at.items())):
            if i >= 64:
                break
            d = min((key - ts) % (1 << 32), (ts - key) % (1 << 32))
            if d <= tolerance and (best is None or d < best[0]):
                best = (d, t)
        return None if best is None else best[1]


def install_arrival_tap(receiver: RTCRtpReceiver, arrivals: ArrivalTimes) -> None:
    """Record arrival times in front of whatever handles the packets. Install it inside the
    fault injector, so a dropped packet's time is that of its retransmission (RTX keeps the
    original's RTP timestamp)."""
    _check_hook(receiver)
    inner: PacketHandler = getattr(receiver, _HOOK)

    async def handle(packet: RtpPacket, arrival_time_ms: int) -> None:
        arrivals.add(packet.timestamp, time.monotonic())
        await inner(packet, arrival_time_ms)

    setattr(receiver, _HOOK, handle)


# ---- repair and assembly -----------------------------------------------------------------------

# How often a receiver asks again for packets still missing. aiortc NACKs a gap once, when a later
# packet reveals it, so a lost retransmission is never asked for again and its frame never
# completes; Pion's NACK generator (pion/interceptor pkg/nack, generator_interceptor.go), which
# Stream's Go SFU builds on, re-sends the NACK for every packet still missing every 100 ms by
# default. Assumption: Stream keeps Pion's defaults (its SFU's settings are not public).
RENACK_INTERVAL_S = 0.1
_NACK_GENERATOR_ATTR = "_RTCRtpReceiver__nack_generator"
_DECODER_QUEUE_ATTR = "_RTCRtpReceiver__decoder_queue"


class MediaSsrc:
    """The SSRC of the media (not RTX) packets a receiver gets: what its NACKs must name."""

    def __init__(self) -> None:
        self.ssrc: int | None = None


def install_ssrc_tap(receiver: RTCRtpReceiver, seen: MediaSsrc) -> None:
    """Record the media SSRC in front of whatever handles the packets."""
    _check_hook(receiver)
    inner: PacketHandler = getattr(receiver, _HOOK)

    async def handle(packet: RtpPacket, arrival_time_ms: int) -> None:
        if not _is_rtx_packet(receiver, packet):
            seen.ssrc = packet.ssrc
        await inner(packet, arrival_time_ms)

    setattr(receiver, _HOOK, handle)


async def renack(
    receiver: RTCRtpReceiver, seen: MediaSsrc, interval_s: float = RENACK_INTERVAL_S
) -> None:
    """Every ``interval_s``, NACK again what the receiver's generator still misses. Runs until
    cancelled; does nothing for a receiver without a NACK generator (audio)."""
    generator = getattr(receiver, _NACK_GENERATOR_ATTR, None)
    if generator is None:
        return
    while True:
        await asyncio.sleep(interval_s)
        # Sorted as aiortc's own NACKs are: its packing of the list needs ascending numbers.
        lost = sorted(generator.missing)
        if lost and seen.ssrc is not None:
            await receiver._send_rtcp_nack(seen.ssrc, lost)


def install_assembly_tap(receiver: RTCRtpReceiver, on_frame: Callable[[float], None]) -> None:
    """Call ``on_frame(monotonic time)`` for each encoded frame the receiver's jitter buffer
    completes, as it is queued for the decoder thread (on the event loop, before decoding)."""
    decoder_queue = getattr(receiver, _DECODER_QUEUE_ATTR, None)
    if decoder_queue is None:
        raise RuntimeError(
            f"aiortc moved RTCRtpReceiver.{_DECODER_QUEUE_ATTR}: the stand-in's assembly tap "
            "needs updating for this aiortc version"
        )
    put = decoder_queue.put

    def put_and_time(item: Any, *args: Any, **kwargs: Any) -> None:
        if item is not None:  # None is the decoder thread's stop signal
            on_frame(time.monotonic())
        put(item, *args, **kwargs)

    decoder_queue.put = put_and_time


# ---- decodability --------------------------------------------------------------------------------

_JITTER_BUFFER_ATTR = "_RTCRtpReceiver__jitter_buffer"
_KEYFRAMES_KEPT = 64  # RTP timestamps of recent keyframe starts; a handful are ever pending


class DecodableGate:
    """After a break in the video, only a keyframe may be decoded again: sans-I/O.

    aiortc's jitter buffer, when a gap is never repaired, skips the incomplete frames (its buffer
    full, or a packet too far out of order) and hands the decoder the next frames, which predict
    from a picture the decoder never had; libvpx decodes them without an error into corrupt
    pictures, until the keyframe its PLI asked for arrives. A viewer's libwebrtc does not: its
    frame buffer holds back frames whose references are missing and decodes again from the
    keyframe. The gate gives the stand-in's receiver that rule, so what it measures (marks,
    sizes, sync) is what a viewer could show, not misread corrupt pictures.
    """

    def __init__(self) -> None:
        self.waiting = False
        self._keyframes: deque[int] = deque(maxlen=_KEYFRAMES_KEPT)

    def on_packet(self, timestamp: int, keyframe_start: bool) -> None:
        if keyframe_start and timestamp not in self._keyframes:
            self._keyframes.append(timestamp)

    def on_break(self) -> None:
        """The jitter buffer dropped frames it could not complete."""
        self.waiting = True

    def admit(self, timestamp: int) -> bool:
        """Whether a completed frame (by its RTP timestamp) goes to the decoder."""
        if self.waiting and timestamp in self._keyframes:
            self.waiting = False
        return not self.waiting


def install_decodable_gate(
    receiver: RTCRtpReceiver, gate: DecodableGate, on_withheld: Callable[[], None]
) -> None:
    """Put ``gate`` between the receiver's jitter buffer and its decoder (a video receiver);
    ``on_withheld()`` for each frame it holds back.

    aiortc reports a break by asking for a keyframe (the ``pli_flag`` of ``JitterBuffer.add``);
    frames of codecs without a keyframe detector pass ungated."""
    _check_hook(receiver)
    jitter = getattr(receiver, _JITTER_BUFFER_ATTR, None)
    if jitter is None or not callable(getattr(jitter, "add", None)):
        raise RuntimeError(
            f"aiortc moved RTCRtpReceiver.{_JITTER_BUFFER_ATTR}: the stand-in's decodable gate "
            "needs updating for this aiortc version"
        )
    gate_jitter_buffer(jitter, getattr(receiver, _CODECS_ATTR), gate, on_withheld)


def gate_jitter_buffer(
    jitter: Any, codecs: dict[int, Any], gate: DecodableGate, on_withheld: Callable[[], None]
) -> None:
    """Wrap an aiortc ``JitterBuffer``'s ``add`` with ``gate`` (``codecs``: payload type ->
    codec parameters, to find the keyframe detector)."""
    add = jitter.add

    def gated_add(packet: RtpPacket) -> tuple[bool, Any]:
        codec = codecs.get(packet.payload_type)
        detector = _KEYFRAME_DETECTORS.get(codec.name) if codec is not None else None
        if detector is None:
            return add(packet)  # type: ignore[no-any-return]
        gate.on_packet(packet.timestamp, detector(packet.payload))
        pli, frame = add(packet)
        if pli:
            gate.on_break()
        if frame is not None and not gate.admit(frame.timestamp):
            on_withheld()
            frame = None
        return pli, frame

    jitter.add = gated_add
