"""The old avatar's last words at a planned switch on the transcode path (sans-I/O).

A planned switch comes after the old avatar's ``speak_ended``: it has *played* the turn, but
what it played last is still on its way to us (its encoder, the LiveKit hop, the downlink's
jitter buffer: 0.1-0.5 s measured, more on a slow link). Shutting the old downlink at the
commit cut that tail (3 of 10 beeps with 500 ms of link latency). The relay path does not lose
it: it relays the old avatar until the new one's keyframe, which comes the same way. The
transcode path does the same explicitly: after the commit the old downlink keeps feeding the
call (audio and picture) until its audio has been quiet for ``quiet_s``, at most ``max_s``,
while the new avatar's media is held back (it is silent then: the switch is at a turn
boundary, and a new turn reaches it a first chunk later). Speech from the new avatar ends the
drain at once: the next turn is not delayed for the old one's silence.
"""

from __future__ import annotations

# Quiet on the old downlink that ends the drain: longer than the pauses inside a turn that
# reach us right after speak_ended (the tail of the turn), short enough to hand over soon.
DRAIN_QUIET_S = 0.5
# The drain never lasts longer (a noisy or stuck old downlink cannot hold the switch).
DRAIN_MAX_S = 1.5


class SwitchDrain:
    """Whether the old and the new avatar's audio passes, from the commit on."""

    def __init__(self, now: float, quiet_s: float = DRAIN_QUIET_S, max_s: float = DRAIN_MAX_S):
        self.started = now
        self.quiet_s = quiet_s
        self.max_s = max_s
        self._last_loud = now
        self.ended: str | None = None  # why: "quiet", "max", "new_speech", "interrupt"
        self.ended_at: float | None = None
        self.old_loud_s = 0.0  # the old avatar's sound that the drain let through

    def over(self, now: float) -> bool:
        if self.ended is None:
            if now - self._last_loud >= self.quiet_s:
                self.end("quiet", now)
            elif now - self.started >= self.max_s:
                self.end("max", now)
        return self.ended is not None

    def end(self, why: str, now: float) -> None:
        if self.ended is None:
            self.ended, self.ended_at = why, now

    def old_audio(self, loud: bool, duration_s: float, now: float) -> bool:
        """The old avatar's chunk: passes while the drain lasts."""
        if self.over(now):
            return False
        if loud:
            self._last_loud = now
            self.old_loud_s += duration_s
        return True

    def new_audio(self, loud: bool, now: float) -> bool:
        """The new avatar's chunk: held back (dropped: silence) while the drain lasts; its
        speech ends the drain and passes."""
        if loud:
            self.end("new_speech", now)
        return self.over(now)
