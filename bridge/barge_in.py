"""Barge-in on the way to the call, sans-I/O: stop forwarding the avatar's old speech at INTERRUPT.

The client's INTERRUPT reaches LiveAvatar (``agent.interrupt``), but the avatar's audio already
rendered is in flight (its encoder, the LiveKit hop, our path) and would keep playing for a viewer
for that long after the interrupt. The bridge sits on that path, so it ends it itself:

* at :meth:`SpeechGate.interrupt` the avatar's audio stops being forwarded: the relay replaces
  each packet's Opus payload by a silent frame of the same duration (:func:`opus_silence_like`;
  sequence numbers and timestamps untouched, so the viewer's jitter buffer plays on and releases
  nothing old later), the transcode path drops the decoded chunks (its encoder fills the gap);
  the picture goes on (the avatar's mouth closes within the same in-flight time, about one
  render pipeline);
* the gate opens again at the avatar's next ``speak_started`` (a turn sent after the interrupt:
  LiveAvatar plays turns in order and has dropped the interrupted one), or at the latest
  ``max_mute_s`` after the interrupt, so a lost event cannot mute the avatar for good.

Every method takes ``now`` (monotonic seconds); nothing here reads a clock or does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEFAULT_MAX_MUTE_S", "SpeechGate", "opus_silence_like"]

# Far beyond any in-flight media (a render pipeline is a few hundred ms); a safety net only.
DEFAULT_MAX_MUTE_S = 5.0


@dataclass(slots=True)
class SpeechGate:
    """Whether the avatar's audio is forwarded now. One per media path."""

    max_mute_s: float = DEFAULT_MAX_MUTE_S
    muted_since: float | None = None
    interrupts: int = 0
    dropped: int = 0  # audio units (packets or chunks) not forwarded while muted
    dropped_s: float = 0.0  # their duration, where the caller knows it
    reopened: dict[str, int] | None = None  # why the gate opened: "speak_started" | "timeout"

    def __post_init__(self) -> None:
        if self.max_mute_s <= 0:
            raise ValueError("max_mute_s must be positive")
        if self.reopened is None:
            self.reopened = {"speak_started": 0, "timeout": 0}

    @property
    def muted(self) -> bool:
        return self.muted_since is not None

    def interrupt(self, now: float) -> None:
        """INTERRUPT: the avatar's speech in flight is the interrupted turn's."""
        self.interrupts += 1
        self.muted_since = now

    def speak_started(self, now: float) -> bool:
        """The avatar started a turn; True when this opened the gate."""
        del now  # the event itself is the signal; kept for a uniform interface
        return self._open("speak_started")

    def admit(self, now: float, duration_s: float = 0.0) -> bool:
        """One unit of the avatar's audio: forward it (True) or drop it (False, counted)."""
        since = self.muted_since
        if since is None:
            return True
        if now - since >= self.max_mute_s:
            self._open("timeout")
            return True
        self.dropped += 1
        self.dropped_s += duration_s
        return False

    def _open(self, why: str) -> bool:
        if self.muted_since is None:
            return False
        self.muted_since = None
        assert self.reopened is not None
        self.reopened[why] += 1
        return True

    def stats(self) -> dict[str, object]:
        return {
            "interrupts": self.interrupts,
            "muted": self.muted,
            "dropped": self.dropped,
            "dropped_ms": round(1000 * self.dropped_s, 1),
            "reopened": dict(self.reopened or {}),
        }


# Opus (RFC 6716 3.1): the TOC's config gives the frame duration, in 2.5 ms units.
_SILK_UNITS = (4, 8, 16, 24)  # configs 0-11: 10, 20, 40, 60 ms
_HYBRID_UNITS = (4, 8)  # configs 12-15: 10, 20 ms
_CELT_UNITS = (1, 2, 4, 8)  # configs 16-31: 2.5, 5, 10, 20 ms
_CELT_SILENCE = b"\xff\xfe"  # a CELT frame whose silence flag is set: decodes to zeros
_CELT_FB = 28  # config of CELT fullband 2.5 ms (+1: 5 ms, +2: 10 ms, +3: 20 ms)


def opus_silence_like(payload: bytes) -> bytes | None:
    """An Opus packet of silence lasting as long as ``payload`` (same channel count), or None
    when ``payload`` is not a well-formed Opus packet."""
    if not payload:
        return None
    toc = payload[0]
    config, stereo, code = toc >> 3, toc & 0x04, toc & 0x03
    if config < 12:
        unit = _SILK_UNITS[config % 4]
    elif config < 16:
        unit = _HYBRID_UNITS[config % 2]
    else:
        unit = _CELT_UNITS[config % 4]
    if code == 0:
        frames = 1
    elif code in (1, 2):
        frames = 2
    elif len(payload) < 2:
        return None
    else:
        frames = payload[1] & 0x3F
    total = unit * frames
    if not 0 < total <= 48:  # 120 ms at most
        return None
    # The longest CELT frame that divides the duration, as few frames as possible.
    for index in (3, 2, 1, 0):
        if total % _CELT_UNITS[index] == 0:
            count = total // _CELT_UNITS[index]
            head = ((_CELT_FB + index) << 3) | stereo
            if count == 1:
                return bytes((head,)) + _CELT_SILENCE
            return bytes((head | 3, count)) + _CELT_SILENCE * count
    return None  # unreachable: 2.5 ms divides every Opus duration
