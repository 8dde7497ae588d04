"""Playout pacing for relayed RTP, sans-I/O: a small jitter buffer with a playout deadline.

The relay forwards the avatar's packets untouched, so whatever jitter they picked up on the way to
the bridge goes on to every viewer. Chromium's audio receiver (NetEq) answers a single packet that
arrives ~100 ms late by raising its buffer at once and lowering it over seconds; with Stream's SDK
the browser does not lip-sync audio to video (each track has its own stream id), so for those
seconds the picture is early by the amount NetEq grew (docs/sync.md). Pacing the packets out by
their own RTP clock takes the upstream jitter out before it reaches the viewers:

* each packet's deadline is ``base + media time + hold``, where ``media time`` is its RTP
  timestamp in seconds and ``base`` is the smallest ``arrival - media time`` seen over the last
  one to two windows (the best-case transit: a packet that came fastest defines "on time", and
  a slow drift between the sender's clock and ours is followed window by window);
* packets leave in timestamp order: one never leaves before a packet pushed before it with an
  older or equal timestamp, and what the network reordered within the hold is put back in
  order; a packet arriving later than its deadline (later than the hold absorbs) goes out at
  once: counted as ``late``, never dropped;
* a deadline more than ``max_hold_s`` ahead or ``rebase_late_s`` behind means the timestamps do
  not follow the clock (a new stream, a timestamp jump): the buffer rebases on that packet;
* a new SSRC rebases too;
* overflow (``capacity`` packets waiting): the oldest is released early, counted; media stays
  intact and only its pacing suffers.

Video is paced the same way with the same hold (plus the relay's fixed video offset), so both
kinds leave aligned as they were in the best case and the viewer's two receivers see smooth input.

Every method takes ``now`` (monotonic seconds); nothing here sends, sleeps or reads a clock.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

__all__ = ["PlayoutBuffer", "PlayoutStats", "TimedPacket"]


class TimedPacket(Protocol):
    ssrc: int
    timestamp: int


P = TypeVar("P", bound=TimedPacket)

_WRAP = 1 << 32
_HALF = 1 << 31
_STEPS = 16  # timestamp steps kept for packet_s and steps_s


@dataclass(slots=True)
class PlayoutStats:
    packets: int = 0
    late: int = 0  # arrived after their deadline: sent at once
    released_early: int = 0  # pushed out by the capacity bound
    rebases: int = 0  # the timing was restarted (new SSRC, timestamp jump)
    max_depth: int = 0
    # Sum of the time packets spent held (s) and of how late the late ones came (s).
    held_s: float = 0.0
    late_s: float = 0.0

    def as_dict(self) -> dict[str, float | int]:
        n = max(1, self.packets)
        return {
            "packets": self.packets,
            "late": self.late,
            "released_early": self.released_early,
            "rebases": self.rebases,
            "max_depth": self.max_depth,
            "mean_held_ms": round(1000 * self.held_s / n, 2),
            "mean_late_ms": round(1000 * self.late_s / max(1, self.late), 2),
        }


class PlayoutBuffer(Generic[P]):
    """Holds each packet until ``base + media time + hold_s + offset_s`` (see the module doc)."""

    def __init__(
        self,
        clock_rate: int,
        hold_s: float,
        *,
        offset_s: float = 0.0,
        max_hold_s: float = 0.5,
        rebase_late_s: float = 1.0,
        window_s: float = 5.0,
        capacity: int = 512,
    ) -> None:
        if clock_rate <= 0 or capacity <= 0 or window_s <= 0:
            raise ValueError("clock_rate, capacity and window_s must be positive")
        self.clock_rate = clock_rate
        self._hold_s = max(0.0, hold_s)
        self.delay_s = self._hold_s + max(0.0, offset_s)
        self.max_hold_s = max(max_hold_s, self.delay_s)
        self.rebase_late_s = rebase_late_s
        self.window_s = window_s
        self.capacity = capacity
        self.stats = PlayoutStats()
        self._items: deque[tuple[float, P]] = deque()
        self._ssrc: int | None = None
        self._last_ts = 0
        self._media = 0  # unwrapped RTP timestamp of the last packet
        # Best-case transit (arrival - media time), the minimum over the current and last window.
        self._cur_min = float("inf")
        self._prev_min = float("inf")
        self._window_end = 0.0
        self._last_media = -float("inf")  # of the latest packet in timestamp order
        self._last_deadline = -float("inf")
        # Restarts of the media time's origin (a new SSRC): a SenderClock's cached offsets are
        # valid for one frame only.
        self.frame = 0
        # The last positive timestamp steps between consecutive packets of this SSRC: their
        # minimum is one packet's duration (audio: loss only makes a step longer, reordering
        # makes one negative, neither shorter).
        self._steps: deque[int] = deque(maxlen=_STEPS)
        self.step_count = 0  # steps seen in all (tells a caller when steps_s has a new one)

    def __len__(self) -> int:
        return len(self._items)

    @property
    def base(self) -> float:
        return min(self._cur_min, self._prev_min)

    @property
    def ssrc(self) -> int | None:
        return self._ssrc

    @property
    def packet_s(self) -> float | None:
        """One packet's duration (s): the shortest of the last timestamp steps between
        consecutive packets of the current SSRC, None before two packets of it. Meaningful for
        audio (a video frame's packets share a timestamp)."""
        return min(self._steps) / self.clock_rate if self._steps else None

    @property
    def steps_s(self) -> list[float]:
        """The last timestamp steps between consecutive packets of the current SSRC (s), oldest
        first: for video, the frames' durations (a frame's packets share a timestamp)."""
        return [step / self.clock_rate for step in self._steps]

    def set_offset(self, offset_s: float) -> None:
        """Hold the packets pushed from now on ``hold_s + offset_s``. Those waiting keep their
        deadlines, and a lower offset reorders nothing: in timestamp order a deadline is never
        before the one of the packet before it (the next frame just follows its predecessor
        that much sooner)."""
        self.delay_s = self._hold_s + max(0.0, offset_s)
        self.max_hold_s = max(self.max_hold_s, self.delay_s)

    def media_of(self, ssrc: int, timestamp: int) -> float | None:
        """``timestamp`` of ``ssrc`` as media time (s) on this buffer's origin (that of its
        packets), or None when ``ssrc`` is not the stream it paces now. Within 2^31 ticks of
        the last packet (13 h of video): wrap-around safe."""
        if ssrc != self._ssrc:
            return None
        d = (timestamp - self._last_ts) % _WRAP
        return (self._media + (d - _WRAP if d >= _HALF else d)) / self.clock_rate

    def push(self, packet: P, now: float, lift_s: float = 0.0) -> list[P]:
        """Queue ``packet``; returns what must leave now, in order (late or overflow).

        ``lift_s`` (>= 0) holds it that much longer than its own stream's timing would: the
        relay's capture alignment of audio and video (:class:`SenderClock`)."""
        self.stats.packets += 1
        media = self._unwrap(packet) / self.clock_rate
        transit = now - media
        if packet.ssrc != self._ssrc:
            self._ssrc = packet.ssrc
            self.frame += 1
            self._rebase(transit, now, count=self.stats.packets > 1)
        self._observe(transit, now)
        deadline = self.base + media + self.delay_s + lift_s
        if deadline - now > self.max_hold_s or now - deadline > self.rebase_late_s:
            self._rebase(transit, now, count=True)
            deadline = now + self.delay_s + lift_s
        if media >= self._last_media:
            # In order: never before the packets pushed before it (a lower base must not let a
            # frame overtake the rest of the one before).
            deadline = max(deadline, self._last_deadline)
            self._last_media, self._last_deadline = media, deadline
        out: list[P] = []
        if deadline < now:
            self.stats.late += 1
            self.stats.late_s += now - deadline
        if deadline <= now and not self._items:
            out.append(packet)
            return out
        # In deadline order: a packet the network reordered goes back in its place; a late one
        # goes to the front and the caller's next release sends it.
        i = len(self._items)
        while i > 0 and self._items[i - 1][0] > deadline:
            i -= 1
        self._items.insert(i, (deadline, packet))
        self.stats.held_s += max(0.0, deadline - now)
        while len(self._items) > self.capacity:
            out.append(self._items.popleft()[1])
            self.stats.released_early += 1
        self.stats.max_depth = max(self.stats.max_depth, len(self._items))
        return out

    def next_due(self) -> float | None:
        return self._items[0][0] if self._items else None

    def pop_due(self, now: float) -> list[P]:
        out: list[P] = []
        while self._items and self._items[0][0] <= now:
            out.append(self._items.popleft()[1])
        return out

    def held(self) -> list[P]:
        """The packets waiting, in release order; the caller may rewrite their payloads (an
        interrupt silences the old speech already held), not their timing."""
        return [p for _, p in self._items]

    def drain(self) -> list[P]:
        out = [p for _, p in self._items]
        self._items.clear()
        return out

    def restart(self) -> None:
        """Forget the timing (the upstream stream was replaced): the next packet rebases."""
        self._ssrc = None

    # -- internals --------------------------------------------------------------------------------

    def _unwrap(self, packet: P) -> int:
        ts = packet.timestamp
        if self._ssrc is None or packet.ssrc != self._ssrc:
            self._media = ts
            self._steps.clear()
        else:
            d = (ts - self._last_ts) % _WRAP
            self._media += d - _WRAP if d >= _HALF else d
            if 0 < d < _HALF:
                self._steps.append(d)
                self.step_count += 1
        self._last_ts = ts
        return self._media

    def _observe(self, transit: float, now: float) -> None:
        if now >= self._window_end:
            # Roll (skipped windows count as empty, so an old minimum does not linger).
            stale = now >= self._window_end + self.window_s
            self._prev_min = float("inf") if stale else self._cur_min
            self._cur_min = float("inf")
            self._window_end = now + self.window_s
        self._cur_min = min(self._cur_min, transit)

    def _rebase(self, transit: float, now: float, *, count: bool) -> None:
        self._last_media = self._last_deadline = -float("inf")
        self._cur_min = transit
        self._prev_min = float("inf")
        self._window_end = now + self.window_s
        if count:
            self.stats.rebases += 1
