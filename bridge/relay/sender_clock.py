"""Capture alignment of the relay's two playout buffers by the sender's reports, sans-I/O.

Each :class:`~bridge.relay.playout.PlayoutBuffer` paces its stream at ``base + media time +
hold``, ``base`` being that stream's best-case transit. Alone, that keeps audio and video as
they were in their best case *on arrival*: whatever differed between the two streams before the
bridge (the avatar's video encode and packetisation, the capture phase of a 33 ms frame against
20 ms audio frames, an audio source's queue) reaches the viewer, and differs per run and codec.
Stream's browser SDK gives each track its own stream id, so Chromium does not lip-sync them by
RTCP: nothing downstream corrects it (docs/sync.md).

The publisher's RTCP sender reports map each stream's RTP time to its capture clock (NTP), the
same clock for both. That is what a lip-syncing receiver aligns by, and so does this:

* per kind, ``offset = NTP - media time`` from the SRs of the SSRC the buffer paces now (the
  minimum over the last ``history`` SRs: an SR whose NTP is its send time, as aiortc's, is late
  by that send's jitter, never early; libwebrtc's SRs are exact and all equal);
* ``T = base - offset`` is the stream's best-case transit from capture (arrival - capture);
* the common base is the larger ``T`` (the slower stream's best case: both on time with the
  hold as margin), and each kind is held ``lift = max(T) - T`` longer than its own timing:
  a video frame and the audio captured with it leave together;
* ``lift`` moves towards that target at ``slew`` seconds per second (10 %: a receiver's jitter
  buffer sees a small rate change, not a step), and falls back to 0 (each stream on its own
  timing, as before) while either stream has no SR for its current SSRC (start of a call, an
  SSRC change at an avatar handover or a LiveKit rejoin) or when the streams' offsets disagree
  by more than ``max_lift_s`` (no sane capture alignment differs by that much).

**libwebrtc's audio SRs stamp the end of a packet, not its capture.** Its voice channel gives
the RTP module no capture time: ``ChannelSend::SendRtpAudio`` calls
``OnSendingRtpFrame(rtp_timestamp, -1, ...)`` ("Leaving the time when this frame was received
from the capture device as undefined for voice for now"), and ``RTCPSender::SetLastRtpTime``
takes the clock's *now* for a negative capture time. An audio SR therefore maps a packet's RTP
timestamp (its first sample) to the moment the encoder had the whole packet: one packet's
duration (a 20 ms Opus frame, 960 ticks at 48 kHz) after that sample was captured, at least.
Video SRs carry the frame's capture time. Aligned as they are, the picture leaves that much early.
``audio_sr_lag`` takes it out: the audio's capture is taken as that much before its SRs' NTP,
``"auto"`` being one packet (the audio buffer's :attr:`PlayoutBuffer.packet_s`, the timestamp step
between consecutive packets), a number a fixed lag in seconds, 0 the SRs as they are (a sender
whose audio SRs are capture-exact, or the LiveKit stand-in's own aiortc senders: their SRs are
stamped when a packet is sent, and the stand-in's renderer hands aiortc each 20 ms frame at its
first sample's time). While ``"auto"`` has no packet duration yet the audio counts as without SR.

The SRs' NTP is the sender's wall clock, ours is monotonic: only differences of ``T`` between
the two streams are used, so the two clocks' offset cancels and their drift is followed by the
buffers' windows.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal

from bridge.relay.playout import PlayoutBuffer

__all__ = ["SenderClock"]

_NTP_FRAC = float(1 << 32)


# SSRCs whose SRs are kept per kind: the one paced and a handover's next one (whose SRs may
# come before its first packet is paced).
_SSRCS = 4


@dataclass(slots=True)
class _Kind:
    buffer: PlayoutBuffer[Any]
    # Per SSRC: (NTP seconds, RTP timestamp) of its last SRs, newest last.
    srs: dict[int, deque[tuple[float, int]]] = field(default_factory=dict)
    lift: float = 0.0  # applied (slewed)
    last_now: float | None = None
    # Cached offset: valid for (ssrc, buffer frame, SRs seen, capture lag).
    key: tuple[int | None, int, int, float | None] = (None, -1, -1, None)
    offset: float | None = None
    seen: int = 0


class SenderClock:
    """Holds each kind's packets ``lift(kind, now)`` longer so both kinds leave capture-aligned."""

    def __init__(
        self,
        buffers: dict[str, PlayoutBuffer[Any]],
        *,
        enabled: bool = True,
        history: int = 5,
        max_lift_s: float = 0.2,
        slew: float = 0.1,
        audio_sr_lag: float | Literal["auto"] = 0.0,
    ) -> None:
        if history <= 0 or max_lift_s <= 0 or slew <= 0:
            raise ValueError("history, max_lift_s and slew must be positive")
        if audio_sr_lag != "auto" and not 0.0 <= audio_sr_lag <= max_lift_s:
            raise ValueError("audio_sr_lag must be 'auto' or within [0, max_lift_s]")
        self.audio_sr_lag = audio_sr_lag
        self.enabled = enabled
        self.max_lift_s = max_lift_s
        self.slew = slew
        self.history = history
        self._kinds = {k: _Kind(b) for k, b in buffers.items()}
        self.srs = 0
        # Packets not aligned because the kinds' offsets differed by more than max_lift_s.
        self.disagreed = 0

    def on_sr(self, kind: str, ssrc: int, ntp: int, rtp_timestamp: int) -> None:
        """An upstream sender report (64-bit NTP, RTP timestamp) of ``ssrc``, this kind's."""
        k = self._kinds.get(kind)
        if k is None:
            return
        srs = k.srs.pop(ssrc, None) or deque(maxlen=self.history)
        srs.append((ntp / _NTP_FRAC, rtp_timestamp))
        k.srs[ssrc] = srs  # the most recently reporting SSRC last
        while len(k.srs) > _SSRCS:
            del k.srs[next(iter(k.srs))]
        k.seen += 1
        self.srs += 1

    def offset(self, kind: str) -> float | None:
        """The kind's ``NTP - media time`` (s) for the SSRC its buffer paces, None without SR."""
        k = self._kinds[kind]
        buf = k.buffer
        lag = self.capture_lag(kind)
        key = (buf.ssrc, buf.frame, k.seen, lag)
        if key != k.key:
            k.key = key
            offsets = []
            if buf.ssrc is not None and lag is not None:
                for ntp_s, ts in k.srs.get(buf.ssrc, ()):
                    media = buf.media_of(buf.ssrc, ts)
                    if media is not None:
                        offsets.append(ntp_s - lag - media)
            k.offset = min(offsets) if offsets else None
        return k.offset

    def capture_lag(self, kind: str) -> float | None:
        """How long before its SRs' NTP the kind's media was captured (s): ``audio_sr_lag``
        for audio (``"auto"``: one packet, None until known), 0 for video."""
        if kind != "audio":
            return 0.0
        if self.audio_sr_lag == "auto":
            return self._kinds[kind].buffer.packet_s
        return self.audio_sr_lag

    def transits(self) -> dict[str, float] | None:
        """Each kind's best-case transit from capture (s, our clock minus the sender's: only
        differences between kinds mean anything), None until every kind has one."""
        out = {}
        for name, k in self._kinds.items():
            off = self.offset(name)
            base = k.buffer.base
            if off is None or base == float("inf"):
                return None
            out[name] = base - off
        return out

    def target(self, kind: str) -> float | None:
        """The lift that aligns ``kind`` by capture now, None when it cannot be aligned."""
        t = self.transits()
        return None if t is None else self._target(kind, t)

    def _target(self, kind: str, t: dict[str, float]) -> float | None:
        slowest = max(t.values())
        if slowest - min(t.values()) > self.max_lift_s:
            return None
        return slowest - t[kind]

    def lift(self, kind: str, now: float) -> float:
        """The extra hold for ``kind``'s next packet (s), slewed towards :meth:`target` (never
        a step: a jitter buffer downstream would take one for jitter)."""
        k = self._kinds[kind]
        want = 0.0
        if self.enabled:
            t = self.transits()  # once per packet: the per-kind offsets are cached
            target = None if t is None else self._target(kind, t)
            if target is not None:
                want = target
            elif t is not None:
                self.disagreed += 1
        if k.last_now is not None:
            step = self.slew * max(0.0, now - k.last_now)
            k.lift += max(-step, min(step, want - k.lift))
        k.last_now = now
        return k.lift

    def applied(self, kind: str) -> float:
        """The lift last applied to ``kind`` (s)."""
        k = self._kinds.get(kind)
        return 0.0 if k is None else k.lift

    def stats(self) -> dict[str, Any]:
        t = self.transits()
        out: dict[str, Any] = {
            "enabled": self.enabled,
            "srs": self.srs,
            "aligned": t is not None,
            "lift_ms": {name: round(1000 * k.lift, 2) for name, k in self._kinds.items()},
            "disagreed": self.disagreed,
        }
        if "audio" in self._kinds:
            lag = self.capture_lag("audio")
            out["audio_sr_lag_ms"] = None if lag is None else round(1000 * lag, 2)
        if t is not None and {"audio", "video"} <= t.keys():
            # > 0: the video's best case from capture to the bridge is that much longer than
            # the audio's (what per-stream timing passes on to the viewer).
            out["video_minus_audio_transit_ms"] = round(1000 * (t["video"] - t["audio"]), 2)
        return out
