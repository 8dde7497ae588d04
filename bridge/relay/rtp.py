"""Sans-I/O pieces of the encoded relay: keyframe detection, RTP rewriting, SR translation.

Nothing here touches a socket, a clock or aiortc's internals; every function takes the time it
needs as an argument, so all of it is unit-tested without a network. The packet type is aiortc's
parsed :class:`aiortc.rtp.RtpPacket` (a plain data object).

One upstream stream (the avatar's video or audio as LiveKit forwards it to us) maps onto one
downstream stream (our sender in the Stream call):

* SSRC and payload type become the downstream sender's; sequence numbers are shifted by an offset
  fixed at the first forwarded packet, so the Stream side sees no gap for what we never forwarded.
* RTP timestamps are kept (offset 0), so the avatar's RTCP sender reports can be passed on with
  only the RTP side shifted: the receiver keeps the avatar's own NTP<->RTP (A/V) mapping.
* When the upstream SSRC changes (a LiveKit reconnect brings a new subscription), sequence numbers
  and timestamps are rebased so that the downstream stream continues without a jump.
* Header extensions are rebuilt: mid (ours), abs-send-time (our send time), audio level (copied,
  Stream's SFU uses it for speaker detection). Upstream-only extensions are not forwarded.
"""

from __future__ import annotations

import random
import struct
from collections import deque
from dataclasses import dataclass
from typing import Generic, TypeVar

from aiortc.rtp import HeaderExtensions, RtpPacket

__all__ = [
    "HoldQueue",
    "KeyframeGate",
    "OutputBinding",
    "RateLimiter",
    "RtpRewriter",
    "RtxHistory",
    "first_sequence_number",
    "h264_is_keyframe_start",
    "is_keyframe_start",
    "rtx_from_serialized",
    "vp8_is_keyframe_start",
]

_SEQ_MOD = 1 << 16
_TS_MOD = 1 << 32

# H264 NAL unit types (RFC 6184).
_NAL_IDR = 5
_NAL_SPS = 7
_NAL_STAP_A = 24
_NAL_FU_A = 28


def first_sequence_number(rng: random.Random) -> int:
    """A random first sequence number in the lower half of the range, as aiortc draws it, so
    that no early wrap upsets the receiver's SRTP rollover counter (RFC 3711 s. 3.3.1)."""
    return rng.randrange(1 << 15)


def vp8_is_keyframe_start(payload: bytes) -> bool:
    """True for the first packet of a VP8 keyframe (RFC 7741).

    The payload descriptor must have S=1 and partition index 0, and the VP8 payload header that
    follows it must have its P bit (inverse key frame flag) cleared.
    """
    if not payload:
        return False
    b0 = payload[0]
    if not b0 & 0x10 or b0 & 0x0F:  # S bit, PID 0
        return False
    pos = 1
    if b0 & 0x80:  # X: an extension byte follows
        if len(payload) <= pos:
            return False
        x = payload[pos]
        pos += 1
        if x & 0x80:  # I: PictureID, 7 or 15 bits
            if len(payload) <= pos:
                return False
            pos += 2 if payload[pos] & 0x80 else 1
        if x & 0x40:  # L: TL0PICIDX
            pos += 1
        if x & 0x30:  # T or K: one byte for TID/Y/KEYIDX
            pos += 1
    return pos < len(payload) and not payload[pos] & 0x01


def h264_is_keyframe_start(payload: bytes) -> bool:
    """True for a packet that starts an H264 keyframe (RFC 6184).

    An IDR slice or the SPS that precedes it, alone (single NAL unit), aggregated (STAP-A), or the
    first fragment of an IDR (FU-A with S=1).
    """
    if not payload:
        return False
    nal = payload[0] & 0x1F
    if nal in (_NAL_IDR, _NAL_SPS):
        return True
    if nal == _NAL_STAP_A:
        pos = 1
        while pos + 2 < len(payload):
            size = struct.unpack_from("!H", payload, pos)[0]
            if payload[pos + 2] & 0x1F in (_NAL_IDR, _NAL_SPS):
                return True
            pos += 2 + size
        return False
    if nal == _NAL_FU_A and len(payload) > 1:
        fu = payload[1]
        return bool(fu & 0x80) and fu & 0x1F == _NAL_IDR
    return False


def is_keyframe_start(codec: str, payload: bytes) -> bool:
    """Keyframe detection by codec name ("VP8" or "H264", case-insensitive)."""
    name = codec.upper()
    if name == "VP8":
        return vp8_is_keyframe_start(payload)
    if name == "H264":
        return h264_is_keyframe_start(payload)
    raise ValueError(f"no keyframe detection for {codec!r}")


class KeyframeGate:
    """Drops video until a keyframe starts, so the Stream side's first frame decodes.

    :meth:`admit` is called for every upstream video packet. Once a keyframe start passed, the
    packets of that frame and everything after it pass too, until :meth:`close` (a new upstream
    stream, or a PLI storm we cannot satisfy) makes it wait again. ``keyframes`` counts distinct
    keyframes (by RTP timestamp: H264's SPS and IDR packets of one frame count once).
    """

    def __init__(self, codec: str) -> None:
        is_keyframe_start(codec, b"")  # validates the codec name
        self.codec = codec.upper()
        self.open = False
        self.keyframes = 0
        self.dropped = 0
        self._last_key_ts: int | None = None

    def admit(self, payload: bytes, timestamp: int) -> bool:
        if is_keyframe_start(self.codec, payload):
            if timestamp != self._last_key_ts:
                self.keyframes += 1
                self._last_key_ts = timestamp
            self.open = True
            return True
        if not self.open:
            self.dropped += 1
        return self.open

    def is_key(self, payload: bytes) -> bool:
        return is_keyframe_start(self.codec, payload)

    def close(self) -> None:
        self.open = False


@dataclass(frozen=True, slots=True)
class OutputBinding:
    """What the downstream sender negotiated: where rewritten packets belong."""

    ssrc: int
    payload_type: int
    mid: str | None
    clock_rate: int
    first_seq: int = 0
    rtx_ssrc: int | None = None
    rtx_payload_type: int | None = None


class RtpRewriter:
    """Maps one upstream RTP stream onto the downstream sender's stream.

    :meth:`rewrite` mutates and returns the packet. ``now_s`` is any monotonic clock in seconds;
    it only matters when the upstream SSRC changes, to carry the timestamp forward by the time
    that passed.
    """

    def __init__(self, binding: OutputBinding) -> None:
        self.binding = binding
        self.upstream_ssrc: int | None = None
        self.seq_offset = 0
        self.ts_offset = 0
        self.rebases = 0
        self.packets = 0
        self.octets = 0
        self._last_out_seq: int | None = None
        self._last_out_ts = 0
        self._last_in_ts = 0
        self._last_time_s = 0.0

    def rewrite(self, packet: RtpPacket, now_s: float, abs_send_time: int | None) -> RtpPacket:
        b = self.binding
        if packet.ssrc != self.upstream_ssrc:
            self._rebase(packet, now_s)
        else:
            # Timestamps carried forward only move with the stream (reordered packets are older).
            if _ts_newer(packet.timestamp, self._last_in_ts):
                self._last_in_ts = packet.timestamp
                self._last_time_s = now_s
        ext = HeaderExtensions()
        ext.mid = b.mid
        ext.abs_send_time = abs_send_time
        ext.audio_level = packet.extensions.audio_level
        packet.extensions = ext
        packet.ssrc = b.ssrc
        packet.payload_type = b.payload_type
        packet.sequence_number = (packet.sequence_number + self.seq_offset) % _SEQ_MOD
        packet.timestamp = (packet.timestamp + self.ts_offset) % _TS_MOD
        packet.csrc = []
        if self._last_out_seq is None or _seq_newer(packet.sequence_number, self._last_out_seq):
            self._last_out_seq = packet.sequence_number
            self._last_out_ts = packet.timestamp
        self.packets += 1
        self.octets += len(packet.payload)
        return packet

    def _rebase(self, packet: RtpPacket, now_s: float) -> None:
        if self._last_out_seq is None:
            # The first stream: sequence numbers continue from the sender's own start, and the
            # avatar's timestamps are kept so its SRs translate exactly.
            self.seq_offset = (self.binding.first_seq - packet.sequence_number) % _SEQ_MOD
            self.ts_offset = 0
        else:
            self.rebases += 1
            next_seq = (self._last_out_seq + 1) % _SEQ_MOD
            self.seq_offset = (next_seq - packet.sequence_number) % _SEQ_MOD
            elapsed = max(0.0, now_s - self._last_time_s)
            # At least one tick, so the new stream's first frame is not the old one's last.
            advance = max(1, round(elapsed * self.binding.clock_rate))
            target = (self._last_out_ts + advance) % _TS_MOD
            self.ts_offset = (target - packet.timestamp) % _TS_MOD
        self.upstream_ssrc = packet.ssrc
        self._last_in_ts = packet.timestamp
        self._last_time_s = now_s

    def translate_sr(self, upstream_ssrc: int, rtp_timestamp: int) -> int | None:
        """The downstream RTP timestamp for an upstream SR's, or None if it is another stream's."""
        if upstream_ssrc != self.upstream_ssrc:
            return None
        return (rtp_timestamp + self.ts_offset) % _TS_MOD


def _seq_newer(a: int, b: int) -> bool:
    return a != b and (a - b) % _SEQ_MOD < _SEQ_MOD // 2


def _ts_newer(a: int, b: int) -> bool:
    return a != b and (a - b) % _TS_MOD < _TS_MOD // 2


class RtxHistory:
    """The packets sent downstream in the last ``horizon_s`` (at most ``capacity``), to answer
    NACKs with RTX (RFC 4588).

    A NACK for a packet no longer kept is a miss and is counted. The horizon is libwebrtc's
    rule for its own send history (packets are kept max(1 s, 3 x RTT)): a receiver does not
    wait longer than its jitter buffer for a retransmission, so older packets only cost memory
    (a full 1024-packet ring of 360p video held ~1.2 MB per session). Each packet is kept as the
    plaintext bytes that were sent (no parsed packet, no header-extension object, nothing for
    the garbage collector to walk); an RTX packet is built from them byte for byte
    (:func:`rtx_from_serialized`).
    """

    def __init__(self, capacity: int = 1024, horizon_s: float = 2.0) -> None:
        if capacity <= 0 or horizon_s <= 0:
            raise ValueError("capacity and horizon_s must be positive")
        self.capacity = capacity
        self.horizon_s = horizon_s
        self._by_seq: dict[int, tuple[float, bytes]] = {}
        self._order: deque[tuple[float, int]] = deque()
        self._rtx_seq = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._by_seq)

    def store(self, sequence_number: int, data: bytes, now_s: float) -> None:
        self._by_seq[sequence_number] = (now_s, data)
        order = self._order
        order.append((now_s, sequence_number))
        oldest = now_s - self.horizon_s
        while order and (len(order) > self.capacity or order[0][0] < oldest):
            t, seq = order.popleft()
            kept = self._by_seq.get(seq)
            if kept is not None and kept[0] == t:  # not a newer packet with that number
                del self._by_seq[seq]

    def get(self, sequence_number: int) -> bytes | None:
        kept = self._by_seq.get(sequence_number)
        return None if kept is None else kept[1]

    def retransmission(self, sequence_number: int, binding: OutputBinding) -> bytes | None:
        """The RTX packet for a NACKed sequence number (or the packet itself without RTX)."""
        original = self.get(sequence_number)
        if original is None:
            self.misses += 1
            return None
        self.hits += 1
        if binding.rtx_payload_type is None or binding.rtx_ssrc is None:
            return original
        rtx = rtx_from_serialized(
            original, binding.rtx_payload_type, self._rtx_seq, binding.rtx_ssrc
        )
        self._rtx_seq = (self._rtx_seq + 1) % _SEQ_MOD
        return rtx


def rtx_from_serialized(data: bytes, payload_type: int, sequence_number: int, ssrc: int) -> bytes:
    """RFC 4588 RTX of a serialized RTP packet: the same header (marker, timestamp, header
    extensions) with the RTX payload type, sequence number and SSRC, and the original sequence
    number in front of the payload."""
    header_len = 12 + 4 * (data[0] & 0x0F)
    if data[0] & 0x10:  # header extensions: a 4-byte header and `length` 32-bit words
        header_len += 4 + 4 * int.from_bytes(data[header_len + 2 : header_len + 4], "big")
    header = bytearray(data[:header_len])
    header[1] = (data[1] & 0x80) | payload_type
    header[2:4] = sequence_number.to_bytes(2, "big")
    header[8:12] = ssrc.to_bytes(4, "big")
    return bytes(header) + data[2:4] + data[header_len:]


class RateLimiter:
    """At most one event per ``interval_s`` (keyframe requests upstream); counts what it held."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._last: float | None = None
        self.allowed = 0
        self.suppressed = 0

    def allow(self, now_s: float) -> bool:
        if self._last is not None and now_s - self._last < self.interval_s:
            self.suppressed += 1
            return False
        self._last = now_s
        self.allowed += 1
        return True


T = TypeVar("T")


class HoldQueue(Generic[T]):
    """Holds items for ``hold_s`` after arrival (video playout alignment), bounded.

    Overflow policy: when ``capacity`` items wait, the oldest is released early rather than
    dropped (media stays intact, only its alignment suffers); ``released_early`` counts those.
    """

    def __init__(self, hold_s: float, capacity: int) -> None:
        if capacity <= 0:
            raise ValueError("capacity must be positive")
        self.hold_s = max(0.0, hold_s)
        self.capacity = capacity
        self._items: deque[tuple[float, T]] = deque()
        self.released_early = 0

    def __len__(self) -> int:
        return len(self._items)

    def push(self, item: T, now_s: float) -> list[T]:
        """Queue an item; returns what must leave now (overflow), oldest first."""
        self._items.append((now_s + self.hold_s, item))
        out: list[T] = []
        while len(self._items) > self.capacity:
            out.append(self._items.popleft()[1])
            self.released_early += 1
        return out

    def pop_due(self, now_s: float) -> list[T]:
        out: list[T] = []
        while self._items and self._items[0][0] <= now_s:
            out.append(self._items.popleft()[1])
        return out

    def next_due(self) -> float | None:
        return self._items[0][0] if self._items else None

    def drain(self) -> list[T]:
        out = [item for _, item in self._items]
        self._items.clear()
        return out
