"""The typed items that flow through a session, and the session's media clock.

Audio is PCM int16 in numpy arrays (interleaved when stereo); video is I420 in one flat uint8
array (Y plane, then U, then V), exactly what both SDKs hand out and take in, so no stage converts
colour spaces or copies planes. Timestamps are microseconds on the session's media clock.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

PCM = npt.NDArray[np.int16]
I420 = npt.NDArray[np.uint8]


@dataclass(frozen=True, slots=True)
class AudioFormat:
    """How PCM is laid out: sample rate in Hz, channel count, always signed 16-bit little endian."""

    sample_rate: int
    channels: int

    @property
    def bytes_per_second(self) -> int:
        return self.sample_rate * self.channels * 2

    def duration_s(self, nbytes: int) -> float:
        return nbytes / self.bytes_per_second


@dataclass(frozen=True, slots=True)
class AudioChunk:
    """A run of PCM samples. ``pts_us`` is the media-clock time of the first sample."""

    samples: PCM
    fmt: AudioFormat
    pts_us: int = 0

    @property
    def frames(self) -> int:
        return len(self.samples) // self.fmt.channels

    @property
    def duration_s(self) -> float:
        return self.frames / self.fmt.sample_rate


@dataclass(frozen=True, slots=True)
class VideoFrame:
    """One I420 picture; ``data`` is a view of the decoder's buffer where possible, not a copy."""

    data: I420
    width: int
    height: int
    pts_us: int
    # When the frame reached the bridge (monotonic ns), for per-stage latency metrics.
    received_ns: int = field(default_factory=time.monotonic_ns)


@dataclass(frozen=True, slots=True)
class JitterBufferReading:
    """One reading of a downlink receiver's cumulative jitter-buffer counters (WebRTC stats
    ``jitterBufferDelay`` / ``jitterBufferEmittedCount``: the summed seconds each emitted audio
    sample or video frame spent in the receiver's buffer, and how many were emitted)."""

    kind: str  # "audio" | "video"
    delay_s: float
    emitted: int
    at_ns: int  # when it was read (monotonic ns)


class MediaClock:
    """One monotonic clock per session, shared by every stage, so pts never go backwards.

    Media time is microseconds since the clock was created. The session owns it and hands it to
    the stages; it outlives any one avatar so a swapped-in avatar continues the same timeline.
    """

    def __init__(self) -> None:
        self._origin_ns = time.monotonic_ns()

    @property
    def origin_ns(self) -> int:
        return self._origin_ns

    def now_us(self) -> int:
        return (time.monotonic_ns() - self._origin_ns) // 1000

    def to_media_us(self, monotonic_ns: int) -> int:
        return (monotonic_ns - self._origin_ns) // 1000


class WirePts:
    """The pts a call publisher stamps on a video frame (sans-I/O: the frame's pts and the
    write's time in, seconds out): the frame's own spacing (smooth for the encoder's rate
    control), but re-anchored to the time of the write whenever the two part by more than
    ``tolerance_s``. The RTP timestamps follow this pts, and the sender reports map them to
    wall time from the last packet sent, so the mapping stays within the tolerance of real time
    (the avatar's timeline strays by up to the downlink's re-anchoring tolerance, 300 ms;
    docs/sync.md, "Sender reports"). Strictly increasing, from 0 at the first write."""

    def __init__(self, tolerance_s: float = 0.015) -> None:
        self.tolerance_s = tolerance_s
        self._origin_s: float | None = None
        self._offset_s = 0.0
        self._last_s = -1.0
        self.reanchors = 0

    def stamp(self, pts_s: float, now_s: float) -> float:
        if self._origin_s is None:
            self._origin_s = now_s
            self._offset_s = -pts_s
        t = now_s - self._origin_s
        if abs(pts_s + self._offset_s - t) > self.tolerance_s:
            self._offset_s = t - pts_s
            self.reanchors += 1
        wire = max(pts_s + self._offset_s, self._last_s + 1e-4)
        self._last_s = wire
        return wire
