"""Where the avatar's speech passes the bridge, for the client's first-sound figures.

The client's first AUDIO byte -> first sound at the viewer is split into parts measured where
they happen (docs/performance.md): the uplink's first chunk (bridge/liveavatar/uplink.py,
``bridge_liveavatar_first_chunk_seconds``), the LiveAvatar stand-in's render start, and here the
instants the avatar's speech enters the bridge's media path and leaves it for the call. Each is
the latest *onset*: the first sound after at least ``quiet_s`` of quiet (a turn's start),
exported as a unix timestamp (``bridge_avatar_audio_onset_timestamp_seconds{path,point}``) so
that a bench on the same host can place it between the stand-ins' own stamps.

What counts as sound: decoded PCM (transcode) by its peak; relayed Opus (undecoded) by its
payload size, since a quiet Opus frame is a few bytes and speech is tens to hundreds (a
heuristic, good for a turn's onset after silence, not for the end of speech).

:class:`OnsetClock` is sans-I/O (fed ``loud`` and ``now``); the gauge is set by the caller.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from prometheus_client import Gauge

__all__ = ["ONSET", "OPUS_LOUD_BYTES", "PCM_LOUD_PEAK", "OnsetClock", "OnsetPoint"]

ONSET = Gauge(
    "bridge_avatar_audio_onset_timestamp_seconds",
    "Unix time of the latest onset of the avatar's speech (first sound after quiet) at a point "
    "of the media path: 'in' from LiveKit, 'out' to the Stream call",
    ["path", "point"],
)
OPUS_LOUD_BYTES = 24  # a silent 20 ms Opus frame is 1-10 bytes; speech is far larger
PCM_LOUD_PEAK = 1000  # about -30 dBFS: well above the renderer's silence and codec noise


@dataclass(slots=True)
class OnsetClock:
    """Finds onsets in a stream of loud/quiet verdicts."""

    # A turn's start, not each word's: longer than the pauses inside speech (and the bench's
    # beeps, 400 ms apart), shorter than the quiet between turns.
    quiet_s: float = 0.8
    quiet_since: float | None = None
    last_onset: float | None = None
    heard: bool = False  # any sound yet

    def feed(self, loud: bool, now: float) -> bool:
        """One unit of audio; True when it is an onset."""
        if not loud:
            if self.quiet_since is None:
                self.quiet_since = now
            return False
        # The stream's first sound is a turn's start however short the quiet before it was
        # (a session's first turn may follow its start closely).
        onset = self.heard is False or (
            self.quiet_since is not None and now - self.quiet_since >= self.quiet_s
        )
        self.quiet_since = None
        self.heard = True
        if onset:
            self.last_onset = now
        return onset


class OnsetPoint:
    """One point of one path: feeds an :class:`OnsetClock`, sets the gauge at each onset."""

    def __init__(self, path: str, point: str) -> None:
        self._clock = OnsetClock()
        self._gauge = ONSET.labels(path, point)

    def feed(self, loud: bool) -> None:
        if self._clock.feed(loud, time.monotonic()):
            self._gauge.set(time.time())
