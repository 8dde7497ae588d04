"""The video hold by the cadence of the frames sent to the call, sans-I/O (both media paths).

Both paths hold video behind its audio (the relay ``relay_video_hold_ms``, the transcode path
``video_delay_ms`` plus what it follows), partly because a browser viewer's audio jitter buffer
holds sound longer than its video path holds a picture (docs/sync.md). How long
the picture path takes depends on the frames' timing, as Chromium renders a remote WebRTC track
(media/filters/video_renderer_algorithm.cc, video_cadence_estimator.cc, read in docs/sync.md):

* frames whose durations vary by more than about half a display interval (9.2 ms at 60 Hz; a
  LiveKit client's 20 fps from a 30 fps camera alternates 33 and 67 ms) get no cadence: each is
  shown at the first vsync after it is due;
* frames at a steady rate (30 fps: two vsyncs each at 60 Hz; 20, 24, 25 fps likewise) get a
  cadence, and a frame is kept for its whole cadence even when the next is due: once a frame
  came just after "its" vsync the schedule stays a vsync late, by phase, for the whole call.
  Such a stream is shown either on time or 16.7 ms later (measured: 30 fps streams sat 5-18 ms
  later at the viewer than a 20 fps libwebrtc one, per run; docs/sync.md).

So for a steady stream the hold is lowered by ``allowance_ms``
(``output.video_cadence_allowance_ms``): half a 60 Hz vsync puts both of Chromium's cases the
same distance from the sound. Steadiness is judged from the frames' timestamps as sent (the
relay's RTP timestamps, the transcode path's pts; the viewer's render times keep their spacing)
with Chromium's own thresholds and hysteresis: the
standard deviation of the last ``FRAMES`` frame durations below 0.45 of a vsync is steady, above
0.55 is not, in between the verdict stands.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

__all__ = ["FRAMES", "CadenceHold"]

# The frame durations a verdict needs (about half a second of video).
FRAMES = 15
# Chromium's thresholds (video_renderer_algorithm.cc: cadence off above 0.55 of the render
# interval's deviation, back on below 0.45), at a 60 Hz display: the common case.
VSYNC_S = 1 / 60
STEADY_BELOW_S = 0.45 * VSYNC_S
UNSTEADY_ABOVE_S = 0.55 * VSYNC_S


class CadenceHold:
    """The video hold for the forwarded frames' timing: ``hold_ms``, less ``allowance_ms`` while
    they come at a steady rate. ``update`` takes the latest frame durations (s) and returns the
    hold (ms) when it changed, else None."""

    def __init__(self, hold_ms: float, allowance_ms: float) -> None:
        self.base_ms = max(0.0, hold_ms)
        self.allowance_ms = min(max(0.0, allowance_ms), self.base_ms)
        self.steady = False
        self.deviation_ms: float | None = None

    @property
    def hold_ms(self) -> float:
        return self.base_ms - self.allowance_ms if self.steady else self.base_ms

    def update(self, durations_s: Iterable[float]) -> float | None:
        recent = list(durations_s)[-FRAMES:]
        if self.allowance_ms <= 0 or len(recent) < FRAMES:
            return None
        mean = sum(recent) / len(recent)  # by hand: statistics' exact arithmetic is slow
        deviation = math.sqrt(sum((d - mean) ** 2 for d in recent) / len(recent))
        self.deviation_ms = 1000 * deviation
        steady = self.steady
        if deviation < STEADY_BELOW_S:
            steady = True
        elif deviation > UNSTEADY_ABOVE_S:
            steady = False
        if steady == self.steady:
            return None
        self.steady = steady
        return self.hold_ms
