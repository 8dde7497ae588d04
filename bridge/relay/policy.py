"""The relay's per-packet policy, sans-I/O: what to do with each upstream packet, given the time.

:class:`VideoPolicy` owns the decisions :class:`~bridge.relay.path.RelayPath` used to make inline:

* **SSRC changes** (a LiveKit rejoin brings a new subscription): the keyframe gate closes and a
  keyframe is asked for upstream; the stream left behind is retired: a late packet or
  retransmission of it is dropped (``stale_stream``), never relayed after the new stream's
  pictures (the rewriter would rebase back onto it: an old picture shown after newer ones) and
  never a reason to close the gate again;
* **restart keyframe**: once the gate opens on a keyframe, a packet of the same stream from
  before that keyframe (a late retransmission of a frame the gate turned away) is dropped
  (``before_keyframe``): rewritten, it would land behind the keyframe, on sequence numbers the
  receivers already had (aiortc's jitter buffer restarts on a packet 100 or more behind);
* **pause/resume**: while the Stream SFU does not want our video (send-video revoked, our layer
  paused) video is dropped on arrival and the hold is emptied unsent; when it is wanted again
  the gate waits for a keyframe and the downstream stream is rebased (sequence numbers go on
  without a gap, timestamps advance by the pause);
* **keyframe gate**: video is forwarded from a keyframe on; keyframe requests upstream are rate
  limited, and the delay from a request to the keyframe is measured;
* **hold**: forwarded video waits ``hold_s`` (playout alignment with audio), bounded, the oldest
  released early on overflow;
* **layer size** (a simulcast SFU forwards one layer and may switch at any keyframe): the gate
  waits up to ``size_wait_s`` for a keyframe of the size asked for, then takes what comes; every
  later keyframe of another size is reported as a size change (the SFU switched layers).

Every method takes ``now`` (monotonic seconds) and returns what the caller must do; nothing here
sends, sleeps or reads a clock, so all of it is tested without sockets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from bridge.relay.rtp import HoldQueue, KeyframeGate, RateLimiter
from bridge.relay.video_size import keyframe_size

__all__ = [
    "Admit",
    "BlockChange",
    "KeyframeAsk",
    "LayerAsk",
    "Packet",
    "StreamFollower",
    "VideoPolicy",
    "declines_announced_size",
    "layer_request",
]

Size = tuple[int, int]


class Packet(Protocol):
    """What the policy reads of a packet (aiortc's ``RtpPacket`` has it)."""

    ssrc: int
    payload: bytes
    timestamp: int
    sequence_number: int


P = TypeVar("P", bound=Packet)

_SEQ_MOD = 1 << 16
# The restart keyframe's sequence number is compared with later packets' until the stream is
# this far past it: well before a 16-bit comparison could take a new packet for an old one.
_RESTART_SPAN = 1 << 14
# Streams the relay rebased away from, remembered (oldest forgotten first): a rejoin or a
# handover retires one each.
_RETIRED_SSRCS = 8


class StreamFollower:
    """Which upstream stream (SSRC) one kind follows, and the streams it left (newest last).

    A packet of a stream left behind (a late packet or retransmission of the subscription a
    LiveKit rejoin replaced) is stale: the rewriter would rebase back onto it, and for audio
    the old and new streams would interleave, 20 ms each, until the old one's tail ended.
    """

    def __init__(self, keep: int = _RETIRED_SSRCS) -> None:
        self.current: int | None = None
        self._left: list[int] = []
        self._keep = keep

    def is_stale(self, ssrc: int) -> bool:
        return ssrc != self.current and ssrc in self._left

    def follow(self, ssrc: int) -> int | None:
        """Follow ``ssrc`` from now on; returns the stream it leaves (None: none, or the same)."""
        if ssrc == self.current:
            return None
        left, self.current = self.current, ssrc
        if ssrc in self._left:
            self._left.remove(ssrc)  # asked for by name: current again
        if left is not None:
            self._left.append(left)
            del self._left[: -self._keep]
        return left


@dataclass(slots=True)
class Admit(Generic[P]):
    """The verdict on one upstream video packet."""

    send: list[P] = field(default_factory=list)  # to forward now, in this order
    held: bool = False  # queued in the hold: forward it from :meth:`VideoPolicy.due`
    dropped: str | None = None  # why it was not relayed ("paused_by_sfu", ...)
    released_early: int = 0  # of ``send``, held packets pushed out by the hold's bound
    keyframe_request: str | None = None  # ask upstream for a keyframe (origin), if allowed
    first_keyframe: bool = False  # the first keyframe of the relay opened the gate
    size_changed: Size | None = None  # a keyframe of another size than before (a layer switch)


@dataclass(frozen=True, slots=True)
class BlockChange:
    """What a pause or resume of the SFU's interest in our video requires."""

    changed: bool = False  # the set of reasons changed
    paused: bool = False  # video stopped now: log it
    resumed: bool = False  # video wanted again: rebase downstream, ask for a keyframe
    held_dropped: int = 0  # held packets dropped unsent at the pause


@dataclass(frozen=True, slots=True)
class KeyframeAsk:
    outcome: str  # "sent" | "rate_limited" | "no_upstream" (the metric label)

    @property
    def send(self) -> bool:
        return self.outcome == "sent"


class VideoPolicy(Generic[P]):
    """Per-packet decisions for one relayed video stream. ``P`` is the packet type; the policy
    reads only its ``ssrc``, ``payload`` and ``timestamp``."""

    def __init__(
        self,
        codec: str,
        *,
        hold_s: float,
        hold_capacity: int,
        pli_min_interval_s: float,
        want_size: Size | None = None,
        size_wait_s: float = 2.0,
    ) -> None:
        self.codec = codec.upper()
        self.gate = KeyframeGate(codec)
        self.hold: HoldQueue[P] = HoldQueue(hold_s, hold_capacity)
        self.holding = hold_s > 0
        self.pli = RateLimiter(pli_min_interval_s)
        self.streams = StreamFollower()
        self.blocked: set[str] = set()
        self.paused_dropped = 0
        self.keyframe_delays_ms: list[float] = []
        self.first_keyframe_t: float | None = None
        self._pli_pending_t: float | None = None
        # Layer size: what we asked the SFU for, what the stream carries now, how it changed.
        self.want_size = want_size
        self.size_wait_s = size_wait_s
        self.size: Size | None = None
        self.size_changes = 0
        self.size_dropped = 0  # packets of keyframes (and what follows) of a size not asked for
        self._wait_from: float | None = None  # the gate closed (waiting for a keyframe) since
        self._rejected_ts: int | None = None  # RTP timestamp of the keyframe turned away
        self.stale_dropped = 0  # packets of streams rebased away from
        # The keyframe the gate last opened on: (sequence number, RTP timestamp), and how far
        # the stream has gone past it; packets from before it are dropped (before_keyframe).
        self._restart: tuple[int, int] | None = None
        self._restart_ahead = 0
        self.before_keyframe_dropped = 0

    @property
    def upstream_ssrc(self) -> int | None:
        """The stream video is relayed from now (None: no packet or switch yet)."""
        return self.streams.current

    # -- packets ---------------------------------------------------------------------------------

    def admit(self, packet: P, now: float) -> Admit[P]:
        verdict: Admit[P] = Admit()
        ssrc = packet.ssrc
        if ssrc != self.streams.current:
            if self.streams.is_stale(ssrc):
                # A stream the relay rebased away from: relayed, the rewriter would rebase back
                # onto it (an old picture shown after newer ones).
                self.stale_dropped += 1
                verdict.dropped = "stale_stream"
                return verdict
            if self.streams.follow(ssrc) is not None:
                self.gate.close()
                if not self.blocked:
                    verdict.keyframe_request = "ssrc_change"
        if self.blocked:
            self.paused_dropped += 1
            verdict.dropped = "paused_by_sfu"
            return verdict
        was_open = self.gate.open
        if was_open and self._before_restart(packet):
            self.before_keyframe_dropped += 1
            verdict.dropped = "before_keyframe"
            return verdict
        key = self.gate.is_key(packet.payload)
        size = keyframe_size(self.codec, packet.payload) if key else None
        if not was_open and self._turn_away(packet.timestamp, size, now):
            self.size_dropped += 1
            verdict.dropped = "waiting_for_size"
            return verdict
        if not self.gate.admit(packet.payload, packet.timestamp):
            verdict.dropped = "waiting_for_keyframe"
            return verdict
        if key:
            if not was_open:
                self._restart = (packet.sequence_number, packet.timestamp)
                self._restart_ahead = 0
            verdict.first_keyframe = self._on_keyframe(now, first=not was_open)
            self._wait_from = self._rejected_ts = None
            if size is not None and size != self.size:
                if self.size is not None:
                    self.size_changes += 1
                    verdict.size_changed = size
                self.size = size
        if not self.holding:
            verdict.send.append(packet)
            return verdict
        early = self.hold.push(packet, now)
        verdict.released_early = len(early)
        verdict.send.extend(early)
        verdict.held = True
        return verdict

    def _before_restart(self, packet: P) -> bool:
        """Whether ``packet`` (of the current stream, the gate open) is from before the
        keyframe the gate opened on. The keyframe's own frame is not (H264: its SPS/PPS may
        come back as a retransmission after the IDR opened the gate)."""
        if self._restart is None:
            return False
        key_seq, key_ts = self._restart
        d = (packet.sequence_number - key_seq) % _SEQ_MOD
        if d < _SEQ_MOD // 2:  # at or after the keyframe
            if d > self._restart_ahead:
                self._restart_ahead = d
                if d >= _RESTART_SPAN:
                    self._restart = None  # far past it: no longer compared
            return False
        return packet.timestamp != key_ts

    def _turn_away(self, timestamp: int, size: Size | None, now: float) -> bool:
        """While the gate is closed: whether this packet belongs to a keyframe of a size other
        than the one asked for, within ``size_wait_s`` of the gate closing (then any size goes:
        a smaller layer beats no picture)."""
        if self.want_size is None:
            return False
        if self._wait_from is None:
            self._wait_from = now
        if now - self._wait_from >= self.size_wait_s:
            return False
        if timestamp == self._rejected_ts:
            return True  # the rest of a keyframe already turned away (H264: PPS, IDR)
        if size is not None and size != self.want_size:
            self._rejected_ts = timestamp
            return True
        return False

    def next_due(self) -> float | None:
        """When the oldest held packet is due (None: nothing held)."""
        return self.hold.next_due()

    def due(self, now: float) -> list[P]:
        """Held packets whose hold has ended, in order."""
        return self.hold.pop_due(now)

    def _on_keyframe(self, now: float, *, first: bool) -> bool:
        if self._pli_pending_t is not None:
            self.keyframe_delays_ms.append(round(1000 * (now - self._pli_pending_t), 1))
            self._pli_pending_t = None
        if first and self.first_keyframe_t is None:
            self.first_keyframe_t = now
            return True
        return False

    # -- keyframes -------------------------------------------------------------------------------

    def wants_keyframe(self) -> bool:
        """The gate is closed and the SFU wants video: keep asking upstream."""
        return not self.gate.open and not self.blocked

    def ask_keyframe(self, now: float, *, have_upstream: bool) -> KeyframeAsk:
        """Whether a keyframe request (from anywhere) goes upstream now."""
        if not have_upstream or self.streams.current is None:
            return KeyframeAsk("no_upstream")
        if not self.pli.allow(now):
            return KeyframeAsk("rate_limited")
        if self._pli_pending_t is None:
            self._pli_pending_t = now
        return KeyframeAsk("sent")

    def new_subscription(self) -> bool:
        """The upstream receiver was replaced: restart on a keyframe. True: ask for one now
        (the relay had already started)."""
        self.gate.close()
        return self.first_keyframe_t is not None

    # -- avatar handover -------------------------------------------------------------------------

    def switch_upstream(self, ssrc: int | None) -> bool:
        """The relay now forwards another avatar's stream (``ssrc``, when already seen): the
        gate waits for its keyframe, which is asked for at once. True: send the request now
        (the SFU wants video)."""
        self.gate.close()
        if ssrc is not None:
            self.streams.follow(ssrc)
        return not self.blocked

    # -- the Stream SFU's interest ---------------------------------------------------------------

    def set_blocked(self, reason: str, *, blocked: bool) -> BlockChange:
        """The SFU stopped (``blocked``) or resumed wanting our video for ``reason``."""
        if blocked == (reason in self.blocked):
            return BlockChange()
        was_blocked = bool(self.blocked)
        if blocked:
            self.blocked.add(reason)
        else:
            self.blocked.discard(reason)
        if self.blocked and not was_blocked:
            held = self.hold.drain()  # not sent: the SFU asked us to stop now
            self.paused_dropped += len(held)
            return BlockChange(changed=True, paused=True, held_dropped=len(held))
        if was_blocked and not self.blocked:
            self.gate.close()  # the receivers' decoders restart on a keyframe
            return BlockChange(changed=True, resumed=True)
        return BlockChange(changed=True)

    def close(self) -> list[P]:
        """The relay ends: what was still held (not sent)."""
        return self.hold.drain()


# -- the layer the relay asks LiveKit for -------------------------------------------------------

# livekit.protocol.models.VideoQuality.HIGH (the top simulcast layer); kept as a number so this
# module needs no protobuf import.
VIDEO_QUALITY_HIGH = 2


@dataclass(frozen=True, slots=True)
class LayerAsk:
    """An ``UpdateTrackSettings`` for the avatar's video: the layer the relay forwards."""

    quality: int
    width: int
    height: int


def layer_request(size: Size | None) -> LayerAsk:
    """What the relay asks the SFU for: the avatar's full size (what it publishes untouched),
    else the top layer. LiveKit's client SDKs send the same (dimensions with adaptive stream,
    else a quality); the server picks the smallest layer at least that large."""
    if size is None:
        return LayerAsk(VIDEO_QUALITY_HIGH, 0, 0)
    return LayerAsk(VIDEO_QUALITY_HIGH, size[0], size[1])


def declines_announced_size(
    *, require_match: bool, announced: Size | None, wanted: Size | None
) -> bool:
    """Whether a relay chosen by ``auto`` declines once the avatar's TrackInfo is known: the size
    LiveKit announces (the publisher's own, from its AddTrackRequest) is not the output size.
    A forced relay (``require_match`` False) sends whatever comes; an unknown size (0x0, an old
    server) is not a reason to decline."""
    if not require_match or wanted is None or announced is None or not all(announced):
        return False
    return announced != wanted
