"""What an avatar lost mid-turn has not spoken yet, without I/O.

The uplink records each turn's 24 kHz PCM as it is accepted (``agent.speak`` audio of one
``event_id``) until the avatar reports the turn played (``agent.speak_ended``) or the client
interrupts it. The avatar's play position is taken from ``agent.speak_started`` (LiveAvatar
fires it at the playout of the turn's first sample; the protocol gives no finer position) plus
real time, never past the audio the turn has had: the avatar plays in real time from its
buffer, and the first chunk (``liveavatar.first_chunk_ms``) keeps it from running dry.

On an unplanned loss, :meth:`TurnRecorder.unspoken` returns the rest of every turn not played
yet: the turn playing from its play position, moved back by at most ``overlap_ms`` to the last
quiet 10 ms before it (so no word is cut in two: a word the avatar was speaking is spoken again
whole, and nothing played earlier than ``overlap_ms`` before the position is repeated); turns
not started yet whole. Audio the client sends while the next avatar comes up is recorded the
same way and comes with it. The next session's uplink sends each as a new turn.

Bound: at most ``max_ms`` of audio is kept over all turns; beyond it the oldest is trimmed
(the caller counts it: a loss then re-speaks only the last ``max_ms``).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from bridge.liveavatar.uplink_core import BYTES_PER_MS

FRAME_MS = 10
_FRAME_BYTES = FRAME_MS * BYTES_PER_MS
# Played audio is dropped in steps of at least this much (one memmove per step, not per chunk).
_DROP_MIN_MS = 500
# A 10 ms frame quieter than this (RMS of s16 samples, about -50 dBFS) is a safe place to cut.
QUIET_RMS = 100.0


@dataclass(slots=True)
class _Turn:
    pcm: bytearray = field(default_factory=bytearray)
    trimmed_ms: float = 0.0  # audio cut from its start to keep the bound
    started_t: float | None = None  # agent.speak_started, monotonic
    ended: bool = False  # agent.speak_end queued: the client ended the turn


@dataclass(frozen=True, slots=True)
class Unspoken:
    """One turn's audio still to speak: ``pcm`` from ``from_ms`` into the turn."""

    pcm: bytes
    ended: bool  # the client ended this turn (send agent.speak_end after it)
    from_ms: float  # where it starts in the turn's audio
    played_ms: float  # the avatar's play position in the turn at the loss (0: not started)

    @property
    def ms(self) -> float:
        return len(self.pcm) / BYTES_PER_MS


class TurnRecorder:
    """The turns an avatar has not finished playing, and its position in them."""

    def __init__(self, max_ms: float, overlap_ms: float) -> None:
        if max_ms <= 0 or overlap_ms < 0:
            raise ValueError("max_ms must be positive and overlap_ms not negative")
        self.max_ms = max_ms
        self.overlap_ms = overlap_ms
        self._turns: OrderedDict[str, _Turn] = OrderedDict()
        self._bytes = 0

    @property
    def recorded_ms(self) -> float:
        return self._bytes / BYTES_PER_MS

    def audio(self, event_id: str, pcm: bytes, now: float | None = None) -> float:
        """Audio accepted for turn ``event_id``; returns the ms trimmed to keep the bound.

        With ``now``, audio the avatar has played more than ``overlap_ms`` ago is dropped first
        (never re-spoken, so not counted as trimmed): a long turn keeps about a second, not all
        of it (30 s of 24 kHz audio was ~1.4 MB per session)."""
        turn = self._turns.get(event_id)
        if turn is None:
            turn = self._turns[event_id] = _Turn()
        turn.pcm += pcm
        self._bytes += len(pcm)
        if now is not None:
            self._drop_played(now)
        return self._trim()

    def _drop_played(self, now: float) -> None:
        """Cut the playing turn's audio before its play position less ``overlap_ms`` (and a
        frame): :meth:`unspoken` never starts a re-speak earlier, since the position only moves
        on. In steps of at least ``_DROP_MIN_MS``, so the bytearray is not shifted per chunk."""
        turn = next(iter(self._turns.values()), None)
        if turn is None or turn.started_t is None:
            return
        total_ms = turn.trimmed_ms + len(turn.pcm) / BYTES_PER_MS
        played = min(max(0.0, (now - turn.started_t) * 1000), total_ms)
        keep_from = (played - self.overlap_ms - FRAME_MS) // FRAME_MS * FRAME_MS
        cut = int((keep_from - turn.trimmed_ms) * BYTES_PER_MS) & ~1
        if cut < _DROP_MIN_MS * BYTES_PER_MS:
            return
        del turn.pcm[:cut]
        turn.trimmed_ms += cut / BYTES_PER_MS
        self._bytes -= cut

    def ended(self, event_id: str) -> None:
        turn = self._turns.get(event_id)
        if turn is not None:
            turn.ended = True

    def speak_started(self, event_id: str, now: float) -> None:
        """The avatar began playing a turn. An id we never sent (a service that numbers its
        events itself) is the oldest turn not started: turns play in order."""
        turn = self._turns.get(event_id)
        if turn is None:
            turn = next((t for t in self._turns.values() if t.started_t is None), None)
        if turn is not None and turn.started_t is None:
            turn.started_t = now

    def speak_ended(self, event_id: str) -> None:
        """The avatar played the turn to its end: nothing of it is left to speak."""
        key = event_id if event_id in self._turns else None
        if key is None:  # an id we never sent: the oldest turn started
            key = next((k for k, t in self._turns.items() if t.started_t is not None), None)
        turn = self._turns.pop(key, None) if key is not None else None
        if turn is not None:
            self._bytes -= len(turn.pcm)

    def clear(self) -> None:
        """An interrupt: the client does not want any of it spoken."""
        self._turns.clear()
        self._bytes = 0

    def unspoken(self, now: float) -> list[Unspoken]:
        """Every turn's unspoken rest, oldest first; the recorder is emptied."""
        out = []
        for turn in self._turns.values():
            total_ms = turn.trimmed_ms + len(turn.pcm) / BYTES_PER_MS
            played = 0.0
            if turn.started_t is not None:
                played = min(max(0.0, (now - turn.started_t) * 1000), total_ms)
            start = self._safe_start(turn, played)
            if start >= total_ms and turn.ended:
                continue  # all of it played: only its speak_ended was missing
            offset = round((start - turn.trimmed_ms) * BYTES_PER_MS / 2) * 2
            out.append(Unspoken(bytes(turn.pcm[max(0, offset) :]), turn.ended, start, played))
        self.clear()
        return out

    def _safe_start(self, turn: _Turn, played_ms: float) -> float:
        """The last quiet frame boundary at or before ``played_ms``, no more than
        ``overlap_ms`` before it; without one, ``played_ms`` less the overlap."""
        if played_ms <= 0:
            return turn.trimmed_ms
        pcm = np.frombuffer(turn.pcm, dtype=np.int16)
        floor = max(turn.trimmed_ms, played_ms - self.overlap_ms)
        # Frame k covers [k*FRAME_MS, (k+1)*FRAME_MS) of the turn; a start at a frame's start.
        k = int(played_ms // FRAME_MS)
        while k * FRAME_MS >= floor:
            lo = int((k * FRAME_MS - turn.trimmed_ms) * BYTES_PER_MS // 2)
            frame = pcm[lo : lo + _FRAME_BYTES // 2].astype(np.float64)
            if frame.size == 0 or float(np.sqrt(np.mean(frame**2))) < QUIET_RMS:
                return max(float(k * FRAME_MS), turn.trimmed_ms)
            k -= 1
        return floor

    def _trim(self) -> float:
        excess = self._bytes - int(self.max_ms * BYTES_PER_MS)
        trimmed = 0
        while excess > 0 and self._turns:
            key, turn = next(iter(self._turns.items()))
            cut = min(excess + (excess & 1), len(turn.pcm))
            del turn.pcm[:cut]
            turn.trimmed_ms += cut / BYTES_PER_MS
            self._bytes -= cut
            excess -= cut
            trimmed += cut
            if not turn.pcm:
                # Keep an ended turn's placeholder out: it has nothing left to re-speak.
                del self._turns[key]
        return trimmed / BYTES_PER_MS


__all__ = ["FRAME_MS", "QUIET_RMS", "TurnRecorder", "Unspoken"]
