"""Which upstream packets the relay NACKs, and when it asks again (sans-I/O).

aiortc's receiver NACKs a gap once, when a later packet reveals it. A retransmission lost on the
way is asked for again only when the next gap comes (at 2 % loss, some 50 packets or half a
second later: a freeze downstream, whose NACKs the relay cannot answer from a history that never
got the packet), and never when no further loss comes. libwebrtc's receiver
(modules/video_coding/nack_requester.cc) asks again once per round trip, 100 ms until one is
measured, up to 10 times, and forgets packets too old to matter. :class:`NackRequester` does the
same: a pure function of the sequence numbers that arrive and the time, fed by the receiver tap.
"""

from __future__ import annotations

from dataclasses import dataclass

SEQ_MOD = 1 << 16
# libwebrtc's defaults (nack_requester.cc): kDefaultRttMs, kMaxNackRetries, kMaxNackPackets.
RETRY_INTERVAL_S = 0.1
MAX_RETRIES = 10
MAX_MISSING = 1000
# A jump forward this far is a new stream (an SFU's rebase), not a loss to ask for.
MAX_GAP = 1000
# Due this close to the interval counts as due (float seconds: 0.3 - 0.2 < 0.1).
_EPS_S = 1e-6
# Streams left behind that are remembered (a rejoin or handover leaves one each).
_LEFT_SSRCS = 8


@dataclass(slots=True)
class _Missing:
    asked_at: float
    times: int


class NackRequester:
    """One media stream's missing sequence numbers and when each was last asked for."""

    def __init__(
        self,
        retry_interval_s: float = RETRY_INTERVAL_S,
        max_retries: int = MAX_RETRIES,
        max_missing: int = MAX_MISSING,
    ) -> None:
        self.retry_interval_s = retry_interval_s
        self.max_retries = max_retries
        self.max_missing = max_missing
        self.newest: int | None = None
        self._missing: dict[int, _Missing] = {}  # insertion order: oldest first
        self.asked = 0  # sequence numbers asked for the first time
        self.retries = 0  # ... and again
        self.given_up = 0  # never came after max_retries, or pushed out by max_missing
        self.restarts = 0
        self.ssrc: int | None = None  # the stream followed
        self._left: list[int] = []  # streams followed before (newest last, bounded)
        self.stale = 0  # packets of a stream left behind: not tracked, not a restart

    def follow(self, ssrc: int) -> bool:
        """Whether packets of ``ssrc`` are tracked. A new stream (a rebase upstream) restarts
        the requester: what the old one misses is no longer asked for. A stream left before (a
        late packet or retransmission of it) is ignored: it must neither be asked for nor
        restart the current stream's tracking."""
        if ssrc == self.ssrc:
            return True
        if ssrc in self._left:
            self.stale += 1
            return False
        if self.ssrc is not None:
            self._left = [*self._left[-(_LEFT_SSRCS - 1) :], self.ssrc]
            self.restart()
        self.ssrc = ssrc
        return True

    @property
    def missing(self) -> int:
        return len(self._missing)

    def on_packet(self, seq: int, now: float) -> list[int]:
        """A media packet (or an unwrapped retransmission) arrived. Returns the sequence numbers
        to NACK now, oldest first: the gap it reveals, and those due to be asked again."""
        new: list[int] = []
        if self.newest is None:
            self.newest = seq
        else:
            ahead = (seq - self.newest) % SEQ_MOD
            if ahead == 0:
                pass  # a duplicate of the newest
            elif ahead < SEQ_MOD // 2:
                if ahead > MAX_GAP:
                    self.restart(seq)
                else:
                    new = [(self.newest + k) % SEQ_MOD for k in range(1, ahead)]
                    self.newest = seq
            else:
                self._missing.pop(seq, None)  # late: a retransmission or reordering
        for s in new:
            self._missing[s] = _Missing(now, 1)
        self.asked += len(new)
        while len(self._missing) > self.max_missing:
            del self._missing[next(iter(self._missing))]
            self.given_up += 1
        if not self._missing:  # the usual case: nothing allocated per packet
            return new
        return self._due(now, set(new)) + new

    def due(self, now: float) -> list[int]:
        """Those due to be asked again (without a packet arriving), oldest first."""
        return self._due(now, set())

    def _due(self, now: float, fresh: set[int]) -> list[int]:
        if not self._missing:
            return []
        out: list[int] = []
        for s, m in list(self._missing.items()):
            if s in fresh or now - m.asked_at + _EPS_S < self.retry_interval_s:
                continue
            if m.times >= 1 + self.max_retries:
                del self._missing[s]
                self.given_up += 1
                continue
            m.asked_at, m.times = now, m.times + 1
            self.retries += 1
            out.append(s)
        return out

    def restart(self, seq: int | None = None) -> None:
        """A new stream (another SSRC, a jump): what the old one misses is no longer asked for."""
        self.given_up += len(self._missing)
        self._missing.clear()
        self.newest = seq
        self.restarts += 1
