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
