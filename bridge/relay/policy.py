"""The relay's per-packet policy, sans-I/O: what to do with each upstream packet, given the time.

:class:`VideoPolicy` owns the decisions :class:`~bridge.relay.path.RelayPath` used to make inline:

* **SSRC changes** (a LiveKit rejoin brings a new subscription): the keyframe gate closes and a
  keyframe is asked for upstream;
* **pause/resume**: while the Stream SFU does not want our video (send-video revoked, our layer
  paused) video is dropped on arrival and the hold is emptied unsent; when it is wanted again
  the gate waits for a keyframe and the downstream stream is rebased (sequence numbers go on
  without a gap, timestamps advance by the pause);
* **keyframe gate**: video is forwarded from a keyframe on; keyframe requests upstream are rate
  limited, and the delay from a request to the keyframe is measured;
* **hold**: forwarded video waits ``hold_s`` (playout alignment with audio), bounded, the oldest
  released early on overflow.

Every method takes ``now`` (monotonic seconds) and returns what the caller must do; nothing here
sends, sleeps or reads a clock, so all of it is tested without sockets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from bridge.relay.rtp import HoldQueue, KeyframeGate, RateLimiter

__all__ = ["Admit", "BlockChange", "KeyframeAsk", "Packet", "VideoPolicy"]


class Packet(Protocol):
    """What the policy reads of a packet (aiortc's ``RtpPacket`` has it)."""

    ssrc: int
    payload: bytes
    timestamp: int


P = TypeVar("P", bound=Packet)


@dataclass(slots=True)
class Admit(Generic[P]):
    """The verdict on one upstream video packet."""

    send: list[P] = field(default_factory=list)  # to forward now, in this order
    held: bool = False  # queued in the hold: forward it from :meth:`VideoPolicy.due`
    dropped: str | None = None  # why it was not relayed ("paused_by_sfu", ...)
    released_early: int = 0  # of ``send``, held packets pushed out by the hold's bound
    keyframe_request: str | None = None  # ask upstream for a keyframe (origin), if allowed
    first_keyframe: bool = False  # the first keyframe of the relay opened the gate


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
        self, codec: str, *, hold_s: float, hold_capacity: int, pli_min_interval_s: float
    ) -> None:
        self.gate = KeyframeGate(codec)
        self.hold: HoldQueue[P] = HoldQueue(hold_s, hold_capacity)
        self.holding = hold_s > 0
        self.pli = RateLimiter(pli_min_interval_s)
        self.upstream_ssrc: int | None = None
        self.blocked: set[str] = set()
        self.paused_dropped = 0
        self.keyframe_delays_ms: list[float] = []
        self.first_keyframe_t: float | None = None
        self._pli_pending_t: float | None = None

    # -- packets ---------------------------------------------------------------------------------

    def admit(self, packet: P, now: float) -> Admit[P]:
        verdict: Admit[P] = Admit()
        ssrc = packet.ssrc
        if ssrc != self.upstream_ssrc:
            if self.upstream_ssrc is not None:
                self.gate.close()
                if not self.blocked:
                    verdict.keyframe_request = "ssrc_change"
            self.upstream_ssrc = ssrc
        if self.blocked:
            self.paused_dropped += 1
            verdict.dropped = "paused_by_sfu"
            return verdict
        was_open = self.gate.open
        key = self.gate.is_key(packet.payload)
        if not self.gate.admit(packet.payload, packet.timestamp):
            verdict.dropped = "waiting_for_keyframe"
            return verdict
        if key:
            verdict.first_keyframe = self._on_keyframe(now, first=not was_open)
        if not self.holding:
            verdict.send.append(packet)
            return verdict
        early = self.hold.push(packet, now)
        verdict.released_early = len(early)
        verdict.send.extend(early)
        verdict.held = True
        return verdict

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
        if not have_upstream or self.upstream_ssrc is None:
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
            self.upstream_ssrc = ssrc
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
